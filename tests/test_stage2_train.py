"""Stage-2 training loop: loss, schedule, resume equivalence, strict loading, early stopping, prediction."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from tiny_root import write_tiny_root

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score
from emi_lib.features.store import subsample_steps
from emi_lib.models import EMIModel, EMIModelConfig
from emi_lib.train import (
    CheckpointMismatchError,
    Stage2Config,
    Stage2Data,
    TrainingInterrupted,
    emi_loss,
    load_run,
    load_weights,
    predict,
    train_stage2,
)
from emi_lib.train.buckets import shard
from emi_lib.train.data import epoch_batches
from emi_lib.train.stage2 import lr_factor
from emi_lib.viz.stage2_plots import plot_training_curves

DV, DA = 6, 5


def planted(n: int, seed: int, with_priors: bool = True) -> Stage2Data:
    """Sequences carrying the labels z through fixed maps; every 7th clip lacks vision (no key),
    every 5th lacks audio (a (0, D) array); clip 0 lacks both. Those clips' media are declared absent."""
    rng, maps = np.random.default_rng(seed), np.random.default_rng(99)
    a, b = maps.normal(size=(6, DV)), maps.normal(size=(6, DA))
    z = rng.uniform(size=(n, 6))
    ids = [f"{seed:02d}{i:03d}" for i in range(n)]
    vision, audio = {}, {}
    for i, cid in enumerate(ids):
        if i % 7 != 3 and i != 0:
            vision[cid] = (z[i] @ a + 0.3 * rng.normal(size=(rng.integers(3, 12), DV))).astype(np.float32)
        audio[cid] = (z[i] @ b + 0.3 * rng.normal(size=(rng.integers(4, 15), DA))).astype(np.float32)
        if i % 5 == 1 or i == 0:
            audio[cid] = np.zeros((0, DA), np.float32)
    priors = pd.DataFrame({"face_quality": rng.uniform(size=n), "audio_quality": rng.uniform(size=n)}, index=ids)
    priors.iloc[0] = np.nan
    labels = pd.DataFrame(z, index=ids, columns=list(EMOTIONS))
    absent = {"vision": [c for c in ids if c not in vision], "audio": [c for c in ids if not audio[c].size]}
    return Stage2Data(vision, audio, labels=labels, priors=priors if with_priors else None, absent=absent)


def tiny_cfg(**kw) -> Stage2Config:
    model = EMIModelConfig.tiny(DV, DA, tcn_dropout=0.2, lstm_dropout=0.2, head_dropout=0.2)
    base = dict(model=model, epochs=3, batch_size=8, lr=1e-2, ckpt_every_steps=3, patience=None, device="cpu",
                max_len=10)
    base.update(kw)
    return Stage2Config(**base)



@pytest.fixture(scope="module")
def splits():
    return planted(30, 1), planted(13, 2)  # 13 val clips: batch sizes 8 and 16 do not divide it


@pytest.fixture(scope="module")
def run_a(splits, tmp_path_factory):
    run = tmp_path_factory.mktemp("stage2_a")
    model, hist = train_stage2(tiny_cfg(), *splits, run, progress=False)
    return run, model, hist


def test_loss_and_metric_on_known_values():
    y = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [0.3, 0.3, 0.9, 0.0, 1.0, 0.2]])
    total, parts = emi_loss(y.clone(), y, mse_weight=2.0, pcc_weight=0.5)
    assert parts["mse"].item() == 0 and parts["r"].min().item() > 0.999
    assert math.isclose(total.item(), 0.5 * parts["pcc"].item(), abs_tol=1e-6)
    anti = 1.0 - y  # r = -1 in every column: (1 - r) = 2
    total, parts = emi_loss(anti, y, mse_weight=0.0, pcc_weight=1.0)
    assert math.isclose(total.item(), 2.0, rel_tol=1e-4)
    s = challenge_score(anti.numpy(), y.numpy())
    assert math.isclose(s["mean"], -1.0, abs_tol=1e-9) and s["n"] == 3


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(f[4], 1.0) and all(a >= b for a, b in zip(f[4:], f[5:]))
    assert math.isclose(f[20], 0.1) and math.isclose(f[12], 0.1 + 0.9 * 0.5)


