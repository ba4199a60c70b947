"""End-to-end fine-tuning of the openclip-tiny image tower (emi_lib.train.finetune)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_root import write_tiny_root

from emi_lib.data import DataRoot
from emi_lib.features import load_backbone
from emi_lib.features.store import FeatureStore
from emi_lib.train.config import FINETUNE, finetune_config
from emi_lib.train.finetune import (
    FinetuneConfig,
    FinetunedVisionEncoder,
    finetune,
    finetune_and_export,
    input_size_frames,
    load_checkpoint,
    load_encoder,
    sample_indices,
    save_checkpoint,
)

TEXT_DIM = 8



def _cfg(**kw) -> FinetuneConfig:
    return finetune_config("smoke", text_dim=TEXT_DIM, **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The tiny root, with random-noise face crops and a different crop count per clip."""
    root = tmp_path_factory.mktemp("ft_root")
    ids = write_tiny_root(root)
    dr, rng = DataRoot(root), np.random.default_rng(0)
    for split, split_ids in ids.items():
        for j, cid in enumerate(split_ids):
            d = dr.face_dir(split, cid)
            for f in d.glob("*.jpg"):
                f.unlink()
            for n in range(3 + j):
                img = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
                img.save(d / f"{n}.jpg", quality=95)
    text = {cid: rng.normal(size=TEXT_DIM).astype(np.float32) for cid in ids["train"]}
    return root, ids, text


def test_config_roundtrip_presets_and_unknown_key():
    cfg = finetune_config("demo", seed=3)
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    assert set(FINETUNE) == {"smoke", "demo", "full"}
    assert finetune_config("smoke").epochs == FINETUNE["smoke"]["epochs"]
    assert finetune_config("smoke", epochs=None).epochs == FINETUNE["smoke"]["epochs"]  # None keeps the preset
    with pytest.raises(ValueError, match="unknown FinetuneConfig fields"):
        FinetuneConfig.from_dict({**cfg.to_dict(), "learning_rate": 1.0})
    with pytest.raises(TypeError, match="learning_rate"):
        finetune_config("smoke", learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown profile"):
        finetune_config("huge")
    with pytest.raises(ValueError):
        FinetuneConfig(frame_sampling="all")


def test_sample_indices():
    rng = np.random.default_rng(0)
    for n, k in ((10, 4), (3, 5), (1, 2)):
        for mode in ("stratified", "random"):
            idx = sample_indices(n, k, rng, mode)
            assert len(idx) == k and idx.min() >= 0 and idx.max() < n
    assert sample_indices(8, 4, None).tolist() == [1, 3, 5, 7]


def test_training_input_matches_encoder_preprocess():
    """Preloaded uint8 crops normalised in torch give exactly what encode_frames computes."""
    from emi_lib.train.finetune import setup

    model = setup(_cfg(), 1)[0].eval()
    raw = np.random.default_rng(1).integers(0, 256, (5, 96, 80, 3), dtype=np.uint8)
    small = input_size_frames(model.encoder, raw)
    assert small.shape == (5, 64, 64, 3) and small.dtype == np.uint8
    with torch.no_grad():
        ours = model.frame_embeddings(torch.from_numpy(small)).numpy()
    np.testing.assert_allclose(ours, model.encoder.encode_frames(raw), rtol=1e-5, atol=1e-5)


def test_loss_decreases_weights_change_and_checkpoint_reloads_strictly(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 1, 64, 64, 3))
    frames = {f"{i:05d}": np.clip(base[i] + rng.integers(-20, 21, (3, 64, 64, 3)), 0, 255).astype(np.uint8)
              for i in range(8)}
    text = {cid: rng.normal(size=TEXT_DIM).astype(np.float32) for cid in frames}
    model, hist = finetune(_cfg(epochs=25, batch_size=8, lr=2e-3, lr_head=1e-2), frames, text)
    loss = hist["train_loss"].iloc[1:].to_numpy()
    assert loss[-3:].mean() < 0.5 * loss[:3].mean(), loss
    fresh = load_backbone("vision", "openclip-tiny")
    init = fresh.module.state_dict()
    changed = [k for k, v in model.tower.state_dict().items() if not torch.equal(v, init[k])]
    assert len(changed) > 0.9 * len(init)

    path = save_checkpoint(model, tmp_path / "ft.pt", {"text_source": "random"})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["text_source"] == "random" and meta["config"]["epochs"] == 25
    sd = torch.load(path, weights_only=True)
    fresh.module.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("tower.")}, strict=True)
    crops = np.random.default_rng(2).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    enc = FinetunedVisionEncoder(model)
    assert enc.name.startswith("openclip-tiny-ft:") and enc.dim == 64 and enc.modality == "vision"
    np.testing.assert_array_equal(fresh.encode_frames(crops), enc.encode_frames(crops))
    again = FinetunedVisionEncoder(load_checkpoint(path)[0])
    np.testing.assert_array_equal(again.encode_frames(crops), enc.encode_frames(crops))
    assert again.name == enc.name
    with pytest.raises(RuntimeError, match="Unexpected key"):
        again.model.load_state_dict({**sd, "extra": torch.zeros(1)}, strict=True)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # batching may change the last bits


