"""Atomic checkpoint files, strict weights-only loading, and a clear error on a mismatched model.

- **Atomic writes**: every file goes to ``<name>.tmp`` in the same folder, is flushed and fsynced,
  then :func:`os.replace` puts it in place. A run killed while writing leaves the previous complete
  file, never a truncated one.
- **Safe loads**: ``torch.load(weights_only=True)`` always (a checkpoint holds tensors, numbers,
  strings, lists and dicts only; no pickled objects), and ``load_state_dict(strict=True)`` always.
- **Mismatch**: before loading, the checkpoint's keys and shapes are compared with the model's;
  any difference raises :class:`CheckpointMismatchError` listing the missing keys, the unexpected
  keys and the shape mismatches (the usual cause: a checkpoint of another ``EMIModelConfig``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint's parameters do not match the model it is loaded into."""


def _atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, then ``os.replace`` (atomic on POSIX)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _atomic_write_bytes(buf.getvalue(), path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (temp file, then ``os.replace``)."""
    return _atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj, path: str | os.PathLike) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``; a missing file raises ``FileNotFoundError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def state_dict_mismatch(model: nn.Module, state: dict) -> dict:
    """``{"missing": [...], "unexpected": [...], "shape": ["key: ckpt (a, b) vs model (c, d)", ...]}``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` with a readable error on any key or shape mismatch."""
    diff = state_dict_mismatch(model, state)
    if any(diff.values()):
        parts = []
        for name, items in (("missing keys", diff["missing"]), ("unexpected keys", diff["unexpected"]),
                            ("shape mismatches", diff["shape"])):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{name} {items[:5]}{more}")
        raise CheckpointMismatchError(
            f"{source} does not match the model ({type(model).__name__}): " + "; ".join(parts)
            + ". Was it written for another model config? Build the model from the checkpoint's own config."
        )
    model.load_state_dict(state, strict=True)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (else the model)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
