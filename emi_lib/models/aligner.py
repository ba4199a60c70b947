r"""Stage 1: a CLIP-style contrastive aligner between one modality and the text space.

Paper (arXiv 2503.10603, stage 1, "modality-decoupled pre-training"): a vision-text and an
audio-text contrastive network "based on a CLIP architecture", trained separately per modality,
give a preliminary alignment of each modality with the text feature space. Nothing else is
published: the architecture below, its sizes, the pooling and the label-aware option are **ours**;
each is a field of :class:`AlignerConfig`.

Model. A clip is a sequence of frozen per-frame (vision) or per-step (audio) features
:math:`f_1..f_T \in \mathbb R^{D}` and one frozen text embedding :math:`t \in \mathbb R^{D_t}`:

.. math::

    h_t = g(f_t) \in \mathbb R^{E}  \quad\text{(frame projector, an MLP applied to every frame)}

    a_t = \mathrm{softmax}_{t:\,m_t}\big(w^\top \tanh(V h_t)\big)  \quad\text{(attention pooling; or } a_t = m_t/\textstyle\sum_s m_s)

    v = \frac{\sum_t a_t h_t}{\lVert \sum_t a_t h_t \rVert}, \qquad
    u = \frac{h_\text{text}(t)}{\lVert h_\text{text}(t) \rVert} .

The per-frame :math:`h_t` (``encode_frames``) live in the same space as the pooled clip vector, so
stage 2 can consume an *aligned frame sequence*. The attention scores are computed on the
projected frames :math:`h_t` (ours). A clip with no valid step pools to the zero vector, and the
normalisation keeps it 0 (``F.normalize`` divides by :math:`\max(\lVert\cdot\rVert, \epsilon)`).

Loss: the symmetric InfoNCE of CLIP, with open_clip's own ``ClipLoss``, over a batch of B pairs

.. math::

    \mathcal L = \tfrac12\big[\mathrm{CE}(s\,V U^\top, I) + \mathrm{CE}(s\,U V^\top, I)\big],
    \qquad s = \exp(\text{logit\_scale}),

with the raw ``logit_scale`` a learnable scalar initialised at :math:`\log(1/0.07)` and clamped to
:math:`[0, \log 100]` after every optimiser step, as open_clip's training loop does.

Label-aware negatives (ours, option ``label_aware``): :mod:`emi_lib.models.clip_loss`. The losses live there,
so that importing the aligner (and the configs built on it) does not import open_clip.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emi_lib.features.store import valid_steps
from emi_lib.models.pooling import AttentionPooling, masked_mean

POOLINGS = ("attention", "mean")
LABEL_DISTANCES = ("l1", "cosine")


@dataclass
class AlignerConfig:
    """Configuration of :class:`ModalityTextAligner` and its training. All values are ours except
    the temperature init/clamp (open_clip's). JSON-able via ``to_dict``/``from_dict``."""

    modality: str = "vision"  # which stream this aligner serves ("vision" | "audio"); a label only
    in_dim: int = 768  # D of the per-frame features (infer from the feature store)
    text_dim: int = 384  # D_t of the frozen text embedding (384 for minilm, 512 for ViT-B-32 text)
    embed_dim: int = 128  # E, size of the shared clip/text space
    hidden: int = 256  # hidden width of the frame and text projector MLPs
    frame_layers: int = 2  # Linear layers in the frame projector g (1 = a single linear map)
    standardize_inputs: bool = True  # z-score each input dimension with the training frames' mean and std
    # (stored in the model: heterogeneous features such as openSMILE descriptors in Hz, dB and ratios would
    # otherwise let a few large-scale dimensions dominate the per-frame LayerNorm)
    input_norm: bool = True  # LayerNorm on each raw frame and on the text embedding before projecting
    pooling: str = "attention"  # temporal pooling of projected frames: "attention" | "mean"
    attn_hidden: int = 64  # rows of V in a_t = softmax(w^T tanh(V h_t))
    dropout: float = 0.1  # dropout between projector layers (training only)
    text_layers: int = 2  # Linear layers in the text projector h (0 = identity, needs text_dim == embed_dim)
    text_trainable: bool = True  # False = text projector frozen at its random init (a locked text tower)
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    max_logit_scale: float = math.log(100)  # clamp of the raw logit scale after each step (open_clip)
    learn_logit_scale: bool = True  # False = temperature fixed at its init
    label_aware: bool = False  # mask near-duplicate-label pairs out of the InfoNCE denominators
    label_aware_metric: str = "l1"  # label distance: "l1" (mean |y_i - y_j|) | "cosine" (1 - cos)
    label_aware_threshold: float = 0.05  # pairs with distance <= this are not used as negatives
    max_steps: int | None = 256  # training batches: longer sequences are subsampled at evenly spaced steps
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay (not applied to biases, norms, logit_scale)
    epochs: int = 30  # maximum number of epochs
    batch_size: int = 64  # clips per contrastive batch (= number of negatives + 1)
    patience: int | None = None  # early stopping on val loss after this many epochs without gain; None = off
    seed: int = 0  # torch + numpy seed for init and shuffling
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" ...

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.label_aware_metric not in LABEL_DISTANCES:
            raise ValueError(f"label_aware_metric must be one of {LABEL_DISTANCES}, got {self.label_aware_metric!r}")
        if self.frame_layers < 1:
            raise ValueError("frame_layers must be >= 1")
        if self.text_layers == 0 and self.text_dim != self.embed_dim:
            raise ValueError(f"text_layers=0 (identity) needs text_dim == embed_dim, got {self.text_dim} != {self.embed_dim}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AlignerConfig:
        """Inverse of ``to_dict``; unknown keys raise (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown AlignerConfig fields {unknown}")
        return cls(**d)

    @classmethod
    def tiny(cls, in_dim: int, text_dim: int, **overrides) -> AlignerConfig:
        """A very small aligner for tests and smoke runs."""
        base = dict(in_dim=in_dim, text_dim=text_dim, embed_dim=16, hidden=32, attn_hidden=8, dropout=0.0,
                    batch_size=16, epochs=10, max_steps=32)
        base.update(overrides)
        return cls(**base)


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, dropout: float, norm: bool) -> nn.Module:
    """LayerNorm? -> [Linear -> GELU -> Dropout] x (layers - 1) -> Linear; identity for layers=0."""
    if layers == 0:
        return nn.Identity()
    mods: list[nn.Module] = [nn.LayerNorm(in_dim)] if norm else []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class ModalityTextAligner(nn.Module):
    """One modality-text contrastive network (see the module docstring)."""

    def __init__(self, cfg: AlignerConfig):
        super().__init__()
        self.cfg = cfg
        self.frame_proj = _mlp(cfg.in_dim, cfg.hidden, cfg.embed_dim, cfg.frame_layers, cfg.dropout, cfg.input_norm)
        # no biases, as in the equation (module docstring)
        self.pool = AttentionPooling(cfg.embed_dim, cfg.attn_hidden, bias=False) if cfg.pooling == "attention" else None
        self.text_proj = _mlp(cfg.text_dim, cfg.hidden, cfg.embed_dim, cfg.text_layers, cfg.dropout, cfg.input_norm)
        if not cfg.text_trainable:
            for p in self.text_proj.parameters():
                p.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)),
                                        requires_grad=cfg.learn_logit_scale)
        # per-dimension input statistics, fitted on the training frames (fit_input_stats); identity until then
        self.register_buffer("in_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("in_std", torch.ones(cfg.in_dim))

    @torch.no_grad()
    def fit_input_stats(self, arrays) -> None:
        r"""Set :math:`\mu_d, \sigma_d` from the valid steps of ``arrays`` ((T, D) each; NaN rows are masked steps):
        the frame projector reads :math:`(x_{t,d} - \mu_d) / \sigma_d` (a constant dimension keeps
        :math:`\sigma_d = 1`)."""
        n, s1, s2 = 0, np.zeros(self.cfg.in_dim), np.zeros(self.cfg.in_dim)
        for a in arrays:
            a = np.asarray(a, dtype=np.float64)
            if a.ndim != 2 or not len(a):
                continue
            a = a[valid_steps(a)]
            n, s1, s2 = n + len(a), s1 + a.sum(0), s2 + (a * a).sum(0)
        if n == 0:
            raise ValueError("fit_input_stats: no valid frame")
        mu = s1 / n
        sd = np.sqrt(np.maximum(s2 / n - mu * mu, 0.0))
        sd[sd < 1e-8] = 1.0
        self.in_mean.copy_(torch.as_tensor(mu, dtype=self.in_mean.dtype))
        self.in_std.copy_(torch.as_tensor(sd, dtype=self.in_std.dtype))

    def encode_frames(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D), (B, T) bool -> aligned per-frame sequence (B, T, E), exactly 0 on padding (not normalised).
        Inputs are z-scored with the fitted training statistics (identity when not fitted)."""
        m = mask.bool().unsqueeze(-1)
        x = (x - self.in_mean) / self.in_std
        return self.frame_proj(x.masked_fill(~m, 0.0)).masked_fill(~m, 0.0)

    def pool_frames(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool (B, T, E) aligned frames to (B, E) (un-normalised; zero for an empty clip)."""
        return self.pool(h, mask.bool()) if self.pool is not None else masked_mean(h, mask.bool())

    def encode_clip(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D), (B, T) -> L2-normalised clip embeddings (B, E); an all-False mask row gives 0."""
        return F.normalize(self.pool_frames(self.encode_frames(x, mask), mask), dim=-1)

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        """(B, D_t) frozen text embeddings -> L2-normalised (B, E)."""
        return F.normalize(self.text_proj(t), dim=-1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor):
        """``(clip_features, text_features, exp(logit_scale))``: ``ClipLoss()(*model(x, mask, t))``."""
        return self.encode_clip(x, mask), self.encode_text(t), self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the raw logit scale to [0, max_logit_scale] (call after every optimiser step)."""
        self.logit_scale.clamp_(0, self.cfg.max_logit_scale)
