r"""Z-scoring of stage-2 inputs with training statistics: every feature dimension is standardised with the mean
and standard deviation of all valid *training* steps, :math:`\tilde x_{t,d} = (x_{t,d}-\mu_d)/\sigma_d`
(masked steps carry no statistics and stay masked). The statistics travel with a run (``save``/``load``: a run
folder's ``standardizer.npz``) so test clips reach a model exactly as its training clips did; lazily read
(packed) stores are z-scored on the fly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emi_lib.features.store import valid_steps
from emi_lib.train.data import Stage2Data


class _Standardized(Mapping):
    """A lazy z-scored view of a lazy per-clip store (e.g. a ``PackedStore``): clips are read and
    standardised one at a time, so memory stays bounded at full scale."""

    def __init__(self, src, mean: np.ndarray, std: np.ndarray):
        self.src, self.mean, self.std = src, mean, std
        self.dim = src.dim

    def length(self, cid) -> int:
        return self.src.length(cid)

    def prefetch(self, ids) -> None:
        if hasattr(self.src, "prefetch"):
            self.src.prefetch(ids)

    def __getitem__(self, cid):
        a = self.src[cid]
        return ((a - self.mean) / self.std).astype(np.float32) if np.size(a) else a

    def __iter__(self):
        return iter(self.src)

    def __len__(self) -> int:
        return len(self.src)


def _is_lazy(d) -> bool:
    return isinstance(d, Mapping) and not isinstance(d, dict) and hasattr(d, "length")


@dataclass
class Standardizer:
    r"""Per-dimension z-scoring :math:`(x-\mu_d)/(\sigma_d+\epsilon)` fitted on the training steps.

    The statistics are accumulated clip by clip in float64 (sums of :math:`x` and :math:`x^2`), so fitting
    reads a lazy store once without holding it; applying to a lazy store returns a lazy view."""

    mean: dict = field(default_factory=dict)  # stream -> (D,)
    std: dict = field(default_factory=dict)  # stream -> (D,), epsilon included
    eps: float = 1e-6

    @classmethod
    def fit(cls, data: Stage2Data, streams=("vision", "audio"), eps: float = 1e-6) -> Standardizer:
        out = cls(eps=eps)
        for m in streams:
            n, s1, s2 = 0, 0.0, 0.0
            for a in (getattr(data, m) or {}).values():
                if np.size(a):
                    a = np.asarray(a, dtype=np.float64)
                    a = a[valid_steps(a)]  # masked steps (NaN rows) carry no statistics and stay NaN
                    n, s1, s2 = n + len(a), s1 + a.sum(0), s2 + (a * a).sum(0)
            if n == 0:
                raise ValueError(f"cannot standardise {m}: no training clip has {m} features")
            mu = s1 / n
            out.mean[m], out.std[m] = mu, np.sqrt(np.maximum(s2 / n - mu * mu, 0.0)) + eps
        return out

    def apply(self, data: Stage2Data) -> Stage2Data:
        """z-score ``data``'s streams (in place for in-memory dicts, a lazy view for lazy stores); return it."""
        for m, mu in self.mean.items():
            sd, src = self.std[m], getattr(data, m)
            if _is_lazy(src):
                setattr(data, m, _Standardized(src, mu, sd))
            else:
                setattr(data, m, {k: ((a - mu) / sd).astype(np.float32) if np.size(a) else a for k, a in src.items()})
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics to ``path`` (``.npz``: ``mean/<stream>``, ``std/<stream>``, ``eps``; atomic), so a
        trained model's inputs can be rebuilt exactly (``python -m emi_lib.train.launch predict``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{k}/{m}": np.asarray(v, dtype=np.float64) for k in ("mean", "std") for m, v in getattr(self, k).items()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, eps=np.float64(self.eps), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Standardizer:
        """Inverse of :meth:`save` (no pickle); a missing file or a stream without both statistics raises."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no standardiser statistics at {path}")
        with np.load(path, allow_pickle=False) as z:
            out = cls(eps=float(z["eps"]))
            for name in z.files:
                kind, _, m = name.partition("/")
                if kind in ("mean", "std") and m:
                    getattr(out, kind)[m] = z[name]
                elif name != "eps":
                    raise ValueError(f"{path}: unexpected entry {name!r} (expected eps, mean/<stream>, std/<stream>)")
        if set(out.mean) != set(out.std) or not out.mean:
            raise ValueError(f"{path}: mean streams {sorted(out.mean)} and std streams {sorted(out.std)} differ or are empty")
        return out
