r"""Signal priors of media quality, for the quality estimators of the stage-2 fusion.

Computed only from the media any model may read (face crops, the mp4 header, the audio): never
from ``synthmimic/corruptions.csv``. Every statistic is ours (the paper publishes no prior).

**Face** (:func:`face_quality`), per clip:

- ``face_share`` :math:`= \min(1, n_\text{crops} / n_\text{frames})`, with :math:`n_\text{frames}` the
  video's frame count from its mp4 header (PyAV; ``duration x fps`` if the header has none). Without
  a video, :math:`n_\text{frames}` falls back to the largest crop number + 1 (crops are numbered by
  frame, so interior gaps still count; missing frames at the end then go unseen).
- ``face_visible_share``: the share of crops (up to ``max_frames`` evenly spaced ones, resized to
  96 x 96) **not** flagged as occluded. A crop that cannot be decoded is not a usable face: it counts as
  not visible (never as a reason to drop the clip's other crops), and ``face_unreadable`` counts such crops
  among those read. Occluder heuristic (a flat occluder such as a hand, a card
  or a rectangle has long straight borders; a face's outline, hair line and features are curved
  or short): blur with a 3 x 3 box; gradient :math:`g = \lVert I(p + e) - I(p - e)\rVert_2` over
  R, G, B (0..255) across rows (horizontal edges) and across columns (vertical edges); thin the
  edges by non-maximum suppression across the edge and keep :math:`g > 20`; a crop is flagged when
  a band of two neighbouring rows (columns) holds a run of edge pixels longer than 45 % of the
  side. A thin curved edge leaves a two-pixel band quickly, a straight one does not. Set on the
  SynthMimic smoke root: clean crops score <= 0.33, every occluded clip has crops at 0.60-0.77. A
  straight background edge (a door frame) would be a false alarm: it is a cheap heuristic.
- ``face_quality`` :math:`= \text{face\_share} \times \text{face\_visible\_share}`: the share of
  frames with a usable face. 0 when the video exists but there is no crop (0 usable frames); NaN
  when there is neither video nor crop (the modality is missing).

**Audio** (:func:`audio_quality`), on non-overlapping 25 ms frames with energies :math:`e_k`
(mean square), over the *active* frames :math:`e_k > 10^{-10}` (digital silence, e.g. a dropout,
is not the noise floor):

- ``audio_snr_db`` :math:`= 10\log_{10}(\bar e_\text{top 10\%} / \bar e_\text{bottom 10\%})`, capped at
  80 dB: the loudest frames are taken as speech, the quietest as the noise floor. Additive noise
  raises the floor and lowers the estimate; a silent clip (room tone only) scores near 0 dB.
- ``audio_level_dbfs``: :math:`10\log_{10}\bar e_\text{top 10\%}`; ``audio_zero_share``: share of
  digitally silent frames (dropouts).
- ``audio_clip_share``: share of samples with :math:`|x| \ge 0.99 \max|x|` (hard clipping leaves
  plateaus at the maximum; lossy coding smears them, so on mp3 it is weak), and
  ``audio_kurtosis`` :math:`E[x^4]/E[x^2]^2` over the louder half of the active frames (clipping
  flattens peaks: low kurtosis; speech is peaky, > 3).
- ``audio_quality`` :math:`= \mathrm{clip}(\text{SNR}/40\,\text{dB}, 0, 1)`; NaN when there is no audio.

:func:`priors_to_tensors` turns the table into the per-modality prior vectors of the fusion
(:data:`PRIOR_COLUMNS`: one value per stream by default, from which ``EMIModelConfig.prior_dims`` takes its
default). NaN means *unknown* and stays NaN all the way to the fusion, which reads every value with a
known/unknown indicator (:class:`emi_lib.models.prior_input.PriorInput`): an unknown prior is never read as 0,
which here would mean the worst quality.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi_lib.constants import SAMPLE_RATE, clip_key
from emi_lib.features.store import subsample_steps

#: Columns of the prior vector of each stream (the default, one value each).
PRIOR_COLUMNS: dict[str, tuple[str, ...]] = {"vision": ("face_quality",), "audio": ("audio_quality",)}
FACE_SIZE = 96  # crops are resized to this side before the occluder test
EDGE_THRESHOLD = 20.0  # gradient norm (0..255) above which a thinned pixel is an edge pixel
STRAIGHT_EDGE_SHARE = 0.45  # a straight edge longer than this share of the side flags an occluder
FRAME_S = 0.025  # audio frame length (s)
SNR_REFERENCE_DB = 40.0  # SNR mapped to audio_quality = 1
SNR_CAP_DB = 80.0
SILENCE_ENERGY = 1e-10


def _longest_run(b: np.ndarray, axis: int) -> np.ndarray:
    """Longest run of True along ``axis`` (vectorised: position minus the last False before it)."""
    b = np.moveaxis(b, axis, -1)
    pos = np.arange(b.shape[-1])
    last_false = np.maximum.accumulate(np.where(b, -1, pos), axis=-1)
    return (pos - last_false).max(axis=-1)


def _thin(g: np.ndarray, axis: int) -> np.ndarray:
    """Non-maximum suppression across the edge: keep g where it is >= both neighbours along ``axis``."""
    pad = [(0, 0)] * g.ndim
    pad[axis] = (1, 1)
    p = np.pad(g, pad)
    n = g.shape[axis]
    before = np.take(p, np.arange(0, n), axis=axis)
    after = np.take(p, np.arange(2, n + 2), axis=axis)
    return (g >= before) & (g >= after) & (g > EDGE_THRESHOLD)


def straight_edge_score(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T,) longest straight axis-aligned edge, as a share of the crop side
    (module docstring: blur, gradient norm, thinning, runs within a 2-pixel band)."""
    from scipy.ndimage import uniform_filter

    x = uniform_filter(np.asarray(frames, dtype=np.float32), size=(1, 3, 3, 1), mode="nearest")
    gy = np.sqrt(((x[:, 2:, 1:-1] - x[:, :-2, 1:-1]) ** 2).sum(-1))  # horizontal edges (change along y)
    gx = np.sqrt(((x[:, 1:-1, 2:] - x[:, 1:-1, :-2]) ** 2).sum(-1))  # vertical edges (change along x)
    ey, ex = _thin(gy, axis=1), _thin(gx, axis=2)
    ey = ey[:, :-1] | ey[:, 1:]  # a straight edge may sit on either of two neighbouring rows
    ex = ex[:, :, :-1] | ex[:, :, 1:]
    horiz = _longest_run(ey, axis=2).max(axis=1)  # runs along a row
    vert = _longest_run(ex, axis=1).max(axis=1)  # runs along a column
    return np.maximum(horiz, vert) / float(frames.shape[1])


