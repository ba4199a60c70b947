r"""Export of a stage-1 run for stage 2: aligned sequences of every split in the feature store and the run's
``stage1_outputs.json`` (schema ``emi.stage1_outputs/v1``), written by one code path for notebook 01 and
``python -m emi_lib.train.launch stage1 --export``.

**What is written.** For each modality m (vision, audio) and split s, :func:`~emi_lib.train.stage1.export_aligned`
runs the trained aligner over **every** clip of s (a clip lacking the modality is an empty ``(0, D)`` input and
becomes an empty ``(0, E)`` sequence and a zero clip embedding, listed under ``missing``), and
:func:`~emi_lib.train.stage1.write_aligned` stores the per-step sequences as ``<m>_aligned`` and the clip
embeddings as ``<m>_aligned_clip``, both under the key :func:`aligned_key`
(``stage1:<backbone>:<text backbone>[<text source>]:seed<seed>:<run tag>``, the run tag a hash of the run
folder, so two runs never share a folder). With out-of-fold exports (:func:`train_oof`, needed when the text is
the label as a prompt: :mod:`emi_lib.train.stage1_folds`) the *training* split is written from the fold
aligners, the other splits from the main aligner; the in-fold training export is returned too (notebook 01's
probe compares both).

**stage1_outputs.json** (read by :func:`emi_lib.train.inputs.find_stage1`, hence by notebooks 02-04 and
``launch stage2 --stage1``): ``schema``, ``made_by``, ``data_root``, ``profile``, ``seed``, ``store_dir``,
``splits``; ``text`` {backbone, store_backbone, source, dim, splits}; per modality in ``modalities``: ``frames`` and
``clips`` {modality, backbone (the store key), dim}, ``raw`` {modality, backbone, dim, frame_rate} (the
aligner's input stream), ``checkpoint``, ``config`` (the :class:`~emi_lib.models.aligner.AlignerConfig`),
``missing`` {split: ids}, ``train_export`` (``in_fold`` | ``out_of_fold``), ``oof_folds``, ``oof_fold_file``;
and ``finetuned`` (notebook 01's fine-tuned image tower, or None).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emi_lib.data.fingerprint import root_fingerprint
from emi_lib.train.checkpoint import atomic_write_text
from emi_lib.train.stage1 import export_aligned, usable_ids, write_aligned

SCHEMA = "emi.stage1_outputs/v1"
OUTPUTS_NAME = "stage1_outputs.json"
FOLDS_NAME = "stage1_train_folds.csv"
MODALITIES = ("vision", "audio")


def aligned_key(backbone: str, text_backbone: str, text_source: str, seed: int, run_dir: str | os.PathLike) -> str:
    """The store key of a run's aligned features (module docstring); the run tag hashes ``str(run_dir)``."""
    run_tag = hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]
    return f"stage1:{backbone}:{text_backbone}[{text_source}]:seed{seed}:{run_tag}"


def every_clip(store, modality: str, backbone: str, split: str, ids, dim: int | None = None) -> dict:
    """``{id: (T, D)}`` for every id of ``ids``, a clip absent from the store as an empty ``(0, D)`` array (what
    :func:`export_aligned` turns into an empty aligned sequence). ``dim`` defaults to the stored clips' D; a split
    with no stored clip and no ``dim`` raises ``ValueError`` naming the store folder."""
    got = store.load_split(modality, backbone, split, sorted(set(ids) & store.done_ids(modality, backbone, split)))
    if dim is None:
        sizes = {a.shape[1] for a in got.values()}
        if len(sizes) != 1:
            raise ValueError(f"{store.folder(modality, backbone, split)}: cannot infer D from the stored clips "
                             f"(found D in {sorted(sizes)})")
        dim = sizes.pop()
    return {cid: got.get(cid, np.zeros((0, dim), np.float32)) for cid in ids}


def train_oof(cfgs: dict, feats: dict, text: dict, train_ids, k: int, seed: int, out_dir: str | os.PathLike,
              train_labels=None, progress: bool = False, log=None) -> tuple[dict, dict, Path]:
    """Out-of-fold exports of the training split for every modality of ``cfgs``, with *one* fold assignment
    (:func:`~emi_lib.train.stage1_folds.assign_folds` of ``train_ids``, ``k``, ``seed``) shared by the modalities so
    a clip's vision and audio features come from aligners that left out the same clips. ``feats[(m, "train")]``
    and ``text`` {id: (D_t,)} are the training inputs. Writes the assignment to ``out_dir/stage1_train_folds.csv``.
    Returns ``({m: OutOfFoldExport}, {id: fold}, fold file)``. Under DDP every rank calls it (the fold aligners
    train with :func:`~emi_lib.train.stage1.train_aligner`); only rank 0 writes the file."""
    import time

    from emi_lib.distributed import context
    from emi_lib.train.stage1_folds import assign_folds, export_aligned_oof

    folds = assign_folds(train_ids, k, seed)
    oof = {}
    for m, cfg in cfgs.items():
        t0 = time.perf_counter()
        oof[m] = export_aligned_oof(cfg, feats[m, "train"], text, fold_of=folds, train_labels=train_labels,
                                    progress=progress)
        if log is not None:
            log(f"{m}: {k} fold aligners in {time.perf_counter() - t0:.1f} s, trained on "
                f"{[len(t) for t in oof[m].trained_on]} clips each (the main aligner: "
                f"{len(usable_ids(feats[m, 'train'], text))})")
    fold_file = Path(out_dir) / FOLDS_NAME
    if context().is_main:
        fold_file.parent.mkdir(parents=True, exist_ok=True)
        next(iter(oof.values())).fold_series().to_csv(fold_file)
    return oof, folds, fold_file


