r"""Training, checkpoints and export of the stage-1 aligners (arXiv 2503.10603, stage 1).

Each modality is trained alone ("modality-decoupled pre-training") on precomputed features:
``feats`` {id: (T, D)} of one modality and ``text`` {id: (D_t,)} frozen text embeddings.

- Optimiser: AdamW (ours), weight decay on weight matrices only (biases, LayerNorm gains and the
  logit scale are excluded, as open_clip does). After every step the raw logit scale is clamped to
  :math:`[0, \log 100]` (open_clip's training loop).
- Batches: shuffled each epoch with a seeded ``numpy`` generator, ``drop_last`` (a contrastive
  batch's size is its number of negatives; evaluation never drops clips). Clips with no frames
  or no text are excluded from training and evaluation (they get a zero embedding at export).
- Validation (per epoch, and once before training as epoch 0): the plain ``ClipLoss`` over
  consecutive batches of ``batch_size`` (clip-weighted mean; plain even under label-aware
  training so that options compare), and retrieval R@1/R@5 over the whole validation set.
- Early stopping (``cfg.patience``) on the validation loss; the best epoch's weights are restored.

**DDP** (``torchrun``, ``docs/distributed.md``): when a ``torch.distributed`` group of W > 1 processes
is initialised, the model is wrapped in ``DistributedDataParallel`` and the training clips are
sharded: every rank draws the same seeded permutation per epoch, cuts it into global batches of
W x ``batch_size`` clips (``batch_size`` is per rank; the remainder is dropped) and takes its own
``batch_size`` slice of each (rank r: positions r*B .. (r+1)*B-1), so every rank runs the same number
of steps and each clip of a global batch is encoded by exactly one rank.

*Negatives are global*: each rank all-gathers the clip and text embeddings (and, label-aware, the
labels) of the global batch (:func:`~emi_lib.distributed.all_gather_with_grad`: the other
ranks' parts are constants, its own part keeps its graph), so the InfoNCE loss is the one of the
whole W x B batch, with W x B - 1 negatives per pair, exactly as one process with batch W x B
would compute it. Every rank then holds the same loss value L; rank r back-propagates W x L, whose
gradient reaches the weights only through r's own samples, and DDP averages the W gradients, which
gives the full dL/dweights. The logit scale enters L directly on every rank, so its gradient is divided
by W (a hook) before the average. Validation runs on rank 0 (the whole validation set; retrieval
needs every embedding) and its row is broadcast, so early stopping is decided identically on every
rank; the weights stay identical on all ranks (DDP), so each returns the same model.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from emi_lib.constants import EMOTIONS, clip_key
from emi_lib.eval.retrieval import retrieval_recall
from emi_lib.features.store import valid_steps
from emi_lib.models.aligner import AlignerConfig, ModalityTextAligner
from emi_lib.models.padding import pad_batch
from emi_lib.train.buckets import length_batches


def usable_ids(feats: dict, text: dict | None = None) -> list[str]:
    """Ids with at least one valid (unmasked) frame (and a text embedding when ``text`` is given), sorted."""
    if hasattr(feats, "length"):  # a lazy PackedStore: lengths from its index, no data read
        return sorted(k for k in feats if feats.length(k) > 0 and (text is None or k in text))
    return sorted(k for k, v in feats.items() if np.asarray(v).size > 0 and (text is None or k in text)
                  and (np.ndim(v) < 2 or valid_steps(v).any()))  # every step masked: no frames


def _text_matrix(text: dict, ids) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(text[i], dtype=np.float32).reshape(-1) for i in ids]))


def label_matrix(labels: pd.DataFrame, ids) -> torch.Tensor:
    """(n, 6) label rows for ``ids``, matched by :func:`~emi_lib.constants.clip_key` (an index of integers
    matches zero-padded string ids)."""
    lookup = dict(zip(map(clip_key, labels.index), labels[list(EMOTIONS)].to_numpy(dtype=np.float32)))
    missing = [i for i in ids if clip_key(i) not in lookup]
    if missing:
        raise KeyError(f"no labels for {len(missing)} clips, e.g. {missing[:5]}")
    return torch.from_numpy(np.stack([lookup[clip_key(i)] for i in ids]))


@torch.no_grad()
def encode_dataset(model: ModalityTextAligner, feats: dict, ids, text: dict | None = None,
                   max_steps: int | None = None, max_batch: int = 128, max_tokens: int = 1 << 16):
    """Normalised clip embeddings (n, E) for ``ids`` (and text embeddings (n, E) when ``text``), numpy."""
    model.eval()
    dev = next(model.parameters()).device
    ids = list(ids)
    arrs = [feats[i] for i in ids]
    lengths = np.array([min(len(a), max_steps or len(a)) if np.asarray(a).size else 0 for a in arrs])
    out = np.zeros((len(ids), model.cfg.embed_dim), dtype=np.float32)
    for b in length_batches(lengths, max_batch, max_tokens):
        x, m = pad_batch([arrs[i] for i in b], dim=model.cfg.in_dim, max_steps=max_steps)
        out[b] = model.encode_clip(x.to(dev), m.to(dev)).cpu().numpy()
    if text is None:
        return out
    t = model.encode_text(_text_matrix(text, ids).to(dev)).cpu().numpy() if ids else out.copy()
    return out, t


@torch.no_grad()
def _val_loss(model, feats, text, ids, batch_size: int, max_steps) -> float:
    model.eval()
    dev = next(model.parameters()).device
    from open_clip.loss import ClipLoss  # here: open_clip's import costs seconds, exporting needs none of it

    loss_fn, total, n = ClipLoss(), 0.0, 0
    for s in range(0, len(ids), batch_size):
        b = ids[s : s + batch_size]
        if len(b) < 2:  # a one-pair "batch" has no negatives: its loss is 0 and says nothing
            continue
        x, m = pad_batch([feats[i] for i in b], max_steps=max_steps)
        loss = loss_fn(*model(x.to(dev), m.to(dev), _text_matrix(text, b).to(dev)))
        total, n = total + float(loss) * len(b), n + len(b)
    return total / n if n else float("nan")


def evaluate_aligner(model, feats: dict, text: dict, batch_size: int = 64, max_steps=None, text_keys=None) -> dict:
    """Validation loss (plain ClipLoss) and retrieval R@1/R@5 on clips with frames and text."""
    ids = usable_ids(feats, text)
    clip, txt = encode_dataset(model, feats, ids, text, max_steps=max_steps)
    keys = [text_keys[i] for i in ids] if text_keys is not None else None
    rec = retrieval_recall(clip, txt, ks=(1, 5), text_keys=keys)
    return {"val_loss": _val_loss(model, feats, text, ids, batch_size, max_steps), **rec}


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _TrainSet(NamedTuple):
    """The clips stage 1 trains on and how they are batched (``bs`` per rank, ``n_batches`` global batches)."""

    ids: list
    feats: dict
    text: torch.Tensor  # (n, D_t)
    labels: torch.Tensor | None  # (n, 6), label-aware training only
    bs: int
    n_batches: int


def _training_set(cfg: AlignerConfig, feats: dict, text: dict, labels: pd.DataFrame | None, world: int) -> _TrainSet:
    """The usable training clips (frames and text) as :class:`_TrainSet`; ``ValueError`` for data that does not
    fit ``cfg`` (feature or text size, too few clips, no labels for label-aware training)."""
    ids = usable_ids(feats, text)
    if len(ids) < 2:
        raise ValueError(f"contrastive training needs at least 2 clips with {cfg.modality} features and text, got {len(ids)}")
    dims = {np.asarray(feats[i]).shape[-1] for i in ids}
    if dims != {cfg.in_dim}:
        raise ValueError(f"cfg.in_dim={cfg.in_dim} but the {cfg.modality} features have D in {sorted(dims)}")
    if cfg.label_aware and labels is None:
        raise ValueError("label_aware=True needs train_labels")
    labels_all = label_matrix(labels, ids) if cfg.label_aware else None
    text_all = _text_matrix(text, ids)
    if text_all.shape[1] != cfg.text_dim:
        raise ValueError(f"cfg.text_dim={cfg.text_dim} but the text embeddings have D={text_all.shape[1]}")
    bs = min(cfg.batch_size, len(ids) // world)  # per rank
    return _TrainSet(ids, feats, text_all, labels_all, bs, len(ids) // (bs * world) if bs else 0)


def _build_model(cfg: AlignerConfig, data: _TrainSet, dev: torch.device, rank: int, world: int):
    """``(model, net)``: the aligner (input statistics from the training frames) and what the steps call, the
    model itself or its DistributedDataParallel wrapper."""
    model = ModalityTextAligner(cfg)
    if cfg.standardize_inputs:  # training frames only (every rank holds all of them: the same statistics)
        model.fit_input_stats(data.feats[i] for i in data.ids)
    model = model.to(dev)
    if world <= 1:
        return model, model
    if len(data.ids) < 2 * world:
        raise ValueError(f"{len(data.ids)} usable clips cannot fill a batch of 2 on each of {world} ranks")
    torch.manual_seed(cfg.seed + rank)  # own dropout draws per rank; DDP broadcasts rank 0's weights
    return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _history_row(model, cfg: AlignerConfig, epoch: int, train_loss: float, t0: float, val: tuple | None) -> dict:
    """One history row: the temperature, and with ``val`` = (feats, text, text_keys) the validation loss and
    retrieval recalls (:func:`evaluate_aligner`)."""
    r = {"epoch": epoch, "train_loss": train_loss, "logit_scale": model.logit_scale.item(),
         "scale": math.exp(model.logit_scale.item()), "temperature": math.exp(-model.logit_scale.item())}
    if val is not None:
        ev = evaluate_aligner(model, val[0], val[1], cfg.batch_size, cfg.max_steps, val[2])
        r.update({("val_loss" if k == "val_loss" else f"val_{k}"): v for k, v in ev.items()})
    r["seconds"] = time.perf_counter() - t0
    return r


def _train_epoch(net, model, opt, loss_fn, cfg: AlignerConfig, data: _TrainSet, perm: np.ndarray, dev,
                 rank: int, world: int) -> float:
    """One pass over the global batches of the permutation ``perm`` (this rank's slice of each, with global
    negatives under DDP: module docstring); returns the mean batch loss."""
    from emi_lib.distributed import all_gather_with_grad

    model.train()
    total, bs = 0.0, data.bs
    for b in range(data.n_batches):
        start = (b * world + rank) * bs  # this rank's slice of global batch b
        idx = torch.from_numpy(perm[start : start + bs])
        x, m = pad_batch([data.feats[data.ids[i]] for i in idx.tolist()], max_steps=cfg.max_steps)
        out = net(x.to(dev), m.to(dev), data.text[idx].to(dev))
        labels = data.labels[idx].to(dev) if cfg.label_aware else None
        if world > 1:  # global negatives (module docstring)
            scale = out[2]
            if scale.requires_grad:  # a fixed temperature (learn_logit_scale=False) has no gradient
                scale.register_hook(lambda g: g / world)
            out = (all_gather_with_grad(out[0]), all_gather_with_grad(out[1]), scale)
            labels = all_gather_with_grad(labels) if labels is not None else None
        loss = loss_fn(*out, labels=labels) if cfg.label_aware else loss_fn(*out)
        opt.zero_grad(set_to_none=True)
        (loss * world if world > 1 else loss).backward()
        opt.step()
        model.clamp_logit_scale()
        total += loss.item()
    return total / data.n_batches


def train_aligner(cfg: AlignerConfig, train_feats: dict, train_text: dict, val_feats: dict | None = None,
                  val_text: dict | None = None, train_labels: pd.DataFrame | None = None, progress: bool = True,
                  val_text_keys: dict | None = None, log_epochs: bool = False) -> tuple[ModalityTextAligner, pd.DataFrame]:
    """Train one modality-text aligner; returns ``(model, history)`` with the model in eval mode on the CPU.

    ``history`` has one row per epoch (row 0 = before training): ``train_loss``, ``val_loss``,
    ``logit_scale`` (raw), ``scale`` (exp), ``temperature`` (1/exp), ``val_clip2text_R@1/5``,
    ``val_text2clip_R@1/5``, ``val_chance_R@1``, ``seconds``. ``val_text_keys`` {id: prompt}
    makes retrieval count any clip/text with the same prompt as a hit (see ``retrieval_recall``).
    ``log_epochs`` prints one line per epoch on rank 0 (epoch, train and validation loss, seconds): the
    command line's record of a run without a progress bar. ``train_labels`` (index = clip ids, six emotion
    columns) is required when ``cfg.label_aware``."""
    from emi_lib.distributed import broadcast_object, context, resolve_device

    ctx = context()
    rank, world = ctx.rank, ctx.world
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the same permutations on every rank
    dev = resolve_device(cfg.device, rank, world)
    data = _training_set(cfg, train_feats, train_text, train_labels, world)
    has_val = bool(val_feats) and bool(val_text) and len(usable_ids(val_feats, val_text)) >= 2
    model, net = _build_model(cfg, data, dev, rank, world)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    from emi_lib.models.clip_loss import build_loss  # imports open_clip: only when training

    loss_fn = build_loss(cfg)
    val = (val_feats, val_text, val_text_keys) if has_val else None

    def row(epoch, train_loss, t0):  # under DDP on rank 0 only, broadcast: identical early-stopping decisions
        if world <= 1:
            return _history_row(model, cfg, epoch, train_loss, t0, val)
        return broadcast_object(_history_row(model, cfg, epoch, train_loss, t0, val) if rank == 0 else None)

    history = [row(0, float("nan"), time.perf_counter())]
    best, best_state, stale = float("inf"), None, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"stage 1 {cfg.modality}-text", disable=not (progress and rank == 0))
    for epoch in bar:
        t0 = time.perf_counter()
        loss = _train_epoch(net, model, opt, loss_fn, cfg, data, rng.permutation(len(data.ids)), dev, rank, world)
        history.append(h := row(epoch, loss, t0))
        bar.set_postfix(loss=f"{h['train_loss']:.3f}", val=f"{h.get('val_loss', float('nan')):.3f}",
                        T=f"{h['temperature']:.3f}")
        if log_epochs and rank == 0:
            print(f"stage 1 {cfg.modality}-text epoch {epoch}/{cfg.epochs}: train loss {h['train_loss']:.4f}, "
                  f"val loss {h.get('val_loss', float('nan')):.4f}, {h['seconds']:.1f} s", flush=True)
        if has_val and cfg.patience:  # early stopping on the validation loss; the best weights are restored
            if h["val_loss"] < best - 1e-6:
                best, stale = h["val_loss"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    hist = pd.DataFrame(history).set_index("epoch")
    hist.attrs["best_epoch"] = int(hist["val_loss"].iloc[1:].idxmin()) if has_val and len(hist) > 1 else len(hist) - 1
    return model.cpu().eval(), hist


def save_aligner(model: ModalityTextAligner, cfg: AlignerConfig, path) -> Path:
    """Write ``path`` (state dict, ``torch.save``) and ``path`` with suffix ``.json`` (the config),
    each atomically (temporary file, then ``os.replace``). Returns the weights path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = path.with_suffix(".json")
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    tmp_cfg = cfg_path.with_name(cfg_path.name + ".tmp")
    tmp_cfg.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp_cfg, cfg_path)
    return path


