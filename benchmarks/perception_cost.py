"""Extraction cost of every offline backbone: ms per frame (vision) and x real time (audio), one process.

    .venv/bin/python benchmarks/perception_cost.py [--root ROOT] [--clips 40] [--threads 1]

Times the encoder alone (frames already decoded, audio already read), so the numbers compare backbones,
not JPEG or mp3 decoding (printed separately). Without ``--root`` a SynthMimic demo-profile root is made
under ``runs/bench/`` (shared with the notebooks' layout). Prints one table; nothing is written to the repo.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

VISION = ("openclip-tiny", "mediapipe-facemesh", "fer")
AUDIO = ("logmel", "opensmile-egemaps", "opensmile-compare", "wav2vec2-tiny")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", help="a data root (default: SynthMimic demo, seed 0)")
    ap.add_argument("--clips", type=int, default=40, help="train clips to time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and face-mesh threads)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from emi_lib.constants import SAMPLE_RATE
    from emi_lib.data import DataRoot
    from emi_lib.data.media import load_audio, load_face_crops
    from emi_lib.features import load_backbone
    from emi_lib.features.perception import FaceMeshEncoder
    from emi_lib.features.store import valid_steps
    from emi_lib.notebook import resolve_data_root

    root = a.root or resolve_data_root("", "demo", 0)
    dr = DataRoot(root)
    ids = [c for c in dr.ids("train") if dr.face_dir("train", c).exists()][: a.clips]
    t = time.perf_counter()
    frames = [load_face_crops(dr.face_dir("train", c)) for c in ids]
    decode_v = time.perf_counter() - t
    t = time.perf_counter()
    waves = [load_audio(dr.audio_path("train", c)) for c in ids if dr.audio_path("train", c).exists()]
    decode_a = time.perf_counter() - t
    n_frames = sum(len(f) for f in frames)
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    print(f"root {root}: {len(ids)} clips, {n_frames} face crops, {seconds:.0f} s of audio; "
          f"decoding: {1000 * decode_v / n_frames:.2f} ms per crop, {decode_a / seconds:.4f} x real time\n")
    print(f"{'backbone':24s} {'dim':>5s} {'cost':>18s}  notes")
    for name in VISION:
        enc = FaceMeshEncoder(name, threads=a.threads) if name == "mediapipe-facemesh" else load_backbone("vision", name)
        enc.encode_frames(frames[0][:2])  # warm-up
        t = time.perf_counter()
        outs = [enc.encode_frames(f) for f in frames]
        dt = time.perf_counter() - t
        found = np.mean(np.concatenate([valid_steps(o) for o in outs]))
        print(f"{name:24s} {enc.dim:5d} {1000 * dt / n_frames:12.2f} ms/frame  valid steps {found:.1%}")
    for name in AUDIO:
        enc = load_backbone("audio", name)
        enc.encode_audio(waves[0][:SAMPLE_RATE])
        t = time.perf_counter()
        for w in waves:
            enc.encode_audio(w)
        dt = time.perf_counter() - t
        print(f"{name:24s} {enc.dim:5d} {dt / seconds:12.4f} x real time  {enc.frame_rate:g} steps/s")


if __name__ == "__main__":
    main()
