"""The data-root checker: clean root exits 0; every kind of breakage is listed and exits 1."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tiny_root import write_pickle, write_tiny_root

from emi_lib.constants import HEADER
from emi_lib.data.check import check_root, main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_root(root)
    return root


@pytest.fixture
def root(tiny, tmp_path):
    dst = tmp_path / "root"
    shutil.copytree(tiny, dst)
    return dst


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_clean_root_exit_0(tiny, capsys):
    rep = check_root(tiny, sample=50)
    assert rep.ok, rep.summary()
    assert rep.stats["train"]["ids"] == 3 and rep.stats["test"]["audio"] == 2
    assert any("vit features: D = 8" in m for m in rep.info)
    assert main([str(tiny), "--no-progress"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out


def test_cli_module_entry(tiny, tmp_path):
    """``python -m emi_lib.data.check ROOT`` runs as a module (exit code = verdict)."""
    res = subprocess.run([sys.executable, "-m", "emi_lib.data.check", str(tiny), "--sample", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: no problems found" in res.stdout
    res = subprocess.run([sys.executable, "-m", "emi_lib.data.check", str(tmp_path / "nope"), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "data root" in res.stdout


def test_every_breakage_is_reported(root, capsys):
    marker = root / "MARKER"
    rng = np.random.default_rng(0)
    (root / "audio" / "00000.mp3").unlink()  # missing mp3
    (root / "test_data" / "audio" / "12661.mp3").write_bytes(b"")  # zero-length mp3
    (root / "raw" / "00001.mp4").write_bytes(rng.bytes(3000))  # corrupt mp4
    (root / "face_images" / "00002" / "1.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt jpg
    shutil.rmtree(root / "face_images" / "00003")  # missing face dir
    (root / "face_images" / "00004" / "2.jpg").rename(root / "face_images" / "00004" / "7.jpg")  # gap
    write_pickle(root / "vit" / "00002.pkl", np.full((5, 8), np.nan, dtype=np.float32))  # NaN feature
    write_pickle(root / "wav2vec2" / "00003.pkl", np.zeros(12, dtype=np.float32))  # 1-D feature
    (root / "vit" / "00004.pkl").write_bytes(pickle.dumps(_Evil(marker)))  # malicious pickle
    write_pickle(root / "test_data" / "vit" / "12660.pkl", np.zeros((5, 9), dtype=np.float32))  # other D
    (root / "text" / "00099.txt").write_text("orphan")  # orphan file
    (root / "audio" / "notes.md").write_text("x")  # unexpected file
    with open(root / "valid_split.csv", "a") as fh:  # split id with no files
        fh.write("55,0,0,0,0,0,0\n")

    rep = check_root(root, sample=50)
    counts = rep.counts()
    expected = {
        "missing audio": "00000.mp3",
        "zero-length file": "12661.mp3",
        "unreadable media": "00001.mp4",
        "missing faces": "face_images/00003",
        "face numbering gap": "face_images/00004",
        "bad features": "vit/00002.pkl",
        "orphan file": "00099.txt",
        "unexpected file": "notes.md",
        "split id with no files": "00055",
    }
    for kind, needle in expected.items():
        assert kind in counts, (kind, rep.summary())
        assert any(needle in str(p) for p in rep.by_kind(kind)), (kind, needle, rep.summary())
    bad_features = " ".join(str(p) for p in rep.by_kind("bad features"))
    for needle in ("00002.pkl", "NaN", "00003.pkl", "(12,)", "00004.pkl",
                   "posix.system", "different dims"):
        assert needle in bad_features, needle
    assert any("1.jpg" in str(p) for p in rep.by_kind("unreadable media"))
    assert not marker.exists()
    assert counts["missing audio"] == 1  # the no-files id is not double-counted per modality
    assert main([str(root), "--no-progress", "--max-examples", "1"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS:" in out and "missing audio: 1" in out
    assert len(rep.to_frame()) == len(rep.problems)


def test_csv_problem_reported_and_files_still_checked(root):
    path = root / "train_split.csv"
    lines = path.read_text().splitlines()
    lines[0] = ",".join(HEADER[:2] + (HEADER[3], HEADER[2]) + HEADER[4:])  # swapped columns
    path.write_text("\n".join(lines) + "\n")
    rep = check_root(root, sample=5)
    assert list(rep.counts()) == ["split CSV"], rep.summary()
    assert str(path) in str(rep.by_kind("split CSV")[0])
    assert rep.stats["train"]["ids"] == 3  # ids recovered leniently: no orphans reported


def test_absent_feature_folder_is_a_note_and_sample_is_seeded(root):
    shutil.rmtree(root / "wav2vec2")
    shutil.rmtree(root / "test_data" / "wav2vec2")
    rep = check_root(root, sample=1, seed=3)
    assert rep.ok, rep.summary()
    assert any("wav2vec2/ folder" in m for m in rep.info)  # absent folder: a note, not a problem
    shutil.rmtree(root / "text")
    rep = check_root(root, sample=1, seed=3)
    assert rep.ok and any("text/ folder" in m for m in rep.info)
    for cid in ("00000", "00001", "00002"):
        (root / "raw" / f"{cid}.mp4").write_bytes(b"junk" * 100)
    a = check_root(root, sample=1, seed=3)
    b = check_root(root, sample=1, seed=3)
    assert a.counts() == b.counts() == {"unreadable media": 1}
    assert [str(p) for p in a.problems] == [str(p) for p in b.problems]
