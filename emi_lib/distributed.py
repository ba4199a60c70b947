r"""torch.distributed helpers (a base module: extraction, training and evaluation all use it): process-group setup from ``torchrun``'s environment, clip sharding,
barriers, and the dataset-level metric on predictions gathered from every rank.

>>> ctx = init_distributed()            # doctest: +SKIP  (under torchrun; a 1-process context otherwise)
>>> my_ids = shard_ids(all_ids, ctx.rank, ctx.world)          # doctest: +SKIP
>>> pred = gather_predictions(my_ids, my_pred)  # doctest: +SKIP  (every rank's rows, each clip once)
>>> cleanup()                           # doctest: +SKIP

**Backend**: ``gloo`` on the CPU, ``nccl`` on CUDA (each process uses GPU ``LOCAL_RANK``). Every
helper also works without an initialised process group (one process: world 1, rank 0), so library
code calls them unconditionally.

**Why the metric is gathered.** The challenge score is the mean over the six emotions of Pearson's
r over the *whole* split. Pearson's r is not additive over shards: with shards :math:`S_k`,

.. math::

    r = \frac{\sum_i (x_i-\bar x)(y_i-\bar y)}{\sqrt{\sum_i (x_i-\bar x)^2 \sum_i (y_i-\bar y)^2}}

uses the global means :math:`\bar x, \bar y`; the per-shard :math:`r_k` use each shard's own means
and scales, so :math:`\frac1K\sum_k r_k \ne r` in general (a shard whose predictions are shifted by a
constant keeps its :math:`r_k` but lowers :math:`r`; shards of unequal size are weighted equally;
a small shard gives a noisy :math:`r_k`). :func:`emi_lib.eval.metrics.gathered_challenge_score` therefore all-gathers
every rank's (ids, predictions), checks that each clip was scored exactly once, and computes
``challenge_score`` once on the full set -- the same number on every rank, equal to the
single-process score on the same predictions.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS

if TYPE_CHECKING:
    import torch

__all__ = ["DistContext", "all_gather_object", "all_gather_with_grad", "barrier", "broadcast_object", "cleanup", "context",
           "gather_predictions", "init_distributed", "is_initialized", "rank_world", "resolve_device",
           "shard_ids"]


def _torch():
    """torch, imported on first use: evaluation (the metric, its gather) and data inspection import this module
    without needing torch, which costs a notebook kernel or CLI process about 3 s to import."""
    import torch

    return torch


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = "cpu"  # a torch.device under a process group; "cpu" (str) in a one-process context
    backend: str | None = None  # None: no process group (one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def is_initialized() -> bool:
    torch = sys.modules.get("torch")  # a process that never imported torch has no process group
    if torch is None:
        return False
    d = torch.distributed
    return d.is_available() and d.is_initialized()


def context() -> DistContext:
    """The context of the current process group (world 1 when none is initialised)."""
    if not is_initialized():
        return DistContext()
    torch = _torch()
    d = torch.distributed
    backend = d.get_backend()
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
    return DistContext(d.get_rank(), d.get_world_size(), local, dev, backend)


def rank_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(rank, world size)``: the values given, else those of the current process group (0 and 1 without one)."""
    ctx = context()
    return (ctx.rank if rank is None else int(rank)), (ctx.world if world is None else int(world))


def resolve_device(device: str | torch.device = "auto", rank: int | None = None, world: int | None = None) -> torch.device:
    """The torch device this process computes on.

    ``"auto"``: CUDA if available, else the CPU. Under DDP (``world`` > 1; ``rank`` and ``world`` default to
    the current group's) ``"auto"`` and ``"cuda"`` mean this process's own GPU, ``cuda:LOCAL_RANK`` (set by
    torchrun; ``rank`` without it) modulo the visible GPUs. Anything else (``"cpu"``, ``"cuda:1"``, a
    ``torch.device``) is taken as given."""
    torch = _torch()
    if isinstance(device, torch.device):
        return device
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device in ("auto", "cuda"):
        rank, world = rank_world(rank, world)
        if world > 1:
            local, n_gpus = int(os.environ.get("LOCAL_RANK", rank)), torch.cuda.device_count()
            return torch.device(f"cuda:{local % n_gpus if n_gpus else local}")
        return torch.device("cuda")
    return torch.device(device)


