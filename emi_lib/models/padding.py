r"""Per-clip feature sequences -> one padded, masked batch: the one implementation, used by stage 1
(:mod:`emi_lib.models.aligner`, :mod:`emi_lib.train.stage1`) and stage 2 (:mod:`emi_lib.train.data`).

**Long sequences** (ours): a sequence longer than ``max_steps`` steps is subsampled at evenly spaced
steps, :math:`t_j = \mathrm{round}(j (T-1)/(L-1))`, :math:`j = 0..L-1`
(:func:`emi_lib.features.store.subsample_steps`), which keeps the whole clip's span (a crop would drop its
end) and is deterministic (training and evaluation see the same steps).

**Padding**: B sequences of :math:`T_i` steps become ``x`` (B, max T_i, D) and a prefix ``mask`` (B, max T_i),
True on valid steps. A row of NaN is a masked step (:func:`emi_lib.features.store.valid_steps`: a frame
without a face): its input is 0 and its mask False; an empty sequence gives an all-False mask row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emi_lib.features.store import subsample_steps, valid_steps


def pad_batch(arrays: Sequence, dim: int | None = None,
              max_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (T_i, D) arrays (numpy or CPU tensors) into ``x`` (B, T_max, D) float32 and a prefix ``mask``
    (B, T_max) bool (module docstring); ``T_max`` is at least 1.

    A (0, D) or empty array gives an all-False mask row; a row of NaN is a zero input with mask False; a
    1-D array is one step. ``dim`` is needed when every array is empty. ``max_steps`` subsamples a
    longer sequence (:func:`subsample_steps`)."""
    arrs = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float32)
        if a.size == 0:
            a = a.reshape(0, a.shape[-1] if a.ndim == 2 else (dim or 0))
        elif a.ndim == 1:
            a = a[None, :]
        arrs.append(a[subsample_steps(len(a), max_steps)] if max_steps is not None else a)
    dims = {a.shape[1] for a in arrs if len(a)}
    if len(dims) > 1:
        raise ValueError(f"arrays have different feature sizes {sorted(dims)}")
    d = dims.pop() if dims else dim
    if d is None:
        raise ValueError("every array is empty: pass dim")
    t_max = max([len(a) for a in arrs] + [1])
    x = torch.zeros(len(arrs), t_max, d)
    mask = torch.zeros(len(arrs), t_max, dtype=torch.bool)
    for i, a in enumerate(arrs):
        if len(a):
            ok = valid_steps(a)  # a NaN row is a masked step: zero input, mask False
            x[i, : len(a)] = torch.from_numpy(np.where(ok[:, None], a, 0.0).astype(np.float32))
            mask[i, : len(a)] = torch.from_numpy(ok)
    return x, mask
