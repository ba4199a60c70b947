r"""The assembled stage-2 model: encoders, fusion and the six-sigmoid head.

Paper (arXiv 2503.10603, stage 2, "temporal-aware dynamic fusion"): a TCN over the visual
sequence, a gated BiLSTM over the audio sequence and quality-guided fusion. Assembled here as

.. math::

    h_v = \mathrm{TCN}(\mathrm{LN}(x_v)),\quad h_a = \mathrm{GatedBiLSTM}(\mathrm{LN}(x_a)),\quad
    [h_t = \mathrm{LN}(x_t)],\quad
    f = \mathrm{Fusion}(\{h_m, \mathrm{mask}_m, \pi_m\}),\quad
    \hat y = \sigma(\mathrm{MLP}(f)) \in [0, 1]^6 .

Everything not stated by the paper (sizes, input LayerNorm, pooling, the fusion formula, the
head) is ours and is a field of ``EMIModelConfig``. The text stream (``use_text``) is one clip
vector (B, D_text), e.g. a stage-1 text embedding, with its own (B,) availability mask; it has no
temporal encoder. With no available stream the fused vector is 0 and the prediction is
:math:`\sigma(\mathrm{MLP}(0))`, i.e. the head's bias path: finite, never NaN.

**Auxiliary per-modality heads** (``aux_heads``, ours, off by default). A fused model can lean on
its best stream and leave the others untrained, and then has nothing to fall back on when that
stream is bad. Each stream's pooled vector :math:`\bar h_m` (the fusion's own pooling, so one
implementation) gets its own linear head,

.. math::

    \hat y^{(m)} = \sigma(W_m \bar h_m + b_m) \in [0, 1]^6,

returned as ``aux_pred``; training adds :math:`w_{aux}` times their loss on the clips where stream
m is available (:func:`emi_lib.train.losses.aux_head_loss`). The heads never feed ``pred``, and
with ``aux_heads=False`` no module is built, so the state dict is exactly the one without them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from emi_lib.constants import EMOTIONS
from emi_lib.features.quality import PRIOR_COLUMNS
from emi_lib.models.fusion import FUSION_KINDS, Fusion, build_fusion
from emi_lib.models.gated_bilstm import GatedBiLSTM
from emi_lib.models.pooling import POOLING_KINDS
from emi_lib.models.tcn import TemporalConvNet

#: Every value of ``EMIModelConfig.fusion``: the fusions, plus the single-stream ablations.
MODEL_FUSIONS = (*FUSION_KINDS, "vision_only", "audio_only")


@dataclass
class EMIModelConfig:
    """Configuration of ``EMIModel``. JSON-able via ``to_dict``/``from_dict``. All values are ours."""

    vision_dim: int = 768  # D of the per-frame visual features (infer from the feature store)
    audio_dim: int = 768  # D of the per-step audio features
    text_dim: int = 512  # D of the clip-level text embedding (used only when use_text)
    input_norm: bool = True  # LayerNorm each input stream before its encoder
    # --- TCN (visual stream by default) ---
    tcn_channels: list[int] = field(default_factory=lambda: [128, 128, 128, 128])  # channels per block
    tcn_kernel: int = 3  # kernel size k of every dilated convolution
    tcn_dilations: list[int] | None = None  # one per block; None = 1, 2, 4, 8, ...
    tcn_dropout: float = 0.1  # dropout after each convolution's ReLU
    # --- gated BiLSTM (audio stream by default) ---
    lstm_hidden: int = 128  # hidden size per direction
    lstm_layers: int = 1  # stacked BiLSTM layers
    lstm_dropout: float = 0.1  # between LSTM layers and on the gated output
    lstm_gate: bool = True  # False = the ablation without the output gate
    lstm_out_dim: int | None = None  # size of the gated output; None = 2 * lstm_hidden
    # --- pooling and fusion ---
    pooling: str = "mean"  # temporal pooling per stream: "mean" | "attention" (unused when per_step)
    pool_hidden: int = 64  # hidden size of the attention-pooling scorer
    fusion: str = "quality"  # "quality" | "equal" | "static" | "concat" | "vision_only" | "audio_only"
    fusion_dim: int = 128  # common dim D every stream is projected to before mixing
    tau: float = 1.0  # softmax temperature of the quality weights
    quality_hidden: int = 32  # hidden size of each per-modality quality MLP
    use_priors: bool = True  # feed signal priors (batch["priors"]) to the quality estimators
    # number of prior values per stream (e.g. vision: share of usable face frames, audio: scaled SNR); the
    # default is one per column of emi_lib.features.quality.PRIOR_COLUMNS (the quality estimator reads each
    # value with a known/unknown indicator: emi_lib.models.prior_input.prior_input_dim)
    prior_dims: dict[str, int] = field(default_factory=lambda: {m: len(c) for m, c in PRIOR_COLUMNS.items()})
    per_step: bool = False  # quality weights per step on a common time base (quality fusion only)
    t_common: int = 32  # number of steps of that common time base
    use_text: bool = False  # add the clip-level text vector as a third stream
    swap_encoders: bool = False  # ablation: TCN over audio and gated BiLSTM over vision
    # --- head ---
    head_hidden: int = 64  # hidden size of the head MLP; 0 = a single linear layer
    head_dropout: float = 0.1  # dropout in the head
    n_outputs: int = len(EMOTIONS)  # six sigmoid outputs, EMOTIONS order
    aux_heads: bool = False  # one linear head per pooled stream (aux_pred; Stage2Config.aux_weight trains it)

    def __post_init__(self):
        if self.fusion not in MODEL_FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}; choose one of {MODEL_FUSIONS}")
        if self.pooling not in POOLING_KINDS:
            raise ValueError(f"pooling={self.pooling!r}; choose one of {POOLING_KINDS}")
        if self.per_step and self.fusion != "quality":
            raise ValueError(f"per_step=True needs fusion='quality', got {self.fusion!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.per_step and self.t_common < 2:
            raise ValueError(f"t_common must be >= 2, got {self.t_common}")
        self.tcn_channels = [int(c) for c in self.tcn_channels]
        if self.tcn_dilations is not None:
            self.tcn_dilations = [int(d) for d in self.tcn_dilations]
        self.prior_dims = {str(k): int(v) for k, v in self.prior_dims.items()}

    @property
    def modalities(self) -> list[str]:
        """The streams the model fuses, in the column order of ``weights``."""
        base = {"vision_only": ["vision"], "audio_only": ["audio"]}.get(self.fusion, ["vision", "audio"])
        return base + (["text"] if self.use_text else [])

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EMIModelConfig:
        """Inverse of ``to_dict``; unknown keys raise (a typo must not be silently ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown EMIModelConfig fields {unknown}")
        return cls(**d)

    @classmethod
    def tiny(cls, vision_dim: int, audio_dim: int, text_dim: int = 8, **overrides) -> EMIModelConfig:
        """A very small model for tests and smoke runs (a few thousand parameters)."""
        base = dict(
            vision_dim=vision_dim,
            audio_dim=audio_dim,
            text_dim=text_dim,
            tcn_channels=[8, 8],
            tcn_kernel=3,
            lstm_hidden=8,
            fusion_dim=8,
            quality_hidden=8,
            pool_hidden=8,
            head_hidden=8,
            t_common=8,
            tcn_dropout=0.0,
            lstm_dropout=0.0,
            head_dropout=0.0,
        )
        base.update(overrides)
        return cls(**base)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _Encoder(nn.Module):
    """Input LayerNorm + a temporal encoder with one signature: ``(x, mask) -> (h, gates | None)``."""

    def __init__(self, kind: str, input_dim: int, cfg: EMIModelConfig):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(input_dim) if cfg.input_norm else nn.Identity()
        if kind == "tcn":
            self.net = TemporalConvNet(
                input_dim, cfg.tcn_channels, cfg.tcn_kernel, cfg.tcn_dilations, cfg.tcn_dropout
            )
        else:
            self.net = GatedBiLSTM(
                input_dim, cfg.lstm_hidden, cfg.lstm_layers, cfg.lstm_dropout, cfg.lstm_gate, cfg.lstm_out_dim
            )
        self.out_dim = self.net.out_dim

    def forward(self, x, mask):
        x = self.norm(x.masked_fill(~mask.unsqueeze(-1), 0.0))
        if self.kind == "tcn":
            return self.net(x, mask), None
        lengths = mask.sum(1, keepdim=True)
        if torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths):
            return self.net(x, mask)
        # masked steps inside a clip (a frame without a face): the recurrence runs over the valid steps only
        # (moved to the front in their order), and the outputs go back to their time steps (0 where masked)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        prefix = torch.arange(mask.shape[1], device=mask.device) < lengths
        h_c, g_c = self.net(torch.gather(x, 1, order.unsqueeze(-1).expand_as(x)), prefix)

        def back(y):
            out = torch.zeros_like(y).scatter(1, order.unsqueeze(-1).expand_as(y), y)
            return out * mask.unsqueeze(-1).to(y.dtype)

        return back(h_c), None if g_c is None else back(g_c)