def load_aligner(path, map_location="cpu") -> tuple[ModalityTextAligner, AlignerConfig]:
    """Inverse of :func:`save_aligner`: ``torch.load(weights_only=True)`` and strict loading
    (a missing or unexpected key raises). Returns ``(model in eval mode, cfg)``."""
    path = Path(path)
    cfg_path = path.with_suffix(".json")
    if not path.exists() or not cfg_path.exists():
        raise FileNotFoundError(f"aligner checkpoint needs {path} and {cfg_path}")
    cfg = AlignerConfig.from_dict(json.loads(cfg_path.read_text()))
    model = ModalityTextAligner(cfg)
    model.load_state_dict(torch.load(path, map_location=map_location, weights_only=True), strict=True)
    return model.eval(), cfg


class AlignedFeatures(NamedTuple):
    """What :func:`export_aligned` returns, for every input clip."""

    clip_emb: dict  # id -> (E,) normalised clip embedding; zeros for a clip without frames
    frame_seq: dict  # id -> (T, E) aligned frames (un-normalised g(f_t)); (0, E) for a clip without frames
    missing: list  # ids without frames (zero embedding, empty sequence), sorted


@torch.no_grad()
def export_aligned(model: ModalityTextAligner, feats: dict, normalize_frames: bool = False,
                   max_batch: int = 64, max_tokens: int = 1 << 16) -> AlignedFeatures:
    """Aligned clip embeddings and full-length aligned frame sequences for every clip of ``feats``.

    Frames are never subsampled here (stage 2 reads every step), so the clip embedding of a clip
    longer than ``cfg.max_steps`` pools over all its frames. ``normalize_frames`` L2-normalises
    each frame vector. Batches group clips of similar length, bounded by ``max_tokens`` padded steps."""
    model.eval()
    dev = next(model.parameters()).device
    e = model.cfg.embed_dim
    ids = list(feats)
    clip_emb = {i: np.zeros(e, dtype=np.float32) for i in ids}
    frame_seq = {i: np.zeros((0, e), dtype=np.float32) for i in ids}
    present = usable_ids(feats)
    lengths = np.array([len(feats[i]) for i in present])
    for b in length_batches(lengths, max_batch, max_tokens):
        bids = [present[i] for i in b]
        x, m = pad_batch([feats[i] for i in bids], dim=model.cfg.in_dim)
        x, m = x.to(dev), m.to(dev)
        h = model.encode_frames(x, m)
        c = torch.nn.functional.normalize(model.pool_frames(h, m), dim=-1)
        if normalize_frames:
            h = torch.nn.functional.normalize(h, dim=-1)
        h, c, m = h.cpu().numpy(), c.cpu().numpy(), m.cpu()
        for j, cid in enumerate(bids):
            clip_emb[cid] = c[j]
            seq = np.ascontiguousarray(h[j, : len(feats[cid])])
            seq[~m[j, : len(seq)].numpy()] = np.nan  # a masked input step stays a masked step
            frame_seq[cid] = seq
    missing = sorted(set(ids) - set(present))
    return AlignedFeatures(clip_emb, frame_seq, missing)


def write_aligned(store, aligned: AlignedFeatures, modality: str, backbone: str, split: str,
                  clip_modality: str | None = None) -> None:
    """Write frame sequences to ``store`` (a ``FeatureStore``) as ``modality`` (e.g. ``"vision_aligned"``)
    and, when ``clip_modality`` is given, clip embeddings (as (1, E)) under that name."""
    for cid, seq in aligned.frame_seq.items():
        store.write(modality, backbone, split, cid, seq)
        if clip_modality is not None:
            store.write(clip_modality, backbone, split, cid, aligned.clip_emb[cid])
