"""Vision and audio backbones: shapes, determinism, the real-weight loading path, name errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emi_lib.features import BACKBONES, WeightsUnavailableError, load_backbone
from emi_lib.features import weights as W
from emi_lib.features.backbones import Wav2Vec2Encoder


def _frames(n=3, size=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _wave(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _perturb(module: torch.nn.Module, seed: int = 123) -> None:
    """Move weights away from any seeded init, so a load that silently re-initialised would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def tiny_vision():
    return load_backbone("vision", "openclip-tiny")


# ---------------------------------------------------------------------------------------------
# vision
# ---------------------------------------------------------------------------------------------
def test_openclip_tiny_shapes_dtype_and_determinism(tiny_vision):
    enc = tiny_vision
    assert (enc.name, enc.dim, enc.modality) == ("openclip-tiny", 64, "vision")
    feats = enc.encode_frames(_frames())
    assert feats.shape == (3, 64) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])
    again = load_backbone("vision", "openclip-tiny").encode_frames(_frames())
    np.testing.assert_array_equal(feats, again)
    enc.batch_size = 2  # batching does not change per-frame features
    np.testing.assert_allclose(enc.encode_frames(_frames()), feats, atol=1e-5)
    assert enc.encode_frames(np.zeros((0, 96, 96, 3), np.uint8)).shape == (0, 64)


