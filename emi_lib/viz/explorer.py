"""Notebook 04's interactive clip explorer (ipywidgets) and the pure figure functions behind it.

One clip at a time: the video frame under a slider (and its face crop), the waveform and log-mel spectrogram
with a cursor at the frame's time, predicted against true intensities, the fusion weights over time
(:func:`emi_lib.viz.timeline.fusion_timeline`: a windowed *diagnostic*; the clip-level weight the prediction
used is drawn dashed), the transcript and, on SynthMimic, what the generator corrupted.

Drawing lives in pure functions (arrays in, matplotlib figure out) so that it is testable without widgets and
renders headless; the widgets show PNG bytes in ``ipywidgets.Image`` (JupyterLab, classic, and any Agg run).
Per-clip media are decoded once per clip and kept in a small LRU cache (:meth:`ClipExplorer.view`).
"""

from __future__ import annotations

import html
import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS, SAMPLE_RATE
from emi_lib.data import DataRoot
from emi_lib.data.errors import DataError
from emi_lib.data.labels import read_labels
from emi_lib.data.media import (
    face_files,
    face_number,
    load_audio,
    load_face_crops,
    load_transcript,
    load_video_frames,
)
from emi_lib.features.backbones import MIN_SAMPLES, LogMel
from emi_lib.viz.timeline import WeightTimeline, fusion_timeline, step_times

COLORS = {"vision": "tab:blue", "audio": "tab:orange", "text": "tab:green"}


@dataclass
class ClipView:
    """Everything the explorer shows for one clip (:func:`load_clip_view`)."""

    clip_id: str
    split: str
    frames: np.ndarray | None  # uint8 (T, H, W, 3) video frames, None if the video is absent
    fps: float
    face_numbers: list  # video frame number of each face crop
    faces: np.ndarray | None  # uint8 (F, h, w, 3) face crops
    wave: np.ndarray | None  # float32 (N,) at SAMPLE_RATE
    logmel: np.ndarray | None  # (T_mel, n_mels), 100 steps/s
    transcript: str | None
    pred: pd.Series | None
    true: pd.Series | None
    timeline: WeightTimeline | None
    corruption: dict | None

    @property
    def n_frames(self) -> int:
        if self.frames is not None:
            return len(self.frames)
        return (max(self.face_numbers) + 1) if self.face_numbers else 1

    @property
    def duration(self) -> float:
        d_video = self.n_frames / self.fps
        return max(d_video, len(self.wave) / SAMPLE_RATE if self.wave is not None else 0.0)

    def frame_time(self, k: int) -> float:
        return int(k) / self.fps

    def face_at(self, k: int):
        """The face crop of video frame ``k``, or None (no crop for that frame)."""
        if self.faces is None or int(k) not in self.face_numbers:
            return None
        return self.faces[self.face_numbers.index(int(k))]


# ------------------------------------------------------------------------------------------ pure helpers
def compute_logmel(wave: np.ndarray | None, n_mels: int = 64) -> np.ndarray | None:
    """Log-mel spectrogram (T, n_mels) at 100 steps/s: the ``logmel`` backbone's own filterbank
    (:class:`~emi_lib.features.backbones.LogMel`, 25 ms / 10 ms); None if shorter than one window."""
    if wave is None or len(wave) < MIN_SAMPLES:
        return None
    import torch

    return LogMel(n_mels)(torch.from_numpy(np.asarray(wave, np.float32))).numpy()


def match_ids(ids, query: str) -> list:
    """Ids containing ``query`` (digits compared without leading zeros too: "7" finds "00007"); all if empty."""
    q = str(query or "").strip()
    if not q:
        return list(ids)
    exact = [i for i in ids if q.isdigit() and str(i).isdigit() and int(i) == int(q)]
    return exact + [i for i in ids if q in str(i) and i not in exact]