def init_distributed(backend: str | None = None, device: str = "auto", timeout_s: float = 1800) -> DistContext:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and return this process's :class:`DistContext`.

    ``backend`` None: ``nccl`` when CUDA is available and ``device`` is not ``"cpu"``, else ``gloo``;
    with nccl the process uses ``cuda:LOCAL_RANK``. Without ``WORLD_SIZE`` (a plain ``python`` run)
    or with ``WORLD_SIZE=1`` no group is created: a one-process context. Calling it twice is harmless."""
    import datetime

    torch = _torch()
    if is_initialized():
        return context()
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world <= 1:
        return DistContext(device=resolve_device(device, 0, 1))
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
    torch.distributed.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=world,
                                         timeout=datetime.timedelta(seconds=timeout_s))
    return context()


def cleanup(wait: bool = True) -> None:
    """Destroy the process group if one is initialised, after a final barrier when ``wait`` (pass
    False on an error path: the other ranks may never reach the barrier)."""
    if is_initialized():
        if wait:
            barrier()
        _torch().distributed.destroy_process_group()


def barrier() -> None:
    """``torch.distributed.barrier()`` when a group is initialised, else nothing."""
    if not is_initialized():
        return
    torch = _torch()
    if torch.distributed.get_world_size() > 1:
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()


def all_gather_object(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a group."""
    torch = _torch() if is_initialized() else None
    if torch is None or torch.distributed.get_world_size() <= 1:
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (the argument is ignored elsewhere); ``obj`` without a group."""
    torch = _torch() if is_initialized() else None
    if torch is None or torch.distributed.get_world_size() <= 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order (equal shapes on all ranks); the
    other ranks' parts are constants, this rank's part is ``x`` itself, so the gradient flows into
    the local part only (each rank back-propagates through its own samples; DDP sums the rest)."""
    torch = _torch() if is_initialized() else None
    if torch is None or torch.distributed.get_world_size() <= 1:
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.detach().contiguous())
    parts[torch.distributed.get_rank()] = x
    return torch.cat(parts)


def shard_ids(ids, rank: int | None = None, world: int | None = None) -> list:
    """This rank's clips: ``ids[rank::world]`` (rank/world default to the current group). Every clip
    goes to exactly one rank; shard sizes differ by at most one."""
    rank, world = rank_world(rank, world)
    return list(ids)[rank::world]


def gather_predictions(ids, preds, columns=EMOTIONS, expected=None) -> pd.DataFrame:
    """All ranks' ``(ids, preds)`` as one DataFrame (index ``ids``, one row per clip, ``columns``).

    ``preds``: (n, k) array-like or a DataFrame (its values are used in ``ids`` order). The rows are
    sorted by id, or ordered as ``expected`` when given. A clip sent by two ranks with the same values
    is kept once; with different values, or a clip of ``expected`` that no rank sent, or one that it
    does not list, raises ``ValueError`` (on every rank alike)."""
    ids = [str(i) for i in ids]
    cols = list(columns)
    arr = np.asarray(preds.loc[ids].to_numpy() if isinstance(preds, pd.DataFrame) else preds, dtype=np.float64)
    arr = arr.reshape(len(ids), -1) if arr.size else arr.reshape(len(ids), len(cols))  # a rank may hold no clip
    parts = all_gather_object((ids, arr))  # first: every rank must reach the gather, even with bad input
    dup = [r for r, (g_ids, _) in enumerate(parts) if len(set(g_ids)) != len(g_ids)]
    if dup:
        raise ValueError(f"the ids of rank(s) {dup} hold duplicates")
    rows: dict[str, np.ndarray] = {}
    clashes = []
    for g_ids, g_arr in parts:
        for cid, row in zip(g_ids, g_arr):
            if cid in rows and not np.array_equal(rows[cid], row, equal_nan=True):
                clashes.append(cid)
            rows.setdefault(cid, row)
    if clashes:
        raise ValueError(f"{len(clashes)} clip(s) scored twice with different values, e.g. {clashes[:5]}")
    order = sorted(rows) if expected is None else [str(i) for i in expected]
    if expected is not None:
        missing = [c for c in order if c not in rows]
        extra = sorted(set(rows) - set(order))
        if missing or extra:
            raise ValueError(f"gathered predictions lack {len(missing)} clip(s) (e.g. {missing[:5]}) and hold "
                             f"{len(extra)} unexpected one(s) (e.g. {extra[:5]})")
    data = np.stack([rows[c] for c in order]) if order else np.zeros((0, len(cols)))
    return pd.DataFrame(data, index=pd.Index(order, name="Filename"), columns=cols)
