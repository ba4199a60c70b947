r"""Controllable corruptions. Their ground truth goes only to ``synthmimic/corruptions.csv``.

Face (one kind per clip):

* ``occlusion``: a rectangle (a hand, an object) over the mouth, the brows/eyes or one side of
  the face on a contiguous span of frames (share ~ U(occlusion_share)); it hides exactly the
  action units that carry the face-dominant emotions. severity = span share x mean hidden
  share of the face ellipse.
* ``missing_frames``: the subject turns away for a contiguous span (share ~ U(missing_share));
  those frames show the back of the head and get no face crop. severity = span share.
* ``no_face``: the subject is not in the picture at all; empty ``face_images/<id>/``. severity = 1.

Audio (one kind per clip):

* ``noise``: white, pink or babble noise at SNR ~ U(noise_snr_db) relative to the voiced
  samples; severity = clip((20 - SNR) / 30, 0, 1).
* ``clipping``: gain of 12-24 dB then hard clipping at +-0.3; severity = share of voiced
  samples that were clipped.
* ``dropout``: 1-3 zeroed segments (share ~ U(dropout_share)); severity = share.
* ``missing``: no mp3 is written (severity 1); ``silent``: no vocalization (severity 1).
"""

from __future__ import annotations

import numpy as np

from emi_lib.constants import SAMPLE_RATE


def noise_severity(snr_db: float) -> float:
    return float(np.clip((20.0 - snr_db) / 30.0, 0.0, 1.0))


def add_noise(audio: np.ndarray, activity: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Additive noise at ``snr_db`` relative to the power of the voiced samples."""
    n = audio.size
    kind = rng.choice(["white", "pink", "babble"])
    if kind == "white":
        noise = rng.normal(0, 1, n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.normal(0, 1, n))
        spec /= np.sqrt(np.maximum(np.arange(spec.size), 1.0))
        noise = np.fft.irfft(spec, n)
    else:  # babble: a few amplitude-modulated harmonic "voices"
        t = np.arange(n) / SAMPLE_RATE
        noise = np.zeros(n)
        for _ in range(4):
            f0 = rng.uniform(90, 250)
            mod = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6.3))
            for k in range(1, 8):
                noise += mod * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k
        noise += 0.3 * rng.normal(0, 1, n)
    active = activity > 0
    p_sig = float(np.mean(audio[active] ** 2)) if active.any() else float(np.mean(audio**2))
    noise *= np.sqrt(p_sig / 10 ** (snr_db / 10)) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    return np.clip(audio + noise, -0.99, 0.99).astype(np.float32)


def clip_audio(audio: np.ndarray, activity: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    gain = 10 ** (rng.uniform(12, 24) / 20)
    x = audio * gain
    hit = np.abs(x) >= 0.3
    active = activity > 0
    sev = float(hit[active].mean()) if active.any() else float(hit.mean())
    return np.clip(x, -0.3, 0.3).astype(np.float32), sev


def dropout(audio: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    n = audio.size
    k = int(rng.integers(1, 4))
    lens = rng.dirichlet(np.ones(k)) * share * n
    out = audio.copy()
    mask = np.zeros(n, dtype=bool)
    for ln in lens:
        s = int(rng.uniform(0, max(n - ln, 1)))
        mask[s:s + int(ln)] = True
    out[mask] = 0.0
    return out, float(mask.mean())


def frame_span(n_frames: int, share_range: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Boolean (T,) mask of one contiguous span covering a share ~ U(share_range) of the frames."""
    m = int(np.clip(round(rng.uniform(*share_range) * n_frames), 1, n_frames))
    start = int(rng.integers(0, n_frames - m + 1))
    mask = np.zeros(n_frames, dtype=bool)
    mask[start:start + m] = True
    return mask
