"""Export of stored features in the challenge per-clip layout (vit/, wav2vec2/): an exact round trip through the
reader of that layout (the ``official`` backbone), no file for a clip lacking the modality, masked steps refused or
dropped, existing files never silently replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emi_lib.data import DataRoot
from emi_lib.features.export_official import export_official, main
from emi_lib.features.extract import extract_all
from emi_lib.features.store import FeatureStore


def _store(root, folder, masked_clip=None):
    """Random features for every clip of every split, but one clip per split without audio (no file)."""
    rng = np.random.default_rng(1)
    store, data = FeatureStore(folder), DataRoot(root)
    lacking = {}
    for split in data.available_splits():
        ids = data.ids(split)
        lacking[split] = ids[0]
        for cid in ids:
            v = rng.normal(size=(int(rng.integers(3, 9)), 5)).astype(np.float32)
            if cid == masked_clip:
                v[1] = np.nan
            store.write("vision", "fake-v", split, cid, v)
            if cid != ids[0]:
                store.write("audio", "fake-a", split, cid, rng.normal(size=(int(rng.integers(4, 12)), 3)))
    return store, lacking


def test_round_trip_through_the_official_reader_is_exact(smoke_root, tmp_path):
    store, lacking = _store(smoke_root, tmp_path / "store")
    out = tmp_path / "shared"
    # the audio clip without features is not in the store; the extraction's _meta.json would list it as missing
    with pytest.raises(ValueError, match="fake-a has no valid features for 1 of"):  # coverage: nothing accounts for it
        export_official(store, smoke_root, out, audio=("audio", "fake-a"), splits=["valid"])
    for split, cid in lacking.items():  # as an extraction does: the clip is listed as lacking the modality
        folder = store.folder("audio", "fake-a", split)
        (folder / "_meta.json").write_text(json.dumps({"missing": {cid: "no audio file"}, "failed": {}}))
    man = export_official(store, smoke_root, out, vision=("vision", "fake-v"), audio=("audio", "fake-a"))
    data = DataRoot(out)  # a root: the split CSVs were copied
    assert data.available_splits() == ["train", "valid", "test"]
    assert (out / "vit" / f"{data.ids('train')[1]}.pkl").exists()
    assert (out / "test_data" / "wav2vec2" / f"{data.ids('test')[1]}.pkl").exists()
    for split, cid in lacking.items():
        assert not data.has(split, cid, "wav2vec2") and man["splits"][split]["wav2vec2"]["missing"] == [cid]
    back = FeatureStore(tmp_path / "back")
    extract_all(out, back, "official", "official", progress=False)
    for mod, key in (("vision", "fake-v"), ("audio", "fake-a")):
        for split in data.available_splits():
            a, b = store.load_split(mod, key, split), back.load_split(mod, "official", split)
            assert a.keys() == b.keys()
            assert all(a[c].dtype == b[c].dtype and np.array_equal(a[c], b[c]) for c in a)
    again = export_official(store, smoke_root, out, vision=("vision", "fake-v"))  # identical files are kept
    assert again["splits"]["train"]["vit"]["written"] == 0 and again["splits"]["train"]["vit"]["unchanged"] > 0
    assert json.loads((out / "official_export.json").read_text())["streams"] == {"vit": ["vision", "fake-v"]}


def test_masked_steps_and_existing_files(smoke_root, tmp_path, capsys):
    cid = DataRoot(smoke_root).ids("train")[2]
    store, _ = _store(smoke_root, tmp_path / "store", masked_clip=cid)
    out = tmp_path / "shared"
    args = ["--store", str(store.root), "--root", str(smoke_root), "--out", str(out), "--vision", "vision/fake-v",
            "--splits", "train"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{cid}.npy" in err and "masked" in err
    assert main([*args, "--masked", "drop"]) == 0
    man = json.loads((out / "official_export.json").read_text())
    assert man["splits"]["train"]["vit"]["dropped_masked_steps"] == {cid: 1}
    got = DataRoot(out).load_modality("train", cid, "vit")
    assert np.array_equal(got, np.delete(store.read("vision", "fake-v", "train", cid), 1, axis=0))
    other = DataRoot(smoke_root).ids("train")[3]
    (out / "vit" / f"{other}.pkl").write_bytes((out / "vit" / f"{cid}.pkl").read_bytes())  # a different file
    assert main([*args, "--masked", "drop"]) == 2
    assert f"{other}.pkl exists and differs" in capsys.readouterr().err
    assert main([*args, "--masked", "drop", "--overwrite"]) == 0
    assert np.array_equal(DataRoot(out).load_modality("train", other, "vit"), store.read("vision", "fake-v", "train", other))
