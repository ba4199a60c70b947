"""Summary features read from the written files, and the ridge table built on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS, clip_stem
from emi_lib.data.labels import read_labels
from emi_lib.eval.probe import FEATURE_SETS, ridge_table
from emi_lib.features.summary import (
    MODALITIES,
    all_summary_features,
    split_ids,
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
            assert df.columns[-1] == f"{mod}_missing" and df.columns[-2] == f"{mod}_unreadable"
            assert (df[f"{mod}_unreadable"] == 0).all()  # the smoke root's files are all readable
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
            assert (df.loc[missing].iloc[:, :-2].to_numpy() == 0).all()
        assert len(dims) == 1  # same columns in every split (text vocabulary fitted on train)


def test_single_split_call_matches(smoke_root, feats):
    df = summary_features(smoke_root, "valid", "voice")
    pd.testing.assert_frame_equal(df, feats["voice"]["valid"])


def test_labels_reader(smoke_root):
    assert read_labels(smoke_root, "test").shape == (12, 6)
    assert list(read_labels(smoke_root, "train").columns) == list(EMOTIONS)
    assert read_labels(smoke_root, "valid").index.name == "Filename"


def test_features_tolerate_broken_files(smoke_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(smoke_root, root)
    (root / "audio" / "00000.mp3").write_bytes(b"")  # zero-length
    (root / "audio" / "00001.mp3").write_bytes(b"not an mp3 at all" * 10)  # unreadable
    shutil.rmtree(root / "face_images" / "00002")
    with pytest.warns(UserWarning, match=r"voice/train: 1 unreadable file.*00001\.mp3"):
        df = summary_features(root, "train", "voice")
    assert df.loc[["00000", "00001"], "voice_missing"].tolist() == [1.0, 1.0]
    # the zero-length file is an absent voice; the garbage one is counted as unreadable, not passed over
    assert df.loc[["00000", "00001"], "voice_unreadable"].tolist() == [0.0, 1.0]
    assert df["voice_unreadable"].sum() == 1.0
    assert summary_features(root, "train", "face").loc["00002", "face_missing"] == 1.0


def test_unreadable_face_crops_and_video_headers_are_counted_and_named(smoke_root, tmp_path):
    """One garbage crop costs that crop, not the clip; a garbage mp4 header is counted too."""
    root = tmp_path / "root"
    shutil.copytree(smoke_root, root, ignore=shutil.ignore_patterns("audio", "text"))
    clean = summary_features(smoke_root, "valid", "face")
    cid = next(c for c in clean.index if clean.loc[c, "face_missing"] == 0)
    crops = sorted((root / "face_images" / cid).glob("*.jpg"), key=lambda p: int(p.stem))
    crops[1].write_bytes(b"\xff\xd8 not a jpeg" * 20)
    (root / "raw" / f"{cid}.mp4").write_bytes(b"garbage" * 100)
    with pytest.warns(UserWarning, match=rf"face/valid: 2 unreadable file\(s\).*{crops[1].name}.*{cid}\.mp4"):
        df = summary_features(root, "valid", "face")
    assert df.loc[cid, "face_unreadable"] == 2.0 and df.loc[cid, "face_missing"] == 0.0
    assert df["face_unreadable"].sum() == 2.0
    assert df.columns[-2:].tolist() == ["face_unreadable", "face_missing"]


def test_summary_readers_catch_only_the_decoders_errors(smoke_root, monkeypatch):
    """An unexpected exception (a bug, not a bad file) propagates instead of reading as "no audio"."""
    import emi_lib.features.summary as summary

    class Boom(Exception):
        pass

    def boom(*a, **k):
        raise Boom("not a decode error")

    import soundfile

    monkeypatch.setattr(soundfile, "SoundFile", boom)  # the one audio reader, emi_lib.data.media.load_audio
    with pytest.raises(Boom):
        summary.read_wave(next((smoke_root / "audio").glob("*.mp3")))
    import av

    monkeypatch.setattr(av, "open", boom)
    with pytest.raises(Boom):
        summary._n_video_frames(next((smoke_root / "raw").glob("*.mp4")))


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
