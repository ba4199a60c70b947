"""Out-of-fold stage-1 exports of the training split (emi_lib.train.stage1_folds)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import emi_lib.train.stage1_folds as folds_mod
from emi_lib.constants import EMOTIONS
from emi_lib.models.aligner import AlignerConfig
from emi_lib.train.stage1 import export_aligned, train_aligner, usable_ids
from emi_lib.train.stage1_folds import assign_folds, cv_probe, export_aligned_oof

D, DT = 10, 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models train several times faster on one thread on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def labelled_clips(n: int, seed: int, signal: float = 1.0, n_empty: int = 0, n_no_text: int = 0):
    """Clips whose text is the label written as a vector (text = z A, as a label prompt is z in words);
    frames = ``signal`` * z B + a clip-specific offset + noise, T in [3, 8]."""
    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(7)
    a, b = proj.normal(size=(6, DT)), proj.normal(size=(6, D))
    z = rng.uniform(size=(n, 6))
    ids = [f"{seed:02d}{i:03d}" for i in range(n)]
    feats, text = {}, {}
    for i, cid in enumerate(ids):
        t = int(rng.integers(3, 9))
        own = rng.normal(size=D)
        feats[cid] = (signal * (z[i] @ b) + own + 0.1 * rng.normal(size=(t, D))).astype(np.float32)
        text[cid] = (z[i] @ a).astype(np.float32)
    for cid in ids[:n_empty]:
        feats[cid] = np.zeros((0, D), dtype=np.float32)
    for cid in ids[n_empty : n_empty + n_no_text]:
        del text[cid]
    return feats, text, pd.DataFrame(z, index=ids, columns=list(EMOTIONS))


def tiny_cfg(**kw):
    return AlignerConfig.tiny(D, DT, **{"epochs": 2, "lr": 3e-3, "batch_size": 8, "device": "cpu", **kw})


def test_assign_folds_is_balanced_and_deterministic():
    ids = [f"{i:04d}" for i in range(23)]
    f = assign_folds(ids, 5, seed=3)
    assert set(f) == set(ids) and set(f.values()) == set(range(5))
    sizes = np.bincount(list(f.values()))
    assert sizes.max() - sizes.min() <= 1
    assert assign_folds(list(reversed(ids)), 5, seed=3) == f  # the input order does not matter
    assert assign_folds(ids, 5, seed=4) != f
    with pytest.raises(ValueError, match="k >= 2"):
        assign_folds(ids, 1)
    with pytest.raises(ValueError, match="cannot split"):
        assign_folds(ids[:3], 4)


def test_every_train_id_is_exported_once_by_an_aligner_that_did_not_train_on_it(monkeypatch):
    feats, text, _ = labelled_clips(40, seed=1, n_empty=3, n_no_text=2)
    trained, exported = {}, []  # id(model) -> ids it trained on; (id(model), ids exported)
    alive = []  # keep every model referenced: a freed model's id() can be reused by the next one


    def spy_train(cfg, train_feats, train_text, *a, **kw):
        model, hist = train_aligner(cfg, train_feats, train_text, *a, **kw)
        alive.append(model)
        trained[id(model)] = set(usable_ids(train_feats, train_text))
        return model, hist

    def spy_export(model, feats_, **kw):
        ex = export_aligned(model, feats_, **kw)
        exported.append((id(model), list(ex.clip_emb)))
        return ex

    monkeypatch.setattr(folds_mod, "train_aligner", spy_train)
    monkeypatch.setattr(folds_mod, "export_aligned", spy_export)
    out = export_aligned_oof(tiny_cfg(), feats, text, k=4, progress=False)

    assert out.k == 4 and len(trained) == 4 and len(exported) == 4
    flat = [cid for _, ids in exported for cid in ids]
    assert sorted(flat) == sorted(feats)  # every training clip exported exactly once
    for fold, (mid, ids) in enumerate(exported):
        assert not trained[mid] & set(ids), "a clip was exported by an aligner that trained on it"
        assert ids == out.held_out(fold) and all(out.fold_of[i] == fold for i in ids)
        assert trained[mid] == set(out.trained_on[fold])
        # the fold aligner trained on every usable clip of the other folds, and on nothing else
        assert trained[mid] == {i for i in usable_ids(feats, text) if out.fold_of[i] != fold}
    assert out.fold_of == assign_folds(list(feats), 4, seed=tiny_cfg().seed)
    assert [len(h) for h in out.histories] == [3] * 4 and "val_loss" not in out.histories[0]


def test_oof_export_has_the_structure_of_export_aligned_and_is_deterministic():
    feats, text, _ = labelled_clips(30, seed=2, n_empty=2)
    va_f, va_t, _ = labelled_clips(12, seed=3)
    cfg = tiny_cfg(epochs=1)
    model, _ = train_aligner(cfg, feats, text, progress=False)
    plain = export_aligned(model, feats)
    out = export_aligned_oof(cfg, feats, text, k=3, val_feats=va_f, val_text=va_t, progress=False)
    ex = out.aligned
    assert type(ex) is type(plain) and ex.missing == plain.missing == sorted(list(feats)[:2])
    assert list(ex.clip_emb) == list(plain.clip_emb) == list(feats)
    assert list(ex.frame_seq) == list(feats)
    for cid in feats:
        assert ex.clip_emb[cid].shape == plain.clip_emb[cid].shape and ex.clip_emb[cid].dtype == np.float32
        assert ex.frame_seq[cid].shape == plain.frame_seq[cid].shape
    for cid in ex.missing:
        assert ex.frame_seq[cid].shape == (0, cfg.embed_dim) and not ex.clip_emb[cid].any()
    present = [c for c in feats if c not in ex.missing]
    assert np.allclose([np.linalg.norm(ex.clip_emb[c]) for c in present], 1.0, atol=1e-5)
    assert "val_loss" in out.histories[0]  # validation on the real validation split when given
    assert set(out.fold_series().index) == set(feats)

    again = export_aligned_oof(cfg, feats, text, k=3, val_feats=va_f, val_text=va_t, progress=False)
    assert again.fold_of == out.fold_of
    assert all(np.array_equal(again.aligned.frame_seq[c], ex.frame_seq[c], equal_nan=True) for c in feats)
    # an explicit assignment (e.g. shared by the vision and the audio exports) is used as given
    shared = {c: i % 2 for i, c in enumerate(feats)}
    two = export_aligned_oof(cfg, feats, text, fold_of=shared, progress=False)
    assert two.k == 2 and two.fold_of == shared
    with pytest.raises(ValueError, match="lacks"):
        export_aligned_oof(cfg, feats, text, fold_of={c: 0 for c in list(feats)[:5]}, progress=False)
    with pytest.raises(ValueError, match="0..k-1"):
        export_aligned_oof(cfg, feats, text, fold_of={c: 1 + i % 2 for i, c in enumerate(feats)}, progress=False)


def test_label_text_leak_is_real_and_detectable():
    """Frames carry no label information, only a clip-specific offset; the text is the label. An aligner
    memorises its training clips' labels, so a probe cross-validated on the *in-fold* train features reads
    the labels; on the out-of-fold ones, as on any unseen clip, it cannot."""
    feats, text, y = labelled_clips(48, seed=5, signal=0.0)
    cfg = tiny_cfg(epochs=40, batch_size=16, hidden=64)
    model, _ = train_aligner(cfg, feats, text, progress=False)
    in_fold = export_aligned(model, feats)
    oof = export_aligned_oof(cfg, feats, text, k=3, progress=False)
    ids = list(y.index)
    groups = [oof.fold_of[i] for i in ids]
    x_in = np.stack([in_fold.clip_emb[i] for i in ids])
    x_oof = np.stack([oof.aligned.clip_emb[i] for i in ids])
    s_in, s_oof = cv_probe(x_in, y, groups)["mean"], cv_probe(x_oof, y, groups)["mean"]
    assert s_in > 0.2, s_in
    assert s_in - s_oof > 0.25, (s_in, s_oof)
    # nothing left to read (with no signal, cross-validated predictions even anti-correlate slightly)
    assert s_oof < 0.1, s_oof
