"""Notebook 01 (stage-1 contrastive pre-training) executed headlessly by papermill with PROFILE="smoke"."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from emi_lib.data import DataRoot
from emi_lib.features.store import FeatureStore


def test_01_stage1_contrastive_pretraining(run_notebook):
    rec, out_dir = run_notebook("01_stage1_contrastive_pretraining.ipynb")

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
