"""Per-clip media readers: audio (soundfile), video frames (PyAV), face crops (Pillow), transcripts.

Every reader raises :class:`~emi_lib.data.errors.DataError` naming the file and the problem,
with a ``kind`` a caller can branch on:

- ``"missing"``: the file or folder does not exist;
- ``"empty"``: it exists but holds nothing (zero bytes, zero samples, zero frames, no crops).
  :meth:`DataRoot.load_clip <emi_lib.data.layout.DataRoot.load_clip>` treats ``missing`` and
  ``empty`` as an *absent* modality (a model must still predict for the clip);
- ``"unreadable"``: the decoder refused it (corrupt or not the format its name says);
- ``"nonfinite"``, ``"shape"``, ``"invalid"``, ``"encoding"``: content that decodes but is unusable.

Nothing is ever silently replaced: audio at another rate is resampled (never zero-filled),
stereo is downmixed by the channel mean, and a bad crop is an error, not a black frame
(:func:`read_face_crops` keeps a clip's readable crops and lists the unreadable ones, for callers
that mask that step and report it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emi_lib.constants import SAMPLE_RATE
from emi_lib.data.errors import DataError

#: File extensions taken as face crops inside a face folder (case-insensitive).
FACE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")

_TRAILING_INT = re.compile(r"(\d+)$")


def _require_file(path: str | os.PathLike) -> Path:
    """Missing and zero-length files are the two commonest faults of an extracted data set
    (a failed ffmpeg run leaves either nothing or an empty file): name them precisely."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file does not exist", kind="missing")
    if not p.is_file():
        raise DataError(p, "is not a regular file", kind="invalid")
    if p.stat().st_size == 0:
        raise DataError(p, "zero-length file (0 bytes)", kind="empty")
    return p


