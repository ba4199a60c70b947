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
a half-written clip that a reader would take as complete, and a rerun skips finished clips. A store may be
shared by several processes (:func:`emi_lib.paths.cache_root`): extraction and re-exports write a split
folder under its lock (:func:`emi_lib.features.extract_job.split_lock`).

**Provenance.** ``<root>/store.json`` records the data root the features were made from and its
fingerprint (:mod:`emi_lib.data.fingerprint`). :meth:`FeatureStore.bind` checks it before any extraction
or read for a root: a store of another root (or of this root before it was regenerated) raises, naming both;
a *derived* store (:func:`derived_store`, the notebooks' per-root cache) is emptied instead, so a
regenerated root invalidates what was derived from it. Everything under the store (per-clip features, the
priors tables ``priors/<split>.csv``, stage-1 exports) shares that record.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np

from emi_lib.data.errors import DataError
from emi_lib.data.fingerprint import ProvenanceError, check_same_root, describe, root_fingerprint, same_root
from emi_lib.paths import feature_store_dir

#: the provenance record of a store
PROVENANCE_NAME = "store.json"
#: what an extraction run records per split (``<store>/<modality>/<key>/<split>/_meta.json``)
META_NAME: str = "_meta.json"
STORE_SCHEMA = "emi.feature_store/v1"


def valid_steps(a) -> np.ndarray:
    """(T,) bool: the steps of a (T, D) array that are not masked (a masked step is a row of NaN)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a (T, D) array, got shape {a.shape}")
    return ~np.isnan(a).any(axis=1) if a.dtype.kind == "f" else np.ones(len(a), dtype=bool)


def subsample_steps(length: int, max_len: int | None) -> np.ndarray:
    r"""Indices of the steps kept from a sequence of ``length`` steps: all when it fits, else ``max_len`` evenly
    spaced ones, :math:`t_j = \mathrm{round}(j (T-1)/(L-1))`, :math:`j = 0..L-1` (ours: keeps the whole clip's
    span, which a crop would not, and is deterministic). The one even subsampling of the workbench: long
    feature sequences (stage 1 and 2 batches) and face crops (summary features, priors)."""
    if max_len is None or length <= max_len:
        return np.arange(length)
    return np.linspace(0, length - 1, int(max_len)).round().astype(int)


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

    # ------------------------------------------------------------------------------- provenance
    def provenance(self) -> dict | None:
        """The store's record (``store.json``): ``{"schema", "data": <root fingerprint>}``, or None."""
        path = self.root / PROVENANCE_NAME
        if not path.exists():
            return None
        try:
            rec = json.loads(path.read_text())
        except ValueError as err:
            raise ProvenanceError(f"{path}: unreadable provenance record ({err})") from err
        if rec.get("schema") != STORE_SCHEMA:
            raise ProvenanceError(f"{path}: unknown schema {rec.get('schema')!r} (expected {STORE_SCHEMA})")
        return rec

    def _record(self, fp: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{PROVENANCE_NAME}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"schema": STORE_SCHEMA, "data": fp}, indent=1))
        os.replace(tmp, self.root / PROVENANCE_NAME)

    def _has_content(self) -> bool:
        return self.root.exists() and any(p.name != PROVENANCE_NAME for p in self.root.iterdir())

    def bind(self, data_root: str | os.PathLike, *, on_mismatch: str = "raise") -> FeatureStore:
        """Check that this store holds features of ``data_root`` (module docstring, *Provenance*); returns self.

        A new store records the root. A store of another root, or of this root's previous content, raises
        :class:`ProvenanceError` naming both roots (``on_mismatch="raise"``) or is emptied and re-recorded
        (``"reset"``: derived caches only). A store written before stores kept a record holds features of
        an unknown root: ``"reset"`` empties it, ``"raise"`` refuses it."""
        if on_mismatch not in ("raise", "reset"):
            raise ValueError(f"on_mismatch must be 'raise' or 'reset', got {on_mismatch!r}")
        fp = root_fingerprint(data_root)
        rec = self.provenance()
        if rec is not None and same_root(rec.get("data"), fp):
            return self
        # about to record or empty: under a lock, so that two processes binding a new (or changed) shared store
        # at once neither empty each other's first files nor both reset it; then look again
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._bind_locked(fp, on_mismatch)

    def _bind_locked(self, fp: dict, on_mismatch: str) -> FeatureStore:
        rec = self.provenance()
        if rec is not None and same_root(rec.get("data"), fp):
            return self
        if rec is None and not self._has_content():
            self._record(fp)
            return self
        recorded = rec.get("data") if rec else None
        if on_mismatch == "raise":
            what = f"the feature store {self.root}" + ("" if rec else " (no provenance record)")
            check_same_root(recorded, fp, what)
        print(f"feature store {self.root}: made from {describe(recorded)}, now asked for {describe(fp)}: "
              "emptied (a derived cache is recomputed for the new content)")
        for p in self.root.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self._record(fp)
        return self

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
            tmp_meta = folder.parent / f"backbone.json.tmp{os.getpid()}-{threading.get_ident()}"
            tmp_meta.write_text(json.dumps({"backbone": backbone, "modality": modality}))
            os.replace(tmp_meta, meta)
        final = folder / f"{cid}.npy"
        tmp = folder / f"{cid}.npy.tmp"  # one writer per folder: extraction and re-exports hold its lock
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


def derived_store(profile: str, data_root: str | os.PathLike) -> FeatureStore:
    """The notebooks' shared feature store of one data root (:func:`emi_lib.paths.feature_store_dir`), bound to
    the root with ``on_mismatch="reset"``: a root regenerated in place empties it."""
    return FeatureStore(feature_store_dir(profile, data_root)).bind(data_root, on_mismatch="reset")
