r"""Temporal Convolutional Network over the visual sequence (stage 2, the "macro evolution" stream).

Paper (arXiv 2503.10603, stage 2): *"a Temporal Convolutional Network over the visual sequence
captures the macro evolution of facial expression"*. Nothing more is published, so the block
below follows the generic TCN of Bai, Kolter & Koltun (2018) with the changes this task needs;
every choice is ours and is a constructor argument (and an ``EMIModelConfig`` field).

**Block** :math:`b` with kernel size :math:`k`, dilation :math:`d_b`, input :math:`x` of shape
(B, C_in, T) and the valid-step mask :math:`m_t \in \{0, 1\}`:

.. math::

    u &= m \odot \mathrm{Drop}(\mathrm{ReLU}(\mathrm{WN}(\mathrm{Conv}_{k,d_b})(x))) \\
    v &= \mathrm{Drop}(\mathrm{ReLU}(\mathrm{WN}(\mathrm{Conv}_{k,d_b})(u))) \\
    y &= m \odot \mathrm{ReLU}(v + R(x)),

where WN is weight normalisation (``torch.nn.utils.parametrizations.weight_norm``,
:math:`W = g\,V/\lVert V\rVert`) and :math:`R` is the identity, or a 1x1 convolution when
C_in != C_out.

Choices that are ours:

- **Non-causal, "same" padding**: the whole clip is known offline, so each step sees
  :math:`(k-1)d/2` steps on both sides (asymmetric by one step for an even :math:`k`). The
  original TCN is causal.
- **Masking**: the input and the output of *each* convolution's non-linearity are multiplied by
  the mask, so a padded step holds exactly 0 everywhere, i.e. it is indistinguishable from the
  convolution's own zero padding. Hence appending padding to a clip cannot change its valid
  outputs (a test checks it). Masks are usually a prefix (valid steps first) but need not be.
- **Dilations** default to :math:`d_b = 2^b` (1, 2, 4, 8, ...).

**Receptive field** (in steps, two convolutions per block, each widening it by
:math:`(k-1)d_b`):

.. math::

    \mathrm{RF} = 1 + \sum_b 2\,(k-1)\,d_b .

With k = 3 and four blocks of dilations 1, 2, 4, 8: RF = 1 + 4 * 15 = 61 steps (about 2 s of
video at 30 fps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def tcn_receptive_field(kernel_size: int, dilations: Sequence[int], convs_per_block: int = 2) -> int:
    r"""Receptive field in steps: :math:`1 + \sum_b c\,(k-1)\,d_b` (c convolutions per block)."""
    return 1 + sum(convs_per_block * (kernel_size - 1) * int(d) for d in dilations)


def default_dilations(n_blocks: int) -> list[int]:
    """The default dilation schedule 1, 2, 4, 8, ... (ours: Bai et al.'s schedule)."""
    return [2**i for i in range(n_blocks)]


class _SameConv1d(nn.Module):
    """A weight-normalised dilated 1-D convolution with non-causal "same" zero padding.

    Output length equals input length. Total padding (k-1)*d is split left = floor, right = ceil.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int):
        super().__init__()
        total = (kernel_size - 1) * dilation
        self.pad = (total // 2, total - total // 2)
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel_size, dilation=dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class TemporalBlock(nn.Module):
    """One residual block: two masked dilated convolutions + a residual (see the module docstring)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = _SameConv1d(c_in, c_out, kernel_size, dilation)
        self.conv2 = _SameConv1d(c_out, c_out, kernel_size, dilation)
        self.drop = nn.Dropout(dropout)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C_in, T) already zero at padded steps; ``m``: (B, 1, T) float mask."""
        u = self.drop(F.relu(self.conv1(x))) * m
        v = self.drop(F.relu(self.conv2(u)))
        return F.relu(v + self.residual(x)) * m


class TemporalConvNet(nn.Module):
    """Stacked non-causal dilated residual blocks over a padded sequence.

    Args:
        input_dim: feature size D of the input sequence.
        channels: output channels of each block (its length is the number of blocks).
        kernel_size: convolution kernel size k (ours: 3).
        dilations: one dilation per block; ``None`` gives 1, 2, 4, 8, ...
        dropout: dropout after each convolution's ReLU (ours: 0.1).

    ``forward(x, mask)``: ``x`` float (B, T, D), ``mask`` bool (B, T) True on valid steps;
    returns (B, T, channels[-1]), exactly 0 at padded steps (and for an all-False mask).
    """

    def __init__(
        self,
        input_dim: int,
        channels: Sequence[int] = (64, 64, 64, 64),
        kernel_size: int = 3,
        dilations: Sequence[int] | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("TemporalConvNet needs at least one block (channels is empty)")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        dilations = default_dilations(len(channels)) if dilations is None else [int(d) for d in dilations]
        if len(dilations) != len(channels):
            raise ValueError(f"{len(dilations)} dilations for {len(channels)} blocks: give one per block")
        if any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be >= 1, got {dilations}")
        self.input_dim = int(input_dim)
        self.kernel_size = int(kernel_size)
        self.dilations = dilations
        self.out_dim = channels[-1]
        ins = [self.input_dim, *channels[:-1]]
        self.blocks = nn.ModuleList(
            TemporalBlock(ci, co, self.kernel_size, d, dropout) for ci, co, d in zip(ins, channels, dilations)
        )

    @property
    def receptive_field(self) -> int:
        r"""Receptive field in steps, :math:`1 + \sum_b 2(k-1)d_b`."""
        return tcn_receptive_field(self.kernel_size, self.dilations, convs_per_block=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if t == 0:
            return x.new_zeros(b, 0, self.out_dim)
        m = mask.to(x.dtype).unsqueeze(1)  # (B, 1, T)
        h = x.masked_fill(~mask.bool().unsqueeze(-1), 0.0).transpose(1, 2)  # (B, D, T); padding -> 0
        for block in self.blocks:
            h = block(h, m)
        return h.transpose(1, 2)
