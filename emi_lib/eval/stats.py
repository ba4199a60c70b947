r"""Statistics for ablations: intervals that include test-set sampling, paired tests, multiplicity.

**Two sources of noise.** A score varies with the model seed (initialisation, dropout, batch order) *and* with
the evaluation clips: another test set of the same size would give another Pearson r. Both are resampled by a
two-level (hierarchical) bootstrap (:func:`seed_clip_bootstrap`). Arm :math:`a` has predictions
:math:`\hat y^{a}_{s,i,e}` for seeds :math:`s = 1..S`, clips :math:`i = 1..n`, emotions :math:`e`, and
:math:`S(\cdot)` is the challenge score (mean over the six emotions of Pearson r over the clips). Replicate
:math:`b = 1..B` draws clips :math:`I_b = (i_{b1}..i_{bn})` and seeds :math:`J_b = (s_{b1}..s_{bS})`, both
uniformly **with replacement**, and computes

.. math::  \theta^{a}_b = \frac1S \sum_{k=1}^{S} S\big(\hat y^{a}_{s_{bk}, I_b}, y_{I_b}\big),
           \qquad \hat\theta^{a} = \frac1S \sum_{s=1}^{S} S\big(\hat y^{a}_{s}, y\big) .

The 95% interval is the percentile interval :math:`[q_{0.025}, q_{0.975}]` of :math:`\theta^a_{1..B}`. Every
arm uses the **same** :math:`I_b, J_b` (a fixed ``random_state``), so a difference is paired on clips and
seeds: :math:`\Delta_b = \theta^{A}_b - \theta^{B}_b`, estimate :math:`\hat\Delta = \hat\theta^A - \hat\theta^B`,
interval the percentiles of :math:`\Delta_b`. A deterministic arm (the same predictions for every seed) gets
the plain clip bootstrap: with one seed, or for the ridge, the interval is the test-sampling interval alone,
never zero-width. The clip indices are drawn first, as one ``rng.integers(0, n, (B, n))`` call, exactly as
``scipy.stats.bootstrap(..., paired=True)`` draws them, so a deterministic arm's interval equals scipy's
percentile interval for the same ``random_state`` (:func:`clip_bootstrap` is that scipy call). Resampling at
both levels carries each level's noise into the other's resample as well: the intervals err on the wide side.

**Bootstrap p-value** of :math:`H_0\colon \Delta = 0`, two-sided, with the +1 correction (never exactly 0):

.. math::  p = \min\Big(1,\; 2\,\frac{1 + \#\{b : \Delta_b \text{ on the other side of 0 from } \hat\Delta,
           \text{ or } = 0\}}{1 + B}\Big),

twice the one-sided tail, so :math:`p < \alpha` goes with a :math:`1-\alpha` percentile interval that excludes
0. When every :math:`\Delta_b` is the same number (two arms with identical predictions) there is no
distribution to test: p is NaN with a note, never 0.

**Seed-only reference.** :func:`paired_comparison` keeps the earlier seed-only analysis on one fixed test set:
per-seed differences :math:`d_s`, the Student-t interval :math:`\bar d \pm t_{0.975,S-1}\, s_d/\sqrt S` and
the paired t-test ``scipy.stats.ttest_rel`` (NaN with one seed or when every :math:`d_s` is equal).

**Multiplicity.** A family of :math:`m` comparisons is judged with Holm's step-down correction
(:func:`holm`, ``statsmodels.stats.multitest.multipletests(method="holm")``): sorted raw p-values
:math:`p_{(1)} \le .. \le p_{(m)}` get :math:`\tilde p_{(j)} = \max_{k \le j} \min(1, (m - k + 1)\,p_{(k)})`,
which bounds the family-wise error rate by :math:`\alpha`. A comparison **holds** when :math:`\tilde p < 0.05`
and its interval lies above 0 (the reference is better), is **reversed** when :math:`\tilde p < 0.05` and the
interval lies below 0, **untestable** without a p-value, and **not shown** otherwise (:func:`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

from emi_lib.constants import EMOTIONS

#: the columns of a bootstrapped score: the six emotions' r and their mean (the challenge score)
SCORE_COLUMNS = (*EMOTIONS, "mean")


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """``{"mean", "lo", "hi", "half", "sd", "n"}`` of the Student-t interval; NaN bounds when n < 2.
    Non-finite values raise: a NaN score is a failure to report, not a number to average."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite score(s) in {x.tolist()}: fix the run instead of averaging them away")
    n, m = x.size, float(x.mean())
    if n < 2:
        return {"mean": m, "lo": math.nan, "hi": math.nan, "half": math.nan, "sd": math.nan, "n": 1}
    sd = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": m, "lo": m - half, "hi": m + half, "half": half, "sd": sd, "n": int(n)}


