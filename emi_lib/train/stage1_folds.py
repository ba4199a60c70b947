r"""Out-of-fold stage-1 exports of the training split: stacking without the label leak.

**The leak.** With label prompts (``TEXT_SOURCE="label_prompt"``) the text a training clip is aligned to is
*its own label written as text*. The aligner trained on the training split is therefore fitted to the
training labels, and its exported features of the *training* clips (stage 2's training inputs) carry what it
memorised about those labels, while the features of validation and test clips, which it never saw, do not.
Stage 2 would learn on features that look better than they will at test time: the classic stacking leak.

**The cure** (out-of-fold, "OOF", as in stacking). Split the training clips into K folds; for each fold k
train one aligner on the other K-1 folds (same :class:`~emi_lib.models.aligner.AlignerConfig`, same seed,
with :func:`~emi_lib.train.stage1.train_aligner`) and export fold k's clips with it
(:func:`~emi_lib.train.stage1.export_aligned`). Every training clip's features then come from an aligner that
never saw its label, exactly as for a validation or test clip. Validation and test clips keep coming from
the aligner trained on *all* training clips (it has seen the most data; none of theirs).

**K** (``DEFAULT_FOLDS = 5``, ours). Each fold aligner trains on (K-1)/K of the clips: with K = 5 that is
80%, close to the main aligner's 100%, so the out-of-fold features resemble those a full-data aligner gives
an unseen clip; K = 10 (90%) would roughly double the cost again; K = 3 (67%) is the cheaper option when
the time budget is tight (the fold aligners are somewhat weaker than the main one). Training costs up to
(K-1) x the main aligner (K aligners on (K-1)/K of the data), less without per-epoch validation (on random
features of the demo profile's shapes, CPU: 2.8x for K = 5, 1.5x for K = 3). With ``drop_last`` batches a fold
aligner takes ``floor(n (K-1)/K / B)`` steps per epoch, a few fewer than the main one for the same ``epochs``.

**Folds** (:func:`assign_folds`): the sorted ids, permuted by ``numpy.random.default_rng(seed)`` and dealt
round-robin, so fold sizes differ by at most one and the assignment depends only on the set of ids, K and
the seed (not on dictionary order). Every id of the training split is assigned, including clips without
frames (exported as :func:`export_aligned` does: zero embedding, empty sequence) and clips without text
(never trained on by any aligner). Pass the same ``fold_of`` to several modalities to make a clip's vision
and audio features come from aligners that left out the same clips.

*Caveat.* The K fold aligners and the main aligner start from the same initial weights (same seed) and see
mostly the same clips, but each ends in its own embedding space: stage 2 is trained on a mixture of K
slightly different spaces and evaluated on the main aligner's (on planted synthetic data the fold and the main
aligners' embeddings of the same validation clip had a mean cosine of 0.8-0.92, and an orthogonal Procrustes
alignment of the fold spaces changed a ridge probe's validation score by < 0.02, so none is applied). The ridge
probe of notebook 01 measures the net effect (leak removed, spaces mixed) on validation.

**When no OOF is needed.** With transcripts as the text the aligner is not fitted to the labels, so the
plain in-fold export is kept by default (what remains is the ordinary in-sample fit of any learned feature
extractor; a transcript that correlates with the labels carries a weaker form of the same effect, and
:func:`export_aligned_oof` can be used there too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score
from emi_lib.eval.probe import fit_ridge
from emi_lib.models.aligner import AlignerConfig
from emi_lib.train.stage1 import AlignedFeatures, export_aligned, train_aligner, usable_ids

DEFAULT_FOLDS = 5


def assign_folds(ids, k: int = DEFAULT_FOLDS, seed: int = 0) -> dict:
    """``{id: fold in 0..k-1}``: the sorted ids permuted with ``seed`` and dealt round-robin (sizes differ by <= 1)."""
    ids = sorted(set(ids))
    if k < 2:
        raise ValueError(f"out-of-fold export needs k >= 2 folds, got {k}")
    if k > len(ids):
        raise ValueError(f"cannot split {len(ids)} clips into {k} folds")
    perm = np.random.default_rng(seed).permutation(len(ids))
    return {ids[p]: j % k for j, p in enumerate(perm)}


class _Subset(Mapping):
    """A read-only view of ``src`` restricted to ``keep`` (no data is copied or read)."""

    def __init__(self, src, keep):
        keep = set(keep)
        self.src, self.ids = src, [i for i in src if i in keep]
        self._keep = set(self.ids)

    def __getitem__(self, cid):
        if cid not in self._keep:
            raise KeyError(cid)
        return self.src[cid]

    def __iter__(self):
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


class _LazySubset(_Subset):
    """A view of a lazy store (e.g. a ``PackedStore``): lengths come from its index, as ``usable_ids`` expects."""

    def length(self, cid) -> int:
        return self.src.length(cid)


def _subset(src, keep):
    return _LazySubset(src, keep) if hasattr(src, "length") else _Subset(src, keep)


@dataclass
class OutOfFoldExport:
    """What :func:`export_aligned_oof` returns."""

    aligned: AlignedFeatures  # as export_aligned for every training clip, each from the aligner that left it out
    fold_of: dict  # id -> the fold it was held out in (its features come from fold aligner fold_of[id])
    k: int  # number of folds
    seed: int  # the seed of the fold assignment
    trained_on: list  # per fold, the sorted ids the fold aligner trained on (frames and text, other folds)
    histories: list  # per fold, train_aligner's history DataFrame
    models: list = field(default_factory=list)  # the fold aligners (only with keep_models=True)

    def held_out(self, fold: int) -> list:
        """The ids of ``fold`` (exported by that fold's aligner), in the input order."""
        return [i for i, f in self.fold_of.items() if f == fold]

    def fold_series(self) -> pd.Series:
        """``fold_of`` as a Series (index = clip ids), e.g. to save next to the exports."""
        return pd.Series(self.fold_of, name="fold").rename_axis("id")


def export_aligned_oof(cfg: AlignerConfig, train_feats: Mapping, train_text: Mapping, k: int = DEFAULT_FOLDS,
                       seed: int | None = None, fold_of: Mapping | None = None, val_feats: Mapping | None = None,
                       val_text: Mapping | None = None, train_labels: pd.DataFrame | None = None,
                       val_text_keys: Mapping | None = None, progress: bool = True, keep_models: bool = False,
                       **export_kw) -> OutOfFoldExport:
    """Out-of-fold aligned exports of every clip of ``train_feats`` (module docstring).

    For each of the ``k`` folds, :func:`train_aligner` trains an aligner with ``cfg`` on the clips of the other
    folds (``train_feats``/``train_text`` restricted to them; validation on ``val_feats``/``val_text`` when
    given, as for the main aligner: early stopping with ``cfg.patience``, else only the history), and
    :func:`export_aligned` (``export_kw``: ``normalize_frames``, ``max_batch``, ``max_tokens``) exports the held-out
    fold's clips with it. ``fold_of`` (id -> fold 0..k-1, covering every id of ``train_feats``) replaces the
    seeded assignment :func:`assign_folds` ``(train_feats, k, seed)`` (``seed`` defaults to ``cfg.seed``);
    ``k`` is then the number of folds it names. ``train_labels`` is needed when ``cfg.label_aware``.

    Returns an :class:`OutOfFoldExport` whose ``aligned`` has the structure of ``export_aligned(model,
    train_feats)``: every id, in the input order, zeros / (0, E) and listed in ``missing`` for clips without
    frames."""
    seed = cfg.seed if seed is None else int(seed)
    ids = list(train_feats)
    if fold_of is None:
        fold_of = assign_folds(ids, k, seed)
    else:
        lacking = [i for i in ids if i not in fold_of]
        if lacking:
            raise ValueError(f"fold_of lacks {len(lacking)} training ids, e.g. {lacking[:5]}")
        names = sorted({int(fold_of[i]) for i in ids})
        k = len(names)
        if k < 2 or names != list(range(k)):
            raise ValueError(f"fold_of must name folds 0..k-1 with k >= 2, got {names}")
    fold_of = {i: int(fold_of[i]) for i in ids}
    clip_emb, frame_seq, missing = {}, {}, []
    trained_on, histories, models = [], [], []
    for fold in range(k):
        held = [i for i in ids if fold_of[i] == fold]
        rest = [i for i in ids if fold_of[i] != fold]
        fit_feats = _subset(train_feats, rest)
        fit_text = {i: train_text[i] for i in rest if i in train_text}
        used = usable_ids(fit_feats, fit_text)
        if len(used) < 2:
            raise ValueError(f"fold {fold}: only {len(used)} clips with {cfg.modality} features and text outside it")
        model, hist = train_aligner(cfg, fit_feats, fit_text, val_feats, val_text, train_labels=train_labels,
                                    progress=progress, val_text_keys=val_text_keys)
        hist.attrs["fold"] = fold
        ex = export_aligned(model, _subset(train_feats, held), **export_kw)
        clip_emb.update(ex.clip_emb)
        frame_seq.update(ex.frame_seq)
        missing += ex.missing
        trained_on.append(used)
        histories.append(hist)
        if keep_models:
            models.append(model)
    aligned = AlignedFeatures({i: clip_emb[i] for i in ids}, {i: frame_seq[i] for i in ids}, sorted(missing))
    return OutOfFoldExport(aligned, fold_of, k, seed, trained_on, histories, models)


def cv_probe(X, y, folds, alphas=np.logspace(-2, 4, 13)) -> dict:  # noqa: B008
    """Cross-validated ridge probe *within* one set: for each fold, the probe of
    :func:`~emi_lib.eval.probe.fit_ridge` (StandardScaler + RidgeCV, one alpha per emotion) is fitted
    on the other folds and predicts the held-out rows; the challenge score is computed once over all
    held-out predictions. ``folds``: one fold number per row of ``X``.

    On training features this says how well the labels can be read from the features *of training clips*;
    compared with the validation score it exposes features that look better on train than on unseen clips
    (the label leak of in-fold exports)."""
    X = np.asarray(X, dtype=np.float64)
    yv = y[list(EMOTIONS)].to_numpy(dtype=np.float64) if isinstance(y, pd.DataFrame) else np.asarray(y, np.float64)
    folds = np.asarray(folds)
    pred = np.zeros_like(yv)
    for f in np.unique(folds):
        te = folds == f
        pred[te] = fit_ridge(X[~te], yv[~te], alphas).predict(X[te])
    return challenge_score(pred, yv)


__all__ = ["DEFAULT_FOLDS", "OutOfFoldExport", "assign_folds", "cv_probe", "export_aligned_oof"]
