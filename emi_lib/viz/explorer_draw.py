"""The pure functions behind notebook 04's clip explorer (:mod:`emi_lib.viz.explorer`): a clip's arrays (or its
:class:`~emi_lib.viz.explorer.ClipView`) in, figures, PNG bytes, text and the frame worth showing out.

Every figure is a :class:`matplotlib.figure.Figure` created directly, with its own Agg canvas: nothing here
touches pyplot's global state (its current figure, its figure manager, the inline backend's list of figures
to show), so widget callbacks that draw from several threads cannot draw into each other's figures.
Figures have a fixed size and a constrained layout, so a panel's PNG has the same pixel size for every frame
(a picture that changes size while scrubbing makes the page jump).

The time cursor is the same everywhere (:data:`CURSOR`: one colour with a white outline, visible on the
white waveform axes and on the dark spectrogram), and the time axes start a little before 0 so that the
cursor of frame 0 is not hidden under the axis line.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emi_lib.constants import EMOTIONS, SAMPLE_RATE

COLORS = {"vision": "tab:blue", "audio": "tab:orange", "text": "tab:green"}
CURSOR = "#d62728"  # the time cursor, on every time axis
_CURSOR_STYLE = dict(color=CURSOR, lw=1.6, zorder=5, path_effects=[patheffects.withStroke(linewidth=3.5, foreground="white")])
_ENVELOPE_BINS = 1200  # waveform columns drawn (about two per pixel of the panel)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PANELS = ("frame", "bars", "audio", "weights")  # the explorer's pictures (:func:`render_panels`)


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (own Agg canvas, constrained layout)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fig_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of ``fig`` at its own size (``figsize * dpi`` pixels). The figure stays usable (nothing to close:
    it is not registered with pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG's header."""
    png = bytes(png)
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def time_limits(xmax: float) -> tuple[float, float]:
    """x limits of a time axis: a margin before 0 so that a cursor at 0 is drawn inside the axes."""
    xmax = max(float(xmax), 1e-3)
    return -0.015 * xmax, xmax * 1.005


def draw_cursor(ax, cursor_s: float | None):
    """The time cursor (a vertical line) at ``cursor_s``; returns the line, or None."""
    return None if cursor_s is None else ax.axvline(cursor_s, **_CURSOR_STYLE)


def _absent(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def draw_frame(ax, image, title: str = "", absent: str = "absent") -> None:
    ax.axis("off")
    if image is None:
        _absent(ax, absent)
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=9)


def frame_title(k: int, n_frames: int, t: float) -> str:
    return f"video frame {k} of {max(n_frames - 1, 0)} (t = {t:.2f} s)"


def face_title(face) -> str:
    return "face crop the model saw" if face is not None else "no face crop for this frame"


def draw_frame_pair(axes, frame, face, k: int, n_frames: int, t: float) -> None:
    """The video frame and the face crop of the same frame, labelled as what they are."""
    draw_frame(axes[0], frame, frame_title(k, n_frames, t), "no video")
    draw_frame(axes[1], face, face_title(face), "the model saw no face here")


def draw_wave(ax, wave, cursor_s: float | None, xmax: float):
    if wave is None:
        _absent(ax, "no audio")
    elif len(wave) > 4 * _ENVELOPE_BINS:  # min/max envelope: the same picture as every sample, far faster
        n = len(wave) // _ENVELOPE_BINS
        w = np.asarray(wave[: n * _ENVELOPE_BINS], np.float32).reshape(_ENVELOPE_BINS, n)
        t = (np.arange(_ENVELOPE_BINS) + 0.5) * n / SAMPLE_RATE
        ax.fill_between(t, w.min(1), w.max(1), color="k", lw=0.4)
    else:
        ax.plot(np.arange(len(wave)) / SAMPLE_RATE, wave, lw=0.4, color="k")
    ax.set_xlim(*time_limits(xmax))
    ax.set_ylabel("amplitude")
    return draw_cursor(ax, cursor_s)


def draw_logmel(ax, logmel, cursor_s: float | None, xmax: float):
    if logmel is not None:
        ax.imshow(logmel.T, origin="lower", aspect="auto", cmap="magma", extent=[0, len(logmel) / 100, 0, logmel.shape[1]])
    else:
        _absent(ax, "no spectrogram")
    ax.set_xlim(*time_limits(xmax))
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    return draw_cursor(ax, cursor_s)


def _values(s) -> np.ndarray:
    return np.full(len(EMOTIONS), np.nan) if s is None else np.asarray(pd.Series(s)[list(EMOTIONS)], float)


