"""Signal priors: SNR estimate, clipping and dropout statistics, face share and occluder heuristic."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_root import write_mp4, write_tiny_root

from emi_lib.constants import SAMPLE_RATE
from emi_lib.features.quality import (
    PRIOR_COLUMNS,
    STRAIGHT_EDGE_SHARE,
    audio_quality,
    compute_priors,
    face_quality,
    priors_to_tensors,
    straight_edge_score,
)


def speech_like(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' in syllable bursts (4 per second) with pauses, over a -70 dBFS floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2 * (t % 1.0 < 0.7)
    return 0.2 * env * voice + 10 ** (-70 / 20) * rng.normal(size=t.size)


def add_noise(x: np.ndarray, snr_db: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=x.size)
    p = np.mean(x**2)
    return x + noise * np.sqrt(p / 10 ** (snr_db / 10))


def test_snr_estimate_decreases_with_added_noise():
    clean = speech_like()
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE)
    tone[SAMPLE_RATE // 2: SAMPLE_RATE] *= 0.001  # a pause, so that the floor is measurable
    for sig in (clean, tone):
        snrs = [audio_quality(sig)["audio_snr_db"]] + [audio_quality(add_noise(sig, s))["audio_snr_db"]
                                                        for s in (20, 10, 0, -10)]
        assert all(a > b for a, b in zip(snrs, snrs[1:])), snrs
        assert snrs[0] > 30 and snrs[-1] < 10
    q = [audio_quality(add_noise(clean, s))["audio_quality"] for s in (20, 0)]
    assert 0 <= q[1] < q[0] <= 1


def test_dropout_clipping_and_silence_statistics():
    clean = speech_like()
    dropped = clean.copy()
    dropped[SAMPLE_RATE: SAMPLE_RATE + SAMPLE_RATE // 2] = 0.0  # half a second of digital zeros
    a, b = audio_quality(clean), audio_quality(dropped)
    assert a["audio_zero_share"] == 0 and b["audio_zero_share"] == pytest.approx(1 / 6, abs=0.02)
    assert abs(a["audio_snr_db"] - b["audio_snr_db"]) < 6  # zeros are not taken as the noise floor
    clipped = np.clip(clean * 8, -0.3, 0.3)
    c = audio_quality(clipped)
    assert c["audio_clip_share"] > 20 * max(a["audio_clip_share"], 1e-4)
    assert c["audio_kurtosis"] < a["audio_kurtosis"]
    assert audio_quality(np.zeros(SAMPLE_RATE))["audio_quality"] == 0.0
    empty = audio_quality(np.zeros(0))
    assert math.isnan(empty["audio_quality"]) and math.isnan(empty["audio_snr_db"])


def face_crop(i: int, size: int = 96, occluded: bool = False) -> np.ndarray:
    """A face-like crop: background gradient, a skin ellipse with eyes and a mouth, sensor noise;
    optionally a flat grey rectangle over the lower half of the face."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32) + np.array([60, 90, 140]) * (0.7 + 0.3 * y / size)[..., None]
    c = size / 2
    face = ((x - c) / (0.32 * size)) ** 2 + ((y - c) / (0.42 * size)) ** 2 < 1
    img[face] = [205, 160, 130]
    for ex in (c - 0.13 * size, c + 0.13 * size):
        img[((x - ex) ** 2 + (y - c + 0.08 * size) ** 2) < (0.04 * size) ** 2] = [40, 30, 30]
    mouth = (((x - c) / (0.12 * size)) ** 2 + ((y - c - 0.2 * size) / (0.035 * size + i % 3)) ** 2) < 1
    img[mouth] = [150, 60, 60]
    if occluded:
        img[int(0.45 * size): int(0.95 * size), int(0.12 * size): int(0.88 * size)] = [120, 120, 120]
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_face_dir(folder, n: int = 20, drop=(), occlude=()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i not in drop:
            Image.fromarray(face_crop(i, occluded=i in occlude)).save(folder / f"{i}.jpg", quality=90)


def test_occluder_heuristic_flags_a_flat_rectangle():
    clean = np.stack([face_crop(i) for i in range(6)])
    occl = np.stack([face_crop(i, occluded=True) for i in range(6)])
    assert straight_edge_score(clean).max() < STRAIGHT_EDGE_SHARE < straight_edge_score(occl).min()


def test_face_quality_drops_with_missing_and_occluded_frames(tmp_path):
    video = tmp_path / "clip.mp4"
    write_mp4(video, n_frames=20)
    write_face_dir(tmp_path / "full")
    write_face_dir(tmp_path / "half_missing", drop=range(0, 20, 2))
    write_face_dir(tmp_path / "half_occluded", occlude=range(5, 15))
    full = face_quality(tmp_path / "full", video)
    missing = face_quality(tmp_path / "half_missing", video)
    occluded = face_quality(tmp_path / "half_occluded", video)
    assert full["video_frames"] == 20 and full["face_share"] == 1.0 and full["face_quality"] == 1.0
    assert missing["face_share"] == 0.5 and missing["face_visible_share"] == 1.0
    assert occluded["face_share"] == 1.0 and occluded["face_visible_share"] == pytest.approx(0.5, abs=0.1)
    assert missing["face_quality"] < full["face_quality"] and occluded["face_quality"] < full["face_quality"]
    # without a video the frame count comes from the crop numbers (gaps count)
    assert face_quality(tmp_path / "half_missing")["face_share"] == 0.5  # crops 1, 3, ..., 19 of 20 frames
    assert face_quality(tmp_path / "half_missing", n_frames=40)["face_share"] == 0.25
    (tmp_path / "empty").mkdir()
    assert face_quality(tmp_path / "empty", video)["face_quality"] == 0.0
    nothing = face_quality(tmp_path / "absent")
    assert math.isnan(nothing["face_quality"]) and nothing["face_crops"] == 0


def test_compute_priors_on_a_tiny_root_and_tensors(tmp_path):
    ids = write_tiny_root(tmp_path)
    (tmp_path / "audio" / f"{ids['train'][1]}.mp3").unlink()  # a clip without audio
    priors = compute_priors(tmp_path, "train", progress=False)
    assert list(priors.index) == ids["train"] and priors.index.name == "Filename"
    # 4 crops for a 6-frame mp4
    assert np.allclose(priors["face_share"], 4 / 6) and priors["video_frames"].tolist() == [6.0, 6.0, 6.0]
    assert np.isnan(priors.loc[ids["train"][1], "audio_snr_db"])
    assert np.isfinite(priors.loc[ids["train"][0], ["audio_snr_db", "audio_quality"]].astype(float)).all()
    t = priors_to_tensors(priors, [ids["train"][2], ids["train"][1], "99999"])
    assert set(t) == set(PRIOR_COLUMNS) and t["vision"].shape == (3, 1) and t["vision"].dtype == torch.float32
    assert torch.isnan(t["audio"][1:]).all() and torch.isnan(t["vision"][2]).all()
    with pytest.raises(KeyError, match="not in the table"):
        priors_to_tensors(priors, ids["train"], {"audio": ["no_such_column"]})
    assert isinstance(priors, pd.DataFrame)


def test_priors_to_tensors_refuses_infinite_priors():
    table = pd.DataFrame({"face_quality": [0.5, np.inf], "audio_quality": [np.nan, 0.2]}, index=["00000", "00001"])
    with pytest.raises(ValueError, match="00001"):
        priors_to_tensors(table, ["00000", "00001"])
    t = priors_to_tensors(table, ["00000"])
    assert torch.isnan(t["audio"][0, 0])  # NaN (unknown) is kept as NaN, never 0


def test_an_unreadable_crop_is_an_unusable_frame_not_a_lost_clip(tmp_path):
    ids = write_tiny_root(tmp_path)
    cid = ids["train"][0]
    (tmp_path / "face_images" / cid / "1.jpg").write_bytes(b"garbage, not a jpeg" * 10)
    with pytest.warns(UserWarning, match=rf"{cid} face: 1 unreadable crop.*1\.jpg"):
        priors = compute_priors(tmp_path, "train", progress=False)
    row, other = priors.loc[cid], priors.loc[ids["train"][1]]
    assert row["face_unreadable"] == 1 and other["face_unreadable"] == 0
    assert row["face_visible_share"] == pytest.approx(other["face_visible_share"] * 3 / 4)  # 3 of 4 usable
    assert row["face_quality"] == pytest.approx(other["face_quality"] * 3 / 4)


def test_priors_do_not_depend_on_the_reader_threads(smoke_root):
    from emi_lib.features.quality import compute_priors

    one = compute_priors(smoke_root, "valid", progress=False, workers=1)
    three = compute_priors(smoke_root, "valid", progress=False, workers=3)
    pd.testing.assert_frame_equal(one, three)  # same rows, same order, same values
    from emi_lib.data import DataRoot

    assert list(one.index) == list(DataRoot(smoke_root).ids("valid"))
