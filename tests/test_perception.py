"""Offline pretrained perception backbones (MediaPipe Face Mesh, fer, openSMILE), masked steps."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch

from emi_lib.constants import SAMPLE_RATE
from emi_lib.data import DataRoot
from emi_lib.data.media import load_audio, load_face_crops
from emi_lib.features import load_backbone
from emi_lib.features.perception import GEOMETRY, geometry, normalise_landmarks
from emi_lib.features.store import FeatureStore, valid_steps

VISION = ("mediapipe-facemesh", "mediapipe-landmarks", "fer", "mediapipe-facemesh+fer")
AUDIO = ("opensmile-egemaps", "opensmile-compare", "opensmile-egemaps+logmel")


@pytest.fixture(scope="module")
def clip(smoke_root):
    dr = DataRoot(smoke_root)
    cid = dr.ids("train")[0]
    frames = load_face_crops(dr.face_dir("train", cid))
    wave = load_audio(dr.audio_path("train", cid))
    return frames, wave


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host raises."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("name", VISION)
def test_vision_backbones_run_offline(name, clip, no_network):
    frames, _ = clip
    enc = load_backbone("vision", name)
    out = enc.encode_frames(frames)
    assert out.shape == (len(frames), enc.dim) and out.dtype == np.float32
    ok = valid_steps(out)
    assert ok.mean() > 0.8, f"{name}: a face in only {ok.mean():.0%} of SynthMimic crops"
    assert np.isfinite(out[ok]).all()
    assert out[ok].std(0).max() > 0, "features do not vary over the clip"


@pytest.mark.parametrize("name", AUDIO)
def test_audio_backbones_run_offline(name, clip, no_network):
    _, wave = clip
    enc = load_backbone("audio", name)
    out = enc.encode_audio(wave)
    assert enc.frame_rate == 100.0
    expected = len(wave) / SAMPLE_RATE * enc.frame_rate
    assert abs(len(out) - expected) <= 0.02 * expected + 6, (len(out), expected)
    assert out.shape[1] == enc.dim and np.isfinite(out).all()
    assert enc.encode_audio(np.zeros(0, np.float32)).shape == (0, enc.dim)
    assert enc.encode_audio(np.zeros(100, np.float32)).shape[1] == enc.dim  # shorter than a window
    with pytest.raises(ValueError, match="16000 Hz"):
        enc.encode_audio(wave, sr=8000)


def test_dims_and_names():
    assert load_backbone("vision", "mediapipe-facemesh").dim == len(GEOMETRY) == 16
    assert load_backbone("vision", "fer").dim == 7
    assert load_backbone("vision", "mediapipe-landmarks").dim == 956
    assert load_backbone("audio", "opensmile-egemaps").dim == 25
    assert load_backbone("audio", "opensmile-compare").dim == 65
    enc = load_backbone("vision", "mediapipe-facemesh+fer")
    assert enc.dim == 23 and enc.name == "mediapipe-facemesh+fer"
    with pytest.raises(ValueError, match="unknown vision backbone"):
        load_backbone("vision", "mediapipe-facemesh+")
    with pytest.raises(ValueError, match="one modality|unknown"):
        load_backbone("vision", "fer+logmel")


def test_no_face_is_a_masked_step_not_zeros(clip):
    frames, _ = clip
    blank = np.zeros((2, *frames.shape[1:]), np.uint8)  # no face in a black frame
    mixed = np.concatenate([frames[:3], blank, frames[3:5]])
    for name in ("mediapipe-facemesh", "mediapipe-facemesh+fer"):
        out = load_backbone("vision", name).encode_frames(mixed)
        assert np.isnan(out[3:5]).all(), "a frame without a face must be a row of NaN"
        assert np.isfinite(out[:3]).all() and np.isfinite(out[5:]).all()
        assert valid_steps(out).tolist() == [True] * 3 + [False] * 2 + [True] * 2


def test_geometry_ignores_scale_translation_and_roll():
    rng = np.random.default_rng(0)
    pts = rng.uniform(20, 80, size=(478, 2))
    pts[33], pts[263] = (30, 40), (70, 40)
    g = geometry(pts)
    a = 0.3
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    moved = (pts @ rot.T) * 2.5 + np.array([13.0, -7.0])
    g2 = geometry(moved)
    np.testing.assert_allclose(g2[:-1], g[:-1], atol=1e-5)  # every ratio but the roll
    assert g2[-1] == pytest.approx(g[-1] + a, abs=1e-6)
    p, roll = normalise_landmarks(pts)
    np.testing.assert_allclose(p[263] - p[33], [1.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="degenerate"):
        normalise_landmarks(np.zeros((478, 2)))


def test_smile_raises_the_lip_corners(smoke_root):
    """On SynthMimic crops the lip-corner lift follows the rendered smile: higher in Joy-dominant clips."""
    import pandas as pd

    dr = DataRoot(smoke_root)
    labels = dr.split("train")
    enc = load_backbone("vision", "mediapipe-facemesh")
    lift = {}
    for cid in labels.index[:20]:
        if not dr.face_dir("train", cid).exists() or not any(dr.face_dir("train", cid).iterdir()):
            continue  # a clip without face crops (SynthMimic's "no face" corruption)
        out = enc.encode_frames(load_face_crops(dr.face_dir("train", cid), max_frames=12))
        lift[cid] = float(np.nanmean(out[:, GEOMETRY.index("lip_corner_lift")]))
    s = pd.Series(lift)
    r = np.corrcoef(s.to_numpy(), labels.loc[s.index, "Joy"].to_numpy())[0, 1]
    assert r > 0.2, f"lip-corner lift does not follow Joy (r = {r:.2f})"


def test_store_keeps_masked_steps_and_refuses_partial_nan(tmp_path):
    store = FeatureStore(tmp_path)
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    a[1] = np.nan
    store.write("vision", "b", "train", "00000", a)
    back = store.read("vision", "b", "train", "00000")
    assert np.isnan(back[1]).all() and np.array_equal(back[[0, 2, 3]], a[[0, 2, 3]])
    bad = a.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="not wholly NaN"):
        store.write("vision", "b", "train", "00001", bad)
    bad[2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write("vision", "b", "train", "00001", bad)


def test_masked_steps_are_masked_everywhere():
    from emi_lib.eval.retrieval import mean_pool
    from emi_lib.models.padding import pad_batch
    from emi_lib.train.data import Stage2Data, Stage2Dataset
    from emi_lib.train.inputs import Standardizer, with_detected_faces

    a = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 6.0]], np.float32)
    allnan = np.full((2, 2), np.nan, np.float32)
    x, m = pad_batch([a, allnan])
    assert m.tolist() == [[True, False, True], [False, False, False]] and torch.isfinite(x).all()
    pooled, empty = mean_pool({"a": a, "b": allnan}, ["a", "b"])
    np.testing.assert_allclose(pooled[0], [2.0, 4.0])
    assert empty.tolist() == [False, True]
    data = Stage2Data(vision={"00000": a, "00001": allnan}, audio={"00000": a, "00001": a})
    assert data.missing_counts()["vision"] == 1  # every step masked: the stream is missing
    std = Standardizer.fit(data)
    np.testing.assert_allclose(std.mean["vision"], [2.0, 4.0])
    ds = Stage2Dataset(std.apply(data), {"vision": 2, "audio": 2, "text": None})
    batch = ds.collate([0, 1])
    assert batch["vision_mask"].tolist() == [[True, False, True], [False, False, False]]
    assert torch.isfinite(batch["vision"]).all() and batch["available"]["vision"].tolist() == [True, False]
    import pandas as pd

    pri = pd.DataFrame({"face_quality": [0.9, 0.5]}, index=["00000", "00001"])
    out = with_detected_faces(pri, {"00000": a, "00001": allnan})
    assert out.loc["00000", "face_detected_share"] == pytest.approx(2 / 3)
    assert out.loc["00000", "face_quality"] == pytest.approx(0.6)
    assert out.loc["00001", "face_quality"] == 0.0


def test_extraction_writes_masked_steps(smoke_root, tmp_path):
    from emi_lib.features.extract import extract_split

    dr = DataRoot(smoke_root)
    ids = dr.ids("valid")[:2]
    rep = extract_split(smoke_root, "valid", tmp_path, "vision", "mediapipe-facemesh+fer", ids=ids,
                        progress=False, on_error="raise")
    assert rep.n_done == 2 and rep.dim == 23
    store = FeatureStore(tmp_path)
    for cid in ids:
        arr = store.read("vision", "mediapipe-facemesh+fer", "valid", cid)
        assert len(arr) == len(load_face_crops(dr.face_dir("valid", cid)))


def test_facemesh_threads_do_not_change_the_output(clip):
    from emi_lib.features.perception import FaceMeshEncoder

    frames, _ = clip
    one = FaceMeshEncoder(threads=1).encode_frames(frames)
    two = FaceMeshEncoder(threads=2).encode_frames(frames)
    np.testing.assert_array_equal(one, two)


def test_bilstm_runs_over_masked_steps_in_a_clip():
    """A vision stream with masked steps inside a clip (no face) through the gated BiLSTM (swapped encoders):
    the recurrence sees only the valid steps, in order, and the outputs sit at their time steps."""
    from emi_lib.models.emi_model import EMIModel, EMIModelConfig

    torch.manual_seed(0)
    cfg = EMIModelConfig.tiny(vision_dim=3, audio_dim=2, swap_encoders=True, fusion="equal", use_priors=False)
    enc = EMIModel(cfg).encoders["vision"].eval()
    x = torch.randn(1, 6, 3)
    mask = torch.tensor([[True, False, True, True, False, True]])
    h, _ = enc(x, mask)
    compact, _ = enc(x[:, mask[0]], torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(h[0, mask[0]], compact[0], atol=1e-6)
    assert torch.all(h[0, ~mask[0]] == 0)
