"""Safe loading of pre-extracted feature arrays (``.pkl``, ``.npy``, ``.npz``, ``.pt``).

``pickle.load`` on a file from someone else runs whatever code the file names: a pickle is a
program for a stack machine whose ``GLOBAL``/``REDUCE`` opcodes import and call any function
(``os.system``, ``builtins.eval``, ...). The challenge's features are pickles, so this module
reads them through :class:`RestrictedUnpickler`, whose ``find_class`` admits only the few
globals needed to rebuild numpy arrays and torch tensors (see :data:`ALLOWED_GLOBALS`) and
refuses everything else *before* anything is called, with :class:`DataError` kind ``"unsafe"``.

``torch.storage._load_from_bytes``, which ``pickle.dumps(tensor)`` references, itself calls
``torch.load(..., weights_only=False)`` -- an unrestricted unpickler. It is therefore never
admitted as is: it is replaced by :func:`_load_storage_bytes`, which loads the same bytes with
``weights_only=True``.

Container rule (:func:`pick_array`): a file may hold
1. an array or tensor;
2. a dict: the value under the first of :data:`FEATURE_KEYS` present
   (``features``, ``feature``, ``feats``, ``feat``, ``embedding``, ``embeddings``); if none of
   those keys is present, its one array-like value; several array-like values -> ambiguous;
3. a list/tuple: its one element if it has exactly one; else, when every element is a 1-D array
   (or tensor) of the same length D, they are per-frame vectors stacked to ``(T, D)``;
   anything else is ambiguous.
Ambiguity is an error (kind ``"ambiguous"``), never a guess.

Shape rule: the result is float32 ``(T, D)``; a leading singleton axis ``(1, T, D)`` is squeezed;
a 1-D ``(D,)`` vector is an error kind ``"rank"`` (a pooled clip vector is not a sequence, and
reading it as ``(1, D)`` or ``(D, 1)`` would be a guess); ``T == 0`` or ``D == 0`` -> ``"empty"``;
NaN/inf -> ``"nonfinite"`` (one NaN poisons every pooled statistic and gradient downstream).
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np

from emi_lib.data.errors import DataError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

#: Keys of a dict container taken as the feature array, in priority order.
FEATURE_KEYS: tuple[str, ...] = ("features", "feature", "feats", "feat", "embedding", "embeddings")

_MAX_DEPTH = 4


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``encode(str, 'latin1')``);
    only that text->bytes use is admitted (other codecs can decompress zip bombs)."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "latin"):
        raise _Refused(f"_codecs.encode with encoding {encoding!r} (only str -> latin1 is admitted)")
    return obj.encode("latin1", errors)


def _load_storage_bytes(b: bytes):
    """Stand-in for ``torch.storage._load_from_bytes`` that loads with ``weights_only=True``."""
    import torch

    if not isinstance(b, bytes | bytearray):
        raise pickle.UnpicklingError("torch storage payload is not bytes")
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


def _numpy_globals() -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _multiarray._reconstruct
        out[(mod, "scalar")] = _multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = _numeric._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    out[("_codecs", "encode")] = _safe_codecs_encode
    out[("collections", "OrderedDict")] = OrderedDict
    return out


def _torch_globals() -> dict[tuple[str, str], object]:
    try:
        import torch
        import torch._utils as tu
    except ImportError:  # pragma: no cover - torch is a dependency
        return {}
    out: dict[tuple[str, str], object] = {
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): tu._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("torch", "Size"): torch.Size,
    }
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            out[("torch", name)] = obj
    return out


_ALLOWED: dict[tuple[str, str], object] | None = None


def allowed_globals() -> dict[tuple[str, str], object]:
    """``{(module, name): object}`` that :class:`RestrictedUnpickler` admits (built once)."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = {**_numpy_globals(), **_torch_globals()}
    return _ALLOWED


#: For documentation: the ``module.name`` globals a feature pickle may reference.
ALLOWED_GLOBALS: tuple[str, ...] = (
    "numpy.core.multiarray._reconstruct / numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar / numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer / numpy._core.numeric._frombuffer (protocol 5)",
    "numpy.ndarray, numpy.dtype, collections.OrderedDict",
    "_codecs.encode (str -> latin1 only; protocol 2 bytes)",
    "torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter, torch.Size, torch dtypes",
    "torch.storage._load_from_bytes (replaced by a weights_only=True loader)",
)


def _weights_only_failure(msg: str) -> tuple[str, str]:
    """(kind, reason) from torch's "Weights only load failed" message: a refused GLOBAL is
    ``unsafe``; anything else (not a zip, bad opcode) is ``unreadable``."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "GLOBAL" in ln), None)
    if reason is not None:
        return "unsafe", reason
    tail = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Please file", "Check the"))]
    return "unreadable", (tail[-1] if tail else lines[0] if lines else "unknown error")[:300]


class _Refused(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`allowed_globals`; anything else raises before it
    is imported, let alone called. Plain containers (dict, list, tuple, str, bytes, numbers)
    need no globals and load natively. Persistent ids are refused."""

    def find_class(self, module: str, name: str):
        obj = allowed_globals().get((module, name))
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def restricted_loads(data: bytes, path: str | os.PathLike | None = None):
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; refused globals -> DataError ``unsafe``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused as err:
        raise DataError(path, f"refused to unpickle: it references {err.what}, which is not an "
                              "array or tensor global (a pickle can run arbitrary code)", kind="unsafe") from None
    except DataError:
        raise
    except Exception as err:  # UnpicklingError, EOFError, ValueError, TypeError, ...
        msg = str(err)
        if "Weights only load failed" in msg:
            kind, reason = _weights_only_failure(msg)
            raise DataError(path, f"torch storage payload refused by torch.load(weights_only=True): {reason}",
                            kind=kind) from None
        raise DataError(path, f"unreadable pickle ({type(err).__name__}: {msg[:200]})", kind="unreadable") from err


