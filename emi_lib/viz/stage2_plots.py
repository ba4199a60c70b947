"""Figures of notebook 02 (stage-2 fusion). Each function returns the figure; saving is the caller's."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from emi_lib.constants import EMOTIONS


def _aligned(pred: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    p, t = pred.copy(), labels.copy()
    p.index, t.index = p.index.map(str), t.index.map(str)
    ids = [i for i in t.index if i in set(p.index)]
    return p.loc[ids, list(EMOTIONS)], t.loc[ids, list(EMOTIONS)]


def plot_pred_vs_true(pred: pd.DataFrame, labels: pd.DataFrame, title: str = "Predicted against true intensity",
                      hue: pd.Series | None = None):
    """Six panels (one per emotion): predicted against true intensity, the identity line and Pearson r
    (over the clips shown) in each panel. ``hue`` (indexed by id, e.g. the corruption type) colours
    the points."""
    p, t = _aligned(pred, labels)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5), sharex=True, sharey=True)
    h = None if hue is None else pd.Series(hue).rename(index=str).reindex(p.index)
    for ax, emo in zip(axes.ravel(), EMOTIONS):
        df = pd.DataFrame({"true": t[emo].to_numpy(), "predicted": p[emo].to_numpy()})
        if h is not None:
            df["group"] = h.to_numpy()
        sns.scatterplot(df, x="true", y="predicted", hue="group" if h is not None else None, s=14, alpha=0.6,
                        ax=ax, legend=ax is axes[0, 0] and h is not None)
        ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
        r = df["true"].corr(df["predicted"]) if len(df) > 1 else np.nan
        ax.set_title(f"{emo}   r = {r:.3f}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _score_frame(scores) -> pd.DataFrame:
    if isinstance(scores, pd.DataFrame):
        df = scores.copy()
    else:
        df = pd.DataFrame.from_dict({n: {**s["per_emotion"], "mean": s["mean"]} for n, s in scores.items()},
                                    orient="index")
    return df[[*EMOTIONS, "mean"]]


def plot_pcc_bars(scores, ceiling: dict | pd.Series | None = None, title: str = "PCC per emotion"):
    """Per-emotion (and mean) PCC bars of several models side by side.

    ``scores``: ``{name: challenge_score(...)}`` or a ``score_table`` (rows = models). ``ceiling``: a
    noise ceiling (``{"per_emotion": ..., "mean": ...}`` or a Series over the emotions + "mean"),
    drawn as a black tick above each group."""
    table = _score_frame(scores)
    long = table.reset_index(names="model").melt(id_vars="model", var_name="emotion", value_name="PCC")
    fig, ax = plt.subplots(figsize=(12, 4.5))
    sns.barplot(long, x="emotion", y="PCC", hue="model", ax=ax)
    if ceiling is not None:
        c = pd.Series({**ceiling["per_emotion"], "mean": ceiling["mean"]}) if isinstance(ceiling, dict) else ceiling
        for i, col in enumerate([*EMOTIONS, "mean"]):
            if col in c and np.isfinite(c[col]):
                ax.hlines(c[col], i - 0.45, i + 0.45, color="k", lw=2, label="noise ceiling" if i == 0 else None)
    lo = np.nanmin(long["PCC"].to_numpy()) if long["PCC"].notna().any() else 0.0
    ax.set_ylim(min(0.0, lo - 0.05), 1.05)
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_weights_vs_severity(weights: pd.DataFrame, corruptions, vision_col: str = "vision",
                             audio_col: str = "audio"):
    """Fusion weights against corruption severity: the face weight against face severity, the audio
    weight against audio severity, and the audio weight against the SNR of noise-corrupted clips;
    points coloured by corruption type (``corruptions``: the table, its CSV or a SynthMimic root)."""
    from emi_lib.eval.corruption import weights_with_corruptions

    df = weights_with_corruptions(weights, corruptions)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [(vision_col, "face_severity", "face_corruption", "face weight vs face severity"),
              (audio_col, "audio_severity", "audio_corruption", "audio weight vs audio severity")]
    for ax, (wcol, x, hue, title) in zip(axes, panels):
        if wcol in df:
            sns.scatterplot(df, x=x, y=wcol, hue=hue, s=18, alpha=0.7, ax=ax)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"{wcol} weight")
        ax.set_title(title)
    ax = axes[2]
    noisy = df[df["audio_corruption"] == "noise"] if "audio_corruption" in df else df.iloc[:0]
    if audio_col in df and "audio_snr_db" in df and len(noisy):
        sns.regplot(noisy, x="audio_snr_db", y=audio_col, ax=ax, scatter_kws={"s": 18}, lowess=False, ci=None)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("SNR (dB) of the added noise")
    ax.set_ylabel(f"{audio_col} weight")
    ax.set_title("audio weight vs SNR (noise-corrupted clips)")
    fig.tight_layout()
    return fig


def plot_training_curves(history: pd.DataFrame, title: str = "Stage-2 training"):
    """Train (and validation) loss, validation mean PCC (best epoch marked) and learning rate per epoch."""
    h = history
    x = h["epoch"] if "epoch" in h else h.index
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(x, h["train_loss"], "-o", ms=3, label="train")
    if "val_loss" in h:
        axes[0].plot(x, h["val_loss"], "--", label="val (whole set)")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(x, h["val_mean_pcc"], "-o", ms=3, color="C2")
    if h["val_mean_pcc"].notna().any():
        best = int(np.nanargmax(h["val_mean_pcc"].to_numpy()))
        axes[1].axvline(np.asarray(x)[best], color="k", ls=":", lw=1, label="best epoch")
        axes[1].legend()
    axes[1].set_ylabel("validation mean PCC")
    axes[2].plot(x, h["lr"], "-", color="C3")
    axes[2].set_ylabel("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
