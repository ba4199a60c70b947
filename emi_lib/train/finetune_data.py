"""The data of the vision-tower fine-tuning (:mod:`emi_lib.train.finetune`): a split's face crops read once by
the extraction's own ``VisionSource`` and kept as uint8 at the tower's input size (so training sees what export
sees), the label prompts as frozen text, and the sampling of K crops per clip.

Frame sampling (ours): an n-crop clip is cut into K equal segments, :math:`e_k = k n / K`; ``"stratified"``
draws one crop uniformly in each segment, ``"random"`` draws K crops (sorted; with repeats when n < K), and
evaluation (``rng=None``) takes the K segment centres.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from emi_lib.data import DataError, DataRoot

__all__ = ["as_data_root", "input_size_frames", "label_prompt_texts", "preload_frames", "sample_indices"]


def input_size_frames(encoder, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, S, S, 3) through the geometric part of the tower's own transform."""
    from PIL import Image

    ops = encoder.image_transform.transforms
    ops = ops[: next(i for i, t in enumerate(ops) if "ToTensor" in type(t).__name__)]
    out = []
    for f in frames:
        img = Image.fromarray(f)
        for t in ops:
            img = t(img)
        out.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return np.stack(out) if out else np.zeros((0, *encoder.image_size, 3), np.uint8)


def preload_frames(root, split: str, encoder, ids=None, max_frames: int | None = None,
                   workers: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Face crops of ``split`` (or ``ids``) read by the extraction's ``VisionSource`` (``max_frames``
    spread over the clip), as uint8 at the tower's input size. Returns ``(frames, skipped {id: reason})``."""
    from emi_lib.features.extract_sources import VisionSource, prefetch

    dr = as_data_root(root)
    unreadable: dict[str, list[str]] = {}
    src = VisionSource(dr, split, encoder, "faces", 1, max_frames, None, math.inf, {}, unreadable)
    frames, skipped = {}, {}
    for cid, got in prefetch(src.load, list(dr.ids(split) if ids is None else ids), workers):
        if isinstance(got, DataError):
            skipped[cid] = f"{got.kind}: {got}"
        else:
            frames[cid] = input_size_frames(encoder, got.frames)  # the readable crops
    if unreadable:
        warnings.warn(f"fine-tuning {split}: {len(unreadable)} clip(s) have unreadable face crops, trained on "
                      f"their readable crops only: " + "; ".join(f"{c}: {v[0]}" for c, v in
                                                                 list(unreadable.items())[:5]), stacklevel=2)
    return frames, skipped


def as_data_root(root) -> DataRoot:
    """``root`` as a :class:`~emi_lib.data.DataRoot` (a path, or one already)."""
    return root if isinstance(root, DataRoot) else DataRoot(root)


def label_prompt_texts(root, split: str = "train", text_backbone: str = "minilm", device: str = "cpu"):
    """``({id: (D_t,) embedding}, {id: prompt})`` of the label prompts of a labelled split (leaks labels:
    training text only; valid prompts only for the logged retrieval)."""
    from emi_lib.constants import EMOTIONS
    from emi_lib.features import load_backbone
    from emi_lib.features.text import clip_text

    df = as_data_root(root).split(split)
    prompts = {cid: clip_text("label_prompt", None, row) for cid, row in
               zip(df.index, df[list(EMOTIONS)].to_numpy(dtype=float))}
    emb = load_backbone("text", text_backbone, device).encode_texts(list(prompts.values()))
    return dict(zip(prompts, emb)), prompts


def sample_indices(n: int, k: int, rng: np.random.Generator | None, mode: str = "stratified") -> np.ndarray:
    """K frame indices of an n-frame clip (repeats when n < K); ``rng=None``: the K segment centres."""
    edges = np.linspace(0, n, k + 1)
    if rng is None:
        return np.minimum(((edges[:-1] + edges[1:]) / 2).astype(int), n - 1)
    if mode == "random":
        return np.sort(rng.choice(n, k, replace=n < k))
    return np.minimum((edges[:-1] + rng.random(k) * (edges[1:] - edges[:-1])).astype(int), n - 1)