def _video_frames(video_path) -> float:
    from emi_lib.data import DataError, probe_video

    try:
        info = probe_video(video_path, decode_first=False)
    except DataError:
        return math.nan
    if info["frames"]:
        return float(info["frames"])
    if info["duration_s"] and math.isfinite(info["fps"]):
        return float(round(info["duration_s"] * info["fps"]))
    return math.nan


def face_quality(face_dir: str | os.PathLike, video_path: str | os.PathLike | None = None,
                 n_frames: int | None = None, max_frames: int = 64, problems: list | None = None) -> dict:
    """Face priors of one clip (module docstring). ``n_frames`` overrides the frame count. An unreadable
    crop counts as an unusable frame (``face_unreadable``); its file and problem are appended to ``problems``."""
    from emi_lib.data import DataError
    from emi_lib.data.media import face_files, face_number, load_face_crop

    try:
        files = face_files(face_dir)
    except DataError as err:
        if err.kind not in ("missing", "empty"):
            raise
        files = []
    total = float(n_frames) if n_frames is not None else math.nan
    if n_frames is None and video_path is not None and Path(video_path).exists():
        total = _video_frames(video_path)
    if not math.isfinite(total) and files:
        total = float(max(face_number(f) for f in files) + 1)
    out = {"face_crops": len(files), "video_frames": total, "face_unreadable": 0}
    if not files:
        share = 0.0 if math.isfinite(total) else math.nan
        return {**out, "face_share": share, "face_visible_share": math.nan, "face_quality": share}
    pick = subsample_steps(len(files), max_frames)
    crops = []
    for i in pick:
        try:
            crops.append(load_face_crop(files[i], FACE_SIZE))
        except DataError as err:
            if err.kind != "unreadable":
                raise
            out["face_unreadable"] += 1
            if problems is not None:
                problems.append(str(err))
    n_visible = int((straight_edge_score(np.stack(crops)) <= STRAIGHT_EDGE_SHARE).sum()) if crops else 0
    visible = n_visible / len(pick)  # an unreadable crop is not a visible face
    share = min(1.0, len(files) / total) if math.isfinite(total) and total > 0 else 1.0
    return {**out, "face_share": share, "face_visible_share": visible, "face_quality": share * visible}


