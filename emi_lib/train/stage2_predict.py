"""Stage-2 prediction: every clip of a split through a trained ``EMIModel`` (under DDP each rank predicts
its share and the rows are gathered), and loading a run's weights.

The evaluation batches are contiguous and never dropped, so every clip is predicted, missing modalities
included; rank r takes the batches i % world_size == r and :func:`~emi_lib.distributed.gather_predictions`
puts every rank's rows back in clip order, checking that each clip was predicted exactly once. The same
function predicts the validation set after each training epoch (:func:`emi_lib.train.stage2.train_stage2`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.distributed import gather_predictions, rank_world, resolve_device
from emi_lib.models.emi_model import EMIModel
from emi_lib.train.buckets import shard
from emi_lib.train.checkpoint import load_checkpoint, load_model_state, unwrap
from emi_lib.train.data import Stage2Data, Stage2Dataset, eval_batches, to_device
from emi_lib.train.stage2_config import Stage2Config

__all__ = ["load_run", "load_weights", "predict", "predict_arrays", "stage2_dataset"]


def stage2_dataset(cfg: Stage2Config, data: Stage2Data) -> Stage2Dataset:
    """``data`` as the model of ``cfg`` reads it (feature sizes, ``max_len``, text, prior columns)."""
    m = cfg.model_config()
    dims = {"vision": m.vision_dim, "audio": m.audio_dim, "text": m.text_dim}
    cols = cfg.prior_columns if m.use_priors else None
    return Stage2Dataset(data, dims, cfg.max_len, cfg.max_len_audio, m.use_text, cols)


@torch.no_grad()
def predict_arrays(model, ds: Stage2Dataset, batch_size: int, device, rank: int = 0, world: int = 1) -> dict:
    """Predict every clip of ``ds``: this rank's share of the contiguous evaluation batches (none dropped),
    then every rank's rows together in ``ds.ids`` order (:func:`~emi_lib.distributed.gather_predictions`,
    which also checks that each clip was predicted exactly once). Arrays of float32, ``scores`` None for a
    fusion without quality scores."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    mods = list(net.modalities)
    width = {"pred": len(EMOTIONS), "weights": len(mods), "available": len(mods), "scores": len(mods)}
    keys = ["pred", "weights", "available"] + (["scores"] if net.fusion.has_scores else [])
    ids, rows = [], []
    for b in shard(eval_batches(len(ds), batch_size), rank, world, even=False):
        out = net(to_device(ds.collate(b), device))
        ids += [ds.ids[i] for i in b]
        rows.append(np.concatenate([out[k].float().cpu().numpy() for k in keys], axis=1))
    net.train(was_training)
    columns = [f"{k}_{j}" for k in keys for j in range(width[k])]
    table = gather_predictions(ids, np.concatenate(rows) if rows else np.zeros((0, len(columns))), columns,
                               expected=ds.ids).to_numpy()
    res, at = {"modalities": mods, "scores": None}, 0
    for k in keys:  # float32 -> float64 (the gather) -> float32 is exact; C order keeps the loss's summation order
        res[k], at = np.ascontiguousarray(table[:, at: at + width[k]], dtype=np.float32), at + width[k]
    return res


def predict(model, data: Stage2Data, batch_size: int = 64, cfg: Stage2Config | None = None, device=None,
            rank: int | None = None, world_size: int | None = None):
    """Predictions for **every** clip of ``data`` (missing modalities included).

    Returns ``(pred, weights, extras)``: ``pred`` DataFrame indexed by id with the six EMOTIONS columns,
    ``weights`` DataFrame of per-clip fusion weights (one column per modality, 0 for a missing one),
    ``extras`` {"available": bool DataFrame, "scores": quality scores DataFrame or None,
    "missing": clips lacking each stream, "n": clip count}. ``cfg`` (max_len, prior columns) defaults
    to the config the model was trained or loaded with (``model.stage2_config``)."""
    net = unwrap(model)
    cfg = cfg or getattr(net, "stage2_config", None) or Stage2Config(model=net.cfg.to_dict(), max_len=None)
    rank, world = rank_world(rank, world_size)
    device = device or next(net.parameters()).device
    res = predict_arrays(model, stage2_dataset(cfg, data), batch_size, device, rank, world)
    ids = pd.Index(data.ids, name="Filename")
    pred = pd.DataFrame(res["pred"], index=ids, columns=list(EMOTIONS))
    weights = pd.DataFrame(res["weights"], index=ids, columns=res["modalities"])
    extras = {"available": pd.DataFrame(res["available"].astype(bool), index=ids, columns=res["modalities"]),
              "scores": None if res["scores"] is None else pd.DataFrame(res["scores"], index=ids,
                                                                      columns=res["modalities"]),
              "missing": data.missing_counts(), "n": len(ids)}
    return pred, weights, extras


def load_weights(model: EMIModel, path, map_location="cpu") -> EMIModel:
    """Load ``best.pt``/``checkpoint.pt`` weights into ``model``: weights-only, strict, with a clear
    :class:`~emi_lib.train.checkpoint.CheckpointMismatchError` when the model's config differs."""
    return load_model_state(model, load_checkpoint(path, map_location)["model"], str(path))


def load_run(run_dir, which: str = "best", device: str = "cpu") -> tuple[EMIModel, Stage2Config]:
    """The model of a run (``which`` = "best" or "checkpoint"), built from the checkpoint's own config."""
    path = Path(run_dir) / f"{which}.pt"
    device = resolve_device(device)
    ck = load_checkpoint(path, map_location=device)
    cfg = Stage2Config.from_dict(ck["config"])
    model = load_model_state(EMIModel(cfg.model_config()), ck["model"], str(path)).to(device)
    model.stage2_config = cfg
    return model.eval(), cfg
