"""Notebook 03 (ablation and robustness) executed headlessly by papermill in the smoke profile.

Notebook 01 runs first (smoke, into its own folder) so that the full model reads stage-1 aligned
features and the "no stage 1" arm exists; two seeds and two worker processes exercise the
seed+clip bootstrap intervals, the paired comparisons with their Holm-adjusted p-values and the parallel runner."""

from __future__ import annotations

import math

import papermill as pm

from emi_lib.experiments.ablation import VARIANTS

VERDICTS = {"holds", "reversed", "not shown", "untestable"}
CLAIM_VERDICTS = {"held", "contradicted", "not shown", "untestable", "untestable (1 seed)", "not run"}


def test_03_ablation_fusion_weights(run_notebook, tmp_path):
    from pathlib import Path

    nb_dir = Path(__file__).resolve().parent.parent / "notebooks"
    s1 = tmp_path / "stage1"
    pm.execute_notebook(str(nb_dir / "01_stage1_contrastive_pretraining.ipynb"), str(tmp_path / "01.ipynb"),
                        parameters={"PROFILE": "smoke", "RUN_DIR": str(s1), "FINETUNE_FOLDS": 2}, kernel_name="python3",
                        cwd=str(tmp_path), progress_bar=False)
    rec, out_dir = run_notebook("03_ablation_fusion_weights.ipynb", STAGE1_RUN=str(s1), MODEL_SEEDS=[0, 1], WORKERS=2)

    assert rec["full_model_inputs"] == "stage1"
    table = rec["ablation_table"]
    assert set(table) == {v.label for v in VARIANTS.values()}  # every arm ran, stage 1 included
    for label, row in table.items():
        for col, ci in row.items():
            assert math.isfinite(ci["mean"]), (label, col)
            assert ci["lo"] is not None and ci["lo"] < ci["hi"], (label, col, ci)  # seed+clip bootstrap interval
        assert row["mean"]["lo"] <= row["mean"]["mean"] <= row["mean"]["hi"], (label, row["mean"])
    ridge = table[VARIANTS["ridge"].label]["mean"]  # deterministic: its interval is the clip bootstrap's
    assert math.isfinite(ridge["lo"]) and math.isfinite(ridge["hi"]) and ridge["hi"] - ridge["lo"] > 1e-6
    assert rec["bootstrap"]["n_resamples"] == 200 and rec["bootstrap"]["seeds"] == [0, 1]
    paired = rec["paired"]
    assert set(paired) == set(VARIANTS) - {"full"}
    assert all(p["verdict"] in VERDICTS and p["n"] == 2 for p in paired.values())
    for key, p in paired.items():
        assert {"p", "p_holm", "p_seed_t", "lo", "hi"} <= set(p), key
        assert p["p"] is not None and 0 < p["p"] <= 1, (key, p["p"])  # +1-corrected: never 0
        assert p["p_holm"] is not None and p["p"] <= p["p_holm"] <= 1, (key, p)
        assert p["p_seed_t"] is None or p["p_seed_t"] > 0, (key, p["p_seed_t"])  # NaN (None), never 0
        holds = p["p_holm"] < 0.05 and p["lo"] > 0
        assert (p["verdict"] == "holds") == holds, (key, p)
    best = rec["best_variant"]
    assert best["variant"] in table and math.isfinite(best["val_best"]) and best["test_lo"] < best["test_hi"]
    assert {c["verdict"] for c in rec["claims"].values()} <= CLAIM_VERDICTS
    assert rec["robustness_verdict"] in CLAIM_VERDICTS
    curve = rec["robustness_curve"]
    assert {k.split("@")[0] for k in curve} == {"occlusion", "snr"}
    assert all(math.isfinite(v) for row in curve.values() for v in row.values())
    w = rec["robustness_weights"]
    assert all(abs(r["w_vision"] + r["w_audio"] - 1) < 1e-4 for r in w.values())
    assert len(rec["robustness_degradation"]) == 6  # 2 axes x (equal, static, concat)
    for name in ("ablation_bars", "ablation_paired", "robustness_sweep"):
        assert (out_dir / f"{name}.png").stat().st_size > 0
    for name in ("ablation_table", "ablation_paired", "ablation_conclusions"):
        assert (out_dir / f"{name}.md").read_text().strip()
    assert rec["runtime_s"] > 0  # recorded; speed is measured by the test phase's time, not asserted
