r"""Training loss of stage 2: MSE plus one minus the per-emotion Pearson correlation.

The challenge scores the mean over the six emotions of Pearson r over the whole set, so the loss
(ours: the paper does not publish one; the weights are config fields) adds a batch estimate of it
to the MSE:

.. math::

    \mathcal L = \lambda_{mse}\,\frac{1}{6B}\sum_{i,e}(\hat y_{ie} - y_{ie})^2
      + \lambda_{pcc}\,\frac16\sum_e (1 - r_e),
    \qquad
    r_e = \frac{\frac1B\sum_i \hat c_{ie}\, c_{ie}}
               {\sqrt{(\frac1B\sum_i \hat c_{ie}^2 + \epsilon)(\frac1B\sum_i c_{ie}^2 + \epsilon)}},

with :math:`\hat c, c` the column-centred predictions and targets of the batch.

**Guard.** The :math:`\epsilon` sits *inside* each square root. A batch column that is constant
(in the prediction or the target) then has covariance 0 (up to rounding), so :math:`r_e = 0` and its term
is 1: finite, with finite gradients (an :math:`\epsilon` added *outside* the root would still
give :math:`\partial\sqrt{v}/\partial v = \infty` times 0 = NaN in the backward pass at
:math:`v = 0`). Cauchy-Schwarz keeps :math:`|r_e| < 1`; a perfect prediction gives
:math:`r_e = v/(v + \epsilon) \approx 1`. This batch r is a training signal only: the
evaluation metric (``emi_lib.eval.challenge_score``) is computed over the whole set and reports a
constant column as NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pearson_per_column(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Batch Pearson r of each column of (B, E) tensors, eps-guarded (see the module docstring); shape (E,)."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, E)")
    pc = pred - pred.mean(dim=0, keepdim=True)
    tc = target - target.mean(dim=0, keepdim=True)
    cov = (pc * tc).mean(dim=0)
    return cov / torch.sqrt((pc.pow(2).mean(dim=0) + eps) * (tc.pow(2).mean(dim=0) + eps))


def emi_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mse_weight: float = 1.0,
    pcc_weight: float = 1.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mse_weight * MSE + pcc_weight * mean_e(1 - r_e)``.

    Returns ``(total, parts)`` with ``parts = {"mse": scalar, "pcc": scalar mean_e(1 - r_e),
    "r": (E,) per-column r}`` (the parts are unweighted).
    """
    target = target.to(pred.dtype)
    mse = F.mse_loss(pred, target)
    r = pearson_per_column(pred, target, eps)
    pcc = (1.0 - r).mean()
    total = mse_weight * mse + pcc_weight * pcc
    return total, {"mse": mse, "pcc": pcc, "r": r}
