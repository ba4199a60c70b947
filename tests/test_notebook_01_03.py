"""Notebooks 01 (stage-1 contrastive pre-training) and 03 (ablation and robustness) executed headlessly by papermill
with PROFILE="smoke". One notebook-01 run serves both (the ``stage1_notebook`` fixture): its test asserts what it
wrote, and notebook 03 trains on it, so that the full model reads stage-1 aligned features and the "no stage 1"
and fine-tuned-tower arms exist. Notebook 03 runs two seeds and two worker processes to exercise the seed+clip
bootstrap intervals, the paired comparisons with their Holm-adjusted p-values and the parallel runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from notebook_runs import execute_notebook

from emi_lib.data import DataRoot
from emi_lib.experiments.ablation import VARIANTS
from emi_lib.features.store import FeatureStore


@pytest.fixture(scope="module")
def stage1_notebook(notebook_env, tmp_path_factory):
    """Notebook 01 run once by papermill (smoke) with a fine-tuned tower exported out of fold (FINETUNE_FOLDS=2):
    its test asserts what it wrote, and notebook 03's test trains on it -> (records, run dir)."""
    tmp = tmp_path_factory.mktemp("nb01")
    out_dir = tmp / "run"
    return execute_notebook("01_stage1_contrastive_pretraining.ipynb", out_dir, tmp, FINETUNE_FOLDS=2), out_dir


def test_01_stage1_contrastive_pretraining(stage1_notebook):
    rec, out_dir = stage1_notebook  # run with FINETUNE_FOLDS=2 (shared with notebook 03's test)

    for m in ("vision", "audio"):
        r = rec["retrieval"][m]
        for k in ("clip2text_R@1", "clip2text_R@5", "text2clip_R@1", "text2clip_R@5", "chance_R@1"):
            assert 0.0 <= r[k] <= 1.0, (m, k, r[k])
        assert r["clip2text_R@1"] <= r["clip2text_R@5"] and r["text2clip_R@1"] <= r["text2clip_R@5"]
        # label prompts (the default): the train split is exported out of fold, three probe rows per modality
        for kind in ("raw", "aligned", "aligned_in_fold", "aligned_oof"):
            row = rec["probe"][m][kind]
            assert row["mean"] is not None and math.isfinite(row["mean"]), (m, kind, row)
            assert "train CV" in row, (m, kind, row)
        assert rec["probe"][m]["aligned"] == rec["probe"][m]["aligned_oof"]  # what stage 2 reads
        assert 0.01 - 1e-6 <= rec["final_temperature"][m] <= 1.0
    assert set(rec["aligned_beats_raw"]) == {"vision", "audio"}
    assert rec["oof_folds"] == 3 and rec["train_export"] == {"vision": "out_of_fold", "audio": "out_of_fold"}
    assert rec["runtime_s"] > 0  # recorded; speed is measured by the test phase's time, not asserted

    spec = json.loads((out_dir / "stage1_outputs.json").read_text())
    assert spec["schema"] == "emi.stage1_outputs/v1"
    assert spec["splits"] == ["train", "valid", "test"]
    store = FeatureStore(spec["store_dir"])
    data = DataRoot(spec["data_root"])
    folds = pd.read_csv(out_dir / "stage1_train_folds.csv", dtype={"id": str}).set_index("id")["fold"]
    assert set(folds.index) == set(data.ids("train")) and set(folds) == {0, 1, 2}
    for m in ("vision", "audio"):
        mod = spec["modalities"][m]
        assert mod["train_export"] == "out_of_fold" and mod["oof_folds"] == 3
        assert mod["oof_fold_file"] == str((out_dir / "stage1_train_folds.csv").resolve())
        frames, clips = mod["frames"], mod["clips"]
        assert frames["modality"] == f"{m}_aligned"
        for split in spec["splits"]:
            ids = data.ids(split)
            assert store.done_ids(frames["modality"], frames["backbone"], split) >= set(ids)
            assert store.done_ids(clips["modality"], clips["backbone"], split) >= set(ids)
            seq = store.read(frames["modality"], frames["backbone"], split, ids[0])
            emb = store.read(clips["modality"], clips["backbone"], split, ids[0])
            assert seq.shape[1] == frames["dim"] and emb.shape == (1, clips["dim"])
            for cid in mod["missing"][split]:
                assert store.read(frames["modality"], frames["backbone"], split, cid).shape == (0, frames["dim"])
        assert (out_dir / f"aligner_{m}.pt").exists()
        present = next(c for c in data.ids("valid") if c not in mod["missing"]["valid"])
        emb = store.read(clips["modality"], clips["backbone"], "valid", present)
        assert np.isclose(np.linalg.norm(emb), 1.0, atol=1e-4)
    for name in ("stage1_losses", "stage1_temperature", "stage1_probe", "stage1_pca"):
        assert (out_dir / f"{name}.png").stat().st_size > 0


VERDICTS = {"holds", "reversed", "not shown", "untestable"}
CLAIM_VERDICTS = {"held", "contradicted", "not shown", "untestable", "untestable (1 seed)", "not run"}


def test_03_ablation_fusion_weights(run_notebook, stage1_notebook):
    _, s1 = stage1_notebook  # notebook 01's papermill run (its own test asserts it), with a fine-tuned tower
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
