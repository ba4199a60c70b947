"""Evaluation on SynthMimic by corruption: clean against corrupted clips, fusion weights, noise ceiling.

``synthmimic/corruptions.csv`` is the generator's ground truth of what it corrupted (columns
``Filename, split, face_corruption (none|occlusion|missing_frames|no_face), face_severity,
audio_corruption (none|noise|clipping|dropout|missing|silent), audio_snr_db, audio_severity``).
It is read **only here**, by evaluation code: no training code may see it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS, clip_key, clip_stem
from emi_lib.eval.metrics import ConstantColumnWarning, challenge_score

CORRUPTIONS_CSV = Path("synthmimic") / "corruptions.csv"
MANIFEST = Path("synthmimic") / "manifest.json"


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.index = [clip_key(i) for i in out.index]
    return out


def load_corruptions(src) -> pd.DataFrame:
    """The corruption table indexed by 5-digit id, from a DataFrame, the CSV, or a data root."""
    if isinstance(src, pd.DataFrame):
        df = src.copy()
    else:
        path = Path(src)
        if path.is_dir():
            path = path / CORRUPTIONS_CSV
        if not path.exists():
            raise FileNotFoundError(f"no corruption table at {path} (only a SynthMimic root has one)")
        df = pd.read_csv(path)
    if "Filename" in df.columns:
        df.index = pd.Index([clip_stem(i) for i in df.pop("Filename")], name="Filename")
    else:
        df.index = pd.Index([clip_key(i) for i in df.index], name="Filename")
    for col in ("face_corruption", "audio_corruption"):
        if col not in df.columns:
            raise ValueError(f"corruption table lacks the column {col!r}")
        df[col] = df[col].fillna("none").astype(str)
    return df


def _score(pred: pd.DataFrame, labels: pd.DataFrame, ids) -> dict:
    ids = list(ids)
    if len(ids) < 2:
        return {"per_emotion": dict.fromkeys(EMOTIONS, np.nan), "mean": np.nan, "n": len(ids)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantColumnWarning)
        return challenge_score(pred.loc[ids], labels.loc[ids])


def corruption_breakdown(pred: pd.DataFrame, labels: pd.DataFrame, corruptions, by_type: bool = True) -> pd.DataFrame:
    """``challenge_score`` per clip group: all, clean (no face and no audio corruption), face-corrupted,
    audio-corrupted and (``by_type``) each corruption type. Rows = groups; columns ``n``, ``mean`` and
    the six emotions. A group of fewer than 2 clips, or with a constant column, scores NaN (undefined,
    never 0). Only clips present in both ``pred`` and ``labels`` count."""
    cor = load_corruptions(corruptions)
    pred, labels = _renamed(pred), _renamed(labels)
    have = set(pred.index)
    ids = [i for i in labels.index if i in have]
    lacking = [i for i in ids if i not in cor.index]
    if lacking:
        raise ValueError(f"{len(lacking)} clip(s) are not in the corruption table, e.g. {lacking[:5]}")
    c = cor.loc[ids]
    face, audio = c["face_corruption"] != "none", c["audio_corruption"] != "none"
    groups = {"all": c.index, "clean": c.index[~face & ~audio], "face corrupted": c.index[face],
              "audio corrupted": c.index[audio]}
    if by_type:
        for col, name in (("face_corruption", "face"), ("audio_corruption", "audio")):
            for kind in sorted(set(c[col]) - {"none"}):
                groups[f"{name}: {kind}"] = c.index[c[col] == kind]
    rows = {}
    for g, gids in groups.items():
        s = _score(pred, labels, gids)
        rows[g] = {"n": len(gids), "mean": s["mean"], **s["per_emotion"]}
    out = pd.DataFrame.from_dict(rows, orient="index")[["n", "mean", *EMOTIONS]]
    out.index.name = "group"
    return out


def weights_by_corruption(weights: pd.DataFrame, corruptions) -> pd.DataFrame:
    """Mean per-clip fusion weight of each modality per corruption type.

    Rows: ``("clean", "none")``, then ``("face", kind)`` and ``("audio", kind)`` for each kind present;
    columns: one per modality of ``weights`` plus ``n``."""
    cor = load_corruptions(corruptions)
    w = _renamed(weights)
    c = cor.reindex(w.index)
    if c["face_corruption"].isna().any():
        missing = list(w.index[c["face_corruption"].isna()][:5])
        raise ValueError(f"clips not in the corruption table, e.g. {missing}")
    rows = []
    clean = (c["face_corruption"] == "none") & (c["audio_corruption"] == "none")
    rows.append(("clean", "none", w[clean.to_numpy()]))
    for col, name in (("face_corruption", "face"), ("audio_corruption", "audio")):
        for kind in sorted(set(c[col]) - {"none"}):
            rows.append((name, kind, w[(c[col] == kind).to_numpy()]))
    out = pd.DataFrame([{**sub.mean().to_dict(), "n": len(sub)} for _, _, sub in rows],
                       index=pd.MultiIndex.from_tuples([(a, b) for a, b, _ in rows], names=["modality", "corruption"]))
    return out[[*w.columns, "n"]]


def weights_with_corruptions(weights: pd.DataFrame, corruptions) -> pd.DataFrame:
    """``weights`` joined with the corruption table (for plots of weight against severity)."""
    return _renamed(weights).join(load_corruptions(corruptions), how="left")


def noise_ceiling(root: str | os.PathLike, split: str = "test") -> dict | None:
    """The noise ceiling PCC(latent z, label) of a SynthMimic split from ``synthmimic/manifest.json``:
    ``{"per_emotion": {...}, "mean": float}``, or None for a root without a manifest (real data).
    A manifest with one ceiling for all splits (no per-split keys) gives that one."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    nc = json.loads(path.read_text()).get("noise_ceiling")
    if not nc:
        return None
    if "mean" in nc:
        return nc
    if split not in nc:
        raise KeyError(f"{path}: no noise ceiling for split {split!r} (has {sorted(nc)})")
    return nc[split]
