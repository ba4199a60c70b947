r"""Command-line entry points for stage 1, stage 2 and prediction, in one process or under ``torchrun``.

The demo pipeline from the shell, without notebooks (a SynthMimic root; on real data skip the first line)::

    python -m emi_lib.data.synth --out ROOT --profile demo --seed 0
    python -m emi_lib.features.extract ROOT --store FEATS --vision mediapipe-facemesh --audio opensmile-compare+logmel
    python -m emi_lib.features.extract ROOT --store FEATS --text minilm --text-source label_prompt --splits train valid
    python -m emi_lib.train.launch stage1 --root ROOT --store FEATS --vision vision/mediapipe-facemesh \
        --audio audio/opensmile-compare+logmel --text "text/minilm[label_prompt]" --out runs/s1 --profile demo --export
    python -m emi_lib.train.launch stage2 --root ROOT --store FEATS --stage1 runs/s1 --out runs/s2 --profile demo
    python -m emi_lib.train.launch predict --run runs/s2     # runs/s2/submission.csv, validated; .json: its score

Raw features only (no stage 1): ``stage2 ... --vision vision/mediapipe-facemesh --audio audio/opensmile-compare+logmel``.
Under ``torchrun --standalone --nproc_per_node N -m emi_lib.train.launch stage1|stage2 ...`` (same arguments) the
clips are sharded over N processes (gloo on the CPU, nccl on GPUs: one GPU per process; ``docs/distributed.md``).

Features come from a :class:`~emi_lib.features.store.FeatureStore` filled by ``python -m emi_lib.features.extract``
(itself runnable under torchrun). A stream is ``MODALITY/BACKBONE`` as stored (``vision/openclip-tiny``,
``vision/openclip-tiny[max=64]``, ``text/minilm[label_prompt]``); a bare backbone name means the option's default
modality. Every stream must cover every clip of the splits it is read for (stored, or listed as missing by its
extraction): a split that was never extracted is an error, not a split of clips without features.

**stage1** trains one modality-text aligner per stream given (``--vision``, ``--audio``; or one ``--feats``) with
:func:`~emi_lib.train.stage1.train_aligner` on the train split, validated on valid, sizes from
the profile's preset (:func:`emi_lib.train.config.stage1_config`); rank 0 writes ``aligner_<modality>.pt`` / ``.json`` and ``history_<modality>.csv`` in
``--out``. ``--export`` then writes what stage 2 reads, by the same code as notebook 01
(:func:`emi_lib.train.stage1_export.export_stage1`): the aligned per-step sequences and clip embeddings of every
split into the store and ``--out/stage1_outputs.json`` (schema ``emi.stage1_outputs/v1``). With label-prompt text
(a text key ending in ``[label_prompt]``) the train split is exported out of fold (``--oof-folds``, default
the preset's K, :func:`emi_lib.train.config.oof_folds`; :mod:`emi_lib.train.stage1_folds` says why).

**stage2** builds its inputs as notebook 02 does (:func:`emi_lib.train.inputs.build_split`): the streams
(``--vision``/``--audio``, or ``--stage1 RUN`` for a stage-1 export: each raw step joined to its aligned projection,
``--stage1-inputs aligned+raw``, or the aligned steps alone), the signal priors of each split
(``<store>/priors/<split>.csv``, computed by rank 0 and cached; ``--no-priors`` drops them), every dimension z-scored
with train statistics (``--no-standardize`` keeps raw values; with ``--packed`` features are read lazily and z-scored
on the fly), then :func:`~emi_lib.train.stage2.train_stage2` into ``--out`` with the model and budget of
:func:`emi_lib.train.config.stage2_config`. Rank 0 writes the run record (``inputs.json``, ``standardizer.npz``:
:mod:`emi_lib.train.run_record`), ``valid_predictions.csv`` and ``valid_score.json``.

**predict** (one process) rebuilds a split's inputs from the run folder alone and writes a validated submission
(:func:`emi_lib.train.run_record.predict_run`).

``--profile`` picks the presets of :mod:`emi_lib.train.config` (smoke: tests and CPU smoke runs; demo; full: real
data on GPUs), the same as the notebooks'; ``--epochs``, ``--lr``, ``--batch-size``, ``--patience`` override them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

LABEL_PROMPT = "[label_prompt]"


def stream(spec: str, default_modality: str) -> tuple[str, str]:
    """``MODALITY/BACKBONE`` -> ``(modality, backbone)``: :func:`emi_lib.features.store.parse_stream`."""
    from emi_lib.features.store import parse_stream

    return parse_stream(spec, default_modality)


def _log(ctx, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


def _stage2_streams(a, raw_store):
    """(store of the streams, streams, raw streams joined to them or None, stage1_outputs.json or None)."""
    from emi_lib.train.inputs import find_stage1

    if a.stage1:
        if a.vision or a.audio:
            raise ValueError("--stage1 takes the streams from the stage-1 run: give --vision/--audio only without it")
        s1, note = find_stage1(a.stage1, a.profile)
        if s1 is None:
            raise ValueError(note)
        info = json.loads(s1.path.read_text())
        for what, rec, given in (("data root", info["data_root"], a.root), ("feature store", info["store_dir"], a.store)):
            if Path(rec).resolve() != Path(given).resolve():
                raise ValueError(f"{s1.path} was exported from the {what} {rec}, but {Path(given).resolve()} was given")
        return s1.store, dict(s1.streams), (dict(s1.raw) if a.stage1_inputs == "aligned+raw" else None), s1.path
    if not (a.vision and a.audio):
        raise ValueError("give the raw streams (--vision and --audio) or a stage-1 export (--stage1 RUN)")
    return raw_store, {"vision": stream(a.vision, "vision"), "audio": stream(a.audio, "audio")}, None, None


def _same_record(out: Path, new: dict) -> None:
    """A resumed run must read the inputs its checkpoint was trained on."""
    from emi_lib.train.run_record import RUN_NAME

    old_path = out / RUN_NAME
    if not (out / "checkpoint.pt").exists() or not old_path.exists():
        return
    old = json.loads(old_path.read_text())
    keys = ("data_root", "store_dir", "streams", "with_raw", "stage1", "stage1_inputs", "priors", "packed", "standardizer")
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ValueError(f"{old_path}: the run in {out} was trained on other inputs (fields {diff} differ): "
                         "use a new --out or --fresh")


def run_stage2(a, ctx) -> dict:
    from emi_lib.data import DataRoot
    from emi_lib.distributed import barrier
    from emi_lib.eval.metrics import challenge_score
    from emi_lib.features.coverage import check_coverage
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.checkpoint import atomic_write_json, atomic_write_text
    from emi_lib.train.config import stage2_config
    from emi_lib.train.data import stream_media
    from emi_lib.train.inputs import Standardizer, build_split, load_priors
    from emi_lib.train.run_record import run_record, write_run_record
    from emi_lib.train.stage2 import predict, train_stage2

    data, raw_store = DataRoot(a.root), FeatureStore(a.store)
    store, streams, with_raw, s1_path = _stage2_streams(a, raw_store)
    raw_pairs = with_raw or (None if s1_path else streams)  # the raw features' backbones: what their media are
    # clips whose media are absent may lack a stream; any other clip lacking one counts against max_missing_share
    media = {m: stream_media(m, b) for m, (_, b) in (raw_pairs or {}).items()} or None
    sets = {}
    for split in ("train", "valid"):
        ids = data.ids(split)
        for pair in streams.values():
            check_coverage(store, pair, split, ids, a.packed)
        for pair in (with_raw or {}).values():
            check_coverage(raw_store, pair, split, ids)
        if not a.no_priors:  # rank 0 computes and caches them, the other ranks then read the cache
            if ctx.is_main:
                load_priors(a.root, raw_store, split)
            barrier()
        sets[split] = build_split(a.root, store, streams, split, raw_store=raw_store, labels=data.split(split),
                                  ids=ids, with_raw=with_raw, priors=not a.no_priors, packed=a.packed, media=media,
                                  raw_pairs=with_raw)
    dims = sets["train"].dims()
    if dims["vision"] is None or dims["audio"] is None:
        raise ValueError(f"no train features for {streams} in {store.root}: extract them first")
    std = None if a.no_standardize else Standardizer.fit(sets["train"])  # train statistics, as the notebooks
    for d in sets.values() if std is not None else ():
        std.apply(d)
    cfg = stage2_config(a.profile, dims, fusion=a.fusion, use_priors=not a.no_priors, seed=a.seed,
                        n_train=len(sets["train"]), epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                        patience=a.patience)
    cfg.device, cfg.ckpt_every_steps, cfg.bucket_by_length = a.device, a.ckpt_every, a.bucket
    out = Path(a.out)
    if ctx.is_main:  # the run record (emi_lib.train.run_record): what predict needs to rebuild these inputs
        rec = run_record(root=a.root, store_dir=a.store, streams=streams, with_raw=with_raw, stage1=s1_path,
                         stage1_inputs=a.stage1_inputs, priors=not a.no_priors, standardize=std is not None,
                         packed=a.packed, profile=a.profile)
        if not a.fresh:
            _same_record(out, rec)
        out.mkdir(parents=True, exist_ok=True)
        write_run_record(out, rec, std)
    _log(ctx, f"stage 2 on {ctx.world} process(es) ({ctx.backend or 'no process group'}, {ctx.device}): "
              f"{len(sets['train'])} train / {len(sets['valid'])} valid clips, batch {cfg.batch_size} per rank; "
              f"streams {streams}" + (f" joined to {with_raw}" if with_raw else ""))
    t0 = time.perf_counter()
    net, hist = train_stage2(cfg, sets["train"], sets["valid"], out, progress=ctx.is_main and not a.no_progress,
                             resume=not a.fresh, log_epochs=ctx.is_main and a.no_progress)
    seconds = time.perf_counter() - t0
    pred, _, _ = predict(net, sets["valid"], batch_size=2 * cfg.batch_size)  # every rank: sharded, gathered
    score = challenge_score(pred, sets["valid"].labels)
    res = {"world_size": ctx.world, "backend": ctx.backend, "device": str(ctx.device), "train_seconds": seconds,
           "epochs_run": len(hist), "best_epoch": hist.attrs.get("best_epoch"),
           "valid_mean_pcc": score["mean"], "valid_per_emotion": score["per_emotion"]}
    if ctx.is_main:
        atomic_write_text(pred.to_csv(), out / "valid_predictions.csv")
        atomic_write_json(res, out / "valid_score.json")
    _log(ctx, f"stage 2 done in {seconds:.1f} s: {len(hist)} epoch(s), best epoch {res['best_epoch']}, "
              f"valid mean PCC {score['mean']:.4f} -> {out}")
    return res


def _frame_rate(store, modality: str, key: str) -> float | None:
    """The frame rate its extraction recorded (a concatenation: its first part's), None when unrecorded."""
    from emi_lib.data import DataError
    from emi_lib.features.extract import read_meta
    from emi_lib.features.store import split_composite

    try:
        return read_meta(store, modality, split_composite(key)[0], "train").get("frame_rate")
    except DataError:
        return None


def run_stage1(a, ctx) -> dict:
    from emi_lib.data import DataRoot
    from emi_lib.distributed import barrier
    from emi_lib.features.coverage import check_coverage
    from emi_lib.features.store import FeatureStore
    from emi_lib.features.text import clip_text
    from emi_lib.train.checkpoint import atomic_write_text
    from emi_lib.train.config import oof_folds, stage1_config
    from emi_lib.train.stage1 import save_aligner, train_aligner
    from emi_lib.train.stage1_export import every_clip, export_stage1, train_oof

    data, store = DataRoot(a.root), FeatureStore(a.store)
    pairs = {m: stream(s, m) for m, s in (("vision", a.vision), ("audio", a.audio)) if s}
    if a.feats:
        if pairs:
            raise ValueError("give --feats (one stream) or --vision/--audio, not both")
        fm, fb = stream(a.feats, "vision")
        pairs = {fm.split("_")[0]: (fm, fb)}
    if not pairs:
        raise ValueError("give the streams to align: --vision and/or --audio (or --feats)")
    if a.export and set(pairs) != {"vision", "audio"}:
        raise ValueError("--export writes stage1_outputs.json, which stage 2 reads for both streams: give --vision "
                         "and --audio")
    tm, tb = stream(a.text, "text")
    label_prompt = tb.endswith(LABEL_PROMPT)
    k = oof_folds(a.profile, "label_prompt" if label_prompt else "transcript", a.oof_folds)
    if a.oof_folds is not None and not a.export:
        raise ValueError(f"--oof-folds must be 0 (in fold) or >= 2, with --export (got {a.oof_folds})")
    splits = data.available_splits() if a.export else ["train", "valid"]
    text = {s: {c: v.reshape(-1) for c, v in store.load_split(tm, tb, s).items()} for s in ("train", "valid")}
    if not text["train"]:
        raise ValueError(f"no train text embeddings {tm}/{tb} in {a.store}: extract them first")
    feats, dims = {}, {}
    for m, pair in pairs.items():
        for s in splits:
            check_coverage(store, pair, s, data.ids(s))
            feats[m, s] = every_clip(store, *pair, s, data.ids(s), dims.get(m))
            dims[m] = dims.get(m) or next(v.shape[1] for v in feats[m, s].values())
    text_dim = next(iter(text["train"].values())).size
    val_keys = ({c: clip_text("label_prompt", None, row) for c, row in data.split("valid").iterrows()}
                if label_prompt else None)  # retrieval: a clip with the same prompt is a hit (notebook 01)
    out, models, cfgs, ckpts, res = Path(a.out), {}, {}, {}, {}
    for m, (fm, fb) in pairs.items():
        cfgs[m] = stage1_config(a.profile, m, dims[m], text_dim, seed=a.seed, device=a.device, lr=a.lr,
                                epochs=a.epochs, batch_size=a.batch_size, patience=a.patience)
        bs = cfgs[m].batch_size
        _log(ctx, f"stage 1 {m}-text ({fm}/{fb}) on {ctx.world} process(es) ({ctx.backend or 'no process group'}): "
                  f"batch {bs} per rank ({bs * ctx.world} global negatives pool)")
        t0 = time.perf_counter()
        models[m], hist = train_aligner(cfgs[m], feats[m, "train"], text["train"], feats[m, "valid"], text["valid"],
                                        train_labels=data.split("train"), progress=ctx.is_main and not a.no_progress,
                                        val_text_keys=val_keys, log_epochs=ctx.is_main and a.no_progress)
        ckpts[m] = out / f"aligner_{m}.pt"
        if ctx.is_main:
            save_aligner(models[m], cfgs[m], ckpts[m])
            atomic_write_text(hist.to_csv(), out / f"history_{m}.csv")
        last = hist.iloc[-1]
        res[m] = {"train_seconds": time.perf_counter() - t0, "train_loss": float(last["train_loss"]),
                  "val_loss": float(last.get("val_loss", np.nan))}
        _log(ctx, f"stage 1 {m}-text done in {res[m]['train_seconds']:.1f} s: train loss {res[m]['train_loss']:.4f}, "
                  f"val loss {res[m]['val_loss']:.4f} -> {ckpts[m]}")
    if a.export:
        oof, fold_file = {}, None
        if k:
            oof, _, fold_file = train_oof(cfgs, feats, text["train"], data.ids("train"), k, a.seed, out,
                                          train_labels=data.split("train"), log=lambda s: _log(ctx, s))
        if ctx.is_main:
            source = "label_prompt" if label_prompt else "transcript"
            text_info = {"backbone": tb[: -len(LABEL_PROMPT)] if label_prompt else tb, "store_backbone": tb,
                         "source": source, "dim": int(text_dim), "splits": [s for s in splits if store.done_ids(tm, tb, s)]}
            raw = {m: {"modality": p[0], "backbone": p[1], "dim": dims[m], "frame_rate": _frame_rate(store, *p)}
                   for m, p in pairs.items()}
            ex = export_stage1(out.resolve(), store, models, cfgs, ckpts, feats, data_root=a.root, profile=a.profile,
                               seed=a.seed, splits=splits, backbones={m: p[1] for m, p in pairs.items()}, raw=raw,
                               text=text_info, oof=oof, fold_file=fold_file,
                               made_by="python -m emi_lib.train.launch stage1 --export")
            how = f"train out of fold, K={k}" if k else "in fold"
            _log(ctx, f"exported {splits} ({how}) -> {ex.path}")
        barrier()
        res["stage1_outputs"] = str(out.resolve() / "stage1_outputs.json")
    return res


def run_predict(a, ctx) -> dict:
    from emi_lib.train.run_record import predict_run

    if not ctx.is_main:
        return {}
    path, info = predict_run(a.run, a.split, a.out, a.root, a.store, batch_size=a.batch_size, device=a.device)
    score = info.get("score")
    print(f"{a.split}: {info['n']} clips predicted (lacking a stream: {info['lacking']}) -> {path} (validated)"
          + (f"; mean PCC {score['mean']:.4f}" if score else ""), flush=True)
    return {"path": str(path), "n": info["n"], "score": score}


def parser() -> argparse.ArgumentParser:
    from emi_lib.train.launch_args import add_arguments

    ap = argparse.ArgumentParser(prog="python -m emi_lib.train.launch", description=__doc__.split("\n")[0],
                                 epilog="Run 'python -m emi_lib.train.launch STEP --help' for a step's options; "
                                        "the module docstring lists the commands of the whole pipeline.")
    from emi_lib.train.config import PROFILES

    add_arguments(ap, list(PROFILES))
    return ap


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 on a bad argument / missing features (the message on stderr)."""
    a = parser().parse_args(argv)
    from emi_lib.data import DataError
    from emi_lib.distributed import cleanup, init_distributed

    ctx = init_distributed(device=a.device)  # torchrun also sets OMP_NUM_THREADS=1 per process by default
    run = {"stage2": run_stage2, "stage1": run_stage1, "predict": run_predict}[a.stage]
    try:
        res = run(a, ctx)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error (rank {ctx.rank}): {err}", file=sys.stderr)
        cleanup(wait=False)
        return 2
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()
    if ctx.is_main and getattr(a, "no_progress", False):
        print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