def draw_intensities(ax, pred, true=None) -> None:
    """Bars of the six predicted intensities next to the true ones (hatched, when known). The legend sits outside
    the axes (it never hides a bar) and the y range holds every bar."""
    x = np.arange(len(EMOTIONS))
    p = _values(pred)
    ax.bar(x - 0.2, p, 0.4, label="predicted", color="tab:purple")
    vals = [p]
    if true is not None:
        t = _values(true)
        vals.append(t)
        ax.bar(x + 0.2, t, 0.4, label="true", color="0.7", hatch="//", edgecolor="0.3")
    v = np.concatenate(vals)
    v = v[np.isfinite(v)]
    lo = min(0.0, float(v.min()) * 1.1) if len(v) else 0.0
    hi = max(1.0, float(v.max()) * 1.1) if len(v) else 1.0
    ax.set_ylim(lo, hi)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_xticks(x, list(EMOTIONS), fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("intensity")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def draw_weights(ax, timeline, cursor_s: float | None, xmax: float):
    """Windowed fusion weights per modality (solid), the clip-level weights the prediction used (dashed)."""
    if timeline is None:
        _absent(ax, "no fusion weights")
    else:
        for i, m in enumerate(timeline.modalities):
            c = COLORS.get(m)
            w = np.where(timeline.available[:, i], timeline.weights[:, i], np.nan)
            ax.plot(timeline.times, w, "-", color=c, lw=1.5, label=f"{m} ({timeline.method})")
            ax.axhline(timeline.clip_weights[i], color=c, ls="--", lw=1, label=f"{m} clip-level {timeline.clip_weights[i]:.2f}")
        win = f", window {timeline.window_s:g} s" if timeline.window_s else ""
        ax.set_title(f"fusion weights over time ({timeline.method}{win}; diagnostic)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlim(*time_limits(xmax))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("weight")
    return draw_cursor(ax, cursor_s)


# ------------------------------------------------------------------------------------ one figure per panel
def frame_figure(frame, face=None, k: int = 0, n_frames: int = 1, t: float = 0.0) -> Figure:
    fig = new_figure(5.2, 2.8)
    draw_frame_pair(fig.subplots(1, 2, width_ratios=[1.4, 1]), frame, face, k, n_frames, t)
    return fig


def audio_figure(wave, logmel, cursor_s: float | None, xmax: float) -> Figure:
    fig = new_figure(6.5, 3.6)
    axes = fig.subplots(2, 1, sharex=True)
    draw_wave(axes[0], wave, cursor_s, xmax)
    draw_logmel(axes[1], logmel, cursor_s, xmax)
    return fig


def intensity_figure(pred, true=None, title: str = "predicted vs true") -> Figure:
    fig = new_figure(5.2, 2.8)
    ax = fig.subplots()
    draw_intensities(ax, pred, true)
    ax.set_title(title, fontsize=9)
    return fig


def weights_figure(timeline, cursor_s: float | None, xmax: float) -> Figure:
    fig = new_figure(6.5, 2.6)
    draw_weights(fig.subplots(), timeline, cursor_s, xmax)
    return fig


# ------------------------------------------------------------------------- a clip's analysis, text, snapshot
def estimate_occlusion(faces: np.ndarray, min_share: float = 0.0) -> np.ndarray:
    """Which face crops an occluder covers, estimated from the pixels: bool (F,).

    SynthMimic's corruption table says *that* a clip is occluded (and how much), not *when*; its occluder is one
    contiguous span of frames with a flat-coloured box that moves with the head, so in the (head-following) face
    crops it is a change of the mean picture. The span is the segment ``[s, e)`` whose mean and the mean of the
    rest fit the crops best (least squares). A segment inside the clip is the span (the rest is not contiguous);
    one touching an end is compared with the other side: the side shorter than ``min_share`` of the clip (the
    generator's smallest span share, :func:`~emi_lib.viz.explorer.occlusion_min_share`) is not the span, else the side whose changed
    pixels vary less within a frame is (a flat box against eyes, brows and mouth)."""
    f = np.asarray(faces, np.float32) / 255.0
    n, h, w = f.shape[:3]
    f = f[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, -1).mean(axis=(2, 4))  # 2x2 pooling
    if n < 3:
        return np.ones(n, bool)
    x = f.reshape(n, -1).astype(np.float64)
    cum = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, 0)])
    total, best, best_gain = cum[-1], (0, n), -np.inf
    for s in range(n):  # SSE = const - (|sum_in|^2 / n_in + |sum_out|^2 / n_out): maximise the bracket
        e = np.arange(s + 1, n + 1 if s else n)
        inside = cum[e] - cum[s]
        gain = (inside**2).sum(1) / (e - s) + ((total - inside) ** 2).sum(1) / (n - (e - s))
        j = int(np.argmax(gain))
        if gain[j] > best_gain:
            best_gain, best = gain[j], (s, int(e[j]))
    s, e = best
    inside = np.zeros(n, bool)
    inside[s:e] = True
    if 0 < s and e < n:
        return inside
    share = inside.mean()
    if (share < min_share) != (1 - share < min_share):
        return inside if share >= min_share else ~inside
    diff = np.abs(f[inside].mean(0) - f[~inside].mean(0)).sum(-1)
    changed = diff >= 0.5 * diff.max()
    spread = f[:, changed].std(1).sum(-1)
    return inside if spread[inside].mean() <= spread[~inside].mean() else ~inside


