"""The ablation study of notebook 03: which part of the method carries the score?

Every variant is trained with the same data, split, budget (``emi_lib.train.config``) and early
stopping as notebook 02's full model, once per seed; only the named part changes. The paper
(arXiv 2503.10603) claims that stage-1 alignment, the TCN / gated-BiLSTM split and quality-guided
fusion each help; each variant below removes or replaces exactly one of them.

Runs are cached: ``<out>/models/<variant>/seed<k>/result.json`` holds the config and the scores, and a
rerun with the same config and evaluation clips reuses it (a changed config retrains from scratch). Every run
writes its per-clip predictions of the evaluation split (``eval_predictions.csv``; the deterministic ridge
once, ``<out>/models/ridge/eval_predictions.csv``): the bootstrap of :mod:`emi_lib.experiments.ablation_stats`
resamples them.
Training runs in ``workers`` processes (one torch thread each): two workers on a 2-core machine halve
the wall time of the study.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emi_lib.constants import EMOTIONS, clip_key
from emi_lib.eval.metrics import challenge_score
from emi_lib.experiments.workers import worker_context


@dataclass(frozen=True)
class Variant:
    """One arm of the ablation. ``inputs``: a key of :data:`INPUTS` ("stage1": aligned sequences, "raw": the
    same backbones' features, or raw features of another backbone)."""

    label: str  # name in tables and plots
    kind: str = "stage2"  # "stage2" (trained EMIModel) | "ridge" (closed-form baseline)
    inputs: str = "stage1"
    fusion: str = "quality"  # EMIModelConfig.fusion
    use_priors: bool = True  # signal priors for the quality estimators (quality fusion only)
    swap_encoders: bool = False  # TCN over audio, gated BiLSTM over vision
    use_text: bool = False  # transcript embedding as a third stream
    train: tuple = ()  # (key, value) training overrides of the recipe (emi_lib.train.config), e.g. no dropout
    reference: str = "full"  # the arm it is compared with (backbone arms: the raw-input arm, same inputs kind)
    tests: str = ""  # the claim this arm tests


#: input kinds of the arms: "stage1" (notebook 01's aligned sequences), "raw" (the backbones notebook 01
#: aligned, unaligned), and raw features of one other backbone (the other modality keeps the raw default)
INPUTS: dict[str, dict] = {
    "stage1": {}, "raw": {},
    "raw_openclip": {"vision_backbone": "openclip-tiny"},  # the random-init ViT that was the default before
    "raw_facemesh_fer": {"vision_backbone": "mediapipe-facemesh+fer"},
    "raw_fer": {"vision_backbone": "fer"},
    "raw_finetuned": {"vision_backbone": "finetuned"},  # notebook 01's fine-tuned image tower
    "raw_logmel": {"audio_backbone": "logmel"},
    "raw_egemaps": {"audio_backbone": "opensmile-egemaps"},
}


#: key -> variant, in table order; "full" is the reference of every paired comparison.
VARIANTS: dict[str, Variant] = {
    "full": Variant("full (quality fusion)", tests="reference: the method as described"),
    "no_stage1": Variant("no stage 1 (raw features)", inputs="raw", tests="stage-1 alignment helps"),
    "equal": Variant("equal-weight fusion", fusion="equal", use_priors=False, tests="quality guidance helps"),
    "static": Variant("static learned weights", fusion="static", use_priors=False, tests="quality guidance helps"),
    "concat": Variant("concatenation", fusion="concat", use_priors=False, tests="quality guidance helps"),
    "vision_only": Variant("vision only (TCN)", fusion="vision_only", use_priors=False, tests="fusion helps"),
    "audio_only": Variant("audio only (gated BiLSTM)", fusion="audio_only", use_priors=False, tests="fusion helps"),
    "swapped": Variant("swapped encoders", swap_encoders=True, tests="TCN for vision, BiLSTM for audio helps"),
    "text": Variant("text as third stream", use_text=True, tests="(ours) does the transcript add information?"),
    "no_dropout": Variant("no modality dropout", train=(("modality_dropout", 0.0),),
                          tests="modality dropout teaches the fusion to compensate"),
    "no_corruption": Variant("no corruption training", train=(("corrupt_prob", 0.0),),
                             tests="corruption-aware training teaches the fusion to compensate"),
    "aux": Variant("with auxiliary heads", train=(("aux_weight", 0.3),),
                   tests="(ours) per-modality auxiliary heads help"),
    "v_openclip": Variant(reference="no_stage1", label="vision: openclip-tiny (raw)", inputs="raw_openclip",
                          tests="backbone: the pretrained face models beat a random-init ViT"),
    "v_finetuned": Variant(reference="no_stage1", label="vision: fine-tuned tower (raw)", inputs="raw_finetuned",
                           tests="backbone: pretrained face models vs the stage-1 fine-tuned image tower"),
    "v_facemesh_fer": Variant(reference="no_stage1", label="vision: face mesh + fer (raw)", inputs="raw_facemesh_fer",
                              tests="backbone: fer's expression probabilities add to the mesh"),
    "a_logmel": Variant(reference="no_stage1", label="audio: log mel only (raw)", inputs="raw_logmel", tests="backbone: ComParE adds to log mel"),
    "ridge": Variant("ridge on mean-pooled features", kind="ridge", inputs="raw", tests="a linear baseline"),
}

#: arms the demo's default list leaves out to fit its time budget (run them with ``VARIANTS=[...]``): "static" (a
#: third fixed fusion besides equal and concat), "aux" and "a_logmel" (one seed each on the demo root: auxiliary
#: heads 0.615 -> 0.619 validation, log mel alone 0.38 vs ComParE + log mel 0.44 by the ridge probe)
OPTIONAL = ("static", "aux", "a_logmel")
#: notebook 03's ``STUDY``: the same arms on SynthMimic's larger "bench" profile (1000/500/500 clips), 5 seeds
STUDY_SYNTH_PROFILE = "bench"
STUDY_SEEDS = (0, 1, 2, 3, 4)


def default_seeds(profile: str, study: bool = False) -> list[int]:
    """Model seeds of notebook 03 when ``MODEL_SEEDS`` is None: smoke [0], demo [0, 1, 2], study 5 seeds."""
    return list(STUDY_SEEDS) if study else [0] if profile == "smoke" else [0, 1, 2]


def default_workers(profile: str) -> int:
    """Training (and sweep) processes of notebook 03 when ``WORKERS`` is None: 1 in smoke, where a run trains in
    about a second and a second process gains nothing (the smoke notebook alone on an idle machine: 45.2 s with one
    worker, 44.5 s with two forked from the preloaded server, 67.8 s with two spawned), and under the tests it
    would compete with the other test worker; otherwise 2, one torch thread each."""
    return 1 if profile == "smoke" else 2


def default_variants(profile: str) -> list[str]:
    """Arms of notebook 03 when ``VARIANTS`` is None: all of them in smoke, all but :data:`OPTIONAL` otherwise."""
    return [k for k in VARIANTS if profile == "smoke" or k not in OPTIONAL]


_WORKER: dict = {}


def variant_config(key: str, profile: str, dims: dict, seed: int, n_train: int, **overrides):
    """The :class:`~emi_lib.train.stage2.Stage2Config` of a stage-2 variant."""
    from emi_lib.train.config import stage2_config

    v = VARIANTS[key]
    return stage2_config(profile, dims, fusion=v.fusion, use_priors=v.use_priors, seed=seed, use_text=v.use_text,
                         swap_encoders=v.swap_encoders, n_train=n_train, **(overrides | dict(v.train)))


def _ids_hash(ids) -> str:
    return hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:12]


