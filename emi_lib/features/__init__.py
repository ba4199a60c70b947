"""Feature backbones and the text each clip contributes.

``load_backbone(modality, name, device)`` -> an encoder named by a config string; the names,
dims and frame rates are tabulated in :mod:`emi_lib.features.backbones` (vision, audio) and
:mod:`emi_lib.features.text` (text encoders, label prompts). :data:`BACKBONES` lists the valid
name patterns per modality.

Attributes are imported lazily (PEP 562), so ``import emi_lib.features.summary`` or
``emi_lib.features.store`` does not pay for torch, open_clip or transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS: dict[str, str] = {
    "load_backbone": "emi_lib.features.backbones",
    "BACKBONES": "emi_lib.features.backbones",
    "MODALITIES": "emi_lib.features.backbones",
    "TEXT_SOURCES": "emi_lib.features.text",
    "PROMPT_TEMPLATES": "emi_lib.features.text",
    "INTENSITY_WORDS": "emi_lib.features.text",
    "label_prompt": "emi_lib.features.text",
    "clip_text": "emi_lib.features.text",
    "WeightsUnavailableError": "emi_lib.features.weights",
    "hub_offline": "emi_lib.features.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