def focus_frame(view) -> tuple[int, str]:
    """The frame to show first (and in the snapshot), and why: the middle of the occluder's span on an occluded
    clip, else where the windowed vision weight is lowest, else the middle frame."""
    if view.occlusion is not None and view.occlusion.any():
        idx = np.flatnonzero(view.occlusion)
        return int(idx[len(idx) // 2]), f"inside the occlusion: frames {idx[0]}-{idx[-1]}, estimated from the face crops"
    tl = view.timeline
    if tl is not None and "vision" in tl.modalities and len(tl.times) == view.n_frames:
        v = tl.modalities.index("vision")
        ok = tl.available[:, v]
        if ok.any():
            return int(np.argmin(np.where(ok, tl.weights[:, v], np.inf))), "lowest windowed vision weight"
    return view.n_frames // 2, "middle frame"


def describe(view) -> str:
    """One-line description: corruption (SynthMimic), clip-level weights, transcript."""
    parts = [f"clip {view.clip_id} ({view.split})"]
    if view.corruption:
        c = view.corruption
        snr = float(c.get("audio_snr_db", np.nan))
        occ = ""
        if view.occlusion is not None and view.occlusion.any():
            idx = np.flatnonzero(view.occlusion)
            occ = f", frames {idx[0]}-{idx[-1]} (estimated)"
        parts.append(f"face: {c.get('face_corruption')} (severity {float(c.get('face_severity', 0)):.2f}{occ}), "
                     f"audio: {c.get('audio_corruption')} (severity {float(c.get('audio_severity', 0)):.2f}"
                     + (f", SNR {snr:.1f} dB)" if np.isfinite(snr) else ")"))
    if view.timeline is not None:
        parts.append("clip-level weights " + ", ".join(f"{m} {w:.2f}" for m, w in
                                                       zip(view.timeline.modalities, view.timeline.clip_weights)))
    parts.append(f'transcript: "{view.transcript}"' if view.transcript is not None else "no transcript")
    return " | ".join(parts)


def bars_title(view, model_source: str = "") -> str:
    title = "predicted vs true" if view.true is not None else "predicted (no labels for this split)"
    return title + (f" · model: {model_source}" if model_source else "")


def snapshot_figure(view, frame: int | None = None):
    """Every panel of the explorer for one clip and frame in one static figure (default frame: :func:`focus_frame`)."""
    k = focus_frame(view)[0] if frame is None else int(frame)
    t, xmax = view.frame_time(k), view.duration
    fig = new_figure(12, 9.5)
    gs = fig.add_gridspec(4, 3, height_ratios=[1.5, 0.8, 1.0, 1.1])
    draw_frame_pair([fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])], view.frame_at(k), view.face_at(k), k,
                    view.n_frames, t)
    ax = fig.add_subplot(gs[0, 2])
    draw_intensities(ax, view.pred, view.true)
    ax.set_title(bars_title(view), fontsize=9)
    ax_w = fig.add_subplot(gs[1, :])
    draw_wave(ax_w, view.wave, t, xmax)
    draw_logmel(fig.add_subplot(gs[2, :], sharex=ax_w), view.logmel, t, xmax)
    draw_weights(fig.add_subplot(gs[3, :], sharex=ax_w), view.timeline, t, xmax)
    fig.suptitle("\n".join(describe(view).split(" | ", 2)), fontsize=9)
    return fig


def toy_warning(profile: str | None, model_source: str, score: float | None = None) -> str | None:
    """The warning a toy model gets (profile ``smoke``, or a model trained here on the smoke budget), else None."""
    why = []
    if profile == "smoke":
        why.append("profile smoke (a tiny data set)")
    if model_source == "trained here":
        why.append("a model trained here on the smoke budget, not notebook 02's")
    if not why:
        return None
    pcc = f", mean PCC {score:.2f} on this split" if score is not None and math.isfinite(score) else ""
    return (f"Toy model: {' and '.join(why)}{pcc}. Its predictions and fusion weights only exercise the explorer; "
            "they say nothing about the method (run notebook 02 with profile demo or full).")


def render_panels(view, k: int, parts=PANELS, *, model_source: str = "", dpi: int = 80) -> dict:
    """PNG bytes of the explorer's panels for clip ``view`` at frame ``k`` (fresh figures: pure, no shared state)."""
    k = min(max(int(k), 0), view.n_frames - 1)
    t, xmax = view.frame_time(k), view.duration
    make = {"frame": lambda: frame_figure(view.frame_at(k), view.face_at(k), k, view.n_frames, t),
            "bars": lambda: intensity_figure(view.pred, view.true, bars_title(view, model_source)),
            "audio": lambda: audio_figure(view.wave, view.logmel, t, xmax),
            "weights": lambda: weights_figure(view.timeline, t, xmax)}
    return {p: fig_to_png(make[p](), dpi) for p in parts}
