"""Reuse of features computed for another root whose media are byte-identical.

A SynthMimic test set regenerated with only one corruption changed (the robustness sweep) holds the
same clips, and for every clip whose face crops (or audio) did not change, the same bytes: the face mesh
of those frames need not run again. :func:`reuse_features` copies the stored features of such clips from
a reference root's store, after checking, clip by clip, that the media the features were computed from
are identical (names, sizes and SHA-1 of every file): nothing is reused on trust, and a clip whose media
differ, or that the reference never stored, is extracted as usual. Text is never reused (a label prompt
depends on labels, not on media).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from emi_lib.data import DataError, DataRoot
from emi_lib.data.media import face_files
from emi_lib.features.store import FeatureStore


def media_files(dr: DataRoot, split: str, cid: str, modality: str, vision_source: str = "faces") -> list[Path]:
    """The files one clip's ``modality`` features are computed from ([] when the modality is absent)."""
    if modality == "vision" and vision_source == "faces":
        try:
            return face_files(dr.face_dir(split, cid))
        except DataError:
            return []
    p = dr.video_path(split, cid) if modality == "vision" else dr.audio_path(split, cid)
    return [p] if p.exists() else []


def media_signature(dr: DataRoot, split: str, cid: str, modality: str, vision_source: str = "faces") -> str | None:
    """SHA-1 over (name, size, content hash) of every media file of the clip; None when it has none."""
    files = media_files(dr, split, cid, modality, vision_source)
    if not files:
        return None
    h = hashlib.sha1()
    for p in files:
        data = p.read_bytes()
        h.update(f"{p.name}\0{len(data)}\0".encode())
        h.update(hashlib.sha1(data).digest())
    return h.hexdigest()


def reuse_features(dr: DataRoot, split: str, store: FeatureStore, modality: str, name: str, ids,
                   ref_root, ref_store, vision_source: str = "faces") -> list[str]:
    """Copy into ``store`` the ``name`` features of those ``ids`` whose media are byte-identical in
    ``ref_root`` (same split, same id) and stored in ``ref_store``; returns the ids copied."""
    if modality not in ("vision", "audio"):
        return []
    ref_dr = ref_root if isinstance(ref_root, DataRoot) else DataRoot(ref_root)
    ref_store = ref_store if isinstance(ref_store, FeatureStore) else FeatureStore(ref_store)
    if ref_dr.root.resolve() == dr.root.resolve() and ref_store.root.resolve() == store.root.resolve():
        return []
    have = ref_store.done_ids(modality, name, split)
    if split not in ref_dr.available_splits():
        return []
    ref_ids = set(ref_dr.ids(split))
    copied = []
    for cid in ids:
        if cid not in have or cid not in ref_ids:
            continue
        sig = media_signature(dr, split, cid, modality, vision_source)
        if sig is None or sig != media_signature(ref_dr, split, cid, modality, vision_source):
            continue
        store.write(modality, name, split, cid, ref_store.read(modality, name, split, cid))
        copied.append(cid)
    return copied
