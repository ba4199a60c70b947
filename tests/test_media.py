"""Media readers: audio resampling/downmix, video frames, face crop order, transcripts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_root import write_audio, write_faces, write_mp4

from emi_lib.data import (
    DataError,
    load_audio,
    load_face_crops,
    load_transcript,
    load_video_frames,
    probe_video,
    read_face_crops,
)
from emi_lib.data.media import count_face_crops, face_files, face_number


def _err(fn, path, kind, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(path, *args, **kwargs)
    assert info.value.kind == kind, str(info.value)
    assert str(path) in str(info.value)
    return info.value


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()])


# ------------------------------------------------------------------------------------- audio
def test_mp3_16k_mono(tmp_path):
    p = tmp_path / "00000.mp3"
    write_audio(p, seconds=0.5)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 8000) < 1200  # mp3 frames may pad a little
    assert _peak_hz(x, 16000) == pytest.approx(220, abs=5)


def test_wav_44k_is_resampled_not_zero_filled(tmp_path):
    p = tmp_path / "00001.wav"
    src = write_audio(p, seconds=1.0, sr=44_100, freq=440.0)
    x = load_audio(p)
    assert len(x) == pytest.approx(len(src) * 16_000 / 44_100, abs=2)
    assert np.sqrt(np.mean(x**2)) == pytest.approx(np.sqrt(np.mean(src**2)), rel=0.05)
    assert (x == 0).mean() < 0.01  # not zero-filled
    assert _peak_hz(x, 16_000) == pytest.approx(440, abs=3)  # the tone survives at the right pitch


def test_stereo_downmixed(tmp_path):
    p = tmp_path / "00002.wav"
    src = write_audio(p, seconds=0.25, sr=16_000, channels=2)
    x = load_audio(p)
    assert x.shape == (src.shape[0],)
    np.testing.assert_allclose(x, src.mean(axis=1), atol=1e-3)


def test_max_seconds_reads_the_first_seconds_only(tmp_path):
    p = tmp_path / "00003.wav"
    write_audio(p, seconds=1.0, sr=44_100, freq=440.0)
    whole, head = load_audio(p), load_audio(p, max_seconds=0.5)
    assert len(head) == pytest.approx(len(whole) / 2, abs=2)  # resampled after the cut, at 16 kHz
    assert load_audio(p, max_seconds=5.0).shape == whole.shape  # a cap longer than the file: all of it


def test_an_unexpected_error_is_not_called_unreadable(tmp_path, monkeypatch):
    """Only the decoder's own errors become kind "unreadable"; a bug propagates."""
    import soundfile as sf

    p = tmp_path / "00004.wav"
    write_audio(p, seconds=0.2, sr=16_000)

    def boom(*a, **k):
        raise KeyError("not a decode error")

    monkeypatch.setattr(sf, "SoundFile", boom)
    with pytest.raises(KeyError):
        load_audio(p)


