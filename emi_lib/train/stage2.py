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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from emi_lib.constants import EMOTIONS
from emi_lib.distributed import all_gather_object, barrier, broadcast_object, rank_world, resolve_device
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
)
from emi_lib.train.data import Stage2Data, Stage2Dataset, check_missing_share, epoch_batches, to_device
from emi_lib.train.losses import emi_loss, stage2_loss
from emi_lib.train.seeding import rng_state, seed_everything, set_rng_state
from emi_lib.train.stage2_config import RESUMABLE_CHANGES, Stage2Config, check_resumable
from emi_lib.train.stage2_predict import load_run, load_weights, predict, predict_arrays, stage2_dataset

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


def _fresh_state() -> dict:
    accum = {"loss": 0.0, "mse": 0.0, "pcc": 0.0, "n": 0}
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": 0,
            "bad_epochs": 0, "finished": False, "history": [], "accum": accum}


@dataclass
class _Run:
    """What every phase of one training run shares (built by :func:`_setup`)."""

    cfg: Stage2Config
    rank: int
    world: int
    run_dir: Path
    device: torch.device
    net: EMIModel  # the model itself; ``model`` is it or its DistributedDataParallel wrapper
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    train_ds: Stage2Dataset
    val_ds: Stage2Dataset
    val_labels: pd.DataFrame

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def epoch_batches(self, epoch: int) -> list:
        """This rank's training batches of ``epoch`` (a pure function of (seed, epoch); module docstring)."""
        c = self.cfg
        lengths = self.train_ds.lengths() if c.bucket_by_length else None
        return shard(epoch_batches(len(self.train_ds), c.batch_size, c.seed, epoch, c.drop_last, lengths),
                     self.rank, self.world)


def _setup(cfg: Stage2Config, train_data: Stage2Data, val_data: Stage2Data, run_dir, rank: int, world: int) -> _Run:
    """Seed, build the model, check and index the data, and make the optimiser and the per-step schedule."""
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
    train_ds, val_ds = stage2_dataset(cfg, train_data), stage2_dataset(cfg, val_data)
    if train_ds.labels is None or val_ds.labels is None:
        raise ValueError("train_data and val_data need labels")
    if train_ds.priors is not None:  # standardisation of the priors from the training clips (model buffers)
        net.set_prior_stats(train_ds.priors, cfg.prior_columns)
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    run = _Run(cfg, rank, world, run_dir, device, net, net, opt, None, train_ds, val_ds,
               val_data.labels.loc[val_ds.ids, list(EMOTIONS)])
    total = cfg.epochs * len(run.epoch_batches(0))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    run.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))
    return run


def _resume_or_start(run: _Run, resume: bool, train_data: Stage2Data, val_data: Stage2Data,
                     progress: bool) -> tuple[dict, list | None]:
    """``(state, saved batch order)``: from ``checkpoint.pt`` (read by rank 0 on the CPU, RNG states included,
    and broadcast), else a fresh state, with the run folder's stale files removed and its config written."""
    cfg, world = run.cfg, run.world
    ck = load_checkpoint(run.ckpt_path) if run.main and resume and run.ckpt_path.exists() else None
    ck = broadcast_object(ck) if world > 1 else ck
    if ck is None:
        if run.main:
            _start_run_dir(run, train_data, val_data, progress)
        return _fresh_state(), None
    check_resumable(ck["config"], cfg, run.ckpt_path)
    load_model_state(run.net, ck["model"], str(run.ckpt_path))
    run.opt.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    st, saved_order = {k: ck[k] for k in _fresh_state()}, ck["batch_order"]
    if int(ck.get("world_size", 1)) != world:
        raise ValueError(f"{run.ckpt_path} was written by a run of {ck.get('world_size', 1)} process(es), this one "
                         f"has {world}: the batch sharding and schedule differ; resume with the same world size")
    per_rank = ck.get("per_rank")  # DDP: each rank's own RNG state, batch order and loss sums
    if world > 1 and per_rank is not None:
        mine = per_rank[run.rank]
        saved_order, st["accum"] = mine["batch_order"], mine["accum"]
        set_rng_state(mine["rng"])
    else:
        set_rng_state(ck["rng"])
    return st, saved_order


def _start_run_dir(run: _Run, train_data: Stage2Data, val_data: Stage2Data, progress: bool) -> None:
    """A fresh run (rank 0): no older run's checkpoints, this config and the data summary."""
    for stale in (run.ckpt_path, run.best_path):  # a fresh run must never restore an older run's weights
        stale.unlink(missing_ok=True)
    run.cfg.to_json(run.run_dir / "config.json")
    missing = {"train": train_data.missing_counts(), "valid": val_data.missing_counts(),
               "n": {"train": len(run.train_ds), "valid": len(run.val_ds)}}
    atomic_write_json(missing, run.run_dir / "data_summary.json")
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"stage 2: {len(run.train_ds)} train / {len(run.val_ds)} val clips; clips lacking a modality "
                   f"(train {missing['train']}, val {missing['valid']})")


