r"""Masked temporal pooling of a padded sequence: the one implementation, used by the stage-1 aligner
(:mod:`emi_lib.models.aligner`) and by every stage-2 fusion (:mod:`emi_lib.models.fusion`).

A stream is a padded sequence ``x`` (B, T, D) with a bool ``mask`` (B, T), True on valid steps. Pooling gives
the clip vector :math:`\bar h = \sum_t a_t h_t` with

- ``"mean"``: :math:`a_t = m_t / \max(1, \sum_s m_s)`;
- ``"attention"``: :math:`a = \mathrm{softmax}_{t: m_t}(v^\top \tanh(W h_t + c) + d)` (``bias=False``: no
  :math:`c, d`, i.e. :math:`\mathrm{softmax}(w^\top \tanh(V h_t))`, the aligner's form);

padding gets weight exactly 0, and an all-False mask gives the zero vector (never NaN).
"""

from __future__ import annotations

import torch
from torch import nn

POOLING_KINDS = ("mean", "attention")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Softmax over the True entries of ``mask`` along ``dim``; masked entries get exactly 0.

    Masked scores are set to :math:`-\infty` before the softmax. Guard: a slice with no True entry
    would give 0/0 = NaN (also in the backward pass, even under a later ``where``), so its scores
    are replaced by 0 before the softmax and its output is multiplied by the (all-zero) mask:
    the slice returns all zeros, with finite gradients.
    """
    mask = mask.bool()
    any_valid = mask.any(dim=dim, keepdim=True)
    s = scores.masked_fill(~mask, float("-inf"))
    s = torch.where(any_valid, s, torch.zeros_like(s))
    return torch.softmax(s, dim=dim) * mask.to(scores.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over valid steps of ``mask`` (B, T); zero vector when none is valid."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x.masked_fill(m == 0, 0.0)).sum(1) / m.sum(1).clamp(min=1.0)


class MeanPooling(nn.Module):
    """Masked mean over time (no parameters)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)


class AttentionPooling(nn.Module):
    r"""Masked additive attention pooling, :math:`a = \mathrm{softmax}_{valid}(v^\top\tanh(Wh_t+c)+d)`,
    :math:`\bar h = \sum_t a_t h_t` (module docstring); ``bias=False`` drops :math:`c, d`.

    Parameters ``score.0`` (:math:`W`, :math:`c`) and ``score.2`` (:math:`v`, :math:`d`). A state dict with the
    stage-1 aligner's former names (``V.weight``, ``w.weight``) loads too (strictly, same values)."""

    _FORMER_NAMES = {"V.weight": "score.0.weight", "w.weight": "score.2.weight"}

    def __init__(self, dim: int, hidden: int = 64, bias: bool = True):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.Tanh(), nn.Linear(hidden, 1, bias=bias))

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) attention weights, exactly 0 on padding (all 0 for an all-False mask row)."""
        return masked_softmax(self.score(x).squeeze(-1), mask, dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bt,btd->bd", self.weights(x, mask), x.masked_fill(~mask.bool().unsqueeze(-1), 0.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self._FORMER_NAMES.items():  # aligners saved before the pooling was shared
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def make_pooling(kind: str, dim: int, hidden: int = 64, bias: bool = True) -> nn.Module:
    """``"mean"`` or ``"attention"`` pooling for a stream of feature size ``dim``."""
    if kind == "mean":
        return MeanPooling()
    if kind == "attention":
        return AttentionPooling(dim, hidden, bias)
    raise ValueError(f"unknown pooling {kind!r}; choose one of {POOLING_KINDS}")
