r"""Temporal pooling and quality-guided fusion of the modality streams (stage 2).

Paper (arXiv 2503.10603, stage 2): *"a quality-guided fusion gives differentiable modality weights,
so that an occluded face or a noisy voice is compensated by the other modality"*. No formula is
published: everything below is ours, and each choice is a constructor argument (and an
``EMIModelConfig`` field).

Conventions. A stream is a padded sequence ``x`` (B, T, D_m) with a bool ``mask`` (B, T), True on
valid steps; a clip-level vector (B, D_m) (the text embedding) is a length-1 sequence whose mask
is (B,). Modality m is **available** for clip i when its mask has a valid step and the optional
``available[m][i]`` is True. Every fusion returns the same dict:

- ``fused`` (B, D): the clip vector the head reads;
- ``weights`` (B, M): per-clip modality weights, summing to 1 over the available modalities
  and **exactly 0** for a missing one (all 0 when none is available, then ``fused`` is 0 and the
  prediction comes from the head's bias);
- ``available`` (B, M) bool; ``scores`` (B, M) raw quality scores (quality fusion only, else None);
- ``per_step_weights`` (B, T_common, M) (quality fusion with ``per_step=True``, else None);
- ``pooled``: {name: (B, D_m)} the pooled streams (zero for an unavailable clip), which the
  auxiliary per-modality heads of ``EMIModel`` read (in per-step mode, where no stream is pooled
  for the mix, the masked mean);
- ``modalities``: the M names, in column order.

**Pooling** a stream to a clip vector :math:`\bar h = \sum_t a_t h_t` (:mod:`emi_lib.models.pooling`, shared
with the stage-1 aligner):

- ``"mean"``: :math:`a_t = m_t / \max(1, \sum_s m_s)`;
- ``"attention"``: :math:`a = \mathrm{softmax}_{t: m_t}(v^\top \tanh(W h_t + c) + d)`;

both give the zero vector for an all-False mask (never NaN).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from emi_lib.models.pooling import make_pooling, masked_mean, masked_softmax
from emi_lib.models.prior_input import PriorInput, prior_input_dim

__all__ = ["FUSION_KINDS", "ConcatFusion", "EqualFusion", "Fusion", "PriorInput", "QualityGuidedFusion", "StaticFusion",
           "build_fusion", "prior_input_dim", "resample_linear"]

#: Names accepted by ``build_fusion`` (single-stream ablations are built by ``EMIModel``).
FUSION_KINDS = ("quality", "equal", "static", "concat")


def resample_linear(x: torch.Tensor, mask: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Resample each clip's valid prefix to ``steps`` points by linear interpolation.

    Clip i with length :math:`L_i` is sampled at positions :math:`p_j = j (L_i - 1)/(S - 1)`,
    :math:`j = 0..S-1` (endpoints on endpoints, like ``align_corners=True``):
    :math:`\tilde x_j = (1 - f_j) x_{\lfloor p_j \rfloor} + f_j x_{\lfloor p_j \rfloor + 1}`. A length-1 clip
    (e.g. the text vector) becomes constant. Returns ``(x_res (B, S, D), mask_res (B, S))``; a
    zero-length clip gives zeros and an all-False mask. The mask must be a prefix mask.
    """
    if steps < 2:
        raise ValueError(f"resampling needs at least 2 steps, got {steps}")
    b, t, d = x.shape
    mask = mask.bool()
    lengths = mask.sum(1)
    if t == 0:
        x, t = x.new_zeros(b, 1, d), 1
    x = x.masked_fill(~mask.unsqueeze(-1), 0.0) if mask.shape[1] == t else x
    last = (lengths.clamp(min=1) - 1).unsqueeze(1)  # (B, 1) last valid index
    pos = torch.linspace(0.0, 1.0, steps, device=x.device, dtype=x.dtype).unsqueeze(0) * last.to(x.dtype)
    i0 = pos.floor().long().clamp(min=0, max=t - 1)
    i1 = torch.minimum(i0 + 1, last).clamp(max=t - 1)
    f = (pos - i0.to(x.dtype)).unsqueeze(-1)
    g0 = x.gather(1, i0.unsqueeze(-1).expand(b, steps, d))
    g1 = x.gather(1, i1.unsqueeze(-1).expand(b, steps, d))
    out_mask = (lengths > 0).unsqueeze(1).expand(b, steps)
    return ((1 - f) * g0 + f * g1) * out_mask.unsqueeze(-1).to(x.dtype), out_mask


def _as_sequence(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, D) vector becomes a length-1 sequence; a missing mask means all steps are valid."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
        if mask is not None and mask.dim() == 1:
            mask = mask.unsqueeze(1)
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, mask.bool()


