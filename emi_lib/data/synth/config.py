r"""Every parameter of the SynthMimic generator, as one dataclass, and the three profiles.

Columns of every mixing matrix are in ``EMOTIONS`` order:
(Admiration, Amusement, Determination, Empathic Pain, Excitement, Joy).

The manifest stores ``dataclasses.asdict(config)``, so a data root documents exactly how it
was made, and :func:`emi_lib.data.synth.ensure_synthmimic` regenerates when any field differs.
All mixing matrices are fields, so an ablation can change the instrument (e.g. move an
emotion from the voice to the face) without touching code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

#: Version of the generative process; bump when the same config would give different data.
GENERATOR_VERSION = "1.0.0"

#: Face action units rendered by :mod:`emi_lib.data.synth.face` (rows of ``face_weights``).
FACE_AUS: tuple[str, ...] = (
    "smile",
    "mouth_open",
    "brow_raise",
    "brow_furrow",
    "lip_press",
    "lip_corner_depress",
    "eye_widen",
    "head_motion",
)

#: Vocal unit types of :mod:`emi_lib.data.synth.voice` (rows of ``voice_unit_weights``).
VOICE_UNITS: tuple[str, ...] = ("wow", "firm", "sigh", "laugh")

#: Clip-level prosody cues of the voice (rows of ``voice_prosody_weights``).
VOICE_PROSODY: tuple[str, ...] = ("pitch_level_st", "energy_db", "tempo", "breathiness", "tremor")

FACE_CORRUPTIONS: tuple[str, ...] = ("none", "occlusion", "missing_frames", "no_face")
AUDIO_CORRUPTIONS: tuple[str, ...] = ("none", "noise", "clipping", "dropout", "missing", "silent")


@dataclass(frozen=True)
class SynthConfig:
    """All parameters of one SynthMimic data set (see the module docstring of each channel)."""

    # --- size and identity -------------------------------------------------------------
    profile: str = "demo"  # name of the profile the config came from (informational)
    seed: int = 0  # master seed: clip c draws from np.random.default_rng([seed, c, stream])
    n_train: int = 300  # clips in train_split.csv (ids 0..n_train-1)
    n_valid: int = 150  # clips in valid_split.csv (ids continue after train)
    n_test: int = 150  # clips in test_data/test_split.csv (ids continue after valid)
    n_subjects: int = 40  # size of the subject pool; clips of every split draw from it (shared)

    # --- latent intensities z (latent.py) ----------------------------------------------
    primary_probs: tuple[float, ...] = (0.17, 0.18, 0.15, 0.14, 0.17, 0.19)  # P(dominant emotion)
    p_second: float = 0.55  # probability of a second dominant emotion
    p_neutral: float = 0.15  # probability of a clip with no dominant emotion (background only)
    dominant_beta: tuple[float, float] = (5.0, 2.2)  # z of the dominant emotion ~ Beta(a, b)
    second_ratio: tuple[float, float] = (0.35, 0.9)  # z_second = z_dom * U(lo, hi)
    background_p: float = 0.55  # probability that a non-dominant emotion is non-zero
    background_scale: float = 0.10  # its value ~ Exponential(scale)
    positive_coupling: tuple[float, float] = (0.15, 0.55)  # Joy/Amusement/Excitement spill-over U(lo, hi)
    pain_joy_suppression: float = 0.2  # Joy (and Empathic Pain) *= U(0, this) when the other dominates

    # --- annotators and labels (latent.py) ---------------------------------------------
    n_annotator_pool: int = 24  # annotators in the pool; each clip is rated by a random subset
    annotators_per_clip: tuple[int, int] = (3, 10)  # N ~ U{lo..hi}
    rating_levels: int = 4  # K: a rating is k/K, k in 0..K
    perception_sd: float = 0.15  # per clip and emotion, shared by its annotators: delta ~ N(0, sd)
    annotator_bias_sd: float = 0.08  # per annotator and emotion, b ~ N(0, sd)
    annotator_noise_sd: tuple[float, float] = (0.12, 0.25)  # per annotator, sd ~ U(lo, hi)
    annotator_threshold: tuple[float, float] = (0.2, 0.4)  # per annotator, tau ~ U(lo, hi): below, rate 0

    # --- subjects (latent.py) ------------------------------------------------------------
    face_gain_sd: float = 0.10  # log-normal sd of the per-subject face expressivity gain
    voice_gain_sd: float = 0.10  # log-normal sd of the per-subject voice expressivity gain
    rest_face_sd: float = 0.05  # sd of the subject's resting action-unit offsets
    f0_range_hz: tuple[float, float] = (95.0, 240.0)  # subject base pitch ~ U(lo, hi)
    rate_range_sps: tuple[float, float] = (3.0, 5.5)  # subject syllables per second ~ U(lo, hi)

    # --- clips ---------------------------------------------------------------------------
    duration_median_s: float = 3.5  # duration ~ LogNormal(log(median), sigma), clipped
    duration_sigma: float = 0.3
    duration_range_s: tuple[float, float] = (2.0, 6.0)
    fps: int = 10  # video frame rate: 10 fps keeps demo generation fast; slow face envelopes
    # (onset/offset of 0.3-1.0 s) are still sampled by 3-10 frames.
    frame_size: int = 128  # rendered video frame, square, even; a multiple of 128 keeps libx264's
    # output byte-identical across processes (it reads past the row end of narrower chroma planes)
    crop_size: int = 96  # face crop written to face_images/, square, follows the head; face geometry
    # is drawn at crop_size / 96 scale
    jpeg_quality: int = 90
    crf: int = 23  # libx264 constant rate factor of raw/*.mp4

    # --- face channel (face.py) ------------------------------------------------------------
    # a_k(t) = rest_k + g_face * (W_face z)_k * env_k(t) + talk/distractor terms + noise_k(t)
    face_weights: tuple[tuple[float, ...], ...] = (
        (0.15, 0.60, 0.00, 0.00, 0.30, 1.00),  # smile
        (0.10, 0.65, 0.00, 0.00, 0.75, 0.15),  # mouth_open
        (0.20, 0.10, -0.10, 0.15, 0.70, 0.10),  # brow_raise
        (0.00, 0.00, 0.20, 0.18, 0.00, 0.00),  # brow_furrow
        (0.00, 0.00, 0.20, 0.07, 0.00, 0.00),  # lip_press
        (0.00, 0.00, 0.04, 0.25, 0.00, -0.10),  # lip_corner_depress
        (0.25, 0.00, 0.10, 0.00, 0.55, 0.05),  # eye_widen
        (0.05, 0.60, 0.10, 0.00, 0.45, 0.25),  # head_motion
    )
    face_clip_noise_sd: float = 0.04  # per clip and AU, added to (W_face z)_k
    face_frame_noise_sd: float = 0.05  # slow AR(1) noise per frame and AU
    face_distractor_p: float = 0.25  # probability of a z-independent polite smile / brow flash
    face_tension_p: float = 0.5  # probability of a z-independent frown, lip press or lip-corner pull
    face_tension_amp: tuple[float, float] = (0.1, 0.3)  # its amplitude ~ U(lo, hi), own slow envelope
    talk_mouth_gain: float = 0.25  # mouth opening follows the voice's syllable envelope
    pixel_noise_sd: float = 0.015  # sensor noise on every frame (0..1 scale)

    # --- voice channel (voice.py) ----------------------------------------------------------
    # P(unit type) ∝ neutral_weight, habit_s,type + g_voice * (W_unit z)_type  (units: wow, firm, sigh, laugh)
    voice_unit_weights: tuple[tuple[float, ...], ...] = (
        (3.00, 0.00, 0.00, 0.00, 0.50, 0.00),  # wow: rising-falling long vowel
        (0.00, 0.00, 3.00, 0.00, 0.00, 0.00),  # firm: run of loud, flat, isochronous syllables
        (0.00, 0.00, 0.00, 3.00, 0.00, 0.00),  # sigh: long breathy falling exhalation
        (0.00, 0.35, 0.00, 0.00, 0.00, 0.15),  # laugh: burst of short high breathy pulses
    )
    voice_neutral_weight: float = 0.4  # weight of a neutral speech syllable
    voice_habit_scale: float = 0.06  # per subject and unit type, a z-independent weight ~ Exp(scale)
    # clip prosody c = W_prosody z (scaled by g_voice)
    voice_prosody_weights: tuple[tuple[float, ...], ...] = (
        (0.50, 0.30, 0.00, -1.50, 2.00, 0.30),  # pitch level, semitones
        (0.00, 0.00, 6.00, -4.00, 2.00, 0.00),  # energy, dB
        (0.00, 0.10, 0.10, -0.30, 0.25, 0.05),  # tempo factor - 1
        (0.25, 0.00, -0.10, 0.50, 0.00, 0.00),  # breathiness (noise share)
        (0.00, 0.00, 0.00, 0.80, 0.00, 0.00),  # tremor depth, semitones
    )
    voice_prosody_noise_sd: tuple[float, ...] = (0.7, 1.0, 0.04, 0.03, 0.05)  # per clip, per prosody row
    voice_level_dbfs: float = -20.0  # RMS level of the vocalization before corruption
    recording_gain_sd_db: float = 1.5  # per clip recording level ~ N(0, sd) dB on top of the energy cue
    noise_floor_dbfs: float = -58.0  # room tone under every clip (and all of a silent one)

    # --- text channel (transcript.py) ------------------------------------------------------
    # P(phrase from bank e) ∝ g_text * w_e z_e ; P(filler) ∝ text_filler_weight
    text_weights: tuple[float, ...] = (2.5, 0.3, 2.5, 2.5, 0.3, 0.3)
    text_filler_weight: float = 0.7
    phrases_per_second: float = 0.45  # n phrases ~ 1 + Poisson(rate * duration), capped
    max_phrases: int = 4
    asr_drop_per_severity: float = 0.5  # word drop probability = this * audio severity

    # --- corruptions (corrupt.py): shares of clips, per modality mutually exclusive ---------
    occlusion_rate: float = 0.15  # face: rectangle over part of the face on a contiguous span
    missing_frames_rate: float = 0.06  # face: the face turns away, no crop for a span of frames
    no_face_rate: float = 0.03  # face: no usable face in the whole clip (empty face_images/)
    noise_rate: float = 0.15  # audio: additive noise at an SNR drawn from noise_snr_db
    clipping_rate: float = 0.04  # audio: overdriven and hard-clipped
    dropout_rate: float = 0.05  # audio: zeroed segments
    missing_audio_rate: float = 0.03  # audio: no mp3 file at all (and no transcript)
    silent_rate: float = 0.04  # audio: no vocalization, only the noise floor (empty transcript)
    noise_snr_db: tuple[float, float] = (-6.0, 12.0)  # SNR ~ U(lo, hi) dB; severity = clip((20 - SNR)/30, 0, 1)
    occlusion_share: tuple[float, float] = (0.4, 1.0)  # share of frames occluded ~ U(lo, hi)
    missing_share: tuple[float, float] = (0.3, 0.7)  # share of frames without face ~ U(lo, hi)
    dropout_share: tuple[float, float] = (0.2, 0.5)  # share of samples zeroed ~ U(lo, hi)
    min_rare_per_split: int = 1  # force at least this many no_face / missing / silent clips per split

    # ------------------------------------------------------------------------------------
    @property
    def n_total(self) -> int:
        return self.n_train + self.n_valid + self.n_test

    def split_ids(self) -> dict[str, range]:
        """Ids per split: train 0.., valid next, test after valid (like the real data)."""
        a, b = self.n_train, self.n_train + self.n_valid
        return {"train": range(0, a), "valid": range(a, b), "test": range(b, b + self.n_test)}

    def validate(self) -> SynthConfig:
        if self.frame_size % 2 or self.crop_size % 2 or self.crop_size > self.frame_size:
            raise ValueError("frame_size and crop_size must be even and crop_size <= frame_size")
        if min(self.n_train, self.n_valid, self.n_test) < 2:
            raise ValueError("every split needs at least 2 clips")
        face = self.occlusion_rate + self.missing_frames_rate + self.no_face_rate
        audio = (self.noise_rate + self.clipping_rate + self.dropout_rate
                 + self.missing_audio_rate + self.silent_rate)
        for name, total in (("face", face), ("audio", audio)):
            if total > 1.0 + 1e-9:
                raise ValueError(f"{name} corruption rates sum to {total:.3f} > 1")
        rates = [getattr(self, f.name) for f in fields(self) if f.name.endswith("_rate")]
        if any(r < 0 for r in rates):
            raise ValueError("corruption rates must be >= 0")
        return self

    @classmethod
    def from_profile(cls, profile: str = "demo", seed: int = 0, occlusion_rate: float | None = None,
                     noise_rate: float | None = None, **overrides) -> SynthConfig:
        """The config of a profile (``smoke``, ``demo``, ``bench``) with optional overrides.

        ``occlusion_rate`` / ``noise_rate`` replace the profile's face-occlusion and
        audio-noise rates; any other field can be overridden by name.
        """
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
        kw = dict(PROFILES[profile])
        kw.update(overrides)
        if occlusion_rate is not None:
            kw["occlusion_rate"] = float(occlusion_rate)
        if noise_rate is not None:
            kw["noise_rate"] = float(noise_rate)
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown SynthConfig field(s): {sorted(unknown)}")
        return cls(profile=profile, seed=int(seed), **kw).validate()

    def replace(self, **changes) -> SynthConfig:
        return replace(self, **changes).validate()

    def to_dict(self) -> dict:
        return asdict(self)


#: Profile name -> field overrides of :class:`SynthConfig`.
PROFILES: dict[str, dict] = {
    # ~48 clips in a few seconds: tests and notebook smoke runs
    "smoke": dict(n_train=24, n_valid=12, n_test=12, n_subjects=10, duration_median_s=2.8,
                  duration_range_s=(2.0, 4.0)),
    # ~600 clips, the default of `make demo` (target: <= 60 s on 2 cores)
    "demo": dict(n_train=300, n_valid=150, n_test=150, n_subjects=40),
    # ~2,000 clips for benchmarks and ablations
    "bench": dict(n_train=1000, n_valid=500, n_test=500, n_subjects=100),
}
