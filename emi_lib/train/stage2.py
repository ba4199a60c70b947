r"""Stage-2 training: ``EMIModel`` on per-clip sequences, with resumable, atomic checkpoints.

Paper (arXiv 2503.10603, stage 2) gives no training recipe; everything here is ours and a field of
:class:`Stage2Config`:

- loss :math:`\lambda_{mse}\,\mathrm{MSE} + \lambda_{pcc}\,\frac16\sum_e(1 - r_e)` (:func:`emi_loss`, batch r);
- AdamW (no weight decay on biases and norm gains: parameters with ndim <= 1), gradient clipping
  on the global norm, and a per-step learning rate :math:`\eta_s = \eta\,f(s)` with linear warm-up
  then cosine decay over the :math:`S` optimiser steps of the run (``LambdaLR``):

  .. math::

      f(s) = \frac{s + 1}{W} \;(s < W), \qquad
      f(s) = \rho + (1 - \rho)\,\tfrac12\big(1 + \cos(\pi\,\tfrac{s - W}{\max(1, S - W)})\big) \;(s \ge W),

  with :math:`W` = ``warmup_steps`` (or ``round(warmup_ratio * S)``) and :math:`\rho` = ``min_lr_ratio``;
- a split where more than ``max_missing_share`` of the clips lack a stream's features although their
  media exist (failed extractions, :func:`~emi_lib.train.data.check_missing_share`) is refused before
  training, naming the clips; clips whose media are absent (``Stage2Data.absent``) are missing modalities;
- early stopping on the validation mean PCC (``challenge_score`` over the **whole** validation set
  after each epoch; a NaN score never counts as an improvement), ``patience`` epochs; with
  ``restore_best`` a run whose every validation score was NaN (so no ``best.pt``) raises ``RuntimeError``
  rather than returning its last weights as if they were the best;
- optional (off by default): modality dropout and feature-level face / audio corruptions of the
  training batches (:mod:`emi_lib.train.augment`, drawn from a generator seeded by (seed, epoch,
  step), never in evaluation), and per-modality auxiliary heads, loss
  :math:`\mathcal L + w_{aux}\,\mathcal L_{aux}` (:func:`~emi_lib.train.losses.stage2_loss`).

Run folder: ``config.json`` (this config), ``checkpoint.pt`` (the latest state: model, optimiser,
scheduler, epoch, step within the epoch, best score, early-stop counter, history, RNG states and the
epoch's batch order; written every ``ckpt_every_steps`` steps and at every epoch end), ``best.pt``
(the best validation weights), ``history.csv`` and ``data_summary.json`` (clips lacking each modality).
All written atomically. A killed run restarts from ``checkpoint.pt`` and ends with the same metrics
as an uninterrupted one: the batch order is a pure function of (seed, epoch) and the RNG states are
restored, so dropout draws the same masks.

DDP (``torchrun``, see ``docs/distributed.md``): ``rank``/``world_size`` default to ``torch.distributed``
when it is initialised (:func:`emi_lib.distributed.init_distributed`).

- Training batches: every rank computes the same (seed, epoch) order; rank r takes the batches
  i % world_size == r of it, cut to a multiple of world_size first, so every rank runs the same
  number of optimiser steps (``batch_size`` is per rank: the global batch is world_size times it).
  The loss (MSE + batch-Pearson term) is per rank batch; ``DistributedDataParallel`` averages the
  gradients, so every rank applies the same update and the weights stay identical.
- Dropout: rank 0 draws from the run's seed (a one-rank run equals a single-process one); rank r > 0
  reseeds torch with ``seed + r`` after building the model (initial weights are rank 0's, broadcast
  by DDP). Each rank's RNG state, batch order and loss sums are checkpointed (``per_rank``) and
  restored on resume, which needs the same world size (checked).
- Validation: evaluation batches are split across ranks, the predictions are all-gathered and the
  dataset-level ``challenge_score`` is computed on the whole set (never a per-rank average of Pearson r,
  which is not additive over shards); every rank gets the same score and so takes the same
  early-stopping decision.
- Files: only rank 0 writes (``config.json``, checkpoints, ``best.pt``, ``history.csv``); the other
  ranks wait at a barrier after each epoch's writes. On resume rank 0 reads ``checkpoint.pt`` and
  broadcasts it; at the end rank 0 reads ``best.pt`` and broadcasts the weights, so ``run_dir`` need
  not be on a shared file system and every rank returns the same model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    gather_predictions,
    rank_world,
    resolve_device,
)
from emi_lib.eval.metrics import challenge_score
from emi_lib.models.emi_model import EMIModel
from emi_lib.train.augment import augment_batch, augment_generator, augmentation_enabled
from emi_lib.train.buckets import shard
from emi_lib.train.checkpoint import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    load_model_state,
    unwrap,
)
from emi_lib.train.data import (
    Stage2Data,
    Stage2Dataset,
    check_missing_share,
    epoch_batches,
    eval_batches,
    to_device,
)
from emi_lib.train.losses import emi_loss, stage2_loss
from emi_lib.train.seeding import rng_state, seed_everything, set_rng_state
from emi_lib.train.stage2_config import RESUMABLE_CHANGES, Stage2Config, check_resumable

__all__ = ["RESUMABLE_CHANGES", "Stage2Config", "TrainingInterrupted", "check_resumable", "load_run", "load_weights",
           "lr_factor", "predict", "train_stage2"]


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` hook (simulates a run killed mid-epoch)."""


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Multiplier f(step) of the learning rate (module docstring)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _dataset(cfg: Stage2Config, data: Stage2Data) -> Stage2Dataset:
    m = cfg.model_config()
    dims = {"vision": m.vision_dim, "audio": m.audio_dim, "text": m.text_dim}
    cols = cfg.prior_columns if m.use_priors else None
    return Stage2Dataset(data, dims, cfg.max_len, cfg.max_len_audio, m.use_text, cols)


