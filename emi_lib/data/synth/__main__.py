"""``python -m emi_lib.data.synth --out DIR --profile {smoke,demo,bench} --seed N``."""

from __future__ import annotations

import argparse
import sys

from emi_lib.constants import EMOTIONS
from emi_lib.data.synth.config import PROFILES, SynthConfig
from emi_lib.data.synth.writer import generate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emi_lib.data.synth", description="Generate a SynthMimic data root.")
    ap.add_argument("--out", required=True, help="output folder (the data root)")
    ap.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--occlusion-rate", type=float, default=None, help="share of clips with an occluded face")
    ap.add_argument("--noise-rate", type=float, default=None, help="share of clips with noisy audio")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = SynthConfig.from_profile(a.profile, seed=a.seed, occlusion_rate=a.occlusion_rate, noise_rate=a.noise_rate)
    man = generate(a.out, cfg, workers=a.workers, progress=not a.no_progress)
    counts = ", ".join(f"{k} {v}" for k, v in man["counts"].items())
    print(f"SynthMimic {man['version']} profile={a.profile} seed={a.seed} -> {a.out}")
    print(f"clips: {counts}; {man['frames_total']} frames; {man['workers']} workers; {man['wall_time_s']:.1f} s")
    print("corruptions: face " + ", ".join(f"{k} {v}" for k, v in man["corruption_counts"]["face"].items())
          + "; audio " + ", ".join(f"{k} {v}" for k, v in man["corruption_counts"]["audio"].items()))
    for split in ("valid", "test"):
        nc = man["noise_ceiling"][split]
        per = " ".join(f"{e[:4]}={nc['per_emotion'][e]:.3f}" for e in EMOTIONS)
        print(f"noise ceiling ({split}): mean {nc['mean']:.3f}  [{per}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
