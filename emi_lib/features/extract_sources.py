"""Input sources of :mod:`emi_lib.features.extract`: per modality, load one clip's input (raising
:class:`~emi_lib.data.DataError` for a missing or bad file) and encode a batch of loaded clips;
plus the loader that reads clips ahead in threads. See :mod:`emi_lib.features.extract` for the
behaviour (batching, subsampling, the ``official`` backbone)."""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from emi_lib.constants import EMOTIONS
from emi_lib.data import (
    DataError,
    load_audio,
    load_features,
    load_transcript,
    load_video_frames,
    probe_video,
    read_face_crops,
)
from emi_lib.data.media import face_files

#: Backbone name of the release's pre-extracted features, and their folder per modality.
OFFICIAL: str = "official"
OFFICIAL_FOLDERS: dict[str, str] = {"vision": "vit", "audio": "wav2vec2"}


def clip_stride(n: int, frame_stride: int = 1, max_frames: int | None = None) -> int:
    """Stride that keeps at most ``max_frames`` of ``n`` frames over the whole clip:
    ``max(frame_stride, ceil(n / max_frames))``."""
    if max_frames is None or n <= 0:
        return frame_stride
    return max(frame_stride, math.ceil(n / max_frames))


class Source:
    """Loads one clip's input (may raise DataError) and encodes a batch of loaded clips.
    The base class passes arrays through (used when nothing is left to extract)."""

    dim: int | None = None
    frame_rate: float | None = None
    time_axis = ""
    max_batch = math.inf

    def load(self, cid: str):
        raise NotImplementedError

    def size(self, payload) -> int:
        return 1

    def encode(self, payloads: list) -> list[np.ndarray]:
        return [np.asarray(p, dtype=np.float32) for p in payloads]


@dataclass
class Frames:
    """One clip's decoded frames for the vision encoder: ``frames`` uint8 (K, H, W, 3), and for face crops
    ``valid`` (T,) bool, which of the clip's T kept crops were readable (None: all of them, K = T)."""

    frames: np.ndarray
    valid: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


class VisionSource(Source):
    """Face crops (``read_face_crops``: an unreadable crop is recorded in ``unreadable`` {id: ["file:
    problem"]} and becomes a whole-NaN row, a masked step, after encoding) or video frames."""

    def __init__(self, dr, split, enc, source, frame_stride, max_frames, face_size, max_batch_frames, strides,
                 unreadable: dict | None = None):
        self.dr, self.split, self.enc, self.source = dr, split, enc, source
        self.frame_stride, self.max_frames, self.face_size = frame_stride, max_frames, face_size
        self.max_batch, self.strides = max_batch_frames, strides
        self.unreadable = {} if unreadable is None else unreadable
        self.dim = int(enc.dim)
        self.time_axis = f"one row per {'face crop' if source == 'faces' else 'video frame'} kept"

    def load(self, cid) -> Frames:
        valid = None
        if self.source == "faces":
            d = self.dr.face_dir(self.split, cid)
            s = clip_stride(len(face_files(d)), self.frame_stride, self.max_frames)
            got = read_face_crops(d, size=self.face_size, max_frames=self.max_frames, stride=s)
            frames = got.frames
            if got.errors:
                valid = got.valid
                self.unreadable[cid] = [f"{f}: {problem}" for f, problem in got.errors]
        else:
            p = self.dr.video_path(self.split, cid)
            n = probe_video(p, decode_first=False)["frames"] if self.max_frames is not None else 0
            s = clip_stride(n, self.frame_stride, self.max_frames)
            frames, _ = load_video_frames(p, max_frames=self.max_frames, stride=s, size=self.face_size)
        if s != self.frame_stride:
            self.strides[cid] = s
        return Frames(frames, valid)

    def size(self, payload):
        return len(payload)

    def encode(self, payloads):
        out: list = [None] * len(payloads)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(payloads):  # one encoder call per crop size
            groups.setdefault(p.frames.shape[1:], []).append(i)
        for idx in groups.values():
            lengths = [len(payloads[i]) for i in idx]
            feats = self.enc.encode_frames(np.concatenate([payloads[i].frames for i in idx]))
            if len(feats) != sum(lengths):
                raise RuntimeError(f"{self.enc.name}: {len(feats)} outputs for {sum(lengths)} frames")
            for i, part in zip(idx, np.split(feats, np.cumsum(lengths)[:-1])):
                out[i] = _with_masked_steps(part, payloads[i].valid)
        return out


