r"""Command-line entry points for stage-1 and stage-2 training, in one process or under ``torchrun``.

::

    # one process
    python -m emi_lib.train.launch stage2 --root ROOT --store FEATURES --vision vision/openclip-tiny \
        --audio audio/logmel --out runs/s2 --epochs 10 --profile demo
    # N processes on this machine (gloo on the CPU, nccl on GPUs: one GPU per process)
    torchrun --standalone --nproc_per_node N -m emi_lib.train.launch stage2 ...   # same arguments
    python -m torch.distributed.run --standalone --nproc_per_node N -m emi_lib.train.launch stage1 \
        --root ROOT --store FEATURES --feats vision/openclip-tiny --text text/minilm --out runs/s1

Features come from a :class:`~emi_lib.features.store.FeatureStore` already filled by
``python -m emi_lib.features.extract`` (itself runnable under torchrun). A stream is
``MODALITY/BACKBONE`` as stored (``vision/openclip-tiny``, ``vision_aligned/stage1``,
``text/minilm``); a bare backbone name means the default modality of the option.

**stage2** (as notebook 02 builds its inputs): labels of train/valid from the data root, the signal
priors of each split (``<store>/priors/<split>.csv``, computed by rank 0 and cached when absent;
``--no-priors`` drops them), every feature dimension z-scored with train-split statistics
(``--no-standardize`` keeps raw features; with ``--packed`` the features are read lazily from packed stores
and z-scored on the fly), then :func:`~emi_lib.train.stage2.train_stage2` into
``--out``. Rank 0 then writes ``valid_predictions.csv`` and ``valid_score.json`` (dataset-level
challenge score of the best weights, predictions gathered from all ranks).

**stage1**: :func:`~emi_lib.train.stage1.train_aligner` on the train split's ``--feats`` and ``--text``
embeddings, validated on valid; rank 0 writes ``aligner_<modality>.pt`` / ``.json`` and
``history.csv`` in ``--out``.

``--profile`` picks the model sizes (smoke: tests and CPU smoke runs; demo; full: real data on GPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: stage-1 aligner sizes per profile
STAGE1_PROFILES: dict[str, dict] = {
    "smoke": dict(embed_dim=16, hidden=32, attn_hidden=8, max_steps=32, epochs=3),
    "demo": dict(embed_dim=64, hidden=128, attn_hidden=64, max_steps=128, epochs=20),
    "full": dict(embed_dim=128, hidden=256, attn_hidden=64, max_steps=256, epochs=30),
}


def stream(spec: str, default_modality: str) -> tuple[str, str]:
    """``"vision/openclip-tiny"`` -> ``("vision", "openclip-tiny")``; a bare name gets ``default_modality``.
    Only the first ``/`` splits (backbone names such as ``openclip:ViT-B-32/openai`` keep theirs)."""
    head, sep, tail = spec.partition("/")
    known = {"vision", "audio", "text", "vision_aligned", "audio_aligned", "vision_clip", "audio_clip"}
    if sep and (head in known or head.endswith(("_aligned", "_clip"))):
        return head, tail
    return default_modality, spec


def _log(ctx, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


def _priors(root, store, split: str, ctx) -> pd.DataFrame:
    """The split's signal priors (:func:`emi_lib.train.inputs.load_priors`, cached in the store): rank 0
    computes them when absent, the other ranks wait, then every rank reads the cache."""
    from emi_lib.train.distributed import barrier
    from emi_lib.train.inputs import load_priors

    if ctx.is_main:
        load_priors(root, store, split)
    barrier()
    return load_priors(root, store, split)


def run_stage2(a, ctx) -> dict:
    from emi_lib.data import DataRoot
    from emi_lib.eval.metrics import challenge_score
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.budgets import stage2_config
    from emi_lib.train.checkpoint import atomic_write_json, atomic_write_text
    from emi_lib.train.data import Stage2Data, media_absent, stream_media
    from emi_lib.train.inputs import Standardizer
    from emi_lib.train.stage2 import predict, train_stage2

    data, store = DataRoot(a.root), FeatureStore(a.store)
    vis, aud = stream(a.vision, "vision"), stream(a.audio, "audio")
    media = {"vision": stream_media("vision", vis[1]), "audio": stream_media("audio", aud[1])}
    sets = {}
    for split in ("train", "valid"):
        pri = None if a.no_priors else _priors(a.root, store, split, ctx)
        absent = media_absent(data, split, media=media)  # clips that may lack a stream; any other lacking one fails
        if a.packed:  # lazy: one contiguous file per stream and split, read per batch (emi_lib.features.packed)
            sets[split] = Stage2Data.from_packed(Path(a.packed) / vis[0] / vis[1] / split,
                                                 Path(a.packed) / aud[0] / aud[1] / split,
                                                 labels=data.split(split), priors=pri, ids=data.ids(split),
                                                 absent=absent)
        else:
            sets[split] = Stage2Data.from_store(store, split, vision=vis, audio=aud, labels=data.split(split),
                                                priors=pri, ids=data.ids(split), absent=absent)
    dims = sets["train"].dims()
    if dims["vision"] is None or dims["audio"] is None:
        raise ValueError(f"no train features for {vis} or {aud} in {a.store}: extract them first")
    if not a.no_standardize:  # z-score every dimension with train statistics, as the notebooks do
        std = Standardizer.fit(sets["train"])
        for d in sets.values():
            std.apply(d)
    # the same model and budget as notebooks 02/03 (emi_lib.train.budgets); options override them
    cfg = stage2_config(a.profile, dims, fusion=a.fusion, use_priors=not a.no_priors, seed=a.seed,
                        n_train=len(sets["train"]), epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                        patience=a.patience)
    cfg.device, cfg.ckpt_every_steps, cfg.bucket_by_length = a.device, a.ckpt_every, a.bucket
    _log(ctx, f"stage 2 on {ctx.world} process(es) ({ctx.backend or 'no process group'}, {ctx.device}): "
              f"{len(sets['train'])} train / {len(sets['valid'])} valid clips, batch {cfg.batch_size} per rank")
    t0 = time.perf_counter()
    net, hist = train_stage2(cfg, sets["train"], sets["valid"], a.out, progress=ctx.is_main and not a.no_progress,
                             resume=not a.fresh)
    seconds = time.perf_counter() - t0
    pred, _, _ = predict(net, sets["valid"], batch_size=2 * cfg.batch_size)  # every rank: sharded, gathered
    score = challenge_score(pred, sets["valid"].labels)
    out = {"world_size": ctx.world, "backend": ctx.backend, "device": str(ctx.device), "train_seconds": seconds,
           "epochs_run": len(hist), "best_epoch": hist.attrs.get("best_epoch"),
           "valid_mean_pcc": score["mean"], "valid_per_emotion": score["per_emotion"]}
    if ctx.is_main:
        atomic_write_text(pred.to_csv(), Path(a.out) / "valid_predictions.csv")
        atomic_write_json(out, Path(a.out) / "valid_score.json")
    _log(ctx, f"stage 2 done in {seconds:.1f} s: {len(hist)} epoch(s), best epoch {out['best_epoch']}, "
              f"valid mean PCC {score['mean']:.4f} -> {a.out}")
    return out


def run_stage1(a, ctx) -> dict:
    from emi_lib.features.store import FeatureStore
    from emi_lib.models.aligner import AlignerConfig
    from emi_lib.train.checkpoint import atomic_write_text
    from emi_lib.train.stage1 import save_aligner, train_aligner

    store = FeatureStore(a.store)
    fm, fb = stream(a.feats, "vision")
    tm, tb = stream(a.text, "text")
    feats = {s: store.load_split(fm, fb, s) for s in ("train", "valid")}
    text = {s: {k: v.reshape(-1) for k, v in store.load_split(tm, tb, s).items()} for s in ("train", "valid")}
    dims = {np.asarray(v).shape[-1] for v in feats["train"].values() if np.asarray(v).size}
    if len(dims) != 1 or not text["train"]:
        raise ValueError(f"need train features {fm}/{fb} (one D, got {sorted(dims)}) and text {tm}/{tb} in {a.store}")
    prof = dict(STAGE1_PROFILES[a.profile])
    default_epochs = prof.pop("epochs")
    epochs = a.epochs or default_epochs
    modality = fm.split("_")[0]
    cfg = AlignerConfig(modality=modality, in_dim=dims.pop(), text_dim=next(iter(text["train"].values())).size,
                        lr=a.lr, epochs=epochs, batch_size=a.batch_size, seed=a.seed, device=a.device,
                        patience=a.patience, **prof)
    _log(ctx, f"stage 1 {modality}-text on {ctx.world} process(es) ({ctx.backend or 'no process group'}): "
              f"{len(feats['train'])} train clips, batch {cfg.batch_size} per rank "
              f"({cfg.batch_size * ctx.world} global negatives pool)")
    t0 = time.perf_counter()
    model, hist = train_aligner(cfg, feats["train"], text["train"], feats["valid"], text["valid"],
                                progress=ctx.is_main and not a.no_progress)
    seconds = time.perf_counter() - t0
    out = Path(a.out)
    if ctx.is_main:
        save_aligner(model, cfg, out / f"aligner_{modality}.pt")
        atomic_write_text(hist.to_csv(), out / "history.csv")
    last = hist.iloc[-1]
    _log(ctx, f"stage 1 done in {seconds:.1f} s: train loss {last['train_loss']:.4f}, "
              f"val loss {last.get('val_loss', float('nan')):.4f} -> {out}")
    return {"train_seconds": seconds, "train_loss": float(last["train_loss"])}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m emi_lib.train.launch", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", required=True, help="data root (Hume-Vidmimic2 layout or SynthMimic)")
    common.add_argument("--store", required=True, help="feature store folder (python -m emi_lib.features.extract)")
    common.add_argument("--out", required=True, help="run folder (written by rank 0)")
    common.add_argument("--profile", choices=sorted(STAGE1_PROFILES), default="demo",
                        help="model sizes (stage 2: emi_lib.train.budgets.STAGE2_BUDGET)")
    common.add_argument("--epochs", type=int, help="default: the profile's")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--lr", type=float)
    common.add_argument("--batch-size", type=int, default=32, help="clips per step per rank")
    common.add_argument("--patience", type=int)
    common.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: GPU LOCAL_RANK)")
    common.add_argument("--no-progress", action="store_true")
    s2 = sub.add_parser("stage2", parents=[common], help="train the stage-2 fusion model")
    s2.add_argument("--vision", required=True, help="MODALITY/BACKBONE, e.g. vision/openclip-tiny")
    s2.add_argument("--audio", required=True, help="MODALITY/BACKBONE, e.g. audio/logmel")
    s2.add_argument("--fusion", default="quality", choices=("quality", "equal", "static", "concat",
                                                            "vision_only", "audio_only"))
    s2.add_argument("--no-priors", action="store_true")
    s2.add_argument("--no-standardize", action="store_true")
    s2.add_argument("--ckpt-every", type=int, help="also checkpoint every this many steps")
    s2.add_argument("--fresh", action="store_true", help="do not resume from --out/checkpoint.pt")
    s2.add_argument("--packed", help="read features from packed stores PACKED/<modality>/<backbone>/<split> "
                    "(python -m emi_lib.features.packed build) instead of --store's per-clip files")
    s2.add_argument("--bucket", action="store_true", help="length-bucketed training batches (less padding)")
    s1 = sub.add_parser("stage1", parents=[common], help="train one modality-text aligner")
    s1.add_argument("--feats", required=True, help="MODALITY/BACKBONE of the frames, e.g. vision/openclip-tiny")
    s1.add_argument("--text", required=True, help="MODALITY/BACKBONE of the text, e.g. text/minilm")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 on a bad argument / missing features (the message on stderr)."""
    a = parser().parse_args(argv)
    if a.lr is None:
        a.lr = 2e-3 if a.stage == "stage2" else 1e-3
    from emi_lib.data import DataError
    from emi_lib.train.distributed import cleanup, init_distributed

    ctx = init_distributed(device=a.device)  # torchrun also sets OMP_NUM_THREADS=1 per process by default
    try:
        res = (run_stage2 if a.stage == "stage2" else run_stage1)(a, ctx)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error (rank {ctx.rank}): {err}", file=sys.stderr)
        cleanup(wait=False)
        return 2
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()
    if ctx.is_main and a.no_progress:
        print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
