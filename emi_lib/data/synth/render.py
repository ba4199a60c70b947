"""Render and write one clip (runs in a worker process): voice, face, corruptions, transcript.

A clip's randomness comes only from ``np.random.default_rng([seed, clip_id, stream])``, so
the files are identical whatever the worker count or the order in which clips are rendered.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from emi_lib.constants import SAMPLE_RATE, clip_stem
from emi_lib.data.synth import corrupt
from emi_lib.data.synth.config import SynthConfig
from emi_lib.data.synth.face import FaceRenderer, face_tracks, occluder_box, paint_occluder
from emi_lib.data.synth.latent import S_CORRUPT, S_FACE, S_TEXT, S_VOICE, ClipPlan, Subject
from emi_lib.data.synth.transcript import make_transcript
from emi_lib.data.synth.voice import frame_activity, synth_voice


def split_base(root: Path, split: str) -> Path:
    """Folder that holds a split's media: the root, or ``root/test_data`` for the test split."""
    return root / "test_data" if split == "test" else root


def yuv420p_frame(rgb: np.ndarray) -> av.VideoFrame:
    """BT.601 limited-range YUV 4:2:0 frame of an (H, W, 3) uint8 image, converted in numpy.

    Written straight into the frame's planes, row padding included (filled by edge replication):
    libx264 reads a few bytes past the row width, so padding left uninitialized (or a swscale
    conversion whose SIMD path depends on buffer alignment) makes the encoded bytes differ
    from process to process. This keeps ``raw/*.mp4`` byte-identical for the same seed.
    """
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h, w = r.shape
    y = 16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128.0 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128.0 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    planes = [y, *(c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v))]
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, planes):
        buf = np.frombuffer(plane, dtype=np.uint8)
        rows = buf[: plane.height * plane.line_size].reshape(plane.height, plane.line_size)
        q = np.clip(data + 0.5, 0, 255).astype(np.uint8)
        rows[:, : plane.width] = q
        rows[:, plane.width:] = q[:, -1:]
        buf[plane.height * plane.line_size:] = 0
    return frame


def write_mp4(path: Path, frames: np.ndarray, fps: int, crf: int) -> None:
    """H.264 (libx264, yuv420p, one thread: deterministic bytes) of (T, H, W, 3) uint8 frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"preset": "veryfast", "crf": str(crf), "threads": "1"}
        for i, f in enumerate(frames):
            frame = yuv420p_frame(f)
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_clip(task: tuple[SynthConfig, ClipPlan, Subject, str]) -> dict:
    """Render one clip, write its files, return its corruption record."""
    cfg, plan, subj, root = task
    base = split_base(Path(root), plan.split)
    stem = clip_stem(plan.clip_id)
    z = np.asarray(plan.z)
    rng_v, rng_f, rng_t, rng_c = (np.random.default_rng([cfg.seed, plan.clip_id, s])
                                  for s in (S_VOICE, S_FACE, S_TEXT, S_CORRUPT))

    # --- voice (first: its syllables move the mouth) ------------------------------------
    audio, activity, _ = synth_voice(cfg, subj, z, plan.duration, rng_v, silent=plan.audio_corruption == "silent")
    n_frames = max(1, int(round(plan.duration * cfg.fps)))
    talk = frame_activity(activity, n_frames, cfg.fps)
    snr, a_sev = math.nan, 0.0
    kind = plan.audio_corruption
    if kind == "noise":
        snr = float(rng_c.uniform(*cfg.noise_snr_db))
        audio, a_sev = corrupt.add_noise(audio, activity, snr, rng_c), corrupt.noise_severity(snr)
    elif kind == "clipping":
        audio, a_sev = corrupt.clip_audio(audio, activity, rng_c)
    elif kind == "dropout":
        audio, a_sev = corrupt.dropout(audio, float(rng_c.uniform(*cfg.dropout_share)), rng_c)
    elif kind in ("missing", "silent"):
        a_sev = 1.0
    if kind != "missing":
        sf.write(str(base / "audio" / f"{stem}.mp3"), audio, SAMPLE_RATE, format="MP3")

    # --- face ------------------------------------------------------------------------------
    tracks = face_tracks(cfg, subj, z, n_frames, talk, rng_f)
    renderer = FaceRenderer(cfg, subj)
    occluded = np.zeros(n_frames, dtype=bool)
    visible = np.ones(n_frames, dtype=bool)
    person = plan.face_corruption != "no_face"
    box = color = None
    if plan.face_corruption == "occlusion":
        occluded = corrupt.frame_span(n_frames, cfg.occlusion_share, rng_c)
        box, color = occluder_box(cfg, subj, rng_c)
    elif plan.face_corruption == "missing_frames":
        visible = ~corrupt.frame_span(n_frames, cfg.missing_share, rng_c)
    n, c = cfg.frame_size, cfg.crop_size
    frames = np.empty((n_frames, n, n, 3), dtype=np.uint8)
    crops_dir = base / "face_images" / stem
    crops_dir.mkdir(parents=True, exist_ok=True)
    hidden, n_crops = [], 0
    # sensor noise: random windows of one noise field per clip (cheaper than fresh noise per frame)
    grain = rng_f.standard_normal((n + 24, n + 24, 3), dtype=np.float32) * np.float32(cfg.pixel_noise_sd)
    for i in range(n_frames):
        dx, dy = float(tracks["dx"][i]), float(tracks["dy"][i])
        img = renderer.frame(tracks["au"][i], dx, dy, float(tracks["roll"][i]), float(tracks["blink"][i]),
                             face_visible=bool(visible[i]), person_visible=person)
        if occluded[i]:
            hidden.append(paint_occluder(img, renderer, box, color, dx, dy))
        oy, ox = rng_f.integers(0, 25, 2)
        img += grain[oy:oy + n, ox:ox + n]
        frames[i] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if person and visible[i]:
            cx, cy = renderer.center(dx, dy)
            x0 = int(np.clip(round(cx) - c // 2 + rng_f.integers(-1, 2), 0, n - c))
            y0 = int(np.clip(round(cy) - c // 2 + rng_f.integers(-1, 2), 0, n - c))
            Image.fromarray(frames[i, y0:y0 + c, x0:x0 + c]).save(crops_dir / f"{i}.jpg", quality=cfg.jpeg_quality)
            n_crops += 1
    write_mp4(base / "raw" / f"{stem}.mp4", frames, cfg.fps, cfg.crf)
    f_sev = {"none": 0.0, "no_face": 1.0,
             "occlusion": float(occluded.mean() * (np.mean(hidden) if hidden else 0.0)),
             "missing_frames": float(1.0 - visible.mean())}[plan.face_corruption]

    # --- text ------------------------------------------------------------------------------
    text = make_transcript(cfg, z, subj.text_gain, plan.duration, kind, a_sev, rng_t)
    (base / "text" / f"{stem}.txt").write_text(text + ("\n" if text else ""), encoding="utf-8")

    return {"Filename": plan.clip_id, "split": plan.split, "face_corruption": plan.face_corruption,
            "face_severity": round(f_sev, 4), "audio_corruption": kind, "audio_snr_db": snr,
            "audio_severity": round(float(a_sev), 4), "n_frames": n_frames, "n_face_images": n_crops,
            "n_words": len(text.split())}
