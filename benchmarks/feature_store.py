"""Feature-store benchmark: one epoch of batches through per-clip pickles vs the packed store.

A benchmark that prints numbers, not a test::

    python benchmarks/feature_store.py --scale 0.02            # quick check
    python benchmarks/feature_store.py --scale 1 --out-json fs.json

In a temporary folder (removed at the end, also on Ctrl-C / SIGTERM) it writes synthetic features
with the full Hume-Vidmimic2 shapes: 12,660 train+valid clips (x ``--scale``), vision 768-d at
30 fps, audio 768-d at 50 Hz (wav2vec2), clip durations log-normal with mean 6.9 s and 95th
percentile 11.5 s (the real audio statistics). Per clip and modality it writes one float32
``.pkl`` (``vit/<id>.pkl``, ``wav2vec2/<id>.pkl``, as the public challenge code stores them), then
packs each folder into a float16 store with :func:`emi_lib.features.packed.build_from_pkl_dir`
(the safe loader). Then, each in a fresh subprocess (so that its peak RSS is its own):

(a) ``pickle``: shuffled batches of 32; per step ``pickle.load`` of every clip's two files, as the
    public code does (plain ``pickle`` is fine here only because we just wrote these files
    ourselves; real downloads go through ``emi_lib.data.safe_load``), padded into float32
    ``(B, T, 768)`` arrays per modality;
(b) ``store``: the packed stores with length-bucketed batches of 32, each clip read with one
    ``preadv`` and padded into the same float32 ``(B, T, 768)`` arrays;
Both (a) and (b) pad into reused float32 batch buffers (the same collation work).
(c) ``sequential``: a plain read of the packed data files in 16 MiB chunks (the bandwidth reference).

Page cache: by default (``--cache cold``) each file of a phase is evicted first
(``fsync`` + ``posix_fadvise(DONTNEED)``, which needs no root and leaves other files alone), and the
resident share of a sample of its files (``mincore``) is printed, so the reads come from disk.
``--cache warm`` runs each phase twice and reports the second run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_CLIPS, DIM, FPS_V, HZ_A = 12_660, 768, 30, 50
MEAN_S, P95_S = 6.9, 11.5


def lognormal_params(mean: float, p95: float) -> tuple[float, float]:
    """(mu, sigma) with exp(mu + sigma^2/2) = mean and exp(mu + 1.6449 sigma) = p95."""
    z, r = 1.6448536, np.log(p95 / mean)
    sigma = z - np.sqrt(z * z - 2 * r)
    return float(np.log(mean) - sigma**2 / 2), float(sigma)


def durations(n: int, seed: int) -> np.ndarray:
    mu, sigma = lognormal_params(MEAN_S, P95_S)
    return np.maximum(np.random.default_rng(seed).lognormal(mu, sigma, n), 0.2)


# ------------------------------------------------------------------------------------ page cache
def _resident_share(paths, sample: int = 200) -> float:
    """Share of the pages of (a sample of) ``paths`` that are in the page cache (``mincore``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    paths = list(paths)
    if len(paths) > sample:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, sample).astype(int)]
    res = tot = 0
    for p in paths:
        size = os.path.getsize(p)
        if not size:
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return float("nan")
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(pages)
            ok = libc.mincore(addr, size, vec) == 0
            libc.munmap(addr, size)
            if not ok:
                return float("nan")
            res += int(np.frombuffer(vec.raw, np.uint8).__and__(1).sum())
            tot += pages
        finally:
            os.close(fd)
    return res / tot if tot else 0.0


