"""A per-clip feature store on disk, keyed by modality, backbone and split.

Layout: ``<root>/<modality>/<backbone-key>/<split>/<id>.npy`` with float32 (T, D) arrays
(a text embedding is stored as (1, D)). The backbone key is the backbone's name made
file-system safe (``openclip:ViT-B-32/openai`` -> ``openclip_ViT-B-32_openai``) plus a short
hash of the exact name, so two backbones can never share a folder.

**Masked steps.** A row of NaN is a *masked step*: a frame that exists in time but holds no usable
observation (e.g. ``mediapipe-facemesh`` found no face in it). It keeps the time axis regular and is
never a row of zeros that would look like data: every reader (stage-1 padding, stage-2 batches,
z-scoring, pooled probes) takes its mask from :func:`valid_steps`. Any other non-finite value
(a NaN inside an otherwise valid row, an inf) is refused on write.

**Concatenated backbones.** A name ``a+b[+...]`` (e.g. ``mediapipe-facemesh+fer``) is never stored
itself: its parts are (each extracted once, reusable alone), and :meth:`FeatureStore.read` /
:meth:`~FeatureStore.load_split` join them step by step (:func:`concat_steps`); a clip is stored for
the concatenation when every part holds it. This applies to the raw backbone modalities ``vision`` and
``audio`` only: derived features (e.g. ``vision_aligned``, keyed by a stage-1 run) are stored under their
own key whatever it contains.

Writes are atomic (``<id>.npy.tmp`` then :func:`os.replace`): a killed extraction never leaves
a half-written clip that a reader would take as complete, and a rerun skips finished clips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from emi_lib.data.errors import DataError


def valid_steps(a) -> np.ndarray:
    """(T,) bool: the steps of a (T, D) array that are not masked (a masked step is a row of NaN)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a (T, D) array, got shape {a.shape}")
    return ~np.isnan(a).any(axis=1) if a.dtype.kind == "f" else np.ones(len(a), dtype=bool)


def check_features(arr: np.ndarray, what: str) -> None:
    """Raise ``ValueError`` unless every value is finite or its whole row is NaN (a masked step)."""
    bad = ~np.isfinite(arr)
    if bad.any():
        partial = bad.any(1) & ~np.isnan(arr).all(1)
        if partial.any():
            raise ValueError(f"features of {what} contain NaN or inf in {int(partial.sum())} step(s) that are "
                             "not wholly NaN (a masked step is a row of NaN)")


def split_composite(name: str) -> list[str]:
    """The parts of a concatenated backbone name (``"a+b[max=64]"`` -> ``["a", "b[max=64]"]``); a plain
    name gives ``[name]``. A ``+`` inside ``[...]`` options does not split."""
    parts, depth, cur = [], 0, ""
    for ch in name:
        depth += (ch == "[") - (ch == "]")
        if ch == "+" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    if len(parts) > 1 and any(not p for p in parts):
        raise ValueError(f"{name!r}: an empty part in a concatenated backbone name")
    return parts


def concat_steps(name: str, arrays: list[np.ndarray]) -> np.ndarray:
    """Join per-step features of the same input along D. Step counts may differ by a few steps at the end
    (window conventions of audio front ends): the common prefix is kept; a larger difference (over 2 % + 2
    steps) raises. A step masked (NaN) in any part is masked in the result."""
    n, longest = min(len(a) for a in arrays), max(len(a) for a in arrays)
    if longest - n > 0.02 * longest + 2:
        raise ValueError(f"{name!r}: the parts have {[len(a) for a in arrays]} steps for the same input")
    out = np.concatenate([np.asarray(a, dtype=np.float32)[:n] for a in arrays], axis=1)
    out[np.isnan(out).any(1)] = np.nan
    return out


#: Modalities whose backbone names may be concatenations (``a+b``), joined on read.
RAW_MODALITIES: tuple[str, ...] = ("vision", "audio")


def parse_stream(spec: str, default_modality: str) -> tuple[str, str]:
    """A stream named on a command line -> ``(modality, backbone)``: ``"vision/openclip-tiny"`` ->
    ``("vision", "openclip-tiny")``; a bare name gets ``default_modality``. Only the first ``/`` splits, and only
    after a modality name (backbone names such as ``openclip:ViT-B-32/openai`` keep theirs)."""
    head, sep, tail = spec.partition("/")
    known = {"vision", "audio", "text", "vision_aligned", "audio_aligned", "vision_clip", "audio_clip"}
    if sep and (head in known or head.endswith(("_aligned", "_clip"))):
        return head, tail
    return default_modality, spec