class Fusion(nn.Module):
    r"""Base of every fusion: pools each stream, projects it, :math:`P_m(\bar h_m) \in R^{D}`, and mixes.

    Subclasses define ``mix``. ``weights_meaning`` says what the returned weights are.
    """

    weights_meaning = "per-clip modality weights"
    #: whether ``forward`` returns per-clip quality ``scores`` (else None)
    has_scores = False

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        pooling: str = "mean",
        pool_hidden: int = 64,
        pool_streams: bool = True,
    ):
        super().__init__()
        if not dims:
            raise ValueError("fusion needs at least one modality")
        self.names = list(dims)
        self.dims = dict(dims)
        self.out_dim = int(out_dim)
        # no per-stream pooling when unused (per-step mode): every parameter gets a gradient (DDP-safe)
        pools = {m: make_pooling(pooling, d, pool_hidden) for m, d in dims.items()} if pool_streams else {}
        self.pool = nn.ModuleDict(pools)
        self.proj = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in dims.items()})

    def _prepare(self, seqs, masks, available):
        xs, ms, avail = {}, {}, []
        for m in self.names:
            if m not in seqs:
                raise KeyError(f"fusion expects stream {m!r}; got {sorted(seqs)}")
            xs[m], ms[m] = _as_sequence(seqs[m], (masks or {}).get(m))
            a = ms[m].any(1)
            if available is not None and available.get(m) is not None:
                a = a & available[m].to(a.device).bool().reshape(-1)
            avail.append(a)
        return xs, ms, torch.stack(avail, dim=1)  # (B, M)

    def forward(
        self,
        seqs: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        available: Mapping[str, torch.Tensor] | None = None,
        priors: Mapping[str, torch.Tensor] | None = None,
    ) -> dict:
        xs, ms, avail = self._prepare(seqs, masks, available)
        out = self.mix(xs, ms, avail, priors or {})
        out.setdefault("scores", None)
        out.setdefault("per_step_weights", None)
        out.setdefault("pooled", None)
        out["available"] = avail
        out["modalities"] = list(self.names)
        return out

    def pool_stream(self, m: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stream ``m``'s (B, T, D_m) sequence pooled to (B, D_m) by this fusion's own pooling module (the
        masked mean when it pools none, in per-step mode); an all-False mask row gives the zero vector."""
        return self.pool[m](x, mask) if m in self.pool else masked_mean(x, mask)

    def _pooled(self, xs, ms, avail):
        """Pooled vectors (name -> (B, D_m)), zero for an unavailable clip."""
        return {m: self.pool_stream(m, xs[m], ms[m]) * avail[:, i : i + 1].to(xs[m].dtype)
                for i, m in enumerate(self.names)}

    def _weighted_sum(self, pooled, w):
        projected = torch.stack([self.proj[m](pooled[m]) for m in self.names], dim=1)  # (B, M, D)
        return (w.unsqueeze(-1) * projected).sum(1)

    def mix(self, xs, ms, avail, priors) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class QualityGuidedFusion(Fusion):
    r"""Quality-guided fusion (ours; the paper publishes no formula).

    Per modality m a quality estimator scores the pooled stream and optional signal priors
    :math:`\pi_m` (e.g. share of frames with a usable face, a scaled SNR estimate), read through
    :class:`PriorInput`: each value standardised with the training statistics plus a known/unknown
    indicator, :math:`\tilde\pi_m = [z_m; k_m]` (an unknown, NaN, prior is :math:`z = 0, k = 0`: neutral and
    flagged, never "worst quality"; a stream with no prior tensor in the batch is all unknown):

    .. math::

        s_m &= \mathrm{MLP}_m([\bar h_m;\ \tilde\pi_m]) \\
        w_m &= \frac{a_m \exp(s_m/\tau)}{\sum_{n} a_n \exp(s_n/\tau)}
            \quad (a_m = 1 \text{ if m is available, else } 0;\ \text{all } w = 0 \text{ if no } a_m) \\
        f &= \sum_m w_m\, P_m(\bar h_m).

    Implemented as a masked softmax (scores of missing modalities set to :math:`-\infty`, with
    the all-missing guard of ``masked_softmax``), so a missing modality gets weight exactly 0.

    **Per-step mode** (``per_step=True``): each stream's valid prefix is resampled to
    ``t_common`` steps (``resample_linear``), the scores are per step,
    :math:`s_{m,t} = \mathrm{MLP}_m([\tilde h_{m,t};\ \tilde\pi_m])`, the softmax is per step, the fused
    sequence :math:`f_t = \sum_m w_{m,t} P_m(\tilde h_{m,t})` is averaged over the ``t_common`` steps
    (the pooling choice is not used), and the per-clip ``weights`` are :math:`\frac1T\sum_t w_{m,t}`.

    Args: ``dims`` name -> stream size; ``out_dim`` D; ``tau`` softmax temperature (ours 1.0);
    ``prior_dims`` name -> number of prior values P (0 or absent: no prior; the estimator reads
    :func:`prior_input_dim` (P) = 2P inputs); ``hidden`` the MLP's hidden size. :meth:`set_prior_stats` fits
    the standardisation on the training clips (``train_stage2`` does it).
    """

    weights_meaning = "learned quality weights"
    has_scores = True

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        pooling: str = "mean",
        tau: float = 1.0,
        prior_dims: Mapping[str, int] | None = None,
        hidden: int = 32,
        per_step: bool = False,
        t_common: int = 32,
        pool_hidden: int = 64,
    ):
        super().__init__(dims, out_dim, pooling, pool_hidden, pool_streams=not per_step)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.prior_dims = {m: int((prior_dims or {}).get(m, 0)) for m in self.names}
        self.per_step = bool(per_step)
        self.t_common = int(t_common)
        # registered only for streams with priors: a model without priors keeps its state dict
        self.prior_input = nn.ModuleDict({m: PriorInput(p) for m, p in self.prior_dims.items() if p > 0})
        self.quality = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(d + prior_input_dim(self.prior_dims[m]), hidden), nn.ReLU(), nn.Linear(hidden, 1)
                )
                for m, d in self.dims.items()
            }
        )

    def set_prior_stats(self, priors: Mapping[str, torch.Tensor], names: Mapping | None = None) -> None:
        """Fit each stream's prior standardisation (:meth:`PriorInput.set_stats`) on the training clips'
        priors {name: (N, P)}; ``names`` {name: column names} for the error messages."""
        for m, enc in self.prior_input.items():
            if m not in priors:
                raise ValueError(f"no training priors for stream {m!r} (the fusion reads {enc.n_values} value(s))")
            enc.set_stats(priors[m], (names or {}).get(m))

    def _prior(self, priors, m, ref: torch.Tensor) -> torch.Tensor:
        """The (B, 2P) prior input of stream ``m`` (:class:`PriorInput`); (B, 0) for a stream without priors."""
        if m not in self.prior_input:
            return ref.new_zeros(ref.shape[0], 0)
        try:
            return self.prior_input[m](priors.get(m), ref.shape[0], ref)
        except ValueError as err:
            raise ValueError(f"prior for {m!r}: {err}") from err

    def _prior_like(self, priors, m, h: torch.Tensor) -> torch.Tensor:
        """The prior input of stream ``m`` for ``h`` (B, D) or (B, S, D): one row per clip, repeated over steps."""
        if h.dim() == 2:
            return self._prior(priors, m, h)
        return self._prior(priors, m, h[:, 0]).unsqueeze(1).expand(-1, h.shape[1], -1)

    def weights_of(self, pooled: Mapping[str, torch.Tensor], priors: Mapping[str, torch.Tensor] | None = None,
                   available: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The quality weights of pooled streams, ``(weights, scores)``, as the forward computes them:

        .. math::

            s_m = \mathrm{MLP}_m([\bar h_m;\ \tilde\pi_m]), \qquad
            w_m = \frac{a_m \exp(s_m/\tau)}{\sum_n a_n \exp(s_n/\tau)}

        ``pooled`` {name: (B, D_m)} (or (B, S, D_m) per step); ``priors`` {name: (B, P)} raw values, NaN =
        unknown, read through :class:`PriorInput` (standardised, with known/unknown indicators; a stream
        without a prior tensor is all unknown) and repeated over the steps; ``available`` (B, M) (or
        (B, S, M)) bool, None = all available. Both results are (B, M) (or (B, S, M)) in ``names`` order; a
        missing modality gets weight exactly 0 (:func:`masked_softmax`)."""
        priors = priors or {}
        scores = torch.cat([self.quality[m](torch.cat([pooled[m], self._prior_like(priors, m, pooled[m])], -1))
                            for m in self.names], -1)
        avail = torch.ones_like(scores, dtype=torch.bool) if available is None else available.bool()
        if avail.dim() < scores.dim():  # per-clip availability, per-step scores
            avail = avail.unsqueeze(1).expand_as(scores)
        return masked_softmax(scores / self.tau, avail, dim=-1), scores

    def mix(self, xs, ms, avail, priors):
        if self.per_step:
            return self._mix_per_step(xs, ms, avail, priors)
        pooled = self._pooled(xs, ms, avail)
        w, scores = self.weights_of(pooled, priors, avail)  # (B, M)
        return {"fused": self._weighted_sum(pooled, w), "weights": w, "scores": scores, "pooled": pooled}

    def _mix_per_step(self, xs, ms, avail, priors):
        steps = self.t_common
        res, projected = {}, []
        for i, m in enumerate(self.names):
            h, _ = resample_linear(xs[m], ms[m], steps)
            res[m] = h * avail[:, i, None, None].to(h.dtype)
            projected.append(self.proj[m](res[m]))  # (B, S, D)
        w_t, scores = self.weights_of(res, priors, avail)  # (B, S, M)
        fused_t = (w_t.unsqueeze(-1) * torch.stack(projected, 2)).sum(2)  # (B, S, D)
        any_avail = avail.any(1, keepdim=True).expand(-1, steps)
        return {
            "fused": masked_mean(fused_t, any_avail),
            "weights": w_t.mean(1),
            "scores": scores.mean(1),
            "per_step_weights": w_t,
            "pooled": self._pooled(xs, ms, avail),
        }


class EqualFusion(Fusion):
    r"""Fixed equal weights over the available modalities, :math:`w_m = a_m / \max(1, \sum_n a_n)`."""

    weights_meaning = "fixed equal weights"

    def mix(self, xs, ms, avail, priors):
        a = avail.to(next(iter(xs.values())).dtype)
        w = a / a.sum(1, keepdim=True).clamp(min=1.0)
        pooled = self._pooled(xs, ms, avail)
        return {"fused": self._weighted_sum(pooled, w), "weights": w, "pooled": pooled}


class StaticFusion(Fusion):
    r"""One learned weight vector for all clips, :math:`w = \mathrm{softmax}_{available}(\theta)`, init uniform."""

    weights_meaning = "learned static weights"

    def __init__(self, dims, out_dim, pooling="mean", pool_hidden: int = 64):
        super().__init__(dims, out_dim, pooling, pool_hidden)
        self.logits = nn.Parameter(torch.zeros(len(self.names)))

    def mix(self, xs, ms, avail, priors):
        w = masked_softmax(self.logits.unsqueeze(0).expand(avail.shape[0], -1), avail, dim=-1)
        pooled = self._pooled(xs, ms, avail)
        return {"fused": self._weighted_sum(pooled, w), "weights": w, "pooled": pooled}


class ConcatFusion(Fusion):
    r"""Concatenation: :math:`f = V\,[a_1 P_1(\bar h_1); \dots; a_M P_M(\bar h_M)] + c` (missing -> zeros).

    There are no learned modality weights; ``weights`` reports the nominal equal share over the
    available modalities (so the output dict keeps one shape), see ``weights_meaning``.
    """

    weights_meaning = "nominal (availability share; concat learns no weights)"

    def __init__(self, dims, out_dim, pooling="mean", pool_hidden: int = 64):
        super().__init__(dims, out_dim, pooling, pool_hidden)
        self.mixer = nn.Linear(len(self.names) * self.out_dim, self.out_dim)

    def mix(self, xs, ms, avail, priors):
        pooled = self._pooled(xs, ms, avail)
        a = avail.to(next(iter(xs.values())).dtype)
        parts = [self.proj[m](pooled[m]) * a[:, i : i + 1] for i, m in enumerate(self.names)]
        return {
            "fused": self.mixer(torch.cat(parts, -1)),
            "weights": a / a.sum(1, keepdim=True).clamp(min=1.0),
            "pooled": pooled,
        }


def build_fusion(
    kind: str,
    dims: Mapping[str, int],
    out_dim: int,
    pooling: str = "mean",
    tau: float = 1.0,
    prior_dims: Mapping[str, int] | None = None,
    quality_hidden: int = 32,
    per_step: bool = False,
    t_common: int = 32,
    pool_hidden: int = 64,
) -> Fusion:
    """Build a fusion by name (``FUSION_KINDS``); all share ``Fusion.forward``'s signature and output dict."""
    if per_step and kind != "quality":
        raise ValueError(f"per_step weights exist only for fusion='quality', not {kind!r}")
    if kind == "quality":
        return QualityGuidedFusion(
            dims, out_dim, pooling, tau, prior_dims, quality_hidden, per_step, t_common, pool_hidden
        )
    if kind == "equal":
        return EqualFusion(dims, out_dim, pooling, pool_hidden)
    if kind == "static":
        return StaticFusion(dims, out_dim, pooling, pool_hidden)
    if kind == "concat":
        return ConcatFusion(dims, out_dim, pooling, pool_hidden)
    raise ValueError(f"unknown fusion {kind!r}; choose one of {FUSION_KINDS}")
