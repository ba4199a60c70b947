"""Pooling, quality-guided fusion and its alternatives, and the assembled stage-2 model."""

from __future__ import annotations

import json

import pytest
import torch

from emi_lib.models import (
    MODEL_FUSIONS,
    EMIModel,
    EMIModelConfig,
    EqualFusion,
    QualityGuidedFusion,
    StaticFusion,
    build_fusion,
    count_parameters,
    make_pooling,
    masked_softmax,
    resample_linear,
)
from emi_lib.train import emi_loss

DV, DA, DT = 5, 4, 3


def _mask(lengths, t):
    return torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def _batch(b=4, tv=7, ta=6, v_len=None, a_len=None, text=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    v_len = v_len if v_len is not None else [tv] * b
    a_len = a_len if a_len is not None else [ta] * b
    out = {
        "vision": torch.randn(b, tv, DV, generator=g),
        "vision_mask": _mask(v_len, tv),
        "audio": torch.randn(b, ta, DA, generator=g),
        "audio_mask": _mask(a_len, ta),
        "priors": {"vision": torch.rand(b, generator=g), "audio": torch.rand(b, generator=g)},
    }
    if text:
        out["text"] = torch.randn(b, DT, generator=g)
        out["text_mask"] = torch.ones(b, dtype=torch.bool)
    return out


def _model(**kw):
    torch.manual_seed(0)
    return EMIModel(EMIModelConfig.tiny(DV, DA, text_dim=DT, **kw)).eval()


# ---------------------------------------------------------------- helpers and pooling


def test_masked_softmax_exact_zeros_and_all_masked_guard():
    s = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    w = masked_softmax(s, mask)
    assert torch.all(w[~mask] == 0) and torch.all(w[1] == 0)
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    w.pow(2).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("kind", ["mean", "attention"])
def test_pooling_ignores_padding_and_empty_clip_is_zero(kind):
    torch.manual_seed(0)
    pool = make_pooling(kind, 3, hidden=4)
    x = torch.randn(2, 4, 3)
    p = pool(x, _mask([4, 2], 4))
    x_long = torch.cat([x, 100 * torch.randn(2, 5, 3)], 1)
    x_long[1, 2:4] = -7.0
    torch.testing.assert_close(pool(x_long, _mask([4, 2], 9)), p)
    if kind == "mean":
        torch.testing.assert_close(p[1], x[1, :2].mean(0))
    empty = pool(x.requires_grad_(), _mask([0, 0], 4))
    assert torch.all(empty == 0)
    empty.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_resample_linear_known_values():
    x = torch.arange(5.0).reshape(1, 5, 1).repeat(3, 1, 1)
    y, m = resample_linear(x, _mask([5, 1, 0], 5), 9)
    torch.testing.assert_close(y[0, :, 0], torch.linspace(0, 4, 9))  # ramp stays a ramp
    torch.testing.assert_close(y[1, :, 0], torch.zeros(9))  # length 1: constant (x[0] = 0)
    assert torch.all(y[2] == 0) and m.tolist() == [[True] * 9, [True] * 9, [False] * 9]
    y3, _ = resample_linear(x, _mask([3, 3, 3], 5), 5)
    torch.testing.assert_close(y3[0, :, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))


# ---------------------------------------------------------------- fusion modules


def _streams(b=4):
    torch.manual_seed(1)
    seqs = {"vision": torch.randn(b, 6, 5), "audio": torch.randn(b, 5, 4)}
    masks = {"vision": _mask([6, 0, 3, 0], 6), "audio": _mask([5, 4, 0, 0], 5)}
    return seqs, masks


@pytest.mark.parametrize("kind", ["quality", "equal", "static", "concat"])
def test_weights_sum_to_one_and_missing_gets_exactly_zero(kind):
    torch.manual_seed(0)
    fusion = build_fusion(kind, {"vision": 5, "audio": 4}, 6, prior_dims={"vision": 1, "audio": 1})
    seqs, masks = _streams()
    out = fusion(seqs, masks, priors={"vision": torch.rand(4), "audio": torch.rand(4, 1)})
    w = out["weights"]
    assert w.shape == (4, 2) and out["modalities"] == ["vision", "audio"] and out["fused"].shape == (4, 6)
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert w[1, 0] == 0 and w[2, 1] == 0 and torch.all(w[3] == 0)  # missing -> exactly 0
    assert w[1, 1] == 1 and w[2, 0] == 1
    assert out["available"].tolist() == [[True, True], [False, True], [True, False], [False, False]]
    assert torch.isfinite(out["fused"]).all()
    if kind != "concat":
        assert torch.all(out["fused"][3] == 0)  # nothing available: nothing fused


def test_explicit_available_flag_zeroes_a_modality():
    torch.manual_seed(0)
    fusion = QualityGuidedFusion({"vision": 5, "audio": 4}, 6)
    seqs = {"vision": torch.randn(2, 3, 5), "audio": torch.randn(2, 3, 4)}
    out = fusion(seqs, available={"audio": torch.tensor([True, False])})
    assert out["weights"][1].tolist() == [1.0, 0.0] and 0 < out["weights"][0, 1] < 1


def test_equal_fusion_gives_half_half():
    fusion = EqualFusion({"vision": 5, "audio": 4}, 6)
    seqs, masks = _streams()
    w = fusion(seqs, masks)["weights"]
    assert w.tolist() == [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]


def test_static_fusion_is_one_learned_vector():
    fusion = StaticFusion({"vision": 5, "audio": 4}, 6)
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([1.0, 0.0]))
    seqs, masks = _streams()
    w = fusion(seqs, masks)["weights"]
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    torch.testing.assert_close(w[0], p)
    assert w[1].tolist() == [0.0, 1.0]


