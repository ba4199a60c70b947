"""Figures of notebook 03: ablation bars with confidence intervals, per-seed dots, paired differences,
and the robustness sweep (PCC and fusion weights against corruption severity)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS


def _err(table: pd.DataFrame, col: str) -> np.ndarray:
    lo, hi = table[f"{col}_lo"].astype(float), table[f"{col}_hi"].astype(float)
    m = table[col].astype(float)
    return np.nan_to_num(np.vstack([m - lo, hi - m]), nan=0.0)


def plot_ablation_bars(table: pd.DataFrame, scores: pd.DataFrame, ceiling: float | None = None, title: str = ""):
    """Left: mean PCC per variant with its 95% interval (bars; ``table``'s ``<col>_lo/_hi``: the seed+clip
    bootstrap in notebook 03) and every seed (dots). Right: per emotion."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
    names = list(table.index)
    y = np.arange(len(names))
    ax.barh(y, table["mean"].astype(float), xerr=_err(table, "mean"), color="#8fb3d9", ecolor="k", capsize=3)
    for i, n in enumerate(names):
        s = scores.loc[scores["variant"] == n, "mean"]
        ax.plot(s, np.full(len(s), i), "o", color="#1f3b73", ms=4, alpha=0.8)
    if ceiling is not None:
        ax.axvline(ceiling, ls="--", color="gray", lw=1)
        ax.text(ceiling, len(names) - 0.4, " noise ceiling", fontsize=8, color="gray", va="bottom")
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean PCC (bars: mean over seeds, 95% seed+clip bootstrap interval; dots: seeds)")
    width = 0.8 / len(names)
    x = np.arange(len(EMOTIONS))
    for i, n in enumerate(names):
        ax2.bar(x + (i - len(names) / 2 + 0.5) * width, table.loc[n, list(EMOTIONS)].astype(float), width,
                yerr=np.vstack([_err(table.loc[[n]], e)[:, 0] for e in EMOTIONS]).T, capsize=1, label=n,
                error_kw={"lw": 0.6})
    ax2.set_xticks(x, [e.replace(" ", "\n") for e in EMOTIONS], fontsize=8)
    ax2.set_ylabel("PCC (mean over seeds, 95% bootstrap interval)")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_paired(paired: pd.DataFrame, title: str = ""):
    """Dot plot of the reference's paired advantage over each variant with its 95% interval, coloured by verdict."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(paired) + 1.2))
    y = np.arange(len(paired))
    d, lo, hi = (paired[c].astype(float).to_numpy() for c in ("diff", "lo", "hi"))
    colors = ["#2a7f3f" if v == "holds" else "#b23b3b" if v == "reversed" else "#777777" for v in paired["verdict"]]
    err = np.nan_to_num(np.vstack([d - lo, hi - d]))
    for i in range(len(d)):
        ax.errorbar(d[i], y[i], xerr=err[:, i : i + 1], fmt="none", ecolor=colors[i], capsize=3)
    ax.scatter(d, y, c=colors, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, paired["variant"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("reference − variant, mean PCC (paired seed+clip bootstrap, 95%); > 0: reference is better")
    ax.set_title(title or "Paired comparison with the reference (Holm-adjusted; green: reference better, red: worse, grey: not shown)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_sweep(sweep: pd.DataFrame, labels: dict, title: str = ""):
    """Top: mean PCC against severity per variant (mean over seeds, band = min..max seed). Bottom: the
    quality-fusion model's mean weight of the corrupted modality against severity (static: learned)."""
    axes_names = [a for a in ("occlusion", "snr") if a in set(sweep["axis"])]
    fig, axes = plt.subplots(2, len(axes_names), figsize=(6 * len(axes_names), 7), squeeze=False)
    for j, axis in enumerate(axes_names):
        g = sweep[sweep["axis"] == axis]
        ax = axes[0, j]
        for key, gk in g.groupby("key", sort=False):
            agg = gk.groupby("severity")["mean"].agg(["mean", "min", "max"])
            ax.plot(agg.index, agg["mean"], "-o", ms=3, label=labels.get(key, key))
            ax.fill_between(agg.index, agg["min"], agg["max"], alpha=0.12)
        ax.set_title({"occlusion": "face occlusion", "snr": "audio noise"}[axis])
        ax.set_xlabel("occlusion rate" if axis == "occlusion" else "noise severity (20 − SNR dB)/30")
        ax.set_ylabel("test mean PCC")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        col = "w_vision" if axis == "occlusion" else "w_audio"
        for key, gk in g.groupby("key", sort=False):
            if gk[col].notna().any() and key not in ("equal", "concat"):
                agg = gk.groupby("severity")[col].agg(["mean", "min", "max"])
                ax.plot(agg.index, agg["mean"], "-o", ms=3, label=labels.get(key, key))
                ax.fill_between(agg.index, agg["min"], agg["max"], alpha=0.12)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_ylabel(f"mean {col[2:]} weight (clips with both modalities)")
        ax.set_xlabel(axes[0, j].get_xlabel())
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
