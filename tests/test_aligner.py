"""Stage-1 aligner: open_clip ClipLoss use, temperature clamp, label-aware loss, masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emi_lib.models.aligner import AlignerConfig, ModalityTextAligner
from emi_lib.models.padding import pad_batch

D, DT = 10, 12


def _losses():
    """open_clip's ClipLoss and ours, imported by the tests that use them: importing open_clip costs each test
    worker about 3 s, and collection imports every test module."""
    from open_clip.loss import ClipLoss

    from emi_lib.models.clip_loss import LabelAwareClipLoss, build_loss, label_distance

    return ClipLoss, LabelAwareClipLoss, build_loss, label_distance


def _feats(b=8, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, e, generator=g), dim=-1),
            F.normalize(torch.randn(b, e, generator=g), dim=-1))


def _model(**kw) -> ModalityTextAligner:
    torch.manual_seed(0)
    return ModalityTextAligner(AlignerConfig.tiny(D, DT, **kw)).eval()


def test_clip_loss_is_symmetric():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    v, t = _feats()
    loss = ClipLoss()
    s = torch.tensor(14.3)
    assert torch.allclose(loss(v, t, s), loss(t, v, s), atol=1e-6)


def test_aligned_batch_beats_shuffled():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    v, _ = _feats(b=16)
    loss = ClipLoss()
    s = torch.tensor(1 / 0.07)
    aligned = loss(v, v, s)
    shuffled = loss(v, v[torch.roll(torch.arange(16), 1)], s)
    assert aligned < shuffled


def test_forward_feeds_clip_loss_and_init_scale():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    m = _model()
    x, mask = pad_batch([np.random.default_rng(i).normal(size=(3 + i, D)) for i in range(6)])
    t = torch.randn(6, DT)
    v, u, s = m(x, mask, t)
    assert v.shape == u.shape == (6, 16)
    assert torch.allclose(v.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert math.isclose(s.item(), 1 / 0.07, rel_tol=1e-5)
    assert torch.isfinite(ClipLoss()(v, u, s))


@pytest.mark.parametrize("start, expected", [(math.log(1000), math.log(100)), (-1.0, 0.0)])
def test_temperature_clamp_after_step(start, expected):
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    m = _model()
    m.train()
    with torch.no_grad():
        m.logit_scale.fill_(start)
    opt = torch.optim.SGD([m.logit_scale], lr=1e-6)
    x, mask = pad_batch([np.ones((4, D)) * i for i in range(1, 5)])
    loss = ClipLoss()(*m(x, mask, torch.randn(4, DT)))
    loss.backward()
    opt.step()
    m.clamp_logit_scale()
    assert math.isclose(m.logit_scale.item(), expected, abs_tol=1e-6)


def test_label_aware_equals_clip_loss_without_near_duplicates():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    v, t = _feats(b=6)
    s = torch.tensor(10.0)
    labels = torch.eye(6)  # pairwise mean-L1 distance 1/3 > threshold
    la = LabelAwareClipLoss(threshold=0.05)
    out = la(v, t, s, labels=labels)
    assert la.last_masked_pairs == 0
    assert torch.equal(out, ClipLoss()(v, t, s))
    assert torch.equal(la(v, t, s), ClipLoss()(v, t, s))  # no labels: plain ClipLoss


def test_label_aware_lower_with_duplicates():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    v, t = _feats(b=6)
    s = torch.tensor(10.0)
    labels = torch.eye(6)
    labels[1] = labels[0]
    labels[3] = labels[2] + 0.01
    la = LabelAwareClipLoss(threshold=0.05)
    out = la(v, t, s, labels=labels)
    assert la.last_masked_pairs == 4  # (0,1), (1,0), (2,3), (3,2)
    assert out < ClipLoss()(v, t, s)
    assert torch.isfinite(out)
    # gradient is finite through the -inf masked logits
    v2 = v.clone().requires_grad_(True)
    la(v2, t, s, labels=labels).backward()
    assert torch.isfinite(v2.grad).all()


def test_label_distance_cosine_handles_zero_rows():
    ClipLoss, LabelAwareClipLoss, build_loss, label_distance = _losses()
    y = torch.tensor([[0.0] * 6, [0.0] * 6, [1.0, 0, 0, 0, 0, 0], [2.0, 0, 0, 0, 0, 0]])
    d = label_distance(y, "cosine")
    assert d[0, 1] == 0 and d[0, 2] == 1 and abs(float(d[2, 3])) < 1e-6
    assert isinstance(build_loss(AlignerConfig.tiny(D, DT, label_aware=True)), LabelAwareClipLoss)
    assert type(build_loss(AlignerConfig.tiny(D, DT))) is ClipLoss


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_padding_does_not_change_clip_embedding(pooling):
    m = _model(pooling=pooling, frame_layers=2)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, D)).astype(np.float32)
    x1, m1 = pad_batch([a])
    x2, m2 = pad_batch([a, rng.normal(size=(17, D))])
    x2[0, 5:] = 1e3  # garbage in padded slots must not leak
    with torch.no_grad():
        e1, e2 = m.encode_clip(x1, m1)[0], m.encode_clip(x2, m2)[0]
        f2 = m.encode_frames(x2, m2)
    assert torch.allclose(e1, e2, atol=1e-6)
    assert (f2[0, 5:] == 0).all()


def test_empty_clip_gets_zero_embedding_and_no_nan():
    m = _model()
    x, mask = pad_batch([np.zeros((0, D)), np.ones((3, D))])
    assert not mask[0].any() and mask[1].sum() == 3
    with torch.no_grad():
        e = m.encode_clip(x, mask)
    assert torch.isfinite(e).all()
    assert (e[0] == 0).all() and abs(float(e[1].norm()) - 1) < 1e-5
    # all-empty batch needs dim and still works
    x, mask = pad_batch([np.zeros((0,)), np.zeros((0, D))], dim=D)
    assert x.shape == (2, 1, D) and not mask.any()


def test_pad_batch_subsamples_long_sequences():
    a = np.arange(100, dtype=np.float32)[:, None].repeat(D, axis=1)
    x, mask = pad_batch([a, a[:3]], max_steps=10)
    assert x.shape == (2, 10, D) and mask[0].all() and mask[1].sum() == 3
    assert x[0, 0, 0] == 0 and x[0, -1, 0] == 99


def test_frozen_text_projector_and_config_roundtrip():
    cfg = AlignerConfig.tiny(D, DT, text_trainable=False)
    m = ModalityTextAligner(cfg)
    assert not any(p.requires_grad for p in m.text_proj.parameters())
    assert AlignerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        AlignerConfig.from_dict({**cfg.to_dict(), "typo": 1})
    with pytest.raises(ValueError):
        AlignerConfig(pooling="max")


def test_input_statistics_are_fitted_on_valid_steps_and_saved(tmp_path):
    """Heterogeneous inputs (one dimension in the thousands) are z-scored per dimension inside the model,
    from the training frames' valid steps; the statistics travel with the checkpoint."""
    from emi_lib.models.aligner import AlignerConfig, ModalityTextAligner
    from emi_lib.train.stage1 import load_aligner, save_aligner

    rng = np.random.default_rng(0)
    a = np.stack([rng.normal(1000, 50, 40), rng.normal(0, 0.01, 40), np.full(40, 3.0)], axis=1).astype(np.float32)
    a[5] = np.nan  # a masked step
    cfg = AlignerConfig.tiny(3, 4)
    m = ModalityTextAligner(cfg)
    m.fit_input_stats([a])
    ok = ~np.isnan(a).any(1)
    np.testing.assert_allclose(m.in_mean.numpy(), a[ok].mean(0), rtol=1e-5)
    np.testing.assert_allclose(m.in_std.numpy()[:2], a[ok].std(0)[:2], rtol=1e-4)
    assert m.in_std[2] == 1.0  # a constant dimension is not divided by 0
    path = save_aligner(m, cfg, tmp_path / "a.pt")
    back, _ = load_aligner(path)
    assert torch.equal(back.in_mean, m.in_mean) and torch.equal(back.in_std, m.in_std)


def test_aligner_saved_with_the_former_pooling_names_loads_strictly():
    """The attention pooling is shared with the fusion (emi_lib.models.pooling); an aligner state dict that
    names its parameters pool.V / pool.w, as saved before, loads strictly with the same values."""
    model = _model()
    sd = model.state_dict()
    assert {"pool.score.0.weight", "pool.score.2.weight"} <= set(sd) and "pool.score.0.bias" not in sd
    former = {k.replace("pool.score.0.", "pool.V.").replace("pool.score.2.", "pool.w."): v.clone() + 1.0
              for k, v in sd.items()}
    fresh = _model()
    fresh.load_state_dict(former, strict=True)
    assert torch.equal(fresh.state_dict()["pool.score.0.weight"], former["pool.V.weight"])
    assert torch.equal(fresh.state_dict()["pool.score.2.weight"], former["pool.w.weight"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**sd, "pool.extra": torch.zeros(1)}, strict=True)  # strict all the same
