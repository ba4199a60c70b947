r"""Labels: reading a split's true intensities, and their structure (averaged annotator ratings are fractions k/N).

:func:`read_labels` is the one reader of a split's labels: the validated split CSV for train / valid
(:func:`~emi_lib.data.layout.read_split`), SynthMimic's hidden test labels (:func:`read_hidden_labels`,
``synthmimic/test_labels.csv``) for test, or None where a root has none (the real challenge scores test on
its server).

A label that is the mean of N ratings on a 0..1 scale with K steps is a multiple of
1/(N K). :func:`smallest_denominator` recovers, for each value, the smallest q <= ``max_q`` with
``round(v q) / q == v`` (to ``tol``), which exposes how many ratings (times scale steps) were averaged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS, HEADER, clip_stem
from emi_lib.data.errors import DataError
from emi_lib.data.layout import read_split

#: SynthMimic's hidden test labels, relative to the data root.
HIDDEN_LABELS = Path("synthmimic") / "test_labels.csv"


def read_hidden_labels(root: str | os.PathLike) -> pd.DataFrame:
    """SynthMimic's hidden test labels (``synthmimic/test_labels.csv``) indexed by the 5-digit id; a root
    without them raises :class:`DataError` kind ``missing``, a wrong header kind ``header``."""
    path = Path(root) / HIDDEN_LABELS
    if not path.exists():
        raise DataError(path, "hidden test labels are not available (only a SynthMimic root has them; the "
                        "real challenge scores test submissions on its server)", kind="missing")
    df = pd.read_csv(path)
    if tuple(df.columns) != HEADER:
        raise DataError(path, f"wrong header {list(df.columns)}", kind="header")
    df.index = pd.Index([clip_stem(i) for i in df.pop("Filename")], name="Filename")
    return df.astype(np.float64)


def read_labels(root: str | os.PathLike, split: str) -> pd.DataFrame | None:
    """The true intensities of ``split``: a DataFrame indexed by the 5-digit id (index name ``Filename``, file
    order) with the six float64 :data:`EMOTIONS` columns. train / valid: the split CSV
    (:func:`~emi_lib.data.layout.read_split`, validated); test: the hidden labels (:func:`read_hidden_labels`),
    None when the root has none."""
    if split != "test":
        return read_split(root, split)
    if not (Path(root) / HIDDEN_LABELS).exists():
        return None
    return read_hidden_labels(root)


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
