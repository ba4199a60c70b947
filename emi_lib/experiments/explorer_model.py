"""The explorer's model: notebook 02's full model when it was trained on the same inputs, else one trained here.

It combines training (a fallback model) with the checks of a run's provenance, so it lives above the
training, evaluation and plotting layers; :mod:`emi_lib.viz.explorer` only draws.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from emi_lib.data.fingerprint import ProvenanceError
from emi_lib.paths import model_run_dir, stage_run_dir
from emi_lib.train.checkpoint import CheckpointMismatchError
from emi_lib.train.config import stage2_config
from emi_lib.train.run_record import check_run_inputs, record_run_inputs
from emi_lib.train.stage2 import load_run, train_stage2


def resolve_model(profile: str, inputs, out_dir, *, model_run=None, seed: int = 0):
    """Notebook 02's full model (``model_run`` or its default folder) when it was trained on inputs like
    ``inputs`` (its ``inputs.json``: same data root and fingerprint, streams and z-scoring, checked by
    :func:`~emi_lib.train.inputs.check_run_inputs`), else a small model trained here on the smoke budget.
    An explicit ``model_run`` that does not fit raises :class:`~emi_lib.data.fingerprint.ProvenanceError`.
    Returns ``(model, source, why)``."""
    folder = Path(model_run) if model_run else model_run_dir(stage_run_dir(profile, "02_stage2_fusion_training"), "full")
    dims = inputs.dims()
    if (folder / "best.pt").exists():
        why = check_run_inputs(folder, inputs)
        if why is None:
            try:  # strict: a checkpoint of another model version is refused, with its reason
                model, cfg = load_run(folder)
            except CheckpointMismatchError as err:
                model, why = None, f"{folder} does not fit this version's model ({err})"
            if model is not None and cfg.model["vision_dim"] == dims["vision"] and cfg.model["audio_dim"] == dims["audio"]:
                return model, "notebook 02", f"notebook 02's full model from {folder}"
            if model is not None:
                why = (f"{folder} expects dims vision {cfg.model['vision_dim']} / audio {cfg.model['audio_dim']}, "
                       f"inputs have {dims}")
        if model_run:
            raise ProvenanceError(f"MODEL_RUN={model_run} does not fit these inputs: {why}")
    elif model_run:
        raise FileNotFoundError(f"MODEL_RUN={model_run} holds no best.pt")
    else:
        why = f"no notebook-02 model at {folder}"
    run = Path(out_dir) / "model_trained_here"
    shutil.rmtree(run, ignore_errors=True)
    cfg = stage2_config("smoke", dims, seed=seed, n_train=len(inputs.sets["train"]))
    model, _ = train_stage2(cfg, inputs.sets["train"], inputs.sets["valid"], run, progress=False, resume=False)
    record_run_inputs(run, inputs, "smoke")
    return model.eval(), "trained here", f"{why}: trained a small model here (smoke budget, {run})"
