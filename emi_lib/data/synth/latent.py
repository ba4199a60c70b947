r"""The hidden part of SynthMimic: subjects, latent intensities z, annotator labels, clip plans.

Everything here runs in the main process before any media is rendered, so the plan (and thus
every label) depends only on ``config.seed`` and the clip id, never on the worker count.

Random streams: clip ``c`` uses ``np.random.default_rng([seed, c, stream])`` with one stream
per concern (latent, labels, plan, face, voice, text, corruption); the subject and annotator
pools use ``default_rng([seed, POOL])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emi_lib.constants import EMOTIONS
from emi_lib.data.synth.config import FACE_AUS, VOICE_UNITS, SynthConfig

# stream ids of np.random.default_rng([seed, clip_id, stream])
S_LATENT, S_LABEL, S_PLAN, S_FACE, S_VOICE, S_TEXT, S_CORRUPT = 1, 2, 3, 11, 12, 13, 14
_POOL_SUBJECTS, _POOL_ANNOTATORS, _FORCE = 1_000_003, 1_000_033, 1_000_037

E = {e: i for i, e in enumerate(EMOTIONS)}
POSITIVE = (E["Amusement"], E["Excitement"], E["Joy"])

#: Affinity of a second dominant emotion to the first (row: first, column: second).
AFFINITY = np.array([
    # Adm  Amu  Det  EP   Exc  Joy
    [0.0, 0.5, 1.0, 0.6, 1.5, 1.2],  # Admiration
    [0.4, 0.0, 0.2, 0.1, 1.5, 2.0],  # Amusement
    [1.0, 0.2, 0.0, 0.6, 1.2, 0.5],  # Determination
    [1.0, 0.1, 0.8, 0.0, 0.2, 0.0],  # Empathic Pain
    [1.0, 1.5, 1.0, 0.1, 0.0, 1.8],  # Excitement
    [0.8, 2.0, 0.4, 0.0, 1.5, 0.0],  # Joy
])


@dataclass(frozen=True)
class Subject:
    """One person: face geometry and colours, voice, and expressivity per modality.

    ``face_gain`` / ``voice_gain`` multiply how strongly z shows in that channel
    (log-normal around 1); ``text_gain`` how strongly it shows in what they say.
    """

    idx: int
    head_rx: float  # head half-width, px (at crop_size 96; geometry scales with crop_size)
    head_ry: float  # head half-height
    offset: tuple[float, float]  # head centre offset from the frame centre (x, y)
    eye_dx: float  # half distance between the eyes
    eye_y: float  # eye height relative to the head centre (negative = up)
    eye_r: float  # eye size
    brow_gap: float  # brow height above the eyes
    mouth_y: float  # mouth height relative to the head centre
    mouth_w: float  # mouth half-width
    lip_t: float  # lip thickness
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    background: tuple[float, float, float]
    lip_color: tuple[float, float, float]
    rest: tuple[float, ...]  # resting action-unit offsets, one per FACE_AUS
    face_gain: float
    voice_gain: float
    text_gain: float
    voice_habits: tuple[float, ...]  # z-independent propensity per VOICE_UNITS type (speaking style)
    f0: float  # base pitch, Hz
    rate: float  # syllables per second
    tilt: float  # spectral tilt exponent of the voice source (harmonic k has amplitude k^-tilt)
    formant_shift: float  # vocal tract length factor on all formants


def make_subjects(cfg: SynthConfig) -> list[Subject]:
    """The subject pool, drawn from ``default_rng([seed, POOL])`` (identical for every worker)."""
    rng = np.random.default_rng([cfg.seed, _POOL_SUBJECTS])
    s = cfg.crop_size / 96.0
    out = []
    for i in range(cfg.n_subjects):
        tone = rng.uniform(0.35, 0.92)
        skin = (tone, tone * rng.uniform(0.72, 0.85), tone * rng.uniform(0.55, 0.72))
        hv = rng.uniform(0.05, 0.6)
        hair = (hv, hv * rng.uniform(0.6, 0.9), hv * rng.uniform(0.4, 0.7))
        bg = tuple(float(x) for x in rng.uniform(0.15, 0.85, 3))
        low_voice = rng.random() < 0.5
        f0 = rng.uniform(cfg.f0_range_hz[0], np.mean(cfg.f0_range_hz)) if low_voice else \
            rng.uniform(np.mean(cfg.f0_range_hz), cfg.f0_range_hz[1])
        out.append(Subject(
            idx=i,
            head_rx=s * rng.uniform(29, 35), head_ry=s * rng.uniform(37, 43),
            offset=(s * rng.uniform(-4, 4), s * rng.uniform(-3, 3)),
            eye_dx=s * rng.uniform(11, 14), eye_y=s * rng.uniform(-12, -8), eye_r=s * rng.uniform(4.2, 5.5),
            brow_gap=s * rng.uniform(7, 10), mouth_y=s * rng.uniform(15, 20), mouth_w=s * rng.uniform(9, 12.5),
            lip_t=s * rng.uniform(1.6, 2.6),
            skin=tuple(float(x) for x in skin), hair=tuple(float(x) for x in hair), background=bg,
            lip_color=(float(skin[0] * 0.75), float(skin[1] * 0.42), float(skin[2] * 0.45)),
            rest=tuple(float(x) for x in rng.normal(0.0, cfg.rest_face_sd, len(FACE_AUS))),
            face_gain=float(np.exp(rng.normal(0, cfg.face_gain_sd))),
            voice_gain=float(np.exp(rng.normal(0, cfg.voice_gain_sd))),
            text_gain=float(np.exp(rng.normal(0, 0.25))),
            voice_habits=tuple(float(x) for x in rng.exponential(cfg.voice_habit_scale, len(VOICE_UNITS))),
            f0=float(f0), rate=float(rng.uniform(*cfg.rate_range_sps)),
            tilt=float(rng.uniform(0.8, 1.4)), formant_shift=float(rng.uniform(0.88, 1.15)),
        ))
    return out


def sample_latent(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    r"""Latent intensities z in [0, 1]^6 of one clip.

    * with prob ``p_neutral`` no dominant emotion; else a dominant p ~ Cat(primary_probs),
      z_p ~ Beta(a, b), and with prob ``p_second`` a second s ~ Cat(AFFINITY[p]) with
      z_s = z_p U(lo, hi);
    * background: every other emotion is non-zero with prob ``background_p``, value ~ Exp(scale);
    * Joy/Amusement/Excitement are coupled: when one of them dominates, the others get
      + U(lo, hi) z_p (positive correlation);
    * Empathic Pain against Joy: when one of the two dominates, the other is multiplied by
      U(0, ``pain_joy_suppression``) (and Amusement/Excitement by 0.3 under Empathic Pain);
    * z = clip(z, 0, 1). Many values are exactly 0.
    """
    z = np.where(rng.random(6) < cfg.background_p, rng.exponential(cfg.background_scale, 6), 0.0)
    if rng.random() >= cfg.p_neutral:
        pp = np.asarray(cfg.primary_probs, dtype=float)
        p = int(rng.choice(6, p=pp / pp.sum()))
        dom = [p]
        z[p] = rng.beta(*cfg.dominant_beta)
        if rng.random() < cfg.p_second:
            a = AFFINITY[p] / AFFINITY[p].sum()
            s = int(rng.choice(6, p=a))
            z[s] = max(z[s], z[p] * rng.uniform(*cfg.second_ratio))
            dom.append(s)
        for d in dom:
            if d in POSITIVE:
                for e in POSITIVE:
                    if e not in dom:
                        z[e] += rng.uniform(*cfg.positive_coupling) * z[d]
        ep, joy = E["Empathic Pain"], E["Joy"]
        if ep in dom and joy not in dom:
            z[joy] *= rng.uniform(0, cfg.pain_joy_suppression)
            z[E["Amusement"]] *= 0.3
            z[E["Excitement"]] *= 0.3
        if joy in dom and ep not in dom:
            z[ep] *= rng.uniform(0, cfg.pain_joy_suppression)
    return np.clip(z, 0.0, 1.0)


def make_annotators(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotator pool: bias (A, 6) ~ N(0, bias_sd), noise sd (A,) and threshold tau (A,) ~ U(lo, hi)."""
    rng = np.random.default_rng([cfg.seed, _POOL_ANNOTATORS])
    bias = rng.normal(0.0, cfg.annotator_bias_sd, (cfg.n_annotator_pool, 6))
    sd = rng.uniform(*cfg.annotator_noise_sd, cfg.n_annotator_pool)
    tau = rng.uniform(*cfg.annotator_threshold, cfg.n_annotator_pool)
    return bias, sd, tau


