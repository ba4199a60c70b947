r"""End-to-end fine-tuning of a vision tower (default ``openclip-tiny``) on the face crops, CLIP loss.

Model (ours): a clip's K sampled crops go through the tower (``encoder.trainable_forward``); clip
vector :math:`v = \mathrm{norm}(W_i \tfrac1K \sum_k f(x_k))`, text :math:`u = \mathrm{norm}(W_t t)` with
:math:`t` a frozen text embedding (``{id: (D_t,)}``, e.g. minilm of the label prompt or transcript);
open_clip's ``ClipLoss``, learnable logit scale (init :math:`\log(1/0.07)`, clamped to
:math:`[0, \log 100]` after each step). AdamW (tower ``lr``, heads ``lr_head``; no decay on biases,
norms, embeddings, scale), linear warm-up then cosine per step. Crops are read once by the extraction's
``VisionSource`` and kept as uint8 after the tower's own resize/crop, so training sees what export sees.
No early stopping: validation (loss, R@k) is only logged, the last epoch is kept.

Export (:func:`finetune_and_export`): every crop of every split through the tuned tower into a
``FeatureStore`` by ``extract_split``, under ``<backbone>-ft:<sha1 of the tower>`` (with folds
``<backbone>-ft-oof<K>:<hash of all towers>``); stage 2 reads it like any backbone. Each checkpoint
(``torch.save`` state dict, reloaded ``weights_only=True``, ``strict=True``) has a JSON with the data
root, text source, config, seed, epochs, trained ids and history.

**Stacking leak, ``folds``.** With label-prompt text the tower is fitted to the training clips' labels,
so its embeddings of those clips carry more label signal than it can give unseen clips, and stage 2
learns to trust them too much. Use ``folds=K >= 2`` whenever the text carries the labels and stage 2
trains on the exported training split: K more towers, each tuned on the other folds, export the
training clips they never saw; valid/test (and untuned training clips) use the tower tuned on all of
train. With transcript text (no labels) the default ``folds=0`` (one tower) is fine. Each tower learns
its own coordinates, so by default (``align=True``) a fold tower's outputs are mapped into the full
tower's by a least-squares affine map fitted on that fold tower's own training clips
(:func:`fit_alignment`, saved as ``fold<k>.align.pt``); without it the training split mixes K+1
unrelated feature spaces (demo, ridge probe on valid: frozen 0.24, folds=0 0.33, OOF-3 0.26 raw,
0.29 aligned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from emi_lib.distributed import resolve_device
from emi_lib.eval.retrieval import retrieval_recall
from emi_lib.train.finetune_data import (
    as_data_root,
    input_size_frames,
    label_prompt_texts,
    preload_frames,
    sample_indices,
)

__all__ = ["FinetuneConfig", "FinetuneModel", "FinetunedVisionEncoder", "clip_embeddings", "evaluate", "export_finetuned",
           "finetune", "finetune_and_export", "fit_alignment", "input_size_frames", "label_prompt_texts", "load_checkpoint",
           "load_encoder", "preload_frames", "sample_indices", "save_checkpoint", "setup", "tower_hash",
           "train_one_epoch"]


@dataclass
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune` (all ours but the temperature init/clamp, open_clip's)."""

    backbone: str = "openclip-tiny"  # vision tower to tune (a load_backbone("vision", ...) name)
    frames_per_clip: int = 4  # K crops sampled per clip and epoch (image embeddings averaged)
    frame_sampling: str = "stratified"  # "stratified" (one random crop per K equal segments) | "random"
    max_frames: int | None = 32  # crops preloaded per clip, spread over the clip (None = all)
    max_clips: int | None = None  # use at most this many training clips (seeded subset; None = all)
    epochs: int = 32  # passes over the training clips
    batch_size: int = 16  # clips per contrastive batch (drop_last; capped by the number of clips)
    lr: float = 3e-4  # AdamW learning rate of the tower
    lr_head: float = 2e-3  # AdamW learning rate of the projections and the logit scale
    weight_decay: float = 0.05  # AdamW decay on weight matrices only
    warmup_steps: int = 10  # linear warm-up steps, then cosine decay to 0 over the remaining steps
    grad_clip: float | None = 1.0  # max global grad norm (None = off)
    embed_dim: int = 64  # size of the joint clip/text space of the loss
    text_dim: int = 384  # D_t of the frozen text vectors (384 = minilm)
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
    max_logit_scale: float = math.log(100)  # clamp of the raw logit scale after each step
    learn_logit_scale: bool = True  # False = temperature fixed at its init
    eval_every: int = 0  # validate every N epochs (0 = before and after training only)
    seed: int = 0  # torch + numpy seed (init of the heads, batches, frame sampling, folds)
    device: str = "cpu"  # torch device of the tower and heads ("auto": CUDA if available; resolve_device)

    def __post_init__(self):
        if self.frame_sampling not in ("stratified", "random"):
            raise ValueError(f"frame_sampling must be 'stratified' or 'random', got {self.frame_sampling!r}")
        if min(self.frames_per_clip, self.epochs, self.batch_size) < 1 or self.batch_size < 2:
            raise ValueError("frames_per_clip and epochs must be >= 1 and batch_size >= 2")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        """Inverse of ``to_dict``; unknown keys raise."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown FinetuneConfig fields {unknown}")
        return cls(**d)


class FinetuneModel(nn.Module):
    """The tower (``encoder.module``, trained through ``encoder.trainable_forward``) + two projections."""

    def __init__(self, encoder, cfg: FinetuneConfig):
        super().__init__()
        self.cfg, self.encoder = cfg, encoder  # a plain attribute: only .tower is in the state dict
        self.tower = encoder.module
        self.image_head = nn.Linear(encoder.dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)),
                                        requires_grad=cfg.learn_logit_scale)
        pcfg = encoder.module.preprocess_cfg
        self.register_buffer("mean", torch.tensor(pcfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pcfg["std"]).view(1, 3, 1, 1), persistent=False)

    def frame_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S, 3) crops at the input size -> (N, dim) tower embeddings (= ``encode_frames``)."""
        x = frames.to(self.mean.device).permute(0, 3, 1, 2).float().div(255)
        return self.encoder.trainable_forward((x - self.mean) / self.std)

    def forward(self, frames: torch.Tensor, text: torch.Tensor):
        """(B, K, S, S, 3) uint8, (B, D_t) -> ``ClipLoss`` arguments (clip, text, exp(logit_scale))."""
        b, k = frames.shape[:2]
        pooled = self.frame_embeddings(frames.flatten(0, 1)).view(b, k, -1).mean(1)
        return (F.normalize(self.image_head(pooled), dim=-1), F.normalize(self.text_proj(text), dim=-1),
                self.logit_scale.exp())