def _score_dict(pred: pd.DataFrame, labels: pd.DataFrame) -> dict:
    s = challenge_score(pred, labels.loc[pred.index])
    if not np.isfinite(s["mean"]):
        raise RuntimeError(f"the score is not finite ({s}): a constant prediction column?")
    return {"mean": s["mean"], **s["per_emotion"]}


def _init_worker(sets: dict, eval_split: str, eval_labels: pd.DataFrame) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(sets=sets, eval_split=eval_split, eval_labels=eval_labels)


def _train_task(task: dict) -> dict:
    """Train one (variant, seed) in this process (worker or main) and score it; writes result.json."""
    from emi_lib.train.stage2 import Stage2Config, predict, train_stage2

    sets = _WORKER["sets"][task["inputs"]]
    cfg = Stage2Config.from_dict(task["config"])
    folder = Path(task["run_dir"])
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    model, hist = train_stage2(cfg, sets["train"], sets["valid"], folder, progress=False, resume=False)
    train_s = time.perf_counter() - t0
    pred, weights, _ = predict(model, sets[_WORKER["eval_split"]], batch_size=64)
    pred.astype("float64").to_csv(folder / "eval_predictions.csv")  # float64: the CSV round-trips exactly
    weights.to_csv(folder / "eval_weights.csv")
    res = {"variant": task["variant"], "seed": task["seed"], "config": task["config"], "eval_ids": task["eval_ids"],
           "provenance": task["provenance"],
           "eval_split": _WORKER["eval_split"], "eval": _score_dict(pred, _WORKER["eval_labels"]),
           "val_best": float(hist.attrs["best_score"]), "best_epoch": int(hist.attrs["best_epoch"]),
           "epochs": len(hist), "train_s": round(train_s, 2)}
    (folder / "result.json").write_text(json.dumps(res, indent=2))
    return res


