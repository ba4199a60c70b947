"""The command line of :mod:`emi_lib.features.extract` (``python -m emi_lib.features.extract``): every option
with its help text; the behaviour is :func:`~emi_lib.features.extract.extract_all`'s."""

from __future__ import annotations

import argparse
import sys

from emi_lib.data import DataError
from emi_lib.features.extract import VISION_SOURCES, extract_all


def parser() -> argparse.ArgumentParser:
    """The options, each with its help text."""
    ap = argparse.ArgumentParser(
        prog="python -m emi_lib.features.extract",
        description="Extraction of per-clip features from a data root into a feature store.",
        epilog="Each clip becomes one float32 (T, D) file STORE/<modality>/<key>/<split>/<id>.npy. A clip that lacks "
               "a modality (no face crops, no audio file, no transcript) gets NO file for it: it is listed as missing "
               "in the printed report and in the split's _meta.json, and downstream code treats it as a clip without "
               "that stream. Clips already stored are skipped (a killed run resumes). Exit status 1 when a clip "
               "failed (corrupt or unsafe file), 2 on a bad argument, root or backbone.")
    ap.add_argument("root", help="data root (Hume-Vidmimic2 layout or SynthMimic)")
    ap.add_argument("--store", required=True, help="feature store folder (created when absent; shared by backbones)")
    ap.add_argument("--vision", help="vision backbone, e.g. mediapipe-facemesh, openclip-tiny, openclip:ViT-B-32/openai, "
                    "a+b (concatenated per step), official (the release's vit/ files)")
    ap.add_argument("--audio", help="audio backbone, e.g. logmel, opensmile-compare, wav2vec2-tiny, hf:<model>[@layer], "
                    "official (the release's wav2vec2/ files)")
    ap.add_argument("--text", help="text backbone, e.g. minilm, openclip-tiny")
    ap.add_argument("--splits", nargs="+", help="splits to extract (default: every split whose CSV exists)")
    ap.add_argument("--vision-source", choices=VISION_SOURCES, default="faces",
                    help="faces: the face crops face_images/<id>/ (default); video: the decoded raw/<id>.mp4 frames. "
                         "A clip without crops is missing, never replaced by video frames")
    ap.add_argument("--text-source", choices=("transcript", "label_prompt"), default="transcript",
                    help="transcript: text/<id>.txt (default); label_prompt: the clip's labels written as a prompt "
                         "(stage-1 alignment target; train/valid only, refused for test); stored as <backbone>[label_prompt]")
    ap.add_argument("--max-frames", type=int, help="keep at most this many vision frames per clip, spread over the "
                    "whole clip by a constant stride (default: all); part of the store key, e.g. openclip-tiny[max=64]")
    ap.add_argument("--frame-stride", type=int, default=1,
                    help="keep every s-th vision frame (default 1: all); part of the store key")
    ap.add_argument("--face-size", type=int, help="resize face crops / video frames to this side before the encoder "
                    "(default: as stored; the crops of one clip must then share a size); part of the store key")
    ap.add_argument("--batch-clips", type=int, default=8,
                    help="clips whose frames (or texts) go through the encoder in one call (default 8)")
    ap.add_argument("--workers", type=int, default=1, help="loader threads decoding clips ahead of the encoder "
                    "(default 1; 0: load in the main thread)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (under torchrun: each rank's GPU LOCAL_RANK)")
    ap.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                    help="a clip whose file is corrupt or unsafe: skip lists it as failed and goes on (exit status 1), "
                         "raise stops at the first one. A missing modality is never an error")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (the per-split reports still print)")
    return ap


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 1 when any clip failed (missing modalities are listed but are not failures),
    2 on a bad argument, root or backbone."""
    ap = parser()
    a = ap.parse_args(argv)
    if not (a.vision or a.audio or a.text):
        ap.error("give at least one of --vision, --audio, --text")
    from emi_lib.distributed import cleanup, init_distributed
    from emi_lib.features.weights import WeightsUnavailableError

    ctx = init_distributed(device=a.device)  # under torchrun: one process group, clips sharded by rank
    device = str(ctx.device) if ctx.distributed and a.device == "cuda" else a.device
    try:
        reports = extract_all(a.root, a.store, a.vision, a.audio, a.text, a.splits, device=device,
                              verbose=ctx.is_main, vision_source=a.vision_source, text_source=a.text_source,
                              max_frames=a.max_frames, frame_stride=a.frame_stride, face_size=a.face_size,
                              batch_clips=a.batch_clips, workers=a.workers, on_error=a.on_error,
                              progress=not a.no_progress and ctx.is_main)
    except (DataError, ValueError, WeightsUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        cleanup(wait=False)
        return 2
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup()
    return 1 if any(r.n_failed for r in reports.values()) else 0