def fig_to_png(fig, dpi: int = 80) -> bytes:
    """PNG bytes of ``fig`` (then closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def draw_frame(ax, image, title: str = "") -> None:
    ax.axis("off")
    if image is None:
        ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=9)


def draw_wave(ax, wave, cursor_s: float | None, xmax: float) -> None:
    if wave is None:
        ax.text(0.5, 0.5, "no audio", ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        ax.plot(np.arange(len(wave)) / SAMPLE_RATE, wave, lw=0.4, color="k")
    ax.set_xlim(0, xmax)
    ax.set_ylabel("amplitude")
    if cursor_s is not None:
        ax.axvline(cursor_s, color="red", lw=1.2)


def draw_logmel(ax, logmel, cursor_s: float | None, xmax: float) -> None:
    if logmel is not None:
        ax.imshow(logmel.T, origin="lower", aspect="auto", cmap="magma", extent=[0, len(logmel) / 100, 0, logmel.shape[1]])
    ax.set_xlim(0, xmax)
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    if cursor_s is not None:
        ax.axvline(cursor_s, color="cyan", lw=1.2)


def draw_intensities(ax, pred, true=None) -> None:
    """Bars of the six predicted intensities next to the true ones (hatched, when known)."""
    x = np.arange(len(EMOTIONS))
    p = np.full(len(EMOTIONS), np.nan) if pred is None else np.asarray(pd.Series(pred)[list(EMOTIONS)], float)
    ax.bar(x - 0.2, p, 0.4, label="predicted", color="tab:purple")
    if true is not None:
        ax.bar(x + 0.2, np.asarray(pd.Series(true)[list(EMOTIONS)], float), 0.4, label="true", color="0.7",
               hatch="//", edgecolor="0.3")
    ax.set_xticks(x, list(EMOTIONS), fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("intensity")
    ax.legend(fontsize=7, loc="upper right")


def draw_weights(ax, timeline: WeightTimeline | None, cursor_s: float | None, xmax: float) -> None:
    """Windowed fusion weights per modality (solid), the clip-level weights the prediction used (dashed)."""
    if timeline is None:
        ax.text(0.5, 0.5, "no fusion weights", ha="center", va="center", transform=ax.transAxes, color="0.4")
    else:
        for i, m in enumerate(timeline.modalities):
            c = COLORS.get(m)
            w = np.where(timeline.available[:, i], timeline.weights[:, i], np.nan)
            ax.plot(timeline.times, w, "-", color=c, lw=1.5, label=f"{m} ({timeline.method})")
            ax.axhline(timeline.clip_weights[i], color=c, ls="--", lw=1, label=f"{m} clip-level {timeline.clip_weights[i]:.2f}")
        win = f", window {timeline.window_s:g} s" if timeline.window_s else ""
        ax.set_title(f"fusion weights over time ({timeline.method}{win}; diagnostic)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("weight")
    if cursor_s is not None:
        ax.axvline(cursor_s, color="red", lw=1.2)


def frame_figure(frame, face=None, title: str = ""):
    fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.8), gridspec_kw={"width_ratios": [1.4, 1]})
    draw_frame(axes[0], frame, title)
    draw_frame(axes[1], face, "face crop" if face is not None else "no face crop for this frame")
    fig.tight_layout()
    return fig


def audio_figure(wave, logmel, cursor_s: float | None, xmax: float):
    fig, axes = plt.subplots(2, 1, figsize=(6.5, 3.6), sharex=True)
    draw_wave(axes[0], wave, cursor_s, xmax)
    draw_logmel(axes[1], logmel, cursor_s, xmax)
    fig.tight_layout()
    return fig


def intensity_figure(pred, true=None, title: str = "predicted vs true"):
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    draw_intensities(ax, pred, true)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def weights_figure(timeline, cursor_s: float | None, xmax: float):
    fig, ax = plt.subplots(figsize=(6.5, 2.6))
    draw_weights(ax, timeline, cursor_s, xmax)
    fig.tight_layout()
    return fig


def describe(view: ClipView) -> str:
    """One-line description: corruption (SynthMimic), clip-level weights, transcript."""
    parts = [f"clip {view.clip_id} ({view.split})"]
    if view.corruption:
        c = view.corruption
        snr = float(c.get("audio_snr_db", np.nan))
        parts.append(f"face: {c.get('face_corruption')} (severity {float(c.get('face_severity', 0)):.2f}), "
                     f"audio: {c.get('audio_corruption')} (severity {float(c.get('audio_severity', 0)):.2f}"
                     + (f", SNR {snr:.1f} dB)" if np.isfinite(snr) else ")"))
    if view.timeline is not None:
        parts.append("clip-level weights " + ", ".join(f"{m} {w:.2f}" for m, w in
                                                       zip(view.timeline.modalities, view.timeline.clip_weights)))
    parts.append(f'transcript: "{view.transcript}"' if view.transcript is not None else "no transcript")
    return " | ".join(parts)


def snapshot_figure(view: ClipView, frame: int | None = None):
    """Every panel of the explorer for one clip and frame in one static figure."""
    k = view.n_frames // 2 if frame is None else int(frame)
    t, xmax = view.frame_time(k), view.duration
    fig = plt.figure(figsize=(12, 9.5))
    gs = fig.add_gridspec(4, 3, height_ratios=[1.5, 0.8, 1.0, 1.1])
    img = view.frames[k] if view.frames is not None else None
    draw_frame(fig.add_subplot(gs[0, 0]), img, f"frame {k} / {view.n_frames - 1} (t = {t:.2f} s)")
    face = view.face_at(k)
    draw_frame(fig.add_subplot(gs[0, 1]), face, "face crop" if face is not None else "no face crop")
    ax = fig.add_subplot(gs[0, 2])
    draw_intensities(ax, view.pred, view.true)
    ax.set_title("predicted vs true" if view.true is not None else "predicted (no labels)", fontsize=9)
    ax_w = fig.add_subplot(gs[1, :])
    draw_wave(ax_w, view.wave, t, xmax)
    draw_logmel(fig.add_subplot(gs[2, :], sharex=ax_w), view.logmel, t, xmax)
    draw_weights(fig.add_subplot(gs[3, :], sharex=ax_w), view.timeline, t, xmax)
    fig.suptitle("\n".join(describe(view).split(" | ", 2)), fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------- I/O
def _try(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except DataError:
        return None


def load_clip_view(root, split: str, cid: str, *, model=None, data=None, pred=None, labels=None,
                   corruptions=None, window_s: float = 1.0, fps: float = 25.0) -> ClipView:
    """Decode one clip's media and compute its fusion-weight timeline (``model`` and ``data``: its split's
    :class:`~emi_lib.train.data.Stage2Data`). ``fps`` is used only when the video cannot be read."""
    dr = DataRoot(root)
    got = _try(load_video_frames, dr.video_path(split, cid))
    frames, fps = (got[0], got[1] or fps) if got is not None else (None, fps)
    numbers = [face_number(p) for p in (_try(face_files, dr.face_dir(split, cid)) or [])]
    faces = _try(load_face_crops, dr.face_dir(split, cid)) if numbers else None
    wave = _try(load_audio, dr.audio_path(split, cid))
    transcript = _try(load_transcript, dr.transcript_path(split, cid))
    cor = corruptions.loc[cid].to_dict() if corruptions is not None and cid in corruptions.index else None
    view = ClipView(cid, split, frames, float(fps), numbers, faces, wave, compute_logmel(wave), transcript,
                    None if pred is None else pred.loc[cid], None if labels is None or cid not in labels.index
                    else labels.loc[cid], None, cor)
    if model is not None and data is not None:
        n_v, n_a = len(data.vision.get(cid, [])), len(data.audio.get(cid, []))
        nums = numbers if n_v == len(numbers) else list(range(n_v)) if frames is not None and n_v == len(frames) else None
        audio_s = len(wave) / SAMPLE_RATE if wave is not None else view.duration
        times = {"vision": step_times(n_v, view.n_frames / view.fps, nums, view.fps), "audio": step_times(n_a, audio_s)}
        grid = np.arange(view.n_frames) / view.fps
        view.timeline = fusion_timeline(model, data, cid, times, times=grid, window_s=window_s)
    return view


def suggest_clips(ids, corruptions: pd.DataFrame | None) -> dict:
    """Clips worth a look (SynthMimic): the most occluded, the noisiest (lowest SNR) and a clean one."""
    ids = list(ids)
    if corruptions is None:
        return {"first": ids[0]}
    c = corruptions.reindex(ids)
    out = {}
    occ = c[c["face_corruption"] == "occlusion"]
    if len(occ):
        out["occluded"] = occ["face_severity"].astype(float).idxmax()
    noisy = c[c["audio_corruption"] == "noise"]
    if len(noisy):
        out["noisy"] = noisy["audio_snr_db"].astype(float).idxmin()
    clean = c[(c["face_corruption"] == "none") & (c["audio_corruption"] == "none")]
    out["clean"] = clean.index[0] if len(clean) else ids[0]
    return out


# ------------------------------------------------------------------------------------------------ widgets
class ClipExplorer:
    """The widget app (:func:`build_explorer`). Callbacks are thin: they fetch the cached :class:`ClipView`
    and redraw with the pure functions above; a failure is shown in ``status`` (and kept in ``last_error``)."""

    def __init__(self, root, inputs, model, split: str = "test", *, labels=None, model_source: str = "",
                 window_s: float = 1.0, clip_id: str | None = None, cache_size: int = 8, dpi: int = 80):
        import ipywidgets as W

        from emi_lib.eval.corruption import load_corruptions
        from emi_lib.train.stage2 import predict

        self.root, self.split, self.model, self.window_s, self.dpi = Path(root), split, model, window_s, dpi
        self.data = inputs.sets[split]
        self.ids = list(self.data.ids)
        self.pred, self.clip_weights, _ = predict(model, self.data)
        self.labels = read_labels(root, split) if labels is None else labels
        synth = (self.root / "synthmimic" / "corruptions.csv").exists()
        self.corruptions = load_corruptions(self.root) if synth else None
        self.model_source, self.last_error = model_source, None
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        first = clip_id if clip_id in self.ids else self.ids[0]
        self.search = W.Text(placeholder="search clip id", description="search", layout=W.Layout(width="200px"))
        self.dropdown = W.Dropdown(options=self.ids, value=first, description="clip", layout=W.Layout(width="200px"))
        self.slider = W.IntSlider(value=0, min=0, max=1, description="frame", continuous_update=False,
                                  layout=W.Layout(width="420px"))
        self.play = W.Play(value=0, min=0, max=1, interval=150, description="play")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.status = W.HTML()
        self.info = W.HTML()
        self.frame_img, self.bars_img = W.Image(format="png"), W.Image(format="png")
        self.audio_img, self.weights_img = W.Image(format="png"), W.Image(format="png")
        self.widget = W.VBox([W.HBox([self.search, self.dropdown, self.play, self.slider]), self.status,
                              W.HBox([self.frame_img, self.bars_img]), W.HBox([self.audio_img, self.weights_img]),
                              self.info])
        self.widget.explorer = self
        self.search.observe(self._on_search, names="value")
        self.dropdown.observe(self._on_clip, names="value")
        self.slider.observe(self._on_frame, names="value")
        self._show_clip(first)

    def view(self, cid: str) -> ClipView:
        """The clip's :class:`ClipView`, decoded once (LRU cache of ``cache_size`` clips)."""
        if cid in self._cache:
            self._cache.move_to_end(cid)
            return self._cache[cid]
        v = load_clip_view(self.root, self.split, cid, model=self.model, data=self.data, pred=self.pred,
                           labels=self.labels, corruptions=self.corruptions, window_s=self.window_s)
        self._cache[cid] = v
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return v

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
            self.last_error = None
        except Exception as err:  # shown in the app rather than lost in a callback
            self.last_error = err
            self.status.value = f"<span style='color:#b00'>error: {html.escape(repr(err))}</span>"

    def _on_search(self, change) -> None:
        hits = match_ids(self.ids, change["new"])
        if not hits:
            self.status.value = f"no clip id contains {html.escape(change['new'])!r}"
            return
        self.dropdown.options = hits  # keeps the value if it is still listed
        if self.dropdown.value != hits[0] and (len(hits) == 1 or self.dropdown.value not in hits):
            self.dropdown.value = hits[0]
        self.status.value = f"{len(hits)} clip(s) match {html.escape(change['new'])!r}; showing {self.dropdown.value}"

    def _on_clip(self, change) -> None:
        if change["new"] is not None:
            self._guard(self._show_clip, change["new"])

    def _on_frame(self, change) -> None:
        self._guard(self._draw_cursor, change["new"])

    def _show_clip(self, cid: str) -> None:
        v = self.view(cid)
        last = max(v.n_frames - 1, 0)
        self.slider.unobserve(self._on_frame, names="value")
        self.play.max = self.slider.max = max(last, 1)
        self.slider.value = min(last // 2, self.slider.max)
        self.slider.observe(self._on_frame, names="value")
        title = ("predicted vs true" if v.true is not None else "predicted (no labels for this split)") + \
            f" · model: {self.model_source}"
        self.bars_img.value = fig_to_png(intensity_figure(v.pred, v.true, title), self.dpi)
        self.info.value = "<br>".join(html.escape(p) for p in describe(v).split(" | "))
        self.status.value = f"clip {cid}: {v.n_frames} frames at {v.fps:g} fps, {v.duration:.2f} s"
        self._draw_cursor(self.slider.value)

    def _draw_cursor(self, k: int) -> None:
        v = self.view(self.dropdown.value)
        k = min(int(k), v.n_frames - 1)
        t = v.frame_time(k)
        img = v.frames[k] if v.frames is not None else None
        self.frame_img.value = fig_to_png(frame_figure(img, v.face_at(k), f"frame {k} (t = {t:.2f} s)"), self.dpi)
        self.audio_img.value = fig_to_png(audio_figure(v.wave, v.logmel, t, v.duration), self.dpi)
        self.weights_img.value = fig_to_png(weights_figure(v.timeline, t, v.duration), self.dpi)


def build_explorer(root, inputs, model, split: str = "test", **kwargs):
    """The explorer's ipywidgets container (a ``VBox``; its :class:`ClipExplorer` is ``.explorer``).
    ``inputs``: :func:`~emi_lib.train.inputs.prepare_stage2_inputs`' result; ``kwargs``: :class:`ClipExplorer`'s."""
    return ClipExplorer(root, inputs, model, split, **kwargs).widget