def test_config_json_roundtrip_and_validation(tmp_path):
    cfg = tiny_cfg(seed=7)
    again = Stage2Config.from_json(cfg.to_json(tmp_path / "c.json"))
    assert again == cfg and Stage2Config.from_json(tmp_path / "c.json") == cfg
    assert again.model_config() == cfg.model_config()
    with pytest.raises(ValueError, match="unknown Stage2Config fields"):
        Stage2Config.from_dict({**cfg.to_dict(), "lr_typo": 1})
    with pytest.raises(ValueError, match="prior_dims"):
        tiny_cfg(prior_columns={"vision": ["a", "b"], "audio": ["c"]})


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    a, b = epoch_batches(30, 8, seed=3, epoch=2), epoch_batches(30, 8, seed=3, epoch=2)
    assert a == b and a != epoch_batches(30, 8, seed=3, epoch=1)
    assert [len(x) for x in a] == [8, 8, 8]  # drop_last drops the incomplete batch of 6
    assert sorted(sum(epoch_batches(30, 8, 3, 2, drop_last=False), [])) == list(range(30))
    shards = [shard(a + [[99]], r, 2) for r in range(2)]  # 4 batches -> 2 per rank, disjoint
    assert shards[0] == [a[0], a[2]] and shards[1] == [a[1], [99]]
    assert list(subsample_steps(5, 10)) == list(range(5))
    idx = subsample_steps(101, 11)
    assert idx[0] == 0 and idx[-1] == 100 and len(idx) == 11 and np.all(np.diff(idx) == 10)


def test_run_folder_and_history(run_a):
    run, model, hist = run_a
    for name in ("config.json", "checkpoint.pt", "best.pt", "history.csv", "data_summary.json"):
        assert (run / name).exists(), name
    assert not list(run.glob("*.tmp*"))
    assert Stage2Config.from_json(run / "config.json") == tiny_cfg()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["finished"] and ck["epoch"] == 3 and len(ck["history"]) == 3
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["valid"] == {"vision": 3, "audio": 4} and summary["n"]["valid"] == 13
    assert list(hist["epoch"]) == [1, 2, 3]
    for col in ["train_loss", "val_loss", "val_mean_pcc", "lr", *[f"val_{e}" for e in EMOTIONS]]:
        assert np.isfinite(hist[col]).all(), col
    assert hist["lr"].iloc[-1] < hist["lr"].iloc[0]
    assert hist.attrs["best_epoch"] == int(hist["val_mean_pcc"].idxmax())
    plt.close(plot_training_curves(hist))


def test_resume_after_a_kill_mid_epoch_matches_the_uninterrupted_run(splits, run_a, tmp_path):
    _, model_a, hist_a = run_a
    cfg = tiny_cfg()  # 3 batches per epoch, checkpoint every 3 global steps
    with pytest.raises(TrainingInterrupted):
        train_stage2(cfg, *splits, tmp_path, progress=False, stop_after_steps=5)  # killed in epoch 2
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] == 3 and ck["epoch"] == 1 and ck["step_in_epoch"] == 0  # epoch-1 end
    with pytest.raises(TrainingInterrupted):  # resumed, then killed again mid-epoch 3 (after step 7)
        train_stage2(tiny_cfg(ckpt_every_steps=7), *splits, tmp_path, progress=False, stop_after_steps=8)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 1, 7) and ck["batch_order"]
    model_b, hist_b = train_stage2(cfg, *splits, tmp_path, progress=False)
    cols = [c for c in hist_a.columns if c != "epoch_time_s"]
    np.testing.assert_allclose(hist_b[cols].to_numpy(float), hist_a[cols].to_numpy(float), rtol=0, atol=1e-6)
    for (k, va), vb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
    again, hist_c = train_stage2(cfg, *splits, tmp_path, progress=False)  # finished: nothing to do
    assert len(hist_c) == 3


def test_resume_refuses_another_config(splits, run_a):
    run, _, _ = run_a
    with pytest.raises(ValueError, match="lr"):
        train_stage2(tiny_cfg(lr=5e-3), *splits, run, progress=False)


def test_strict_load_names_the_mismatch(run_a):
    run, model, _ = run_a
    loaded, cfg = load_run(run)
    assert cfg == tiny_cfg()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    other = EMIModel(EMIModelConfig.tiny(DV, DA, tcn_channels=[8, 8, 8]))
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_weights(other, run / "best.pt")
    wider = EMIModel(EMIModelConfig.tiny(DV, DA, fusion_dim=12))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        load_weights(wider, run / "best.pt")