def evict(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def phase_files(root: Path, phase: str) -> list[Path]:
    if phase == "pickle":
        return sorted((root / "vit").glob("*.pkl")) + sorted((root / "wav2vec2").glob("*.pkl"))
    return [root / "store_vision" / "data.bin", root / "store_audio" / "data.bin"]


# ---------------------------------------------------------------------------------------- workers
def _pad(arrs, dim, buffers: dict):
    """Pad into a reused float32 buffer, as ``PackedStore.read_batch(buffers=...)`` does."""
    shape = (len(arrs), max([len(a) for a in arrs] + [1]), dim)
    n, buf = int(np.prod(shape)), buffers.get("out")
    if buf is None or buf.size < n:
        buf = buffers["out"] = np.empty(n, np.float32)
    x, mask = buf[:n].reshape(shape), np.zeros(shape[:2], bool)
    for b, a in enumerate(arrs):
        x[b, : len(a)] = a
        x[b, len(a):] = 0
        mask[b, : len(a)] = True
    return x, mask


def worker(root: Path, phase: str, batch_size: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from emi_lib.features.packed import PackedStore
    from emi_lib.train.buckets import bucketed_batches, padding_share, random_batches

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict = {"phase": phase, "rss_before_read_mb": rss0 / 1024}
    t0 = time.perf_counter()
    if phase == "sequential":
        buf, nbytes = bytearray(16 << 20), 0
        for p in phase_files(root, phase):
            with open(p, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    nbytes += n
        out.update(bytes=nbytes, clips=None)
    elif phase == "pickle":
        ids = sorted(p.stem for p in (root / "vit").glob("*.pkl"))
        batches, nbytes, lens = random_batches(len(ids), batch_size, seed, 0), 0, np.zeros((len(ids), 2), int)
        bufs: list[dict] = [{}, {}]
        for b in batches:
            for m, folder in enumerate(("vit", "wav2vec2")):
                arrs = []
                for i in b:
                    path = root / folder / f"{ids[i]}.pkl"
                    with open(path, "rb") as fh:
                        arrs.append(pickle.load(fh))  # ours, just written: see the module docstring
                    nbytes += os.path.getsize(path)
                    lens[i, m] = len(arrs[-1])
                _pad(arrs, DIM, bufs[m])
        out.update(bytes=nbytes, clips=len(ids), padding_share=padding_share(lens, batches))
    else:
        sv, sa = PackedStore(root / "store_vision"), PackedStore(root / "store_audio")
        ids = sv.ids
        lens = np.array([[sv.length(c), sa.length(c)] for c in ids])
        batches = bucketed_batches(lens, batch_size, seed, 0)
        bufs: list[dict] = [{}, {}]
        for k, b in enumerate(batches):
            if k + 1 < len(batches):  # the next batch's reads start while this one is collated
                nxt = [ids[i] for i in batches[k + 1]]
                sv.prefetch(nxt)
                sa.prefetch(nxt)
            bid = [ids[i] for i in b]
            sv.read_batch(bid, buffers=bufs[0])
            sa.read_batch(bid, buffers=bufs[1])
        nbytes = int(lens.sum()) * DIM * 2
        out.update(bytes=nbytes, clips=len(ids), padding_share=padding_share(lens, batches),
                   padding_share_random=padding_share(lens, random_batches(len(ids), batch_size, seed, 0)))
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_phase(root: Path, phase: str, args) -> dict:
    files = phase_files(root, phase)
    runs = 2 if args.cache == "warm" else 1
    for _ in range(runs):
        if args.cache == "cold":
            evict(files)
        resident = _resident_share(files)
        cmd = [sys.executable, __file__, "--worker", phase, "--root", str(root), "--batch-size",
               str(args.batch_size), "--seed", str(args.seed)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    res["resident_share_before"] = resident
    res["mb_per_s"] = res["bytes"] / 1e6 / res["seconds"]
    if res["clips"]:
        res["clips_per_s"] = res["clips"] / res["seconds"]
    return res


# ------------------------------------------------------------------------------------------ build
def write_pickles(root: Path, ids, lengths, folder: str, seed: int) -> None:
    """One float32 (T, 768) pickle per clip; values drawn from a 64 MB random pool (fast)."""
    pool = np.random.default_rng(seed).standard_normal(16 << 20, dtype=np.float32)
    rng = np.random.default_rng(seed + 1)
    d = root / folder
    d.mkdir()
    for cid, t in zip(ids, lengths):
        off = int(rng.integers(0, len(pool) - t * DIM + 1))
        with open(d / f"{cid}.pkl", "wb") as fh:
            pickle.dump(pool[off: off + t * DIM].reshape(t, DIM), fh, protocol=pickle.HIGHEST_PROTOCOL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 12,660 clips")
    ap.add_argument("--out-json", help="write the numbers here")
    ap.add_argument("--tmp", default=None, help="parent folder of the temporary folder (default: system tmp)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", choices=["cold", "warm"], default="cold")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each read phase (interleaved); medians reported")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.root), args.worker, args.batch_size, args.seed)))
        return 0

    from emi_lib.features.packed import build_from_pkl_dir

    n = max(2, round(N_CLIPS * args.scale))
    dur = durations(n, args.seed)
    lv, la = np.maximum(1, np.round(dur * FPS_V)).astype(int), np.maximum(1, np.round(dur * HZ_A)).astype(int)
    f16 = int(lv.sum() + la.sum()) * DIM * 2
    tmp_parent = args.tmp or tempfile.gettempdir()
    free = shutil.disk_usage(tmp_parent).free
    print(f"scale {args.scale}: {n} clips; duration mean {dur.mean():.2f} s, p95 {np.percentile(dur, 95):.2f} s, "
          f"max {dur.max():.1f} s (target mean {MEAN_S}, p95 {P95_S}); vision {lv.sum():,} frames, "
          f"audio {la.sum():,} steps; float16 store {f16 / 1e9:.2f} GB, float32 pickles ~{2 * f16 / 1e9:.2f} GB; "
          f"free in {tmp_parent}: {free / 1e9:.1f} GB", flush=True)
    if 3 * f16 + (2 << 30) > free:
        print("not enough free disk for this scale: use a smaller --scale")
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    root = Path(tempfile.mkdtemp(prefix="emi_feature_store_bench_", dir=tmp_parent))
    t_all = time.perf_counter()
    try:
        ids = [f"{i:05d}" for i in range(n)]
        t = time.perf_counter()
        write_pickles(root, ids, lv, "vit", args.seed)
        write_pickles(root, ids, la, "wav2vec2", args.seed + 7)
        os.sync()
        t_pkl = time.perf_counter() - t
        t = time.perf_counter()
        build_from_pkl_dir(root / "vit", root / "store_vision", modality="vision")
        build_from_pkl_dir(root / "wav2vec2", root / "store_audio", modality="audio")
        t_build = time.perf_counter() - t
        print(f"wrote pickles in {t_pkl:.1f} s; built the packed stores (safe loader) in {t_build:.1f} s", flush=True)
        load0 = os.getloadavg()
        runs = [(p, run_phase(root, p, args)) for _ in range(args.repeat) for p in ("sequential", "store", "pickle")]
        load1 = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res = {}
    for p in ("sequential", "store", "pickle"):  # the median run (by seconds) of each phase
        rs = sorted((r for q, r in runs if q == p), key=lambda r: r["seconds"])
        res[p] = rs[(len(rs) - 1) // 2]
    seq, st, pk = res["sequential"], res["store"], res["pickle"]
    summary = {"scale": args.scale, "clips": n, "cache": args.cache, "batch_size": args.batch_size,
               "duration_mean_s": float(dur.mean()), "duration_p95_s": float(np.percentile(dur, 95)),
               "store_gb": f16 / 1e9, "pickle_write_s": t_pkl, "store_build_s": t_build, "median_runs": res,
               "runs": runs, "loadavg_1min_before_after": [load0[0], load1[0]],
               "ratio_store_over_pickle_clips_per_s": st["clips_per_s"] / pk["clips_per_s"],
               "store_share_of_sequential_mb_per_s": st["mb_per_s"] / seq["mb_per_s"],
               "wall_s": time.perf_counter() - t_all}
    print(f"\n{'path':<15}{'seconds':>9}{'clips/s':>10}{'MB/s':>9}{'GB read':>9}{'peak RSS MB':>13}"
          f"{'RSS pre-read':>14}{'cached before':>15}")
    for k, (name, r) in enumerate(runs):
        name = f"{name} #{k // 3 + 1}"
        cps = f"{r['clips_per_s']:.0f}" if r.get("clips") else "-"
        print(f"{name:<15}{r['seconds']:>9.2f}{cps:>10}{r['mb_per_s']:>9.0f}{r['bytes'] / 1e9:>9.2f}"
              f"{r['peak_rss_mb']:>13.0f}{r['rss_before_read_mb']:>14.0f}{r['resident_share_before']:>14.0%}")
    print(f"\nmedian run (by seconds) of each phase over {args.repeat} interleaved run(s):")
    print(f"store / pickle (clips/s): {summary['ratio_store_over_pickle_clips_per_s']:.1f}x   (target >= 10x)")
    print(f"store MB/s / sequential MB/s: {summary['store_share_of_sequential_mb_per_s']:.0%}   (target >= 50%)")
    print(f"padding share: random batches {st['padding_share_random']:.1%} (pickle path measured "
          f"{pk['padding_share']:.1%}), length-bucketed {st['padding_share']:.1%}")
    print(f"peak RSS of the store path: {st['peak_rss_mb']:.0f} MB (target < 2048 MB)")
    print(f"page cache: {args.cache} ("
          + ("each phase's files evicted with fsync + posix_fadvise(DONTNEED) first; 'cached before' is the "
             "resident share of a sample of them (mincore)" if args.cache == "cold" else
             "each phase run twice, the second reported") + ")")
    print(f"load average (1 min, 2 cores) before/after the read phases: {load0[0]:.1f} / {load1[0]:.1f}")
    print(f"wall time {summary['wall_s']:.0f} s (temporary folder removed)")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