def _all_equal(x: np.ndarray) -> bool:
    """Zero variance up to rounding (0.52 - 0.42 and 0.50 - 0.40 differ in the last bit)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def paired_comparison(a: dict, b: dict, level: float = 0.95) -> dict:
    """Seed-only comparison of ``a`` against ``b`` ({seed: score}) on their common seeds: the mean difference
    a - b, its t interval, the paired t-test p-value (``scipy.stats.ttest_rel``), wins of a, the verdict
    ("holds" | "reversed" | "not shown" | "untestable") and a note. One seed, or differences that are all
    equal (zero variance: the t statistic is infinite), give p = NaN and "untestable", never p = 0."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no common seeds: a paired comparison needs the same seeds on both sides")
    xa, xb = (np.array([x[s] for s in seeds], dtype=float) for x in (a, b))
    d = xa - xb
    ci = mean_ci(d, level)
    note = ""
    if len(seeds) < 2:
        p, verdict, note = math.nan, "untestable", "one seed: no seed interval"
    elif _all_equal(d):
        p, verdict, note = math.nan, "untestable", "every seed's difference is the same: no variance to test"
    else:
        p = float(_st.ttest_rel(xa, xb).pvalue)
        verdict = "holds" if ci["lo"] > 0 else "reversed" if ci["hi"] < 0 else "not shown"
    return {"diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "p": p, "wins": int((d > 0).sum()),
            "n": len(seeds), "verdict": verdict, "note": note}


def ci_table(scores: pd.DataFrame, by: str = "variant", value_cols: Sequence[str] | None = None,
             level: float = 0.95) -> pd.DataFrame:
    """Seed-only t intervals. Long table (one row per variant and seed) -> one row per variant with ``<col>``
    (mean), ``<col>_lo``, ``<col>_hi`` for every value column, and ``n`` seeds. Row order: first appearance."""
    cols = list(value_cols) if value_cols is not None else [c for c in scores.columns if c not in (by, "seed")]
    rows = {}
    for name, g in scores.groupby(by, sort=False):
        row = {}
        for c in cols:
            ci = mean_ci(g[c].to_numpy(), level)
            row[c], row[f"{c}_lo"], row[f"{c}_hi"] = ci["mean"], ci["lo"], ci["hi"]
        row["n"] = len(g)
        rows[name] = row
    return pd.DataFrame(rows).T.rename_axis(by)