def _save_checkpoint(run: _Run, st: dict, order: list | None) -> None:
    """``checkpoint.pt`` (rank 0 writes; called on every rank at the same steps: per-rank states are gathered)."""
    rng = rng_state()
    per_rank = all_gather_object({"rng": rng, "batch_order": order, "accum": dict(st["accum"])})
    if run.main:
        extra = {"world_size": run.world, "per_rank": per_rank} if run.world > 1 else {}
        atomic_torch_save({"format": 1, "config": run.cfg.to_dict(), "model": run.net.state_dict(),
                           "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), **st,
                           "batch_order": order, "rng": rng, **extra}, run.ckpt_path)


def _iter_batches(ds: Stage2Dataset, batches: list, num_workers: int):
    if num_workers <= 0:
        return (ds.collate(b) for b in batches)
    return iter(torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=ds.collate,
                                            num_workers=num_workers, generator=torch.Generator()))


def _train_one_epoch(run: _Run, st: dict, batches: list, stop_after_steps: int | None, progress: bool) -> None:
    """The epoch's remaining optimiser steps (from ``st["step_in_epoch"]``), with the loss sums, the step
    counters and the mid-epoch checkpoints in ``st``."""
    from tqdm.auto import tqdm

    cfg, epoch, first = run.cfg, st["epoch"], st["step_in_epoch"]
    run.model.train()
    with tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}", leave=False,
              disable=not (progress and run.main)) as bar:
        for j, batch in enumerate(_iter_batches(run.train_ds, batches[first:], cfg.num_workers), start=first):
            if augmentation_enabled(cfg):  # training batches only; replayed exactly on resume
                batch = augment_batch(batch, cfg, augment_generator(cfg.seed, epoch, j, run.rank))
            batch = to_device(batch, run.device)
            loss, parts = stage2_loss(run.model(batch), batch["labels"], cfg.mse_weight, cfg.pcc_weight,
                                      cfg.aux_weight)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
            run.opt.step()
            run.sched.step()
            b, acc = len(batch["ids"]), st["accum"]
            acc.update(loss=acc["loss"] + loss.item() * b, mse=acc["mse"] + parts["mse"].item() * b,
                       pcc=acc["pcc"] + parts["pcc"].item() * b, n=acc["n"] + b)
            st["global_step"] += 1
            st["step_in_epoch"] = j + 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if cfg.ckpt_every_steps and st["global_step"] % cfg.ckpt_every_steps == 0 and j + 1 < len(batches):
                _save_checkpoint(run, st, batches)
            if stop_after_steps is not None and st["global_step"] >= stop_after_steps:
                raise TrainingInterrupted(f"stopped after step {st['global_step']} (stop_after_steps hook)")


def _evaluate(run: _Run, st: dict, t0: float) -> dict:
    """The epoch's history row: training loss means over every rank's clips, and the validation loss and
    ``challenge_score`` on the **whole** validation set (every rank's predictions gathered)."""
    cfg = run.cfg
    res = predict_arrays(run.model, run.val_ds, cfg.eval_batch_size or 2 * cfg.batch_size, run.device, run.rank,
                         run.world)
    score = challenge_score(pd.DataFrame(res["pred"], index=run.val_labels.index, columns=list(EMOTIONS)),
                            run.val_labels)
    vloss, vparts = emi_loss(torch.tensor(res["pred"]), torch.tensor(run.val_labels.to_numpy()),
                             cfg.mse_weight, cfg.pcc_weight)
    gathered = all_gather_object(st["accum"])
    acc = {k: sum(a[k] for a in gathered) for k in st["accum"]}
    n = max(acc["n"], 1)
    return {"epoch": st["epoch"] + 1, "step": st["global_step"], "lr": run.sched.get_last_lr()[0],
            "train_loss": acc["loss"] / n, "train_mse": acc["mse"] / n, "train_pcc_term": acc["pcc"] / n,
            "val_loss": vloss.item(), "val_mse": vparts["mse"].item(), "val_mean_pcc": score["mean"],
            **{f"val_{e}": r for e, r in score["per_emotion"].items()},
            "epoch_time_s": time.perf_counter() - t0}


