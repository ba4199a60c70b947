r"""The statistics of notebook 03's ablation, from its run folders: every score and every difference with an
interval that includes test-set sampling, paired tests judged with a multiplicity correction, and the best
variant chosen on validation.

1. :func:`bootstrap_ablation` reads every (variant, seed) run's per-clip predictions
   (:func:`~emi_lib.experiments.ablation.prediction_path`) and runs the two-level seed+clip bootstrap of
   :func:`emi_lib.eval.stats.seed_clip_bootstrap` (equations there): each replicate draws the clips and the seeds
   with replacement, the same draws for every arm, and averages the challenge score over the drawn seeds.
2. :func:`ablation_table`: per variant, the estimate (mean over seeds) and the 95% percentile interval of the
   mean PCC and of each emotion's r, beside the seed-only t interval of the mean (the earlier analysis, which
   ignored the test sampling: zero width for the deterministic ridge) and the validation score.
3. :func:`paired_table`: per arm, its reference's advantage ``reference - arm`` with the paired bootstrap
   interval, the bootstrap p-value, its **Holm**-adjusted value over the family of every comparison of the
   table (:func:`emi_lib.eval.stats.holm`), and the seed-only paired t-test (``scipy.stats.ttest_rel``) for
   reference. The verdict uses the adjusted p (:func:`emi_lib.eval.stats.verdict`).
4. :func:`claim_verdicts`: the paper's claims (:data:`CLAIMS`) from the adjusted verdicts.
5. :func:`best_by_validation`: the variant with the best mean (over seeds) validation score, and its test score
   with its interval. Choosing by the test score would pick the luckiest arm on the very clips it is scored on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS
from emi_lib.eval.metrics import challenge_score
from emi_lib.eval.stats import (
    SCORE_COLUMNS,
    BootstrapScores,
    holm,
    mean_ci,
    paired_comparison,
    seed_clip_bootstrap,
    verdict,
)
from emi_lib.experiments.ablation import VARIANTS, prediction_path

#: bootstrap replicates per profile when N_BOOT is None
N_BOOT = {"smoke": 200, "demo": 2000, "full": 2000}


def _read_predictions(path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rerun notebook 03 (its runs write their per-clip predictions)")
    df = pd.read_csv(path, dtype=str)
    return df.set_index(df.columns[0])[list(EMOTIONS)].astype(float)


def bootstrap_ablation(scores: pd.DataFrame, out_dir, eval_labels: pd.DataFrame, *, n_resamples: int = 2000,
                       level: float = 0.95, random_state: int = 0) -> BootstrapScores:
    """Seed+clip bootstrap of every variant of ``scores`` (run_ablation's long table) from its run folders in
    ``out_dir``; arms are the variant keys, in table order. Every variant must have the same seeds and predict
    the same clips. A prediction file whose score differs from the one its run recorded (a stale file) raises."""
    labels = eval_labels.copy()
    labels.index = [str(i) for i in labels.index]
    keys = list(dict.fromkeys(scores["key"]))
    seeds = sorted(scores["seed"].unique().tolist())
    preds, ids = {}, None
    for key in keys:
        g = scores[scores["key"] == key].set_index("seed")
        if sorted(g.index) != seeds:
            raise ValueError(f"{key!r} ran seeds {sorted(g.index)}, the others {seeds}: the bootstrap pairs seeds")
        arr = []
        for seed in seeds:
            p = _read_predictions(prediction_path(out_dir, key, seed))
            p.index = [str(i) for i in p.index]
            ids = list(p.index) if ids is None else ids
            if set(p.index) != set(ids) or len(p) != len(ids):
                raise ValueError(f"{key} seed {seed} predicts other clips than {keys[0]}")
            p = p.loc[ids]
            got = challenge_score(p, labels.loc[ids])["mean"]
            if abs(got - float(g.loc[seed, "mean"])) > 1e-5:  # float32 predictions of older runs: ~1e-8
                raise ValueError(f"{prediction_path(out_dir, key, seed)} scores {got:.6f}, its run recorded "
                                 f"{float(g.loc[seed, 'mean']):.6f}: a stale prediction file, rerun the variant")
            arr.append(p.to_numpy())
        preds[key] = np.stack(arr)
    return seed_clip_bootstrap(preds, labels.loc[ids, list(EMOTIONS)].to_numpy(), seeds=seeds,
                               n_resamples=n_resamples, level=level, random_state=random_state)


def ablation_table(scores: pd.DataFrame, boot: BootstrapScores) -> pd.DataFrame:
    """One row per variant (its label): ``<col>, <col>_lo, <col>_hi`` (estimate and seed+clip bootstrap
    interval) for ``mean`` and the six emotions, ``mean_seed_lo, mean_seed_hi`` (seed-only t interval of the
    mean, NaN with one seed), ``val_best`` (mean over seeds), ``n`` seeds and ``n_clips``."""
    bt = boot.table()
    rows = {}
    for key, g in scores.groupby("key", sort=False):
        row = {c: bt.loc[key, c] for c in bt.columns}
        seed_ci = mean_ci(g["mean"].to_numpy())
        row |= {"mean_seed_lo": seed_ci["lo"], "mean_seed_hi": seed_ci["hi"],
                "val_best": float(g["val_best"].mean()) if "val_best" in g else np.nan,
                "n": len(g), "n_clips": boot.n_clips}
        rows[VARIANTS[key].label] = row
    cols = [c for col in SCORE_COLUMNS for c in (col, f"{col}_lo", f"{col}_hi")]
    out = pd.DataFrame(rows).T[[*cols, "mean_seed_lo", "mean_seed_hi", "val_best", "n", "n_clips"]]
    return out.infer_objects().rename_axis("variant")


def paired_table(scores: pd.DataFrame, boot: BootstrapScores, reference: str = "full", alpha: float = 0.05
                 ) -> pd.DataFrame:
    """For every variant but the reference: its reference's advantage ``reference - variant`` on the mean PCC.

    Columns: ``variant, reference, claim tested, diff`` (estimate), ``lo, hi`` (paired seed+clip bootstrap
    interval), ``p`` (bootstrap, two-sided, +1-corrected), ``p_holm`` (Holm over every row with a p-value),
    ``p_seed_t`` (seed-only ``ttest_rel``), ``seed_lo, seed_hi`` (its t interval), ``wins`` (seeds the reference
    won), ``n`` (seeds), ``n_clips``, ``verdict`` and ``note`` (why a p-value is missing). The reference is
    ``reference`` (the full model), except for an arm whose :attr:`Variant.reference` names another arm that
    was run (a backbone arm is compared with the raw-input arm: same inputs kind, one backbone changed)."""
    by_key = {k: g.set_index("seed")["mean"].to_dict() for k, g in scores.groupby("key", sort=False)}
    if reference not in by_key:
        raise ValueError(f"no rows of the reference variant {reference!r}")
    rows = {}
    for key, vals in by_key.items():
        if key == reference:
            continue
        ref = VARIANTS[key].reference if VARIANTS[key].reference in by_key else reference
        b = boot.difference(ref, key)
        t = paired_comparison(by_key[ref], vals)
        notes = [n for n in (b["note"], f"seed t-test: {t['note']}" if t["note"] else "") if n]
        rows[key] = {"variant": VARIANTS[key].label, "reference": VARIANTS[ref].label,
                     "claim tested": VARIANTS[key].tests, "diff": b["diff"], "lo": b["lo"], "hi": b["hi"],
                     "p": b["p"], "p_holm": np.nan, "p_seed_t": t["p"], "seed_lo": t["lo"], "seed_hi": t["hi"],
                     "wins": t["wins"], "n": t["n"], "n_clips": boot.n_clips, "verdict": "", "note": "; ".join(notes)}
    df = pd.DataFrame(rows).T.infer_objects().rename_axis("key")
    if len(df):
        adj, _ = holm(df["p"].astype(float), alpha)
        df["p_holm"] = adj
        df["verdict"] = [verdict(pa, lo, hi, alpha) for pa, lo, hi in zip(adj, df["lo"], df["hi"], strict=True)]
    return df


#: claim -> the variants whose paired comparison with the full model tests it
CLAIMS = {
    "stage-1 alignment helps": ["no_stage1"],
    "quality-guided fusion beats fusion without quality guidance": ["equal", "static", "concat"],
    "fusing both modalities beats either alone": ["vision_only", "audio_only"],
    "TCN for vision and gated BiLSTM for audio beat the swapped assignment": ["swapped"],
    "the full model beats a linear baseline": ["ridge"],
    "training with modality dropout and corruption teaches the fusion to compensate": ["no_dropout", "no_corruption"],
    "the pretrained face models beat the random-init and fine-tuned image towers": ["v_openclip", "v_finetuned"],
}


def _diff_text(row) -> str:
    from emi_lib.eval.stats import format_p

    if not np.isfinite(float(row["lo"])):
        return f"{float(row['diff']):+.3f} (no interval)"
    return (f"{float(row['diff']):+.3f} [{float(row['lo']):+.3f}, {float(row['hi']):+.3f}], "
            f"Holm p {format_p(float(row['p_holm']))} ({row['verdict']})")


def _short(label: str) -> str:
    return label.split(" (")[0]


def claim_verdicts(paired: pd.DataFrame) -> pd.DataFrame:
    """One row per claim from the Holm-adjusted verdicts of :func:`paired_table`: "held" when every comparison
    of the claim holds, "contradicted" when one is reversed, "untestable" when one has no p-value, "not shown"
    otherwise ("not run" without its variants)."""
    rows = {}
    for claim, keys in CLAIMS.items():
        got = [k for k in keys if k in paired.index]
        v = [paired.loc[k, "verdict"] for k in got]
        if not got:
            outcome = "not run"
        elif "reversed" in v:
            outcome = "contradicted"
        elif "untestable" in v:
            outcome = "untestable"
        elif all(x == "holds" for x in v):
            outcome = "held"
        else:
            outcome = "not shown"
        detail = "; ".join(f"{_short(paired.loc[k, 'reference'])} − {paired.loc[k, 'variant']}: "
                           f"{_diff_text(paired.loc[k])}" for k in got)
        rows[claim] = {"verdict": outcome, "evidence": detail}
    return pd.DataFrame(rows).T.rename_axis("claim")


def best_by_validation(scores: pd.DataFrame, boot: BootstrapScores) -> dict:
    """The variant with the best validation score (``val_best``, mean over seeds) and its **test** score with
    the seed+clip interval: ``{"key", "variant", "val_best", "test", "test_lo", "test_hi", "test_best"}``
    (``test_best``: the label the test split alone would have picked, for contrast). Variants without a
    validation score are not candidates; with none at all the result is empty."""
    val = scores.groupby("key", sort=False)["val_best"].mean().dropna() if "val_best" in scores else pd.Series()
    if val.empty:
        return {}
    key = str(val.idxmax())
    test = scores.groupby("key", sort=False)["mean"].mean()
    ci = boot.interval(key)
    return {"key": key, "variant": VARIANTS[key].label, "val_best": float(val[key]), "test": ci["mean"],
            "test_lo": ci["lo"], "test_hi": ci["hi"], "test_best": VARIANTS[str(test.idxmax())].label}
