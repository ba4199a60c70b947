r"""Export of stored features in the challenge's per-clip layout, to share them with other challenge code.

The Hume-Vidmimic2 release (and the ABAW EMI baseline) distributes pre-extracted features as one pickle per clip:
``vit/{id:05d}.pkl`` (vision) and ``wav2vec2/{id:05d}.pkl`` (audio) under the root for train and valid, under
``test_data/`` for test, each a ``(T, D)`` array. This module writes a :class:`~emi_lib.features.store.FeatureStore`
stream in exactly that layout, and exactly what this repository's reader of it takes back
(:func:`emi_lib.data.load_features`, used by the ``official`` backbone of :mod:`emi_lib.features.extract` and by
:class:`~emi_lib.data.DataRoot`): each file is a pickle (protocol 4) of a C-contiguous float32 numpy array, read back
and compared bit for bit after writing. Extracting the exported folder with ``--vision official --audio official``
therefore gives the store's arrays unchanged.

Rules:

- **A clip lacking the modality gets no file**, as in the release (the store holds no features for it, or an empty
  ``(0, D)`` sequence, as a stage-1 export writes): it is listed under ``missing`` in the manifest.
- **Masked steps** (rows of NaN, e.g. frames without a detected face) have no place in the release's format, whose
  readers refuse NaN. ``masked="raise"`` (default) refuses the clip, naming it; ``masked="drop"`` removes those rows
  (a clip with every step masked gets no file) and the manifest lists the clips and how many rows were dropped.
  The round trip is then exact up to the dropped rows.
- **Existing files** are never silently replaced: an identical file is kept, a different one (or a file for a clip the
  store lacks) raises unless ``overwrite`` (then it is replaced, or removed).
- **Split CSVs**: when ``out`` is not the data root, the root's split CSVs are copied, so ``out`` is a root the
  challenge code (and :class:`~emi_lib.data.DataRoot`) can read; a different CSV already there raises.
- ``out/official_export.json`` records what the files were made from: the store, the data root, the stream of each
  folder, and per split and folder the clips written, missing and with dropped rows.

CLI::

    python -m emi_lib.features.export_official --store FEATS --root ROOT --out SHARED \
        --vision vision/openclip-tiny --audio audio/logmel [--splits train valid test] [--masked drop]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np

from emi_lib.constants import SPLIT_CSV
from emi_lib.data import DataError, DataRoot, load_features
from emi_lib.features.coverage import check_coverage
from emi_lib.features.extract_sources import OFFICIAL_FOLDERS
from emi_lib.features.store import FeatureStore, parse_stream, valid_steps

SCHEMA = "emi.official_export/v1"
MANIFEST = "official_export.json"
PICKLE_PROTOCOL = 4


def _write_pickle(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(arr, fh, protocol=PICKLE_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _same_file(path: Path, arr: np.ndarray) -> bool:
    try:
        got = load_features(path)
    except DataError:
        return False
    return got.shape == arr.shape and np.array_equal(got, arr)


def _copy_csvs(root: Path, out: Path, splits) -> None:
    for split in splits:
        src, dst = root / SPLIT_CSV[split], out / SPLIT_CSV[split]
        if dst.exists():
            if dst.read_bytes() != src.read_bytes():
                raise ValueError(f"{dst} exists and differs from {src}: export into an empty folder or the root itself")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def export_official(store, root, out, vision: tuple[str, str] | None = None, audio: tuple[str, str] | None = None,
                    splits=None, masked: str = "raise", overwrite: bool = False) -> dict:
    """Write ``store``'s ``vision`` / ``audio`` streams ((modality, key) pairs, e.g. ``("vision", "openclip-tiny")``)
    for every clip of ``splits`` (default: the root's) of ``root`` into ``out`` in the challenge layout (module
    docstring). Returns the manifest (also written to ``out/official_export.json``)."""
    if masked not in ("raise", "drop"):
        raise ValueError(f"masked must be 'raise' or 'drop', got {masked!r}")
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    data = DataRoot(root)
    out = Path(out)
    splits = data.available_splits() if splits is None else list(splits)
    streams = {OFFICIAL_FOLDERS[m]: pair for m, pair in (("vision", vision), ("audio", audio)) if pair}
    if not streams:
        raise ValueError("give at least one stream to export (vision and/or audio)")
    same_root = out.resolve() == data.root.resolve()
    if not same_root:
        _copy_csvs(data.root, out, splits)
    report = {}
    for split in splits:
        ids = data.ids(split)
        for folder_name, (mod, key) in streams.items():
            folder = out / Path(SPLIT_CSV[split]).parent / folder_name
            check_coverage(store, (mod, key), split, ids)  # every clip stored or listed as lacking the modality
            stored = store.done_ids(mod, key, split)
            rep = {"written": 0, "unchanged": 0, "missing": [], "dropped_masked_steps": {}}
            for cid in ids:
                path = folder / f"{cid}.pkl"
                arr = store.read(mod, key, split, cid) if cid in stored else np.zeros((0, 1), np.float32)
                keep = valid_steps(arr) if len(arr) else np.zeros(0, bool)
                if len(arr) and not keep.all():
                    if masked == "raise":
                        raise ValueError(f"{store.path(mod, key, split, cid)}: {int((~keep).sum())} of {len(arr)} steps "
                                         "are masked (NaN rows), which the challenge layout cannot hold: use "
                                         "masked='drop' (--masked drop) to leave them out")
                    rep["dropped_masked_steps"][cid] = int((~keep).sum())
                    arr = arr[keep]
                arr = np.ascontiguousarray(arr, dtype=np.float32)
                if not len(arr):  # the clip lacks the modality: no file, as in the release
                    rep["missing"].append(cid)
                    if path.exists():
                        if not overwrite:
                            raise ValueError(f"{path} exists but the store holds no {mod} features for clip {cid}: "
                                             "remove it or pass overwrite (--overwrite)")
                        path.unlink()
                    continue
                if path.exists():
                    if _same_file(path, arr):
                        rep["unchanged"] += 1
                        continue
                    if not overwrite:
                        raise ValueError(f"{path} exists and differs from {store.path(mod, key, split, cid)}: "
                                         "remove it or pass overwrite (--overwrite)")
                _write_pickle(arr, path)
                if not _same_file(path, arr):  # what the readers of the layout take back
                    raise RuntimeError(f"{path}: the written file does not read back as the stored array")
                rep["written"] += 1
            report.setdefault(split, {})[folder_name] = rep
    manifest = {"schema": SCHEMA, "store_dir": str(store.root.resolve()), "data_root": str(data.root.resolve()),
                "streams": {f: list(p) for f, p in streams.items()}, "format": f"pickle protocol {PICKLE_PROTOCOL} of a "
                "C-contiguous float32 (T, D) numpy array, one file per clip", "masked": masked, "splits": report}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 0, or 2 on a bad argument, a masked step under --masked raise, or a conflicting file."""
    ap = argparse.ArgumentParser(prog="python -m emi_lib.features.export_official",
                                 description="Write stored features in the challenge's per-clip layout (vit/, "
                                             "wav2vec2/: one pickled (T, D) float32 array per clip).",
                                 epilog="A clip lacking the modality gets no file (listed in official_export.json). "
                                        "Reading the folder back with 'python -m emi_lib.features.extract OUT --vision "
                                        "official --audio official' gives the store's arrays unchanged.")
    ap.add_argument("--store", required=True, help="feature store folder to export from")
    ap.add_argument("--root", required=True, help="data root whose split CSVs list the clips of each split")
    ap.add_argument("--out", required=True, help="folder to write (the root itself, or a new folder that gets a copy "
                    "of the split CSVs)")
    ap.add_argument("--vision", help="stream written to vit/: MODALITY/BACKBONE as stored, e.g. vision/openclip-tiny")
    ap.add_argument("--audio", help="stream written to wav2vec2/: MODALITY/BACKBONE as stored, e.g. audio/logmel")
    ap.add_argument("--splits", nargs="+", choices=tuple(SPLIT_CSV), help="default: every split whose CSV exists")
    ap.add_argument("--masked", choices=("raise", "drop"), default="raise",
                    help="clips with masked steps (NaN rows): raise refuses them (default), drop leaves those rows out")
    ap.add_argument("--overwrite", action="store_true", help="replace (or remove) existing files that differ")
    a = ap.parse_args(argv)
    if not (a.vision or a.audio):
        ap.error("give --vision and/or --audio")
    try:
        man = export_official(a.store, a.root, a.out, parse_stream(a.vision, "vision") if a.vision else None,
                              parse_stream(a.audio, "audio") if a.audio else None, a.splits, a.masked, a.overwrite)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split, folders in man["splits"].items():
        for folder, rep in folders.items():
            print(f"{split} {folder}/: {rep['written']} written, {rep['unchanged']} unchanged, {len(rep['missing'])} "
                  f"missing (no file), {len(rep['dropped_masked_steps'])} with masked steps dropped")
    print(f"manifest: {Path(a.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