def _with_masked_steps(feats: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """(K, D) features of the readable frames -> (T, D) with a whole-NaN row (a masked step) where a frame
    was unreadable (``valid`` False); unchanged when every frame was read."""
    if valid is None:
        return feats
    feats = np.asarray(feats, dtype=np.float32)
    out = np.full((len(valid), feats.shape[1]), np.nan, dtype=np.float32)
    out[valid] = feats
    return out


class AudioSource(Source):
    time_axis = "one row per encoder step (frame_rate per second)"

    def __init__(self, dr, split, enc):
        self.dr, self.split, self.enc = dr, split, enc
        self.dim, self.frame_rate = int(enc.dim), float(enc.frame_rate)

    def load(self, cid):
        return load_audio(self.dr.audio_path(self.split, cid))

    def encode(self, payloads):
        return [self.enc.encode_audio(w) for w in payloads]


class TextSource(Source):
    time_axis = "one row per clip"

    def __init__(self, dr, split, enc, text_source):
        from emi_lib.features.text import clip_text

        self.dr, self.split, self.enc, self.text_source, self._clip_text = dr, split, enc, text_source, clip_text
        self.dim = int(enc.dim)

    def load(self, cid):
        if self.text_source == "label_prompt":
            labels = self.dr.split(self.split).loc[cid, list(EMOTIONS)].to_numpy(dtype=float)
            return self._clip_text("label_prompt", None, labels)
        return self._clip_text("transcript", load_transcript(self.dr.transcript_path(self.split, cid)))

    def encode(self, payloads):
        feats = self.enc.encode_texts(list(payloads))
        return [feats[i : i + 1] for i in range(len(payloads))]


class OfficialSource(Source):
    def __init__(self, dr, split, modality, frame_stride, max_frames, strides):
        self.dr, self.split, self.kind = dr, split, OFFICIAL_FOLDERS[modality]
        self.vision = modality == "vision"
        self.frame_stride, self.max_frames, self.strides = frame_stride, max_frames, strides
        self.time_axis = "as the release's files (one row per face frame)" if self.vision else \
            "as the release's files (wav2vec2 steps, usually 50 per second)"
        folder = dr.clip_dir(split) / self.kind
        if not folder.is_dir():
            raise DataError(folder, f"backbone 'official' reads the release's pre-extracted {self.kind}/ features, "
                                    f"but this root has no {self.kind}/ folder for split {split}; extract with a "
                                    f"named backbone instead (e.g. openclip-tiny, logmel)", kind="missing")

    def load(self, cid):
        arr = load_features(self.dr.feature_path(self.split, cid, self.kind))
        if self.vision:
            s = clip_stride(len(arr), self.frame_stride, self.max_frames)
            if s != self.frame_stride:
                self.strides[cid] = s
            arr = arr[::s][: self.max_frames]
        return arr


def prefetch(load, ids: list[str], workers: int):
    """Yield ``(id, payload or DataError)``, loading up to ``workers * 4`` clips ahead in threads."""

    def attempt(cid):
        try:
            return load(cid)
        except DataError as err:
            return err

    if workers <= 0:
        for cid in ids:
            yield cid, attempt(cid)
        return
    ex = ThreadPoolExecutor(workers, thread_name_prefix="emi-extract-load")
    try:
        it, queue = iter(ids), deque()
        for cid in it:
            queue.append((cid, ex.submit(attempt, cid)))
            if len(queue) >= 4 * workers:
                break
        while queue:
            cid, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, ex.submit(attempt, nxt)))
            yield cid, fut.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