def _as_hw(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` is an int (square) or ``(height, width)``."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


# --------------------------------------------------------------------------------------- audio
def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 waveform ``(N,)`` at ``target_sr`` Hz from an mp3/wav/flac file (soundfile): the one
    audio reader of the workbench.

    - several channels are downmixed by their mean ``x[n] = (1/C) sum_c x_c[n]``;
    - a file at another rate is resampled with ``torchaudio.functional.resample`` (windowed sinc),
      so the length scales by ``target_sr / sr``. Never zero-filled, and never truncated unless asked:
      ``max_seconds`` reads only the file's first ``max_seconds`` seconds (a caller's cap);
    - missing, zero-length, undecodable, zero-sample or NaN/inf audio raises :class:`DataError`:
      a model fed an empty or garbage waveform would learn from noise without anyone noticing. Only the
      decoder's own errors are turned into kind ``unreadable``; any other exception (a bug) propagates.
    """
    import soundfile as sf

    p = _require_file(path)
    try:
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            if f.seekable():  # as soundfile.read does: an mp3 decodes (a little) differently without it
                f.seek(0)
            data = f.read(frames=-1 if max_seconds is None else int(max_seconds * sr), dtype="float32",
                          always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as err:  # LibsndfileError is both of the first two
        raise DataError(p, f"unreadable audio ({type(err).__name__}: {err})", kind="unreadable") from err
    if data.shape[0] == 0:
        raise DataError(p, "audio has zero samples", kind="empty")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise DataError(p, f"audio has {int((~np.isfinite(wave)).sum())} NaN/inf samples", kind="nonfinite")
    if int(sr) != int(target_sr):
        import torch
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), int(sr), int(target_sr)).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


# --------------------------------------------------------------------------------------- video
def _stream_fps(stream) -> float:
    """Frame rate from the container: average rate, else guessed rate, else base rate, else NaN."""
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            return float(rate)
    return float("nan")


def load_video_frames(
    path: str | os.PathLike,
    max_frames: int | None = None,
    stride: int = 1,
    size: int | tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """Decoded RGB frames ``uint8 (T, H, W, 3)`` and the container's frame rate (PyAV).

    Keeps every ``stride``-th frame (0, stride, 2*stride, ...) and stops after ``max_frames``
    kept frames, so a long clip is never decoded further than needed. ``size`` (int or
    ``(H, W)``) rescales each frame in FFmpeg's swscale. The fps is that of the file; with a
    stride the effective rate of the returned frames is ``fps / stride``.
    Missing, zero-length, undecodable, video-less or zero-frame files raise :class:`DataError`.
    """
    import av

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    p = _require_file(path)
    hw = _as_hw(size)
    frames: list[np.ndarray] = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(p, "container has no video stream", kind="unreadable")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = _stream_fps(stream)
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                if hw is None:
                    arr = frame.to_ndarray(format="rgb24")
                else:
                    arr = frame.to_ndarray(format="rgb24", height=hw[0], width=hw[1])
                frames.append(arr)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except DataError:
        raise
    except Exception as err:  # av.error.FFmpegError and friends
        raise DataError(p, f"unreadable video ({type(err).__name__}: {err})", kind="unreadable") from err
    if not frames:
        raise DataError(p, "video has zero decodable frames", kind="empty")
    return np.stack(frames).astype(np.uint8, copy=False), fps


def probe_video(path: str | os.PathLike, decode_first: bool = True) -> dict:
    """Open the container and read stream info without decoding the clip (for the checker).

    Returns ``{"width", "height", "fps", "frames", "duration_s", "codec"}`` (``frames`` and
    ``duration_s`` as the container states them, possibly 0/None). With ``decode_first`` the
    first frame is decoded too, which catches a valid header over a garbage payload.
    """
    import av

    p = _require_file(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(p, "container has no video stream", kind="unreadable")
            stream = container.streams.video[0]
            info = {
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "fps": _stream_fps(stream),
                "frames": int(stream.frames or 0),
                "duration_s": float(container.duration / 1e6) if container.duration else None,
                "codec": stream.codec_context.name,
            }
            if decode_first:
                got = next(iter(container.decode(stream)), None)
                if got is None:
                    raise DataError(p, "video has zero decodable frames", kind="empty")
    except DataError:
        raise
    except Exception as err:
        raise DataError(p, f"unreadable video ({type(err).__name__}: {err})", kind="unreadable") from err
    return info


# --------------------------------------------------------------------------------------- faces
def face_number(path: str | os.PathLike) -> int:
    """The video frame number of a face crop: the trailing integer of its file stem (``12.jpg`` and
    ``frame_12.png`` -> 12); a stem without one raises :class:`DataError` kind ``invalid``."""
    m = _TRAILING_INT.search(os.path.splitext(os.path.basename(path))[0])
    if m is None:
        raise DataError(path, "face crop name has no frame number", kind="invalid")
    return int(m.group(1))


def face_files(face_dir: str | os.PathLike) -> list[Path]:
    """The crops of a face folder in *numeric* order (``2.jpg`` before ``10.jpg``).

    The frame number is the trailing integer of the file stem; a crop file without one is an
    error, because its place in the sequence would be a guess. Other files (e.g. ``.DS_Store``)
    are ignored. Missing folder -> kind ``missing``; no crops -> kind ``empty``.
    """
    d = Path(face_dir)
    if not d.exists():
        raise DataError(d, "face folder does not exist", kind="missing")
    if not d.is_dir():
        raise DataError(d, "is not a folder of face crops", kind="invalid")
    with os.scandir(d) as it:
        names = [e.name for e in it]
    keyed = sorted((face_number(d / name), name) for name in names
                   if os.path.splitext(name)[1].lower() in FACE_EXTENSIONS)
    if not keyed:
        raise DataError(d, "face folder holds no crops", kind="empty")
    return [d / name for _, name in keyed]


def count_face_crops(face_dir: str | os.PathLike) -> int:
    """Number of crops in a face folder (:func:`face_files`); 0 for a missing or empty folder."""
    try:
        return len(face_files(face_dir))
    except DataError as err:
        if err.kind in ("missing", "empty"):
            return 0
        raise


def load_face_crop(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """One crop as ``uint8 (H, W, 3)`` RGB, fully decoded (a truncated jpg raises, naming the file)."""
    from PIL import Image

    f = Path(path)
    if not f.exists():
        raise DataError(f, "face crop does not exist", kind="missing")
    if f.stat().st_size == 0:
        # "unreadable", not "empty": one bad crop in a sequence is corruption, not an absent face
        raise DataError(f, "zero-length face crop (0 bytes)", kind="unreadable")
    try:
        with Image.open(f) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as err:  # UnidentifiedImageError, OSError (truncated), SyntaxError
        raise DataError(f, f"unreadable face crop ({type(err).__name__}: {err})", kind="unreadable") from err
    hw = _as_hw(size)
    if hw is not None and rgb.size != (hw[1], hw[0]):
        rgb = rgb.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _selected_face_files(face_dir, stride: int, max_frames: int | None) -> list:
    """Every ``stride``-th crop of :func:`face_files`, at most ``max_frames`` of them (both crop readers)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    files = face_files(face_dir)[::stride]
    return files if max_frames is None else files[:max_frames]


def load_face_crops(
    face_dir: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    stride: int = 1,
) -> np.ndarray:
    """Face crops of one clip as ``uint8 (T, H, W, 3)`` RGB, in numeric frame order.

    ``size`` (int or ``(H, W)``) resizes every crop (bilinear). Without it all crops must share
    one size, else :class:`DataError` kind ``"shape"`` (crop sizes differ between detectors and
    a silent resize would distort faces without anyone choosing it). Every crop is fully decoded,
    so a truncated or corrupt jpg raises :class:`DataError` naming that file (never a black frame).
    """
    files = _selected_face_files(face_dir, stride, max_frames)
    out: list[np.ndarray] = []
    for f in files:
        arr = load_face_crop(f, size)
        if out and arr.shape != out[0].shape:
            raise DataError(
                f,
                f"face crop is {arr.shape[1]}x{arr.shape[0]} but {files[0].name} is "
                f"{out[0].shape[1]}x{out[0].shape[0]}; pass size= to resize",
                kind="shape",
            )
        out.append(arr)
    return np.stack(out)


@dataclass
class FaceCrops:
    """The crops of one clip read by :func:`read_face_crops`: the readable ones and where the others were."""

    frames: np.ndarray  # uint8 (K, H, W, 3): the readable crops, in frame order
    valid: np.ndarray  # bool (T,): which of the T crops kept (after stride / max_frames) were readable
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, problem) of each unreadable crop

    @property
    def n_unreadable(self) -> int:
        return int((~self.valid).sum())


def read_face_crops(
    face_dir: str | os.PathLike,
    size: int | tuple[int, int] | None = None,
    max_frames: int | None = None,
    stride: int = 1,
) -> FaceCrops:
    """Like :func:`load_face_crops`, but an unreadable crop (kind ``"unreadable"``: corrupt, truncated,
    zero bytes) costs that crop only: it is left out of ``frames``, False in ``valid`` and listed in
    ``errors`` (file and problem), so a caller can keep the clip with that step masked and report it.

    Everything else is as strict as :func:`load_face_crops`: a missing or empty folder, crops of
    different sizes without ``size``, and a clip whose crops are **all** unreadable raise
    :class:`DataError` (the last one kind ``"unreadable"``, naming the folder and the first bad crop).
    """
    files = _selected_face_files(face_dir, stride, max_frames)
    out: list[np.ndarray] = []
    valid = np.zeros(len(files), dtype=bool)
    errors: list[tuple[str, str]] = []
    for i, f in enumerate(files):
        try:
            arr = load_face_crop(f, size)
        except DataError as err:
            if err.kind != "unreadable":
                raise
            errors.append((str(f), err.problem))
            continue
        if out and arr.shape != out[0].shape:
            first = files[int(np.flatnonzero(valid)[0])]
            raise DataError(
                f,
                f"face crop is {arr.shape[1]}x{arr.shape[0]} but {first.name} is "
                f"{out[0].shape[1]}x{out[0].shape[0]}; pass size= to resize",
                kind="shape",
            )
        out.append(arr)
        valid[i] = True
    if not out:
        raise DataError(face_dir, f"all {len(files)} face crop(s) are unreadable (first: {errors[0][0]}: "
                                  f"{errors[0][1]})", kind="unreadable")
    return FaceCrops(np.stack(out), valid, errors)


# ---------------------------------------------------------------------------------- transcripts
def load_transcript(path: str | os.PathLike) -> str:
    """Transcript text (UTF-8, BOM tolerated), stripped of surrounding whitespace.

    A missing file raises :class:`DataError` kind ``"missing"``; an *empty* file is valid and
    gives ``""`` (a silent clip has an empty transcript). Bytes that are not UTF-8 raise kind
    ``"encoding"`` rather than being replaced, since a mis-encoded corpus must be fixed at source.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "transcript file does not exist", kind="missing")
    try:
        return p.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError as err:
        raise DataError(p, f"transcript is not UTF-8 ({err})", kind="encoding") from err
    except OSError as err:
        raise DataError(p, f"unreadable transcript ({err})", kind="unreadable") from err
