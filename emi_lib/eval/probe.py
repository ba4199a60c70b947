r"""The ridge check: how much of each emotion simple summary features of each modality carry.

For every feature set (face, voice, text, voice+text, all) a ridge regression

.. math:: \hat y = \mathrm{standardize}(x)\,W + b, \qquad
          W = \arg\min \|Y - XW\|^2 + \alpha_e \|W_e\|^2 \ \text{per emotion } e,

with alpha_e chosen from ``alphas`` by leave-one-out (efficient GCV, ``RidgeCV``), is fitted
on train and scored with the challenge metric (Pearson r per emotion over the whole split, and
their mean) on valid, and on test where hidden labels exist (SynthMimic). For SynthMimic the
``ceiling`` row is the noise ceiling PCC(z, label): no predictor of the latent can beat it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score
from emi_lib.features.summary import all_summary_features, split_labels

#: Feature-set name -> modalities concatenated.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "face": ("face",),
    "voice": ("voice",),
    "text": ("text",),
    "voice+text": ("voice", "text"),
    "all": ("face", "voice", "text"),
}
ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def noise_ceiling_scores(root: str | os.PathLike, split: str) -> dict | None:
    """``challenge_score(z, label)`` of a SynthMimic split (None without ``synthmimic/latents.csv``)."""
    root = Path(root)
    lat_path = root / "synthmimic" / "latents.csv"
    labels = split_labels(root, split)
    if labels is None or not lat_path.exists():
        return None
    lat = pd.read_csv(lat_path)
    lat.index = pd.Index([f"{int(v):05d}" for v in lat["Filename"]], name="Filename")
    return challenge_score(lat.loc[labels.index, list(EMOTIONS)], labels)


def fit_ridge(x_train: np.ndarray, y_train: np.ndarray, alphas=ALPHAS):
    """Standardize + RidgeCV (one alpha per emotion), fitted on train."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas), alpha_per_target=True))
    return model.fit(x_train, y_train)


def ridge_table(root: str | os.PathLike, eval_splits=("valid", "test"), feature_sets: dict | None = None,
                alphas=ALPHAS, features: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Per-emotion Pearson r (and mean) of ridge on summary features, per feature set and split.

    Returns a DataFrame indexed by (split, features) with columns ``EMOTIONS + ("mean",)``;
    each evaluated split gets one row per feature set plus ``ceiling`` (SynthMimic only).
    ``features`` may pass precomputed :func:`all_summary_features` output.
    """
    root = Path(root)
    feature_sets = FEATURE_SETS if feature_sets is None else feature_sets
    labels = {s: split_labels(root, s) for s in ("train", *eval_splits)}
    if labels["train"] is None:
        raise ValueError(f"{root}: the train split has no labels")
    eval_splits = [s for s in eval_splits if labels.get(s) is not None]
    mods = sorted({m for ms in feature_sets.values() for m in ms})
    if features is None:
        features = all_summary_features(root, splits=("train", *eval_splits), modalities=mods, progress=progress)
    scores: dict[tuple[str, str], dict] = {}
    for name, ms in feature_sets.items():
        def x_of(split, ms=ms):
            return pd.concat([features[m][split] for m in ms], axis=1)

        x_tr = x_of("train")
        y_tr = labels["train"].loc[x_tr.index]
        model = fit_ridge(x_tr.to_numpy(np.float64), y_tr.to_numpy(np.float64), alphas)
        for split in eval_splits:
            x = x_of(split)
            pred = pd.DataFrame(model.predict(x.to_numpy(np.float64)), index=x.index, columns=list(EMOTIONS))
            scores[(split, name)] = challenge_score(pred, labels[split].loc[x.index])
    for split in eval_splits:
        ceil = noise_ceiling_scores(root, split)
        if ceil is not None:
            scores[(split, "ceiling")] = ceil
    keys = [(s, n) for s in eval_splits for n in [*feature_sets, "ceiling"] if (s, n) in scores]
    table = pd.DataFrame([{**scores[k]["per_emotion"], "mean": scores[k]["mean"]} for k in keys],
                         columns=[*EMOTIONS, "mean"])
    table.index = pd.MultiIndex.from_tuples(keys, names=["split", "features"])
    return table