def _is_arraylike(x) -> bool:
    if isinstance(x, np.ndarray):
        return True
    try:
        import torch

        return isinstance(x, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import torch

    t = x.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def pick_array(obj, path: str | os.PathLike | None = None, _depth: int = 0):
    """The feature array inside a loaded container, by the rule in the module docstring."""
    if _is_arraylike(obj):
        return obj
    if _depth >= _MAX_DEPTH:
        raise DataError(path, "container nested too deeply to find a feature array", kind="ambiguous")
    if isinstance(obj, dict):
        for key in FEATURE_KEYS:
            if key in obj:
                return pick_array(obj[key], path, _depth + 1)
        arrays = [k for k, v in obj.items() if _is_arraylike(v)]
        if len(arrays) == 1:
            return obj[arrays[0]]
        if not arrays:
            if len(obj) == 1:
                return pick_array(next(iter(obj.values())), path, _depth + 1)
            raise DataError(path, f"dict with keys {list(obj)[:10]} holds no array", kind="ambiguous")
        raise DataError(path, f"dict holds several arrays {arrays[:10]} and none under a key in "
                              f"{FEATURE_KEYS}: ambiguous", kind="ambiguous")
    if isinstance(obj, list | tuple):
        if len(obj) == 1:
            return pick_array(obj[0], path, _depth + 1)
        if obj and all(_is_arraylike(v) and len(v.shape) == 1 for v in obj):
            lengths = {int(v.shape[0]) for v in obj}
            if len(lengths) == 1:
                return np.stack([_to_numpy(v) for v in obj])
        raise DataError(path, f"{type(obj).__name__} of {len(obj)} items is neither one array nor "
                              "equal-length per-frame vectors: ambiguous", kind="ambiguous")
    raise DataError(path, f"holds a {type(obj).__name__}, not a feature array", kind="invalid")


def as_feature_matrix(x, path: str | os.PathLike | None = None) -> np.ndarray:
    """Validate and convert an array/tensor to C-contiguous float32 ``(T, D)`` (shape rule above)."""
    arr = _to_numpy(x)
    if arr.dtype == object or arr.dtype.kind in "cSUV":
        raise DataError(path, f"feature array has dtype {arr.dtype}, not a real number type", kind="dtype")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        hint = " (one vector per clip; features must be per frame/step, (T, D))" if arr.ndim == 1 else ""
        raise DataError(path, f"feature array has shape {tuple(arr.shape)}, expected 2-D (T, D){hint}",
                        kind="rank")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(path, f"feature array has shape {tuple(arr.shape)}: no frames/dims", kind="empty")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(path, f"feature array {tuple(out.shape)} has {int(bad.sum())} NaN/inf values "
                              f"(first at {first})", kind="nonfinite")
    return out


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Float32 ``(T, D)`` features from ``.pkl``/``.pickle`` (restricted unpickler), ``.npy``
    (``allow_pickle=False``), ``.npz`` (container rule over its arrays) or ``.pt``/``.pth``
    (``torch.load(weights_only=True, map_location="cpu")``). D is whatever the file holds.

    Raises :class:`DataError`: ``missing``, ``empty`` (0 bytes, T or D == 0), ``unsafe`` (a pickle
    referencing anything but array/tensor globals), ``unreadable``, ``ambiguous``, ``rank``,
    ``dtype``, ``nonfinite``.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "feature file does not exist", kind="missing")
    if p.stat().st_size == 0:
        raise DataError(p, "zero-length feature file (0 bytes)", kind="empty")
    ext = p.suffix.lower()
    if ext in (".pkl", ".pickle"):
        obj = restricted_loads(p.read_bytes(), p)
    elif ext in (".npy", ".npz"):
        try:
            loaded = np.load(p, allow_pickle=False)
        except ValueError as err:
            kind = "unsafe" if "allow_pickle" in str(err) else "unreadable"
            raise DataError(p, f"cannot load without pickle ({err})", kind=kind) from err
        except Exception as err:
            raise DataError(p, f"unreadable array file ({type(err).__name__}: {err})", kind="unreadable") from err
        if ext == ".npz":
            try:
                obj = {k: loaded[k] for k in loaded.files}
            except ValueError as err:
                raise DataError(p, f"npz member needs pickle ({err})", kind="unsafe") from err
            finally:
                loaded.close()
        else:
            obj = loaded
    elif ext in (".pt", ".pth"):
        import torch

        try:
            obj = torch.load(p, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as err:
            kind, reason = _weights_only_failure(str(err))
            raise DataError(p, f"torch.load(weights_only=True) refused it: {reason}", kind=kind) from None
        except Exception as err:
            raise DataError(p, f"unreadable torch file ({type(err).__name__}: {err})", kind="unreadable") from err
    else:
        raise DataError(p, f"unknown feature file type {ext!r} (expected .pkl, .npy, .npz, .pt)", kind="invalid")
    return as_feature_matrix(pick_array(obj, p), p)