def _parts(modality: str, backbone: str) -> list[str]:
    return split_composite(backbone) if modality in RAW_MODALITIES else [backbone]


def backbone_key(name: str) -> str:
    """File-system-safe, collision-free folder name for a backbone name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


class FeatureStore:
    """Per-clip feature files under ``root`` (usually ``<run dir>/features``)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def folder(self, modality: str, backbone: str, split: str) -> Path:
        return self.root / modality / backbone_key(backbone) / split

    def path(self, modality: str, backbone: str, split: str, cid: str) -> Path:
        return self.folder(modality, backbone, split) / f"{cid}.npy"

    def has(self, modality: str, backbone: str, split: str, cid: str) -> bool:
        return self.path(modality, backbone, split, cid).exists()

    def write(self, modality: str, backbone: str, split: str, cid: str, array: np.ndarray) -> Path:
        if len(_parts(modality, backbone)) > 1:
            raise ValueError(f"{backbone!r} is a concatenation: write its parts, it is joined on read")
        arr = np.asarray(array, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"features of clip {cid} must be (T, D), got shape {arr.shape}")
        check_features(arr, f"clip {cid} ({modality}, {backbone})")
        folder = self.folder(modality, backbone, split)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder.parent / "backbone.json"
        if not meta.exists():
            meta.write_text(json.dumps({"backbone": backbone, "modality": modality}))
        final = folder / f"{cid}.npy"
        tmp = folder / f"{cid}.npy.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def read(self, modality: str, backbone: str, split: str, cid: str) -> np.ndarray:
        parts = _parts(modality, backbone)
        if len(parts) > 1:
            return concat_steps(backbone, [self.read(modality, p, split, cid) for p in parts])
        path = self.path(modality, backbone, split, cid)
        if not path.exists():
            raise DataError(path, f"no {modality} features for clip {cid} from backbone {backbone!r}", kind="missing")
        return np.load(path, allow_pickle=False).astype(np.float32, copy=False)

    def done_ids(self, modality: str, backbone: str, split: str) -> set[str]:
        parts = _parts(modality, backbone)
        if len(parts) > 1:
            return set.intersection(*(self.done_ids(modality, p, split) for p in parts))
        folder = self.folder(modality, backbone, split)
        return {p.name[:-4] for p in folder.glob("*.npy")} if folder.exists() else set()

    def load_split(self, modality: str, backbone: str, split: str, ids=None) -> dict[str, np.ndarray]:
        """All clips of a split (or ``ids``) as ``{id: (T, D) float32}``; a listed id without a
        file raises :class:`DataError` (use :meth:`done_ids` to see what exists)."""
        ids = sorted(self.done_ids(modality, backbone, split)) if ids is None else list(ids)
        return {cid: self.read(modality, backbone, split, cid) for cid in ids}


def check_coverage(store, pair, split: str, ids, packed=None) -> None:
    """Raise ``ValueError`` unless the stream ``pair`` = (modality, key) was produced for every clip of ``ids``:
    stored, or listed by its extraction as missing or failed (``_meta.json``; a concatenation ``a+b``: by each
    part). With ``packed``, every id must be listed in ``packed/<modality>/<key>/<split>`` (a packed store lists
    the clips that lack the stream with length 0)."""
    from emi_lib.features.extract import META_NAME

    mod, key = pair
    ids = set(ids)
    if packed is not None:
        from emi_lib.features.packed import PackedStore

        folder = Path(packed) / mod / key / split
        listed = set(PackedStore(folder)) if (folder / "index.json").exists() else set()
        where = folder
    else:
        listed, where = store.done_ids(mod, key, split), store.folder(mod, key, split)
        for part in split_composite(key) if mod in RAW_MODALITIES else [key]:
            meta = store.folder(mod, part, split) / META_NAME
            if meta.exists():  # clips the extraction found without the modality (or failing) are accounted for
                info = json.loads(meta.read_text())
                listed |= (set(info.get("missing", {})) | set(info.get("failed", {}))) & ids
    lacking = sorted(ids - listed)
    if lacking:
        raise ValueError(f"{where}: {mod}/{key} has no {split} features for {len(lacking)} of {len(ids)} clips "
                         f"(e.g. {lacking[:5]}): extract (python -m emi_lib.features.extract ... --splits {split}) "
                         "or export (launch stage1 --export) them first")
