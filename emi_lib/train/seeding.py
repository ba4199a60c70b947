"""Fixed seeds and the RNG state a checkpoint carries, so that a resumed run repeats the original.

``seed_everything(seed)`` seeds Python's ``random``, NumPy's global generator and torch (CPU and
every CUDA device), and, where it is cheap, asks for deterministic kernels:
``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a deterministic
implementation warns instead of failing), ``cudnn.deterministic = True``, ``cudnn.benchmark = False``
and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (needed by cuBLAS for deterministic matmuls; set only if
unset). These switches are process-wide.

``rng_state()`` / ``set_rng_state(state)`` capture and restore every generator the training loop
draws from (dropout uses torch's global generator). The state holds only lists, ints, floats and
tensors, so a checkpoint stays loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed random, numpy and torch (CPU + CUDA); with ``deterministic``, prefer deterministic kernels."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator is what libraries draw from
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` that is a pure function of (seed, epoch): the epoch's batch order
    never depends on how many random numbers the run drew before (e.g. before a resume)."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**63 - 1))
    return g


def rng_state() -> dict:
    """Every global generator's state (python, numpy, torch CPU, torch CUDA) as weights-only-safe values."""
    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state` (CUDA states only if as many devices exist)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((np_state["kind"], keys, int(np_state["pos"]),  # noqa: NPY002
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
