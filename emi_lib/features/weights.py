"""Where backbone weights come from: local paths, the user's caches, or (only when online) a hub.

Shared by :mod:`emi_lib.features.backbones` (vision, audio) and :mod:`emi_lib.features.text`.

Rules
-----
- A name that is an existing local path is loaded from that path and never touches the network.
- A hub name (``facebook/wav2vec2-base-960h``, an open_clip pretrained tag) is first looked up in
  the local caches only. If it is not cached and the hub is offline (``HF_HUB_OFFLINE`` or
  ``TRANSFORMERS_OFFLINE`` set, as in the tests and on the build machines), a
  :class:`WeightsUnavailableError` names the backbone and says how to supply the weights as a
  path. If it is not cached and the hub is online, the download is logged (a warning) and made:
  that is the normal path on a user's machine. Nothing is downloaded silently.
- The tiny random-init backbones (``openclip-tiny``, ``wav2vec2-tiny``) are built in code under
  :func:`seeded`, a forked RNG with a fixed seed, so the same name always gives the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Seed of every tiny random-init backbone (same name -> same weights -> same features).
TINY_SEED: int = 0

#: open_clip architecture name under which the tiny config is registered, so that
#: ``openclip:EMI-Tiny-ViT/<checkpoint file>`` resolves through open_clip's own factory.
TINY_OPENCLIP_MODEL: str = "EMI-Tiny-ViT"

#: The tiny open_clip config: a 2-layer ViT (64x64 input, 8x8 patches, width 64, 2 heads) and a
#: 2-layer text transformer (width 64, 2 heads, 32-token context, open_clip's BPE vocabulary),
#: both projected to a 64-d joint space. About 3.4 M parameters, 3.2 M of them the token table.
TINY_OPENCLIP_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_TRUE = {"1", "ON", "YES", "TRUE"}


class WeightsUnavailableError(OSError):
    """A backbone's weights are neither a local path nor cached, and the hub cannot be used."""


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (env read at call time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _unavailable(backbone: str, what: str, how: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"backbone {backbone!r}: {what} is not available locally and the Hugging Face hub is offline "
        f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE), so nothing can be downloaded. {how}"
    )