def sample_label(cfg: SynthConfig, z: np.ndarray, pool: tuple[np.ndarray, np.ndarray, np.ndarray],
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    r"""Label = mean of N annotator ratings, so every value is a fraction m / (N K).

    The clip is perceived as p_e = z_e + delta_e, delta_e ~ N(0, perception_sd^2), shared by its
    annotators (what the video shows is not exactly z: this bounds the noise ceiling). N ~ U{lo..hi}
    annotators a are drawn without replacement from the pool; each sees v = p_e + eps_{a,e},
    eps ~ N(0, sigma_a^2), and rates

    .. math:: r_{a,e} = 0 \text{ if } v < \tau_a, \text{ else }
              \mathrm{clip}(\mathrm{round}(K (v + b_{a,e})), 0, K) / K,
              \qquad y_e = \frac1N \sum_a r_{a,e}.

    (annotators do not notice a weak emotion: many exact zeros). Returns (y, N).
    """
    bias, sd, tau = pool
    lo, hi = cfg.annotators_per_clip
    n = int(rng.integers(lo, hi + 1))
    who = rng.choice(len(sd), size=min(n, len(sd)), replace=False)
    k = cfg.rating_levels
    p = z + rng.normal(0.0, cfg.perception_sd, 6)
    v = p[None, :] + rng.normal(0.0, 1.0, (len(who), 6)) * sd[who, None]
    ratings = np.where(v < tau[who, None], 0.0, np.clip(np.round(k * (v + bias[who])), 0, k))
    return ratings.sum(axis=0) / (len(who) * k), len(who)


@dataclass(frozen=True)
class ClipPlan:
    """What one clip will be: everything the renderer needs besides its own random streams."""

    clip_id: int
    split: str
    subject: int
    z: tuple[float, ...]
    label: tuple[float, ...]
    n_annotators: int
    duration: float
    face_corruption: str
    audio_corruption: str


def _draw_kind(rng: np.random.Generator, kinds: list[str], rates: list[float]) -> str:
    u = rng.random()
    acc = 0.0
    for kind, r in zip(kinds, rates):
        acc += r
        if u < acc:
            return kind
    return "none"


def make_plan(cfg: SynthConfig) -> list[ClipPlan]:
    """Plans of all clips in id order (train, valid, test).

    Corruption kinds are drawn per clip with the config's rates; then in every split at least
    ``min_rare_per_split`` clips (if the rate is > 0) get each rare kind (no_face, missing
    audio, silent), chosen at random among clips still clean in that modality, preferring clips
    clean in both, so every profile, even smoke, contains them.
    """
    subj_rng = np.random.default_rng([cfg.seed, _POOL_SUBJECTS, 1])
    subj_weights = subj_rng.dirichlet(np.full(cfg.n_subjects, 2.0))
    pool = make_annotators(cfg)
    face_kinds = ["occlusion", "missing_frames", "no_face"]
    face_rates = [cfg.occlusion_rate, cfg.missing_frames_rate, cfg.no_face_rate]
    audio_kinds = ["noise", "clipping", "dropout", "missing", "silent"]
    audio_rates = [cfg.noise_rate, cfg.clipping_rate, cfg.dropout_rate, cfg.missing_audio_rate, cfg.silent_rate]
    lo_d, hi_d = cfg.duration_range_s
    rows: list[dict] = []
    for split, ids in cfg.split_ids().items():
        for c in ids:
            z = sample_latent(cfg, np.random.default_rng([cfg.seed, c, S_LATENT]))
            y, n = sample_label(cfg, z, pool, np.random.default_rng([cfg.seed, c, S_LABEL]))
            r = np.random.default_rng([cfg.seed, c, S_PLAN])
            dur = float(np.clip(np.exp(np.log(cfg.duration_median_s) + cfg.duration_sigma * r.normal()), lo_d, hi_d))
            rows.append(dict(clip_id=c, split=split, subject=int(r.choice(cfg.n_subjects, p=subj_weights)),
                             z=tuple(float(v) for v in z), label=tuple(float(v) for v in y), n_annotators=n,
                             duration=round(dur, 3), face_corruption=_draw_kind(r, face_kinds, face_rates),
                             audio_corruption=_draw_kind(r, audio_kinds, audio_rates)))
    for si, split in enumerate(cfg.split_ids()):
        frng = np.random.default_rng([cfg.seed, _FORCE, si])
        for key, kind, rate in (("face_corruption", "no_face", cfg.no_face_rate),
                                ("audio_corruption", "missing", cfg.missing_audio_rate),
                                ("audio_corruption", "silent", cfg.silent_rate)):
            if rate <= 0:
                continue
            mine = [row for row in rows if row["split"] == split]
            need = cfg.min_rare_per_split - sum(row[key] == kind for row in mine)
            other = "audio_corruption" if key == "face_corruption" else "face_corruption"
            free = [row for row in mine if row[key] == "none"]
            order = frng.permutation(len(free))
            picks = sorted(order, key=lambda j: free[j][other] != "none")[:max(need, 0)]  # clean in both first
            for j in picks:
                free[j][key] = kind
    return [ClipPlan(**row) for row in rows]


def noise_ceiling(z: np.ndarray, y: np.ndarray) -> dict:
    """PCC(z_e, y_e) per emotion and its mean: the best any predictor of z can score on y."""
    per = {}
    for j, emo in enumerate(EMOTIONS):
        a, b = z[:, j] - z[:, j].mean(), y[:, j] - y[:, j].mean()
        den = float(np.sqrt((a * a).sum() * (b * b).sum()))
        per[emo] = float((a * b).sum() / den) if den > 0 else float("nan")
    return {"per_emotion": per, "mean": float(np.mean(list(per.values())))}