def test_gradients_reach_the_quality_estimator():
    torch.manual_seed(0)
    fusion = QualityGuidedFusion({"vision": 5, "audio": 4}, 6, prior_dims={"audio": 1})
    seqs, masks = _streams()
    out = fusion(seqs, masks, priors={"audio": torch.rand(4)})
    (out["fused"] * torch.randn_like(out["fused"])).sum().backward()
    for name, p in fusion.quality.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_prior_teaches_lower_weight():
    """Audio is replaced by a misleading stream on half the clips, flagged by its prior; after
    150 steps the quality estimator gives audio a low weight on exactly those clips, while
    without priors it cannot tell them apart."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    b, t, d = 64, 5, 6
    z = torch.rand(b, 6, generator=g)
    vis = (z + 0.3 * torch.randn(b, 6, generator=g)).unsqueeze(1) + 0.05 * torch.randn(b, t, d, generator=g)
    aud = z.unsqueeze(1) + 0.05 * torch.randn(b, t, d, generator=g)  # clean audio: better than vision
    noisy = torch.arange(b) % 2 == 1
    n = int(noisy.sum())
    aud[noisy] = torch.rand(n, 1, 6, generator=g) + 0.05 * torch.randn(n, t, d, generator=g)
    seqs = {"vision": vis, "audio": aud}
    priors = {"vision": torch.zeros(b), "audio": noisy.float()}
    fusion = QualityGuidedFusion({"vision": d, "audio": d}, 8, prior_dims={"vision": 1, "audio": 1}, hidden=8)
    head = torch.nn.Linear(8, 6)
    opt = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=3e-2)
    with torch.no_grad():
        w0 = fusion(seqs, priors=priors)["weights"][:, 1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest and immune to a busy shared CPU
    try:
        for _ in range(150):
            loss, _ = emi_loss(torch.sigmoid(head(fusion(seqs, priors=priors)["fused"])), z)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        w = fusion(seqs, priors=priors)["weights"][:, 1]
    assert w[noisy].mean() < 0.3 < w0[noisy].mean()
    assert w[~noisy].mean() - w[noisy].mean() > 0.5


@pytest.mark.parametrize("per_step", [False, True])
def test_per_step_weights(per_step):
    torch.manual_seed(0)
    fusion = QualityGuidedFusion({"vision": 5, "audio": 4}, 6, per_step=per_step, t_common=8)
    seqs, masks = _streams()
    out = fusion(seqs, masks)
    if not per_step:
        assert out["per_step_weights"] is None
        return
    w_t = out["per_step_weights"]
    assert w_t.shape == (4, 8, 2)
    torch.testing.assert_close(w_t.sum(-1), torch.tensor([1.0, 1.0, 1.0, 0.0]).unsqueeze(1).expand(4, 8))
    assert torch.all(w_t[1, :, 0] == 0) and torch.all(w_t[2, :, 1] == 0)
    torch.testing.assert_close(out["weights"], w_t.mean(1))
    assert torch.isfinite(out["fused"]).all() and torch.all(out["fused"][3] == 0)


# ---------------------------------------------------------------- the assembled model

VARIANTS = [dict(fusion=f) for f in MODEL_FUSIONS] + [
    dict(fusion="quality", use_text=True),
    dict(fusion="concat", use_text=True),
    dict(fusion="quality", per_step=True, use_text=True, pooling="attention"),
    dict(fusion="quality", swap_encoders=True, pooling="attention"),
    dict(fusion="quality", use_priors=False, lstm_gate=False, head_hidden=0, lstm_layers=2),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_every_variant_predicts_in_unit_interval_even_with_missing_modalities(kw):
    model = _model(**kw)
    batch = _batch(v_len=[7, 0, 3, 0], a_len=[6, 2, 0, 0], text=True)
    batch["text_mask"] = torch.tensor([True, True, False, False])
    model.train()
    out = model(batch)
    m = len(out["modalities"])
    assert out["pred"].shape == (4, 6) and out["weights"].shape == (4, m) and out["available"].shape == (4, m)
    assert torch.isfinite(out["pred"]).all() and torch.all((out["pred"] >= 0) & (out["pred"] <= 1))
    assert torch.isfinite(out["weights"]).all()
    s = out["weights"].sum(-1)
    any_avail = out["available"].any(-1)
    torch.testing.assert_close(s[any_avail], torch.ones(int(any_avail.sum())))
    assert torch.all(s[~any_avail] == 0) and torch.all(out["weights"][~out["available"]] == 0)
    loss, _ = emi_loss(out["pred"], torch.rand(4, 6))
    loss.backward()
    for name, p in model.named_parameters():  # every parameter is used (DDP-safe) and finite
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_model_padding_does_not_change_predictions():
    model = _model(fusion="quality", per_step=True)
    batch = _batch(b=2, tv=5, ta=4, v_len=[5, 3], a_len=[2, 4])
    out = model(batch)
    long = _batch(b=2, tv=11, ta=9, v_len=[5, 3], a_len=[2, 4], seed=3)  # garbage in the padding
    long["vision"][:, :5] = batch["vision"]
    long["audio"][:, :4] = batch["audio"]
    long["audio"][0, 2:4] = 42.0
    long["priors"] = batch["priors"]
    out_long = model(long)
    for key in ("pred", "weights", "per_step_weights", "fused"):
        torch.testing.assert_close(out_long[key], out[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(out_long["gates"]["audio"][:, :4], out["gates"]["audio"])


def test_model_with_both_streams_missing_uses_bias_or_text():
    model = _model(fusion="quality", use_text=True)
    batch = _batch(b=2, v_len=[0, 0], a_len=[0, 0], text=True)
    batch["text_mask"] = torch.tensor([True, False])
    out = model(batch)
    assert out["weights"].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    bias_only = torch.sigmoid(model.head(torch.zeros(1, model.cfg.fusion_dim)))[0]
    torch.testing.assert_close(out["pred"][1], bias_only)  # no stream: the head's bias path
    assert not torch.allclose(out["pred"][0], bias_only)  # the text path
    no_text = _model(fusion="equal")(_batch(b=2, v_len=[0, 0], a_len=[0, 0]))
    assert torch.isfinite(no_text["pred"]).all() and torch.all(no_text["weights"] == 0)


def test_model_outputs_gates_modalities_and_swap():
    out = _model()(_batch())
    assert out["modalities"] == ["vision", "audio"] and set(out["gates"]) == {"audio"}
    g = out["gates"]["audio"]
    assert g.shape[:2] == (4, 6) and torch.all((g > 0) & (g < 1))
    swapped = _model(swap_encoders=True)
    assert swapped.encoders["vision"].kind == "lstm" and swapped.encoders["audio"].kind == "tcn"
    assert set(swapped(_batch())["gates"]) == {"vision"}
    assert _model(fusion="vision_only")(_batch(text=True))["modalities"] == ["vision"]
    assert _model(fusion="audio_only", use_text=True)(_batch(text=True))["modalities"] == ["audio", "text"]


def test_config_round_trip_and_validation():
    cfg = EMIModelConfig.tiny(DV, DA, fusion="static", tcn_dilations=[1, 3], use_text=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert EMIModelConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        EMIModelConfig.from_dict({**d, "fusoin": "equal"})
    with pytest.raises(ValueError, match="fusion"):
        EMIModelConfig(fusion="sum")
    with pytest.raises(ValueError, match="per_step"):
        EMIModelConfig(fusion="equal", per_step=True)


def test_count_parameters():
    full, vision_only = _model(), _model(fusion="vision_only")
    n = count_parameters(full)
    assert 0 < n < 20_000 and count_parameters(vision_only) < n
    full.head.requires_grad_(False)
    assert count_parameters(full) < n == count_parameters(full, trainable_only=False)


def test_an_unknown_prior_is_flagged_not_read_as_the_worst_quality():
    """NaN (unknown) reaches the quality estimator as z = 0 (the training mean) with its indicator off; a known
    prior as (pi - mu) / sigma with the indicator on. A known 0 (the worst quality) and an unknown prior
    therefore score differently (they used to be the same input, nan_to_num -> 0)."""
    from emi_lib.models.fusion import PriorInput, prior_input_dim

    torch.manual_seed(0)
    fusion = QualityGuidedFusion({"vision": 5, "audio": 4}, 6, prior_dims={"vision": 1, "audio": 1})
    assert fusion.quality["vision"][0].in_features == 5 + prior_input_dim(1) == 5 + 2
    train = {"vision": torch.tensor([[0.2], [0.6], [float("nan")], [1.0]]), "audio": torch.rand(4, 1)}
    fusion.set_prior_stats(train)
    enc = fusion.prior_input["vision"]
    torch.testing.assert_close(enc.mean, torch.tensor([0.6]))
    torch.testing.assert_close(enc.std, torch.tensor([(0.32 / 3) ** 0.5]))  # over the 3 known values
    p = torch.tensor([float("nan"), 0.0, 0.6, 1.0])
    got = fusion._prior({"vision": p}, "vision", torch.zeros(4, 5))
    z = (p - 0.6) / enc.std
    torch.testing.assert_close(got, torch.stack([torch.tensor([0.0, z[1], 0.0, z[3]]),
                                                 torch.tensor([0.0, 1.0, 1.0, 1.0])], 1))
    assert fusion._prior({}, "vision", torch.zeros(4, 5)).eq(0).all()  # no prior tensor at all: all unknown
    seqs, masks = _streams()
    s = fusion(seqs, masks, priors={"vision": p, "audio": torch.rand(4)})["scores"][:, 0]
    same = {"vision": p.clone().fill_(0.0), "audio": torch.rand(4)}
    s0 = fusion(seqs, masks, priors=same)["scores"][:, 0]
    assert not torch.isclose(s[0], s0[0])  # unknown != worst
    with pytest.raises(ValueError, match="inf"):
        fusion(seqs, masks, priors={"vision": torch.full((4,), float("inf")), "audio": torch.rand(4)})
    with pytest.raises(ValueError, match="unknown"):
        PriorInput(1).set_stats(torch.full((3, 1), float("nan")), names=["face_quality"])
    assert "prior_input.vision.mean" in fusion.state_dict()  # the statistics travel with the checkpoint


@pytest.mark.parametrize("per_step", [False, True])
def test_weights_of_is_the_forwards_own_path(per_step):
    """QualityGuidedFusion.weights_of (what the timeline diagnostic calls) gives the forward's weights and scores,
    priors (known/unknown) included; a missing modality gets exactly 0."""
    torch.manual_seed(0)
    fusion = QualityGuidedFusion({"vision": 5, "audio": 4}, 6, prior_dims={"vision": 1, "audio": 1}, per_step=per_step,
                                 t_common=5)
    fusion.set_prior_stats({"vision": torch.rand(6, 1), "audio": torch.rand(6, 1)})
    seqs, masks = _streams()
    priors = {"vision": torch.tensor([0.1, float("nan"), 0.9, 0.5]), "audio": torch.rand(4)}
    available = {"audio": torch.tensor([True, True, False, True])}
    out = fusion(seqs, masks, available=available, priors=priors)
    if per_step:
        from emi_lib.models.fusion import resample_linear

        avail = out["available"]
        pooled = {m: resample_linear(seqs[m], masks[m], 5)[0] * avail[:, i, None, None]
                  for i, m in enumerate(fusion.names)}
        w, s = fusion.weights_of(pooled, priors, avail)
        assert torch.equal(w, out["per_step_weights"]) and torch.equal(s.mean(1), out["scores"])
    else:
        w, s = fusion.weights_of(out["pooled"], priors, out["available"])
        assert torch.equal(w, out["weights"]) and torch.equal(s, out["scores"])
    assert (w[2, ..., 1] == 0).all()  # clip 2 lacks audio