def test_export_writes_every_crop_of_every_split(root, tmp_path):
    root, ids, text = root
    s = finetune_and_export(root, tmp_path / "store", text, _cfg(), tmp_path / "ckpt", text_source="random")
    name = s["backbone"]
    assert name.startswith("openclip-tiny-ft:") and s["folds"] == 0
    store, dr = FeatureStore(tmp_path / "store"), DataRoot(root)
    enc = load_encoder(tmp_path / "ckpt" / "full.pt")
    assert enc.name == name and enc.align is None
    for split, split_ids in ids.items():
        for j, cid in enumerate(split_ids):
            arr = store.read("vision", name, split, cid)
            assert arr.shape == (3 + j, 64)  # one row per face crop
            _close(arr, enc.encode_frames(dr.load_modality(split, cid, "faces")))
    prov = json.loads((tmp_path / "ckpt" / "full.json").read_text())
    assert prov["data_root"] == str(dr.root.resolve()) and prov["text_source"] == "random"
    assert prov["seed"] == 0 and prov["train_ids"] == sorted(ids["train"]) and prov["tower_sha1"] in name
    assert len(prov["history"]) == prov["epochs"] + 1


@pytest.mark.parametrize("align", [True, False])
def test_oof_export_uses_a_tower_that_never_saw_the_clip(root, tmp_path, align):
    root, ids, text = root
    s = finetune_and_export(root, tmp_path / "store", text, _cfg(), tmp_path / "ckpt", folds=3,
                            splits=("train", "valid"), align=align)
    name, store, dr = s["backbone"], FeatureStore(tmp_path / "store"), DataRoot(root)
    assert name.startswith("openclip-tiny-ft-oof3:") and sorted(s["fold_of"]) == sorted(ids["train"])
    full = load_encoder(tmp_path / "ckpt" / "full.pt", name)
    assert cid_set(tmp_path / "ckpt" / "full.json") == set(ids["train"])
    for cid in ids["train"]:
        k = s["fold_of"][cid]
        fold = load_encoder(tmp_path / "ckpt" / f"fold{k}.pt", name)
        seen = cid_set(tmp_path / "ckpt" / f"fold{k}.json")
        assert cid not in seen and seen  # the exporting tower (and its alignment map) never saw the clip
        assert (fold.align is not None) == align
        crops = dr.load_modality("train", cid, "faces")
        arr = store.read("vision", name, "train", cid)
        _close(arr, fold.encode_frames(crops))
        assert not np.allclose(arr, full.encode_frames(crops), atol=1e-3)
    for cid in ids["valid"]:
        crops = dr.load_modality("valid", cid, "faces")
        _close(store.read("vision", name, "valid", cid), full.encode_frames(crops))
    with pytest.raises(ValueError, match="folds"):
        finetune_and_export(root, tmp_path / "s2", text, _cfg(), tmp_path / "c2", folds=1)


def cid_set(meta_path) -> set:
    return set(json.loads(meta_path.read_text())["train_ids"])