def _cached(task: dict) -> dict | None:
    path = Path(task["run_dir"]) / "result.json"
    if not all((Path(task["run_dir"]) / f).exists() for f in ("result.json", "best.pt", "eval_predictions.csv")):
        return None
    res = json.loads(path.read_text())
    same = (res.get("config") == task["config"] and res.get("eval_ids") == task["eval_ids"]
            and res.get("provenance") == task["provenance"])
    return res if same else None


def prediction_path(out_dir, key: str, seed: int) -> Path:
    """Where a (variant, seed) run keeps its per-clip predictions of the evaluation split (the ridge, the
    same for every seed: one file)."""
    if VARIANTS[key].kind == "ridge":
        return Path(out_dir) / "models" / key / "eval_predictions.csv"
    return Path(out_dir) / "models" / key / f"seed{int(seed)}" / "eval_predictions.csv"


def ridge_predictions(raw_sets: dict, splits=("test",)) -> dict[str, pd.DataFrame]:
    """Ridge (alpha by leave-one-out CV on train) on each clip's mean-pooled (z-scored) vision and audio
    features plus two availability flags -> {split: predictions (clips x EMOTIONS, clipped to [0, 1])}.
    Deterministic: the same for every seed."""
    from emi_lib.eval.probe import fit_ridge
    from emi_lib.eval.retrieval import mean_pool

    def design(d):
        cols = []
        for m in ("vision", "audio"):
            dim = d.dims()[m]
            src = getattr(d, m)
            x, empty = mean_pool({i: src.get(i, np.zeros((0, dim), np.float32)) for i in d.ids}, d.ids, dim)
            cols += [x, (~empty).astype(float)[:, None]]
        return np.hstack(cols)

    tr = raw_sets["train"]
    model = fit_ridge(design(tr), tr.labels.loc[tr.ids, list(EMOTIONS)].to_numpy())
    return {s: pd.DataFrame(np.clip(model.predict(design(raw_sets[s])), 0, 1), index=pd.Index(raw_sets[s].ids,
                            name="Filename"), columns=list(EMOTIONS)) for s in splits}


def ridge_scores(raw_sets: dict, eval_split: str, eval_labels: pd.DataFrame) -> dict:
    """The ridge baseline (:func:`ridge_predictions`) scored on ``eval_split``: ``{"mean", <six emotions>}``."""
    return _score_dict(ridge_predictions(raw_sets, (eval_split,))[eval_split], eval_labels)


def run_ablation(variants, seeds, sets_by_inputs: dict, eval_split: str, eval_labels: pd.DataFrame, out_dir,
                 profile: str, dims_by_inputs: dict, workers: int = 1, overrides: dict | None = None,
                 progress: bool = True, provenance: dict | None = None) -> pd.DataFrame:
    """Train and score every (variant, seed); return the long table: one row per variant and seed with
    ``key, variant, seed, mean, <six emotions>, val_best, best_epoch, epochs, train_s, cached``. ``val_best``:
    the run's best validation mean PCC (the early-stopping criterion; the ridge: its validation score, fitted
    on train), what the best variant is chosen by. Per-clip predictions: :func:`prediction_path`.

    ``sets_by_inputs``: {"stage1": {split: Stage2Data}, "raw": {...}} (a variant whose inputs are missing
    raises). ``eval_labels``: labels of ``eval_split`` (SynthMimic's hidden test labels, or validation
    labels on real data). Every clip of the split is scored; a non-finite score raises.

    ``provenance``: {inputs kind: what those inputs were made from} (``Stage2Inputs.provenance()``: data root
    and fingerprint, stores, streams, stage-1 run). A cached run is reused only when its config, its
    evaluation ids *and* its provenance are the same: a rerun on another root (another SynthMimic seed has
    the same clip ids) or on a root regenerated since recomputes."""
    out = Path(out_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    eval_labels = eval_labels.copy()
    eval_labels.index = [clip_key(i) for i in eval_labels.index]
    for key in variants:
        if VARIANTS[key].inputs not in sets_by_inputs:
            raise ValueError(f"variant {key!r} needs {VARIANTS[key].inputs!r} inputs, which were not given")
    tasks, rows = [], []
    for key in variants:
        v = VARIANTS[key]
        if v.kind == "ridge":
            raw = sets_by_inputs[v.inputs]
            val_split = "valid" if raw["valid"].labels is not None else None
            pred = ridge_predictions(raw, tuple(dict.fromkeys([eval_split, *([val_split] if val_split else [])])))
            path = prediction_path(out, key, 0)
            path.parent.mkdir(parents=True, exist_ok=True)
            pred[eval_split].to_csv(path)
            s = _score_dict(pred[eval_split], eval_labels)
            val = _score_dict(pred[val_split], raw["valid"].labels)["mean"] if val_split else np.nan
            rows += [{"key": key, "variant": v.label, "seed": seed, **s, "val_best": val, "cached": False}
                     for seed in seeds]
            continue
        sets = sets_by_inputs[v.inputs]
        for seed in seeds:
            cfg = variant_config(key, profile, dims_by_inputs[v.inputs], seed, len(sets["train"]), **overrides)
            tasks.append({"variant": key, "seed": int(seed), "inputs": v.inputs, "config": cfg.to_dict(),
                          "eval_ids": _ids_hash(sets[eval_split].ids), "run_dir": str(out / "models" / key / f"seed{seed}"),
                          "provenance": json.loads(json.dumps((provenance or {}).get(v.inputs), default=str))})
    cached_results = [(t, _cached(t)) for t in tasks]
    results = [r for _, r in cached_results if r is not None]
    todo = [t for t, r in cached_results if r is None]
    bar = tqdm(total=len(tasks), desc="ablation runs", unit="run", disable=not progress, initial=len(results))
    needed = {t["inputs"] for t in todo}
    init = ({k: v for k, v in sets_by_inputs.items() if k in needed}, eval_split, eval_labels)
    if workers <= 1 or len(todo) <= 1:
        _init_worker(*init)
        for t in todo:
            results.append(_train_task(t))
            bar.update()
    else:
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=worker_context(), initializer=_init_worker,
                                 initargs=init) as pool:
            futures = [pool.submit(_train_task, t) for t in todo]
            for f in as_completed(futures):
                results.append(f.result())
                bar.update()
    bar.close()
    cached = {(t["variant"], t["seed"]) for t in tasks} - {(t["variant"], t["seed"]) for t in todo}
    for r in results:
        rows.append({"key": r["variant"], "variant": VARIANTS[r["variant"]].label, "seed": r["seed"], **r["eval"],
                     "val_best": r["val_best"], "best_epoch": r["best_epoch"], "epochs": r["epochs"],
                     "train_s": r["train_s"], "cached": (r["variant"], r["seed"]) in cached})
    order = {k: i for i, k in enumerate(variants)}
    df = pd.DataFrame(rows)
    return df.sort_values(["key", "seed"], key=lambda s: s.map(order) if s.name == "key" else s).reset_index(drop=True)


