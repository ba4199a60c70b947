r"""Label structure: averaged annotator ratings are fractions k/N.

A label that is the mean of N ratings on a 0..1 scale with K steps is a multiple of
1/(N K). :func:`smallest_denominator` recovers, for each value, the smallest q <= ``max_q`` with
``round(v q) / q == v`` (to ``tol``), which exposes how many ratings (times scale steps) were averaged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS


def smallest_denominator(values, max_q: int = 60, tol: float = 1e-6) -> np.ndarray:
    """For each value the smallest q in 1..max_q with v*q an integer (within tol); 0 if none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    out = np.zeros(v.shape, dtype=np.int64)
    todo = np.ones(v.shape, dtype=bool)
    for q in range(1, max_q + 1):
        hit = todo & (np.abs(v * q - np.round(v * q)) < tol * q)
        out[hit] = q
        todo &= ~hit
        if not todo.any():
            break
    return out


def label_summary(labels: pd.DataFrame) -> pd.DataFrame:
    """Per emotion: mean, std, share of exact zeros, share of exact ones, most common denominator."""
    rows = {}
    for emo in EMOTIONS:
        col = labels[emo].to_numpy(dtype=np.float64)
        q = smallest_denominator(col)
        nz = q[q > 1]
        rows[emo] = {
            "mean": col.mean(),
            "std": col.std(),
            "share_zero": float((col == 0).mean()),
            "share_one": float((col == 1).mean()),
            "n_distinct": int(np.unique(col).size),
            "typical_denominator": int(np.bincount(nz).argmax()) if nz.size else 1,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def dominant_emotion(labels: pd.DataFrame) -> pd.Series:
    """The emotion with the highest intensity per clip (``"none"`` when all six are zero)."""
    arr = labels[list(EMOTIONS)].to_numpy()
    dom = np.array(EMOTIONS, dtype=object)[arr.argmax(axis=1)]
    dom[arr.max(axis=1) <= 0] = "none"
    return pd.Series(dom, index=labels.index, name="dominant")
