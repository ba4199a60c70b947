r"""The signal priors of a stream as the quality-guided fusion reads them (:class:`PriorInput`): standardised
values plus a known/unknown indicator per value, so that an unknown prior is an explicit input, never a value.
Used by :class:`emi_lib.models.fusion.QualityGuidedFusion`; the priors themselves are computed by
:mod:`emi_lib.features.quality`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PriorInput", "prior_input_dim"]


class PriorInput(nn.Module):
    r"""The prior vector of one stream as the quality estimator reads it: standardised values plus a
    known/unknown indicator per value, so that an unknown prior is an explicit input, never a value.

    For the :math:`P` prior values :math:`\pi_j` of a clip (NaN = unknown: the modality is missing, a
    file could not be read, modality dropout removed it) and the training statistics
    :math:`\mu_j, \sigma_j` (:meth:`set_stats`; before that :math:`\mu = 0, \sigma = 1`):

    .. math::

        k_j = \mathbb 1[\pi_j \text{ is known}],\qquad
        z_j = k_j\,\frac{\pi_j - \mu_j}{\sigma_j},\qquad
        \text{input} = [z_1..z_P;\ k_1..k_P] \in R^{2P}.

    An unknown value is thus the training mean (:math:`z = 0`, neutral) with its indicator off
    (:math:`k = 0`), which the estimator can learn to read, instead of a number that looks like the
    worst quality (a raw 0). The statistics are buffers: saved in the checkpoints and loaded strictly.
    """

    #: input channels per prior value: the standardised value and its indicator (:func:`prior_input_dim`)
    CHANNELS = 2

    def __init__(self, n_values: int):
        super().__init__()
        self.n_values = int(n_values)
        self.register_buffer("mean", torch.zeros(self.n_values))
        self.register_buffer("std", torch.ones(self.n_values))

    @property
    def out_dim(self) -> int:
        return prior_input_dim(self.n_values)

    @torch.no_grad()
    def set_stats(self, values: torch.Tensor, names=None) -> None:
        r"""Fit :math:`\mu_j, \sigma_j` on the known values of ``values`` (N, P) (the training clips);
        :math:`\sigma_j` is the standard deviation, 1 for a constant value. ``ValueError`` when a value
        is unknown on every clip (``names``: its column names, for the message)."""
        v = torch.as_tensor(values, dtype=torch.float32).reshape(len(values), -1).to(self.mean.device)
        if v.shape[1] != self.n_values:
            raise ValueError(f"prior statistics need {self.n_values} value(s) per clip, got shape {tuple(v.shape)}")
        known = ~torch.isnan(v)
        n = known.sum(0)
        if (n == 0).any():
            j = int(torch.nonzero(n == 0)[0])
            name = list(names)[j] if names is not None else f"value {j}"
            raise ValueError(f"prior {name!r} is unknown (NaN) on all {len(v)} training clips: nothing to "
                             "standardise it with; drop the column or set use_priors=False")
        filled = torch.where(known, v, 0.0)
        mean = filled.sum(0) / n
        var = (torch.where(known, v - mean, 0.0) ** 2).sum(0) / n
        std = var.sqrt()
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, p: torch.Tensor | None, batch: int, ref: torch.Tensor) -> torch.Tensor:
        """(B, P) values with NaN for unknown (or None: all unknown) -> (B, 2P) ``[z; k]``."""
        if p is None:
            return ref.new_zeros(batch, self.out_dim)
        p = torch.as_tensor(p, dtype=ref.dtype, device=ref.device)
        p = p.reshape(p.shape[0], -1)
        if p.shape != (batch, self.n_values):
            raise ValueError(f"prior has shape {tuple(p.shape)}, expected ({batch}, {self.n_values})")
        if torch.isinf(p).any():
            raise ValueError("a prior value is +-inf: only NaN means unknown (a prior must be finite or NaN)")
        known = ~torch.isnan(p)
        z = torch.where(known, (p - self.mean.to(p.dtype)) / self.std.to(p.dtype), torch.zeros_like(p))
        return torch.cat([z, known.to(p.dtype)], -1)


def prior_input_dim(n_values: int) -> int:
    """Width of the quality estimator's prior input for ``n_values`` prior values (:class:`PriorInput`):
    the one place the prior channels are counted."""
    return PriorInput.CHANNELS * int(n_values)
