r"""Voice channel: a 16 kHz vocalization synthesized with numpy, following z.

Clip prosody (scaled by the subject's voice gain g, plus per-clip noise):

.. math:: c = g\,W_{prosody} z \quad (\text{pitch level [st], energy [dB], tempo}-1,
          \text{breathiness}, \text{tremor depth [st]})

A sequence of vocal units fills the active part of the clip; each unit's type is drawn with

.. math:: P(\text{type}) \propto \{\,w_{neutral},\ h_{s,type} + g\,[W_{unit} z]_+\,\}

over {neutral syllable, wow, firm, sigh, laugh} (config ``voice_unit_weights``; h_s is the
subject's z-independent speaking style, ``voice_habit_scale``):

* neutral syllable: 0.12-0.26 s at the subject's rate, small random pitch slope, random vowel;
* wow (Admiration, some Excitement): a long vowel whose pitch rises by 3 + 7 z_Adm semitones, then falls;
* firm (Determination): a run of 3-5 loud, flat, isochronous syllables with sharp attacks;
* sigh (Empathic Pain): a long, breathy (noise-dominated), falling exhalation; length, fall
  (4 + 6 z_EP semitones) and breathiness grow with z_EP;
* laugh (weakly Amusement/Joy): a burst of 2-3 + round(3 z_Amu) short, high, breathy pulses at ~5 Hz.

Every note is a harmonic source on a pitch contour f0(t) = F0_s 2^{(level + contour(t) +
tremor sin(2 pi 5.5 t))/12}, harmonic k weighted by k^-tilt and vowel formant resonances,
mixed with breath noise by the breathiness share, under an attack/release envelope
(fast local dynamics). Per-unit jitter makes every clip different. The vocalization is scaled
to ``voice_level_dbfs`` + energy + a random recording gain, over a room-tone noise floor.
Voice-dominant emotions (Admiration, Determination, Empathic Pain) have strong unit and
prosody weights; Amusement, Excitement, Joy weak ones.
"""

from __future__ import annotations

import numpy as np

from emi_lib.constants import SAMPLE_RATE
from emi_lib.data.synth.config import VOICE_PROSODY, SynthConfig
from emi_lib.data.synth.latent import E, Subject

SR = SAMPLE_RATE
#: (F1, F2, F3) in Hz of a few vowels
VOWELS = {"a": (750, 1200, 2600), "e": (500, 1900, 2600), "i": (300, 2300, 3000),
          "o": (500, 850, 2500), "u": (320, 800, 2400)}
_V = list(VOWELS)
_TABLE = 2048  # wavetable length of one pitch period


def _formant_gain(freqs: np.ndarray, vowel: str, shift: float) -> np.ndarray:
    g = np.full_like(freqs, 0.05)
    for f, bw in zip(VOWELS[vowel], (90.0, 120.0, 160.0)):
        g += 1.0 / (1.0 + ((freqs - f * shift) / bw) ** 2)
    return g


