"""Stage-1 training on planted synthetic features, checkpoints, export, retrieval and probes."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.eval.retrieval import linear_probe, mean_pool, probe_table, retrieval_recall
from emi_lib.models.aligner import AlignerConfig
from emi_lib.models.padding import pad_batch
from emi_lib.train.stage1 import export_aligned, load_aligner, save_aligner, train_aligner
from emi_lib.viz.stage1_plots import plot_embedding_pca, plot_retrieval, plot_stage1_losses, plot_temperature

D, DT = 10, 12


def planted(n: int, seed: int, n_empty: int = 0):
    """Clips whose frames and text both carry a latent z (the labels): text = zA + noise,
    frame_t = env_t * zB + noise, T in [3, 12]."""
    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(123)  # the same maps for every split
    a, b = proj.normal(size=(6, DT)), proj.normal(size=(6, D))
    z = rng.uniform(size=(n, 6)) * (rng.uniform(size=(n, 6)) < 0.5)
    ids = [f"{seed:02d}{i:03d}" for i in range(n)]
    feats, text = {}, {}
    for i, cid in enumerate(ids):
        t = rng.integers(3, 13)
        env = np.sin(np.linspace(0.2, 3.0, t))[:, None]
        feats[cid] = (env * (z[i] @ b) + 0.3 * rng.normal(size=(t, D))).astype(np.float32)
        text[cid] = (z[i] @ a + 0.05 * rng.normal(size=DT)).astype(np.float32)
    for cid in ids[:n_empty]:
        feats[cid] = np.zeros((0, D), dtype=np.float32)
    labels = pd.DataFrame(z, index=ids, columns=list(EMOTIONS))
    return feats, text, labels


@pytest.fixture(scope="module")
def trained():
    tr_f, tr_t, tr_y = planted(96, seed=1, n_empty=4)
    va_f, va_t, va_y = planted(40, seed=2, n_empty=2)
    cfg = AlignerConfig.tiny(D, DT, epochs=12, lr=3e-3, batch_size=16, device="cpu")
    model, hist = train_aligner(cfg, tr_f, tr_t, va_f, va_t, progress=False)
    return cfg, model, hist, (tr_f, tr_t, tr_y), (va_f, va_t, va_y)


def test_training_beats_chance_and_logs_history(trained):
    cfg, model, hist, _, _ = trained
    assert list(hist.index) == list(range(cfg.epochs + 1))
    for col in ["train_loss", "val_loss", "logit_scale", "scale", "temperature",
                "val_clip2text_R@1", "val_clip2text_R@5", "val_text2clip_R@1", "val_text2clip_R@5"]:
        assert col in hist
    chance = hist["val_chance_R@1"].iloc[-1]
    assert math.isclose(chance, 1 / 38)
    assert hist["val_clip2text_R@1"].iloc[-1] > 3 * chance
    assert hist["val_text2clip_R@1"].iloc[-1] > 3 * chance
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    assert (hist["logit_scale"] >= 0).all() and (hist["logit_scale"] <= math.log(100) + 1e-6).all()
    assert np.allclose(hist["temperature"] * hist["scale"], 1.0)


def test_export_probe_and_plots(trained):
    _, model, hist, (tr_f, _, tr_y), (va_f, va_t, va_y) = trained
    ex_tr, ex_va = export_aligned(model, tr_f), export_aligned(model, va_f)
    assert set(ex_va.clip_emb) == set(va_f) and len(ex_va.missing) == 2
    for cid in ex_va.missing:
        assert ex_va.frame_seq[cid].shape == (0, 16) and not ex_va.clip_emb[cid].any()
    cid = sorted(set(va_f) - set(ex_va.missing))[0]
    assert ex_va.frame_seq[cid].shape == (len(va_f[cid]), 16)
    # export's batched clip embedding equals a single-clip forward
    x, m = pad_batch([va_f[cid]])
    with torch.no_grad():
        assert np.allclose(model.encode_clip(x, m)[0].numpy(), ex_va.clip_emb[cid], atol=1e-5)

    ids_tr, ids_va = list(tr_y.index), list(va_y.index)
    aligned_tr = np.stack([ex_tr.clip_emb[i] for i in ids_tr])
    aligned_va = np.stack([ex_va.clip_emb[i] for i in ids_va])
    raw_tr, empty = mean_pool(tr_f, ids_tr)
    raw_va, _ = mean_pool(va_f, ids_va)
    assert empty.sum() == 4 and not raw_tr[empty].any()
    score = linear_probe(aligned_tr, tr_y, aligned_va, va_y)
    assert math.isfinite(score["mean"]) and score["mean"] > 0.2
    table = probe_table({"raw": (raw_tr, raw_va), "aligned": (aligned_tr, aligned_va)}, tr_y, va_y)
    assert list(table.index) == ["raw", "aligned"] and list(table.columns) == [*EMOTIONS, "mean"]
    assert np.isfinite(table.to_numpy()).all()

    rec = retrieval_recall(aligned_va[2:], model.encode_text(torch.tensor(np.stack([va_t[i] for i in ids_va[2:]])))
                           .detach().numpy())
    for fig in (plot_stage1_losses({"vision": hist}), plot_temperature(hist),
                plot_retrieval({"vision": rec}), plot_embedding_pca(ex_va.clip_emb, va_y)):
        assert fig.axes
        plt.close(fig)


def test_save_load_roundtrip_and_strict(trained, tmp_path):
    cfg, model, _, _, (va_f, va_t, _) = trained
    path = save_aligner(model, cfg, tmp_path / "vision_aligner.pt")
    assert path.exists() and path.with_suffix(".json").exists()
    assert not list(tmp_path.glob("*.tmp*"))
    loaded, cfg2 = load_aligner(path)
    assert cfg2 == cfg
    x, m = pad_batch([va_f[i] for i in list(va_f)[:8]], dim=D)
    t = torch.tensor(np.stack([va_t[i] for i in list(va_t)[:8]]))
    with torch.no_grad():
        for a, b in zip(model(x, m, t), loaded(x, m, t)):
            assert torch.equal(a, b)
    # the aligned export goes through the FeatureStore that stage 2 reads, empty clips included
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.stage1 import write_aligned

    ex = export_aligned(loaded, va_f)
    store = FeatureStore(tmp_path / "features")
    write_aligned(store, ex, "vision_aligned", "stage1", "valid", clip_modality="vision_aligned_clip")
    back = store.load_split("vision_aligned", "stage1", "valid")
    assert set(back) == set(va_f) and all(np.array_equal(back[i], ex.frame_seq[i]) for i in back)
    assert store.read("vision_aligned", "stage1", "valid", ex.missing[0]).shape == (0, 16)
    assert store.read("vision_aligned_clip", "stage1", "valid", ex.missing[0]).shape == (1, 16)

    state = torch.load(path, weights_only=True)
    state.pop("logit_scale")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_aligner(path)


def test_retrieval_recall_definitions():
    e = np.eye(4)
    r = retrieval_recall(e, e, ks=(1, 2))
    assert r["clip2text_R@1"] == 1.0 and r["text2clip_R@1"] == 1.0 and r["chance_R@1"] == 0.25
    z = np.ones((4, 3))  # degenerate: every similarity ties -> pessimistic 0, never 1
    assert retrieval_recall(z, z)["clip2text_R@1"] == 0.0
    # identical prompts: strict recall undercounts, keys recover the hit
    text = np.array([[1.0, 0], [1.0, 0], [0, 1.0]])
    clip = np.array([[1.0, 0.1], [1.0, 0.1], [0.1, 1.0]])
    assert retrieval_recall(clip, text, ks=(1,))["clip2text_R@1"] == pytest.approx(1 / 3)
    rk = retrieval_recall(clip, text, ks=(1,), text_keys=["joy", "joy", "pain"])
    assert rk["clip2text_R@1"] == 1.0 and rk["text2clip_R@1"] == 1.0
    assert rk["chance_keys_R@1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)


def test_label_aware_training_runs_and_requires_labels():
    f, t, y = planted(40, seed=3)
    cfg = AlignerConfig.tiny(D, DT, epochs=2, label_aware=True, label_aware_threshold=0.3, device="cpu")
    with pytest.raises(ValueError, match="train_labels"):
        train_aligner(cfg, f, t, progress=False)
    model, hist = train_aligner(cfg, f, t, train_labels=y, progress=False)
    assert np.isfinite(hist["train_loss"].iloc[1:]).all() and "val_loss" not in hist


def test_early_stopping_restores_best_epoch():
    from emi_lib.train.stage1 import evaluate_aligner

    f, t, _ = planted(32, seed=4)
    vf, vt, _ = planted(16, seed=5)
    cfg = AlignerConfig.tiny(D, DT, epochs=5, patience=1, lr=3e-2, batch_size=8, device="cpu")
    model, hist = train_aligner(cfg, f, t, vf, vt, progress=False)
    best = hist.attrs["best_epoch"]
    assert best == hist["val_loss"].iloc[1:].idxmin()
    ev = evaluate_aligner(model, vf, vt, cfg.batch_size, cfg.max_steps)
    assert ev["val_loss"] == pytest.approx(hist.loc[best, "val_loss"], abs=1e-6)
