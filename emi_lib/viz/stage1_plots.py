"""Figures of notebook 01 (stage-1 contrastive alignment). Each function returns the figure.

``histories`` arguments take one history DataFrame (from ``emi_lib.train.stage1.train_aligner``)
or ``{name: history}`` (e.g. ``{"vision": hv, "audio": ha}``) to overlay the modalities.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.decomposition import PCA

from emi_lib.constants import EMOTIONS
from emi_lib.data.labels import dominant_emotion


def _as_dict(histories) -> dict[str, pd.DataFrame]:
    return {"": histories} if isinstance(histories, pd.DataFrame) else dict(histories)


def plot_stage1_losses(histories):
    """Train (solid) and validation (dashed) InfoNCE per epoch; epoch 0 is before training.

    The log(batch size) line is the loss of an untrained model that ranks every text equally."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, h) in enumerate(_as_dict(histories).items()):
        color = f"C{i}"
        label = f"{name} " if name else ""
        ax.plot(h.index, h["train_loss"], "-o", ms=3, color=color, label=f"{label}train")
        if "val_loss" in h:
            ax.plot(h.index, h["val_loss"], "--", color=color, label=f"{label}val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("symmetric InfoNCE")
    ax.set_title("Stage-1 contrastive loss")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_temperature(histories):
    """Learned temperature 1/exp(logit_scale) (left) and the scale exp(logit_scale) (right, clamp at 100)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, h) in enumerate(_as_dict(histories).items()):
        a1.plot(h.index, h["temperature"], "-o", ms=3, color=f"C{i}", label=name or None)
        a2.plot(h.index, h["scale"], "-o", ms=3, color=f"C{i}", label=name or None)
    a1.axhline(0.07, color="grey", ls=":", lw=1, label="init 0.07")
    a1.axhline(0.01, color="red", ls=":", lw=1, label="clamp 0.01")
    a2.axhline(100, color="red", ls=":", lw=1, label="clamp 100")
    a1.set(xlabel="epoch", ylabel="temperature", title="Temperature over training")
    a2.set(xlabel="epoch", ylabel="exp(logit_scale)", title="Logit scale over training")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_retrieval(results: dict[str, dict], ks=(1, 5)):
    """Grouped bars of R@k in both directions per system (``{name: retrieval_recall(...)}``), with chance."""
    rows = []
    for name, r in results.items():
        for k in ks:
            for d in ("clip2text", "text2clip"):
                rows.append({"system": name, "metric": f"{d} R@{k}", "recall": r[f"{d}_R@{k}"]})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(results) + 4), 4))
    sns.barplot(data=df, x="metric", y="recall", hue="system", ax=ax)
    chance = {k: np.mean([r[f"chance_R@{k}"] for r in results.values()]) for k in ks}
    for j, k in enumerate(ks):
        ax.hlines(chance[k], 2 * j - 0.45, 2 * j + 1.45, colors="black", linestyles=":",
                  label="chance" if j == 0 else None)
    ax.set_ylim(0, 1)
    ax.set_title("Stage-1 retrieval on validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_embedding_pca(emb, labels: pd.DataFrame, title: str = "Aligned clip embeddings (PCA)"):
    """2-D PCA of clip embeddings coloured by dominant emotion.

    ``emb``: an (n, E) array whose rows follow ``labels``' rows, or ``{id: (E,)}`` (then ``labels``
    is indexed by the same ids, and only ids in both are drawn). Zero rows (clips without the
    modality) are left out."""
    if isinstance(emb, dict):
        ids = [i for i in labels.index if i in emb]
        x = np.stack([np.asarray(emb[i], dtype=np.float64) for i in ids])
        lab = labels.loc[ids]
    else:
        x = np.asarray(emb, dtype=np.float64)
        lab = labels
    keep = np.linalg.norm(x, axis=1) > 0
    x, lab = x[keep], lab[keep]
    xy = PCA(n_components=2).fit(x)
    pts = xy.transform(x)
    dom = dominant_emotion(lab).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    palette = dict(zip((*EMOTIONS, "none"), sns.color_palette("tab10", len(EMOTIONS) + 1)))
    for emo in (*EMOTIONS, "none"):
        sel = dom == emo
        if sel.any():
            ax.scatter(pts[sel, 0], pts[sel, 1], s=10, alpha=0.7, color=palette[emo], label=f"{emo} ({sel.sum()})")
    ev = xy.explained_variance_ratio_
    ax.set(xlabel=f"PC1 ({100 * ev[0]:.0f}%)", ylabel=f"PC2 ({100 * ev[1]:.0f}%)", title=title)
    ax.legend(fontsize=8, markerscale=2, title="dominant emotion")
    fig.tight_layout()
    return fig
