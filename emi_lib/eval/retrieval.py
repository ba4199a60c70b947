r"""Evaluation of stage 1: cross-modal retrieval and linear probes (arXiv 2503.10603, stage 1).

**Retrieval.** With cosine similarities :math:`S_{ij} = \hat v_i^\top \hat u_j` between clip i and
text j, and a positives matrix :math:`P` (by default :math:`P = I`: row i matches text i), the
clip-to-text rank of query i counts the non-positive texts scoring at least as high as its best
positive,

.. math::

    r_i = \#\{j : \lnot P_{ij},\ S_{ij} \ge \max_{k: P_{ik}} S_{ik}\},
    \qquad \mathrm{R@}k = \frac1n \sum_i [\, r_i < k \,],

and text-to-clip is the same on :math:`S^\top`. Ties count against the query (pessimistic), so a
degenerate embedding (all equal) scores 0, never 1. Chance level with :math:`P = I` is k/n.

*Caveat.* When the texts are label prompts, many clips share the same or an almost identical
prompt: retrieving a clip's duplicate is a correct answer that :math:`P = I` counts as a miss, so
strict R@k undercounts. Pass ``text_keys`` (one prompt string per row): then :math:`P_{ij} =
[\mathrm{key}_i = \mathrm{key}_j]` and retrieving any text with the same prompt is a hit (chance
then rises too: it is reported as ``chance_keys_R@k``, the mean over queries of the probability that
k texts drawn at random without replacement contain one of its :math:`p_i` positives,
:math:`1 - \prod_{j<k} (n - p_i - j)/(n - j)`).

**Linear probe.** Ridge regression (features standardised on the training set, alpha by
efficient leave-one-out CV over ``alphas``, one alpha per emotion) from clip vectors to the six
labels, scored on the evaluation set with the challenge metric (mean Pearson r over the six).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score, score_table
from emi_lib.eval.probe import fit_ridge
from emi_lib.features.store import valid_steps


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _ranks(sim: np.ndarray, pos: np.ndarray) -> np.ndarray:
    best = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)
    return ((sim >= best) & ~pos).sum(axis=1)


def _chance_with_positives(p: np.ndarray, n: int, k: int) -> float:
    miss = np.ones(len(p))
    for j in range(min(k, n)):
        miss *= np.clip((n - p - j) / (n - j), 0.0, 1.0)
    return float((1.0 - miss).mean())


def retrieval_recall(clip_emb, text_emb, ks: Sequence[int] = (1, 5), text_keys: Sequence[str] | None = None,
                     positives: np.ndarray | None = None) -> dict:
    """R@k clip->text and text->clip for paired rows (row i of ``clip_emb`` matches row i of ``text_emb``).

    ``text_keys`` (n strings) or ``positives`` ((n, n) bool; its diagonal is forced True) widen what
    counts as a hit (module docstring). Returns ``{"clip2text_R@k", "text2clip_R@k", "chance_R@k",
    "n"}`` (+ ``"chance_keys_R@k"`` with keys); values are fractions in [0, 1]."""
    c, t = _normalise(clip_emb), _normalise(text_emb)
    if c.shape[0] != t.shape[0]:
        raise ValueError(f"clip_emb has {c.shape[0]} rows but text_emb has {t.shape[0]}")
    n = c.shape[0]
    if n == 0:
        raise ValueError("retrieval needs at least one pair")
    if text_keys is not None and positives is not None:
        raise ValueError("pass text_keys or positives, not both")
    if text_keys is not None:
        if len(text_keys) != n:
            raise ValueError(f"{len(text_keys)} text_keys for {n} pairs")
        keys = np.asarray(text_keys, dtype=object)
        pos = keys[:, None] == keys[None, :]
    elif positives is not None:
        pos = np.asarray(positives, dtype=bool).copy()
        if pos.shape != (n, n):
            raise ValueError(f"positives must be ({n}, {n}), got {pos.shape}")
    else:
        pos = np.zeros((n, n), dtype=bool)
    np.fill_diagonal(pos, True)
    sim = c @ t.T
    r_c2t, r_t2c = _ranks(sim, pos), _ranks(sim.T, pos.T)
    out: dict = {}
    for k in ks:
        out[f"clip2text_R@{k}"] = float((r_c2t < k).mean())
        out[f"text2clip_R@{k}"] = float((r_t2c < k).mean())
        out[f"chance_R@{k}"] = min(1.0, k / n)
        if text_keys is not None or positives is not None:
            out[f"chance_keys_R@{k}"] = _chance_with_positives(pos.sum(axis=1), n, k)
    out["n"] = n
    return out


def mean_pool(feats: dict, ids, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Time-mean of each clip's (T, D) features over its valid steps: ``(X (n, D), empty (n,) bool)``;
    an empty clip (or one whose every step is masked) gives a zero row and ``empty=True``. ``dim`` is needed only when every listed clip is empty."""
    ids = list(ids)
    arrs = [np.asarray(feats[i], dtype=np.float32) for i in ids]
    dims = {a.shape[-1] for a in arrs if a.size}
    if len(dims) > 1:
        raise ValueError(f"clips have different feature sizes {sorted(dims)}")
    d = dims.pop() if dims else dim
    if d is None:
        raise ValueError("every clip is empty: pass dim")
    x = np.zeros((len(ids), d), dtype=np.float32)
    arrs = [a.reshape(-1, d) if a.size else a.reshape(0, d) for a in arrs]
    arrs = [a[valid_steps(a)] for a in arrs]  # masked steps (NaN rows) do not count
    empty = np.array([len(a) == 0 for a in arrs], dtype=bool)
    for j, a in enumerate(arrs):
        if len(a):
            x[j] = a.mean(axis=0)
    return x, empty


def _labels_array(y) -> np.ndarray:
    if isinstance(y, pd.DataFrame):
        return y[list(EMOTIONS)].to_numpy(dtype=np.float64)
    return np.asarray(y, dtype=np.float64)


def linear_probe(train_X, train_y, eval_X, eval_y, alphas=np.logspace(-2, 4, 13),  # noqa: B008
                 alpha_per_target: bool = True) -> dict:
    """StandardScaler + RidgeCV from clip vectors to the six labels, scored by ``challenge_score``
    on the evaluation set. Returns the score dict plus ``"alphas"`` (the chosen alpha per emotion).
    Rows of ``train_y``/``eval_y`` (arrays or DataFrames with the emotion columns) follow X's rows."""
    ytr, yev = _labels_array(train_y), _labels_array(eval_y)
    pipe = fit_ridge(train_X, ytr, alphas, alpha_per_target)
    pred = pipe.predict(np.asarray(eval_X, dtype=np.float64))
    score = challenge_score(pred, yev)
    score["alphas"] = np.atleast_1d(pipe[-1].alpha_).tolist()
    return score


def probe_table(features: dict, train_y, eval_y, alphas=np.logspace(-2, 4, 13)) -> pd.DataFrame:  # noqa: B008
    """``{name: (train_X, eval_X)}`` -> DataFrame, one row per name: the six emotions' r and ``mean``."""
    scores = {name: linear_probe(tr, train_y, ev, eval_y, alphas) for name, (tr, ev) in features.items()}
    return score_table(scores)
