"""load_features: the restricted unpickler refuses code, admits arrays/tensors, validates shape."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from emi_lib.data import DataError, load_features
from emi_lib.data.safe_load import restricted_loads


def _dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _unsafe(path, refused: str | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        load_features(path)
    err = info.value
    assert err.kind == "unsafe", str(err)
    assert str(path) in str(err)
    if refused:
        assert refused in str(err)
    return err


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker writes into a .pkl."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# --------------------------------------------------------------------------------- malicious
def test_malicious_os_system_does_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)))
    # the payload is live: plain pickle would run it
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "00001.pkl"
    path.write_bytes(payload)
    err = _unsafe(path)
    assert "system" in str(err)  # names the refused global (posix.system on Linux)
    assert not marker.exists()


@pytest.mark.parametrize(
    "func,args,refused",
    [
        (builtins.eval, ("__import__('pathlib').Path('{m}').touch()",), "builtins.eval"),
        (builtins.exec, ("open('{m}', 'w').close()",), "builtins.exec"),
        (builtins.open, ("{m}", "w"), "io.open"),
        (subprocess.call, (["touch", "{m}"],), "subprocess.call"),
    ],
)
def test_malicious_globals_refused(tmp_path, func, args, refused):
    marker = tmp_path / "MARKER"
    args = tuple([a.format(m=marker) for a in x] if isinstance(x, list) else x.format(m=marker) for x in args)
    path = _dump(tmp_path / "bad.pkl", {"features": np.zeros((2, 3)), "x": _Reduce(func, args)})
    _unsafe(path, refused if refused != "io.open" else "open")
    assert not marker.exists()


def test_malicious_payload_inside_torch_storage_bytes(tmp_path):
    """torch.storage._load_from_bytes calls torch.load(weights_only=False); ours must not."""
    import torch.storage

    marker = tmp_path / "MARKER"
    inner = io.BytesIO()
    torch.save(_Reduce(os.system, (f"touch {marker}",)), inner)
    path = _dump(tmp_path / "bad.pkl", _Reduce(torch.storage._load_from_bytes, (inner.getvalue(),)))
    _unsafe(path)
    assert not marker.exists()


def test_codecs_encode_only_latin1(tmp_path):
    import _codecs

    path = _dump(tmp_path / "bad.pkl", _Reduce(_codecs.encode, (b"x" * 10, "zlib_codec")), protocol=2)
    _unsafe(path, "zlib_codec")


def test_npy_object_array_and_pt_code_refused(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[:] = [np.zeros(3), np.ones(3)]
    path = tmp_path / "obj.npy"
    np.save(path, obj, allow_pickle=True)
    _unsafe(path)
    marker = tmp_path / "MARKER"
    pt = tmp_path / "bad.pt"
    torch.save({"features": torch.zeros(2, 3), "x": _Reduce(os.system, (f"touch {marker}",))}, pt)
    _unsafe(pt)
    assert not marker.exists()


# --------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickle_round_trip(tmp_path, protocol):
    arr = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    out = load_features(_dump(tmp_path / "a.pkl", arr, protocol))
    assert out.dtype == np.float32 and np.array_equal(out, arr)
    out64 = load_features(_dump(tmp_path / "b.pkl", arr.astype(np.float64), protocol))
    assert out64.dtype == np.float32 and np.allclose(out64, arr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_tensor_pickle_round_trip(tmp_path, dtype):
    t = torch.randn(6, 4).to(dtype)
    out = load_features(_dump(tmp_path / "t.pkl", t))
    assert out.dtype == np.float32 and np.allclose(out, t.float().numpy())
    view = torch.randn(10, 4)[3:8]  # a view with a storage offset
    assert np.array_equal(load_features(_dump(tmp_path / "v.pkl", view)), view.numpy())
    p = torch.nn.Parameter(torch.randn(3, 2))
    assert np.allclose(load_features(_dump(tmp_path / "p.pkl", p)), p.detach().numpy())


def test_containers(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    cases = {
        "features": {"features": a, "other": a + 1},
        "feat": {"feat": torch.from_numpy(a), "fps": 25},
        "single": {"whatever": a, "name": "clip 1", "n": 4},
        "list1": [a],
        "tuple_frames": tuple(a),  # per-frame vectors
        "frames_torch": [torch.from_numpy(r) for r in a],
        "leading1": a[None],
        "nested": {"data": {"embedding": a}},
    }
    for name, obj in cases.items():
        out = load_features(_dump(tmp_path / f"{name}.pkl", obj))
        assert np.array_equal(out, a), name


def test_npy_npz_pt(tmp_path):
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "a.npz", features=a, lengths=np.array([3]))
    torch.save(torch.from_numpy(a), tmp_path / "a.pt")
    torch.save({"embedding": torch.from_numpy(a)}, tmp_path / "b.pt")
    for name in ("a.npy", "a.npz", "a.pt", "b.pt"):
        assert np.array_equal(load_features(tmp_path / name), a), name


def test_restricted_loads_direct():
    assert restricted_loads(pickle.dumps({"a": [1, 2.0, "x", (None,)]})) == {"a": [1, 2.0, "x", (None,)]}


# --------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "obj,kind,text",
    [
        (np.array([[0.0, np.nan], [1, 2]]), "nonfinite", "NaN/inf"),
        (np.array([[0.0, np.inf]]), "nonfinite", "NaN/inf"),
        (np.zeros(768), "rank", "(768,)"),
        (np.zeros((2, 3, 4)), "rank", "(2, 3, 4)"),
        (np.zeros((0, 768)), "empty", "(0, 768)"),
        (np.zeros((5, 0)), "empty", "(5, 0)"),
        ({"a": np.zeros((2, 2)), "b": np.zeros((2, 2))}, "ambiguous", "ambiguous"),
        ([np.zeros((2, 2)), np.zeros((3, 2))], "ambiguous", "ambiguous"),
        ({"meta": {"x": 1}, "data": {"embedding": np.zeros((2, 2))}}, "ambiguous", "holds no array"),
        ("just text", "invalid", "str"),
        (np.array([["a", "b"]]), "dtype", "dtype"),
    ],
)
def test_bad_feature_arrays(tmp_path, obj, kind, text):
    path = _dump(tmp_path / "00009.pkl", obj)
    with pytest.raises(DataError) as info:
        load_features(path)
    assert info.value.kind == kind and str(path) in str(info.value) and text in str(info.value)


def test_bad_files(tmp_path):
    cases = {
        "missing.pkl": (None, "missing"),
        "zero.pkl": (b"", "empty"),
        "trunc.pkl": (pickle.dumps(np.zeros((4, 4)))[:40], "unreadable"),
        "junk.npy": (b"\x93NUMPY garbage", "unreadable"),
        "junk.pt": (b"not a zip", "unreadable"),
        "feat.csv": (b"1,2\n", "invalid"),
    }
    for name, (data, kind) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(DataError) as info:
            load_features(path)
        assert info.value.kind == kind and str(path) in str(info.value), (name, str(info.value))
