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


def aux_head_loss(
    aux_pred: dict[str, torch.Tensor],
    target: torch.Tensor,
    available: dict[str, torch.Tensor],
    mse_weight: float = 1.0,
    pcc_weight: float = 1.0,
    min_clips: int = 2,
) -> torch.Tensor:
    r"""Mean over streams of :func:`emi_loss` of each per-modality head, on its available clips only.

    With :math:`S` the streams having at least ``min_clips`` available clips :math:`I_m` in the batch
    (a Pearson r needs two), :math:`\mathcal L_{aux} = \frac{1}{|S|}\sum_{m \in S}
    \mathcal L(\hat y^{(m)}_{I_m}, y_{I_m})`; 0 when :math:`S` is empty. A skipped head still enters
    the graph with weight 0, so every parameter gets a gradient (DDP needs it)."""
    terms, total = [], target.new_zeros(())
    for m, p in aux_pred.items():
        rows = available[m].bool().reshape(-1)
        if int(rows.sum()) >= min_clips:
            terms.append(emi_loss(p[rows], target[rows], mse_weight, pcc_weight)[0])
        else:
            total = total + 0.0 * p.sum()
    return total + (torch.stack(terms).mean() if terms else 0.0)


def stage2_loss(
    out: dict, target: torch.Tensor, mse_weight: float = 1.0, pcc_weight: float = 1.0, aux_weight: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Training loss of one ``EMIModel`` output: :math:`\mathcal L(\hat y, y) + w_{aux}\,\mathcal L_{aux}`.

    :math:`\mathcal L_{aux}` (:func:`aux_head_loss`) is added when the model has auxiliary heads
    (``out["aux_pred"]`` is not None; availability from ``out["available"]``). ``parts`` are
    :func:`emi_loss`'s, plus ``"aux"`` (unweighted) when the heads exist."""
    total, parts = emi_loss(out["pred"], target, mse_weight, pcc_weight)
    if out.get("aux_pred") is not None:
        available = dict(zip(out["modalities"], out["available"].unbind(1), strict=True))
        parts["aux"] = aux_head_loss(out["aux_pred"], target.to(out["pred"].dtype), available, mse_weight,
                                     pcc_weight)
        total = total + aux_weight * parts["aux"]
    return total, parts