def _end_epoch(run: _Run, st: dict, row: dict) -> None:
    """Record the row; keep ``best.pt`` (a NaN score never improves) and count epochs without gain (early
    stopping); move ``st`` to the next epoch and write the checkpoint and ``history.csv``; then a barrier."""
    cfg, epoch, score = run.cfg, st["epoch"], row["val_mean_pcc"]
    st["history"].append(row)
    if math.isfinite(score) and score > st["best_score"] + cfg.min_delta:
        st.update(best_score=score, best_epoch=epoch + 1, bad_epochs=0)
        if run.main:
            atomic_torch_save({"format": 1, "config": cfg.to_dict(), "model": run.net.state_dict(),
                               "epoch": epoch + 1, "val_mean_pcc": score}, run.best_path)
    else:
        st["bad_epochs"] += 1
    stopped = cfg.patience is not None and st["bad_epochs"] >= cfg.patience
    st.update(epoch=epoch + 1, step_in_epoch=0, accum=_fresh_state()["accum"],
              finished=stopped or epoch + 1 >= cfg.epochs)
    _save_checkpoint(run, st, None)
    if run.main:
        atomic_write_text(pd.DataFrame(st["history"]).to_csv(index=False), run.run_dir / "history.csv")
    barrier()  # the other ranks wait for rank 0's files


def _restore_best(run: _Run, st: dict) -> None:
    """Load ``best.pt`` into the model (rank 0 reads it and broadcasts it: every rank ends with the same
    weights); ``RuntimeError`` when no epoch gave a finite score (never the last weights in its place)."""
    best = load_checkpoint(run.best_path)["model"] if run.main and run.best_path.exists() else None
    best = broadcast_object(best) if run.world > 1 else best
    if best is None:
        scores = [r["val_mean_pcc"] for r in st["history"]]
        raise RuntimeError(
            f"{run.run_dir}: no best checkpoint ({run.best_path.name}) was written: every validation score of the "
            f"{len(scores)} epoch(s) was NaN ({scores}), e.g. a constant prediction or label column, so "
            "there are no best weights to restore; fix the data or model, or set restore_best=False to keep "
            "the last weights")
    load_model_state(run.net, {k: v.to(run.device) for k, v in best.items()}, str(run.best_path))


def train_stage2(cfg: Stage2Config, train_data: Stage2Data, val_data: Stage2Data, run_dir, progress: bool = True,
                 resume: bool = True, rank: int | None = None, world_size: int | None = None,
                 stop_after_steps: int | None = None, log_epochs: bool = False):
    """Train (or resume) a stage-2 run in ``run_dir``; returns ``(model, history)`` (module docstring).

    ``stop_after_steps`` raises :class:`TrainingInterrupted` after that many optimiser steps (global
    count) without writing anything more: a test hook that simulates a kill. ``log_epochs`` prints one line per
    epoch on rank 0 (epoch, train loss, validation mean PCC, seconds), for runs without a progress bar.

    Phases: :func:`_setup`, :func:`_resume_or_start`, then per epoch :func:`_train_one_epoch`,
    :func:`_evaluate` and :func:`_end_epoch`; at the end :func:`_restore_best`."""
    from tqdm.auto import tqdm

    run = _setup(cfg, train_data, val_data, run_dir, *rank_world(rank, world_size))
    st, saved_order = _resume_or_start(run, resume, train_data, val_data, progress)
    if run.world > 1:  # after loading the checkpoint: DDP broadcasts rank 0's weights
        ids = [run.device.index] if run.device.type == "cuda" else None
        run.model = torch.nn.parallel.DistributedDataParallel(run.net, device_ids=ids)
    with tqdm(total=cfg.epochs, initial=st["epoch"], desc="epochs", disable=not (progress and run.main)) as bar:
        while not st["finished"]:
            t0, batches = time.perf_counter(), run.epoch_batches(st["epoch"])
            if st["step_in_epoch"] and saved_order is not None and saved_order != batches:
                raise RuntimeError(f"{run.ckpt_path}: the saved batch order differs from the recomputed one")
            _train_one_epoch(run, st, batches, stop_after_steps, progress)
            row = _evaluate(run, st, t0)
            _end_epoch(run, st, row)
            bar.update()
            bar.set_postfix(val_pcc=f"{row['val_mean_pcc']:.4f}", best=f"{st['best_score']:.4f}")
            if log_epochs and run.main:
                print(f"stage 2 epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val mean PCC "
                      f"{row['val_mean_pcc']:.4f} (best {st['best_score']:.4f}), {row['epoch_time_s']:.1f} s",
                      flush=True)
    if cfg.restore_best:
        _restore_best(run, st)
    history = pd.DataFrame(st["history"]).set_index("epoch", drop=False) if st["history"] else pd.DataFrame()
    history.attrs.update(best_epoch=st["best_epoch"], best_score=st["best_score"],
                         stopped_early=len(st["history"]) < cfg.epochs)
    return run.net, history
