"""Seed statistics (emi_lib.eval.stats) and the ablation runner (emi_lib.experiments.ablation)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS
from emi_lib.eval.stats import ci_table, format_ci, mean_ci, paired_comparison
from emi_lib.experiments.ablation import VARIANTS, claim_verdicts, paired_table, ridge_scores, run_ablation
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


def _scores():
    rows = []
    for key, base in (("full", 0.50), ("equal", 0.45), ("vision_only", 0.20), ("audio_only", 0.52)):
        for seed in range(3):
            jitter = [0.0, 0.01, -0.01][seed]
            rows.append({"key": key, "variant": VARIANTS[key].label, "seed": seed, "mean": base + jitter + 0.001 * seed * (1 if key == "full" else -1),
                         **{e: base for e in EMOTIONS}})
    return pd.DataFrame(rows)


def test_ci_table_paired_table_and_claims():
    s = _scores()
    t = ci_table(s[["variant", "seed", "mean"]])
    assert list(t.index) == [VARIANTS[k].label for k in ("full", "equal", "vision_only", "audio_only")]
    assert (t["n"] == 3).all() and (t["mean_lo"] < t["mean"]).all()
    p = paired_table(s)
    assert set(p.index) == {"equal", "vision_only", "audio_only"}
    assert p.loc["equal", "verdict"] == "holds" and p.loc["audio_only", "verdict"] == "reversed"
    v = claim_verdicts(p)
    assert v.loc["quality-guided fusion beats fusion without quality guidance", "verdict"] == "held"
    assert v.loc["fusing both modalities beats either alone", "verdict"] == "contradicted"
    assert v.loc["stage-1 alignment helps", "verdict"] == "not run"


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
    again = run_ablation(["full", "equal", "ridge"], [0, 1], **kw)
    stage2 = again[again["key"] != "ridge"]
    assert stage2["cached"].all()
    pd.testing.assert_series_equal(df["mean"], again["mean"])
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
