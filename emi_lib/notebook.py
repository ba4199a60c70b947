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

PROFILES = ("smoke", "demo", "full")


def default_profile() -> str:
    """``$EMI_PROFILE`` or ``"demo"``."""
    profile = os.environ.get("EMI_PROFILE", "demo")
    if profile not in PROFILES:
        raise ValueError(f"EMI_PROFILE={profile!r} is not one of {PROFILES}")
    return profile


def repo_root() -> Path:
    """The checkout that holds this package (``emi_lib/..``) when installed in editable mode,
    else the current working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def runs_root(profile: str) -> Path:
    """Where runs of a profile live: ``$EMI_RUNS_DIR`` or ``<repo>/runs/<profile>``."""
    env = os.environ.get("EMI_RUNS_DIR")
    return Path(env) if env else repo_root() / "runs" / profile


def run_dir(profile: str, name: str, override: str | os.PathLike | None = None) -> Path:
    """The run folder of one notebook (created). ``override`` (the ``RUN_DIR`` parameter) wins."""
    path = Path(override) if override else runs_root(profile) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def synth_root(profile: str, seed: int) -> Path:
    """The shared SynthMimic root of a profile and seed, reused by every notebook of a run."""
    gen_profile = "demo" if profile == "full" else profile
    return runs_root(profile) / f"synthmimic_{gen_profile}_seed{seed}"


def resolve_data_root(data_root: str | os.PathLike | None, profile: str, seed: int) -> Path:
    """The ``DATA_ROOT`` parameter of every notebook: a given path (a Hume-Vidmimic2 root), or, when
    empty, the shared SynthMimic root of this profile and seed (generated once, reused after).
    Profile ``full`` without a root uses SynthMimic's ``demo`` profile."""
    if data_root:
        root = Path(data_root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"DATA_ROOT {root} is not a folder")
        return root
    from emi_lib.data.synth import ensure_synthmimic

    gen_profile = "demo" if profile == "full" else profile
    return Path(ensure_synthmimic(synth_root(profile, seed), profile=gen_profile, seed=seed)).resolve()


def figures_dir() -> Path:
    """``$EMI_FIGURES_DIR`` or ``<repo>/figures``: where a demo run publishes its key figures."""
    env = os.environ.get("EMI_FIGURES_DIR")
    return Path(env) if env else repo_root() / "figures"


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


def record(name: str, value, out_dir: Path) -> None:
    """Publish a metric: merged into ``out_dir/metrics.json`` (read back by tests and batch runs)
    and shown in the notebook's output. NaN is stored as ``null``, never as 0."""
    out_dir = Path(out_dir)
    path = out_dir / "metrics.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = _jsonable(value)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    try:
        from IPython.display import display

        display({"application/json": {name: data[name]}, "text/plain": f"recorded {name} = {data[name]!r}"}, raw=True)
    except ImportError:  # pragma: no cover - IPython is a pinned dependency
        pass


def read_records(out_dir: Path) -> dict:
    """The metrics a notebook recorded in ``out_dir``."""
    path = Path(out_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def feature_store_dir(profile: str, data_root: str | os.PathLike) -> Path:
    """The feature store shared by every notebook of a profile for one data root:
    ``<runs root>/features/<root name>-<hash of its path>`` (extraction is resumable, so the
    second notebook that asks for the same backbone reuses the first one's files)."""
    import hashlib

    root = Path(data_root).resolve()
    key = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    return runs_root(profile) / "features" / key


def stage_run_dir(profile: str, notebook_stem: str) -> Path:
    """Default run folder of another notebook (e.g. notebook 02 reads notebook 01's)."""
    return runs_root(profile) / notebook_stem
