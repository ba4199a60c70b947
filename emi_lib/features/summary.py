r"""Hand-made per-clip summary features of each modality, read from the written files.

They feed the ridge check (:mod:`emi_lib.eval.probe`), so they are deliberately plain:
no learned model, no temporal modelling, no generator internals. They read the layout with the
workbench's own readers (:mod:`emi_lib.data.media`: :func:`~emi_lib.data.media.face_files` for
``face_images/``, :func:`~emi_lib.data.media.load_audio` for ``audio/``), so they work on a SynthMimic root
and on a real Hume-Vidmimic2 root alike.

* face: every crop -> grayscale 12x12; over time: per-pixel mean, std and max (3 x 144); three
  horizontal bands (brows/eyes, nose, mouth) of a 48x48 version: mean level, temporal std and
  mean absolute frame difference; the share of video frames that have a crop.
* voice: log-mel of the ``logmel`` backbone (:class:`~emi_lib.features.backbones.LogMel`: Kaldi fbank,
  40 bins, 25/10 ms, input in [-1, 1]): per-bin mean, std, 10th and 90th percentile and mean |delta|; frame RMS in dB (mean, std, percentiles, voiced share); zero-crossing rate; spectral
  flatness; an autocorrelation pitch proxy (log f0 percentiles, spread, mean rise and fall).
* text: TF-IDF of uni- and bigrams fitted on the train transcripts only, plus word count.

A missing modality (no crops, no mp3, empty transcript) gives zeros and an indicator column
``<modality>_missing`` = 1; nothing raises for a missing file.

A file that exists but cannot be read is never passed over in silence: the column ``<modality>_unreadable``
counts a clip's unreadable files (a corrupt face crop, an mp4 whose header does not decode, an mp3 that does
not decode or holds NaN samples, a transcript that is not UTF-8), and :func:`summary_features` warns naming
them. A face clip keeps its readable crops (one bad crop costs that crop, not the clip); a clip with no
readable crop, audio or text is ``_missing`` = 1. Only the decoders' own errors are caught (Pillow's
``OSError`` / ``SyntaxError``, soundfile's as :func:`~emi_lib.data.media.load_audio` turns them into a
:class:`DataError`, PyAV's ``FFmpegError``, ``UnicodeDecodeError``): anything else is a bug and raises.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from emi_lib.constants import SAMPLE_RATE, SPLIT_CSV, clip_stem
from emi_lib.data.errors import DataError
from emi_lib.data.layout import ABSENT_KINDS, read_split
from emi_lib.data.media import face_files, load_audio
from emi_lib.features.store import subsample_steps

MODALITIES: tuple[str, ...] = ("face", "voice", "text")
FACE_GRID = 12
MAX_FACE_FRAMES = 64  # longer clips are subsampled evenly
N_MELS = 40  # log-mel bins of the voice summary
MAX_AUDIO_S = 30.0  # longer audio is cut (the real data has a 1,250 s outlier)


def _base(root: Path, split: str) -> Path:
    return root / "test_data" if split == "test" else root


def split_ids(root: str | os.PathLike, split: str) -> list[int]:
    """Integer clip ids of a split, in file order (the validated split CSV, :func:`~emi_lib.data.layout.read_split`)."""
    return [int(c) for c in read_split(root, split).index]


# --- face ------------------------------------------------------------------------------------
def _collect(problems: list | None, err: DataError) -> None:
    """Append an unreadable file to ``problems``, or raise it when the caller collects none."""
    if problems is None:
        raise err
    problems.append(str(err))


def _n_video_frames(path: Path) -> int:
    """Frame count from the mp4 header (0: no file, or a header without a count). An mp4 that does not
    decode raises :class:`DataError` kind ``unreadable`` (only PyAV's own errors are caught)."""
    if not path.exists():
        return 0
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DataError(path, "mp4 has no video stream", kind="unreadable")
            return int(c.streams.video[0].frames or 0)
    except av.error.FFmpegError as err:
        raise DataError(path, f"unreadable video header ({type(err).__name__}: {err})", kind="unreadable") from err


def _read_gray(f: Path, problems: list | None) -> Image.Image | None:
    try:
        with Image.open(f) as im:
            return im.convert("L")
    except (OSError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError; a truncated jpg too
        _collect(problems, DataError(f, f"unreadable face crop ({type(err).__name__}: {err})", kind="unreadable"))
        return None


def face_vector(folder: Path, mp4: Path | None = None, problems: list | None = None) -> np.ndarray | None:
    """Summary vector of one clip's face crops, or None if it has none (or none is readable).

    An unreadable crop (or mp4 header) is appended to ``problems`` as a message naming the file and the
    clip keeps its other crops; with ``problems=None`` it raises :class:`DataError` instead."""
    try:
        files = face_files(folder)  # every FACE_EXTENSIONS crop, in frame order
    except DataError as err:
        if err.kind not in ABSENT_KINDS:  # e.g. a crop name without a frame number
            _collect(problems, err)
        return None
    n_all = len(files)
    files = [files[i] for i in subsample_steps(n_all, MAX_FACE_FRAMES)]
    small, mid = [], []
    for f in files:
        g = _read_gray(f, problems)
        if g is None:
            continue
        mid.append(np.asarray(g.resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255.0)
        small.append(np.asarray(g.resize((FACE_GRID, FACE_GRID), Image.BOX), dtype=np.float32).ravel() / 255.0)
    if not small:
        return None
    s, m = np.stack(small), np.stack(mid)
    s = (s - s.mean(axis=1, keepdims=True)) / (s.std(axis=1, keepdims=True) + 0.02)  # per-frame contrast norm
    feats = [s.mean(0), s.std(0), s.max(0)]
    for band in (slice(8, 22), slice(22, 32), slice(32, 46)):
        b = m[:, band, 8:40]
        level = b.mean(axis=(1, 2))
        diff = np.abs(np.diff(b, axis=0)).mean() if len(b) > 1 else 0.0
        feats.append(np.array([level.mean(), level.std(), diff, b.std(axis=0).mean()], dtype=np.float32))
    n_video = 0
    if mp4 is not None:
        try:
            n_video = _n_video_frames(mp4)
        except DataError as err:
            _collect(problems, err)
    feats.append(np.array([n_all / n_video if n_video else 1.0], dtype=np.float32))
    return np.concatenate(feats).astype(np.float32)


# --- voice -----------------------------------------------------------------------------------
def read_wave(path: Path, max_s: float = MAX_AUDIO_S) -> np.ndarray | None:
    """The first ``max_s`` seconds of a clip's audio, mono float32 at 16 kHz
    (:func:`~emi_lib.data.media.load_audio`: resampled, never zero-filled), or None when it is missing,
    empty (0 bytes, no samples) or shorter than one 25 ms frame. A file that does not decode, or holds
    NaN/inf samples, raises its :class:`DataError`."""
    try:
        x = load_audio(path, SAMPLE_RATE, max_seconds=max_s)
    except DataError as err:
        if err.kind in ABSENT_KINDS:
            return None
        raise
    return x if x.size >= 400 else None


def voice_vector(x: np.ndarray) -> np.ndarray:
    """Summary vector of a 16 kHz waveform (see module docstring)."""
    import torch

    from emi_lib.features.backbones import LogMel  # here: the backbones module is heavy to import

    fb = LogMel(N_MELS)(torch.from_numpy(x)).numpy()  # the logmel backbone's own filterbank, 40 bins
    d = np.abs(np.diff(fb, axis=0)).mean(0) if len(fb) > 1 else np.zeros(N_MELS, np.float32)
    mel = [fb.mean(0), fb.std(0), np.percentile(fb, 10, axis=0), np.percentile(fb, 90, axis=0), d]
    n = (x.size - 400) // 160 + 1
    idx = np.arange(400)[None, :] + 160 * np.arange(n)[:, None]
    fr = x[idx] * np.hanning(400)[None, :]
    rms_db = 10 * np.log10(np.mean(fr**2, axis=1) + 1e-10)
    voiced = rms_db > max(rms_db.max() - 30.0, -50.0)
    zcr = np.mean(np.abs(np.diff(np.sign(x[idx]), axis=1)) > 0, axis=1)
    spec = np.abs(np.fft.rfft(fr, axis=1)) ** 2 + 1e-12
    flat = np.exp(np.mean(np.log(spec), axis=1)) / np.mean(spec, axis=1)
    ac = np.fft.irfft(spec, axis=1)[:, : 16000 // 60 + 1]
    lo = 16000 // 400
    lag = lo + np.argmax(ac[:, lo:], axis=1)
    strength = ac[np.arange(n), lag] / (ac[:, 0] + 1e-12)
    pitched = voiced & (strength > 0.3)
    lf0 = np.log2(16000.0 / lag[pitched]) if pitched.any() else np.zeros(1)
    dl = np.diff(lf0) if lf0.size > 1 else np.zeros(1)
    dl = dl[np.abs(dl) < 0.2] if (np.abs(dl) < 0.2).any() else np.zeros(1)
    prosody = np.array([
        rms_db.mean(), rms_db.std(), rms_db.max(), *np.percentile(rms_db, [10, 50, 90]), voiced.mean(),
        zcr[voiced].mean() if voiced.any() else 0.0, zcr.std(),
        flat[voiced].mean() if voiced.any() else 0.0, flat[voiced].std() if voiced.any() else 0.0,
        pitched.mean(), *np.percentile(lf0, [10, 50, 90]), lf0.std(),
        dl[dl > 0].mean() if (dl > 0).any() else 0.0, dl[dl < 0].mean() if (dl < 0).any() else 0.0,
        x.size / SAMPLE_RATE,
    ], dtype=np.float32)
    return np.concatenate([*mel, prosody]).astype(np.float32)


# --- text ------------------------------------------------------------------------------------
def read_text(path: Path, problems: list | None = None) -> str:
    """A transcript, stripped; ``""`` when the file does not exist. One that is not UTF-8 (or cannot be read)
    is appended to ``problems`` and gives ``""`` (with ``problems=None`` it raises :class:`DataError`)."""
    if not path.exists():
        return ""
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as err:
        _collect(problems, DataError(path, f"unreadable transcript ({type(err).__name__}: {err})",
                                     kind="unreadable"))
        return ""


def _text_vectorizer(root: Path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    problems: list[str] = []
    docs = [read_text(root / "text" / f"{clip_stem(i)}.txt", problems) for i in split_ids(root, "train")]
    _warn_unreadable("text", "train (TF-IDF vocabulary)", problems)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    if not any(docs):
        return None
    vec.fit(docs)
    return vec


# --- public ----------------------------------------------------------------------------------
def _warn_unreadable(modality: str, split: str, problems: list[str], max_listed: int = 5) -> None:
    if problems:
        more = f" (and {len(problems) - max_listed} more)" if len(problems) > max_listed else ""
        warnings.warn(f"summary features {modality}/{split}: {len(problems)} unreadable file(s), counted in "
                      f"{modality}_unreadable: {'; '.join(problems[:max_listed])}{more}", stacklevel=3)


def _voice(base: Path, s: str, problems: list) -> np.ndarray | None:
    """The clip's wave from ``audio/<id>.mp3``, else ``.wav``; an unreadable file is counted in ``problems``."""
    for path in (base / "audio" / f"{s}.mp3", base / "audio" / f"{s}.wav"):
        if not path.exists():
            continue
        try:
            x = read_wave(path)
        except DataError as err:
            problems.append(str(err))
            continue
        if x is not None:
            return x
    return None


def summary_features(root: str | os.PathLike, split: str, modality: str, *, progress: bool = False,
                     _vectorizer=None) -> pd.DataFrame:
    """Per-clip summary features of one modality for one split: a DataFrame indexed by the
    5-digit id (index name ``Filename``, file order), float32 columns ``<modality>_*``, no NaN;
    the last two columns are ``<modality>_unreadable`` (the clip's files that exist but could not be read,
    also named in a warning) and ``<modality>_missing`` (1 where no usable file is left: features 0).
    A non-finite summary value raises ``ValueError`` naming the clip (never zeroed)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    root = Path(root)
    base = _base(root, split)
    ids = split_ids(root, split)
    index = pd.Index([clip_stem(i) for i in ids], name="Filename")
    it = tqdm(index, desc=f"{modality} {split}", unit="clip", disable=not progress)
    problems: list[str] = []
    bad = np.zeros(len(index), np.float32)
    if modality == "text":
        vec = _vectorizer if _vectorizer is not None else _text_vectorizer(root)
        docs = []
        for i, s in enumerate(it):
            n = len(problems)
            docs.append(read_text(base / "text" / f"{s}.txt", problems))
            bad[i] = len(problems) - n
        _warn_unreadable(modality, split, problems)
        cols = [] if vec is None else [f"text_{t}" for t in vec.get_feature_names_out()]
        mat = np.zeros((len(docs), len(cols)), np.float32) if vec is None else vec.transform(docs).toarray()
        extra = np.array([[len(d.split()), b, float(not d)] for d, b in zip(docs, bad)],
                         dtype=np.float32).reshape(len(docs), 3)
        return pd.DataFrame(np.hstack([mat, extra]).astype(np.float32), index=index,
                            columns=[*cols, "text_n_words", "text_unreadable", "text_missing"])
    rows: list[np.ndarray | None] = []
    for i, s in enumerate(it):
        n = len(problems)
        if modality == "face":
            rows.append(face_vector(base / "face_images" / s, base / "raw" / f"{s}.mp4", problems))
        else:
            x = _voice(base, s, problems)
            rows.append(None if x is None else voice_vector(x))
        bad[i] = len(problems) - n
    _warn_unreadable(modality, split, problems)
    dim = next((r.size for r in rows if r is not None), 0)
    if dim == 0:
        dim = _feature_dim(modality)
    mat = np.zeros((len(rows), dim + 2), np.float32)
    mat[:, -2] = bad
    for i, r in enumerate(rows):
        if r is None:
            mat[i, -1] = 1.0
        elif not np.isfinite(r).all():
            raise ValueError(f"{modality} summary of clip {index[i]} ({split}) holds {int((~np.isfinite(r)).sum())} "
                             "non-finite value(s)")
        else:
            mat[i, :dim] = r
    cols = [f"{modality}_{j}" for j in range(dim)] + [f"{modality}_unreadable", f"{modality}_missing"]
    return pd.DataFrame(mat, index=index, columns=cols)


def _feature_dim(modality: str) -> int:
    if modality == "face":
        return 3 * FACE_GRID * FACE_GRID + 3 * 4 + 1
    return int(voice_vector(np.zeros(SAMPLE_RATE, np.float32)).size)


def all_summary_features(root: str | os.PathLike, splits=("train", "valid", "test"), modalities=MODALITIES,
                         progress: bool = True) -> dict[str, dict[str, pd.DataFrame]]:
    """``{modality: {split: DataFrame}}`` for every split present (test only if its CSV exists)."""
    root = Path(root)
    splits = [s for s in splits if (root / SPLIT_CSV[s]).exists()]
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for mod in modalities:
        vec = _text_vectorizer(root) if mod == "text" else None
        out[mod] = {s: summary_features(root, s, mod, progress=progress, _vectorizer=vec) for s in splits}
    return out