def format_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """'0.422 [0.401, 0.443]', or '0.422 (1 seed)' without an interval."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return f"{mean:.{digits}f} (1 seed)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_p(p: float) -> str:
    """'0.012', '<0.001', or '–' for a p-value that does not exist (NaN)."""
    if p is None or not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ----------------------------------------------------------------------------------------------- bootstrap
def pearson_last_axis(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (broadcast over the others); NaN where a side is constant."""
    pc = pred - pred.mean(axis=-1, keepdims=True)
    tc = true - true.mean(axis=-1, keepdims=True)
    den = np.sqrt((pc * pc).sum(axis=-1) * (tc * tc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((pc * tc).sum(axis=-1) / den, -1.0, 1.0)


def _weighted_r(counts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``x`` (n, k) with the matching column of ``y`` (n, k) over the clips
    resampled by ``counts`` (b, n): clip i taken ``counts[b, i]`` times. -> (b, k). Columns are centred on
    their full-sample means first (the r is unchanged; the sums stay well conditioned)."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = counts.sum(axis=1, keepdims=True)
    sx, sy = counts @ x, counts @ y
    vx = counts @ (x * x) - sx * sx / n
    vy = counts @ (y * y) - sy * sy / n
    cov = counts @ (x * y) - sx * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    r[~(vx > 0) | ~(vy > 0)] = np.nan  # a resample in which a column is constant: undefined
    return np.clip(r, -1.0, 1.0)


@dataclass(frozen=True)
class BootstrapScores:
    """Replicates of a two-level seed+clip bootstrap (module docstring) for several arms."""

    arms: tuple  # arm names, in order
    seeds: tuple  # the seeds every arm was run with (paired)
    estimate: np.ndarray  # (arms, 7): mean over seeds of each arm's full-sample r per emotion, and the mean
    replicates: np.ndarray  # (B, arms, 7): theta_b per arm and column (SCORE_COLUMNS)
    n_clips: int
    level: float
    random_state: int

    @property
    def n_resamples(self) -> int:
        return int(self.replicates.shape[0])

    def _idx(self, arm, column: str) -> tuple[int, int]:
        if arm not in self.arms:
            raise KeyError(f"no bootstrap of arm {arm!r}; arms: {list(self.arms)}")
        return self.arms.index(arm), SCORE_COLUMNS.index(column)

    def _interval(self, reps: np.ndarray) -> tuple[float, float]:
        reps = reps[np.isfinite(reps)]
        a = (1 - self.level) / 2
        lo, hi = np.quantile(reps, [a, 1 - a]) if reps.size else (math.nan, math.nan)
        return float(lo), float(hi)

    def interval(self, arm, column: str = "mean") -> dict:
        """``{"mean", "lo", "hi"}``: the estimate and the percentile interval of one arm's column."""
        a, c = self._idx(arm, column)
        lo, hi = self._interval(self.replicates[:, a, c])
        return {"mean": float(self.estimate[a, c]), "lo": lo, "hi": hi}

    def table(self) -> pd.DataFrame:
        """One row per arm: ``<col>``, ``<col>_lo``, ``<col>_hi`` for the six emotions and ``mean``."""
        rows = {}
        for arm in self.arms:
            row = {}
            for col in SCORE_COLUMNS:
                ci = self.interval(arm, col)
                row[col], row[f"{col}_lo"], row[f"{col}_hi"] = ci["mean"], ci["lo"], ci["hi"]
            rows[arm] = row
        return pd.DataFrame(rows).T

    def difference(self, a, b, column: str = "mean") -> dict:
        """Paired difference a - b: ``{"diff", "lo", "hi", "p", "note"}`` (p: :func:`bootstrap_p`)."""
        (ia, c), (ib, _) = self._idx(a, column), self._idx(b, column)
        d = self.replicates[:, ia, c] - self.replicates[:, ib, c]
        est = float(self.estimate[ia, c] - self.estimate[ib, c])
        lo, hi = self._interval(d)
        p, note = bootstrap_p(d, est)
        return {"diff": est, "lo": lo, "hi": hi, "p": p, "note": note}


def bootstrap_p(diffs: np.ndarray, estimate: float) -> tuple[float, str]:
    """Two-sided bootstrap p-value of a difference (module docstring) -> ``(p, note)``;
    ``(nan, why)`` when every replicate is the same number, never 0."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, "no finite bootstrap replicate"
    if _all_equal(d):
        return math.nan, "every bootstrap replicate of the difference is the same: no variance to test"
    other = int((d <= 0).sum()) if estimate > 0 else int((d >= 0).sum()) if estimate < 0 else d.size
    return float(min(1.0, 2.0 * (1 + other) / (1 + d.size))), ""


def seed_clip_bootstrap(preds: Mapping[str, np.ndarray], true: np.ndarray, *, seeds: Sequence | None = None,
                        n_resamples: int = 2000, level: float = 0.95, random_state: int = 0,
                        batch: int = 250) -> BootstrapScores:
    """Two-level bootstrap of several arms (module docstring).

    ``preds``: {arm: array (S, n, 6)} (seeds, clips, EMOTIONS), every arm with the same S seeds in the same
    order (``seeds``: their names) and the same n clips in the order of ``true`` (n, 6). Replicates are
    computed ``batch`` at a time from clip counts (a resample's Pearson r is the count-weighted r)."""
    true = np.asarray(true, dtype=float)
    arms = tuple(preds)
    if not arms:
        raise ValueError("seed_clip_bootstrap needs at least one arm")
    P = np.stack([np.asarray(preds[a], dtype=float) for a in arms])  # (A, S, n, 6)
    n_arms, n_seeds, n, n_emo = P.shape
    if true.shape != (n, n_emo) or n_emo != len(EMOTIONS):
        raise ValueError(f"predictions have shape {P.shape[1:]} per arm but the labels {true.shape}")
    if not (np.isfinite(P).all() and np.isfinite(true).all()):
        raise ValueError("non-finite predictions or labels: every clip must be scored")
    if n < 3 or n_resamples < 1:
        raise ValueError(f"a clip bootstrap needs at least 3 clips and 1 resample (got {n}, {n_resamples})")
    rng = np.random.default_rng(random_state)
    clip_idx = rng.integers(0, n, (n_resamples, n))  # first, and in one call: scipy.stats.bootstrap's draw
    seed_idx = rng.integers(0, n_seeds, (n_resamples, n_seeds))
    x = P.transpose(2, 0, 1, 3).reshape(n, -1)  # (n, A*S*6), columns (arm, seed, emotion)
    y = np.tile(true, n_arms * n_seeds)

    def r_of(counts):  # (b, n) -> (b, A, S, 6)
        return _weighted_r(counts.astype(float), x, y).reshape(len(counts), n_arms, n_seeds, n_emo)

    full = r_of(np.ones((1, n)))[0]  # (A, S, 6)
    if not np.isfinite(full).all():
        bad = [arms[a] for a in np.unique(np.nonzero(~np.isfinite(full))[0])]
        raise ValueError(f"a constant prediction or label column in arm(s) {bad}: Pearson r is undefined")
    est = full.mean(axis=1)  # (A, 6)
    estimate = np.concatenate([est, est.mean(axis=1, keepdims=True)], axis=1)  # (A, 7)
    reps = np.empty((n_resamples, n_arms, n_emo + 1))
    for k in range(0, n_resamples, batch):
        ci = clip_idx[k:k + batch]
        counts = np.zeros((len(ci), n))
        np.add.at(counts, (np.arange(len(ci))[:, None], ci), 1.0)
        r = r_of(counts)  # (b, A, S, 6)
        w = np.zeros((len(ci), n_seeds))
        np.add.at(w, (np.arange(len(ci))[:, None], seed_idx[k:k + batch]), 1.0 / n_seeds)
        theta = np.einsum("bs,base->bae", w, r)  # average over the drawn seeds
        reps[k:k + batch, :, :n_emo] = theta
        reps[k:k + batch, :, n_emo] = theta.mean(axis=2)
    return BootstrapScores(arms, tuple(seeds) if seeds is not None else tuple(range(n_seeds)), estimate, reps,
                           n, level, int(random_state))


def clip_bootstrap(pred: np.ndarray, true: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95,
                   method: str = "percentile", random_state: int = 0) -> dict:
    """Clip-only bootstrap of one set of predictions (n, 6) against ``true`` (n, 6): ``scipy.stats.bootstrap``
    over the clips (``paired=True``: prediction and label rows move together; ``vectorized``), statistic the
    challenge score. ``method``: "percentile" | "BCa" | "basic". -> ``{"mean", "lo", "hi", "se"}``."""
    p, t = np.asarray(pred, dtype=float).T, np.asarray(true, dtype=float).T  # (6, n): clips on the last axis

    def score(pp, tt, axis=-1):
        return pearson_last_axis(pp, tt).mean(axis=0)

    res = _st.bootstrap((p, t), score, paired=True, vectorized=True, axis=-1, n_resamples=n_resamples,
                        confidence_level=level, method=method, rng=np.random.default_rng(random_state))
    return {"mean": float(score(p, t)), "lo": float(res.confidence_interval.low),
            "hi": float(res.confidence_interval.high), "se": float(res.standard_error)}


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and rejections (``multipletests(method="holm")``) -> ``(p_adj, reject)``.
    NaN p-values (untestable comparisons) are left out of the family and stay NaN / not rejected."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(pvalues), dtype=float)
    adj, rej = np.full(p.shape, np.nan), np.zeros(p.shape, dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        rej[ok], adj[ok], _, _ = multipletests(p[ok], alpha=alpha, method="holm")
    return adj, rej


def verdict(p_adj: float, lo: float, hi: float, alpha: float = 0.05) -> str:
    """"holds" (adjusted p < alpha, interval above 0), "reversed" (below 0), "untestable" (no p-value),
    "not shown" otherwise."""
    if p_adj is None or not math.isfinite(p_adj):
        return "untestable"
    if p_adj < alpha and lo > 0:
        return "holds"
    if p_adj < alpha and hi < 0:
        return "reversed"
    return "not shown"
