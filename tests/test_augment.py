"""Training-time augmentation (modality dropout, face spans, audio noise) and the auxiliary per-modality heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_stage2_train import DA, DV, planted, tiny_cfg

from emi_lib.models import EMIModel, EMIModelConfig
from emi_lib.train import Stage2Config, TrainingInterrupted, predict, train_stage2
from emi_lib.train.augment import augment_batch, augment_generator, noise_mix
from emi_lib.train.config import stage2_config
from emi_lib.train.losses import aux_head_loss, emi_loss, stage2_loss
from emi_lib.train.stage2_config import check_resumable
from emi_lib.train.stage2_predict import stage2_dataset

DT = 4
TWO_PRIORS = {"vision": ["face_quality", "face_share"], "audio": ["audio_quality", "audio_snr_db"]}



def make_batch(n: int, seed: int = 0, text: bool = False, n_priors: int = 1, no_vision: bool = False) -> dict:
    """A collate-format batch: prefix masks of random lengths; every 5th clip lacks vision, every 7th
    audio, every 3rd text; clip 0 has no stream at all; every 4th clip has NaN priors."""
    g = torch.Generator().manual_seed(seed)
    batch = {"ids": [f"{i:05d}" for i in range(n)], "available": {}, "priors": {}}
    for m, t, d, every in (("vision", 6, DV, 5), ("audio", 8, DA, 7)):
        length = torch.randint(1, t + 1, (n,), generator=g)
        length[::every] = 0
        length[0] = 0
        if m == "vision" and no_vision:
            length[:] = 0
        mask = torch.arange(t).unsqueeze(0) < length.unsqueeze(1)
        batch[m] = torch.randn(n, t, d, generator=g) * mask.unsqueeze(-1)
        batch[f"{m}_mask"], batch["available"][m] = mask, mask.any(1)
        pri = torch.rand(n, n_priors, generator=g)
        if m == "audio":
            pri[:, 1:] *= 40.0  # an audio_snr_db-like second column
        pri[::4] = float("nan")
        batch["priors"][m] = pri
    if text:
        tmask = torch.ones(n, dtype=torch.bool)
        tmask[::3] = False
        batch["text"], batch["text_mask"] = torch.randn(n, DT, generator=g) * tmask.unsqueeze(-1), tmask
        batch["available"]["text"] = tmask
    return batch


def cfg_for(**kw) -> Stage2Config:
    model = kw.pop("model", EMIModelConfig.tiny(DV, DA))
    return Stage2Config(model=model, device="cpu", max_len=10, **kw)


def avail_matrix(batch, streams):
    return torch.stack([batch["available"][m] & batch[f"{m}_mask"].reshape(len(batch["ids"]), -1).any(1)
                        for m in streams], 1)


def test_modality_dropout_keeps_a_stream_and_hits_the_share():
    streams = ["vision", "audio", "text"]
    cfg = cfg_for(model=EMIModelConfig.tiny(DV, DA, text_dim=DT, use_text=True), modality_dropout=0.3)
    batch = make_batch(2000, text=True)
    keep = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    out = augment_batch(batch, cfg, augment_generator(0, 0, 0))
    for k, v in keep.items():  # the input batch is left unchanged
        assert torch.equal(v, batch[k]), k
    before, after = avail_matrix(batch, streams), avail_matrix(out, streams)
    lost = before.sum(1) - after.sum(1)
    assert (after <= before).all() and lost.max() == 1
    multi = before.sum(1) >= 2
    assert lost[~multi].sum() == 0 and (after.sum(1) >= 1)[before.sum(1) >= 1].all()  # never every stream
    assert abs(lost[multi].float().mean().item() - 0.3) < 0.04  # 1.6k clips: sd 0.012
    full = before.all(1) & (lost == 1)
    per_stream = (before & ~after)[full].float().mean(0)
    assert ((per_stream > 0.22) & (per_stream < 0.45)).all(), per_stream  # uniform among the three
    for i, m in enumerate(streams):
        gone = before[:, i] & ~after[:, i]
        assert gone.any() and (out[m][gone] == 0).all() and not out[f"{m}_mask"][gone].any()
        kept = ~gone
        assert torch.equal(out[m][kept], batch[m][kept])
        if m in out["priors"]:
            assert torch.isnan(out["priors"][m][gone]).all()
    again = augment_batch(batch, cfg, augment_generator(0, 0, 0))  # deterministic
    assert all(torch.equal(again[m], out[m]) for m in streams)


def test_generator_is_a_pure_function_of_seed_epoch_step_rank():
    def draw(*a):
        return torch.rand(5, generator=augment_generator(*a))

    assert torch.equal(draw(3, 1, 2), draw(3, 1, 2))
    for other in ((3, 1, 3), (3, 2, 2), (4, 1, 2), (3, 1, 2, 1)):
        assert not torch.equal(draw(3, 1, 2), draw(*other))


def _span_removed(old: torch.Tensor, new: torch.Tensor, length: int, k: int) -> bool:
    return any(torch.equal(new, torch.cat([old[:s], old[s + k: length]])) for s in range(length - k + 1))


def test_face_span_masks_steps_and_lowers_the_prior():
    model = EMIModelConfig.tiny(DV, DA, prior_dims={"vision": 2, "audio": 2})
    cfg = cfg_for(model=model, prior_columns=TWO_PRIORS, corrupt_prob=1.0, corrupt_face_span=(0.5, 0.5))
    batch = make_batch(300, n_priors=2)
    out = augment_batch(batch, cfg, augment_generator(1, 0, 0))
    len0, len1 = batch["vision_mask"].sum(1), out["vision_mask"].sum(1)
    face = len1 < len0
    has_a = batch["available"]["audio"]
    assert 0.35 < face[batch["available"]["vision"] & has_a].float().mean() < 0.65  # face or audio, 50/50
    assert face[batch["available"]["vision"] & ~has_a & (len0 >= 2)].all()  # the only corruptible stream
    t = torch.arange(out["vision_mask"].shape[1])
    assert torch.equal(out["vision_mask"], t < len1.unsqueeze(1))  # still a prefix mask
    for i in face.nonzero().squeeze(1).tolist():
        n0 = int(len0[i])
        k = min(max(round(0.5 * n0), 1), n0 - (0 if has_a[i] else 1))
        assert int(len1[i]) == n0 - k and _span_removed(batch["vision"][i], out["vision"][i, : n0 - k], n0, k)
        assert (out["vision"][i, n0 - k:] == 0).all() and torch.equal(out["audio"][i], batch["audio"][i])
        p0, p1 = batch["priors"]["vision"][i], out["priors"]["vision"][i]
        torch.testing.assert_close(p1, p0 * (n0 - k) / n0, equal_nan=True)
    nan_rows = torch.isnan(batch["priors"]["vision"][:, 0])
    assert (face & nan_rows).any() and torch.isnan(out["priors"]["vision"][nan_rows]).all()
    # a span covering every step: vision disappears unless it is the clip's only stream (one step kept)
    full = augment_batch(batch, cfg_for(model=model, prior_columns=TWO_PRIORS, corrupt_prob=1.0,
                                        corrupt_face_span=(1.0, 1.0)), augment_generator(1, 0, 0))
    hit = full["vision_mask"].sum(1) < len0
    alone = hit & ~has_a
    assert alone.any() and (full["vision_mask"].sum(1)[alone] == 1).all() and full["available"]["vision"][alone].all()
    gone = hit & has_a
    assert gone.any() and not full["available"]["vision"][gone].any()
    assert (full["priors"]["vision"][gone & ~nan_rows] == 0).all()


def test_face_span_on_a_mask_with_holes_cuts_valid_steps_only():
    """A masked step inside the clip (e.g. a frame without a face) keeps its place outside the span."""
    batch = make_batch(64, no_vision=True)
    holes = torch.tensor([1, 1, 0, 1, 1, 1, 0, 0][:6], dtype=torch.bool)  # 5 valid steps of 6
    batch["vision_mask"] = holes.repeat(64, 1)
    batch["vision"] = torch.randn(64, 6, DV) * batch["vision_mask"].unsqueeze(-1)
    batch["available"]["vision"] = torch.ones(64, dtype=torch.bool)
    out = augment_batch(batch, cfg_for(corrupt_prob=1.0, corrupt_face_span=(0.4, 0.4)), augment_generator(0, 0, 0))
    face = out["vision_mask"].sum(1) < 5
    assert face.any()
    for i in face.nonzero().squeeze(1).tolist():
        old, new = batch["vision"][i][holes], out["vision"][i][out["vision_mask"][i]]
        assert len(new) == 3 and _span_removed(old, new, 5, 2)
        assert (out["vision"][i][~out["vision_mask"][i]] == 0).all()


def test_audio_noise_follows_the_snr_and_bounds_the_priors():
    model = EMIModelConfig.tiny(DV, DA, prior_dims={"vision": 2, "audio": 2})
    batch = make_batch(200, n_priors=2, no_vision=True)  # every corruption goes to the audio
    has = batch["available"]["audio"]
    assert math.isclose(noise_mix(torch.tensor(0.0)).item(), 0.5)
    rel = {}
    for snr in (-10.0, 40.0):
        cfg = cfg_for(model=model, prior_columns=TWO_PRIORS, corrupt_prob=1.0, corrupt_snr_db=(snr, snr))
        out = augment_batch(batch, cfg, augment_generator(0, 2, 5))
        x0, x1 = batch["audio"][has], out["audio"][has]
        rel[snr] = ((x1 - x0).norm() / x0.norm()).item()
        assert torch.equal(out["audio_mask"], batch["audio_mask"])
        assert (out["audio"][~batch["audio_mask"]] == 0).all()  # padding (and a missing stream) untouched
        assert not out["vision_mask"].any() and (out["vision"] == 0).all()
        p0, p1 = batch["priors"]["audio"], out["priors"]["audio"]
        nan = torch.isnan(p0[:, 0])
        assert torch.isnan(p1[nan]).all()
        ok = has & ~nan
        torch.testing.assert_close(p1[ok, 0], p0[ok, 0].clamp(max=min(max(snr / 40, 0.0), 1.0)))
        torch.testing.assert_close(p1[ok, 1], p0[ok, 1].clamp(max=snr))
    assert rel[-10.0] > 0.5 and rel[40.0] < 0.03, rel


def test_evaluation_and_predict_are_never_augmented(tmp_path):
    train, val = planted(30, 1), planted(13, 2)
    plain = tiny_cfg(epochs=1, lr=0.0)  # lr 0: both runs end with the same (initial) weights
    aug = tiny_cfg(epochs=1, lr=0.0, modality_dropout=0.5, corrupt_prob=1.0)
    net0, h0 = train_stage2(plain, train, val, tmp_path / "plain", progress=False)
    net1, h1 = train_stage2(aug, train, val, tmp_path / "aug", progress=False)
    for a, b in zip(net0.state_dict().values(), net1.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert h0["train_loss"].iloc[0] != h1["train_loss"].iloc[0]  # training batches were augmented
    assert h0["val_mean_pcc"].iloc[0] == h1["val_mean_pcc"].iloc[0] and h0["val_loss"].iloc[0] == h1["val_loss"].iloc[0]
    p0, w0, _ = predict(net0, val, cfg=plain)
    p1, w1, _ = predict(net0, val, cfg=aug)
    assert p0.equals(p1) and w0.equals(w1)


@pytest.mark.parametrize("kw", [dict(), dict(per_step=True), dict(pooling="attention", fusion="concat")])
def test_aux_heads_shapes(kw):
    model = EMIModel(EMIModelConfig.tiny(DV, DA, text_dim=DT, use_text=True, aux_heads=True, **kw))
    batch = make_batch(9, text=True)
    out = model(batch)
    assert set(out["aux_pred"]) == {"vision", "audio", "text"}
    for p in out["aux_pred"].values():
        assert p.shape == (9, 6) and torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert EMIModel(EMIModelConfig.tiny(DV, DA))(batch)["aux_pred"] is None


def test_state_dict_unchanged_without_aux_heads():
    torch.manual_seed(0)
    base = EMIModel(EMIModelConfig.tiny(DV, DA)).state_dict()
    torch.manual_seed(0)
    aux = EMIModel(EMIModelConfig.tiny(DV, DA, aux_heads=True)).state_dict()
    assert not any("aux" in k for k in base)
    assert sorted(set(aux) - set(base)) == [f"aux_head.{m}.{p}" for m in ("audio", "vision") for p in ("bias", "weight")]
    for k, v in base.items():  # built after everything else: the shared weights draw the same init
        assert torch.equal(v, aux[k]), k
    EMIModel(EMIModelConfig.tiny(DV, DA, aux_heads=False)).load_state_dict(base, strict=True)


def test_aux_loss_skips_thin_streams_and_decreases():
    g = torch.Generator().manual_seed(0)
    y, pv, pa = (torch.rand(6, 6, generator=g) for _ in range(3))
    one = torch.zeros(6, dtype=torch.bool)
    one[2] = True  # a single available audio clip: no batch Pearson r, skipped
    loss = aux_head_loss({"vision": pv, "audio": pa}, y, {"vision": torch.ones(6, dtype=torch.bool), "audio": one})
    torch.testing.assert_close(loss, emi_loss(pv, y)[0])
    mcfg = EMIModelConfig.tiny(DV, DA, aux_heads=True)
    cfg = tiny_cfg(model=mcfg, aux_weight=1.0)
    batch = stage2_dataset(cfg, planted(30, 1)).collate(range(30))
    torch.manual_seed(0)
    net = EMIModel(mcfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    aux = []
    for _ in range(60):
        total, parts = stage2_loss(net(batch), batch["labels"], aux_weight=1.0)
        opt.zero_grad()
        total.backward()
        opt.step()
        aux.append(parts["aux"].item())
    assert aux[-1] < 0.7 * aux[0], aux[::10]


def test_resume_with_augmentation_matches_the_uninterrupted_run(tmp_path):
    train, val = planted(30, 1), planted(13, 2)
    model = EMIModelConfig.tiny(DV, DA, tcn_dropout=0.2, lstm_dropout=0.2, head_dropout=0.2, aux_heads=True)
    cfg = tiny_cfg(model=model, modality_dropout=0.3, corrupt_prob=0.5, aux_weight=0.3, ckpt_every_steps=2)
    net_a, hist_a = train_stage2(cfg, train, val, tmp_path / "a", progress=False)
    with pytest.raises(TrainingInterrupted):
        train_stage2(cfg, train, val, tmp_path / "b", progress=False, stop_after_steps=5)
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 1, 4)  # killed mid-epoch 2
    net_b, hist_b = train_stage2(cfg, train, val, tmp_path / "b", progress=False)
    cols = [c for c in hist_a.columns if c != "epoch_time_s"]
    np.testing.assert_allclose(hist_b[cols].to_numpy(float), hist_a[cols].to_numpy(float), rtol=0, atol=1e-6)
    for (k, va), vb in zip(net_a.state_dict().items(), net_b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
    plain, _ = train_stage2(tiny_cfg(model=model, aux_weight=0.3), train, val, tmp_path / "c", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(net_a.state_dict().values(), plain.state_dict().values()))


def test_config_fields_budgets_and_validation(tmp_path):
    dims = {"vision": DV, "audio": DA}
    default = stage2_config("smoke", dims)  # the recipe: dropout and corruption training on, no auxiliary heads
    assert (default.modality_dropout, default.corrupt_prob, default.aux_weight) == (0.3, 0.3, 0.0)
    assert not default.model["aux_heads"]
    off = stage2_config("smoke", dims, modality_dropout=0.0, corrupt_prob=0.0)
    assert (off.modality_dropout, off.corrupt_prob) == (0.0, 0.0)
    on = stage2_config("smoke", dims, modality_dropout=0.3, corrupt_prob=0.5, aux_weight=0.3,
                       corrupt_snr_db=(0.0, 10.0))
    assert (on.modality_dropout, on.corrupt_prob, on.aux_weight) == (0.3, 0.5, 0.3)
    assert on.model["aux_heads"] and on.corrupt_snr_db == [0.0, 10.0] and on.corrupt_face_span == [0.3, 1.0]
    assert stage2_config("smoke", dims, aux_heads=True).model["aux_heads"]
    with pytest.raises(TypeError, match="modality_drop"):
        stage2_config("smoke", dims, modality_drop=0.3)
    cfg = tiny_cfg(corrupt_face_span=(0.2, 0.4), modality_dropout=0.3)
    assert Stage2Config.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    for bad in (dict(modality_dropout=1.5), dict(corrupt_prob=-0.1), dict(corrupt_face_span=(0.8, 0.2)),
                dict(corrupt_snr_db=(0.0,)), dict(aux_weight=0.3)):  # aux_weight without aux heads
        with pytest.raises(ValueError):
            tiny_cfg(**bad)
    # a checkpoint written before these fields existed resumes as if they were off
    old = cfg_for().to_dict()
    for k in ("modality_dropout", "corrupt_prob", "corrupt_face_span", "corrupt_snr_db", "aux_weight"):
        old.pop(k)
    old["model"].pop("aux_heads")
    check_resumable(old, cfg_for(), tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="modality_dropout"):
        check_resumable(old, cfg_for(modality_dropout=0.1), tmp_path / "checkpoint.pt")
