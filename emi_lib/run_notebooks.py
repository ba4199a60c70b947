"""Run every numbered notebook in order with papermill: ``python -m emi_lib.run_notebooks``.

``make demo`` calls this with ``--profile demo``; executed notebooks go to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from emi_lib.notebook import repo_root


def numbered_notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    import papermill as pm

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="demo", choices=["smoke", "demo", "full"])
    ap.add_argument("--out", default=None, help="folder for executed notebooks (default runs/<profile>)")
    ap.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run, e.g. 00 01")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="extra parameter for every notebook (value parsed as YAML)")
    args = ap.parse_args(argv)
    import yaml

    root = repo_root()
    out = Path(args.out) if args.out else root / "runs" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EMI_PROFILE", args.profile)
    params = {"PROFILE": args.profile, **{k: yaml.safe_load(v) for k, v in args.parameter}}
    timings = []
    for nb in numbered_notebooks(root / "notebooks"):
        if args.only and not any(nb.name.startswith(p) for p in args.only):
            continue
        t0 = time.perf_counter()
        print(f"==> {nb.name} (profile {args.profile})", flush=True)
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, kernel_name="python3",
                            cwd=str(out), progress_bar=True)
        timings.append((nb.name, time.perf_counter() - t0))
    for name, sec in timings:
        print(f"{name}: {sec:.1f} s")
    total = sum(s for _, s in timings)
    print(f"total: {total:.1f} s; executed notebooks in {out}")
    if args.profile == "demo" and not args.only:
        import datetime
        import platform

        import pandas as pd

        from emi_lib.notebook import save_table

        table = pd.DataFrame({"wall time (s)": [s for _, s in timings] + [total],
                              "minutes": [s / 60 for _, s in timings] + [total / 60]},
                             index=pd.Index([n for n, _ in timings] + ["total"], name="notebook"))
        save_table(table, "demo_timing", out, publish=True, digits=1,
                   caption=f"`make demo` on {os.cpu_count()} CPU cores ({platform.machine()}, "
                           f"{datetime.date.today().isoformat()}), set-up excluded, papermill wall time per notebook")
    return 0


if __name__ == "__main__":
    sys.exit(main())
