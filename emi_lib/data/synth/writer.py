"""Write a whole SynthMimic root: plan in the main process, render clips in parallel, then CSVs.

``manifest.json`` is written last, so its presence means the root is complete.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emi_lib.constants import EMOTIONS, HEADER, SPLIT_CSV
from emi_lib.data.synth.config import GENERATOR_VERSION, SynthConfig
from emi_lib.data.synth.latent import make_plan, make_subjects, noise_ceiling
from emi_lib.data.synth.render import render_clip, split_base

#: Paths a SynthMimic root consists of (removed before regenerating into the same folder).
GENERATED = ("train_split.csv", "valid_split.csv", "raw", "audio", "face_images", "text", "test_data", "synthmimic")
_MARKER = "synthmimic/GENERATING"


def _prepare(out: Path) -> None:
    """Refuse to write over a data root that SynthMimic did not make; clear one that it did."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / "synthmimic" / "manifest.json").exists() or (out / _MARKER).exists()
    present = [p for p in GENERATED if (out / p).exists()]
    if present and not ours:
        raise FileExistsError(f"{out} already holds a data root ({', '.join(present)}) that SynthMimic did not "
                              "generate; refusing to overwrite it. Choose an empty folder.")
    for p in present:
        target = out / p
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (out / "synthmimic").mkdir()
    (out / _MARKER).write_text("generation in progress\n")
    for split in ("train", "test"):
        for sub in ("raw", "audio", "face_images", "text"):
            (split_base(out, split) / sub).mkdir(parents=True, exist_ok=True)


def _pool_context():
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["emi_lib.data.synth.render"])
    return ctx


def _json_safe(obj):
    return json.loads(json.dumps(obj))


def generate(out_dir: str | os.PathLike, cfg: SynthConfig, workers: int | None = None,
             progress: bool = True, splits=None) -> dict:
    """Write a complete SynthMimic root (Hume-Vidmimic2 layout) into ``out_dir``; return the manifest.

    ``splits`` (default all three) renders and lists only those splits: e.g. ``("test",)`` makes a
    test set for a robustness sweep. The clips of a split are the same whatever the corruption
    rates (latents, labels, durations, subjects and content come from per-clip seeded streams;
    only the corruption kinds are drawn with the rates), so test sets regenerated at rising
    corruption hold the same clips and labels.

    ``workers`` processes render clips (default ``os.cpu_count()``; 1 = in this process). The
    output does not depend on ``workers``. Workers are started with ``forkserver`` (or ``spawn``),
    so a *script* that calls this with workers > 1 must do so under ``if __name__ == "__main__":``
    (notebooks, ``python -c`` and the CLI need nothing).
    """
    t0 = time.perf_counter()
    cfg = cfg.validate()
    out = Path(out_dir)
    _prepare(out)
    subjects = make_subjects(cfg)
    splits = ("train", "valid", "test") if splits is None else tuple(splits)
    bad = set(splits) - {"train", "valid", "test"}
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of train/valid/test, got {splits}")
    plan = [p for p in make_plan(cfg) if p.split in splits]
    tasks = [(cfg, p, subjects[p.subject], str(out)) for p in plan]
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(tasks)))
    bar = tqdm(total=len(tasks), desc=f"SynthMimic {cfg.profile}", unit="clip", disable=not progress)
    records = []
    if workers == 1:
        for t in tasks:
            records.append(render_clip(t))
            bar.update()
    else:
        with _pool_context().Pool(workers) as pool:
            for rec in pool.imap_unordered(render_clip, tasks, chunksize=max(1, min(8, len(tasks) // (4 * workers)))):
                records.append(rec)
                bar.update()
    bar.close()
    records.sort(key=lambda r: r["Filename"])

    by_split = {s: [p for p in plan if p.split == s] for s in ("train", "valid", "test") if s in splits}
    for split, plans in by_split.items():
        labels = pd.DataFrame([p.label for p in plans], columns=list(EMOTIONS))
        labels.insert(0, "Filename", [p.clip_id for p in plans])
        path = out / SPLIT_CSV[split]
        if split == "test":
            labels[["Filename"]].to_csv(path, index=False)
            labels.to_csv(out / "synthmimic" / "test_labels.csv", index=False)
        else:
            labels.to_csv(path, index=False)
        assert tuple(labels.columns) == HEADER
    lat = pd.DataFrame([p.z for p in plan], columns=list(EMOTIONS)).round(6)
    lat.insert(0, "split", [p.split for p in plan])
    lat.insert(0, "Filename", [p.clip_id for p in plan])
    lat["subject"] = [p.subject for p in plan]
    lat["n_annotators"] = [p.n_annotators for p in plan]
    lat["duration_s"] = [p.duration for p in plan]
    lat.to_csv(out / "synthmimic" / "latents.csv", index=False)
    corr = pd.DataFrame(records)
    corr.to_csv(out / "synthmimic" / "corruptions.csv", index=False, float_format="%.4f", na_rep="NaN")

    ceiling = {}
    for split, plans in by_split.items():
        ceiling[split] = noise_ceiling(np.array([p.z for p in plans]), np.array([p.label for p in plans]))
    manifest = {
        "generator": "SynthMimic",
        "version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "profile": cfg.profile,
        "config": _json_safe(asdict(cfg)),
        "splits": list(by_split),
        "counts": {s: len(p) for s, p in by_split.items()},
        "ids": {s: [int(r.start), int(r.stop - 1)] for s, r in cfg.split_ids().items() if s in by_split},
        "noise_ceiling": ceiling,
        "corruption_counts": {
            "face": {k: int(v) for k, v in corr["face_corruption"].value_counts().sort_index().items()},
            "audio": {k: int(v) for k, v in corr["audio_corruption"].value_counts().sort_index().items()},
        },
        "frames_total": int(corr["n_frames"].sum()),
        "face_images_total": int(corr["n_face_images"].sum()),
        "workers": workers,
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "note": ("Files under synthmimic/ are the generator's ground truth (hidden test labels, latents, "
                 "corruptions): analysis code may read them, training code must not."),
    }
    (out / "synthmimic" / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=True) + "\n")
    (out / _MARKER).unlink()
    return manifest


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of a SynthMimic root, or None if there is none (not generated, or a real root)."""
    path = Path(root) / "synthmimic" / "manifest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def ensure_synthmimic(out_dir: str | os.PathLike, profile: str = "demo", seed: int = 0, *,
                      workers: int | None = None, progress: bool = True, splits=None, **overrides) -> Path:
    """Generate a SynthMimic root into ``out_dir`` unless one with exactly this config (and
    generator version) is already there. ``overrides`` go to :meth:`SynthConfig.from_profile`
    (``occlusion_rate=``, ``noise_rate=`` or any field). Returns ``Path(out_dir)``.
    """
    cfg = SynthConfig.from_profile(profile, seed=seed, **overrides)
    want = ["train", "valid", "test"] if splits is None else [s for s in ("train", "valid", "test") if s in splits]
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one generator at a time per root: two notebooks (or grid runs) asking for the same root at once would
    # otherwise both write into it; the second waits and then finds the first one's root
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        man = read_manifest(out)
        if (man is None or man.get("version") != GENERATOR_VERSION or man.get("config") != _json_safe(asdict(cfg))
                or man.get("splits", ["train", "valid", "test"]) != want):
            generate(out, cfg, workers=workers, progress=progress, splits=want)
    return out
