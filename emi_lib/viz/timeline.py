r"""Fusion weights of one clip over time: a diagnostic of the quality-guided fusion.

The full model's quality-guided fusion (:class:`~emi_lib.models.fusion.QualityGuidedFusion`) computes
**one** weight per modality and clip from the time-pooled encoder outputs. To see *when* in a clip a
modality looks unreliable (an occluder that comes and goes, a burst of noise), :func:`fusion_timeline`
re-evaluates the model's own quality estimators on short stretches of the clip, through the fusion's own
public path (:meth:`~emi_lib.models.fusion.QualityGuidedFusion.pool_stream` and
:meth:`~emi_lib.models.fusion.QualityGuidedFusion.weights_of`, which its forward uses):

**Windowed weights** (``method="window"``, any model with ``fusion="quality"`` and ``per_step=False``).
The clip goes through the model exactly as in :func:`~emi_lib.train.stage2.predict` (same subsampling to
``max_len``, same priors), giving the encoder outputs :math:`h_{m,k}` at steps :math:`k` with times
:math:`\tau_{m,k}` in seconds (:func:`step_times`). For every time :math:`t` of the output axis and a
window of ``window_s`` seconds, :math:`K_m(t) = \{k : |\tau_{m,k} - t| \le \tfrac12 \mathrm{window\_s}\}`:

.. math::

    \bar h_m(t) &= \mathrm{Pool}_m(\{h_{m,k}\}_{k \in K_m(t)}) \quad(\text{the model's own pooling module}) \\
    s_m(t) &= \mathrm{MLP}_m([\bar h_m(t);\ \tilde\pi_m]) \quad(\text{its quality MLP; } \tilde\pi_m
    \text{: the clip's priors as the fusion reads them, standardised with known/unknown indicators}) \\
    w_m(t) &= \frac{a_m(t)\, e^{s_m(t)/\tau}}{\sum_n a_n(t)\, e^{s_n(t)/\tau}}, \qquad
    a_m(t) = a_m \cdot [K_m(t) \ne \emptyset].

So a modality the clip lacks (:math:`a_m = 0`) gets exactly 0 at every time; a window with no step of a
modality (e.g. a stretch without face crops) gives it 0 there; a window with no step of any modality gives
all zeros (``available`` all False). A clip-level text vector counts as present at every time.

**These windowed weights are a diagnostic, not what the prediction used.** The prediction used the
clip-level weights :math:`w_m` (pooling over the whole clip), returned as ``clip_weights``. Also note that
the encoders see the whole clip (the TCN's receptive field and the BiLSTM's context reach beyond the
window), so :math:`\bar h_m(t)` is not a function of the window's input alone.

**Per-step weights** (``method="per_step"``, a model with ``per_step=True``): the model's own per-step
weights :math:`w_{m,j}`, :math:`j = 0..S-1` (``t_common`` steps; each stream's valid prefix was resampled
to S points, so step j is the fraction :math:`j/(S-1)` of *each stream's own* span), placed at
:math:`t_j = \frac{j}{S-1} D` with D the clip duration. Here the clip-level weights are their mean over j.

**Other fusions** (``equal``, ``static``, ``concat``, single streams): the weights do not depend on the
content, so the timeline repeats the clip-level weights (``method="constant"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emi_lib.features.store import subsample_steps
from emi_lib.train.data import Stage2Data, Stage2Dataset


@dataclass
class WeightTimeline:
    """The result of :func:`fusion_timeline` (module docstring)."""

    clip_id: str
    times: np.ndarray  # (N,) seconds
    weights: np.ndarray  # (N, M) in [0, 1]; rows sum to 1 over the available modalities (0 where none)
    available: np.ndarray  # (N, M) bool: the modality has a step in the window (and the clip has it)
    modalities: list  # the M names, column order
    clip_weights: np.ndarray  # (M,) the clip-level weights the prediction used
    method: str  # "window" | "per_step" | "constant"
    window_s: float | None  # window length in seconds (method "window")

    def mean_weights(self) -> dict:
        """Mean windowed weight of each modality over the windows with any available modality."""
        rows = self.available.any(1)
        if not rows.any():
            return {m: float("nan") for m in self.modalities}
        return {m: float(self.weights[rows, i].mean()) for i, m in enumerate(self.modalities)}


def step_times(n_steps: int, duration_s: float, frame_numbers=None, fps: float | None = None) -> np.ndarray:
    r"""Times (s) of the ``n_steps`` steps of a stream.

    With ``frame_numbers`` (the video frame index of each step, e.g. the numbers of the face-crop files,
    which have gaps where frames are missing) of length ``n_steps`` and an ``fps``: :math:`n_k / \mathrm{fps}`.
    Otherwise the steps are spread evenly over the duration at their centres,
    :math:`(k + \tfrac12)\, D / T` (e.g. 10 ms log-mel steps)."""
    if frame_numbers is not None and fps and len(frame_numbers) == n_steps:
        return np.asarray(frame_numbers, dtype=np.float64) / float(fps)
    return (np.arange(n_steps) + 0.5) * (float(duration_s) / max(n_steps, 1))


def _one_clip(model, data: Stage2Data, cid: str):
    """A one-clip batch built exactly as :func:`~emi_lib.train.stage2.predict` builds it."""
    from emi_lib.train.stage2 import Stage2Config

    net, mcfg = model, model.cfg
    cfg = getattr(net, "stage2_config", None) or Stage2Config(model=mcfg.to_dict(), max_len=None)  # as predict()
    max_len, max_len_audio = cfg.max_len, cfg.max_len_audio
    cols = cfg.prior_columns if mcfg.use_priors else None
    one = Stage2Data(vision={cid: data.vision.get(cid, np.zeros((0, mcfg.vision_dim), np.float32))},
                     audio={cid: data.audio.get(cid, np.zeros((0, mcfg.audio_dim), np.float32))},
                     text=None if data.text is None else {cid: data.text[cid]} if cid in data.text else {},
                     priors=data.priors, ids=[cid])
    if cols is not None and one.priors is None:
        raise ValueError("the model uses signal priors but the data have none")
    dims = {"vision": mcfg.vision_dim, "audio": mcfg.audio_dim, "text": mcfg.text_dim}
    ds = Stage2Dataset(one, dims, max_len, max_len_audio, mcfg.use_text, cols)
    lens = {"vision": max_len, "audio": max_len if max_len_audio is None else max_len_audio}
    kept = {m: subsample_steps(len(np.asarray(getattr(one, m)[cid])), lens[m]) for m in ("vision", "audio")}
    return ds.collate([0]), kept


def _windowed_weights(net, batch: dict, tv: dict, clip_avail: np.ndarray, times: np.ndarray, window_s: float,
                      chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weights (N, M), available (N, M))`` of the windows centred on ``times`` (module docstring): each
    stream's encoder outputs pooled over the steps of each window (``tv``: their times) by the fusion's own
    pooling, then the fusion's own quality weights (``chunk`` windows pooled at a time)."""
    fusion, mods = net.fusion, list(net.fusion.names)
    n, half = len(times), window_s / 2
    pooled, avail = {}, np.zeros((n, len(mods)), dtype=bool)
    for i, m in enumerate(mods):
        if m == "text":
            pooled[m] = net.text_norm(batch["text"]).expand(n, -1)
            avail[:, i] = clip_avail[i]
            continue
        x, mask = batch[m], batch[f"{m}_mask"]
        h, _ = net.encoders[m](x, mask)  # (1, T, H), the context of the whole clip
        t_m = tv[m]
        if not clip_avail[i] or t_m.size == 0:
            pooled[m] = h.new_zeros(n, h.shape[-1])
            continue
        win = np.abs(t_m[None, :] - times[:, None]) <= half + 1e-9  # (N, T)
        win_t = torch.from_numpy(win)
        parts = [fusion.pool_stream(m, h[0, : t_m.size].expand(len(c), -1, -1), win_t[c])
                 for c in np.array_split(np.arange(n), max(1, -(-n // chunk)))]
        pooled[m] = torch.cat(parts)
        avail[:, i] = win.any(1)
    # the clip's priors, one row per window, read by the fusion as in the forward (PriorInput: standardised,
    # with known/unknown indicators)
    priors = {m: torch.as_tensor(p).reshape(1, -1).expand(n, -1)
              for m, p in ((batch.get("priors") or {}) if net.cfg.use_priors else {}).items()}
    w, _ = fusion.weights_of(pooled, priors, torch.from_numpy(avail))
    return w.numpy().astype(np.float64), avail


@torch.no_grad()
def fusion_timeline(model, data: Stage2Data, cid: str, times_by_stream: dict, times=None,
                    window_s: float = 1.0, method: str = "auto", chunk: int = 64) -> WeightTimeline:
    """Fusion weights of clip ``cid`` over time (module docstring).

    ``times_by_stream``: {"vision": (T_v,), "audio": (T_a,)} seconds of every step of the clip's *original*
    sequences in ``data`` (:func:`step_times`); the steps the model keeps after subsampling are looked up
    in it. ``times``: the output time axis (s); default 50 points over the clip. ``method``: "auto"
    (``per_step`` for a per-step model, ``window`` for quality fusion, else ``constant``) or one of those."""
    net = model.eval()
    mcfg = net.cfg
    cid = str(cid)
    batch, kept = _one_clip(net, data, cid)
    out = net(batch)
    mods = list(out["modalities"])
    clip_w = out["weights"][0].numpy().astype(np.float64)
    clip_avail = out["available"][0].numpy().astype(bool)
    tv = {}
    for m in ("vision", "audio"):
        t_all = np.asarray(times_by_stream.get(m, np.zeros(0)), dtype=np.float64)
        n_orig = len(np.asarray(data.vision.get(cid, [])) if m == "vision" else np.asarray(data.audio.get(cid, [])))
        if len(kept[m]) and len(t_all) != n_orig:
            raise ValueError(f"times_by_stream[{m!r}] has {len(t_all)} times but clip {cid} has {n_orig} {m} steps")
        tv[m] = t_all[kept[m]] if len(kept[m]) else np.zeros(0)
    if times is None:
        end = max([t.max() for t in tv.values() if t.size] + [1e-3])
        times = np.linspace(0.0, end, 50)
    times = np.asarray(times, dtype=np.float64)
    quality = mcfg.fusion == "quality"
    if method == "auto":
        method = "per_step" if (quality and mcfg.per_step) else "window" if quality else "constant"
    if method != "constant" and not quality:
        raise ValueError(f"method={method!r} needs a model with fusion='quality', not {mcfg.fusion!r}")
    if method == "per_step":
        if not mcfg.per_step:
            raise ValueError("method='per_step' needs a model with per_step=True")
        pw = out["per_step_weights"][0].numpy().astype(np.float64)  # (S, M)
        end = times.max() if times.size else 1.0
        grid = np.linspace(0.0, end, pw.shape[0])
        w = np.stack([np.interp(times, grid, pw[:, i]) for i in range(len(mods))], 1)
        avail = np.broadcast_to(clip_avail, w.shape).copy()
        return WeightTimeline(str(cid), times, w * avail, avail, mods, clip_w, "per_step", None)
    if method == "constant":
        avail = np.broadcast_to(clip_avail, (len(times), len(mods))).copy()
        return WeightTimeline(str(cid), times, np.broadcast_to(clip_w, avail.shape).copy(), avail, mods, clip_w,
                              "constant", None)
    if method != "window":
        raise ValueError(f"unknown method {method!r}")
    w, avail = _windowed_weights(net, batch, tv, clip_avail, times, float(window_s), chunk)
    return WeightTimeline(str(cid), times, w, avail, mods, clip_w, "window", float(window_s))