def test_early_stopping_stops(splits, tmp_path):
    cfg = tiny_cfg(lr=0.0, epochs=10, patience=2)  # lr 0: the score never improves after epoch 1
    _, hist = train_stage2(cfg, *splits, tmp_path, progress=False)
    assert list(hist["epoch"]) == [1, 2, 3] and hist.attrs["stopped_early"]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["bad_epochs"] == 2


def test_every_validation_clip_is_scored(splits, run_a):
    _, model, hist = run_a
    val = splits[1]
    for bs in (1, 4, 5, 64):
        pred, weights, extras = predict(model, val, batch_size=bs)
        assert list(pred.index) == val.ids and list(pred.columns) == list(EMOTIONS)
        assert np.isfinite(pred.to_numpy()).all() and extras["n"] == 13
    score = challenge_score(pred, val.labels)
    assert score["n"] == 13
    assert math.isclose(score["mean"], hist.loc[hist.attrs["best_epoch"], "val_mean_pcc"], abs_tol=1e-5)


def test_predict_covers_clips_with_missing_modalities(splits, run_a):
    _, model, _ = run_a
    val = splits[1]
    test = Stage2Data({k: v for k, v in val.vision.items()}, dict(val.audio), priors=val.priors,
                      ids=[*val.ids, "99999"])  # an unlabelled clip with no file at all
    pred, weights, extras = predict(model, test, batch_size=4)
    assert len(pred) == 14 and np.isfinite(pred.to_numpy()).all()
    avail = extras["available"]
    assert not avail.loc["99999"].any() and (weights.loc["99999"] == 0).all()
    no_vision = [i for i in test.ids if not test.has("vision", i) and test.has("audio", i)]
    assert no_vision and (weights.loc[no_vision, "vision"] == 0).all()
    assert np.allclose(weights.loc[no_vision, "audio"], 1.0)
    both = avail.all(axis=1)
    assert np.allclose(weights[both].sum(axis=1), 1.0, atol=1e-6)
    assert extras["missing"] == {"vision": 4, "audio": 5}


def test_priors_required_when_the_model_uses_them(tmp_path):
    with pytest.raises(ValueError, match="priors"):
        train_stage2(tiny_cfg(), planted(12, 1, with_priors=False), planted(5, 2), tmp_path, progress=False)


def test_text_stream_wrong_dims_and_fresh_runs(splits, tmp_path):
    train, val = splits
    rng = np.random.default_rng(0)

    def with_text(d: Stage2Data) -> Stage2Data:
        text = {cid: rng.normal(size=(1, 4)).astype(np.float32) for cid in d.ids[::2]}  # half lack text
        return Stage2Data(d.vision, d.audio, text, d.labels, d.priors, absent={**d.absent, "text": d.ids[1::2]})

    model = EMIModelConfig.tiny(DV, DA, text_dim=4, use_text=True, fusion="equal")
    cfg = tiny_cfg(model=model, epochs=1)
    net, _ = train_stage2(cfg, with_text(train), with_text(val), tmp_path, progress=False)
    pred, weights, extras = predict(net, with_text(val))
    assert list(weights.columns) == ["vision", "audio", "text"] and extras["missing"]["text"] == 6
    assert (weights.loc[val.ids[1::2], "text"] == 0).all() and np.isfinite(pred.to_numpy()).all()
    bad = Stage2Data({**train.vision, train.ids[5]: np.zeros((4, DV + 1), np.float32)}, train.audio,
                     labels=train.labels, priors=train.priors, absent=train.absent)
    with pytest.raises(ValueError, match=f"clip {train.ids[5]} have shape"):
        train_stage2(tiny_cfg(), bad, val, tmp_path / "bad", progress=False)
    # a fresh run (resume=False) in a used folder never restores the older run's best weights
    old_best = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    net2, _ = train_stage2(tiny_cfg(lr=0.0, epochs=1, model=model), with_text(train), with_text(val), tmp_path,
                           progress=False, resume=False)
    assert any(not torch.equal(a, b) for a, b in zip(old_best.values(), net2.state_dict().values()))


