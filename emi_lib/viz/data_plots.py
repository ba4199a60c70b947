"""Figures of notebook 00: what the labels, media and modalities look like."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from emi_lib.constants import EMOTIONS, SAMPLE_RATE


def plot_label_histograms(labels: pd.DataFrame, bins: int = 21):
    """One histogram per emotion; the spike at 0 and the k/N grid are the point."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 5.5), sharey=True)
    for ax, emo in zip(axes.ravel(), EMOTIONS):
        col = labels[emo]
        ax.hist(col, bins=np.linspace(0, 1, bins + 1), color="steelblue", edgecolor="white")
        ax.set_title(f"{emo}  (zeros {100 * (col == 0).mean():.0f}%)")
        ax.set_xlim(0, 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("clips")
    fig.suptitle("Label distribution per emotion")
    fig.tight_layout()
    return fig


def plot_label_correlation(labels: pd.DataFrame):
    """6x6 Pearson correlation heatmap between the label columns."""
    corr = labels[list(EMOTIONS)].corr()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(corr, annot=True, fmt=".2f", cmap="vlag", vmin=-1, vmax=1, square=True, ax=ax)
    ax.set_title("Correlation between emotion labels")
    fig.tight_layout()
    return fig


def plot_durations(durations: pd.DataFrame):
    """Histograms of audio duration (s) and face-sequence length (frames) per split.

    ``durations`` has columns ``split``, ``audio_s`` and ``n_faces`` (NaN where missing).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    sns.histplot(durations, x="audio_s", hue="split", element="step", ax=axes[0])
    axes[0].set_xlabel("audio duration (s)")
    sns.histplot(durations, x="n_faces", hue="split", element="step", ax=axes[1])
    axes[1].set_xlabel("face crops per clip (frames)")
    fig.tight_layout()
    return fig


def plot_face_strip(frames_by_clip: dict[str, np.ndarray], labels: pd.DataFrame, n_frames: int = 6):
    """A row of evenly spaced face crops per clip, titled with its two strongest labels."""
    clips = list(frames_by_clip)
    fig, axes = plt.subplots(len(clips), n_frames, figsize=(1.6 * n_frames, 1.8 * len(clips)), squeeze=False)
    for r, cid in enumerate(clips):
        frames = frames_by_clip[cid]
        idx = np.linspace(0, len(frames) - 1, n_frames).round().astype(int) if len(frames) else []
        top = labels.loc[cid, list(EMOTIONS)].sort_values(ascending=False)[:2]
        title = ", ".join(f"{k} {v:.2f}" for k, v in top.items())
        for c in range(n_frames):
            ax = axes[r, c]
            ax.axis("off")
            if len(frames):
                ax.imshow(frames[idx[c]])
                ax.set_title(f"t={idx[c]}", fontsize=7)
        axes[r, 0].text(-0.1, 0.5, f"{cid}\n{title}", transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=7)
    fig.tight_layout()
    return fig


def plot_wave_and_logmel(wave: np.ndarray, title: str = "", n_mels: int = 64):
    """Waveform above its log-mel spectrogram (the ``logmel`` backbone's filterbank, 25 ms / 10 ms)."""
    import torch

    from emi_lib.features.backbones import MIN_SAMPLES, LogMel

    fig, axes = plt.subplots(2, 1, figsize=(10, 4.8), sharex=False)
    t = np.arange(len(wave)) / SAMPLE_RATE
    axes[0].plot(t, wave, lw=0.4, color="k")
    axes[0].set_xlim(0, t[-1] if len(t) else 1)
    axes[0].set_ylabel("amplitude")
    axes[0].set_title(title)
    if len(wave) >= MIN_SAMPLES:
        fb = LogMel(n_mels)(torch.from_numpy(np.asarray(wave, np.float32)))
        axes[1].imshow(fb.T.numpy(), origin="lower", aspect="auto", cmap="magma",
                       extent=[0, fb.shape[0] / 100, 0, n_mels])
    axes[1].set_xlabel("time (s)")
    axes[1].set_ylabel("mel bin")
    fig.tight_layout()
    return fig


def plot_probe_table(table: pd.DataFrame, ceiling_row: str = "noise ceiling"):
    """Grouped bars: per-emotion PCC for each feature set, the noise ceiling as black ticks."""
    long = table.drop(index=[ceiling_row], errors="ignore")[list(EMOTIONS)].reset_index(names="features")
    long = long.melt(id_vars="features", var_name="emotion", value_name="PCC")
    fig, ax = plt.subplots(figsize=(12, 4.2))
    sns.barplot(long, x="emotion", y="PCC", hue="features", ax=ax)
    if ceiling_row in table.index:
        for i, emo in enumerate(EMOTIONS):
            ax.hlines(table.loc[ceiling_row, emo], i - 0.45, i + 0.45, color="k", lw=2,
                      label=ceiling_row if i == 0 else None)
    ax.set_ylim(min(0.0, long["PCC"].min() - 0.05), 1.0)
    ax.legend(ncol=7, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax.set_title("Ridge on per-clip summary features: PCC per emotion")
    fig.tight_layout()
    return fig