def test_bad_audio(tmp_path):
    _err(load_audio, tmp_path / "missing.mp3", "missing")
    (tmp_path / "zero.mp3").write_bytes(b"")
    _err(load_audio, tmp_path / "zero.mp3", "empty")
    (tmp_path / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    _err(load_audio, tmp_path / "junk.mp3", "unreadable")
    import soundfile as sf

    sf.write(tmp_path / "nosamples.wav", np.zeros((0, 1), dtype=np.float32), 16_000)
    _err(load_audio, tmp_path / "nosamples.wav", "empty")


# ------------------------------------------------------------------------------------- video
def test_video_frames(tmp_path):
    p = tmp_path / "00000.mp4"
    write_mp4(p, n_frames=6, size=32, fps=10)
    frames, fps = load_video_frames(p)
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8 and fps == pytest.approx(10)
    assert load_video_frames(p, stride=2)[0].shape[0] == 3
    assert load_video_frames(p, max_frames=2)[0].shape[0] == 2
    assert load_video_frames(p, size=(16, 20))[0].shape == (6, 16, 20, 3)
    info = probe_video(p)
    assert (info["width"], info["height"]) == (32, 32) and info["fps"] == pytest.approx(10)


def test_bad_video(tmp_path):
    _err(load_video_frames, tmp_path / "missing.mp4", "missing")
    (tmp_path / "zero.mp4").write_bytes(b"")
    _err(load_video_frames, tmp_path / "zero.mp4", "empty")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    _err(load_video_frames, tmp_path / "junk.mp4", "unreadable")
    _err(probe_video, tmp_path / "junk.mp4", "unreadable")
    write_mp4(tmp_path / "ok.mp4")
    data = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    _err(load_video_frames, tmp_path / "trunc.mp4", "unreadable")


# ------------------------------------------------------------------------------------- faces
def test_face_crops_numeric_order(tmp_path):
    d = tmp_path / "00000"
    write_faces(d, n=12)  # crop i has value 20*i: numeric order is increasing, lexical is not
    crops = load_face_crops(d)
    assert crops.shape == (12, 24, 24, 3) and crops.dtype == np.uint8
    means = crops.reshape(12, -1).mean(axis=1)
    np.testing.assert_allclose(means, [(20 * i) % 255 for i in range(12)], atol=2)
    assert load_face_crops(d, max_frames=3).shape[0] == 3
    assert load_face_crops(d, size=16).shape == (12, 16, 16, 3)
    assert load_face_crops(d, size=(10, 8), stride=4).shape == (3, 10, 8, 3)


def test_face_numbers_and_counts(tmp_path):
    d = tmp_path / "00001"
    write_faces(d, n=3)
    (d / "frame_10.png").write_bytes((d / "0.jpg").read_bytes())  # every FACE_EXTENSIONS crop counts
    assert [face_number(f) for f in face_files(d)] == [0, 1, 2, 10] and count_face_crops(d) == 4
    assert count_face_crops(tmp_path / "none") == 0  # missing folder
    (tmp_path / "empty").mkdir()
    assert count_face_crops(tmp_path / "empty") == 0
    with pytest.raises(DataError, match="no frame number"):
        face_number(d / "face.jpg")


def test_bad_face_crops(tmp_path):
    _err(load_face_crops, tmp_path / "nope", "missing")
    (tmp_path / "empty").mkdir()
    _err(load_face_crops, tmp_path / "empty", "empty")
    d = tmp_path / "00001"
    write_faces(d, n=4)
    bad = d / "2.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    err = _err(load_face_crops, d, "unreadable")
    assert str(bad) in str(err)
    good = (d / "1.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated jpg
    assert str(bad) in str(_err(load_face_crops, d, "unreadable"))
    bad.write_bytes(b"")
    assert str(bad) in str(_err(load_face_crops, d, "unreadable"))
    Image.fromarray(np.zeros((30, 24, 3), dtype=np.uint8)).save(bad)  # another size
    assert "pass size=" in str(_err(load_face_crops, d, "shape"))
    assert load_face_crops(d, size=24).shape == (4, 24, 24, 3)


def test_read_face_crops_keeps_the_readable_crops_and_lists_the_others(tmp_path):
    d = tmp_path / "00002"
    write_faces(d, n=5)
    good = (d / "1.jpg").read_bytes()
    (d / "1.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (d / "3.jpg").write_bytes(b"")  # zero bytes
    got = read_face_crops(d)
    assert got.frames.shape == (3, 24, 24, 3) and got.valid.tolist() == [True, False, True, False, True]
    assert got.n_unreadable == 2 and [f for f, _ in got.errors] == [str(d / "1.jpg"), str(d / "3.jpg")]
    means = got.frames.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means, [0, 40, 80], atol=2)  # crops 0, 2 and 4, in order
    assert read_face_crops(d, stride=2).valid.tolist() == [True, True, True]  # crops 0, 2, 4
    assert read_face_crops(d, max_frames=2).valid.tolist() == [True, False]
    for f in d.glob("*.jpg"):
        f.write_bytes(b"garbage")
    assert "all 5 face crop(s) are unreadable" in str(_err(read_face_crops, d, "unreadable"))
    _err(read_face_crops, tmp_path / "nope", "missing")  # absent stays absent, not unreadable


# ------------------------------------------------------------------------------------- text
def test_transcripts(tmp_path):
    _err(load_transcript, tmp_path / "none.txt", "missing")
    (tmp_path / "empty.txt").write_text("")
    assert load_transcript(tmp_path / "empty.txt") == ""
    (tmp_path / "bom.txt").write_bytes("\ufeff  Oh wow, that's amazing!\n".encode())
    assert load_transcript(tmp_path / "bom.txt") == "Oh wow, that's amazing!"
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    _err(load_transcript, tmp_path / "latin.txt", "encoding")
