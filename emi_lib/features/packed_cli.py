"""CLI of :mod:`emi_lib.features.packed` (``python -m emi_lib.features.packed ...`` runs this)::

    python -m emi_lib.features.packed build --store FEATURES --modality vision --backbone NAME --split train --out DIR
    python -m emi_lib.features.packed build --pkl-dir DATA/vit --out DIR      # official .pkl, safe loader
    python -m emi_lib.features.packed verify DIR

``build`` writes the store atomically (complete or absent); ``verify`` exits 1 and prints the
reason (naming the bad file) when the index and the data file disagree.
"""

from __future__ import annotations

import argparse

from emi_lib.data.errors import DataError
from emi_lib.features.packed import PackedStore, build_from_pkl_dir, build_from_store


def verify(path) -> PackedStore:
    """Open (and so check) a packed store; raises :class:`DataError` naming the bad file."""
    return PackedStore(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emi_lib.features.packed",
                                 description="Build or verify a packed feature store.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="pack a FeatureStore split or a folder of .pkl files")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="FeatureStore root (needs --modality, --backbone, --split)")
    src.add_argument("--pkl-dir", help="folder of <id>.pkl files (read with the safe loader)")
    b.add_argument("--modality")
    b.add_argument("--backbone")
    b.add_argument("--split")
    b.add_argument("--out", required=True, help="the store folder to create (replaced atomically)")
    b.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    v = sub.add_parser("verify", help="check a store against its index")
    v.add_argument("path")
    args = ap.parse_args(argv)
    if args.cmd == "verify":
        try:
            s = verify(args.path)
        except DataError as err:
            print(f"INVALID: {err}")
            return 1
        print(f"OK: {s!r}, {sum(1 for n in s._len if n == 0)} empty clips")
        return 0
    if args.store:
        if not (args.modality and args.backbone and args.split):
            ap.error("--store needs --modality, --backbone and --split")
        from emi_lib.features.store import FeatureStore

        out = build_from_store(FeatureStore(args.store), args.modality, args.backbone, args.split, args.out,
                               dtype=args.dtype)
    else:
        out = build_from_pkl_dir(args.pkl_dir, args.out, dtype=args.dtype)
    print(f"built {PackedStore(out)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
