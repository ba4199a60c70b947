"""Papermill batch runs: one notebook executed once per parameter combination.

``python -m emi_lib.batch NOTEBOOK GRID.yaml --out runs/NAME [--profile smoke|demo|full] [--dry-run]``

The grid file holds ``base:`` (parameters for every variant), ``grid:`` (name -> list of values,
expanded as a cartesian product) and/or ``variants:`` (a list of parameter dicts, each with an
optional ``name``). With both, every variant is crossed with every grid combination. Each
combination runs in ``<out>/<variant>/``::

    <variant>/params.json      the requested parameters (without RUN_DIR)
    <variant>/<notebook>.ipynb the executed notebook (cwd of the kernel = <variant>/)
    <variant>/run/             passed as RUN_DIR: figures and metrics.json (emi_lib.notebook.record)
    <variant>/_DONE            written atomically after success; _FAILED holds the error's tail

A variant with ``_DONE`` and an identical ``params.json`` is skipped; any other is (re)run from a
clean run folder. A failure does not stop the batch; failures are listed at the end (exit code 1).
:func:`collect` gathers every finished variant's parameters and metrics into one DataFrame.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

DONE, FAILED, PARAMS, RUN_SUBDIR = "_DONE", "_FAILED", "params.json", "run"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAX_NAME = 120


@dataclass
class Variant:
    name: str
    params: dict


@dataclass
class BatchReport:
    out: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> last lines of the error
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{len(self.done)} run, {len(self.skipped)} skipped, {len(self.failed)} failed in {self.out}"]
        for name, err in self.failed.items():
            last = err.strip().splitlines()[-1] if err.strip() else "?"
            lines.append(f"  FAILED {name}: {last}  (see {self.out / name / FAILED})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- grid expansion
def _fmt(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _canonical(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _safe_name(raw: str, params: dict) -> str:
    """``raw`` made filesystem-safe; when sanitising loses information (or the name is too long)
    a hash of the parameters is appended so that two different combinations never share a folder."""
    safe = _UNSAFE.sub("_", raw).strip(".") or "variant"
    if safe != raw or len(safe) > _MAX_NAME:
        digest = hashlib.sha1(_canonical(params).encode()).hexdigest()[:8]
        safe = f"{safe[:_MAX_NAME]}-{digest}"
    return safe


def load_grid(grid) -> dict:
    """A grid spec from a YAML path or a dict, validated."""
    if not isinstance(grid, dict):
        import yaml

        grid = yaml.safe_load(Path(grid).read_text()) or {}
    unknown = set(grid) - {"base", "grid", "variants"}
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}: use base, grid, variants")
    if not grid.get("grid") and not grid.get("variants"):
        raise ValueError("a grid file needs 'grid:' and/or 'variants:'")
    if not isinstance(grid.get("base") or {}, dict) or not isinstance(grid.get("grid") or {}, dict):
        raise ValueError("'base' and 'grid' must be mappings")
    if not isinstance(grid.get("variants") or [], list):
        raise ValueError("'variants' must be a list of mappings")
    return grid


def expand(grid) -> list[Variant]:
    """Every combination of a grid spec (path or dict) as named variants, in a stable order."""
    spec = load_grid(grid)
    base = dict(spec.get("base") or {})
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in (spec.get("grid") or {}).items()}
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    variants = spec.get("variants") or [{}]
    out, seen = [], {}
    for var in variants:
        if not isinstance(var, dict):
            raise ValueError(f"variant {var!r} is not a mapping")
        var = dict(var)
        label = var.pop("name", None)
        for combo in combos:
            params = {**base, **var, **combo}
            parts = [str(label)] if label is not None else [f"{k}={_fmt(v)}" for k, v in var.items()]
            parts += [f"{k}={_fmt(v)}" for k, v in combo.items()]
            name = _safe_name("__".join(parts) or "default", params)
            key = _canonical(params)
            if name in seen:
                what = "identical parameters" if seen[name] == key else "the same name"
                raise ValueError(f"two variants have {what}: {name}")
            seen[name] = key
            out.append(Variant(name, params))
    return out


# --------------------------------------------------------------------------- execution
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_done(vdir: Path, params: dict) -> bool:
    """Finished, with exactly these parameters."""
    return (vdir / DONE).exists() and _read_json(vdir / PARAMS) == json.loads(_canonical(params))


def _error_tail(exc: BaseException, n: int = 30) -> str:
    tb = getattr(exc, "traceback", None)  # papermill's PapermillExecutionError keeps the cell's one
    text = "\n".join(tb) if tb else "".join(traceback.format_exception(exc))
    lines = _ANSI.sub("", text).rstrip().splitlines()
    return "\n".join(lines[-n:]) + "\n"


def run_variant(notebook: Path, vdir: Path, params: dict) -> None:
    """Execute ``notebook`` in ``vdir`` with ``params`` + RUN_DIR; raise on failure."""
    import papermill as pm

    for marker in (DONE, FAILED):
        (vdir / marker).unlink(missing_ok=True)
    run = vdir / RUN_SUBDIR
    if run.exists():  # metrics.json merges records: never mix two runs' numbers
        shutil.rmtree(run)
    run.mkdir(parents=True)
    _write_atomic(vdir / PARAMS, json.dumps(params, indent=2, sort_keys=True, default=str))
    pm.execute_notebook(str(notebook), str(vdir / notebook.name),
                        parameters={**params, "RUN_DIR": str(run.resolve())},
                        kernel_name="python3", cwd=str(vdir), progress_bar=False, log_output=False)


def run_grid(notebook, grid, out, profile: str | None = None, progress: bool = True,
             dry_run: bool = False) -> BatchReport:
    """Run ``notebook`` once per variant of ``grid`` (YAML path or dict) into ``out``.

    ``profile`` (if given) is passed as the ``PROFILE`` parameter and as ``$EMI_PROFILE``."""
    from tqdm.auto import tqdm

    notebook = Path(notebook).resolve()
    if not notebook.exists():
        raise FileNotFoundError(notebook)
    variants = expand(grid)
    if profile is not None:
        variants = [Variant(v.name, {"PROFILE": profile, **v.params}) for v in variants]
    out = Path(out).resolve()
    report = BatchReport(out)
    if dry_run:
        for v in variants:
            state = "done" if is_done(out / v.name, v.params) else "todo"
            print(f"[{state}] {v.name}: {json.dumps(v.params, default=str)}")
        return report
    out.mkdir(parents=True, exist_ok=True)
    old_env = os.environ.get("EMI_PROFILE")
    if profile is not None:
        os.environ["EMI_PROFILE"] = profile
    try:
        bar = tqdm(variants, desc=f"batch {notebook.stem}", unit="variant", disable=not progress)
        for v in bar:
            vdir = out / v.name
            if is_done(vdir, v.params):
                report.skipped.append(v.name)
                bar.write(f"[skip] {v.name} (done)")
                continue
            vdir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                run_variant(notebook, vdir, v.params)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not stop the batch
                sec = time.perf_counter() - t0
                err = _error_tail(exc)
                _write_atomic(vdir / FAILED, err)
                report.failed[v.name], report.seconds[v.name] = err, sec
                bar.write(f"[FAILED] {v.name} {sec:.1f} s: {err.strip().splitlines()[-1] if err.strip() else ''}")
                continue
            sec = time.perf_counter() - t0
            _write_atomic(vdir / DONE, json.dumps({"seconds": round(sec, 3), "finished": time.time()}))
            report.done.append(v.name)
            report.seconds[v.name] = sec
            bar.write(f"[ok] {v.name} {sec:.1f} s")
        bar.close()
    finally:
        if profile is not None:
            if old_env is None:
                os.environ.pop("EMI_PROFILE", None)
            else:
                os.environ["EMI_PROFILE"] = old_env
    return report


# --------------------------------------------------------------------------- collection
def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif value is None or isinstance(value, bool | int | float | str):
            flat[name] = value
    return flat


def collect(runs_dir, include_failed: bool = False):
    """One row per finished variant of ``runs_dir``: ``variant``, ``status``, ``seconds``, its
    parameters as ``param.<NAME>`` and every scalar recorded metric (nested dicts joined with ".").
    With ``include_failed`` failed variants appear too (status "failed", no metrics)."""
    import pandas as pd

    from emi_lib.notebook import read_records

    rows = []
    for vdir in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()) if Path(runs_dir).is_dir() else []:
        if (vdir / DONE).exists():
            status = "done"
        elif include_failed and (vdir / FAILED).exists():
            status = "failed"
        else:
            continue
        row = {"variant": vdir.name, "status": status}
        row["seconds"] = (_read_json(vdir / DONE) or {}).get("seconds") if status == "done" else None
        params = _read_json(vdir / PARAMS) or {}
        row.update({f"param.{k}": (v if not isinstance(v, list | dict) else _fmt(v)) for k, v in params.items()})
        if status == "done":
            row.update(_flatten(read_records(vdir / RUN_SUBDIR)))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebook", type=Path)
    ap.add_argument("grid", type=Path, help="YAML with base:, grid: and/or variants:")
    ap.add_argument("--out", type=Path, required=True, help="batch folder, e.g. runs/NAME")
    ap.add_argument("--profile", default=None, choices=["smoke", "demo", "full"],
                    help="PROFILE parameter and EMI_PROFILE for every variant")
    ap.add_argument("--dry-run", action="store_true", help="list the variants and their state; run nothing")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    report = run_grid(args.notebook, args.grid, args.out, profile=args.profile,
                      progress=not args.no_progress, dry_run=args.dry_run)
    if not args.dry_run:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
