"""The study's numeric targets, checked from notebook 03's runs (several model seeds, 95% intervals).

Targets (demo SynthMimic, test split; each value is a mean over model seeds with its 95% interval: the
seed+clip bootstrap of :func:`emi_lib.eval.stats.seed_clip_bootstrap` when its replicates are given, which
includes the test-set sampling, else the seed-only t interval; a difference is paired over seeds and clips):

1. full model mean PCC >= 0.60;
2. full model >= ridge on every summary feature (notebook 00's hand-made clip summaries) + 0.03;
3. vision-only model >= ridge on the face summaries;
4. full model >= the best single-modality model + 0.05 (paired difference);
5. robustness: at full occlusion and at the lowest SNR of the sweep, quality-guided fusion >= equal-weight
   fusion (paired difference over seeds).

A target is **met** when the mean clears the threshold; the interval columns say how firmly (``lo`` above the
threshold: met with the whole interval). The ridge references are thresholds, deterministic numbers. The
robustness rows stay seed-only: the sweep keeps scores per seed, not per-clip predictions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi_lib.eval.stats import BootstrapScores, mean_ci, paired_comparison


def _by_seed(scores: pd.DataFrame, key: str) -> dict:
    g = scores[scores["key"] == key]
    if g.empty:
        raise KeyError(f"no runs of {key!r}")
    return g.set_index("seed")["mean"].to_dict()


def _row(target, value, lo, hi, threshold, note=""):
    return {"target": target, "value": float(value), "lo": float(lo), "hi": float(hi), "threshold": float(threshold),
            "met": bool(value >= threshold), "margin": float(value - threshold),
            "whole interval": bool(np.isfinite(lo) and lo >= threshold), "note": note}


def study_targets(scores: pd.DataFrame, ridge_all: float, ridge_face: float, sweep: pd.DataFrame | None = None,
                  full: str = "full", singles=("vision_only", "audio_only"), equal: str = "equal",
                  boot: BootstrapScores | None = None) -> pd.DataFrame:
    """One row per target (module docstring): ``value, lo, hi, threshold, met, margin, whole interval, note``.
    ``scores``: notebook 03's long table (``key, seed, mean``); ``sweep``: the robustness sweep's long table
    (``key, seed, axis, severity, mean``) or None (its rows are then left out); ``boot``: the ablation's
    seed+clip bootstrap (intervals with test sampling) or None (seed-only t intervals)."""
    f = _by_seed(scores, full)

    def score_ci(key):
        return boot.interval(key) if boot is not None else mean_ci(np.array(list(_by_seed(scores, key).values())))

    fc = score_ci(full)
    rows = [_row("full model >= 0.60", fc["mean"], fc["lo"], fc["hi"], 0.60),
            _row("full model >= ridge on all summary features + 0.03", fc["mean"], fc["lo"], fc["hi"], ridge_all + 0.03,
                 f"ridge (all summaries) = {ridge_all:.3f}")]
    if "vision_only" in set(scores["key"]):
        vc = score_ci("vision_only")
        rows.append(_row("vision-only >= ridge on face summaries", vc["mean"], vc["lo"], vc["hi"], ridge_face,
                         f"ridge (face summaries) = {ridge_face:.3f}"))
    present = [s for s in singles if s in set(scores["key"])]
    if present:  # the stronger single modality on test: the harder bar for the full model
        best = max(present, key=lambda s: np.mean(list(_by_seed(scores, s).values())))
        c = boot.difference(full, best) if boot is not None else paired_comparison(f, _by_seed(scores, best))
        how = (f"paired over {len(boot.seeds)} seeds and {boot.n_clips} clips (bootstrap)" if boot is not None
               else f"paired over {c['n']} seeds")
        rows.append(_row("full model >= best single modality + 0.05", c["diff"], c["lo"], c["hi"], 0.05,
                         f"best single modality: {best} ({how})"))
    if sweep is not None and len(sweep) and {full, equal} <= set(sweep["key"]):
        for axis, what in (("occlusion", "full occlusion"), ("snr", "the lowest SNR")):
            g = sweep[sweep["axis"] == axis]
            if g.empty:
                continue
            worst = g[g["severity"] == g["severity"].max()]
            q = worst[worst["key"] == full].set_index("seed")["mean"].to_dict()
            e = worst[worst["key"] == equal].set_index("seed")["mean"].to_dict()
            c = paired_comparison(q, e)
            level = worst["level"].iloc[0] if "level" in worst else np.nan
            rows.append(_row(f"quality >= equal-weight fusion at {what}", c["diff"], c["lo"], c["hi"], 0.0,
                             f"{axis} level {level:g}, paired over {c['n']} seeds"))
    return pd.DataFrame(rows).set_index("target")
