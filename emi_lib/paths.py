"""Where things live: profiles, run folders, the shared SynthMimic roots, feature stores, published figures.

One module every layer may import (it imports nothing else of ``emi_lib``), so the path policy is written once:

* ``$EMI_PROFILE`` (``smoke`` | ``demo`` | ``full``) is the default profile, ``demo`` when unset;
* ``$EMI_RUNS_DIR`` or ``<repo>/runs/<profile>`` holds a profile's runs: one folder per notebook;
* ``$EMI_CACHE_DIR`` or the runs folder holds what is derived from data alone and may be shared by several runs
  folders (grid runs, the test workers): the SynthMimic roots ``synthmimic_<profile>_seed<k>``, the feature
  stores ``features/<root>-<hash>`` and the regenerated test sets of the robustness sweep ``robustness/``. Every
  item in it records what it was made from and is checked on read, and concurrent users wait for each other
  (a lock per SynthMimic root and per extracted split);
* ``$EMI_FIGURES_DIR`` or ``<repo>/figures`` is where the canonical demo run publishes (:func:`is_canonical_run`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PROFILES = ("smoke", "demo", "full")
#: the data seed of the canonical demo run, the only run that publishes into figures/
CANONICAL_DATA_SEED = 0


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


def cache_root(profile: str) -> Path:
    """Where a profile's data-derived items live (SynthMimic roots, feature stores, sweep test sets):
    ``$EMI_CACHE_DIR`` or :func:`runs_root`."""
    env = os.environ.get("EMI_CACHE_DIR")
    return Path(env) if env else runs_root(profile)


def run_dir(profile: str, name: str, override: str | os.PathLike | None = None) -> Path:
    """The run folder of one notebook (created). ``override`` (the ``RUN_DIR`` parameter) wins."""
    path = Path(override) if override else runs_root(profile) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def stage_run_dir(profile: str, notebook_stem: str) -> Path:
    """Default run folder of another notebook (e.g. notebook 02 reads notebook 01's)."""
    return runs_root(profile) / notebook_stem


def synth_root(profile: str, seed: int, synth_profile: str | None = None) -> Path:
    """The shared SynthMimic root of a profile and data seed, reused by every notebook of a run
    (profile ``full`` without a data root uses SynthMimic's ``demo`` profile). ``synth_profile`` names another
    generator profile (``"bench"``: notebook 03's larger study) under the same cache root."""
    gen_profile = synth_profile or ("demo" if profile == "full" else profile)
    return cache_root(profile) / f"synthmimic_{gen_profile}_seed{seed}"


def feature_store_dir(profile: str, data_root: str | os.PathLike) -> Path:
    """The feature store shared by every notebook of a profile for one data root:
    ``<cache root>/features/<root name>-<hash of its path>`` (:func:`cache_root`). The store records the data root's fingerprint
    (:mod:`emi_lib.data.fingerprint`): a root regenerated in place empties it (:meth:`FeatureStore.bind`)."""
    root = Path(data_root).resolve()
    key = f"{root.name}-{hashlib.sha1(str(root).encode()).hexdigest()[:8]}"
    return cache_root(profile) / "features" / key


def figures_dir() -> Path:
    """``$EMI_FIGURES_DIR`` or ``<repo>/figures``: where the canonical demo run publishes its key figures."""
    env = os.environ.get("EMI_FIGURES_DIR")
    return Path(env) if env else repo_root() / "figures"


def is_canonical_run(profile: str, data_root: str | os.PathLike | None, data_seed: int,
                     run_folder: str | os.PathLike) -> tuple[bool, str]:
    """Whether a notebook run may publish into :func:`figures_dir` -> ``(yes, why)``.

    Only the canonical demo run publishes: profile ``demo``, the built-in SynthMimic root (no ``DATA_ROOT``)
    of data seed 0, and a run folder inside the profile's runs root. ``$EMI_FIGURES_DIR`` (the tests) lifts
    the last two conditions, since it sends the figures elsewhere anyway. Any other run keeps its figures
    and tables in its own run folder, so the README's generated results always describe the demo."""
    if profile != "demo":
        return False, f"profile {profile!r} is not 'demo'"
    if data_root:
        return False, f"DATA_ROOT={data_root} is not the built-in SynthMimic root"
    if os.environ.get("EMI_FIGURES_DIR"):
        return True, f"publishing into $EMI_FIGURES_DIR={os.environ['EMI_FIGURES_DIR']}"
    if int(data_seed) != CANONICAL_DATA_SEED:
        return False, f"DATA_SEED={data_seed} is not the canonical {CANONICAL_DATA_SEED}"
    inside = Path(run_folder).resolve().is_relative_to(runs_root(profile).resolve())
    if not inside:
        return False, f"the run folder {run_folder} is outside {runs_root(profile)}"
    return True, "the canonical demo run"


def model_run_dir(run_folder: str | os.PathLike, model_name: str) -> Path:
    """Where a notebook run keeps one trained stage-2 model: ``<run>/models/<slug>``, the slug being the
    name's first word group (``"full (quality fusion)"`` -> ``full``, ``"equal-weight fusion"`` ->
    ``equal_weight_fusion``). Notebook 02 writes there and notebook 04 reads ``full``: one function, both sides."""
    slug = model_name.split(" (")[0].strip().replace(" ", "_").replace("-", "_")
    return Path(run_folder) / "models" / slug
