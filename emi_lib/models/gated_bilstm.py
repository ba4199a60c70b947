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

Variable lengths: each direction runs over the padded batch, and the backward direction reads every
clip reversed *within its own length* (a gather), so it starts at the clip's own last valid step and
padding never enters the recurrence of a valid step: the outputs at valid steps are those of a packed
sequence (``pack_padded_sequence``; the tests compare values and gradients within 1e-5, and 3e-7 was
observed at batch 32 and 100 steps), and padded steps are masked to 0. Both
directions use the parameters of one bidirectional ``nn.LSTM`` (``torch.func.functional_call`` on a
one-direction template), so checkpoints are those of the packed version. Why not pack: on the CPU a
packed LSTM's backward pass costs about 2.5x more (measured: batch 32, 100 steps, 193-d input, H = 32:
0.098 s against 0.040 s forward + backward). The mask must be a *prefix* mask (valid steps first, as the
collate produces); anything else raises. A zero-length clip (all-False mask: the modality is missing)
runs over zeros and its outputs and gates are masked to exactly 0.

Choices that are ours, all constructor arguments: hidden size H, number of layers, dropout
between LSTM layers and on the output, the gate's inputs, ``out_dim``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


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


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> each row's first ``lengths[b]`` steps in reverse order, padded steps left in place.
    Its own inverse."""
    t = x.shape[1]
    steps = torch.arange(t, device=x.device).unsqueeze(0)
    idx = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


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
        # one-direction, one-layer LSTMs whose parameters are swapped for this module's (never registered:
        # they hold no state of their own): layer 0 reads the input, later layers both directions' outputs
        self._templates = (nn.LSTM(self.input_dim, self.hidden, batch_first=True),
                           nn.LSTM(2 * self.hidden, self.hidden, batch_first=True))

    def _recurrence(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D) with zeros at padding -> (B, T, 2H): the bidirectional LSTM's outputs (module docstring)."""
        h = x
        for layer in range(self.lstm.num_layers):
            if layer > 0:
                h = nn.functional.dropout(h, self.lstm.dropout, self.training)  # as nn.LSTM between layers
            template = self._templates[min(layer, 1)]
            names = [n for n, _ in template.named_parameters()]  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
            outs = []
            for suffix, seq in (("", h), ("_reverse", reverse_within_lengths(h, lengths))):
                params = {n: getattr(self.lstm, n.replace("_l0", f"_l{layer}{suffix}")) for n in names}
                outs.append(functional_call(template, params, (seq,))[0])
            h = torch.cat([outs[0], reverse_within_lengths(outs[1], lengths)], dim=-1)
        return h

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        if t == 0:
            empty = x.new_zeros(b, 0, self.out_dim)
            return empty, (empty.clone() if self.use_gate else None)
        mask = mask.bool()
        lengths = lengths_from_mask(mask)
        x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        m = mask.unsqueeze(-1).to(x.dtype)
        h = self._recurrence(x, lengths) * m  # (B, T, 2H), 0 past each length
        y = self.proj(h)
        g = None
        if self.gate is not None:
            g = torch.sigmoid(self.gate(torch.cat([h, x], dim=-1))) * m
            y = g * y
        return self.drop(y) * m, g