def audio_quality(wave: np.ndarray, sr: int = SAMPLE_RATE) -> dict:
    """Audio priors of one waveform (module docstring)."""
    w = np.asarray(wave, dtype=np.float64).reshape(-1)
    n = int(round(FRAME_S * sr))
    out = {"audio_seconds": len(w) / sr, "audio_level_dbfs": math.nan, "audio_snr_db": math.nan,
           "audio_zero_share": math.nan, "audio_clip_share": math.nan, "audio_kurtosis": math.nan,
           "audio_quality": math.nan}
    if len(w) == 0:
        return out
    k = max(1, len(w) // n)
    frames = np.resize(w, (k, n)) if len(w) < n else w[: k * n].reshape(k, n)
    e = (frames**2).mean(1)
    active = np.sort(e[e > SILENCE_ENERGY])
    out["audio_zero_share"] = float((e <= SILENCE_ENERGY).mean())
    peak = float(np.abs(w).max())
    out["audio_clip_share"] = float((np.abs(w) >= 0.99 * peak).mean()) if peak > 1e-4 else 0.0
    if len(active) < 2:
        out["audio_quality"] = 0.0  # digital silence: nothing to hear
        return out
    m = max(1, int(math.ceil(0.1 * len(active))))
    top, bottom = active[-m:].mean(), active[:m].mean()
    snr = min(SNR_CAP_DB, 10 * math.log10(top / bottom))
    loud = frames[e >= np.median(active)].ravel()
    out.update(audio_level_dbfs=10 * math.log10(top), audio_snr_db=snr,
               audio_kurtosis=float((loud**4).mean() / max((loud**2).mean() ** 2, 1e-30)),
               audio_quality=float(np.clip(snr / SNR_REFERENCE_DB, 0.0, 1.0)))
    return out


def _clip_priors(dr, split: str, cid: str, max_face_frames: int) -> tuple[dict, list[str]]:
    """One clip's face and audio priors and the problems met reading its media (:func:`compute_priors`)."""
    from emi_lib.data import DataError, load_audio

    video = dr.video_path(split, cid)
    bad_crops: list[str] = []
    problems = []
    try:
        face = face_quality(dr.face_dir(split, cid), video if video.exists() else None,
                            max_frames=max_face_frames, problems=bad_crops)
    except DataError as err:
        problems.append(f"{cid} face: {err}")
        face = {}
    if bad_crops:
        problems.append(f"{cid} face: {len(bad_crops)} unreadable crop(s), counted as unusable frames "
                        f"(first: {bad_crops[0]})")
    try:
        audio = audio_quality(load_audio(dr.audio_path(split, cid)))
    except DataError as err:
        if err.kind not in ("missing", "empty"):
            problems.append(f"{cid} audio: {err}")
        audio = {}
    return {**face, **audio}, problems


def compute_priors(root: str | os.PathLike, split: str, ids: Sequence | None = None, progress: bool = True,
                   max_face_frames: int = 64, workers: int = 2) -> pd.DataFrame:
    """Face and audio priors of every clip of a split (or ``ids``), indexed by the 5-digit id.

    A missing modality gives NaN priors; an unreadable file too, with one warning naming the
    clips (NaN is an *unknown* prior: the fusion gets it as such, :class:`emi_lib.models.prior_input.PriorInput`,
    and the availability mask does the rest). ``workers`` threads read the clips (decoding and numpy release
    the GIL: 2 threads took half the time of one on 2 cores); the table does not depend on it."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from emi_lib.data import DataRoot

    dr = DataRoot(root)
    ids = dr.ids(split) if ids is None else [clip_key(i) for i in ids]
    rows, problems = {}, []
    with tqdm(total=len(ids), desc=f"priors {split}", disable=not progress, leave=False) as bar, \
            ThreadPoolExecutor(max(1, int(workers))) as pool:
        for cid, (row, issues) in zip(ids, pool.map(lambda c: _clip_priors(dr, split, c, max_face_frames), ids)):
            rows[cid] = row
            problems += issues
            bar.update()
    if problems:
        warnings.warn(f"priors {split}: {len(problems)} clip(s) with unreadable media (a clip's unreadable file "
                      f"leaves its priors NaN, unreadable crops count as unusable frames): {problems[:5]}",
                      stacklevel=2)
    cols = ["face_crops", "video_frames", "face_unreadable", "face_share", "face_visible_share", "face_quality", "audio_seconds",
            "audio_level_dbfs", "audio_snr_db", "audio_zero_share", "audio_clip_share", "audio_kurtosis",
            "audio_quality"]
    df = pd.DataFrame.from_dict(rows, orient="index").reindex(index=ids, columns=cols).astype(float)
    df.index.name = "Filename"
    return df


def priors_to_tensors(priors: pd.DataFrame, ids: Sequence,
                      columns: Mapping[str, Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
    """``{stream: float32 (N, P)}`` in the order of ``ids`` from the prior table; NaN (unknown) stays NaN
    (the fusion reads it as unknown, with an indicator: :class:`emi_lib.models.prior_input.PriorInput`). A clip
    absent from the table gets NaN; an absent column raises ``KeyError``; an infinite value raises
    ``ValueError`` naming the clips (only NaN means unknown)."""
    columns = PRIOR_COLUMNS if columns is None else columns
    ids = [clip_key(i) for i in ids]
    table = priors.copy()
    table.index = [clip_key(i) for i in table.index]
    out = {}
    for stream, cols in columns.items():
        cols = list(cols)
        lacking = [c for c in cols if c not in table.columns]
        if lacking:
            raise KeyError(f"prior columns {lacking} (for {stream}) are not in the table: {list(table.columns)}")
        values = table.reindex(ids)[cols].to_numpy(np.float64)
        inf = np.isinf(values).any(1)
        if inf.any():
            bad = [i for i, b in zip(ids, inf) if b]
            raise ValueError(f"prior columns {cols} (for {stream}) hold +-inf for {len(bad)} clip(s), e.g. "
                             f"{bad[:5]}: a prior is a finite number or NaN (unknown)")
        out[stream] = torch.tensor(values.astype(np.float32))
    return out
