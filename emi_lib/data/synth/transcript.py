r"""Text channel: a transcript assembled from phrase banks whose choice depends on z.

n phrases ~ 1 + Poisson(phrases_per_second * duration), at most ``max_phrases``; each phrase
comes from bank e with

.. math:: P(e) \propto g^{text}_s\, w_e\, z_e, \qquad P(\text{filler}) \propto w_{filler}

(config ``text_weights``: large for Admiration, Determination, Empathic Pain, small for the
others, so text mostly carries the voice-dominant emotions). Banks overlap on purpose
("oh my god", "wow", "yes" appear in more than one bank). An intensifier ("really", "so") is
added with probability z_e. A silent clip or a clip without audio has an empty transcript (it
would come from speech recognition); noisy, clipped or cut audio drops words with probability
``asr_drop_per_severity * severity`` (recognition errors).
"""

from __future__ import annotations

import numpy as np

from emi_lib.constants import EMOTIONS
from emi_lib.data.synth.config import SynthConfig

BANKS: dict[str, tuple[str, ...]] = {
    "Admiration": (
        "wow that is beautiful", "oh my god look at that", "that is truly amazing", "how impressive",
        "i really admire that", "what a wonderful thing to see", "that is incredible work", "so graceful",
        "respect to them", "that is stunning", "wow just wow", "i am in awe",
    ),
    "Amusement": (
        "haha that is funny", "oh that is hilarious", "that made me laugh", "so silly",
        "what a goofy thing", "haha no way", "that is ridiculous", "lol",
    ),
    "Determination": (
        "i can do this", "let us go", "we will not give up", "come on keep going", "i will make it",
        "no matter what", "yes we can do it", "focus and push", "nothing will stop me", "one more time",
        "i have got this", "stay strong",
    ),
    "Empathic Pain": (
        "oh no that hurts", "that is so sad", "i feel so sorry for them", "oh my god poor thing",
        "that must be painful", "it breaks my heart", "oh no no no", "i can not watch this",
        "that is terrible", "i hope they are okay", "so much pain", "how awful",
    ),
    "Excitement": (
        "yes this is awesome", "oh wow let us go", "i can not wait", "this is so exciting",
        "woo here we go", "yes yes yes", "that is epic",
    ),
    "Joy": (
        "i am so happy", "this is lovely", "what a nice day", "that makes me smile",
        "i love it", "so good", "this is great",
    ),
}

FILLERS: tuple[str, ...] = (
    "okay", "um", "so", "well", "i mean", "you know", "like", "right", "hmm", "uh", "alright",
    "i guess", "let me see", "and then", "that is the video",
)

INTENSIFIERS: tuple[str, ...] = ("really", "so", "very", "oh")


def make_transcript(cfg: SynthConfig, z: np.ndarray, text_gain: float, duration: float,
                    audio_corruption: str, audio_severity: float, rng: np.random.Generator) -> str:
    """The transcript of one clip ('' when no speech was recorded)."""
    # draw everything first, so the corruption only removes words and never changes the draw
    n = int(min(cfg.max_phrases, 1 + rng.poisson(cfg.phrases_per_second * duration)))
    w = text_gain * np.asarray(cfg.text_weights) * z
    probs = np.concatenate([w, [cfg.text_filler_weight]])
    probs /= probs.sum()
    words: list[str] = []
    for _ in range(n):
        src = int(rng.choice(7, p=probs))
        if src == 6:
            phrase = FILLERS[int(rng.integers(len(FILLERS)))]
        else:
            bank = BANKS[EMOTIONS[src]]
            phrase = bank[int(rng.integers(len(bank)))]
            if rng.random() < z[src] * 0.8:
                phrase = f"{INTENSIFIERS[int(rng.integers(len(INTENSIFIERS)))]} {phrase}"
        words.extend(phrase.split())
    keep = rng.random(len(words))
    if audio_corruption in ("silent", "missing"):
        return ""
    p_drop = cfg.asr_drop_per_severity * audio_severity if audio_corruption != "none" else 0.0
    return " ".join(wd for wd, k in zip(words, keep) if k >= p_drop)
