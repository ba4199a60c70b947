"""Helpers the numbered notebooks share: profile, run folders, figures and recorded metrics.

A notebook's ``parameters`` cell reads its defaults from the environment so that the same
file runs three ways:

* interactively or under ``make demo`` (``EMI_PROFILE`` unset: profile ``demo``);
* under nbval in the tests (``EMI_PROFILE=smoke``);
* under papermill with injected parameters (the injected values win).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from emi_lib.paths import (  # noqa: F401  (the path policy, re-exported for the notebooks)
    PROFILES,
    cache_root,
    default_profile,
    feature_store_dir,
    figures_dir,
    is_canonical_run,
    model_run_dir,
    repo_root,
    run_dir,
    runs_root,
    stage_run_dir,
    synth_root,
)


def resolve_data_root(data_root: str | os.PathLike | None, profile: str, seed: int,
                      synth_profile: str | None = None) -> Path:
    """The ``DATA_ROOT`` parameter of every notebook: a given path (a Hume-Vidmimic2 root), or, when
    empty, the shared SynthMimic root of this profile and seed (generated once, reused after).
    Profile ``full`` without a root uses SynthMimic's ``demo`` profile; ``synth_profile`` names another
    generator profile (notebook 03's ``STUDY``: ``"bench"``, 1000/500/500 clips)."""
    if data_root:
        root = Path(data_root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"DATA_ROOT {root} is not a folder")
        return root
    from emi_lib.data.synth import ensure_synthmimic

    gen_profile = synth_profile or ("demo" if profile == "full" else profile)
    return Path(ensure_synthmimic(synth_root(profile, seed, synth_profile), profile=gen_profile, seed=seed)).resolve()


def save_figure(fig, name: str, out_dir: Path, *, publish: bool = False, dpi: int = 110) -> Path:
    """Save ``fig`` as ``out_dir/name.png``; with ``publish`` also copy it to :func:`figures_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if publish:
        dest = figures_dir()
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / path.name)
    return path


def markdown_table(df, digits: int = 3) -> str:
    """A DataFrame as a GitHub markdown table (floats with ``digits`` decimals, NaN as "–")."""
    def cell(v):
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    name = df.index.name or ""
    lines = ["| " + " | ".join([name, *map(str, df.columns)]) + " |", "|" + "---|" * (len(df.columns) + 1)]
    for idx, *vals in df.itertuples(name=None):  # per-column dtypes kept (iterrows would make ints floats)
        lines.append("| " + " | ".join([cell(idx), *(cell(v) for v in vals)]) + " |")
    return "\n".join(lines)


def save_table(table, name: str, out_dir: Path, *, publish: bool = False, caption: str = "", digits: int = 3) -> Path:
    """Write ``table`` (a DataFrame, or markdown text) as ``out_dir/name.md``; with ``publish`` also to
    ``<figures_dir>/tables/name.md``, where ``python -m emi_lib.report`` picks it up for the README's
    results section (tables are written by the notebooks, never typed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = table if isinstance(table, str) else markdown_table(table, digits)
    text = (f"{caption}\n\n" if caption else "") + text.rstrip() + "\n"
    path = out_dir / f"{name}.md"
    path.write_text(text)
    if publish:
        dest = figures_dir() / "tables"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / path.name).write_text(text)
    return path


def _jsonable(value):
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def record(name: str, value, out_dir: Path, *, show: bool = False) -> None:
    """Publish a metric: merged into ``out_dir/metrics.json`` (read back by tests and batch runs). NaN is stored
    as ``null``, never as 0. Quiet: a notebook shows its numbers in its own words; ``show`` prints one short
    line (``recorded name = value``, cut at 120 characters), never a display object."""
    out_dir = Path(out_dir)
    path = out_dir / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = _jsonable(value)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    if show:
        line = f"recorded {name} = {json.dumps(data[name])}"
        print(line if len(line) <= 120 else line[:119] + "…")


def read_records(out_dir: Path) -> dict:
    """The metrics a notebook recorded in ``out_dir``."""
    path = Path(out_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


