r"""The challenge metric: mean Pearson correlation over the six emotions.

For each emotion column e, over the **whole** evaluation set (never per batch)

.. math::

    r_e = \frac{\sum_i (\hat y_{ie} - \bar{\hat y}_e)(y_{ie} - \bar y_e)}
               {\sqrt{\sum_i (\hat y_{ie} - \bar{\hat y}_e)^2}\,\sqrt{\sum_i (y_{ie} - \bar y_e)^2}},
    \qquad \text{score} = \frac{1}{6}\sum_e r_e .

A constant column (in predictions or truth) makes r_e undefined: it is reported as NaN,
the mean becomes NaN and a warning names the column. It is never turned into 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS
from emi_lib.distributed import gather_predictions


class ConstantColumnWarning(UserWarning):
    """Raised (as a warning) when a column is constant and its Pearson r is undefined."""


def _as_matrix(x, name: str) -> tuple[np.ndarray, pd.Index | None]:
    if isinstance(x, pd.DataFrame):
        missing = [e for e in EMOTIONS if e not in x.columns]
        if missing:
            raise ValueError(f"{name}: missing emotion columns {missing}; found {list(x.columns)}")
        return x.loc[:, list(EMOTIONS)].to_numpy(dtype=np.float64), x.index
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(EMOTIONS):
        raise ValueError(f"{name}: expected shape (n, {len(EMOTIONS)}), got {arr.shape}")
    return arr, None


def challenge_score(pred, true) -> dict:
    """Per-emotion Pearson r over the whole set and their mean (the EMI challenge's score).

    ``pred`` and ``true`` are arrays of shape (n, 6) in ``EMOTIONS`` order, or DataFrames with
    the six emotion columns (then rows are aligned on the index, which must hold the same ids).
    Returns ``{"per_emotion": {emotion: r}, "mean": float, "n": n}``.
    """
    p, p_idx = _as_matrix(pred, "pred")
    t, t_idx = _as_matrix(true, "true")
    if p_idx is not None and t_idx is not None:
        if set(p_idx) != set(t_idx) or len(p_idx) != len(t_idx):
            only_p = sorted(set(map(str, p_idx)) - set(map(str, t_idx)))[:5]
            only_t = sorted(set(map(str, t_idx)) - set(map(str, p_idx)))[:5]
            raise ValueError(f"pred and true hold different ids (only in pred: {only_p}, only in true: {only_t})")
        p = pd.DataFrame(p, index=p_idx).loc[t_idx].to_numpy()
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but true has shape {t.shape}")
    if p.shape[0] < 2:
        raise ValueError(f"Pearson r needs at least 2 clips, got {p.shape[0]}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        bad = [e for j, e in enumerate(EMOTIONS) if not (np.isfinite(p[:, j]).all() and np.isfinite(t[:, j]).all())]
        raise ValueError(f"non-finite values (NaN or inf) in columns {bad}: every clip must be scored")
    per = {}
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    for j, emo in enumerate(EMOTIONS):
        den = math.sqrt(float((pc[:, j] ** 2).sum()) * float((tc[:, j] ** 2).sum()))
        if den == 0.0:
            which = "prediction" if float((pc[:, j] ** 2).sum()) == 0.0 else "ground truth"
            warnings.warn(
                f"column {emo!r}: {which} is constant, Pearson r is undefined (NaN); the mean is NaN",
                ConstantColumnWarning,
                stacklevel=2,
            )
            per[emo] = float("nan")
        else:
            per[emo] = float(np.clip((pc[:, j] * tc[:, j]).sum() / den, -1.0, 1.0))
    return {"per_emotion": per, "mean": float(np.mean(list(per.values()))), "n": int(p.shape[0])}


def score_table(scores: dict[str, dict]) -> pd.DataFrame:
    """Rows = systems, columns = the six emotions + ``mean``, from ``{name: challenge_score(...)}``."""
    rows = {name: {**s["per_emotion"], "mean": s["mean"]} for name, s in scores.items()}
    return pd.DataFrame.from_dict(rows, orient="index")[[*EMOTIONS, "mean"]]


def gathered_challenge_score(ids, preds, labels: pd.DataFrame, require_all: bool = True) -> dict:
    """``challenge_score`` of **all ranks' predictions together** (the same dict on every rank).

    ``ids`` / ``preds``: this rank's clips and (n, 6) predictions; ``labels``: the true values of the
    whole split (index = ids, the six EMOTIONS columns). With ``require_all`` every labelled clip must
    have been predicted by some rank. Never average per-rank Pearson r instead (module docstring:
    Pearson is not additive over shards)."""
    expected = [str(i) for i in labels.index] if require_all else None
    pred = gather_predictions(ids, preds, EMOTIONS, expected)
    true = labels.copy()
    true.index = [str(i) for i in true.index]
    return challenge_score(pred, true.loc[pred.index, list(EMOTIONS)])
