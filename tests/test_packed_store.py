"""Packed feature store (round trip, atomic build, verification), length bucketing, and training
(stage 1 and stage 2) reading through a PackedStore."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import numpy as np
import pytest

from emi_lib.data.errors import DataError
from emi_lib.features import packed, packed_cli
from emi_lib.features.packed import PackedStore, build_from_pkl_dir, build_from_store, write_packed
from emi_lib.features.store import FeatureStore
from emi_lib.train.buckets import bucketed_batches, padding_share, random_batches


def clips(n=20, d=6, seed=0, empty=(3, 7)):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        t = 0 if i in empty else int(rng.integers(1, 30))
        out[f"{i:05d}"] = rng.normal(size=(t, d)).astype(np.float32)
    return out


def test_round_trip_random_access_and_mapping(tmp_path):
    src = clips()
    path = write_packed(tmp_path / "s", src.items(), meta={"modality": "vision"})
    s = PackedStore(path)
    assert isinstance(s, Mapping) and len(s) == 20 and list(s) == list(src) and s.dim == 6
    assert s.lengths == {k: len(v) for k, v in src.items()}
    assert s.meta["modality"] == "vision"
    for cid in reversed(list(src)):  # random access, any order
        got = s[cid]
        assert got.dtype == np.float32 and got.shape == src[cid].shape
        np.testing.assert_allclose(got, src[cid], rtol=1e-3, atol=1e-3)  # float16 storage
    assert s["00003"].shape == (0, 6) and s.length("00007") == 0
    assert "00001" in s and "99999" not in s and s.get("99999") is None
    with pytest.raises(KeyError):
        s["99999"]
    assert s.read("00001", dtype=np.float16).dtype == np.float16
    x, m = s.read_batch(["00001", "00003", "00002"], max_len=5)
    assert x.shape[0] == 3 and x.shape[1] <= 5 and not m[1].any() and m[0].sum() == min(5, s.length("00001"))
    bufs: dict = {}
    for batch in (["00005", "00001"], ["00003", "00002", "00004"], ["00001"]):  # reused buffers, re-padded
        got, gm = s.read_batch(batch, buffers=bufs)
        want, wm = s.read_batch(batch)
        assert np.array_equal(got, want) and np.array_equal(gm, wm)
        np.testing.assert_allclose(got[0, : s.length(batch[0])], src[batch[0]], atol=1e-2)
    s32 = PackedStore(write_packed(tmp_path / "f32", src.items(), dtype="float32"))
    assert all(np.array_equal(s32[k], v) for k, v in src.items())
    s2 = pickle.loads(pickle.dumps(s))  # a DataLoader worker reopens the file
    np.testing.assert_array_equal(s2["00001"], s["00001"])
    with pytest.raises(ValueError, match="D=4"):
        write_packed(tmp_path / "bad", [("a", np.zeros((2, 6))), ("b", np.zeros((2, 4)))])
    with pytest.raises(ValueError, match="range"):
        write_packed(tmp_path / "bad", [("a", np.full((2, 6), 1e6))])
    assert not (tmp_path / "bad").exists()


def test_build_from_feature_store_and_cli(tmp_path, capsys):
    fs = FeatureStore(tmp_path / "features")
    src = clips(8, 5)
    for cid, a in src.items():
        fs.write("vision", "openclip-tiny", "train", cid, a)
    s = PackedStore(build_from_store(fs, "vision", "openclip-tiny", "train", tmp_path / "p"))
    assert list(s) == sorted(src) and s.length("00003") == 0
    s = PackedStore(build_from_store(fs, "vision", "openclip-tiny", "train", tmp_path / "p2",
                                     ids=["00001", "77777"], missing="empty"))
    assert list(s) == ["00001", "77777"] and s.length("77777") == 0
    with pytest.raises(DataError):
        build_from_store(fs, "vision", "openclip-tiny", "train", tmp_path / "p3", ids=["77777"])
    out = tmp_path / "cli"
    assert packed_cli.main(["build", "--store", str(fs.root), "--modality", "vision", "--backbone", "openclip-tiny",
                        "--split", "train", "--out", str(out)]) == 0
    assert packed_cli.main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_build_from_pkl_dir_uses_safe_loader(tmp_path):
    d = tmp_path / "vit"
    d.mkdir()
    src = clips(6, 4, empty=())
    for cid, a in src.items():
        (d / f"{cid}.pkl").write_bytes(pickle.dumps(a))
    s = PackedStore(build_from_pkl_dir(d, tmp_path / "p"))
    assert list(s) == sorted(src)
    np.testing.assert_allclose(s["00002"], src["00002"], atol=1e-3)
    marker = tmp_path / "MARKER"
    (d / "00009.pkl").write_bytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",))))
    with pytest.raises(DataError) as err:
        build_from_pkl_dir(d, tmp_path / "evil")
    assert err.value.kind == "unsafe" and "00009.pkl" in str(err.value)
    assert not marker.exists() and not (tmp_path / "evil").exists()
    assert PackedStore(tmp_path / "p")  # the earlier store is untouched


def test_killed_build_leaves_no_store_and_rebuild_works(tmp_path, monkeypatch):
    src = clips()
    out = tmp_path / "s"

    def dying():
        for i, kv in enumerate(src.items()):
            if i == 10:
                raise KeyboardInterrupt("killed")
            yield kv

    with pytest.raises(KeyboardInterrupt):
        write_packed(out, dying())
    assert not out.exists()
    with pytest.raises(DataError, match="no packed-store index"):
        PackedStore(out)
    # a hard kill (no cleanup): the partial folder stays, but no reader accepts it and a rebuild removes it
    monkeypatch.setattr(packed.shutil, "rmtree", lambda *a, **k: None)
    monkeypatch.setattr(packed.os, "fsync", lambda fd: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        write_packed(out, src.items())
    monkeypatch.undo()
    partial = list(tmp_path.glob("s.partial-*"))
    assert partial and not out.exists()
    with pytest.raises(DataError):
        PackedStore(partial[0])
    s = PackedStore(write_packed(out, src.items()))
    assert len(s) == 20 and not list(tmp_path.glob("s.partial-*"))
    write_packed(out, list(src.items())[:5])  # a rebuild replaces an existing store
    assert len(PackedStore(out)) == 5


@pytest.mark.parametrize("change", [-2, 2])
def test_truncated_or_extended_data_file_is_refused(tmp_path, change):
    path = write_packed(tmp_path / "s", clips().items())
    data = path / "data.bin"
    size = data.stat().st_size
    if change < 0:
        os.truncate(data, size + change)
    else:
        with open(data, "ab") as fh:
            fh.write(b"\0" * change)
    with pytest.raises(DataError, match="data.bin") as err:
        PackedStore(path)
    assert str(size) in str(err.value)
    assert packed_cli.main(["verify", str(path)]) == 1


def test_index_dtype_and_format_checked(tmp_path):
    import json

    path = write_packed(tmp_path / "s", clips().items())
    idx = json.loads((path / "index.json").read_text())
    (path / "index.json").write_text(json.dumps({**idx, "dtype": "<f8"}))
    with pytest.raises(DataError, match="index.json"):
        PackedStore(path)
    (path / "index.json").write_text(json.dumps({**idx, "version": 99}))
    with pytest.raises(DataError, match="v1"):
        PackedStore(path)


# ------------------------------------------------------------------------------------------ buckets
def test_bucketing_covers_every_clip_deterministic_and_pads_less():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(2.0, 0.6, size=1000)).astype(int) + 1
    b = bucketed_batches(lengths, 32, seed=1, epoch=0, chunk_batches=8)
    assert sorted(i for x in b for i in x) == list(range(1000))
    assert b == bucketed_batches(lengths, 32, seed=1, epoch=0, chunk_batches=8)
    assert b != bucketed_batches(lengths, 32, seed=1, epoch=1, chunk_batches=8)
    rand = random_batches(1000, 32, seed=1, epoch=0)
    assert padding_share(lengths, b) < 0.5 * padding_share(lengths, rand)
    two = np.stack([lengths, 2 * lengths], 1)
    assert padding_share(two, b) == pytest.approx(padding_share(lengths, b))
    assert padding_share([3, 3, 1], [[0, 1, 2]]) == pytest.approx(1 - 7 / 9)
    dropped = bucketed_batches(lengths, 32, seed=1, epoch=0, drop_last=True)
    assert len(dropped) == 1000 // 32 and all(len(x) == 32 for x in dropped)


@pytest.mark.parametrize("n,world,drop", [(1000, 3, False), (1000, 3, True), (70, 4, False), (2, 3, False)])
def test_bucketing_shards_equal_batch_counts(n, world, drop):
    lengths = np.arange(n) % 17 + 1
    shards = [bucketed_batches(lengths, 32, 5, 2, drop, rank=r, world_size=world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for s in shards for b in s for i in b)
    if drop:
        assert len(seen) == len(set(seen)) and all(len(b) == 32 for s in shards for b in s)
    else:
        assert seen == list(range(n))


# ------------------------------------------------------------------------------------------ training
def test_stage2_one_epoch_from_packed_bucketed(tmp_path):
    from test_stage2_train import planted, tiny_cfg

    from emi_lib.train import Stage2Data, predict, train_stage2
    from emi_lib.train.data import Stage2Dataset

    splits = []
    for name, d in (("train", planted(30, 1)), ("valid", planted(13, 2))):
        v = write_packed(tmp_path / f"v_{name}", ((i, d.vision.get(i)) for i in d.ids))
        a = write_packed(tmp_path / f"a_{name}", ((i, d.audio.get(i)) for i in d.ids))
        p = Stage2Data.from_packed(v, a, labels=d.labels, priors=d.priors, absent=d.absent)
        assert isinstance(p.vision, PackedStore) and p.missing_counts() == d.missing_counts()
        assert p.dims() == d.dims()
        splits.append(p)
    cfg = tiny_cfg(epochs=1, bucket_by_length=True)
    ds = Stage2Dataset(splits[0], {"vision": 6, "audio": 5, "text": 0}, max_len=10)
    assert ds.lengths().shape == (30, 2) and ds.lengths().max() <= 10
    model, hist = train_stage2(cfg, *splits, tmp_path / "run", progress=False)
    assert len(hist) == 1 and np.isfinite(hist["train_loss"]).all()
    pred, _, extras = predict(model, splits[1], cfg=cfg)
    assert len(pred) == 13 and np.isfinite(pred.to_numpy()).all()


def test_stage1_train_aligner_on_packed_feats(tmp_path):
    from test_stage1_train import DT, D, planted

    from emi_lib.models.aligner import AlignerConfig
    from emi_lib.train.stage1 import export_aligned, train_aligner

    tr_f, tr_t, _ = planted(40, seed=1, n_empty=2)
    va_f, va_t, _ = planted(16, seed=2, n_empty=1)
    tr = PackedStore(write_packed(tmp_path / "tr", tr_f.items()))
    va = PackedStore(write_packed(tmp_path / "va", va_f.items()))
    cfg = AlignerConfig.tiny(D, DT, epochs=2, lr=3e-3, batch_size=8, device="cpu")
    model, hist = train_aligner(cfg, tr, tr_t, va, va_t, progress=False)
    assert len(hist) == 3 and np.isfinite(hist["train_loss"].iloc[1:]).all()
    out = export_aligned(model, va)
    assert len(out.missing) == 1 and len(out.clip_emb) == 16