@dataclass
class Stage1Export:
    """What :func:`export_stage1` wrote and computed."""

    path: Path  # the stage1_outputs.json
    info: dict  # its content
    in_fold: dict  # (modality, split) -> AlignedFeatures of the main aligner
    exported: dict  # (modality, split) -> AlignedFeatures written to the store (train out of fold when oof)


def export_stage1(out_dir: str | os.PathLike, store, models: dict, cfgs: dict, checkpoints: dict, feats: dict, *,
                  data_root: str | os.PathLike, profile: str, seed: int, splits, backbones: dict, raw: dict,
                  text: dict, oof: dict | None = None, fold_file: str | os.PathLike | None = None,
                  finetuned: dict | None = None, made_by: str = "notebook 01", data_seed: int | None = None
                  ) -> Stage1Export:
    """Export every split with the trained aligners and write ``out_dir/stage1_outputs.json`` (module docstring).

    ``models``/``cfgs``/``checkpoints``: per modality the aligner, its config and its saved weights path;
    ``feats[(m, s)]``: every clip of split s (:func:`every_clip`); ``backbones[m]``: the name used in the store
    key (:func:`aligned_key`); ``raw[m]``: {"backbone": store key of the aligner's input, "dim", "frame_rate",
    optionally "modality" (default m)};
    ``text``: {"backbone", "store_backbone", "source", "dim", "splits"}; ``oof``: {m: OutOfFoldExport} from
    :func:`train_oof` (its training export replaces the main aligner's) with ``fold_file``; ``finetuned``: the
    entry recorded as is. Call it on one process (rank 0): it writes."""
    out_dir = Path(out_dir)
    oof = oof or {}
    splits = list(splits)
    in_fold, exported, outputs = {}, {}, {}
    for m in models:
        key = aligned_key(backbones[m], text["backbone"], text["source"], seed, out_dir)
        dim = int(cfgs[m].embed_dim)
        miss = {}
        for s in splits:
            in_fold[m, s] = export_aligned(models[m], feats[m, s])  # the main aligner (notebook 01's probe needs train)
            exported[m, s] = oof[m].aligned if s == "train" and m in oof else in_fold[m, s]
            write_aligned(store, exported[m, s], f"{m}_aligned", key, s, clip_modality=f"{m}_aligned_clip")
            miss[s] = exported[m, s].missing
        outputs[m] = {"frames": {"modality": f"{m}_aligned", "backbone": key, "dim": dim},
                      "clips": {"modality": f"{m}_aligned_clip", "backbone": key, "dim": dim},
                      "raw": {"modality": raw[m].get("modality", m), "backbone": raw[m]["backbone"], "dim": int(raw[m]["dim"]),
                              "frame_rate": raw[m].get("frame_rate")},
                      "checkpoint": str(Path(checkpoints[m]).resolve()), "config": cfgs[m].to_dict(), "missing": miss,
                      "train_export": "out_of_fold" if m in oof else "in_fold",
                      "oof_folds": oof[m].k if m in oof else None,
                      "oof_fold_file": str(Path(fold_file).resolve()) if m in oof and fold_file else None}
    info = {"schema": SCHEMA, "made_by": made_by, "data_root": str(Path(data_root).resolve()),
            "data": root_fingerprint(data_root),  # readers refuse another root, or this one regenerated since
            "profile": profile, "seed": seed, "data_seed": data_seed, "store_dir": str(Path(store.root).resolve()), "splits": splits, "text": dict(text),
            "modalities": outputs, "finetuned": finetuned}
    path = atomic_write_text(json.dumps(info, indent=2) + "\n", out_dir / OUTPUTS_NAME)
    return Stage1Export(path, info, in_fold, exported)


__all__ = ["FOLDS_NAME", "OUTPUTS_NAME", "SCHEMA", "Stage1Export", "aligned_key", "every_clip", "export_stage1",
           "train_oof"]
