r"""Training-time augmentation of stage-2 batches: teach the fusion to compensate for a bad modality.

The quality-guided fusion (:mod:`emi_lib.models.fusion`) can only learn to lean on the voice when
the face is gone (and the other way round) if training shows it clips where one stream is missing
or degraded; real data has too few. So :func:`augment_batch` degrades **training** batches on the
fly. Everything here is ours (the paper gives no recipe), a :class:`~emi_lib.train.stage2.Stage2Config`
field and off by default; ``train_stage2`` applies it after ``collate`` and before the forward, to
training batches only (never in validation, ``predict`` or any evaluation).

Batch format: the dict of ``Stage2Dataset.collate``. A stream :math:`m` of clip :math:`i` is
*available* when ``available[m][i]`` is True and its mask row holds a valid step; only the model's
streams (``EMIModelConfig.modalities``) are considered, and a clip's missing stream is never touched.

**1. Modality dropout** (``modality_dropout`` = :math:`p`; MimicMetrics, ABAW10, used 0.3). Per clip
:math:`i` with available streams :math:`A_i`:

.. math::

    u_i < p \ \text{and}\ |A_i| \ge 2 \;\Rightarrow\; \text{drop } m \sim \mathcal U(A_i):\quad
    \text{mask}_{m,i} \leftarrow \text{False},\ \text{available}_{m,i} \leftarrow \text{False},\
    x_{m,i} \leftarrow 0,\ \pi_{m,i} \leftarrow \text{NaN}

(NaN: the priors of a missing modality, as :func:`~emi_lib.features.quality.compute_priors` gives
them). At most one stream per clip and never its only one: a clip always keeps a stream.

**2. Corruption at the feature level** (``corrupt_prob`` = :math:`q`). Each clip is chosen with
probability :math:`q` and gets one corruption, a face one or an audio one with equal chance (if only
one of vision / audio is still available, that one). It runs after the dropout, on what is left.

*Face* (missing frames, an occluder that stays a while): a contiguous span of the clip's
:math:`L` valid vision steps, of length :math:`k = \mathrm{clip}(\mathrm{round}(f L), 1, L)` with
:math:`f \sim \mathcal U(\text{corrupt\_face\_span})`, at a uniform start :math:`s \in [0, L - k]`,
is removed: the steps from its first to its last valid one are cut out and the later steps shift
left, so a *prefix* mask stays a prefix mask (the gated BiLSTM's packing and the per-step resampling
need one) and any other masked step keeps its place; to the encoder those frames were never there,
like the missing crops of a real clip. When vision is the clip's only available stream, one step is
always kept. The vision priors named ``face_quality``, ``face_share`` or ``face_visible_share`` are
multiplied by the kept share :math:`1 - k/L`.

*Audio* (noise at an SNR :math:`\sigma \sim \mathcal U(\text{corrupt\_snr\_db})` dB), in feature
space, on the valid steps only:

.. math::

    x' = (1 - a)\,x + a\,n,\qquad n \sim \mathcal N(0, I),\qquad a = \frac{1}{1 + 10^{\sigma/20}} .

The features are z-scored per dimension (the notebooks' ``Standardizer``), so signal and noise have
unit power and :math:`(1-a)/a = 10^{\sigma/20}` is the amplitude ratio of signal to noise: the noise
both adds power and masks the signal, as real noise does in a spectrogram. This is ours and only an
approximation of re-extracting the features from degraded media (the backbone is not linear). The
audio priors follow the prior's own mapping (:mod:`emi_lib.features.quality`, ``SNR_REFERENCE_DB``
= 40): ``audio_quality`` :math:`\leftarrow \min(\pi, \mathrm{clip}(\sigma/40, 0, 1))`,
``audio_snr_db`` :math:`\leftarrow \min(\pi, \sigma)`; a NaN (unknown) prior stays NaN.

**Determinism.** Every draw comes from a ``torch.Generator`` (CPU) seeded by
:func:`augment_generator` from (``seed``, epoch, step in the epoch, rank), never from the global
RNG: a resumed run replays exactly the same augmentation, and with augmentation off nothing is drawn.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from emi_lib.features.quality import SNR_REFERENCE_DB

#: Vision prior columns scaled by the kept share of a face span.
FACE_PRIOR_COLUMNS = ("face_quality", "face_share", "face_visible_share")
_TAG = 0xA06  # separates these seeds from the batch-order seeds (seeding.epoch_generator)


def augmentation_enabled(cfg) -> bool:
    """True when the config asks for any training-time augmentation."""
    return cfg.modality_dropout > 0 or cfg.corrupt_prob > 0


def _range(value, name: str, lo: float, hi: float) -> list[float]:
    v = [float(x) for x in value]
    if len(v) != 2 or not all(math.isfinite(x) for x in v) or not lo <= v[0] <= v[1] <= hi:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {value}")
    return v


def check_augment_fields(cfg) -> None:
    """Validate the augmentation and auxiliary-loss fields of a Stage2Config (ranges as lists, for JSON)."""
    for name in ("modality_dropout", "corrupt_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)}")
    cfg.corrupt_face_span = _range(cfg.corrupt_face_span, "corrupt_face_span", 0.0, 1.0)
    cfg.corrupt_snr_db = _range(cfg.corrupt_snr_db, "corrupt_snr_db", -math.inf, math.inf)
    if not cfg.aux_weight >= 0:
        raise ValueError(f"aux_weight must be >= 0, got {cfg.aux_weight}")
    if cfg.aux_weight > 0 and not cfg.model.get("aux_heads"):
        raise ValueError("aux_weight > 0 needs the model's auxiliary heads: set model aux_heads=True")


def augment_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, epoch, step in the epoch, rank)."""
    entropy = [int(seed) & (2**64 - 1), int(epoch), int(step), int(rank), _TAG]
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % (2**63 - 1))
    return g


