r"""Hand-made per-clip summary features of each modality, read from the written files.

They feed the ridge check (:mod:`emi_lib.eval.probe`), so they are deliberately plain:
no learned model, no temporal modelling, no generator internals. They read the layout with
plain readers (Pillow for ``face_images/``, soundfile for ``audio/``, text files), so they work
on a SynthMimic root and on a real Hume-Vidmimic2 root alike.

* face: every crop -> grayscale 12x12; over time: per-pixel mean, std and max (3 x 144); three
  horizontal bands (brows/eyes, nose, mouth) of a 48x48 version: mean level, temporal std and
  mean absolute frame difference; the share of video frames that have a crop.
* voice: kaldi log-mel (40 bins, 25/10 ms): per-bin mean, std, 10th and 90th percentile and mean
  |delta|; frame RMS in dB (mean, std, percentiles, voiced share); zero-crossing rate; spectral
  flatness; an autocorrelation pitch proxy (log f0 percentiles, spread, mean rise and fall).
* text: TF-IDF of uni- and bigrams fitted on the train transcripts only, plus word count.

A missing modality (no crops, no mp3, empty transcript) gives zeros and an indicator column
``<modality>_missing`` = 1; nothing raises for a missing file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from tqdm.auto import tqdm

from emi_lib.constants import EMOTIONS, SAMPLE_RATE, SPLIT_CSV, clip_stem

MODALITIES: tuple[str, ...] = ("face", "voice", "text")
FACE_GRID = 12
MAX_FACE_FRAMES = 64  # longer clips are subsampled evenly
MAX_AUDIO_S = 30.0  # longer audio is cut (the real data has a 1,250 s outlier)


def _base(root: Path, split: str) -> Path:
    return root / "test_data" if split == "test" else root


def split_ids(root: str | os.PathLike, split: str) -> list[int]:
    """Integer clip ids of a split, in file order (read with pandas, no validation)."""
    df = pd.read_csv(Path(root) / SPLIT_CSV[split], encoding="utf-8-sig")
    df.columns = [c.strip() for c in df.columns]
    return [int(v) for v in df["Filename"]]


def split_labels(root: str | os.PathLike, split: str) -> pd.DataFrame | None:
    """Labels of a split indexed by the 5-digit id; for ``test`` the hidden SynthMimic labels
    (``synthmimic/test_labels.csv``) or None when there are none."""
    root = Path(root)
    path = root / "synthmimic" / "test_labels.csv" if split == "test" else root / SPLIT_CSV[split]
    if not path.exists():
        return None
    df = pd.read_csv(path, encoding="utf-8-sig")
    df.columns = [c.strip() for c in df.columns]
    df.index = pd.Index([clip_stem(v) for v in df.pop("Filename")], name="Filename")
    return df[list(EMOTIONS)].astype(np.float64)


# --- face ------------------------------------------------------------------------------------
def _n_video_frames(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        import av

        with av.open(str(path)) as c:
            return int(c.streams.video[0].frames or 0)
    except Exception:  # an unreadable video only loses this one feature
        return 0


def face_vector(folder: Path, mp4: Path | None = None) -> np.ndarray | None:
    """Summary vector of one clip's face crops, or None if it has none."""
    files = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    if not files:
        return None
    n_all = len(files)
    if n_all > MAX_FACE_FRAMES:
        files = [files[i] for i in np.linspace(0, n_all - 1, MAX_FACE_FRAMES).round().astype(int)]
    small, mid = [], []
    for f in files:
        with Image.open(f) as im:
            g = im.convert("L")
            mid.append(np.asarray(g.resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255.0)
            small.append(np.asarray(g.resize((FACE_GRID, FACE_GRID), Image.BOX), dtype=np.float32).ravel() / 255.0)
    s, m = np.stack(small), np.stack(mid)
    s = (s - s.mean(axis=1, keepdims=True)) / (s.std(axis=1, keepdims=True) + 0.02)  # per-frame contrast norm
    feats = [s.mean(0), s.std(0), s.max(0)]
    for band in (slice(8, 22), slice(22, 32), slice(32, 46)):
        b = m[:, band, 8:40]
        level = b.mean(axis=(1, 2))
        diff = np.abs(np.diff(b, axis=0)).mean() if len(b) > 1 else 0.0
        feats.append(np.array([level.mean(), level.std(), diff, b.std(axis=0).mean()], dtype=np.float32))
    n_video = _n_video_frames(mp4) if mp4 is not None else 0
    feats.append(np.array([n_all / n_video if n_video else 1.0], dtype=np.float32))
    return np.concatenate(feats).astype(np.float32)


# --- voice -----------------------------------------------------------------------------------
def read_audio(path: Path, max_s: float = MAX_AUDIO_S) -> np.ndarray | None:
    """Mono float32 at 16 kHz (first ``max_s`` seconds), or None if missing, unreadable or empty."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            x = f.read(frames=int(max_s * sr), dtype="float32", always_2d=True).mean(axis=1)
    except Exception:
        return None
    if sr != SAMPLE_RATE and x.size:
        import torch
        import torchaudio.functional as AF

        x = AF.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
    return x if x.size >= 400 else None


def voice_vector(x: np.ndarray) -> np.ndarray:
    """Summary vector of a 16 kHz waveform (see module docstring)."""
    import torch
    from torchaudio.compliance import kaldi

    fb = kaldi.fbank(torch.from_numpy(x)[None] * 32768.0, num_mel_bins=40, sample_frequency=SAMPLE_RATE,
                     dither=0.0, energy_floor=1.0).numpy()
    d = np.abs(np.diff(fb, axis=0)).mean(0) if len(fb) > 1 else np.zeros(40, np.float32)
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
def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _text_vectorizer(root: Path):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [read_text(root / "text" / f"{clip_stem(i)}.txt") for i in split_ids(root, "train")]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
    if not any(docs):
        return None
    vec.fit(docs)
    return vec


# --- public ----------------------------------------------------------------------------------
def summary_features(root: str | os.PathLike, split: str, modality: str, *, progress: bool = False,
                     _vectorizer=None) -> pd.DataFrame:
    """Per-clip summary features of one modality for one split: a DataFrame indexed by the
    5-digit id (index name ``Filename``, file order), float32 columns ``<modality>_*``, no NaN;
    the last column ``<modality>_missing`` is 1 where the modality is absent (features 0)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
    root = Path(root)
    base = _base(root, split)
    ids = split_ids(root, split)
    index = pd.Index([clip_stem(i) for i in ids], name="Filename")
    it = tqdm(index, desc=f"{modality} {split}", unit="clip", disable=not progress)
    if modality == "text":
        vec = _vectorizer if _vectorizer is not None else _text_vectorizer(root)
        docs = [read_text(base / "text" / f"{s}.txt") for s in it]
        cols = [] if vec is None else [f"text_{t}" for t in vec.get_feature_names_out()]
        mat = np.zeros((len(docs), len(cols)), np.float32) if vec is None else vec.transform(docs).toarray()
        extra = np.array([[len(d.split()), float(not d)] for d in docs], dtype=np.float32).reshape(len(docs), 2)
        return pd.DataFrame(np.hstack([mat, extra]).astype(np.float32), index=index,
                            columns=[*cols, "text_n_words", "text_missing"])
    rows: list[np.ndarray | None] = []
    for s in it:
        if modality == "face":
            rows.append(face_vector(base / "face_images" / s, base / "raw" / f"{s}.mp4"))
        else:
            x = read_audio(base / "audio" / f"{s}.mp3")
            if x is None:
                wav = base / "audio" / f"{s}.wav"
                x = read_audio(wav) if wav.exists() else None
            rows.append(None if x is None else voice_vector(x))
    dim = next((r.size for r in rows if r is not None), 0)
    if dim == 0:
        dim = _feature_dim(modality)
    mat = np.zeros((len(rows), dim + 1), np.float32)
    for i, r in enumerate(rows):
        if r is None:
            mat[i, -1] = 1.0
        else:
            mat[i, :dim] = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    cols = [f"{modality}_{j}" for j in range(dim)] + [f"{modality}_missing"]
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