class EMIModel(nn.Module):
    """Stage-2 model (see the module docstring).

    ``forward(batch)``: ``batch`` holds ``"vision"`` (B, Tv, Dv), ``"vision_mask"`` (B, Tv) bool,
    ``"audio"`` (B, Ta, Da), ``"audio_mask"`` (B, Ta) bool, optionally ``"text"`` (B, Dt) and
    ``"text_mask"`` (B,) bool, ``"priors"`` {name: (B,) or (B, P), NaN = unknown}, ``"available"`` {name: (B,) bool}.
    A missing mask means all steps are valid; a stream the config does not use is ignored.
    Returns a dict:

    - ``pred`` (B, 6) in [0, 1] (sigmoid), ``logits`` (B, 6), ``fused`` (B, fusion_dim);
    - ``weights`` (B, M) and ``available`` (B, M) with ``modalities`` the M names;
    - ``scores`` (B, M) quality scores or None; ``per_step_weights`` (B, t_common, M) or None;
    - ``gates``: {name: (B, T, H_o)} for each stream encoded by a gated BiLSTM with the gate on;
    - ``aux_pred``: {name: (B, 6)} in [0, 1] per stream (``aux_heads``), else None.
    """

    def __init__(self, cfg: EMIModelConfig):
        super().__init__()
        self.cfg = cfg
        kinds = {"vision": "tcn", "audio": "lstm"}
        if cfg.swap_encoders:
            kinds = {"vision": "lstm", "audio": "tcn"}
        in_dims = {"vision": cfg.vision_dim, "audio": cfg.audio_dim}
        self.modalities = cfg.modalities
        self.encoders = nn.ModuleDict(
            {m: _Encoder(kinds[m], in_dims[m], cfg) for m in self.modalities if m != "text"}
        )
        dims = {m: self.encoders[m].out_dim for m in self.encoders}
        if cfg.use_text:
            self.text_norm = nn.LayerNorm(cfg.text_dim) if cfg.input_norm else nn.Identity()
            dims["text"] = cfg.text_dim
        kind = "equal" if cfg.fusion in ("vision_only", "audio_only") else cfg.fusion
        self.fusion: Fusion = build_fusion(
            kind,
            dims,
            cfg.fusion_dim,
            pooling=cfg.pooling,
            tau=cfg.tau,
            prior_dims=cfg.prior_dims if cfg.use_priors else {},
            quality_hidden=cfg.quality_hidden,
            per_step=cfg.per_step,
            t_common=cfg.t_common,
            pool_hidden=cfg.pool_hidden,
        )
        if cfg.head_hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(cfg.fusion_dim, cfg.head_hidden),
                nn.ReLU(),
                nn.Dropout(cfg.head_dropout),
                nn.Linear(cfg.head_hidden, cfg.n_outputs),
            )
        else:
            self.head = nn.Linear(cfg.fusion_dim, cfg.n_outputs)
        if cfg.aux_heads:  # registered only when on: the state dict without them is unchanged
            self.aux_head = nn.ModuleDict({m: nn.Linear(d, cfg.n_outputs) for m, d in dims.items()})

    def set_prior_stats(self, priors: dict, names: dict | None = None) -> None:
        """Fit the standardisation of the signal priors on the training clips' priors {stream: (N, P)}
        (:meth:`~emi_lib.models.fusion.QualityGuidedFusion.set_prior_stats`); no-op for a model that
        reads no priors."""
        if self.cfg.use_priors and hasattr(self.fusion, "set_prior_stats"):
            self.fusion.set_prior_stats(priors, names)

    def forward(self, batch: dict) -> dict:
        seqs, masks, gates = {}, {}, {}
        for m, enc in self.encoders.items():
            if m not in batch:
                raise KeyError(f"batch has no {m!r} stream, which this model ({self.cfg.fusion}) needs")
            x = batch[m]
            mask = batch.get(f"{m}_mask")
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
            h, g = enc(x, mask)
            seqs[m], masks[m] = h, mask
            if g is not None:
                gates[m] = g
        if self.cfg.use_text:
            ref = next(iter(seqs.values()))
            text = batch.get("text")
            if text is None:  # no text at all in this batch: the stream is missing for every clip
                text = ref.new_zeros(ref.shape[0], self.cfg.text_dim)
                tmask = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
            else:
                tmask = batch.get("text_mask")
                tmask = (
                    torch.ones(text.shape[0], dtype=torch.bool, device=text.device)
                    if tmask is None
                    else tmask
                )
                text = text.masked_fill(~tmask.bool().unsqueeze(-1), 0.0)
            seqs["text"], masks["text"] = self.text_norm(text), tmask.bool().reshape(-1)
        priors = batch.get("priors") if self.cfg.use_priors else None
        out = self.fusion(seqs, masks, available=batch.get("available"), priors=priors)
        logits = self.head(out["fused"])
        aux = None
        if self.cfg.aux_heads:
            aux = {m: torch.sigmoid(head(out["pooled"][m])) for m, head in self.aux_head.items()}
        return {
            "pred": torch.sigmoid(logits),
            "logits": logits,
            "fused": out["fused"],
            "weights": out["weights"],
            "available": out["available"],
            "modalities": out["modalities"],
            "scores": out["scores"],
            "per_step_weights": out["per_step_weights"],
            "gates": gates,
            "aux_pred": aux,
        }
