"""Plots the notebooks show (matplotlib + seaborn). Each returns the figure; saving is the caller's."""

from emi_lib.viz.data_plots import (
    plot_durations,
    plot_face_strip,
    plot_label_correlation,
    plot_label_histograms,
    plot_probe_table,
    plot_wave_and_logmel,
)

__all__ = [
    "plot_durations",
    "plot_face_strip",
    "plot_label_correlation",
    "plot_label_histograms",
    "plot_probe_table",
    "plot_wave_and_logmel",
]
