"""Worker processes of the experiments (notebook 03's training runs and sweep levels) that start fast.

A spawned worker imports torch and the library again before its first task: about 4-5 s of CPU each, more than a
smoke-profile run takes to train. The pools here use ``forkserver`` with :data:`PRELOAD`: the fork server imports
those modules once (it runs no torch op, so it holds no thread pool), and every worker is a fork of it, with the
modules already in memory. The fork server is one per process: the first pool that starts it fixes its preload
list (a SynthMimic generation earlier in the same process starts it with the renderer only; workers then import
what they need, as a spawned worker would). Platforms without ``forkserver`` use ``spawn``.
"""

from __future__ import annotations

import multiprocessing as mp

#: imported once by the fork server: what a training run (:mod:`emi_lib.experiments.ablation`) and a sweep level
#: (:func:`emi_lib.train.inputs.inputs_for_root`, feature extraction) need
PRELOAD = ("torch", "emi_lib.experiments.ablation", "emi_lib.experiments.robustness", "emi_lib.train.inputs",
           "emi_lib.features.extract")


def worker_context():
    """The multiprocessing context of the experiments' process pools (module docstring)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


__all__ = ["PRELOAD", "worker_context"]
