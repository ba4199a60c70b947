r"""Stage-2 inputs from a data root: features (stage-1 aligned or raw), priors, labels, z-scoring.

Notebooks 02, 03 and 04 all need the same thing: for each split a :class:`~emi_lib.train.data.Stage2Data`
with the per-frame vision and audio sequences, the media-only signal priors and (train / valid) the
labels. :func:`prepare_stage2_inputs` builds them once; :func:`inputs_for_root` builds the *same kind*
of inputs for another root (e.g. a SynthMimic test set regenerated with more occlusion) with the
stage-1 aligners and the z-scoring statistics of the original run, so a trained model sees new data
exactly as it saw its training data.

**Which features.** ``stage1="auto"`` uses notebook 01's aligned sequences when its
``stage1_outputs.json`` (schema ``emi.stage1_outputs/v1``, documented in notebook 01) exists for the
profile, else the raw backbone features; ``"none"`` always uses raw features; a path names a
notebook-01 run folder (it must exist).

**Stage-1 inputs** (ours; the paper does not say what stage 2 reads). ``stage1_inputs="aligned+raw"`` (the
default) gives stage 2 every step twice, :math:`[x_t ; g(x_t)]`: the raw backbone features and their stage-1
projection into the text-aligned space, so alignment can only add to what the backbone carries; ``"aligned"`` is
the aligned sequence alone. On the demo root, one seed: full model 0.572 test mean PCC on the aligned steps
alone, against 0.59-0.62 on raw steps in single-seed runs (the 64-d projection of a 16-d face mesh and a 129-d voice discards
information a regression could use).

**Standardisation** (ours): every feature dimension is z-scored with the mean and standard deviation of
all valid *training* steps, :math:`\tilde x_{t,d} = (x_{t,d}-\mu_d)/\sigma_d`. The random-init
``openclip-tiny`` frame embeddings are dominated by a pattern shared by every frame, which the encoders'
per-frame LayerNorm does not remove; without z-scoring the demo vision-only model did not learn
(validation mean PCC -0.004 instead of 0.20).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.data import DataRoot
from emi_lib.data.fingerprint import ProvenanceError, check_same_root, root_fingerprint
from emi_lib.features.backbones import DEFAULT_BACKBONES
from emi_lib.features.extract import ExtractionReports, extract_all, parse_store_backbone, recorded_failures
from emi_lib.features.extract_job import split_lock
from emi_lib.features.extract_report import failure_line
from emi_lib.features.quality import compute_priors
from emi_lib.features.store import FeatureStore, derived_store, valid_steps
from emi_lib.paths import stage_run_dir
from emi_lib.train.checkpoint import atomic_write_text
from emi_lib.train.data import Stage2Data, media_absent, stream_media
from emi_lib.train.standardize import Standardizer  # noqa: F401  (re-exported: the inputs' z-scoring)

SPLITS = ("train", "valid", "test")
#: what stage 2 reads from a stage-1 run: the aligned steps alone, or each raw step with its aligned projection
STAGE1_INPUTS = ("aligned+raw", "aligned")


@dataclass
class Stage1Outputs:
    """What notebook 01 exported, read from its ``stage1_outputs.json``."""

    path: Path
    store: FeatureStore  # where the aligned sequences live
    streams: dict  # {"vision": (modality, backbone key), "audio": (...)} of the aligned frames
    raw: dict  # {"vision": (modality, backbone), "audio": (...)}: the raw inputs of the aligners
    checkpoints: dict  # {"vision": Path, "audio": Path}: the aligners (``emi_lib.train.stage1.load_aligner``)
    finetuned_backbone: str | None = None  # the fine-tuned image tower's backbone name, when notebook 01 made one


def find_stage1(spec: str | os.PathLike, profile: str, data_root: str | os.PathLike | None = None
                ) -> tuple[Stage1Outputs | None, str]:
    """Notebook 01's outputs for ``spec`` ("auto" | "none" | a run folder) -> ``(outputs or None, why)``.

    ``data_root``: the root the caller trains on. The run's ``stage1_outputs.json`` records the root it
    was made from and its fingerprint (:mod:`emi_lib.data.fingerprint`); another root (another SynthMimic
    seed has the same clip ids), or this root regenerated since, is refused: an explicit folder raises
    :class:`~emi_lib.data.fingerprint.ProvenanceError` naming both roots, "auto" falls back to raw features
    and says why in the returned note (notebooks print it and record it in ``metrics.json``). "auto" also
    returns None when notebook 01 has not run (or its exports are incomplete); an explicit folder that
    lacks them raises ``FileNotFoundError``."""
    if str(spec) == "none":
        return None, "STAGE1_RUN='none'"
    auto = str(spec) == "auto"
    folder = stage_run_dir(profile, "01_stage1_contrastive_pretraining") if auto else Path(spec)
    path = Path(folder) / "stage1_outputs.json"
    if not path.exists():
        if not auto:
            raise FileNotFoundError(f"{path} does not exist: STAGE1_RUN must be a notebook-01 run folder")
        return None, f"no notebook-01 outputs at {path}"
    info = json.loads(path.read_text())
    if info.get("schema") != "emi.stage1_outputs/v1":
        raise ValueError(f"{path}: unknown schema {info.get('schema')!r} (expected emi.stage1_outputs/v1)")
    if data_root is not None:
        recorded = info.get("data") or ({"data_root": info["data_root"]} if info.get("data_root") else None)
        try:
            check_same_root(recorded, root_fingerprint(data_root), f"the stage-1 run {path.parent}")
        except ProvenanceError as err:
            if not auto:
                raise
            return None, f"STAGE1_RUN='auto' fell back to raw features: {err}"
    streams, raw, ckpts = {}, {}, {}
    for m in ("vision", "audio"):
        entry = info.get("modalities", {}).get(m, {})
        f, r = entry.get("frames") or {}, entry.get("raw") or {}
        if not f.get("modality") or not f.get("backbone"):
            return None, f"{path} names no aligned {m} frames"
        streams[m] = (f["modality"], f["backbone"])
        raw[m] = (r.get("modality", m), r.get("backbone"))
        ckpts[m] = Path(entry["checkpoint"]) if entry.get("checkpoint") else None
    if not info.get("store_dir"):
        return None, f"{path} names no feature store"
    store = FeatureStore(info["store_dir"])
    if data_root is not None:
        store.bind(data_root)  # the store itself must hold this root's features (never reset here)
    lacking = [f"{m}/{s}" for m, (mod, key) in streams.items() for s in info.get("splits", SPLITS)
               if not store.done_ids(mod, key, s)]
    if lacking:
        return None, f"{path} lists aligned features that are not in {info['store_dir']}: {lacking}"
    finetuned = (info.get("finetuned") or {}).get("backbone")
    return Stage1Outputs(path, store, streams, raw, ckpts, finetuned), f"stage-1 aligned features from {path}"


def load_priors(root: str | os.PathLike, raw_store: FeatureStore, split: str) -> pd.DataFrame:
    """Signal priors of a split (media only, :func:`~emi_lib.features.quality.compute_priors`), cached as
    ``<store>/priors/<split>.csv`` (atomic write)."""
    path = raw_store.root / "priors" / f"{split}.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"Filename": str}).set_index("Filename")
    pri = compute_priors(root, split, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pri.to_csv(tmp)
    tmp.replace(path)
    return pri


@dataclass
class Stage2Inputs:
    """Everything :func:`prepare_stage2_inputs` resolved (see the module docstring)."""

    root: Path
    is_synth: bool
    kind: str  # "stage1" | "raw"
    note: str  # why this kind
    store: FeatureStore  # where the vision / audio streams are read
    streams: dict  # {"vision": (modality, key), "audio": (modality, key)}
    raw_store: FeatureStore  # raw backbone features and priors of this root
    raw_streams: dict  # the raw (modality, backbone) pairs (inputs of the aligners when kind == "stage1")
    text_pair: tuple | None  # ("text", backbone) in raw_store, or None
    sets: dict  # split -> Stage2Data
    standardizer: Standardizer | None
    stage1: Stage1Outputs | None
    labels: dict  # split -> labels DataFrame (train, valid)
    with_raw: dict | None = None  # stage-1 inputs "aligned+raw": the raw pairs concatenated to the aligned steps
    # {"<modality>/<split>": {"failed": {id: {"kind", "message"}}, "unreadable_frames": {id: [...]}}} of the raw
    # features read here (this run's extraction, else the store's _meta.json); empty when nothing failed
    extraction_failures: dict = field(default_factory=dict)

    def dims(self) -> dict:
        return self.sets["train"].dims()

    def provenance(self) -> dict:
        """What these inputs were made from, for a run's ``metrics.json`` and for the caches that consume it:
        the data root and its fingerprint, the feature stores, the streams and the stage-1 run (or why none)."""
        return {"data": root_fingerprint(self.root), "kind": self.kind, "note": self.note,
                "stage1_outputs": str(self.stage1.path) if self.stage1 else None,
                "store": str(self.store.root), "raw_store": str(self.raw_store.root),
                "streams": {m: list(v) for m, v in self.streams.items()},
                "raw_streams": {m: list(v) for m, v in self.raw_streams.items()},
                "with_raw": bool(self.with_raw), "text": list(self.text_pair) if self.text_pair else None,
                "standardized": self.standardizer is not None}


def with_detected_faces(priors: pd.DataFrame, vision: Mapping) -> pd.DataFrame:
    r"""Add ``face_detected_share`` (the share of a clip's vision steps that are not masked, e.g. frames in
    which the face mesh found a face) and fold it into the usable-face prior:
    :math:`\text{face\_quality} \leftarrow \text{face\_quality} \times \text{face\_detected\_share}`.
    Backbones that mask no step give a share of 1 (no change); a clip without vision steps keeps its prior
    (NaN when the modality is missing). A lazy store (packed, full scale) is not read for this: share NaN,
    prior unchanged."""
    out = priors.copy()
    share = pd.Series(np.nan, index=out.index, dtype=float)
    if isinstance(vision, dict):
        for cid, a in vision.items():
            a = np.asarray(a)
            if cid in share.index and a.ndim == 2 and len(a):
                share[cid] = float(valid_steps(a).mean())
    out["face_detected_share"] = share
    if "face_quality" in out:
        out["face_quality"] = out["face_quality"] * share.fillna(1.0)
    return out


def _with_raw(aligned: dict, raw: dict, ids, name: str) -> dict:
    """Per clip, the raw backbone steps and the aligned steps side by side, ``[x_t ; g(x_t)]`` (the export keeps
    every step, so both have the same T; masked steps stay masked: :func:`~emi_lib.features.store.concat_steps`)."""
    from emi_lib.features.store import concat_steps

    out = {}
    for cid in ids:
        a, r = aligned.get(cid), raw.get(cid)
        if a is None or r is None or not len(a) or not len(r):
            continue  # the clip lacks the modality
        out[cid] = concat_steps(name, [r, a])
    return out


def _media(raw_streams: dict) -> dict:
    """{stream: DataRoot modality} the raw features were made from (what a clip may legitimately lack)."""
    return {m: stream_media(m, b) for m, (_, b) in raw_streams.items() if b}


def _declare_unalignable(d: Stage2Data, raw_store: FeatureStore, raw_pairs: dict, split: str) -> None:
    """Stage-1 streams: a clip whose raw features exist but have no valid step (e.g. no face found in any frame)
    has nothing to align, so no aligned steps; like a clip without media it may lack the stream (added to
    ``d.absent``). A clip lacking aligned steps although its raw features have valid ones is not: it stays
    counted by :meth:`~emi_lib.train.data.Stage2Data.unexplained_missing`."""
    for m, (mod, key) in raw_pairs.items():
        lacking = d.unexplained_missing(m)
        stored = raw_store.done_ids(mod, key, split) if lacking else set()
        for cid in lacking:
            if cid in stored and not valid_steps(raw_store.read(mod, key, split, cid)).any():
                d.absent[m].add(cid)


def build_split(root, store, streams, split, *, raw_store=None, labels=None, ids=None, with_raw=None,
                text_pair=None, priors: bool = True, packed=None, media=None, raw_pairs=None) -> Stage2Data:
    """One split's :class:`~emi_lib.train.data.Stage2Data` as every stage-2 caller builds it (notebooks 02-04
    through :func:`prepare_stage2_inputs`, ``python -m emi_lib.train.launch stage2`` and ``predict``): the
    ``streams`` {"vision"/"audio": (modality, key)} read from ``store``; with ``with_raw`` {m: (modality,
    backbone)} each step joined to its raw backbone step from ``raw_store`` (stage-1 inputs "aligned+raw");
    the media-only priors cached in ``raw_store`` (:func:`load_priors`; ``priors=False``: none) with the
    detected-face share folded in (:func:`with_detected_faces`); the text embedding when ``text_pair``.
    ``packed``: read the streams lazily from ``packed/<modality>/<key>/<split>`` instead (no ``with_raw``).
    ``media`` {stream: DataRoot modality} (:func:`_media`): the clips whose media are absent on disk may lack the
    stream (``absent``; training refuses more unexplained gaps than ``Stage2Config.max_missing_share``);
    ``raw_pairs``: the raw inputs of stage-1 streams (:func:`_declare_unalignable`)."""
    raw_store = store if raw_store is None else raw_store
    pri = load_priors(root, raw_store, split) if priors else None
    absent = media_absent(root, split, ids, media)
    if packed is not None:
        if with_raw:
            raise ValueError("packed stores hold one stream each: stage-1 inputs 'aligned+raw' need per-clip stores")
        d = Stage2Data.from_packed(*(Path(packed) / streams[m][0] / streams[m][1] / split for m in ("vision", "audio")),
                                   labels=labels, priors=pri, ids=ids, absent=absent)
    else:
        d = Stage2Data.from_store(store, split, vision=streams["vision"], audio=streams["audio"], labels=labels,
                                  priors=pri, ids=ids, absent=absent)
    for m, pair in (with_raw or {}).items():  # stage-1 inputs "aligned+raw"
        setattr(d, m, _with_raw(getattr(d, m), raw_store.load_split(*pair, split), d.ids, f"{m} raw+aligned"))
    if raw_pairs:
        _declare_unalignable(d, raw_store, raw_pairs, split)
    if d.priors is not None:
        d.priors = with_detected_faces(d.priors, d.vision)
    if text_pair:
        d.text = {k: v.reshape(-1) for k, v in raw_store.load_split(*text_pair, split).items()}
    return d


def _failures(store: FeatureStore, pairs, splits, reports=None) -> dict:
    """Extraction failures of the raw ``(modality, backbone)`` pairs over ``splits``: from this run's reports
    when given, else as recorded in the store (``_meta.json``, e.g. written by notebook 01)."""
    out = dict(reports.failures) if reports is not None else {}
    for mod, backbone in pairs:
        if backbone and not any(k.startswith(f"{mod}/") for k in (reports or {})):
            out |= recorded_failures(store, mod, backbone, splits)
    return out


def _warn_failures(failures: dict, what: str) -> None:
    """One warning naming the failed clips (and those with masked unreadable frames) of every split."""
    if failures:
        lines = [failure_line(k, v) for k, v in failures.items()]
        warnings.warn(f"{what}: feature extraction failures (failed clips have no features: training refuses "
                      "a split where they exceed Stage2Config.max_missing_share): " + " | ".join(lines), stacklevel=3)


def prepare_stage2_inputs(root: str | os.PathLike, profile: str, *, stage1: str = "auto",
                          vision_backbone: str = DEFAULT_BACKBONES["vision"],
                          audio_backbone: str = DEFAULT_BACKBONES["audio"],
                          text_backbone: str | None = DEFAULT_BACKBONES["text"], use_text: bool = False,
                          standardize: bool = True, stage1_inputs: str = "aligned+raw",
                          store_dir: str | os.PathLike | None = None, verbose: bool = True) -> Stage2Inputs:
    """Stage-2 inputs of every available split of ``root`` (module docstring). Raw features are extracted
    into the profile's shared feature store when missing (resumable); ``store_dir`` overrides it."""
    root = Path(root)
    data = DataRoot(root)
    s1, note = find_stage1(stage1, profile, root)
    raw_store = FeatureStore(store_dir).bind(root) if store_dir else derived_store(profile, root)
    splits = [s for s in SPLITS if s in data.available_splits()]
    text_pair = ("text", text_backbone) if use_text else None
    if s1 is None:
        reports = extract_all(root, raw_store, vision_backbone, audio_backbone, text_backbone if use_text else None,
                              splits=splits, progress=False, verbose=verbose)
        store, streams, kind = raw_store, {"vision": ("vision", vision_backbone), "audio": ("audio", audio_backbone)}, "raw"
        raw_streams = dict(streams)
        failures = reports.failures
    else:
        store, streams, kind, raw_streams = s1.store, s1.streams, "stage1", s1.raw
        reports = None
        if use_text:
            reports = extract_all(root, raw_store, None, None, text_backbone, splits=splits, progress=False,
                                  verbose=verbose)
        failures = _failures(raw_store, s1.raw.values(), splits, reports)  # notebook 01's extraction of the raw inputs
    _warn_failures(failures, f"stage-2 inputs of {root}")
    labels = {s: data.split(s) for s in ("train", "valid") if s in splits}
    if stage1_inputs not in STAGE1_INPUTS:
        raise ValueError(f"stage1_inputs must be one of {STAGE1_INPUTS}, got {stage1_inputs!r}")
    with_raw = raw_streams if kind == "stage1" and stage1_inputs == "aligned+raw" else None
    media = _media({**raw_streams, **({"text": text_pair} if text_pair else {})})
    unalignable = raw_streams if kind == "stage1" else None
    sets = {s: build_split(root, store, streams, s, raw_store=raw_store, labels=labels.get(s), ids=data.ids(s),
                           with_raw=with_raw, text_pair=text_pair, media=media, raw_pairs=unalignable) for s in splits}
    std = Standardizer.fit(sets["train"]) if standardize else None
    if std is not None:
        for d in sets.values():
            std.apply(d)
    return Stage2Inputs(root, (root / "synthmimic" / "manifest.json").exists(), kind, note, store, streams, raw_store,
                        raw_streams, text_pair, sets, std, s1, labels, with_raw, failures)


