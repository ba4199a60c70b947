"""Shared fixtures. Everything runs offline and on the CPU."""

from __future__ import annotations

import os

# Under pytest-xdist two workers share the machine's two cores, and every process a test starts (papermill and
# nbval kernels, CLI runs, spawned training and sweep workers) inherits this environment: one intra-op thread
# each, since two per process oversubscribe the cores (measured in the smoke run of notebook 01 under make test:
# fine-tuning the tower took 31.4 s with two threads and 4.0 s with one; the notebook's run 105 s -> 57 s). Set
# before numpy and torch are imported here.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402
from notebook_runs import execute_notebook  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
matplotlib.use("Agg")

# Under pytest-xdist (make test runs two workers) every worker gets its own runs and figures folders (notebook run
# folders, "auto" stage-1 and model lookups), while the data-derived items are shared through EMI_CACHE_DIR
# (make test sets it): the SynthMimic smoke root, its feature store and the sweep's test sets are made once, by
# whichever worker needs them first (the library locks a root while it is generated and a split folder while it
# is extracted, so the other worker waits and then reuses them). The nbval kernels inherit this environment.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    for _var in ("EMI_RUNS_DIR", "EMI_FIGURES_DIR"):
        if os.environ.get(_var) and not os.environ[_var].rstrip("/").endswith(_WORKER):
            os.environ[_var] = os.path.join(os.environ[_var], _WORKER)


# make test runs ``pytest -n 2 --dist loadscope --no-loadscope-reorder``: a test module (or a notebook's nbval
# cells, in order) runs on one worker, and the modules go out in collection order, which puts the longest first
# (:data:`LONGEST_FIRST`) so that neither worker is left alone with a long notebook at the end. The order is a
# scheduling hint: any order gives the same results.
LONGEST_FIRST = ("tests/test_notebook_01_03.py", "notebooks/03_ablation_fusion_weights.ipynb",
                 "notebooks/01_stage1_contrastive_pretraining.ipynb", "tests/test_distributed.py",
                 "notebooks/02_stage2_fusion_training.ipynb", "tests/test_determinism.py", "tests/test_notebook_02.py",
                 "tests/test_notebooks.py", "notebooks/00_data_inspection.ipynb", "tests/test_notebook_04.py",
                 "tests/test_explorer.py", "notebooks/04_explorer.ipynb")


def pytest_collection_modifyitems(config, items):
    """The longest modules first (:data:`LONGEST_FIRST`), each in its collected order."""
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}

    def module(item) -> str:
        return item.path.relative_to(config.rootpath).as_posix()

    items[:] = [it for _, _, it in sorted((rank.get(module(it), len(rank)), i, it) for i, it in enumerate(items))]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The unit tests' models are tiny: one torch thread is much faster than two contended ones (the notebooks
    run in their own kernels and set their own)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """The SynthMimic root of the smoke profile, seed 0, generated with the default worker count: the notebooks'
    shared root when ``$EMI_CACHE_DIR`` is set (make test: one root for every test and notebook of both workers;
    tests copy it before changing anything), else generated once per session in a temporary folder."""
    from emi_lib.data.synth import SynthConfig, ensure_synthmimic, generate
    from emi_lib.paths import synth_root

    if os.environ.get("EMI_CACHE_DIR"):
        return ensure_synthmimic(synth_root("smoke", 0), profile="smoke", seed=0, progress=False)
    out = tmp_path_factory.mktemp("synth_smoke")
    generate(out, SynthConfig.from_profile("smoke", seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory):
    """Smoke notebook runs share one SynthMimic root and feature store through EMI_RUNS_DIR
    (make test sets it; else a session temp dir). Figures never go to the repo's figures/."""
    if not os.environ.get("EMI_RUNS_DIR"):
        os.environ["EMI_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))
    os.environ.setdefault("EMI_FIGURES_DIR", str(tmp_path_factory.mktemp("figures")))
    return os.environ["EMI_RUNS_DIR"]


@pytest.fixture
def run_notebook(notebook_env, tmp_path):
    """Execute ``notebooks/<name>`` with papermill (PROFILE="smoke", RUN_DIR in tmp_path) from a
    working directory other than notebooks/; return (records read back from metrics.json, run dir)."""

    def _run(name: str, **params):
        out_dir = tmp_path / "run"
        return execute_notebook(name, out_dir, tmp_path, **params), out_dir

    return _run


