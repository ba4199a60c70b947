"""Notebook 02 (stage-2 fusion training) executed headlessly by papermill in the smoke profile.

The shared SynthMimic smoke root and its raw features are prepared first (as notebooks 00/01 do
under ``make test``), so the notebook's recorded runtime measures notebook 02 itself."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _prepare_shared_inputs() -> None:
    from emi_lib.data.synth import ensure_synthmimic
    from emi_lib.features.extract import extract_all
    from emi_lib.features.store import FeatureStore
    from emi_lib.notebook import feature_store_dir, synth_root

    root = ensure_synthmimic(synth_root("smoke", 0), profile="smoke", seed=0, progress=False)
    extract_all(root, FeatureStore(feature_store_dir("smoke", root)), "openclip-tiny", "logmel", None,
                progress=False)


def test_02_stage2_fusion_training(run_notebook):
    from emi_lib.eval.submission import validate_submission

    assert os.environ.get("EMI_RUNS_DIR")  # set by the notebook_env fixture behind run_notebook
    _prepare_shared_inputs()
    rec, out_dir = run_notebook("02_stage2_fusion_training.ipynb")
    scores = rec["test_scores"]
    assert set(scores) == {"full (quality fusion)", "vision only", "audio only", "equal-weight fusion"}
    for name, s in scores.items():
        for key, value in s.items():
            assert value is not None and math.isfinite(value), f"{name} {key} = {value}"
    assert 0.5 < rec["noise_ceiling"]["mean"] <= 1.0
    sub = out_dir / "submission.csv"
    assert sub.exists()
    root = Path(rec["data_root"])
    assert len(validate_submission(sub, root)) > 0
    assert abs(rec["submission_score"] - scores["full (quality fusion)"]["mean"]) < 1e-4
    assert set(rec["targets"]) == {"full >= 0.60 mean PCC", "full >= best single modality + 0.05",
                                   "quality > equal fusion on corrupted clips"}
    assert all(isinstance(t["holds"], bool) for t in rec["targets"].values())
    w = rec["mean_weights_by_corruption"]
    assert all(abs(v["vision"] + v["audio"] - 1) < 1e-4 for v in w.values())
    assert rec["runtime_s"] > 0  # recorded; speed is measured by the test phase's time, not asserted
    assert (out_dir / "stage2_scatter.png").stat().st_size > 0