# ------------------------------------------------------------------------------------------ data
def _batch(frames, ids, k, rng, mode) -> torch.Tensor:
    return torch.from_numpy(np.stack([frames[i][sample_indices(len(frames[i]), k, rng, mode)] for i in ids]))


def _text(text, ids) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(text[i], np.float32).reshape(-1) for i in ids]))


# ------------------------------------------------------------------------------ setup / epochs
def setup(cfg: FinetuneConfig, n_steps: int):
    """``(model, optimizer, scheduler, loss)`` for ``n_steps`` optimiser steps in all."""
    from emi_lib.features import load_backbone

    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = FinetuneModel(load_backbone("vision", cfg.backbone, device), cfg).to(device)
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:  # open_clip's rule: no decay on biases, norms, embeddings, the logit scale
            wd = p.ndim >= 2 and not any(s in n for s in ("ln", "bias", "logit_scale", "embedding"))
            groups.setdefault((n.startswith("tower."), wd), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": cfg.lr if tower else cfg.lr_head,
                              "weight_decay": cfg.weight_decay * wd} for (tower, wd), ps in groups.items()])
    warm = min(cfg.warmup_steps, max(n_steps - 1, 0))
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * (s - warm) / max(n_steps - warm, 1)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else cosine(s))
    return model, opt, sched, _clip_loss()


def _clip_loss():
    """open_clip's ``ClipLoss``, imported when a loss is built: open_clip's package import costs seconds, and
    :class:`FinetuneConfig` is read by every config (stage 2 included) without it."""
    from open_clip.loss import ClipLoss

    return ClipLoss()


