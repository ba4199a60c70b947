"""What a data root *is*, in a few bytes: the fingerprint every derived thing records and every reader checks.

A feature store, a priors table, a stage-1 export, an ablation cache or a trained model records the data root
it was made from and the root's fingerprint; whoever reads it compares the fingerprint with the root it was
given (:func:`check_same_root`) and refuses, naming both roots, when they differ. That makes two silent
failures loud: consuming the outputs of *another* root (another SynthMimic seed has the same clip ids), and
consuming outputs of a root that was regenerated in place since.

**SynthMimic roots**: the SHA-1 of the manifest's generator, version, seed, profile, config and splits (not its
timing fields): the generator is deterministic, so the same manifest means the same files.

**Other roots** (Hume-Vidmimic2): the SHA-1 of the split CSVs' bytes and of a listing of the media and feature
folders, name and size of every file one level deep (``raw/``, ``audio/``, ``text/``, ``vit/``, ...), and for
``face_images/`` each clip folder's name and number of files (not their sizes: that would be one ``stat`` per
crop, millions on the real data). Seconds on the real data set; media are never hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from emi_lib.constants import SPLIT_CSV

SCHEMA = "emi.data_fingerprint/v1"
_VOLATILE = ("workers", "wall_time_s", "note")


class ProvenanceError(ValueError):
    """A derived thing was made from another data root (or from this root before it was regenerated)."""


def _manifest(root: Path) -> Path:
    return root / "synthmimic" / "manifest.json"


def _listing(folder: Path, h, *, count_only: bool = False) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=True):
            n = sum(1 for _ in os.scandir(e.path)) if count_only else -1
            h.update(f"{e.name}/ {n}\n".encode())
        elif not count_only:
            h.update(f"{e.name} {e.stat().st_size}\n".encode())


def _files_digest(root: Path) -> str:
    h = hashlib.sha1()
    for rel in sorted(set(SPLIT_CSV.values())):
        p = root / rel
        h.update(f"{rel}\n".encode())
        if p.exists():
            h.update(p.read_bytes())
    for base in sorted({(root / rel).parent for rel in SPLIT_CSV.values()}):
        if not base.is_dir():
            continue
        for sub in sorted(p for p in base.iterdir() if p.is_dir() and p.name not in ("synthmimic", "test_data")):
            h.update(f"[{sub.relative_to(root)}]\n".encode())
            _listing(sub, h, count_only=sub.name == "face_images")
    return h.hexdigest()[:16]


_CACHE: dict = {}


def _stat_key(root: Path) -> tuple:
    """What changes when a root is regenerated or edited: modification times of the root, the manifest,
    the split CSVs and the media folders (a cheap key for the in-process cache of fingerprints)."""
    paths = [root, _manifest(root), *(root / rel for rel in SPLIT_CSV.values())]
    for base in {root, root / "test_data"}:
        if base.is_dir():
            paths += [p for p in base.iterdir() if p.is_dir()]
    return tuple((str(p), p.stat().st_mtime_ns if p.exists() else None) for p in sorted(paths))


#: seconds a fingerprint of a non-SynthMimic root is reused in this process while its folders and tables keep
#: their modification times (a file rewritten in place changes no folder's time: it is seen after this long)
CACHE_SECONDS = 60.0


def clear_cache() -> None:
    _CACHE.clear()


def root_fingerprint(root: str | os.PathLike) -> dict:
    """``{"data_root": <resolved path>, "kind": "synthmimic" | "files", "fingerprint": <16 hex digits>}``.

    SynthMimic roots are read fresh every time (one small file). Other roots are cached in this process for
    :data:`CACHE_SECONDS` while their folders' and tables' modification times stay the same: a feature
    extraction binds its store once per split and backbone, and the listing takes seconds on the real data."""
    root = Path(root).expanduser().resolve()
    if _manifest(root).exists():
        return _compute(root)
    key, now = _stat_key(root), time.monotonic()
    hit = _CACHE.get(root)
    if hit is None or hit[0] != key or now - hit[1] > CACHE_SECONDS:
        _CACHE[root] = hit = (key, now, _compute(root))
    return dict(hit[2])


def _compute(root: Path) -> dict:
    man = _manifest(root)
    if man.exists():
        info = json.loads(man.read_text())
        stable = {k: v for k, v in info.items() if k in ("generator", "version", "seed", "profile", "config", "splits")}
        digest = hashlib.sha1(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]
        kind = "synthmimic"
    else:
        digest, kind = _files_digest(root), "files"
    return {"data_root": str(root), "kind": kind, "fingerprint": digest}


def same_root(recorded: dict | None, actual: dict) -> bool:
    """Whether a recorded provenance (a dict with at least ``fingerprint``) matches ``actual``."""
    return bool(recorded) and recorded.get("fingerprint") == actual.get("fingerprint")


def describe(fp: dict | None) -> str:
    if not fp:
        return "an unrecorded data root"
    return f"{fp.get('data_root', '?')} (fingerprint {fp.get('fingerprint', '?')})"


def check_same_root(recorded: dict | None, actual: dict, what: str) -> None:
    """Raise :class:`ProvenanceError` naming both roots unless ``recorded`` (what ``what`` was made from)
    is the root ``actual``."""
    if same_root(recorded, actual):
        return
    same_path = recorded and recorded.get("data_root") == actual.get("data_root")
    why = ("the root was regenerated or changed since" if same_path else "it belongs to another data root")
    raise ProvenanceError(f"{what} was made from {describe(recorded)}, not from {describe(actual)}: {why}. "
                          "Recompute it for this root (or point at the outputs of this root).")
