"""The stage-2 command-line entry point (``python -m emi_lib.train.launch stage2``) in one process:
the same model and budget as the notebooks (emi_lib.train.config), a scored run folder, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emi_lib.data import DataRoot
from emi_lib.features.store import FeatureStore
from emi_lib.train.launch import main
from emi_lib.train.stage2 import Stage2Config


def _fill_store(root, store_dir):
    rng = np.random.default_rng(0)
    store, data = FeatureStore(store_dir), DataRoot(root)
    for split in ("train", "valid"):
        for cid in data.ids(split):
            store.write("vision", "fake", split, cid, rng.normal(size=(int(rng.integers(5, 12)), 6)).astype(np.float32))
            store.write("audio", "fake", split, cid, rng.normal(size=(int(rng.integers(8, 20)), 4)).astype(np.float32))
    return store


def test_launch_stage2_single_process(smoke_root, tmp_path, capsys):
    _fill_store(smoke_root, tmp_path / "store")
    out = tmp_path / "run"
    args = ["stage2", "--root", str(smoke_root), "--store", str(tmp_path / "store"), "--vision", "vision/fake",
            "--audio", "audio/fake", "--out", str(out), "--profile", "smoke", "--epochs", "2", "--no-progress",
            "--device", "cpu"]
    assert main(args) == 0
    score = json.loads((out / "valid_score.json").read_text())
    assert score["world_size"] == 1 and score["epochs_run"] == 2 and np.isfinite(score["valid_mean_pcc"])
    cfg = Stage2Config.from_json(out / "config.json")
    assert cfg.model["tcn_channels"] == [16, 16] and cfg.model["use_priors"] and cfg.lr == 2e-3 and cfg.patience == 6
    assert len((out / "valid_predictions.csv").read_text().splitlines()) == 1 + len(DataRoot(smoke_root).ids("valid"))


def test_launch_stage2_missing_features_is_a_clear_error(smoke_root, tmp_path, capsys):
    _fill_store(smoke_root, tmp_path / "store")
    rc = main(["stage2", "--root", str(smoke_root), "--store", str(tmp_path / "store"), "--vision", "vision/absent",
               "--audio", "audio/fake", "--out", str(tmp_path / "run"), "--profile", "smoke", "--no-progress"])
    assert rc == 2
    assert "vision" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--profile", "huge"]])
def test_launch_rejects_unknown_profiles(bad, tmp_path):
    with pytest.raises(SystemExit):
        main(["stage2", "--root", "r", "--store", "s", "--vision", "v", "--audio", "a", "--out", str(tmp_path), *bad])


def test_launch_stage2_from_packed_stores_with_bucketing(smoke_root, tmp_path):
    from emi_lib.features.packed import build_from_store

    store = _fill_store(smoke_root, tmp_path / "store")
    for m in ("vision", "audio"):
        for split in ("train", "valid"):
            build_from_store(store, m, "fake", split, tmp_path / "packed" / m / "fake" / split)
    out = tmp_path / "run"
    assert main(["stage2", "--root", str(smoke_root), "--store", str(tmp_path / "store"), "--vision", "vision/fake",
                 "--audio", "audio/fake", "--out", str(out), "--profile", "smoke", "--epochs", "2", "--no-progress",
                 "--device", "cpu", "--packed", str(tmp_path / "packed"), "--bucket"]) == 0
    assert Stage2Config.from_json(out / "config.json").bucket_by_length
    assert np.isfinite(json.loads((out / "valid_score.json").read_text())["valid_mean_pcc"])


def test_standardizer_is_the_same_on_lazy_stores(smoke_root, tmp_path):
    from emi_lib.features.packed import PackedStore, build_from_store
    from emi_lib.train.data import Stage2Data
    from emi_lib.train.inputs import Standardizer

    store = _fill_store(smoke_root, tmp_path / "store")
    eager = Stage2Data.from_store(store, "train", vision=("vision", "fake"), audio=("audio", "fake"))
    for m in ("vision", "audio"):
        build_from_store(store, m, "fake", "train", tmp_path / m, dtype="float32")
    lazy = Stage2Data.from_packed(tmp_path / "vision", tmp_path / "audio", ids=eager.ids)
    a, b = Standardizer.fit(eager), Standardizer.fit(lazy)
    for m in ("vision", "audio"):
        np.testing.assert_allclose(a.mean[m], b.mean[m], rtol=1e-6)
        np.testing.assert_allclose(a.std[m], b.std[m], rtol=1e-6)
        flat = np.concatenate(list(eager.vision.values()) if m == "vision" else list(eager.audio.values()))
        np.testing.assert_allclose(a.std[m] - 1e-6, flat.std(0), rtol=1e-5)
    a.apply(eager)
    b.apply(lazy)
    assert not isinstance(lazy.vision, dict) and isinstance(lazy.vision.src, PackedStore)  # still lazy
    cid = eager.ids[1]
    np.testing.assert_allclose(eager.vision[cid], lazy.vision[cid], atol=1e-5)
    z = np.concatenate([lazy.audio[i] for i in lazy.ids])
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)


def test_predict_refuses_a_split_that_was_never_extracted(smoke_root, tmp_path, capsys):
    """The fake store holds train/valid only: predicting test must say so, not predict clips without features."""
    _fill_store(smoke_root, tmp_path / "store")
    out = tmp_path / "run"
    assert main(["stage2", "--root", str(smoke_root), "--store", str(tmp_path / "store"), "--vision", "vision/fake",
                 "--audio", "audio/fake", "--out", str(out), "--profile", "smoke", "--epochs", "1", "--no-progress",
                 "--device", "cpu", "--no-priors"]) == 0
    rec = json.loads((out / "inputs.json").read_text())
    assert rec["priors"] is False and rec["stage1"] is None and rec["streams"]["vision"] == ["vision", "fake"]
    capsys.readouterr()
    assert main(["predict", "--run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "/fake has no test features" in err and "extract" in err
    assert main(["predict", "--run", str(out), "--split", "valid"]) == 0  # a split that was extracted
    pred = (out / "valid_predictions.csv").read_text().splitlines()
    assert pred[0].startswith("Filename,Admiration") and len(pred) == 1 + len(DataRoot(smoke_root).ids("valid"))
    assert np.isfinite(json.loads((out / "valid_predictions.json").read_text())["score"]["mean"])


def test_resuming_a_run_on_other_inputs_is_refused(smoke_root, tmp_path, capsys):
    _fill_store(smoke_root, tmp_path / "store")
    args = ["stage2", "--root", str(smoke_root), "--store", str(tmp_path / "store"), "--vision", "vision/fake",
            "--audio", "audio/fake", "--out", str(tmp_path / "run"), "--profile", "smoke", "--epochs", "1",
            "--no-progress", "--device", "cpu", "--no-priors"]
    assert main(args) == 0
    assert main([*args, "--no-standardize"]) == 2
    assert "standardizer" in capsys.readouterr().err
    assert main([*args, "--no-standardize", "--fresh"]) == 0
