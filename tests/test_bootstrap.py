"""The seed+clip bootstrap, its p-values and the Holm correction (emi_lib.eval.stats), checked against
scipy, statsmodels and the challenge metric on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests

from emi_lib.eval.metrics import challenge_score
from emi_lib.eval.stats import (
    bootstrap_p,
    clip_bootstrap,
    holm,
    paired_comparison,
    pearson_last_axis,
    seed_clip_bootstrap,
    verdict,
)


def _data(n=80, seeds=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(size=(n, 6))
    det = np.clip(y + rng.normal(scale=0.5, size=(n, 6)), 0, 1)  # a deterministic predictor (ridge-like)
    model = np.stack([y + rng.normal(scale=0.35, size=(n, 6)) for _ in range(seeds)])  # one per seed
    return y, det, model


def test_replicates_are_the_challenge_score_of_explicit_resamples():
    y, det, model = _data(n=40)
    b = seed_clip_bootstrap({"det": np.stack([det] * 3), "model": model}, y, n_resamples=50, random_state=3)
    rng = np.random.default_rng(3)  # the documented draws: clips first (B, n), then seeds (B, S)
    clips, seeds = rng.integers(0, 40, (50, 40)), rng.integers(0, 3, (50, 3))
    for k in (0, 17, 49):
        want = np.mean([challenge_score(model[s][clips[k]], y[clips[k]])["mean"] for s in seeds[k]])
        assert b.replicates[k, 1, -1] == pytest.approx(want, abs=1e-10)
        assert b.replicates[k, 0, -1] == pytest.approx(challenge_score(det[clips[k]], y[clips[k]])["mean"], abs=1e-10)
    # the estimate is the mean over seeds of the full-sample score (what the scores table holds)
    est = np.mean([challenge_score(m, y)["mean"] for m in model])
    assert b.interval("model")["mean"] == pytest.approx(est, abs=1e-12)


def test_deterministic_arm_interval_equals_scipy_bootstrap_percentile():
    y, det, model = _data()
    b = seed_clip_bootstrap({"ridge": np.stack([det] * 3), "full": model}, y, n_resamples=999, random_state=11)
    ours = b.interval("ridge")
    ref = clip_bootstrap(det, y, n_resamples=999, random_state=11)  # scipy.stats.bootstrap, paired, vectorized

    def score(p, t, axis=-1):  # an independent statistic: challenge_score of each resample (6, [B,] n)
        if p.ndim == 2:
            return challenge_score(p.T, t.T)["mean"]
        return np.array([challenge_score(pp.T, tt.T)["mean"] for pp, tt in zip(np.moveaxis(p, 1, 0),
                                                                             np.moveaxis(t, 1, 0), strict=True)])

    raw = st.bootstrap((det.T, y.T), score, paired=True, vectorized=True, axis=-1, n_resamples=999, method="percentile",
                       rng=np.random.default_rng(11))
    for r in (ref, {"lo": raw.confidence_interval.low, "hi": raw.confidence_interval.high}):
        assert ours["lo"] == pytest.approx(r["lo"], abs=1e-9) and ours["hi"] == pytest.approx(r["hi"], abs=1e-9)
    assert ours["hi"] - ours["lo"] > 0.02  # test sampling: never zero-width, unlike the seed-only interval
    assert ours["lo"] < ours["mean"] < ours["hi"]
    bca = clip_bootstrap(det, y, n_resamples=999, random_state=11, method="BCa")
    assert bca["lo"] < bca["mean"] < bca["hi"]
    # model seeds add their variation: a seed-varying arm's interval is at least the clip-only one of a seed
    one_seed = seed_clip_bootstrap({"m": model[:1]}, y, n_resamples=999, random_state=11).interval("m")
    assert one_seed["hi"] > one_seed["lo"]


def test_pearson_last_axis_matches_challenge_score():
    y, det, _ = _data(n=30)
    assert pearson_last_axis(det.T, y.T).mean() == pytest.approx(challenge_score(det, y)["mean"], abs=1e-12)


def test_paired_difference_strong_effect_holds_and_null_does_not():
    rng = np.random.default_rng(5)
    n = 150
    y = rng.uniform(size=(n, 6))
    good = np.stack([y + rng.normal(scale=0.3, size=(n, 6)) for _ in range(3)])
    bad = np.stack([y + rng.normal(scale=1.0, size=(n, 6)) for _ in range(3)])
    twin = good[[1, 2, 0]]  # the same three models under other seed names: no effect
    b = seed_clip_bootstrap({"good": good, "bad": bad, "twin": twin}, y, n_resamples=2000, random_state=0)
    strong, null = b.difference("good", "bad"), b.difference("good", "twin")
    assert strong["lo"] > 0 and strong["p"] == pytest.approx(2 / 2001)  # no replicate at or below 0: +1-corrected
    assert null["lo"] < 0 < null["hi"] and null["p"] > 0.05
    ps = [strong["p"], null["p"]]
    adj, _ = holm(ps)
    assert verdict(adj[0], strong["lo"], strong["hi"]) == "holds"
    assert verdict(adj[1], null["lo"], null["hi"]) == "not shown"
    rev = b.difference("bad", "good")
    assert verdict(holm([rev["p"]])[0][0], rev["lo"], rev["hi"]) == "reversed"
    # the same predictions on both sides: every replicate difference is 0 -> no test, p NaN (never 0)
    same = seed_clip_bootstrap({"a": good, "b": good.copy()}, y, n_resamples=200).difference("a", "b")
    assert math.isnan(same["p"]) and same["note"] and same["diff"] == 0
    assert verdict(math.nan, 0.0, 0.0) == "untestable"


def test_bootstrap_p_is_never_zero_and_two_sided():
    assert bootstrap_p(np.linspace(0.1, 0.2, 99), 0.15) == (pytest.approx(2 / 100), "")
    assert bootstrap_p(-np.linspace(0.1, 0.2, 99), -0.15)[0] == pytest.approx(2 / 100)
    p, _ = bootstrap_p(np.r_[np.full(10, -0.01), np.linspace(0.1, 0.2, 89)], 0.15)
    assert p == pytest.approx(2 * 11 / 100)
    assert bootstrap_p(np.linspace(-1, 1, 101), 0.0)[0] == 1.0
    p, note = bootstrap_p(np.full(50, 0.03), 0.03)
    assert math.isnan(p) and "same" in note


def test_holm_equals_statsmodels_and_skips_untestable():
    p = np.array([0.001, 0.04, 0.03, 0.2, 0.012])
    adj, rej = holm(p)
    want_rej, want_adj, _, _ = multipletests(p, alpha=0.05, method="holm")
    np.testing.assert_allclose(adj, want_adj)
    np.testing.assert_array_equal(rej, want_rej)
    adj2, rej2 = holm([0.01, math.nan, 0.03])
    np.testing.assert_allclose(adj2[[0, 2]], multipletests([0.01, 0.03], method="holm")[1])
    assert math.isnan(adj2[1]) and not rej2[1]


def test_seed_t_test_uses_ttest_rel_and_zero_variance_is_nan():
    a, b = {0: 0.50, 1: 0.55, 2: 0.52}, {0: 0.41, 1: 0.43, 2: 0.45}
    c = paired_comparison(a, b)
    assert c["p"] == pytest.approx(st.ttest_rel([0.50, 0.55, 0.52], [0.41, 0.43, 0.45]).pvalue)
    # every seed's difference is the same (0.1 up to rounding): scipy's t would be infinite and p = 0
    flat = paired_comparison({0: 0.5, 1: 0.52, 2: 0.6}, {0: 0.4, 1: 0.42, 2: 0.5})
    assert math.isnan(flat["p"]) and flat["verdict"] == "untestable" and "same" in flat["note"]
    assert math.isnan(paired_comparison({0: 0.5}, {0: 0.4})["p"])


def test_bootstrap_refuses_what_it_cannot_score():
    y, det, model = _data(n=20)
    with pytest.raises(ValueError, match="shape"):
        seed_clip_bootstrap({"m": model}, y[:10])
    bad = model.copy()
    bad[0, :, 2] = 0.5  # a constant prediction column: Pearson r undefined
    with pytest.raises(ValueError, match="constant"):
        seed_clip_bootstrap({"m": bad}, y)
    with pytest.raises(ValueError, match="non-finite"):
        seed_clip_bootstrap({"m": np.full_like(model, np.nan)}, y)
