r"""Seed statistics for ablations: confidence intervals and paired comparisons.

A model's score varies with its seed (initialisation, dropout, batch order). With :math:`n` seeds
:math:`x_1..x_n` the 95% confidence interval of the mean is the Student-t interval

.. math::  \bar x \pm t_{0.975,\,n-1}\, s/\sqrt n ,

which is wide for few seeds (:math:`t_{0.975,2} = 4.30` for 3 seeds): honest, not pessimistic.
Two models trained with the **same seeds on the same data** are compared *paired*: the per-seed
differences :math:`d_i = x_i^{A} - x_i^{B}` share the data noise, so their interval is usually much
narrower than the difference of two independent intervals. A claim "A beats B" **holds** when the
whole 95% interval of :math:`\bar d` lies above 0, is **reversed** when it lies below 0, and is
**not shown** otherwise. With one seed there is no interval (NaN, never 0): "untestable".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as _st


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


def paired_comparison(a: dict, b: dict, level: float = 0.95) -> dict:
    """Compare ``a`` against ``b`` ({seed: score}) on their common seeds: the mean difference a - b,
    its t interval, a two-sided paired t-test p-value, wins of a, and the verdict
    ("holds" | "reversed" | "not shown" | "untestable")."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no common seeds: a paired comparison needs the same seeds on both sides")
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    ci = mean_ci(d, level)
    if len(seeds) < 2:
        p, verdict = math.nan, "untestable"
    else:
        p = float(_st.ttest_1samp(d, 0.0).pvalue) if np.ptp(d) > 0 else (0.0 if d[0] != 0 else 1.0)
        verdict = "holds" if ci["lo"] > 0 else "reversed" if ci["hi"] < 0 else "not shown"
    return {"diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "p": p, "wins": int((d > 0).sum()),
            "n": len(seeds), "verdict": verdict}


def ci_table(scores: pd.DataFrame, by: str = "variant", value_cols: Sequence[str] | None = None,
             level: float = 0.95) -> pd.DataFrame:
    """Long table (one row per variant and seed) -> one row per variant with ``<col>`` (mean),
    ``<col>_lo``, ``<col>_hi`` for every value column, and ``n`` seeds. Row order follows first appearance."""
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