def _note(subj: Subject, rng: np.random.Generator, dur: float, level_st: float, contour, breath: float,
          tremor: float, attack: float, release: float, vowel: str) -> np.ndarray:
    """One voiced note of ``dur`` seconds; contour(t01) gives semitones over normalized time."""
    n = max(int(dur * SR), 16)
    t = np.arange(n) / SR
    st = level_st + contour(t / dur) + tremor * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 6.3))
    knots = np.arange(0.0, dur + 0.05, 0.05)
    st = st + np.interp(t, knots, np.cumsum(rng.normal(0, 0.15, knots.size)))  # jitter: slow pitch drift
    f0 = subj.f0 * 2.0 ** (st / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / SR + rng.uniform(0, 6.3)
    fmean = float(f0.mean())
    k = np.arange(1, max(2, min(24, int(6500 / max(fmean, 50)))) + 1)
    amp = k ** -subj.tilt * _formant_gain(k * fmean, vowel, subj.formant_shift)
    table = np.sin(np.linspace(0, 2 * np.pi, _TABLE, endpoint=False)[:, None] * k[None, :]) @ amp  # one period
    voiced = table[(phase * (_TABLE / (2 * np.pi))).astype(np.int64) % _TABLE]
    voiced /= np.sqrt(np.mean(voiced**2)) + 1e-9
    noise = rng.normal(0, 1, n)
    noise[1:] -= 0.5 * noise[:-1]
    noise /= np.sqrt(np.mean(noise**2)) + 1e-9
    b = float(np.clip(breath, 0.0, 0.95))
    shimmer = 1.0 + np.interp(t, knots, rng.normal(0, 0.08, knots.size))
    sig = np.sqrt(1 - b) * voiced * shimmer + np.sqrt(b) * noise
    a = np.clip(t / max(attack, 1e-3), 0, 1)
    r = np.clip((dur - t) / max(release, 1e-3), 0, 1)
    env = np.sin(0.5 * np.pi * a) * np.sin(0.5 * np.pi * r)
    return (sig * env).astype(np.float64)


def synth_voice(cfg: SynthConfig, subj: Subject, z: np.ndarray, duration: float, rng: np.random.Generator,
                silent: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """(audio float32 in [-1, 1], syllable activity envelope in [0, 1], info) of one clip."""
    n = int(round(duration * SR))
    floor = rng.normal(0, 1, n)
    floor = np.convolve(floor, np.ones(4) / 4, mode="same")
    floor *= 10 ** (cfg.noise_floor_dbfs / 20) / (np.sqrt(np.mean(floor**2)) + 1e-12)
    activity = np.zeros(n)
    info = {"units": {}}
    if silent:
        return floor.astype(np.float32), activity.astype(np.float32), info
    g = subj.voice_gain
    pros = g * (np.asarray(cfg.voice_prosody_weights) @ z)
    pros += rng.normal(0.0, np.asarray(cfg.voice_prosody_noise_sd))
    p = dict(zip(VOICE_PROSODY, pros))
    tempo = float(np.clip(1.0 + p["tempo"], 0.6, 1.6))
    base_breath = float(np.clip(0.08 + p["breathiness"], 0.02, 0.8))
    tremor = float(max(p["tremor"], 0.0))
    level = p["pitch_level_st"]
    w_units = np.maximum(np.asarray(cfg.voice_unit_weights) @ z, 0.0) * g + np.asarray(subj.voice_habits)
    weights = np.concatenate([[cfg.voice_neutral_weight], w_units])
    weights /= weights.sum()
    names = ["neutral", "wow", "firm", "sigh", "laugh"]
    voice = np.zeros(n)
    t = rng.uniform(0.08, 0.4)
    end = duration - rng.uniform(0.1, 0.35)
    syl = 1.0 / (subj.rate * tempo)
    while t < end - 0.1:
        kind = names[int(rng.choice(5, p=weights))]
        info["units"][kind] = info["units"].get(kind, 0) + 1
        notes = []  # (offset, dur, level, contour, breath, attack, release, vowel, gain)
        if kind == "neutral":
            d = syl * rng.uniform(0.55, 1.0)
            sl = rng.normal(0, 1.5)
            notes.append((0.0, d, level, lambda x, sl=sl: sl * x - 0.5 * x, base_breath, 0.015, 0.04,
                          _V[rng.integers(5)], rng.uniform(0.7, 1.05)))
            gap = syl * rng.uniform(0.15, 0.5)
        elif kind == "wow":
            d = rng.uniform(0.45, 0.8) * (1 + 0.4 * z[E["Admiration"]])
            rise = 3.0 + 7.0 * g * z[E["Admiration"]] + rng.normal(0, 0.8)
            notes.append((0.0, d, level, lambda x, r=rise: r * np.minimum(x / 0.6, 1) - 0.6 * r * np.clip((x - 0.6) / 0.4, 0, 1),
                          base_breath + 0.12, 0.06, 0.12, rng.choice(["o", "a"]), rng.uniform(0.95, 1.2)))
            gap = rng.uniform(0.1, 0.25)
        elif kind == "firm":
            m, d, period = int(rng.integers(3, 6)), rng.uniform(0.13, 0.18), rng.uniform(0.22, 0.28)
            for i in range(m):
                notes.append((i * period, d, level - 0.5, lambda x: 0.0 * x, 0.02, 0.005, 0.03,
                              rng.choice(["a", "e"]), 1.6 + 0.8 * z[E["Determination"]]))
            d, gap = m * period, rng.uniform(0.1, 0.25)
        elif kind == "sigh":
            ep = z[E["Empathic Pain"]]
            d = rng.uniform(0.6, 0.9) + 0.5 * ep
            fall = 4.0 + 6.0 * ep
            notes.append((0.0, d, level, lambda x, f=fall: 2.0 - f * x, 0.65 + 0.25 * ep, 0.2, 0.4, "a", 0.7))
            gap = rng.uniform(0.15, 0.35)
        else:  # laugh
            m, period = int(rng.integers(2, 4) + round(3 * z[E["Amusement"]])), rng.uniform(0.19, 0.23)
            for i in range(m):
                notes.append((i * period, rng.uniform(0.06, 0.09), level + 5.0, lambda x: -1.5 * x, 0.45,
                              0.01, 0.03, "a", 1.0 * (1 - 0.1 * i)))
            d, gap = m * period, rng.uniform(0.15, 0.3)
        for off, nd, lev, contour, br, att, rel, vow, gain in notes:
            i0 = int((t + off) * SR)
            if i0 >= n:
                break
            x = gain * _note(subj, rng, nd, lev, contour, br, tremor, att, rel, str(vow))
            x = x[: n - i0]
            voice[i0:i0 + len(x)] += x
            activity[i0:i0 + len(x)] = np.maximum(activity[i0:i0 + len(x)], np.abs(x) > 0.05 * gain)
        t += d + gap
        if rng.random() < 0.12:
            t += rng.uniform(0.2, 0.5)  # pause
    active = activity > 0
    rms = np.sqrt(np.mean(voice[active] ** 2)) if active.any() else 1.0
    gain_db = cfg.voice_level_dbfs + p["energy_db"] + rng.normal(0, cfg.recording_gain_sd_db)
    voice *= 10 ** (gain_db / 20) / (rms + 1e-12)
    info["prosody"] = {k: float(v) for k, v in p.items()}
    out = np.clip(voice + floor, -0.99, 0.99)
    return out.astype(np.float32), activity.astype(np.float32), info


def frame_activity(activity: np.ndarray, n_frames: int, fps: int) -> np.ndarray:
    """Mean syllable activity per video frame (drives the talking mouth)."""
    hop = SR / fps
    out = np.zeros(n_frames)
    for i in range(n_frames):
        seg = activity[int(i * hop):int((i + 1) * hop)]
        out[i] = float(seg.mean()) if seg.size else 0.0
    return out