def _iter_batches(ds: Stage2Dataset, batches: list, num_workers: int):
    if num_workers <= 0:
        return (ds.collate(b) for b in batches)
    return iter(torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=ds.collate,
                                            num_workers=num_workers, generator=torch.Generator()))


@torch.no_grad()
def _run_eval(model, ds: Stage2Dataset, batch_size: int, device, rank: int = 0, world: int = 1) -> dict:
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
    res = _run_eval(model, _dataset(cfg, data), batch_size, device, rank, world)
    ids = pd.Index(data.ids, name="Filename")
    pred = pd.DataFrame(res["pred"], index=ids, columns=list(EMOTIONS))
    weights = pd.DataFrame(res["weights"], index=ids, columns=res["modalities"])
    extras = {"available": pd.DataFrame(res["available"].astype(bool), index=ids, columns=res["modalities"]),
              "scores": None if res["scores"] is None else pd.DataFrame(res["scores"], index=ids,
                                                                      columns=res["modalities"]),
              "missing": data.missing_counts(), "n": len(ids)}
    return pred, weights, extras


def _fresh_state() -> dict:
    accum = {"loss": 0.0, "mse": 0.0, "pcc": 0.0, "n": 0}
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": 0,
            "bad_epochs": 0, "finished": False, "history": [], "accum": accum}