def noise_mix(snr_db: torch.Tensor) -> torch.Tensor:
    r"""Noise share :math:`a = 1 / (1 + 10^{\sigma/20})` of the feature-space mix (module docstring)."""
    return 1.0 / (1.0 + torch.pow(10.0, snr_db / 20.0))


def _copy(batch: dict) -> dict:
    out = dict(batch)
    out["available"] = {m: a.clone() for m, a in batch["available"].items()}
    if batch.get("priors") is not None:
        out["priors"] = {m: p.clone() for m, p in batch["priors"].items()}
    for k in ("vision", "vision_mask", "audio", "audio_mask", "text", "text_mask"):
        if isinstance(batch.get(k), torch.Tensor):
            out[k] = batch[k].clone()
    return out


def _available(batch: dict, m: str) -> torch.Tensor:
    mask = batch.get(f"{m}_mask")
    a = batch["available"][m].bool()
    return a & (mask.reshape(mask.shape[0], -1).any(1) if mask is not None else True)


def _drop(batch: dict, m: str, rows: torch.Tensor) -> None:
    """Make stream ``m`` missing on ``rows`` (in place, on the copy)."""
    batch[m][rows] = 0.0
    batch[f"{m}_mask"][rows] = False
    batch["available"][m][rows] = False
    if batch.get("priors") is not None and m in batch["priors"]:
        batch["priors"][m][rows] = float("nan")


def _scale_priors(batch, cfg, m: str, names, rows, fn) -> None:
    """Apply ``fn(column_values, name)`` to the prior columns ``names`` of stream ``m`` on ``rows``."""
    pri = (batch.get("priors") or {}).get(m)
    if pri is None:
        return
    for j, col in enumerate(cfg.prior_columns.get(m, [])):
        if col in names and j < pri.shape[1]:
            new = fn(pri[:, j], col)
            pri[:, j] = torch.where(rows & ~torch.isnan(pri[:, j]), new, pri[:, j])


