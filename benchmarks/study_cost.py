"""Cost of notebook 03's ``STUDY`` (the ablation on SynthMimic's ``bench`` profile, 1000/500/500 clips), from
measured steps. A benchmark, not a test: it never runs the whole study.

    python benchmarks/study_cost.py [--runs-dir /tmp/study_cost] [--seeds 5] [--workers 2]

Measured: generating the bench root, extracting its default raw features (face mesh, ComParE + log mel), and
**one** training run of the full model (demo model sizes and budget, seed 0, one torch thread, raw features).
Extrapolated: that run's time times the number of stage-2 runs of the study (its stage-2 arms x seeds, the
fine-tuned-tower arm included, which runs only after notebook 01 with FINETUNE_FOLDS >= 2), divided by the worker
processes. An extrapolation: arms differ in cost (a single-modality arm is cheaper, the text arm
dearer), stage-1 aligned inputs are not the raw ones, and other backbones (openclip, fer) are extracted on top.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default="/tmp/study_cost", help="EMI_RUNS_DIR of the measurement")
    ap.add_argument("--seeds", type=int, default=5, help="model seeds of the study")
    ap.add_argument("--workers", type=int, default=2, help="training processes of the study")
    args = ap.parse_args(argv)
    os.environ["EMI_RUNS_DIR"] = str(Path(args.runs_dir).resolve())

    import torch

    from emi_lib.experiments.ablation import STUDY_SEEDS, VARIANTS, default_variants, variant_config
    from emi_lib.notebook import resolve_data_root
    from emi_lib.train.inputs import prepare_stage2_inputs
    from emi_lib.train.stage2 import train_stage2

    torch.set_num_threads(1)
    out = {"cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    t0 = time.perf_counter()
    root = resolve_data_root("", "demo", 0, synth_profile="bench")
    out["generate_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    inp = prepare_stage2_inputs(root, "demo", stage1="none", verbose=False)
    out["features_s"] = round(time.perf_counter() - t0, 1)
    sets = inp.sets
    cfg = variant_config("full", "demo", inp.dims(), 0, len(sets["train"]))
    t0 = time.perf_counter()
    _, hist = train_stage2(cfg, sets["train"], sets["valid"], Path(args.runs_dir) / "full_seed0", progress=False,
                           resume=False)
    out["train_s"] = round(time.perf_counter() - t0, 1)
    out["epochs"] = len(hist)
    out["val_best"] = float(hist.attrs["best_score"])
    arms = [k for k in default_variants("demo") if VARIANTS[k].kind == "stage2"]
    seeds = args.seeds or len(STUDY_SEEDS)
    out["stage2_runs"] = len(arms) * seeds
    out["extrapolated_training_s"] = round(out["train_s"] * out["stage2_runs"] / args.workers, 1)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
