"""Summary features read from the written files, and the ridge table built on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS, clip_stem
from emi_lib.eval.probe import FEATURE_SETS, ridge_table
from emi_lib.features.summary import (
    MODALITIES,
    all_summary_features,
    split_ids,
    split_labels,
    summary_features,
)


@pytest.fixture(scope="module")
def feats(smoke_root):
    return all_summary_features(smoke_root, progress=False)


def _corr(root):
    return pd.read_csv(root / "synthmimic" / "corruptions.csv").set_index("Filename")


def test_one_row_per_clip_no_nan(smoke_root, feats):
    corr = _corr(smoke_root)
    for mod in MODALITIES:
        dims = set()
        for split in ("train", "valid", "test"):
            df = feats[mod][split]
            ids = split_ids(smoke_root, split)
            assert list(df.index) == [clip_stem(i) for i in ids] and df.index.name == "Filename"
            assert np.isfinite(df.to_numpy()).all()
            assert df.columns[-1] == f"{mod}_missing"
            dims.add(df.shape[1])
            missing = df[f"{mod}_missing"].to_numpy() == 1
            sub = corr.loc[ids]
            if mod == "face":
                expect = (sub["face_corruption"] == "no_face").to_numpy()
            elif mod == "voice":
                expect = (sub["audio_corruption"] == "missing").to_numpy()
            else:
                expect = (sub["n_words"] == 0).to_numpy()
            np.testing.assert_array_equal(missing, expect)
            assert expect.any()  # every smoke split holds deliberately missing clips
            assert (df.loc[missing].iloc[:, :-1].to_numpy() == 0).all()
        assert len(dims) == 1  # same columns in every split (text vocabulary fitted on train)


def test_single_split_call_matches(smoke_root, feats):
    df = summary_features(smoke_root, "valid", "voice")
    pd.testing.assert_frame_equal(df, feats["voice"]["valid"])


def test_labels_reader(smoke_root):
    assert split_labels(smoke_root, "test").shape == (12, 6)
    assert list(split_labels(smoke_root, "train").columns) == list(EMOTIONS)


def test_features_tolerate_broken_files(smoke_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(smoke_root, root)
    (root / "audio" / "00000.mp3").write_bytes(b"")  # zero-length
    (root / "audio" / "00001.mp3").write_bytes(b"not an mp3 at all" * 10)  # unreadable
    shutil.rmtree(root / "face_images" / "00002")
    df = summary_features(root, "train", "voice")
    assert df.loc[["00000", "00001"], "voice_missing"].tolist() == [1.0, 1.0]
    assert summary_features(root, "train", "face").loc["00002", "face_missing"] == 1.0


def test_ridge_table(smoke_root, feats):
    with np.errstate(all="ignore"):
        table = ridge_table(smoke_root, features=feats, progress=False)
    assert list(table.columns) == [*EMOTIONS, "mean"]
    assert table.index.names == ["split", "features"]
    expected = [(s, f) for s in ("valid", "test") for f in [*FEATURE_SETS, "ceiling"]]
    assert list(table.index) == expected
    man = json.loads((smoke_root / "synthmimic" / "manifest.json").read_text())
    for split in ("valid", "test"):
        ceil = table.loc[(split, "ceiling")]
        for emo in EMOTIONS:
            assert ceil[emo] == pytest.approx(man["noise_ceiling"][split]["per_emotion"][emo], abs=1e-4)
    vals = table.drop(index="ceiling", level="features").to_numpy()
    assert (np.abs(vals[np.isfinite(vals)]) <= 1).all()


def test_ridge_table_without_hidden_labels(smoke_root, feats, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(smoke_root, root)
    (root / "synthmimic" / "test_labels.csv").unlink()
    with np.errstate(all="ignore"):
        table = ridge_table(root, features=feats, feature_sets={"all": ("face", "voice", "text")}, progress=False)
    assert list(table.index) == [("valid", "all"), ("valid", "ceiling")]