def _face_span(batch, cfg, rows, u_frac, u_start, keep_one) -> None:
    x, mask = batch["vision"], batch["vision_mask"].bool()
    t_max = x.shape[1]
    length = mask.sum(1)
    lo, hi = cfg.corrupt_face_span
    k = ((lo + (hi - lo) * u_frac) * length).round().long().clamp(min=1)
    k = torch.minimum(k, length - keep_one.long()).clamp(min=0) * rows.long()  # valid steps hidden
    start = torch.minimum((u_start * (length - k + 1)).floor().long(), length - k).clamp(min=0)
    # positions of the span's first and last valid step (rank = index among the valid steps)
    rank = mask.long().cumsum(1) - 1
    first = ((rank == start.unsqueeze(1)) & mask).float().argmax(1)
    last = ((rank == (start + k - 1).unsqueeze(1)) & mask).float().argmax(1)
    cut, width = torch.where(k > 0, first, 0), torch.where(k > 0, last - first + 1, 0)
    t = torch.arange(t_max, device=x.device).unsqueeze(0)
    src = torch.where(t < cut.unsqueeze(1), t, t + width.unsqueeze(1)).clamp(max=t_max - 1)
    new_mask = mask.gather(1, src) & (t < t_max - width.unsqueeze(1))
    batch["vision"] = x.gather(1, src.unsqueeze(-1).expand_as(x)) * new_mask.unsqueeze(-1).to(x.dtype)
    batch["vision_mask"] = new_mask
    batch["available"]["vision"] = batch["available"]["vision"] & new_mask.any(1)
    share = (length - k).to(x.dtype) / length.clamp(min=1).to(x.dtype)  # kept share (1 off the span)
    _scale_priors(batch, cfg, "vision", FACE_PRIOR_COLUMNS, rows, lambda p, _: p * share.to(p.dtype))


def _audio_noise(batch, cfg, rows, u_snr, g) -> None:
    lo, hi = cfg.corrupt_snr_db
    snr = lo + (hi - lo) * u_snr  # (B,) dB
    a = noise_mix(snr)
    idx = rows.nonzero().squeeze(1)
    x, mask = batch["audio"], batch["audio_mask"]
    noise = torch.randn((len(idx), *x.shape[1:]), generator=g).to(x.device, x.dtype)
    ai = a[idx].to(x.dtype).view(-1, 1, 1)
    mixed = ((1 - ai) * x[idx] + ai * noise) * mask[idx].unsqueeze(-1).to(x.dtype)
    x[idx] = mixed
    quality = (snr / SNR_REFERENCE_DB).clamp(0.0, 1.0)
    bound = {"audio_quality": quality, "audio_snr_db": snr}
    _scale_priors(batch, cfg, "audio", tuple(bound), rows, lambda p, col: torch.minimum(p, bound[col].to(p.dtype)))


def augment_batch(batch: dict, cfg, generator: torch.Generator) -> dict:
    """A degraded copy of a training ``batch`` (module docstring); the input batch is left unchanged.

    ``cfg``: the run's Stage2Config (``modality_dropout``, ``corrupt_prob``, ``corrupt_face_span``,
    ``corrupt_snr_db``, ``prior_columns``, the model's streams); ``generator``: :func:`augment_generator`."""
    if not augmentation_enabled(cfg):
        return batch
    batch = _copy(batch)
    streams = [m for m in cfg.model_config().modalities if m in batch["available"] and m in batch]
    n = len(next(iter(batch["available"].values())))
    dev = batch["vision"].device
    u = torch.rand((7, n), generator=generator).to(dev)  # fixed count of draws, whatever is used
    u_drop, u_pick, u_cor, u_kind, u_frac, u_start, u_snr = u
    if cfg.modality_dropout > 0 and len(streams) >= 2:
        avail = torch.stack([_available(batch, m) for m in streams], 1)  # (B, M)
        count = avail.sum(1)
        drop = (u_drop < cfg.modality_dropout) & (count >= 2)
        pick = (u_pick * count).floor().long().clamp(max=(count - 1).clamp(min=0))  # k-th available stream
        rank = avail.long().cumsum(1) - 1
        for i, m in enumerate(streams):
            rows = drop & avail[:, i] & (rank[:, i] == pick)
            if rows.any():
                _drop(batch, m, rows)
    if cfg.corrupt_prob > 0:
        av = {m: _available(batch, m) if m in streams else torch.zeros(n, dtype=torch.bool, device=dev)
              for m in ("vision", "audio")}
        chosen = u_cor < cfg.corrupt_prob
        face = chosen & av["vision"] & (~av["audio"] | (u_kind < 0.5))
        noisy = chosen & av["audio"] & (~av["vision"] | (u_kind >= 0.5))
        rest = [_available(batch, m) for m in streams if m != "vision"]
        alone = ~torch.stack(rest, 1).any(1) if rest else torch.ones(n, dtype=torch.bool, device=dev)
        if face.any():  # a clip whose only stream is vision keeps one step
            _face_span(batch, cfg, face, u_frac, u_start, keep_one=alone)
        if noisy.any():
            _audio_noise(batch, cfg, noisy, u_snr, generator)
    return batch