def describe_variants(variants) -> pd.DataFrame:
    """The variants as a table (what each changes and which claim it tests)."""
    return pd.DataFrame({k: {f: getattr(VARIANTS[k], f) for f in ("label", "kind", "inputs", "fusion", "use_priors",
                                                                   "swap_encoders", "use_text", "tests")}
                         for k in variants}).T


def ablation_inputs(root, profile: str, variants: list[str], *, stage1: str = "auto") -> tuple[dict, list[str], list[str]]:
    """The inputs of every arm of ``variants`` -> ``(inputs by kind, the variants that can run, notes)``.

    ``inputs["stage1"]`` is the full model's (notebook 01's aligned features, or raw ones when there are none);
    every raw arm reads **the backbones stage 1 aligned** (``raw_streams``), with one backbone changed for a
    backbone arm (:data:`INPUTS`), so "stage 1 helps" compares aligned with raw features of the same backbone
    and never silently becomes a backbone comparison. Arms that cannot run are dropped and a note says why:
    "no stage 1" without stage-1 outputs (it would be the full model), the fine-tuned-tower arm without an
    out-of-fold fine-tuned export."""
    from emi_lib.train.inputs import prepare_stage2_inputs

    variants, notes = list(variants), []
    s1 = prepare_stage2_inputs(root, profile, stage1=stage1, use_text="text" in variants, verbose=False)
    inputs = {"stage1": s1}
    base = {"vision_backbone": s1.raw_streams["vision"][1], "audio_backbone": s1.raw_streams["audio"][1]}
    finetuned = s1.stage1.finetuned_backbone if s1.stage1 is not None else None
    if s1.kind != "stage1" and "no_stage1" in variants:
        variants.remove("no_stage1")
        notes.append(f"No stage-1 outputs ({s1.note}): the full model reads raw features, so the 'no stage 1' arm "
                     "would be identical and is dropped. Run notebook 01 first to test stage 1.")
    if finetuned is None and "v_finetuned" in variants:
        variants.remove("v_finetuned")
        notes.append("Notebook 01 fine-tuned no image tower (out of fold): the fine-tuned-tower arm is dropped.")
    for kind in dict.fromkeys(VARIANTS[v].inputs for v in variants):
        if kind in inputs:
            continue
        spec = base | INPUTS[kind]
        if spec["vision_backbone"] == "finetuned":
            spec["vision_backbone"] = finetuned
        inputs[kind] = (s1 if kind == "raw" and s1.kind != "stage1" else
                        prepare_stage2_inputs(root, profile, stage1="none", use_text=False, verbose=False, **spec))
    return inputs, variants, notes
