"""Features reused from a root with byte-identical media, and only then."""

from __future__ import annotations

import shutil

import numpy as np

from emi_lib.data import DataRoot
from emi_lib.features.extract import extract_split
from emi_lib.features.reuse import media_signature
from emi_lib.features.store import FeatureStore


def test_reuse_copies_only_clips_with_identical_media(smoke_root, tmp_path):
    ref_store = FeatureStore(tmp_path / "ref_store")
    dr = DataRoot(smoke_root)
    ids = [c for c in dr.ids("valid") if dr.audio_path("valid", c).exists()][:3]
    extract_split(smoke_root, "valid", ref_store, "audio", "logmel", ids=ids, progress=False, on_error="raise")
    copy = tmp_path / "copy"
    shutil.copytree(smoke_root, copy)
    changed = ids[1]
    path = DataRoot(copy).audio_path("valid", changed)
    data = bytearray(path.read_bytes())
    data[-200] ^= 0xFF  # one flipped byte in the mp3's last frame: other media, other features
    path.write_bytes(bytes(data))
    assert media_signature(DataRoot(copy), "valid", changed, "audio") != media_signature(dr, "valid", changed, "audio")
    store = FeatureStore(tmp_path / "new_store")
    rep = extract_split(copy, "valid", store, "audio", "logmel", ids=ids, progress=False, on_error="raise",
                        reuse_from=(smoke_root, ref_store))
    assert sorted(rep.reused) == sorted(set(ids) - {changed})
    assert rep.computed == [changed]
    for cid in rep.reused:
        np.testing.assert_array_equal(store.read("audio", "logmel", "valid", cid),
                                      ref_store.read("audio", "logmel", "valid", cid))
    assert "reused from identical media" in rep.summary()
