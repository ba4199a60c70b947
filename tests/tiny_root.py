"""A tiny, valid Hume-Vidmimic2 root written by hand (no generator), for the reader tests.

``write_tiny_root(root)`` writes train ids 0-2, valid ids 3-4, test ids 12660-12661, each with
an H.264 mp4 (PyAV, 6 frames 32x32), a 16 kHz mono mp3 (soundfile), 4 jpg face crops (24x24),
a transcript (clip 1's is empty: a silent clip), ``vit/*.pkl`` (pickled numpy (5, 8)) and
``wav2vec2/*.pkl`` (pickled numpy (7, 12)). Returns the ids per split.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from emi_lib.constants import EMOTIONS, HEADER, SAMPLE_RATE, clip_stem

TRAIN_IDS = (0, 1, 2)
VALID_IDS = (3, 4)
TEST_IDS = (12660, 12661)
N_FACES = 4
VIT_SHAPE = (5, 8)
W2V_SHAPE = (7, 12)
AUDIO_SECONDS = 0.5


def write_mp4(path: Path, n_frames: int = 6, size: int = 32, fps: int = 10, seed: int = 0) -> None:
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            img = np.full((size, size, 3), 40 * i % 255, dtype=np.uint8)
            img[: size // 2] = rng.integers(0, 255, size=3, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_audio(path: Path, seconds: float = AUDIO_SECONDS, sr: int = SAMPLE_RATE, channels: int = 1,
                freq: float = 220.0) -> np.ndarray:
    """A sine tone (stereo: second channel half as loud), as mp3 or wav by the path's extension."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    data = mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "MP3" if path.suffix == ".mp3" else "WAV"
    sf.write(str(path), data, sr, format=fmt)
    return data


def write_faces(face_dir: Path, n: int = N_FACES, size: int = 24) -> None:
    from PIL import Image

    face_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.full((size, size, 3), (i * 20) % 255, dtype=np.uint8)
        Image.fromarray(arr).save(face_dir / f"{i}.jpg", quality=95)


def write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def write_split_csv(path: Path, rows: list[list], header=HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_clip(clip_dir: Path, cid: int, seed: int = 0, transcript: str = "oh wow that is great") -> None:
    stem = clip_stem(cid)
    rng = np.random.default_rng(seed + cid)
    write_mp4(clip_dir / "raw" / f"{stem}.mp4", seed=seed + cid)
    write_audio(clip_dir / "audio" / f"{stem}.mp3", freq=200.0 + 10 * (cid % 20))
    write_faces(clip_dir / "face_images" / stem)
    (clip_dir / "text").mkdir(parents=True, exist_ok=True)
    (clip_dir / "text" / f"{stem}.txt").write_text(transcript, encoding="utf-8")
    write_pickle(clip_dir / "vit" / f"{stem}.pkl", rng.standard_normal(VIT_SHAPE).astype(np.float32))
    write_pickle(clip_dir / "wav2vec2" / f"{stem}.pkl", rng.standard_normal(W2V_SHAPE).astype(np.float32))


def write_tiny_root(root: str | Path, seed: int = 0) -> dict[str, list[str]]:
    """Write the tiny root under ``root`` and return ``{split: [5-digit ids]}``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, ids in (("train", TRAIN_IDS), ("valid", VALID_IDS)):
        rows = [[cid, *(int(k) / 4 for k in rng.integers(0, 5, size=len(EMOTIONS)))] for cid in ids]
        write_split_csv(root / f"{split}_split.csv", rows)
        for cid in ids:
            write_clip(root, cid, seed, transcript="" if cid == 1 else f"clip {cid}: oh wow")
    write_split_csv(root / "test_data" / "test_split.csv", [[cid] for cid in TEST_IDS], header=("Filename",))
    for cid in TEST_IDS:
        write_clip(root / "test_data", cid, seed)
    return {"train": [clip_stem(i) for i in TRAIN_IDS], "valid": [clip_stem(i) for i in VALID_IDS],
            "test": [clip_stem(i) for i in TEST_IDS]}
