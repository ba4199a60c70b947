"""The options of ``python -m emi_lib.train.launch`` (stage1, stage2, predict), each with its help text; the
behaviour is described in :mod:`emi_lib.train.launch`."""

from __future__ import annotations

import argparse

FUSIONS = ("quality", "equal", "static", "concat", "vision_only", "audio_only")


def _common(profiles) -> argparse.ArgumentParser:
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--root", required=True, help="data root (Hume-Vidmimic2 layout or SynthMimic): split CSVs, labels, "
                   "media for the signal priors")
    c.add_argument("--store", required=True, help="feature store folder filled by python -m emi_lib.features.extract")
    c.add_argument("--out", required=True, help="run folder (written by rank 0)")
    c.add_argument("--profile", choices=profiles, default="demo",
                   help="the presets of emi_lib.train.config: model sizes, epochs, learning rates, batch sizes of "
                        "both stages (smoke: tests; demo; full: real data on GPUs). Default: demo")
    c.add_argument("--epochs", type=int, help="maximum epochs (default: the profile's)")
    c.add_argument("--seed", type=int, default=0, help="seeds model init, dropout and batch order (default 0)")
    c.add_argument("--lr", type=float, help="peak AdamW learning rate (default: the profile's preset)")
    c.add_argument("--batch-size", type=int, help="clips per optimiser step per rank (default: the profile's preset; "
                   "stage 1: the contrastive batch, its negatives are gathered from every rank)")
    c.add_argument("--patience", type=int, help="early stopping after this many epochs without a better validation "
                   "score (default: the preset; stage 1: off)")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: cuda when available; under torchrun "
                   "the GPU LOCAL_RANK)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars: one line per epoch instead, and "
                   "the result as one JSON line at the end")
    return c


def add_arguments(ap: argparse.ArgumentParser, profiles) -> None:
    """Add the stage1 / stage2 / predict sub-commands to ``ap``."""
    sub = ap.add_subparsers(dest="stage", required=True, metavar="STEP",
                            help="stage1 (aligners, --export), stage2 (fusion model) or predict (a submission)")
    common = _common(profiles)
    s2 = sub.add_parser("stage2", parents=[common], help="train the stage-2 fusion model",
                        description="Train the stage-2 fusion model on stored features (raw or a stage-1 export).")
    s2.add_argument("--vision", help="raw vision stream MODALITY/BACKBONE as stored, e.g. vision/openclip-tiny "
                    "(omit with --stage1)")
    s2.add_argument("--audio", help="raw audio stream MODALITY/BACKBONE as stored, e.g. audio/logmel (omit with --stage1)")
    s2.add_argument("--stage1", metavar="RUN", help="a stage-1 run folder written with 'stage1 --export' (or notebook "
                    "01's): read its aligned streams (stage1_outputs.json) instead of --vision/--audio")
    s2.add_argument("--stage1-inputs", choices=("aligned+raw", "aligned"), default="aligned+raw",
                    help="with --stage1: each raw step joined to its aligned projection (default, as notebook 02), "
                         "or the aligned steps alone")
    s2.add_argument("--fusion", default="quality", choices=FUSIONS,
                    help="fusion of the two streams: quality-guided weights (default, the paper's), equal or static "
                         "learned weights, concatenation, or one stream only (ablation baselines)")
    s2.add_argument("--no-priors", action="store_true", help="do not compute or feed the media-only signal priors "
                    "(usable-face share, SNR) to the quality estimators")
    s2.add_argument("--no-standardize", action="store_true", help="keep raw feature values instead of z-scoring every "
                    "dimension with train-split statistics")
    s2.add_argument("--ckpt-every", type=int, help="also checkpoint every this many optimiser steps (default: at "
                    "every epoch end only)")
    s2.add_argument("--fresh", action="store_true", help="start over: do not resume from --out/checkpoint.pt")
    s2.add_argument("--packed", help="read features from packed stores PACKED/<modality>/<backbone>/<split> "
                    "(python -m emi_lib.features.packed build) instead of --store's per-clip files")
    s2.add_argument("--bucket", action="store_true", help="length-bucketed training batches (less padding)")
    s1 = sub.add_parser("stage1", parents=[common], help="train the modality-text aligners (and export them)",
                        description="Train one contrastive modality-text aligner per stream; --export writes the "
                                    "aligned features of every split and stage1_outputs.json for stage 2.")
    s1.add_argument("--vision", help="vision stream MODALITY/BACKBONE as stored, e.g. vision/openclip-tiny")
    s1.add_argument("--audio", help="audio stream MODALITY/BACKBONE as stored, e.g. audio/logmel")
    s1.add_argument("--feats", help="one stream to align instead of --vision/--audio, e.g. vision/openclip-tiny")
    s1.add_argument("--text", required=True, help="text stream MODALITY/BACKBONE as stored, e.g. text/minilm "
                    "(transcripts) or 'text/minilm[label_prompt]' (label prompts: train/valid only)")
    s1.add_argument("--export", action="store_true", help="after training, write the aligned per-step sequences and "
                    "clip embeddings of every split into --store and --out/stage1_outputs.json (needs --vision and "
                    "--audio, and their features for every split)")
    s1.add_argument("--oof-folds", type=int, help="with --export: the train split exported out of fold by K fold "
                    "aligners (default: stage1_folds.DEFAULT_FOLDS with label-prompt text, 0 = in fold with "
                    "transcripts)")
    sp = sub.add_parser("predict", help="predict a split with a stage-2 run folder and write a validated submission",
                        description="Rebuild a split's inputs as the run recorded them (inputs.json, "
                                    "standardizer.npz) and predict it with the run's best weights.")
    sp.add_argument("--run", required=True, help="a run folder written by 'stage2'")
    sp.add_argument("--split", default="test", choices=("test", "valid", "train"),
                    help="split to predict (default test: the challenge submission)")
    sp.add_argument("--out", help="CSV to write (default RUN/submission.csv, RUN/<split>_predictions.csv); its "
                    "provenance and score go to the same name with .json")
    sp.add_argument("--root", help="data root (default: the recorded one; another path is refused)")
    sp.add_argument("--store", help="feature store (default: the recorded one; another path is refused)")
    sp.add_argument("--batch-size", type=int, default=64, help="clips per prediction batch (default 64)")
    sp.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