def train_one_epoch(model, frames, text, ids, opt, sched, loss_fn, rng: np.random.Generator) -> float:
    """One shuffled pass over ``ids`` (drop_last); returns the mean training loss."""
    cfg = model.cfg
    model.train()
    bs = min(cfg.batch_size, len(ids))
    perm, total, n = rng.permutation(len(ids)), 0.0, len(ids) // bs
    for b in range(n):
        bids = [ids[i] for i in perm[b * bs : (b + 1) * bs]]
        x = _batch(frames, bids, cfg.frames_per_clip, rng, cfg.frame_sampling)
        loss = loss_fn(*model(x, _text(text, bids).to(model.mean.device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, cfg.max_logit_scale)
        total += loss.item()
    return total / n


@torch.no_grad()
def clip_embeddings(model: FinetuneModel, frames: dict, ids, max_images: int = 1024) -> np.ndarray:
    """(n, dim) mean of the tower's embeddings over every preloaded crop of each clip (probe features)."""
    model.eval()
    out = np.zeros((len(ids), model.encoder.dim), np.float32)
    for j, cid in enumerate(ids):
        f = torch.from_numpy(frames[cid])
        parts = [model.frame_embeddings(f[s : s + max_images]) for s in range(0, len(f), max_images)]
        out[j] = torch.cat(parts).mean(0).cpu().numpy()
    return out


@torch.no_grad()
def evaluate(model: FinetuneModel, frames: dict, text: dict, text_keys: dict | None = None) -> dict:
    """ClipLoss over consecutive batches (clip-weighted) and R@1/R@5, all preloaded crops pooled, on clips
    with crops and text. ``text_keys`` {id: prompt}: the same prompt is a hit (``retrieval_recall``)."""
    ids, dev = sorted(set(frames) & set(text)), model.mean.device
    v = F.normalize(model.image_head(torch.from_numpy(clip_embeddings(model, frames, ids)).to(dev)), dim=-1)
    u = F.normalize(model.text_proj(_text(text, ids).to(dev)), dim=-1)
    bs, loss, n = model.cfg.batch_size, 0.0, 0
    for b in (slice(s, s + bs) for s in range(0, len(ids), bs)):
        if len(ids[b]) > 1:  # a one-pair batch has no negatives
            loss += float(_clip_loss()(v[b], u[b], model.logit_scale.exp())) * len(ids[b])
            n += len(ids[b])
    keys = [text_keys[i] for i in ids] if text_keys else None
    rec = retrieval_recall(v.cpu().numpy(), u.cpu().numpy(), text_keys=keys)
    return {"val_loss": loss / n if n else float("nan")} | {f"val_{k}": x for k, x in rec.items() if k != "n"}


def finetune(cfg: FinetuneConfig, frames: dict, text: dict, val_frames: dict | None = None, val_text=None,
             val_text_keys: dict | None = None, ids=None, progress: bool = False):
    """Tune on the clips with crops and text (``ids`` restricts them); ``(model in eval mode, history)``:
    one row per epoch (0 = before training), ``attrs["train_ids"]`` = the clips trained on."""
    rng = np.random.default_rng(cfg.seed)
    ids = sorted(i for i in (frames if ids is None else ids) if i in frames and i in text and len(frames[i]))
    if cfg.max_clips is not None and len(ids) > cfg.max_clips:
        ids = sorted(rng.choice(ids, cfg.max_clips, replace=False).tolist())
    if len(ids) < 2:
        raise ValueError(f"contrastive fine-tuning needs >= 2 clips with crops and text, got {len(ids)}")
    if (d_t := _text(text, ids[:1]).shape[1]) != cfg.text_dim:
        raise ValueError(f"cfg.text_dim={cfg.text_dim} but the text vectors have D={d_t}")
    model, opt, sched, loss_fn = setup(cfg, cfg.epochs * (len(ids) // min(cfg.batch_size, len(ids))))
    has_val = bool(val_frames) and bool(val_text) and len(set(val_frames) & set(val_text)) >= 2
    rows, t0 = [], time.perf_counter()
    for epoch in range(cfg.epochs + 1):
        loss = train_one_epoch(model, frames, text, ids, opt, sched, loss_fn, rng) if epoch else float("nan")
        r = {"epoch": epoch, "train_loss": loss, "temperature": math.exp(-model.logit_scale.item())}
        if has_val and (epoch in (0, cfg.epochs) or (cfg.eval_every and epoch % cfg.eval_every == 0)):
            r |= evaluate(model, val_frames, val_text, val_text_keys)
        rows.append(r | {"seconds": time.perf_counter() - t0})
        if progress:
            print(" ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()), flush=True)
    hist = pd.DataFrame(rows).set_index("epoch")
    hist.attrs["train_ids"] = ids
    return model.eval(), hist


# ---------------------------------------------------------------------------- checkpoints / export
def tower_hash(model: FinetuneModel) -> str:
    """sha1 of the tower's weights (names and bytes), 10 hex digits."""
    h, sd = hashlib.sha1(), model.tower.state_dict()
    for k in sorted(sd):
        h.update(k.encode() + sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def save_checkpoint(model: FinetuneModel, path, provenance: dict | None = None) -> Path:
    """``path`` (``torch.save`` of the state dict) + ``path.json`` (config, tower hash, provenance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    meta = {"config": model.cfg.to_dict(), "tower_sha1": tower_hash(model), **(provenance or {})}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    return path


def load_checkpoint(path, device: str = "cpu") -> tuple[FinetuneModel, dict]:
    """Inverse of :func:`save_checkpoint`: a fresh tower + heads, ``weights_only=True``, strict."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    model = setup(FinetuneConfig.from_dict({**meta["config"], "device": device}), 1)[0]
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True), strict=True)
    return model.eval(), meta


class FinetunedVisionEncoder:
    """A tuned tower as a vision backbone (``.name``, ``.dim``, ``encode_frames``) for ``extract_split``;
    ``align`` {"weight": (dim, dim), "bias": (dim,)} maps its outputs affinely (:func:`fit_alignment`)."""

    modality = "vision"

    def __init__(self, model: FinetuneModel, name: str | None = None, align: dict | None = None):
        self.model, self.module, self.dim, self.align = model, model.tower, int(model.encoder.dim), align
        self.name = name or f"{model.cfg.backbone}-ft:{tower_hash(model)}"
        self.preprocess, self.trainable_forward = model.encoder.preprocess, model.encoder.trainable_forward

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        self.module.eval()
        out = self.model.encoder.encode_frames(frames)
        if self.align is not None:
            out = out @ self.align["weight"].numpy() + self.align["bias"].numpy()
        return out.astype(np.float32, copy=False)


@torch.no_grad()
def fit_alignment(src: FinetuneModel, dst: FinetuneModel, frames: dict, ids) -> dict:
    """Least-squares affine map from ``src``'s frame embeddings to ``dst``'s on the crops of ``ids``:
    puts a fold tower's outputs in the full tower's coordinates (each tower learns its own basis)."""
    a, b = (torch.cat([m.eval().frame_embeddings(torch.from_numpy(frames[c])) for c in ids]).double()
            for m in (src, dst))
    sol = torch.linalg.lstsq(torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1), b).solution.float()
    return {"weight": sol[:-1].cpu().contiguous(), "bias": sol[-1].cpu().contiguous()}


def load_encoder(path, name: str | None = None, device: str = "cpu") -> FinetunedVisionEncoder:
    """The encoder of a checkpoint, with its ``<path>.align.pt`` map when there is one."""
    align = Path(path).with_suffix(".align.pt")
    return FinetunedVisionEncoder(load_checkpoint(path, device)[0], name,
                                  torch.load(align, weights_only=True) if align.exists() else None)


def export_finetuned(root, store, encoder: FinetunedVisionEncoder, splits=None, fold_encoders=(),
                     fold_of: dict | None = None, progress: bool = False, **extract_kwargs) -> dict:
    """Every crop of ``splits`` (default: all) through ``encoder`` into ``store`` (``extract_split``); with
    ``fold_encoders``, a training clip ``c`` in ``fold_of`` is exported by ``fold_encoders[fold_of[c]]``.
    All encoders must share one ``.name`` (the store key). Returns ``{split[/fold<k>|/full]: report}``."""
    from emi_lib.features.extract import extract_split

    dr, fold_of, reports = as_data_root(root), fold_of or {}, {}
    for split in dr.available_splits() if splits is None else splits:
        jobs = {split: (encoder, None)}
        if fold_encoders and split == "train":
            jobs = {f"train/fold{k}": (e, [c for c, f in fold_of.items() if f == k])
                    for k, e in enumerate(fold_encoders)}
            rest = [c for c in dr.ids("train") if c not in fold_of]  # never tuned on: the full tower
            jobs |= {"train/full": (encoder, rest)} if rest else {}
        for tag, (enc, ids) in jobs.items():
            reports[tag] = extract_split(dr, split, store, "vision", encoder.name, ids=ids, encoder=enc,
                                         progress=progress, **extract_kwargs)
    return reports


def finetune_and_export(root, store, text: dict, cfg: FinetuneConfig, out_dir, *, folds: int = 0,
                        splits=None, text_source: str = "", val_text: dict | None = None,
                        val_text_keys: dict | None = None, align: bool = True, progress: bool = False,
                        **extract_kwargs) -> dict:
    """Tune on the training split (``text`` {id: (D_t,)}; ``val_text`` only logs validation), save
    ``out_dir/full.pt`` (+ ``fold<k>.pt``), then :func:`export_finetuned`. ``folds=K>=2``: out-of-fold
    training split, needed when ``text`` carries the labels (module docstring). Returns a summary
    (also written to ``out_dir/export.json``)."""
    from emi_lib.features import load_backbone

    if folds == 1 or folds < 0:
        raise ValueError(f"folds must be 0 (off) or >= 2, got {folds}")
    dr, out_dir, t0 = as_data_root(root), Path(out_dir), time.perf_counter()
    enc0 = load_backbone("vision", cfg.backbone)
    frames, skipped = preload_frames(dr, "train", enc0, max_frames=cfg.max_frames)
    vf = preload_frames(dr, "valid", enc0, max_frames=cfg.max_frames)[0] if val_text else None
    prov = {"data_root": str(dr.root.resolve()), "text_source": text_source, "epochs": cfg.epochs,
            "seed": cfg.seed, "folds": folds, "skipped_train_clips": skipped}
    ckpts = []

    def run(tag, ids, fold=None):
        model, hist = finetune(cfg, frames, text, vf, val_text, val_text_keys, ids=ids, progress=progress)
        rec = {"fold": fold, "train_ids": hist.attrs["train_ids"]}
        rec["history"] = hist.reset_index().to_dict("records")
        ckpts.append(str(save_checkpoint(model, out_dir / f"{tag}.pt", prov | rec)))
        return FinetunedVisionEncoder(model), hist.attrs["train_ids"]

    full, trained = run("full", None)
    perm = np.random.default_rng(cfg.seed).permutation(trained).tolist()
    fold_of = {cid: i % folds for i, cid in enumerate(perm)} if folds else {}
    fold_encs = []
    for k in range(folds):
        enc, ids = run(f"fold{k}", [c for c in trained if fold_of[c] != k], k)
        (out_dir / f"fold{k}.align.pt").unlink(missing_ok=True)
        if align:  # fitted on the fold tower's own training clips, never on fold k
            enc.align = fit_alignment(enc.model, full.model, frames, ids)
            torch.save(enc.align, out_dir / f"fold{k}.align.pt")
        fold_encs.append(enc)
    hashes = [e.name.rsplit(":", 1)[1] for e in (full, *fold_encs)]
    if folds:
        key = ",".join(hashes + (["align"] if align else [])).encode()
        full.name = f"{cfg.backbone}-ft-oof{folds}:{hashlib.sha1(key).hexdigest()[:10]}"
    for e in fold_encs:
        e.name = full.name
    reports = export_finetuned(dr, store, full, splits, fold_encs, fold_of, progress, **extract_kwargs)
    summary = prov | {"backbone": full.name, "tower_hashes": hashes, "fold_of": fold_of, "align": align,
                      "checkpoints": ckpts, "seconds": time.perf_counter() - t0,
                      "reports": {k: r.summary() for k, r in reports.items()}}
    (out_dir / "export.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
