"""Notebook 04's interactive clip explorer (ipywidgets): one clip at a time, its media, predictions and weights.

The video frame under a slider next to the face crop the model saw, the waveform and log-mel spectrogram
with a cursor at the frame's time, predicted against true intensities, the fusion weights over time
(:func:`emi_lib.viz.timeline.fusion_timeline`: a windowed *diagnostic*; the clip-level weight the prediction
used is drawn dashed), the transcript and, on SynthMimic, what the generator corrupted. Drawing is in
:mod:`emi_lib.viz.explorer_draw` (pure functions, figures outside pyplot).

**Rendering is safe whatever order widget callbacks arrive in** (a browser's slider, the player thread, a
clip change): every redraw runs under one re-entrant render lock and draws the state the widgets hold *when
it draws* (clip dropdown, frame slider), not the state a callback was called with; a draw that was overtaken
while it ran is dropped and the latest state drawn instead, so requests coalesce and the pictures always show
the widgets' clip and frame. Each picture is an ``ipywidgets.Image`` given its PNG's own width and height
(and ``object-fit: contain``), in boxes that do not stretch their children.

**Play** is a self-scheduling player (a toggle button and a thread): it draws frame k+1, then moves the
slider and the pictures to it together, and waits at most what is left of the interval, so it never runs
ahead of the drawing (a slow draw slows the playback; the slider never says a frame the picture does not
show). Pause keeps the frame shown.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import SAMPLE_RATE
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
from emi_lib.viz.explorer_draw import (  # noqa: F401  (snapshot_figure, describe: the notebook's entry points)
    PANELS,
    describe,
    estimate_occlusion,
    focus_frame,
    png_size,
    render_panels,
    snapshot_figure,
    toy_warning,
)
from emi_lib.viz.timeline import WeightTimeline, fusion_timeline, step_times


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
    occlusion: np.ndarray | None = None  # bool (n_frames,): frames the occluder covers (estimated), None if none

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

    def frame_at(self, k: int):
        return None if self.frames is None else self.frames[int(k)]

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


def occlusion_min_share(root) -> float:
    """The smallest share of frames a SynthMimic occluder covers (its manifest's ``occlusion_share``), else 0."""
    path = Path(root) / "synthmimic" / "manifest.json"
    try:
        return float(json.loads(path.read_text())["config"]["occlusion_share"][0])
    except (OSError, KeyError, TypeError, ValueError, IndexError):
        return 0.0


# --------------------------------------------------------------------------------------------------- I/O
def _try(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except DataError:
        return None


def load_clip_view(root, split: str, cid: str, *, model=None, data=None, pred=None, labels=None,
                   corruptions=None, window_s: float = 1.0, fps: float = 25.0, min_share: float = 0.0) -> ClipView:
    """Decode one clip's media and compute its fusion-weight timeline (``model`` and ``data``: its split's
    :class:`~emi_lib.train.data.Stage2Data`) and, on an occluded SynthMimic clip, its occluded frames
    (:func:`estimate_occlusion`). ``fps`` is used only when the video cannot be read."""
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
    if cor is not None and cor.get("face_corruption") == "occlusion" and faces is not None:
        view.occlusion = np.zeros(view.n_frames, bool)
        hit = np.asarray(numbers)[estimate_occlusion(faces, min_share)]
        view.occlusion[hit[hit < view.n_frames]] = True
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
def _note(kind: str, text: str) -> str:
    style = {"warn": "background:#fff3cd;border:1px solid #d39e00;color:#533f03",
             "error": "background:#f8d7da;border:1px solid #b02a37;color:#58151c"}[kind]
    return f"<div style='{style};padding:6px 10px;border-radius:4px'>{text}</div>"


class ClipExplorer:
    """The widget app (:func:`build_explorer`; module docstring for the rendering and the player). A failure in a
    callback is shown in ``status`` (and kept in ``last_error``)."""

    def __init__(self, root, inputs, model, split: str = "test", *, labels=None, model_source: str = "",
                 profile: str | None = None, window_s: float = 1.0, clip_id: str | None = None, cache_size: int = 8,
                 dpi: int = 80, interval_s: float | None = None):
        import ipywidgets as W

        from emi_lib.eval.corruption import load_corruptions
        from emi_lib.eval.metrics import challenge_score
        from emi_lib.train.stage2 import predict

        self.root, self.split, self.model, self.window_s, self.dpi = Path(root), split, model, window_s, dpi
        self.data = inputs.sets[split]
        self.ids = list(self.data.ids)
        self.pred, self.clip_weights, _ = predict(model, self.data)
        self.labels = read_labels(root, split) if labels is None else labels
        synth = (self.root / "synthmimic" / "corruptions.csv").exists()
        self.corruptions = load_corruptions(self.root) if synth else None
        self.min_share = occlusion_min_share(self.root)
        self.score = None
        if self.labels is not None and set(self.pred.index) <= set(self.labels.index):
            self.score = challenge_score(self.pred, self.labels.loc[self.pred.index])["mean"]
        self.warning = toy_warning(profile, model_source, self.score)
        self.model_source, self.last_error, self.interval_s, self.draw_s = model_source, None, interval_s, 0.0
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.RLock()  # every redraw and every change of the pictures
        self._adjusting = False  # the lock's holder is moving the slider itself: its observer must not redraw
        self._shown: tuple | None = None  # (clip, frame) the pictures show
        self._stop, self._player = threading.Event(), None
        self.suggested = suggest_clips(self.ids, self.corruptions)
        self.start_clip = clip_id if clip_id in self.ids else self.suggested.get("occluded", self.ids[0])

        self.banner = W.HTML(_note("warn", "&#9888; " + html.escape(self.warning)) if self.warning else "")
        self.search = W.Text(placeholder="search clip id", description="search", layout=W.Layout(width="200px"),
                             tooltip="type part of a clip id: the dropdown is filtered, a unique match is shown")
        self.dropdown = W.Dropdown(options=self.ids, value=self.start_clip, description="clip",
                                   layout=W.Layout(width="200px"), tooltip="the clip to show")
        self.slider = W.IntSlider(value=0, min=0, max=1, description="frame", continuous_update=False,
                                  layout=W.Layout(width="420px"), tooltip="the video frame to show")
        self.play_btn = W.ToggleButton(value=False, description="play", icon="play", layout=W.Layout(width="90px"),
                                       tooltip="play the clip from the slider's frame (each frame is drawn before "
                                               "the next one; pause keeps the frame)")
        self.prev_btn = W.Button(description="prev", icon="step-backward", layout=W.Layout(width="80px"),
                                 tooltip="previous frame")
        self.next_btn = W.Button(description="next", icon="step-forward", layout=W.Layout(width="80px"),
                                 tooltip="next frame")
        self.status, self.info = W.HTML(), W.HTML()
        img = dict(format="png", layout=W.Layout(object_fit="contain", height="auto", max_width="100%"))
        self.images = {p: W.Image(**img) for p in PANELS}
        self.frame_img, self.bars_img = self.images["frame"], self.images["bars"]
        self.audio_img, self.weights_img = self.images["audio"], self.images["weights"]
        row = dict(layout=W.Layout(align_items="flex-start", flex_flow="row wrap"))
        self.widget = W.VBox([self.banner, W.HBox([self.search, self.dropdown, self.prev_btn, self.play_btn,
                                                   self.next_btn, self.slider], **row),
                              self.status, W.HBox([self.frame_img, self.bars_img], **row),
                              W.HBox([self.audio_img, self.weights_img], **row), self.info],
                             layout=W.Layout(align_items="flex-start"))
        self.widget.explorer = self
        self.search.observe(self._on_search, names="value")
        self.dropdown.observe(self._on_clip, names="value")
        self.slider.observe(self._on_frame, names="value")
        self.play_btn.observe(self._on_play, names="value")
        self.prev_btn.on_click(lambda _: self._guard(self.step, -1))
        self.next_btn.on_click(lambda _: self._guard(self.step, 1))
        self._guard(self._show_clip, self.start_clip)

    # ----------------------------------------------------------------------------------------- state
    def view(self, cid: str) -> ClipView:
        """The clip's :class:`ClipView`, decoded once (LRU cache of ``cache_size`` clips)."""
        with self._lock:
            if cid in self._cache:
                self._cache.move_to_end(cid)
                return self._cache[cid]
            v = load_clip_view(self.root, self.split, cid, model=self.model, data=self.data, pred=self.pred,
                               labels=self.labels, corruptions=self.corruptions, window_s=self.window_s,
                               min_share=self.min_share)
            self._cache[cid] = v
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return v

    @property
    def shown(self) -> tuple | None:
        """(clip, frame) the pictures show."""
        return self._shown

    def wanted(self) -> tuple | None:
        """(clip, frame) the widgets ask for (the frame clamped to the clip)."""
        cid = self.dropdown.value
        if cid is None:
            return self._shown
        return cid, min(max(int(self.slider.value), 0), self.view(cid).n_frames - 1)

    def render(self, cid: str, k: int, parts=PANELS) -> dict:
        """PNG bytes of the panels of clip ``cid`` at frame ``k`` (:func:`render_panels`), timed in ``draw_s``."""
        with self._lock:
            t0 = time.perf_counter()
            out = render_panels(self.view(cid), k, parts, model_source=self.model_source, dpi=self.dpi)
            self.draw_s = time.perf_counter() - t0
            return out

    def _set_slider(self, value: int, maximum: int | None = None) -> None:
        with self._lock:
            before, self._adjusting = self._adjusting, True
            try:
                if maximum is not None:
                    self.slider.max = maximum
                self.slider.value = value
            finally:
                self._adjusting = before

    def _apply(self, state: tuple, pngs: dict) -> None:
        self._shown = state
        for p, png in pngs.items():  # each picture at its PNG's own pixel size
            w, h = png_size(png)
            im = self.images[p]
            im.width, im.height, im.value = str(w), str(h), png
        v = self.view(state[0])
        if "bars" in pngs:
            self.info.value = "<br>".join(html.escape(p) for p in describe(v).split(" | "))
        if self.last_error is None:
            k = state[1]
            self.status.value = (f"clip {state[0]}: {v.n_frames} frames at {v.fps:g} fps, {v.duration:.2f} s; "
                                 f"frame {k} (t = {v.frame_time(k):.2f} s)"
                                 + (f"; drawn in {self.draw_s:.2f} s" if self.play_btn.value else ""))

    def redraw(self) -> None:
        """Draw what the widgets ask for until the pictures show it (a draw overtaken by a newer request is dropped)."""
        with self._lock:
            if self._adjusting:
                return
            while (want := self.wanted()) != self._shown:
                parts = PANELS if self._shown is None or self._shown[0] != want[0] else ("frame", "audio", "weights")
                pngs = self.render(*want, parts)
                if self.wanted() == want:
                    self._apply(want, pngs)

    # ------------------------------------------------------------------------------------- callbacks
    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
            self.last_error = None
        except Exception as err:  # shown in the app rather than lost in a callback or a thread
            self.last_error = err
            self.status.value = _note("error", f"error: {html.escape(repr(err))}")

    def _on_search(self, change) -> None:
        hits = match_ids(self.ids, change["new"])
        if not hits:
            self.status.value = f"no clip id contains {html.escape(change['new'])!r}"
            return
        with self._lock:
            keep, before, self._adjusting = self.dropdown.value, self._adjusting, True
            try:  # new options reset the dropdown to their first clip: not a clip change (yet)
                self.dropdown.options = hits
                self.dropdown.value = keep if keep in hits and len(hits) > 1 else hits[0]
            finally:
                self._adjusting = before
            if self._shown is None or self.dropdown.value != self._shown[0]:
                self.play_btn.value = False
                self._guard(self._show_clip, self.dropdown.value)
        self.status.value = f"{len(hits)} clip(s) match {html.escape(change['new'])!r}; showing {self.dropdown.value}"

    def _on_clip(self, change) -> None:
        with self._lock:
            if change["new"] is None or self._adjusting:
                return
            self.play_btn.value = False
            self._guard(self._show_clip, change["new"])

    def _on_frame(self, change) -> None:
        self._guard(self.redraw)

    def _show_clip(self, cid: str) -> None:
        with self._lock:
            v = self.view(cid)
            k, why = focus_frame(v)
            self._set_slider(k, max(v.n_frames - 1, 1))
            self.redraw()
            if self.last_error is None and self._shown == (cid, k):
                self.status.value += f" ({html.escape(why)})"

    def step(self, delta: int) -> None:
        """Move the slider by ``delta`` frames (pausing the player)."""
        self.play_btn.value = False
        self.slider.value = min(max(self.slider.value + int(delta), 0), self.slider.max)

    # ---------------------------------------------------------------------------------------- player
    def _on_play(self, change) -> None:
        self.play_btn.description, self.play_btn.icon = ("pause", "pause") if change["new"] else ("play", "play")
        if not change["new"]:
            self._stop.set()
            return
        self._stop = stop = threading.Event()
        self._player = threading.Thread(target=self._play, args=(stop,), name="explorer-player", daemon=True)
        self._player.start()

    def wait_player(self, timeout: float | None = None) -> bool:
        """Wait for the player thread to end; True if it has."""
        if self._player is not None:
            self._player.join(timeout)
        return self._player is None or not self._player.is_alive()

    def _play(self, stop: threading.Event) -> None:
        first = True
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                with self._lock:
                    self.redraw()  # the pictures show the widgets' clip and frame
                    cid, k = self._shown
                    v = self.view(cid)
                    if k >= v.n_frames - 1:
                        if not first:
                            break  # the end: the last frame stays
                        k = -1  # started on the last frame: from the beginning
                    first = False
                    pngs = self.render(cid, k + 1, ("frame", "audio", "weights"))
                    if stop.is_set():
                        break  # paused while drawing: the frame shown stays
                    if self.wanted() != self._shown:
                        continue  # moved meanwhile (slider, clip): go on from there
                    self._set_slider(k + 1)
                    self._apply((cid, k + 1), pngs)
                interval = self.interval_s if self.interval_s is not None else 1.0 / v.fps
                stop.wait(max(interval - (time.perf_counter() - t0), 0.01))
        except Exception as err:
            self.last_error = err
            self.status.value = _note("error", f"error while playing: {html.escape(repr(err))}")
        finally:
            if self._stop is stop:
                self.play_btn.value = False


def build_explorer(root, inputs, model, split: str = "test", **kwargs):
    """The explorer's ipywidgets container (a ``VBox``; its :class:`ClipExplorer` is ``.explorer``).
    ``inputs``: :func:`~emi_lib.train.inputs.prepare_stage2_inputs`' result; ``kwargs``: :class:`ClipExplorer`'s."""
    return ClipExplorer(root, inputs, model, split, **kwargs).widget
