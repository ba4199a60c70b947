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
from emi_lib.data.labels import read_labels
from emi_lib.eval.corruption import noise_ceiling
from emi_lib.eval.metrics import challenge_score
from emi_lib.features.summary import all_summary_features

#: Feature-set name -> modalities concatenated.
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "face": ("face",),
    "voice": ("voice",),
    "text": ("text",),
    "voice+text": ("voice", "text"),
    "all": ("face", "voice", "text"),
}
ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def fit_ridge(x_train, y_train, alphas=ALPHAS, alpha_per_target: bool = True):
    """The workbench's one ridge: standardize, then ``RidgeCV`` (alpha by efficient leave-one-out, one alpha per
    emotion unless ``alpha_per_target=False``), fitted on ``(x_train, y_train)``; ``y_train`` an array or a
    DataFrame with the six emotion columns. Every probe and baseline (summary features, clip embeddings,
    pooled sequences, the ablation's linear arm, the cross-validated probe) fits through it."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = y_train[list(EMOTIONS)].to_numpy(np.float64) if isinstance(y_train, pd.DataFrame) else np.asarray(y_train, np.float64)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas), alpha_per_target=alpha_per_target))
    return model.fit(np.asarray(x_train, dtype=np.float64), y)


def ridge_table(root: str | os.PathLike, eval_splits=("valid", "test"), feature_sets: dict | None = None,
                alphas=ALPHAS, features: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Per-emotion Pearson r (and mean) of ridge on summary features, per feature set and split.

    Returns a DataFrame indexed by (split, features) with columns ``EMOTIONS + ("mean",)``;
    each evaluated split gets one row per feature set plus ``ceiling`` (SynthMimic only).
    ``features`` may pass precomputed :func:`all_summary_features` output.
    """
    root = Path(root)
    feature_sets = FEATURE_SETS if feature_sets is None else feature_sets
    labels = {s: read_labels(root, s) for s in ("train", *eval_splits)}
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
    for split in eval_splits:  # the generator's noise ceiling of the split (SynthMimic's manifest), when it has one
        try:
            ceil = noise_ceiling(root, split)
        except KeyError:  # a root generated without this split
            ceil = None
        if ceil is not None:
            scores[(split, "ceiling")] = ceil
    keys = [(s, n) for s in eval_splits for n in [*feature_sets, "ceiling"] if (s, n) in scores]
    table = pd.DataFrame([{**scores[k]["per_emotion"], "mean": scores[k]["mean"]} for k in keys],
                         columns=[*EMOTIONS, "mean"])
    table.index = pd.MultiIndex.from_tuples(keys, names=["split", "features"])
    return table