def train_stage2(cfg: Stage2Config, train_data: Stage2Data, val_data: Stage2Data, run_dir, progress: bool = True,
                 resume: bool = True, rank: int | None = None, world_size: int | None = None,
                 stop_after_steps: int | None = None, log_epochs: bool = False):
    """Train (or resume) a stage-2 run in ``run_dir``; returns ``(model, history)`` (module docstring).

    ``stop_after_steps`` raises :class:`TrainingInterrupted` after that many optimiser steps (global
    count) without writing anything more: a test hook that simulates a kill. ``log_epochs`` prints one line per
    epoch on rank 0 (epoch, train loss, validation mean PCC, seconds), for runs without a progress bar."""
    from tqdm.auto import tqdm

    rank, world = rank_world(rank, world_size)
    main = rank == 0
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device, rank, world)
    seed_everything(cfg.seed, cfg.deterministic)
    net = EMIModel(cfg.model_config()).to(device)
    net.stage2_config = cfg
    if rank > 0:  # own dropout draws per rank; the initial weights are rank 0's (DDP broadcasts them)
        torch.manual_seed(cfg.seed + rank)
    for name, d in (("train", train_data), ("valid", val_data)):  # failed features are not missing modalities
        check_missing_share(d, net.modalities, cfg.max_missing_share, name)
    train_ds, val_ds = _dataset(cfg, train_data), _dataset(cfg, val_data)
    if train_ds.labels is None or val_ds.labels is None:
        raise ValueError("train_data and val_data need labels")
    if train_ds.priors is not None:  # standardisation of the priors from the training clips (model buffers)
        net.set_prior_stats(train_ds.priors, cfg.prior_columns)
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = len(shard(epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, 0, cfg.drop_last,
                                              train_ds.lengths() if cfg.bucket_by_length else None), rank, world))
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    st, saved_order = _fresh_state(), None
    # rank 0 reads the checkpoint (on the CPU: RNG states must stay there) and broadcasts it
    ck = load_checkpoint(ckpt_path) if main and resume and ckpt_path.exists() else None
    ck = broadcast_object(ck) if world > 1 else ck
    if ck is not None:
        check_resumable(ck["config"], cfg, ckpt_path)
        load_model_state(net, ck["model"], str(ckpt_path))
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        st = {k: ck[k] for k in _fresh_state()}
        saved_order = ck["batch_order"]
        if int(ck.get("world_size", 1)) != world:
            raise ValueError(f"{ckpt_path} was written by a run of {ck.get('world_size', 1)} process(es), this one "
                             f"has {world}: the batch sharding and schedule differ; resume with the same world size")
        per_rank = ck.get("per_rank")  # DDP: each rank's own RNG state, batch order and loss sums
        if world > 1 and per_rank is not None:
            mine = per_rank[rank]
            saved_order, st["accum"] = mine["batch_order"], mine["accum"]
            set_rng_state(mine["rng"])
        else:
            set_rng_state(ck["rng"])
    elif main:
        for stale in (ckpt_path, best_path):  # a fresh run must never restore an older run's weights
            stale.unlink(missing_ok=True)
        cfg.to_json(run_dir / "config.json")
        missing = {"train": train_data.missing_counts(), "valid": val_data.missing_counts(),
                   "n": {"train": len(train_ds), "valid": len(val_ds)}}
        atomic_write_json(missing, run_dir / "data_summary.json")
        if progress:
            tqdm.write(f"stage 2: {len(train_ds)} train / {len(val_ds)} val clips; clips lacking a modality "
                       f"(train {missing['train']}, val {missing['valid']})")
    model = net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def save(order):  # called on every rank at the same steps (per-rank states are gathered)
        rng = rng_state()
        per_rank = all_gather_object({"rng": rng, "batch_order": order, "accum": dict(st["accum"])})
        if main:
            extra = {"world_size": world, "per_rank": per_rank} if world > 1 else {}
            atomic_torch_save({"format": 1, "config": cfg.to_dict(), "model": net.state_dict(),
                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), **st,
                               "batch_order": order, "rng": rng, **extra}, ckpt_path)

    val_labels = val_data.labels.loc[val_ds.ids, list(EMOTIONS)]
    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    ebar = tqdm(total=cfg.epochs, initial=st["epoch"], desc="epochs", disable=not (progress and main))
    while not st["finished"]:
        epoch, t0 = st["epoch"], time.perf_counter()
        batches = shard(epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, epoch, cfg.drop_last,
                                      train_ds.lengths() if cfg.bucket_by_length else None), rank, world)
        if st["step_in_epoch"] and saved_order is not None and saved_order != batches:
            raise RuntimeError(f"{ckpt_path}: the saved batch order differs from the recomputed one")
        model.train()
        sbar = tqdm(total=len(batches), initial=st["step_in_epoch"], desc=f"epoch {epoch + 1}", leave=False,
                    disable=not (progress and main))
        for j, batch in enumerate(_iter_batches(train_ds, batches[st["step_in_epoch"]:], cfg.num_workers),
                                  start=st["step_in_epoch"]):
            if augmentation_enabled(cfg):  # training batches only; replayed exactly on resume
                batch = augment_batch(batch, cfg, augment_generator(cfg.seed, epoch, j, rank))
            batch = to_device(batch, device)
            loss, parts = stage2_loss(model(batch), batch["labels"], cfg.mse_weight, cfg.pcc_weight, cfg.aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            b = len(batch["ids"])
            acc = st["accum"]
            acc.update(loss=acc["loss"] + loss.item() * b, mse=acc["mse"] + parts["mse"].item() * b,
                       pcc=acc["pcc"] + parts["pcc"].item() * b, n=acc["n"] + b)
            st["global_step"] += 1
            st["step_in_epoch"] = j + 1
            sbar.update()
            sbar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.ckpt_every_steps and st["global_step"] % cfg.ckpt_every_steps == 0 and j + 1 < len(batches):
                save(batches)
            if stop_after_steps is not None and st["global_step"] >= stop_after_steps:
                sbar.close()
                ebar.close()
                raise TrainingInterrupted(f"stopped after step {st['global_step']} (stop_after_steps hook)")
        sbar.close()
        res = _run_eval(model, val_ds, eval_bs, device, rank, world)
        pred = pd.DataFrame(res["pred"], index=val_labels.index, columns=list(EMOTIONS))
        score = challenge_score(pred, val_labels)
        vloss, vparts = emi_loss(torch.tensor(res["pred"]), torch.tensor(val_labels.to_numpy()),
                                 cfg.mse_weight, cfg.pcc_weight)
        gathered = all_gather_object(st["accum"])
        acc = {k: sum(a[k] for a in gathered) for k in st["accum"]}
        n = max(acc["n"], 1)
        row = {"epoch": epoch + 1, "step": st["global_step"], "lr": sched.get_last_lr()[0],
               "train_loss": acc["loss"] / n, "train_mse": acc["mse"] / n, "train_pcc_term": acc["pcc"] / n,
               "val_loss": vloss.item(), "val_mse": vparts["mse"].item(), "val_mean_pcc": score["mean"],
               **{f"val_{e}": r for e, r in score["per_emotion"].items()},
               "epoch_time_s": time.perf_counter() - t0}
        st["history"].append(row)
        if math.isfinite(score["mean"]) and score["mean"] > st["best_score"] + cfg.min_delta:
            st.update(best_score=score["mean"], best_epoch=epoch + 1, bad_epochs=0)
            if main:
                atomic_torch_save({"format": 1, "config": cfg.to_dict(), "model": net.state_dict(),
                                   "epoch": epoch + 1, "val_mean_pcc": score["mean"]}, best_path)
        else:
            st["bad_epochs"] += 1
        stopped = cfg.patience is not None and st["bad_epochs"] >= cfg.patience
        st.update(epoch=epoch + 1, step_in_epoch=0, accum=_fresh_state()["accum"],
                  finished=stopped or epoch + 1 >= cfg.epochs)
        save(None)
        if main:
            atomic_write_text(pd.DataFrame(st["history"]).to_csv(index=False), run_dir / "history.csv")
        barrier()  # the other ranks wait for rank 0's files
        ebar.update()
        ebar.set_postfix(val_pcc=f"{score['mean']:.4f}", best=f"{st['best_score']:.4f}")
        if log_epochs and main:
            print(f"stage 2 epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val mean PCC "
                  f"{score['mean']:.4f} (best {st['best_score']:.4f}), {row['epoch_time_s']:.1f} s", flush=True)
    ebar.close()
    if cfg.restore_best:  # rank 0 reads best.pt and broadcasts it: every rank ends with the same weights
        best = load_checkpoint(best_path)["model"] if main and best_path.exists() else None
        best = broadcast_object(best) if world > 1 else best
        if best is None:  # never the last weights in place of the best ones
            scores = [r["val_mean_pcc"] for r in st["history"]]
            raise RuntimeError(
                f"{run_dir}: no best checkpoint ({best_path.name}) was written: every validation score of the "
                f"{len(scores)} epoch(s) was NaN ({scores}), e.g. a constant prediction or label column, so "
                "there are no best weights to restore; fix the data or model, or set restore_best=False to keep "
                "the last weights")
        load_model_state(net, {k: v.to(device) for k, v in best.items()}, str(best_path))
    history = pd.DataFrame(st["history"]).set_index("epoch", drop=False) if st["history"] else pd.DataFrame()
    history.attrs.update(best_epoch=st["best_epoch"], best_score=st["best_score"],
                         stopped_early=len(st["history"]) < cfg.epochs)
    return net, history


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