def test_resume_check_treats_fields_added_later_as_their_default(tmp_path):
    from emi_lib.train.stage2_config import Stage2Config, check_resumable

    cfg = Stage2Config(max_len=16)
    old = {k: v for k, v in cfg.to_dict().items() if k != "bucket_by_length"}  # written before the field existed
    check_resumable(old, cfg, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="bucket_by_length"):
        check_resumable(old, Stage2Config(max_len=16, bucket_by_length=True), tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="lr"):
        check_resumable({**old, "lr": 0.5}, cfg, tmp_path / "checkpoint.pt")


def test_restore_best_without_a_best_checkpoint_raises(splits, tmp_path):
    train, val = splits
    flat = val.labels.copy()
    flat["Joy"] = 0.5  # a constant ground-truth column: every validation mean PCC is NaN, best.pt is never written
    val_nan = Stage2Data(val.vision, val.audio, labels=flat, priors=val.priors, absent=val.absent)
    with pytest.warns(Warning, match="constant"), pytest.raises(RuntimeError, match="every validation") as err:
        train_stage2(tiny_cfg(epochs=2), train, val_nan, tmp_path / "nan_run", progress=False)
    assert str(tmp_path / "nan_run") in str(err.value) and "best.pt" in str(err.value)
    assert not (tmp_path / "nan_run" / "best.pt").exists()
    with pytest.warns(Warning, match="constant"):
        _, hist = train_stage2(tiny_cfg(epochs=1, restore_best=False), train, val_nan, tmp_path / "last",
                               progress=False)
    assert hist["val_mean_pcc"].isna().all()  # restore_best=False: the last weights, as asked


def test_training_fits_the_prior_standardisation_on_the_train_clips(splits, run_a):
    train, _ = splits
    _, model, _ = run_a
    for m, col in (("vision", "face_quality"), ("audio", "audio_quality")):
        known = train.priors[col].dropna()  # clip 0's priors are NaN (unknown): not in the statistics
        enc = model.fusion.prior_input[m]
        assert math.isclose(enc.mean.item(), known.mean(), rel_tol=1e-5)
        assert math.isclose(enc.std.item(), known.std(ddof=0), rel_tol=1e-4)


def test_training_refuses_clips_that_lack_features_their_media_should_give(splits, tmp_path):
    """Clips lacking vision whose media are declared absent are missing modalities; clips lacking vision
    features that are not (a failed extraction) are refused above max_missing_share, named."""
    train, val = splits
    lost = [c for c in train.ids if c in train.vision][:2]  # 2 of 30 clips (6.7 %) lost their vision features
    broken = Stage2Data({k: v for k, v in train.vision.items() if k not in lost}, train.audio, labels=train.labels,
                        priors=train.priors, absent=train.absent)
    with pytest.raises(ValueError, match=rf"train: 2 of 30 clips .* no vision features .*{lost[0]}.*{lost[1]}"):
        train_stage2(tiny_cfg(epochs=1), broken, val, tmp_path / "a", progress=False)
    assert broken.unexplained_missing("vision") == lost and broken.unexplained_missing("audio") == []
    undeclared = Stage2Data(val.vision, val.audio, labels=val.labels, priors=val.priors)  # absent=None
    with pytest.raises(ValueError, match="valid: .*declares no absent media"):
        train_stage2(tiny_cfg(epochs=1), train, undeclared, tmp_path / "b", progress=False)
    train_stage2(tiny_cfg(epochs=1, max_missing_share=0.1), broken, val, tmp_path / "c", progress=False)
    # every step masked (e.g. no face found in any frame) is not a failure: the clip has features
    allnan = {**train.vision, lost[0]: np.full((4, DV), np.nan, np.float32)}
    assert Stage2Data(allnan, train.audio, labels=train.labels, absent=train.absent).unexplained_missing("vision") == []
    with pytest.raises(ValueError, match="max_missing_share"):
        tiny_cfg(max_missing_share=1.5)


def test_media_absent_reads_what_the_data_root_holds(tmp_path):
    import shutil

    from emi_lib.train.data import media_absent

    ids = write_tiny_root(tmp_path)
    shutil.rmtree(tmp_path / "face_images" / ids["train"][0])
    (tmp_path / "audio" / f"{ids['train'][2]}.mp3").write_bytes(b"")  # zero bytes: absent, as the extraction says
    got = media_absent(tmp_path, "train")
    # clip 1's transcript is empty: a silent clip, not an absent transcript
    assert got == {"vision": {ids["train"][0]}, "audio": {ids["train"][2]}, "text": set()}
    assert media_absent(tmp_path, "train", media={"vision": "vit"})["vision"] == set()
