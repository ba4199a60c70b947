"""The study's targets are computed from the runs, with paired intervals, and can fail."""

from __future__ import annotations

import pandas as pd
import pytest

from emi_lib.eval.targets import study_targets


def _scores(full=(0.65, 0.64, 0.66), vision=(0.45, 0.44, 0.46), audio=(0.55, 0.56, 0.54)):
    rows = []
    for key, vals in (("full", full), ("vision_only", vision), ("audio_only", audio)):
        rows += [{"key": key, "seed": s, "mean": v} for s, v in enumerate(vals)]
    return pd.DataFrame(rows)


def _sweep(q=(0.50, 0.52, 0.51), e=(0.45, 0.47, 0.46)):
    rows = []
    for key, vals in (("full", q), ("equal", e)):
        for s, v in enumerate(vals):
            rows += [{"key": key, "seed": s, "axis": "snr", "severity": 1.0, "level": -10.0, "mean": v},
                     {"key": key, "seed": s, "axis": "snr", "severity": 0.0, "level": 0.0, "mean": v + 0.1}]
    return pd.DataFrame(rows)


def test_targets_met_and_missed():
    t = study_targets(_scores(), ridge_all=0.54, ridge_face=0.37, sweep=_sweep())
    assert t.loc["full model >= 0.60", "met"] and t.loc["full model >= 0.60", "whole interval"]
    assert t.loc["full model >= 0.60", "value"] == pytest.approx(0.65)
    r = t.loc["full model >= ridge on all summary features + 0.03"]
    assert r["threshold"] == pytest.approx(0.57) and r["met"]
    best = t.loc["full model >= best single modality + 0.05"]
    assert best["value"] == pytest.approx(0.10) and best["met"] and "audio_only" in best["note"]
    q = t.loc["quality >= equal-weight fusion at the lowest SNR"]
    assert q["value"] == pytest.approx(0.05) and q["met"]
    missed = study_targets(_scores(full=(0.58, 0.57, 0.59)), ridge_all=0.54, ridge_face=0.50)
    assert not missed.loc["full model >= 0.60", "met"]
    assert missed.loc["full model >= 0.60", "margin"] == pytest.approx(-0.02)
    assert not missed.loc["vision-only >= ridge on face summaries", "met"]
    assert "quality >= equal-weight fusion at the lowest SNR" not in missed.index  # no sweep given


def test_targets_take_the_seed_clip_bootstrap_intervals():
    import numpy as np

    from emi_lib.eval.stats import seed_clip_bootstrap

    rng = np.random.default_rng(0)
    y = rng.uniform(size=(100, 6))
    preds = {k: np.stack([y + rng.normal(scale=s, size=y.shape) for _ in range(3)])
             for k, s in (("full", 0.2), ("vision_only", 0.6), ("audio_only", 0.5))}
    rows = [{"key": k, "seed": s, "mean": float(np.mean([np.corrcoef(p[s][:, j], y[:, j])[0, 1] for j in range(6)]))}
            for k, p in preds.items() for s in range(3)]
    boot = seed_clip_bootstrap(preds, y, n_resamples=300)
    t = study_targets(pd.DataFrame(rows), ridge_all=0.5, ridge_face=0.3, boot=boot)
    full = t.loc["full model >= 0.60"]
    assert full["value"] == pytest.approx(boot.interval("full")["mean"]) and full["lo"] == boot.interval("full")["lo"]
    best = t.loc["full model >= best single modality + 0.05"]
    assert best["lo"] == pytest.approx(boot.difference("full", "audio_only")["lo"]) and "bootstrap" in best["note"]
