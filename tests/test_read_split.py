"""Split CSV validation and DataRoot paths / clip loading on a hand-written tiny root."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_root import TEST_IDS, write_audio, write_tiny_root

from emi_lib.constants import EMOTIONS, HEADER, clip_key, clip_stem
from emi_lib.data import DataError, DataRoot, SkipReport, read_split

GOOD_ROWS = ["0,0.5,0.25,0,1,0.75,0", "1,0,0,0,0,0,0", "2,1,1,1,1,1,1"]


def test_clip_ids_have_one_form():
    assert clip_key(7) == clip_key(np.int64(7)) == clip_key("7") == clip_key(" 00007") == clip_stem(7) == "00007"
    assert clip_key("a7") == "a7" and clip_key("12660") == "12660"  # any other id is kept as it is
    with pytest.raises(ValueError):
        clip_stem("a7")  # a file stem needs an integer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_root(root)
    return root


@pytest.fixture
def root(tiny, tmp_path):
    """A private copy of the tiny root that a test may break."""
    dst = tmp_path / "root"
    shutil.copytree(tiny, dst)
    return dst


def _write_train(root, header: str, rows=GOOD_ROWS, prefix: str = ""):
    path = root / "train_split.csv"
    path.write_text(prefix + header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _raises(root, split="train", kind=None):
    path = root / ("test_data/test_split.csv" if split == "test" else f"{split}_split.csv")
    with pytest.raises(DataError) as info:
        read_split(root, split)
    assert str(path) in str(info.value)
    if kind is not None:
        assert info.value.kind == kind, str(info.value)
    return info.value


# ------------------------------------------------------------------------------- valid root
def test_valid_splits(tiny):
    train, valid, test = (read_split(tiny, s) for s in ("train", "valid", "test"))
    assert list(train.columns) == list(EMOTIONS)
    assert train.index.name == "Filename" and list(train.index) == ["00000", "00001", "00002"]
    assert train.dtypes.eq(np.float64).all()
    assert ((train >= 0) & (train <= 1)).all().all()
    assert list(valid.index) == ["00003", "00004"]
    assert test.shape == (2, 0) and list(test.index) == [f"{i:05d}" for i in TEST_IDS]


def test_bom_and_whitespace_accepted(root):
    _write_train(root, ",".join(HEADER), prefix="\ufeff")
    assert len(read_split(root, "train")) == 3
    _write_train(root, " Filename , Admiration,Amusement ,Determination,  Empathic Pain ,Excitement,Joy ",
                 rows=[" 0 , 0.5,0.25,0,1,0.75,0", "1,0,0,0,0,0,0"])
    df = read_split(root, "train")
    assert list(df.index) == ["00000", "00001"] and df.loc["00000", "Admiration"] == 0.5


def test_test_split_full_header_drops_labels(root):
    (root / "test_data" / "test_split.csv").write_text(",".join(HEADER) + "\n12660,,,,,,\n12661,,,,,,\n")
    df = read_split(root, "test")
    assert df.shape == (2, 0)


@pytest.mark.parametrize(
    "header",
    [
        "Filename,Amusement,Admiration,Determination,Empathic Pain,Excitement,Joy",  # order
        "filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy",  # case
        "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement",  # missing
        "Filename,Admiration,Amusement,Determination,Empathic Pain,Excitement,Joy,Extra",  # extra
        "Filename,Admiration,Amusement,Determination,EmpathicPain,Excitement,Joy",  # renamed
    ],
)
def test_wrong_header(root, header):
    _write_train(root, header)
    err = _raises(root, kind="header")
    assert ",".join(HEADER) in str(err) and header in str(err)


@pytest.mark.parametrize("bad_id", ["1.5", "abc", "", "-3", "1e3"])
def test_non_integer_id(root, bad_id):
    _write_train(root, ",".join(HEADER), rows=[GOOD_ROWS[0], f"{bad_id},0,0,0,0,0,0"])
    err = _raises(root, kind="id")
    assert "line 3" in str(err) and repr(bad_id) in str(err)


@pytest.mark.parametrize(
    "cell,kind",
    [("1.2", "range"), ("-0.1", "range"), ("nan", "nan"), ("NaN", "nan"), ("", "nan"), ("inf", "range"), ("x", "value")],
)
def test_bad_values(root, cell, kind):
    _write_train(root, ",".join(HEADER), rows=[GOOD_ROWS[0], f"1,0,0,{cell},0,0,0"])
    err = _raises(root, kind=kind)
    assert "line 3" in str(err) and "Determination" in str(err)


def test_duplicate_id(root):
    _write_train(root, ",".join(HEADER), rows=[GOOD_ROWS[0], GOOD_ROWS[1], "001,0,0,0,0,0,0"])
    err = _raises(root, kind="duplicate")
    assert "line 4" in str(err) and "line 3" in str(err)


def test_short_row_and_many_problems_counted(root):
    rows = ["0,0.5"] + [f"{i},2,0,0,0,0,0" for i in range(1, 9)]
    _write_train(root, ",".join(HEADER), rows=rows)
    err = _raises(root, kind="invalid")
    assert "9 bad row(s)" in str(err) and "and 4 more" in str(err)


def test_missing_and_empty_csv(root):
    (root / "valid_split.csv").unlink()
    _raises(root, "valid", kind="missing")
    (root / "train_split.csv").write_bytes(b"")
    _raises(root, kind="empty")
    _write_train(root, ",".join(HEADER), rows=[])
    _raises(root, kind="empty")


def test_unknown_split(tiny):
    with pytest.raises(ValueError, match="unknown split"):
        read_split(tiny, "dev")


# ------------------------------------------------------------------------------- DataRoot
def test_dataroot_paths(tiny, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        DataRoot(tmp_path / "nope")
    dr = DataRoot(tiny)
    assert dr.ids("valid") == ["00003", "00004"] and dr.split("train") is dr.split("train")
    assert dr.clip_dir("train") == tiny and dr.clip_dir("test") == tiny / "test_data"
    assert dr.video_path("train", 0) == tiny / "raw" / "00000.mp4"
    assert dr.audio_path("test", "12660") == tiny / "test_data" / "audio" / "12660.mp3"
    assert dr.face_dir("valid", 3) == tiny / "face_images" / "00003"
    assert dr.transcript_path("train", 2) == tiny / "text" / "00002.txt"
    assert dr.feature_path("train", 1, "vit") == tiny / "vit" / "00001.pkl"
    for mod in ("video", "audio", "faces", "text", "vit", "wav2vec2"):
        assert dr.has("train", 0, mod), mod
    assert not dr.has("train", 0, "clip_features")
    with pytest.raises(ValueError):
        dr.feature_path("train", 0, "../etc")


def test_audio_wav_fallback(root):
    dr = DataRoot(root)
    (root / "audio" / "00002.mp3").unlink()
    assert dr.audio_path("train", 2).suffix == ".mp3" and not dr.has("train", 2, "audio")
    write_audio(root / "audio" / "00002.wav")
    assert dr.audio_path("train", 2) == root / "audio" / "00002.wav" and dr.has("train", 2, "audio")


def test_load_clip(tiny):
    dr = DataRoot(tiny)
    clip = dr.load_clip("train", 1, modalities=("audio", "faces", "text", "video", "vit", "wav2vec2"))
    assert clip["id"] == "00001" and clip["labels"].shape == (6,)
    assert clip["audio"].dtype == np.float32 and clip["audio"].ndim == 1
    assert clip["faces"].shape == (4, 24, 24, 3) and clip["video"].shape[1:] == (32, 32, 3)
    assert clip["video_fps"] == pytest.approx(10.0) and clip["text"] == ""
    assert clip["vit"].shape == (5, 8) and clip["wav2vec2"].shape == (7, 12)
    assert dr.load_clip("test", TEST_IDS[0])["labels"] is None


def test_load_clip_missing_optional_and_required(root):
    dr = DataRoot(root)
    (root / "audio" / "00001.mp3").unlink()
    report = SkipReport()
    clip = dr.load_clip("train", 1, report=report)
    assert clip["audio"] is None and clip["faces"] is not None
    assert report.missing[0][:2] == ("00001", "audio") and len(report) == 0
    with pytest.raises(DataError, match="00001.mp3") as info:
        dr.load_clip("train", 1, required=("audio",))
    assert info.value.kind == "missing"


def test_load_clip_corrupt_raise_skip_none(root):
    dr = DataRoot(root)
    bad = root / "face_images" / "00002" / "1.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError) as info:
        dr.load_clip("train", 2)
    assert str(bad) in str(info.value)
    report = SkipReport()
    assert dr.load_clip("train", 2, on_error="skip", report=report) is None
    assert report.skipped_ids() == ["00002"]
    report = SkipReport()
    clip = dr.load_clip("train", 2, on_error="none", report=report)
    assert clip["faces"] is None and clip["audio"] is not None and report.missing[0][1] == "faces"


def test_iter_clips_skip_reports_and_returns_others(root):
    dr = DataRoot(root)
    (root / "raw" / "00000.mp4").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "face_images" / "00002" / "0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    got = dict(dr.iter_clips("train", modalities=("faces", "video"), progress=False))
    assert list(got) == ["00001"]
    assert sorted(dr.last_report.skipped_ids()) == ["00000", "00002"]
    assert dr.last_report.counts()["unreadable"] == 2
    assert "00000.mp4" in dr.last_report.summary()


def test_split_id_with_no_files(root):
    _write_train(root, ",".join(HEADER), rows=[*GOOD_ROWS, "77,0,0,0,0,0,0"])
    dr = DataRoot(root)
    with pytest.raises(DataError, match="no files") as info:
        dr.load_clip("train", 77)
    assert info.value.kind == "no_files" and str(root) in str(info.value)
    ids = [cid for cid, _ in dr.iter_clips("train", modalities=("text",), progress=False)]
    assert ids == ["00000", "00001", "00002"] and dr.last_report.skipped_ids() == ["00077"]