def inputs_for_root(new_root: str | os.PathLike, like: Stage2Inputs, profile: str, split: str = "test",
                    store_dir: str | os.PathLike | None = None, verbose: bool = False) -> Stage2Data:
    """The same kind of stage-2 inputs as ``like`` for one split of another root: raw features extracted
    with ``like``'s backbones, passed through ``like``'s stage-1 aligners when it used them (written to
    the new root's store under the same keys), priors from the new media, ``like``'s z-scoring."""
    import torch

    from emi_lib.train.stage1 import export_aligned, load_aligner, write_aligned

    new_root = Path(new_root)
    data = DataRoot(new_root)
    raw_store = FeatureStore(store_dir).bind(new_root) if store_dir else derived_store(profile, new_root)
    # the store names of like's raw streams with their extraction settings (e.g. openclip-tiny[max=8]), so that the
    # new root's features are extracted the same way and stored under the same names
    names = {m: parse_store_backbone(m, key) for m, (_, key) in like.raw_streams.items()}
    if like.text_pair:
        names["text"] = parse_store_backbone("text", like.text_pair[1])
    # clips whose media are byte-identical in the original root (e.g. the faces of a test set regenerated with
    # only audio noise) get its stored features instead of a second extraction (emi_lib.features.reuse)
    reports = ExtractionReports()
    for m, (backbone, kwargs) in names.items():
        reports |= extract_all(new_root, raw_store, **{f"{m}_backbone": backbone}, splits=[split], progress=False,
                               verbose=verbose, reuse_from=(like.root, like.raw_store), **kwargs)
    _warn_failures(reports.failures, f"inputs of {new_root} ({split})")
    streams = like.streams
    if like.kind == "stage1":
        for m, (mod, key) in like.streams.items():
            ckpt = like.stage1.checkpoints.get(m)
            if ckpt is None:
                raise FileNotFoundError(f"{like.stage1.path} names no {m} aligner checkpoint")
            # the export records the aligner it came from: another run's (or a retrained) aligner re-exports
            source = {"stage1_outputs": str(like.stage1.path), "split": split,
                      "checkpoint_sha1": hashlib.sha1(Path(ckpt).read_bytes()).hexdigest()}
            record = raw_store.folder(mod, key, split) / "_source.json"
            # the store may be shared (a cache folder): one re-export of this folder at a time, the second finds it done
            with split_lock(raw_store.folder(mod, key, split)), \
                    split_lock(raw_store.folder(f"{m}_aligned_clip", key, split)):
                if (record.exists() and json.loads(record.read_text()) == source
                        and raw_store.done_ids(mod, key, split) >= set(data.ids(split))):
                    continue  # already exported for this root by this aligner
                aligner, acfg = load_aligner(ckpt)
                got = raw_store.load_split(*like.raw_streams[m], split)
                # every clip, as notebook 01 exports it: a clip without frames -> (0, D) -> empty aligned sequence
                feats = {cid: got.get(cid, np.zeros((0, acfg.in_dim), np.float32)) for cid in data.ids(split)}
                with torch.no_grad():
                    write_aligned(raw_store, export_aligned(aligner, feats), mod, key, split,
                                  clip_modality=f"{m}_aligned_clip")
                atomic_write_text(json.dumps(source, indent=1), record)
    d = build_split(new_root, raw_store, streams, split, ids=data.ids(split), with_raw=like.with_raw,
                    text_pair=like.text_pair,
                    media=_media({**like.raw_streams, **({"text": like.text_pair} if like.text_pair else {})}),
                    raw_pairs=like.raw_streams if like.kind == "stage1" else None)
    if like.standardizer is not None:
        like.standardizer.apply(d)
    return d
