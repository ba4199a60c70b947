"""A per-clip feature store on disk, keyed by modality, backbone and split.

Layout: ``<root>/<modality>/<backbone-key>/<split>/<id>.npy`` with float32 (T, D) arrays
(a text embedding is stored as (1, D)). The backbone key is the backbone's name made
file-system safe (``openclip:ViT-B-32/openai`` -> ``openclip_ViT-B-32_openai``) plus a short
hash of the exact name, so two backbones can never share a folder.

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
        arr = np.asarray(array, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"features of clip {cid} must be (T, D), got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"features of clip {cid} ({modality}, {backbone}) contain NaN or inf")
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
        path = self.path(modality, backbone, split, cid)
        if not path.exists():
            raise DataError(path, f"no {modality} features for clip {cid} from backbone {backbone!r}", kind="missing")
        return np.load(path, allow_pickle=False).astype(np.float32, copy=False)

    def done_ids(self, modality: str, backbone: str, split: str) -> set[str]:
        folder = self.folder(modality, backbone, split)
        return {p.name[:-4] for p in folder.glob("*.npy")} if folder.exists() else set()

    def load_split(self, modality: str, backbone: str, split: str, ids=None) -> dict[str, np.ndarray]:
        """All clips of a split (or ``ids``) as ``{id: (T, D) float32}``; a listed id without a
        file raises :class:`DataError` (use :meth:`done_ids` to see what exists)."""
        ids = sorted(self.done_ids(modality, backbone, split)) if ids is None else list(ids)
        return {cid: self.read(modality, backbone, split, cid) for cid in ids}
