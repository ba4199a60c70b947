"""The one config module: presets per profile, None keeps a preset, an unknown key raises (before the merge)."""

from __future__ import annotations

import pytest

from emi_lib.train import config as C
from emi_lib.train.stage2 import Stage2Config

DIMS = {"vision": 6, "audio": 4, "text": None}


def test_an_unknown_stage2_key_raises_instead_of_being_ignored():
    with pytest.raises(TypeError, match="learning_rate"):
        C.stage2_config("demo", DIMS, learning_rate=1e-3)  # the field is lr
    with pytest.raises(TypeError, match="hidden"):
        C.stage1_config("demo", "vision", 6, 8, hidden_size=3)
    with pytest.raises(TypeError, match="oof"):
        C.stage1_preset("demo", oof=3)


def test_none_keeps_the_preset_and_a_value_overrides_it():
    base = C.stage2_config("demo", DIMS)
    assert base.lr == C.STAGE2_TRAIN["lr"] and base.epochs == C.STAGE2["demo"]["epochs"]
    assert base.model["tcn_channels"] == C.STAGE2["demo"]["tcn_channels"] and base.patience == C.STAGE2_TRAIN["patience"]
    assert C.stage2_config("demo", DIMS, lr=None, epochs=None) == base
    assert C.stage2_config("demo", DIMS, lr=5e-4).lr == 5e-4
    a = C.stage1_config("smoke", "audio", 6, 8, epochs=None, pooling="mean")
    assert (a.epochs, a.embed_dim, a.pooling, a.in_dim) == (C.STAGE1["smoke"]["epochs"], 16, "mean", 6)
    assert C.stage1_config("demo", "vision", 6, 8, epochs=2).epochs == 2


def test_the_dataclass_defaults_agree_with_the_recipe():
    """Stage2Config's own defaults (library use) carry the same learning rate and patience as the presets."""
    d = Stage2Config()
    assert (d.lr, d.patience) == (C.STAGE2_TRAIN["lr"], C.STAGE2_TRAIN["patience"])


def test_out_of_fold_k_and_profiles():
    assert C.oof_folds("demo", "label_prompt") == C.STAGE1["demo"]["oof_folds"]
    assert C.oof_folds("demo", "transcript") == 0 and C.oof_folds("full", "transcript", 4) == 4
    with pytest.raises(ValueError, match="at least 2"):
        C.oof_folds("demo", "label_prompt", 1)
    with pytest.raises(ValueError, match="unknown profile"):
        C.stage2_config("huge", DIMS)
    assert set(C.STAGE1) == set(C.STAGE2) == set(C.FINETUNE) == set(C.PROFILES)
