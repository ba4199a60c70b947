"""Seed statistics (emi_lib.eval.stats), the ablation runner (emi_lib.experiments.ablation) and its tables with
the seed+clip bootstrap and the Holm correction (emi_lib.experiments.ablation_stats)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS
from emi_lib.eval.stats import ci_table, format_ci, mean_ci, paired_comparison, seed_clip_bootstrap
from emi_lib.experiments.ablation import VARIANTS, prediction_path, ridge_scores, run_ablation
from emi_lib.experiments.ablation_stats import (
    ablation_table,
    best_by_validation,
    bootstrap_ablation,
    claim_verdicts,
    paired_table,
)
from emi_lib.train.data import Stage2Data


def test_mean_ci_matches_the_t_interval():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["sd"] == 1.0 and ci["n"] == 3
    assert ci["half"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert ci["lo"] == pytest.approx(2 - ci["half"]) and ci["hi"] == pytest.approx(2 + ci["half"])


def test_mean_ci_one_seed_has_no_interval_and_nan_is_refused():
    ci = mean_ci([0.4])
    assert ci["mean"] == 0.4 and math.isnan(ci["lo"]) and math.isnan(ci["hi"])
    assert format_ci(0.4, ci["lo"], ci["hi"]) == "0.400 (1 seed)"
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_comparison_verdicts():
    a = {0: 0.50, 1: 0.52, 2: 0.55}
    assert paired_comparison(a, {0: 0.40, 1: 0.43, 2: 0.44})["verdict"] == "holds"
    assert paired_comparison({k: v - 0.2 - 0.01 * k for k, v in a.items()}, a)["verdict"] == "reversed"
    flat = paired_comparison({k: v - 0.2 for k, v in a.items()}, a)  # every difference -0.2: no variance
    assert flat["verdict"] == "untestable" and math.isnan(flat["p"])
    mixed = paired_comparison(a, {0: 0.60, 1: 0.42, 2: 0.55})
    assert mixed["verdict"] == "not shown" and mixed["lo"] < 0 < mixed["hi"]
    one = paired_comparison({0: 0.5}, {0: 0.4})
    assert one["verdict"] == "untestable" and math.isnan(one["p"]) and one["diff"] == pytest.approx(0.1)
    # pairing uses the common seeds only; none in common is an error, not a silent 0
    assert paired_comparison(a, {1: 0.40, 2: 0.44, 7: 0.9})["n"] == 2
    with pytest.raises(ValueError, match="common seeds"):
        paired_comparison({0: 0.5}, {1: 0.5})
    # paired is narrower than unpaired when the seed noise is shared
    noise = {s: 0.1 * s for s in range(4)}
    c = paired_comparison({s: 0.5 + noise[s] for s in noise}, {s: 0.45 + noise[s] + 0.001 * s for s in noise})
    assert c["verdict"] == "holds"


def _study(n=120, seeds=3):
    """Scores and per-clip predictions of four arms with known effects: equal-weight fusion clearly worse than
    the full model, audio-only clearly better (a reversal), vision-only a null (the full model's own seeds
    under other names), and a deterministic ridge, worse."""
    rng = np.random.default_rng(0)
    y = rng.uniform(size=(n, 6))
    noise = {"full": 0.3, "equal": 0.6, "audio_only": 0.15, "ridge": 0.5}
    preds = {k: np.stack([y + rng.normal(scale=s, size=(n, 6)) for _ in range(seeds)]) for k, s in noise.items()}
    preds["vision_only"] = preds["full"][np.roll(np.arange(seeds), 1)]
    preds["ridge"] = np.stack([preds["ridge"][0]] * seeds)
    rows = []
    for key, arr in preds.items():
        for seed in range(seeds):
            r = [float(np.corrcoef(arr[seed][:, j], y[:, j])[0, 1]) for j in range(6)]
            rows.append({"key": key, "variant": VARIANTS[key].label, "seed": seed, "mean": float(np.mean(r)),
                         **dict(zip(EMOTIONS, r, strict=True)), "val_best": {"full": 0.6, "equal": 0.5,
                                                                             "audio_only": 0.55}.get(key, 0.4)})
    return pd.DataFrame(rows), seed_clip_bootstrap(preds, y, n_resamples=1000, random_state=0)


def test_ablation_table_paired_table_holm_and_claims():
    s, boot = _study()
    t = ci_table(s[["variant", "seed", "mean"]])  # seed-only t intervals
    assert (t["n"] == 3).all() and (t["mean_lo"] <= t["mean"]).all()
    table = ablation_table(s, boot)
    ridge = table.loc[VARIANTS["ridge"].label]
    assert ridge["mean_seed_lo"] == pytest.approx(ridge["mean_seed_hi"])  # seed-only: zero width for the ridge
    assert ridge["mean_hi"] - ridge["mean_lo"] > 0.02  # the clip bootstrap: test sampling, not zero width
    assert (table["mean_lo"] < table["mean"]).all() and (table["mean"] < table["mean_hi"]).all()
    p = paired_table(s, boot)
    assert set(p.index) == {"equal", "vision_only", "audio_only", "ridge"}
    assert (p["p"].astype(float) > 0).all() and {"p_holm", "p_seed_t", "seed_lo", "seed_hi"} <= set(p.columns)
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(p["p_holm"].astype(float), multipletests(p["p"].astype(float), method="holm")[1])
    assert p.loc["equal", "verdict"] == "holds" and p.loc["ridge", "verdict"] == "holds"
    assert p.loc["audio_only", "verdict"] == "reversed"
    assert p.loc["vision_only", "verdict"] == "not shown" and p.loc["vision_only", "diff"] == pytest.approx(0)
    v = claim_verdicts(p)
    assert v.loc["quality-guided fusion beats fusion without quality guidance", "verdict"] == "held"
    assert v.loc["fusing both modalities beats either alone", "verdict"] == "contradicted"
    assert v.loc["the full model beats a linear baseline", "verdict"] == "held"
    assert v.loc["stage-1 alignment helps", "verdict"] == "not run"
    assert "Holm p" in v.loc["the full model beats a linear baseline", "evidence"]
    # the best variant is chosen on validation (full: 0.6), even though audio only is better on test
    best = best_by_validation(s, boot)
    assert best["key"] == "full" and best["test_best"] == VARIANTS["audio_only"].label
    assert best["test_lo"] < best["test"] < best["test_hi"]


def test_holm_can_turn_a_raw_hold_into_not_shown():
    s, boot = _study()
    p = paired_table(s, boot)
    raw = p.assign(p_holm=p["p"])
    # Holm multiplies the smallest p by the family size: a raw p of 0.02 among four comparisons is not enough
    from emi_lib.eval.stats import verdict

    assert verdict(0.02, 0.01, 0.05) == "holds" and verdict(min(1.0, 4 * 0.02), 0.01, 0.05) == "not shown"
    assert (p["p_holm"].astype(float) >= raw["p"].astype(float)).all()


def _fake_sets(n_train=24, n_eval=12, seed=0):
    rng = np.random.default_rng(seed)

    def split(ids, with_labels):
        y = rng.uniform(0, 1, (len(ids), 6))
        vision = {i: (rng.normal(size=(rng.integers(4, 9), 5)) + y[k, 0]).astype(np.float32) for k, i in enumerate(ids)}
        audio = {i: (rng.normal(size=(rng.integers(6, 12), 3)) + y[k, 1]).astype(np.float32) for k, i in enumerate(ids)}
        vision[ids[0]] = np.zeros((0, 5), np.float32)  # a clip without a face is still scored
        labels = pd.DataFrame(y, index=ids, columns=list(EMOTIONS))
        pri = pd.DataFrame({"face_quality": rng.uniform(size=len(ids)), "audio_quality": rng.uniform(size=len(ids))},
                           index=ids)
        return Stage2Data(vision, audio, labels=labels if with_labels else None, priors=pri, ids=ids,
                          absent={"vision": [ids[0]]}), labels

    tr, _ = split([f"{i:05d}" for i in range(n_train)], True)
    va, _ = split([f"{i:05d}" for i in range(n_train, n_train + n_eval)], True)
    te, te_labels = split([f"{i:05d}" for i in range(n_train + n_eval, n_train + 2 * n_eval)], False)
    return {"train": tr, "valid": va, "test": te}, te_labels


def test_run_ablation_scores_every_run_and_reuses_finished_ones(tmp_path):
    sets, labels = _fake_sets()
    dims = {"vision": 5, "audio": 3, "text": None}
    kw = dict(sets_by_inputs={"stage1": sets, "raw": sets}, eval_split="test", eval_labels=labels, out_dir=tmp_path,
              profile="smoke", dims_by_inputs={"stage1": dims, "raw": dims}, workers=1, progress=False)
    df = run_ablation(["full", "equal", "ridge"], [0, 1], **kw)
    assert len(df) == 6 and list(df["key"].unique()) == ["full", "equal", "ridge"]
    assert df["mean"].notna().all() and not df["cached"].any()
    assert (tmp_path / "models" / "equal" / "seed1" / "best.pt").exists()
    preds = pd.read_csv(tmp_path / "models" / "full" / "seed0" / "eval_predictions.csv", dtype={"Filename": str})
    assert len(preds) == 12  # every test clip, including the one without vision
    assert prediction_path(tmp_path, "ridge", 0).exists() and df.loc[df["key"] == "ridge", "val_best"].notna().all()
    boot = bootstrap_ablation(df, tmp_path, labels, n_resamples=100)
    assert boot.arms == ("full", "equal", "ridge") and boot.n_clips == 12 and boot.seeds == (0, 1)
    table = ablation_table(df, boot)
    assert np.isfinite(table[["mean_lo", "mean_hi"]].to_numpy(float)).all()
    ridge_row = table.loc[VARIANTS["ridge"].label]
    assert ridge_row["mean_hi"] > ridge_row["mean_lo"]
    for key in ("full", "equal", "ridge"):  # the estimate is the scores table's mean over seeds
        assert boot.interval(key)["mean"] == pytest.approx(df.loc[df["key"] == key, "mean"].mean(), abs=1e-6)
    again = run_ablation(["full", "equal", "ridge"], [0, 1], **kw)
    stage2 = again[again["key"] != "ridge"]
    assert stage2["cached"].all()
    pd.testing.assert_series_equal(df["mean"], again["mean"])
    # a prediction file that no longer matches its run's recorded score is refused, not bootstrapped
    stale = prediction_path(tmp_path, "equal", 1)
    pd.read_csv(stale, dtype={"Filename": str}).set_index("Filename").iloc[::-1].set_axis(
        pd.read_csv(stale, dtype={"Filename": str})["Filename"]).to_csv(stale)
    with pytest.raises(ValueError, match="stale"):
        bootstrap_ablation(again, tmp_path, labels, n_resamples=10)
    # a different budget is a different run: retrained, not reused
    changed = run_ablation(["full"], [0], overrides={"epochs": 1}, **kw)
    assert not changed["cached"].any() and changed.loc[0, "epochs"] == 1
    # the same ids and config from another data root (another SynthMimic seed has the same ids): recomputed
    root_a = {"stage1": {"data": {"data_root": "/a", "fingerprint": "aaaa"}}}
    root_b = {"stage1": {"data": {"data_root": "/b", "fingerprint": "bbbb"}}}
    first = run_ablation(["full"], [0], provenance=root_a, **kw)
    assert not first["cached"].any()
    assert run_ablation(["full"], [0], provenance=root_a, **kw)["cached"].all()
    assert not run_ablation(["full"], [0], provenance=root_b, **kw)["cached"].any()
    with pytest.raises(ValueError, match="needs 'raw' inputs"):
        run_ablation(["no_stage1"], [0], **{**kw, "sets_by_inputs": {"stage1": sets}})


def test_ridge_baseline_is_deterministic_and_finite():
    sets, labels = _fake_sets()
    a, b = ridge_scores(sets, "test", labels), ridge_scores(sets, "test", labels)
    assert a == b and math.isfinite(a["mean"]) and set(a) == {"mean", *EMOTIONS}


def test_raw_arms_read_the_backbones_stage1_aligned(monkeypatch):
    """'No stage 1' compares aligned with raw features *of the same backbones*; a backbone arm changes one."""
    from types import SimpleNamespace

    import emi_lib.train.inputs as inputs_mod
    from emi_lib.experiments.ablation import ablation_inputs

    calls = []

    def fake_prepare(root, profile, *, stage1="auto", use_text=False, verbose=True, **kw):
        calls.append({"stage1": stage1, **kw})
        raw = {"vision": ("vision", "face-x"), "audio": ("audio", "voice-y")}
        s1 = SimpleNamespace(finetuned_backbone=None)
        return SimpleNamespace(kind="stage1" if stage1 != "none" else "raw", raw_streams=raw, note="",
                               stage1=s1 if stage1 != "none" else None)

    monkeypatch.setattr(inputs_mod, "prepare_stage2_inputs", fake_prepare)
    inputs, variants, notes = ablation_inputs("/r", "smoke", ["full", "no_stage1", "a_logmel", "v_finetuned"])
    assert calls[0]["stage1"] == "auto"
    raw = {tuple(sorted(c.items())) for c in calls[1:]}
    assert (("audio_backbone", "voice-y"), ("stage1", "none"), ("vision_backbone", "face-x")) in raw  # no_stage1
    assert (("audio_backbone", "logmel"), ("stage1", "none"), ("vision_backbone", "face-x")) in raw  # a_logmel
    assert "v_finetuned" not in variants and any("fine-tuned" in n for n in notes)  # no out-of-fold tower: dropped