def test_openclip_frames_must_be_uint8_rgb(tiny_vision):
    with pytest.raises(ValueError, match="uint8"):
        tiny_vision.encode_frames(_frames().astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        tiny_vision.encode_frames(_frames()[0])


def test_openclip_tiny_trainable_forward_has_gradients(tiny_vision):
    x = tiny_vision.preprocess(_frames(2))
    assert x.shape == (2, 3, 64, 64)
    tiny_vision.trainable_forward(x).pow(2).sum().backward()
    grads = [p.grad for p in tiny_vision.module.parameters()]
    assert all(g is not None for g in grads)
    tiny_vision.module.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_openclip_checkpoint_file_loads_through_the_pretrained_path(tmp_path, monkeypatch, fmt):
    """A saved tiny open_clip model loads by path via create_model_and_transforms."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = load_backbone("vision", "openclip-tiny")
    _perturb(src.model)
    path = tmp_path / f"tiny.{fmt}"
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    if fmt == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    name = f"openclip:{W.TINY_OPENCLIP_MODEL}/{path}"
    loaded = load_backbone("vision", name)
    assert loaded.name == name and loaded.dim == 64
    _assert_same_state(src.model, loaded.model)
    np.testing.assert_array_equal(loaded.encode_frames(_frames()), src.encode_frames(_frames()))
    fresh = load_backbone("vision", "openclip-tiny").encode_frames(_frames())
    assert not np.allclose(fresh, loaded.encode_frames(_frames()))
    # the same file serves the text tower
    text = load_backbone("text", f"openclip-text:{W.TINY_OPENCLIP_MODEL}/{path}")
    ref = src.model.encode_text(src.tokenizer(["a smile", ""]), normalize=True).detach().numpy()
    np.testing.assert_allclose(text.encode_texts(["a smile", ""]), ref, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dim, rate", [("wav2vec2-tiny", 64, 50.0), ("logmel", 64, 100.0)])
def test_audio_shapes_rate_and_determinism(name, dim, rate):
    enc = load_backbone("audio", name)
    assert (enc.name, enc.dim, enc.frame_rate, enc.modality) == (name, dim, rate, "audio")
    feats = enc.encode_audio(_wave(1.0))
    assert feats.dtype == np.float32 and feats.shape[1] == dim and np.isfinite(feats).all()
    assert abs(feats.shape[0] - rate * 1.0) <= 1
    np.testing.assert_array_equal(feats, load_backbone("audio", name).encode_audio(_wave(1.0)))
    assert enc.encode_audio(np.zeros(0, np.float32)).shape == (0, dim)
    assert enc.encode_audio(_wave(0.005)).shape[0] >= 1  # shorter than one window: padded
    with pytest.raises(ValueError, match="mono"):
        enc.encode_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="16000"):
        enc.encode_audio(_wave(0.1), sr=44_100)


def test_wav2vec2_long_audio_runs_in_windows():
    enc = load_backbone("audio", "wav2vec2-tiny")
    enc.chunk_seconds = 1.0
    wave = _wave(3.5)
    assert enc._windows(wave.size) == [(0, 16_000), (16_000, 32_000), (32_000, 56_000)]  # 0.5 s tail merged
    feats = enc.encode_audio(wave)
    assert abs(feats.shape[0] - 3.5 * 50) <= 3  # at most one frame lost per window
    values = enc.feature_extractor(wave, sampling_rate=16_000, return_tensors="pt")["input_values"]
    with torch.no_grad():
        first = enc.trainable_forward(values[:, :16_000])[0].numpy()
    np.testing.assert_allclose(feats[: len(first)], first, atol=1e-5)


def test_hf_audio_saved_model_loads_by_path_offline(tmp_path, monkeypatch):
    """A tiny transformers wav2vec2 saved with save_pretrained loads via 'hf:<path>'."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = load_backbone("audio", "wav2vec2-tiny")
    _perturb(src.module)
    src.module.save_pretrained(tmp_path)
    src.feature_extractor.save_pretrained(tmp_path)
    loaded = load_backbone("audio", f"hf:{tmp_path}")
    assert (loaded.dim, loaded.frame_rate, loaded.layer) == (64, 50.0, -1)
    _assert_same_state(src.module, loaded.module)
    wave = _wave(1.0)
    np.testing.assert_allclose(loaded.encode_audio(wave), src.encode_audio(wave), atol=1e-6)
    # a hidden layer by suffix
    layer1 = load_backbone("audio", f"hf:{tmp_path}@1")
    ref = Wav2Vec2Encoder("ref", src.module, src.feature_extractor, layer=1).encode_audio(wave)
    np.testing.assert_allclose(layer1.encode_audio(wave), ref, atol=1e-6)
    assert not np.allclose(ref, src.encode_audio(wave))
    with pytest.raises(ValueError, match="layer 7 out of range"):
        load_backbone("audio", f"hf:{tmp_path}@7")


# ---------------------------------------------------------------------------------------------
# names and offline errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["vision", "audio", "text"])
def test_unknown_names_list_the_valid_patterns(modality):
    with pytest.raises(ValueError) as err:
        load_backbone(modality, "resnet-9000")
    for pattern in BACKBONES[modality]:
        assert pattern in str(err.value)


def test_unknown_modality_and_malformed_openclip_names():
    with pytest.raises(ValueError, match="modality"):
        load_backbone("smell", "logmel")
    with pytest.raises(ValueError, match="<model>/<pretrained"):
        load_backbone("vision", "openclip:ViT-B-32")
    with pytest.raises(ValueError, match="no architecture"):
        load_backbone("vision", "openclip:No-Such-Net/openai")
    with pytest.raises(ValueError, match="neither an existing checkpoint file nor a pretrained tag"):
        load_backbone("vision", "openclip:ViT-B-32/not-a-tag")


def test_offline_hub_names_raise_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"hf:emi-lib-tests/not-a-real-model.*offline.*folder"):
        load_backbone("audio", "hf:emi-lib-tests/not-a-real-model")
    with pytest.raises(WeightsUnavailableError, match="looks like a path"):
        load_backbone("audio", f"hf:{tmp_path}/missing/dir")
    import open_clip

    if W._openclip_tag_cached(open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "openai")):
        pytest.skip("ViT-B-32/openai weights are cached on this machine")
    with pytest.raises(WeightsUnavailableError, match=r"openclip:ViT-B-32/openai.*checkpoint file"):
        load_backbone("vision", "openclip:ViT-B-32/openai")