def looks_like_path(name: str) -> bool:
    """A string meant as a file-system path rather than a hub id (``org/name`` has one slash)."""
    return (
        os.path.exists(name)
        or name.startswith(("/", "./", "../", "~", "\\"))
        or name.count("/") > 1
        or (len(name) > 1 and name[1] == ":")
    )


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED):
    """Run a block with the CPU RNG forked and seeded; the caller's RNG state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------
def hf_from_pretrained(cls, name_or_path: str, backbone: str, **kwargs):
    """``cls.from_pretrained`` that never downloads silently (see the module docstring)."""
    if os.path.isdir(name_or_path):
        return cls.from_pretrained(name_or_path, **kwargs)
    if looks_like_path(name_or_path):
        raise WeightsUnavailableError(
            f"backbone {backbone!r}: {name_or_path!r} looks like a path but is not a directory; "
            "give the folder written by save_pretrained (config.json, weights, preprocessor/tokenizer files)"
        )
    try:
        return cls.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError as err:
        if hub_offline():
            raise _unavailable(
                backbone,
                f"the Hugging Face model {name_or_path!r}",
                "Download it on a machine with network access (e.g. `huggingface-cli download "
                f"{name_or_path} --local-dir DIR`) and name the folder instead, e.g. 'hf:DIR' / 'hf-text:DIR'.",
            ) from err
    log.warning("backbone %r: downloading %r from the Hugging Face hub", backbone, name_or_path)
    return cls.from_pretrained(name_or_path, **kwargs)


# --------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------
def register_tiny_openclip() -> None:
    """Make :data:`TINY_OPENCLIP_MODEL` resolvable by name in open_clip's model-config registry.

    open_clip 3.3.0's public hook, :func:`open_clip.add_model_config`, takes a JSON file or folder
    and rescans; the config lives here in code, so it is written once per process to a private
    temporary folder, registered from there (open_clip reads it at once) and removed. Idempotent.
    """
    import json
    import tempfile

    import open_clip

    if TINY_OPENCLIP_MODEL in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory(prefix="emi_openclip_cfg_") as folder:  # read at once, then removed
        path = Path(folder) / f"{TINY_OPENCLIP_MODEL}.json"
        path.write_text(json.dumps(TINY_OPENCLIP_CFG))
        open_clip.add_model_config(path)
    if TINY_OPENCLIP_MODEL not in open_clip.list_models():  # pragma: no cover - open_clip API change
        raise RuntimeError(f"could not register {TINY_OPENCLIP_MODEL} with open_clip")


def split_openclip_spec(spec: str, backbone: str) -> tuple[str, str | None]:
    """``'<model>/<pretrained>'`` -> (model, pretrained); the tag may itself be a path with '/'.

    ``hf-hub:org/repo`` and ``local-dir:/path`` are open_clip schema names that carry their own
    weights: returned whole with ``pretrained=None``.
    """
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    model, sep, pretrained = spec.partition("/")
    if not model or not sep or not pretrained:
        raise ValueError(
            f"backbone {backbone!r}: expected '<model>/<pretrained tag or checkpoint path>' after the "
            "prefix, e.g. 'openclip:ViT-B-32/openai' or 'openclip:ViT-B-32//abs/path/ckpt.pt'"
        )
    return model, pretrained


def _openclip_tag_cached(tag_cfg: dict, cache_dir: str | None = None) -> bool:
    """Whether the weights file of an open_clip pretrained tag is already on this machine."""
    if "file" in tag_cfg:
        return os.path.isfile(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: 'org/repo/file.ext', or 'org/repo/' for its default file name;
        # a .safetensors twin is preferred when present.
        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for cand in candidates:
            hit = try_to_load_from_cache(repo, cand, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return True
    url = tag_cfg.get("url", "")
    if url:
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        return os.path.isfile(os.path.join(folder, os.path.basename(url)))
    return False


def load_openclip(model_name: str, pretrained: str | None, backbone: str, device: str = "cpu"):
    """An open_clip model, its inference preprocess (a PIL -> tensor transform) and tokenizer.

    This is the single loading path for downloaded weights, cached weights and local checkpoint
    files: ``open_clip.create_model_and_transforms(model_name, pretrained=tag_or_path)``.
    ``pretrained=None`` with :data:`TINY_OPENCLIP_MODEL` builds the seeded random-init tiny model.
    For a tag whose weights were trained with QuickGELU (e.g. OpenAI's), ``force_quick_gelu`` is
    set so the activation matches the weights.
    """
    import open_clip

    register_tiny_openclip()
    kwargs: dict = {}
    clean = model_name.replace("/", "-")
    if model_name.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo = model_name[len("hf-hub:"):]
        cached = try_to_load_from_cache(repo, "open_clip_config.json")
        if not (isinstance(cached, str) and os.path.isfile(cached)) and hub_offline():
            raise _unavailable(backbone, f"the open_clip hub model {repo!r}",
                               "Download the repo elsewhere and use 'openclip:local-dir:<folder>'.")
    elif not model_name.startswith("local-dir:"):
        if clean not in open_clip.list_models():
            raise ValueError(f"backbone {backbone!r}: open_clip has no architecture {model_name!r} "
                             f"(e.g. {', '.join(open_clip.list_models()[:6])}, ...; see open_clip.list_models())")
        if pretrained is not None and not os.path.isfile(pretrained):
            tag_cfg = open_clip.pretrained.get_pretrained_cfg(clean, pretrained)
            if not tag_cfg:
                raise ValueError(
                    f"backbone {backbone!r}: {pretrained!r} is neither an existing checkpoint file nor a "
                    f"pretrained tag of {model_name} (tags: {open_clip.list_pretrained_tags_by_model(clean)})"
                )
            if tag_cfg.get("quick_gelu", False):
                kwargs["force_quick_gelu"] = True
            if not _openclip_tag_cached(tag_cfg):
                if hub_offline():
                    raise _unavailable(
                        backbone, f"open_clip weights {model_name}/{pretrained}",
                        "Download them on a machine with network access (open_clip caches them under "
                        "~/.cache/huggingface or ~/.cache/clip) and copy the cache, or name the checkpoint "
                        f"file instead: 'openclip:{model_name}/<path to .pt/.bin/.safetensors>'.",
                    )
                log.warning("backbone %r: downloading open_clip weights %s/%s", backbone, model_name, pretrained)
    if pretrained is None and model_name == TINY_OPENCLIP_MODEL:
        with seeded():
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
    tokenizer = open_clip.get_tokenizer(model_name)
    model = model.to(device).eval()
    return model, preprocess, tokenizer


def tiny_openclip_cfg() -> dict:
    """A copy of :data:`TINY_OPENCLIP_CFG` (for docs and tests)."""
    return copy.deepcopy(TINY_OPENCLIP_CFG)
