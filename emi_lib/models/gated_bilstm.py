r"""Gated bidirectional LSTM over the audio sequence (stage 2, the "local acoustic dynamics" stream).

Paper (arXiv 2503.10603, stage 2): *"a gated bidirectional LSTM over the audio sequence captures
local acoustic dynamics"*. The gate's formula is not published; ours is an output gate that
looks at both directions and at the input step itself:

.. math::

    h_t &= [\overrightarrow{h}_t;\ \overleftarrow{h}_t] = \mathrm{BiLSTM}(x_{1..L})_t \\
    g_t &= \sigma\!\left(W\,[\overrightarrow{h}_t;\ \overleftarrow{h}_t;\ x_t] + b\right) \in (0, 1)^{H_o} \\
    y_t &= g_t \odot (U\,[\overrightarrow{h}_t;\ \overleftarrow{h}_t]),

with :math:`U` a bias-free linear map to :math:`H_o` (``out_dim``, default :math:`2H`). The gate lets
the model pass the recurrent summary only at the steps (and in the channels) where the local
acoustic evidence is informative, e.g. close a noisy step. ``gate=False`` gives the ablation
:math:`y_t = U h_t`.

Variable lengths: the sequence is packed (``pack_padded_sequence(..., enforce_sorted=False)``),
so the backward direction of a clip starts at its own last valid step and padding never enters
the recurrence. The mask must be a *prefix* mask (valid steps first, as the collate produces);
anything else raises. A zero-length clip (all-False mask: the modality is missing) is run
internally as one step of zeros (packing refuses length 0) and its outputs and gates are then
masked to exactly 0.

Choices that are ours, all constructor arguments: hidden size H, number of layers, dropout
between LSTM layers and on the output, the gate's inputs, ``out_dim``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def lengths_from_mask(mask: torch.Tensor, check_prefix: bool = True) -> torch.Tensor:
    """Valid lengths (B,) of a bool (B, T) mask; with ``check_prefix``, raise unless valid steps come first."""
    mask = mask.bool()
    lengths = mask.sum(dim=1)
    if check_prefix and mask.numel():
        steps = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, steps.unsqueeze(0) < lengths.unsqueeze(1)):
            raise ValueError(
                "mask must be a prefix mask (valid steps first, then padding) for packed sequences"
            )
    return lengths


class GatedBiLSTM(nn.Module):
    """Bidirectional LSTM with a learned sigmoid output gate (see the module docstring).

    Args:
        input_dim: feature size D of the input sequence.
        hidden: LSTM hidden size H per direction (ours: 64).
        num_layers: stacked LSTM layers (ours: 1).
        dropout: dropout between LSTM layers (when num_layers > 1) and on the output y.
        gate: apply the gate (False: the ablation without it).
        out_dim: output size H_o; ``None`` means 2H.

    ``forward(x, mask)`` with ``x`` (B, T, D) and ``mask`` bool (B, T) returns ``(y, g)``:
    ``y`` (B, T, H_o) and the gates ``g`` (B, T, H_o) in (0, 1) on valid steps, or ``None`` when
    ``gate=False``. Both are exactly 0 at padded steps.
    """

    def __init__(
        self,
        input_dim: int,
        hidden: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
        gate: bool = True,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.input_dim = int(input_dim)
        self.hidden = int(hidden)
        self.use_gate = bool(gate)
        self.out_dim = int(out_dim) if out_dim is not None else 2 * self.hidden
        self.lstm = nn.LSTM(
            self.input_dim,
            self.hidden,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.proj = nn.Linear(2 * self.hidden, self.out_dim, bias=False)  # U
        self.gate = (
            nn.Linear(2 * self.hidden + self.input_dim, self.out_dim) if self.use_gate else None
        )  # W, b
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        if t == 0:
            empty = x.new_zeros(b, 0, self.out_dim)
            return empty, (empty.clone() if self.use_gate else None)
        mask = mask.bool()
        lengths = lengths_from_mask(mask)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, 2H), 0 past each length
        m = mask.unsqueeze(-1).to(x.dtype)
        y = self.proj(h)
        g = None
        if self.gate is not None:
            g = torch.sigmoid(self.gate(torch.cat([h, x], dim=-1))) * m
            y = g * y
        return self.drop(y) * m, g
