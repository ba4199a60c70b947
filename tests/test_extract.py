"""Extraction into the feature store: shapes, missing modalities,
resume after an interruption, no mixing of backbones, the ``official`` backbone, the CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest
from tiny_root import write_tiny_root

from emi_lib.data import DataError, DataRoot, load_audio
from emi_lib.data.fingerprint import ProvenanceError
from emi_lib.features import load_backbone
from emi_lib.features.extract import (
    META_NAME,
    extract_all,
    extract_split,
    read_meta,
    store_backbone,
)
from emi_lib.features.extract_cli import main
from emi_lib.features.store import FeatureStore

N_PLAIN = 5  # clips with every modality, besides those lacking one, in the smoke subset


@pytest.fixture(scope="module")
def encoders():
    return {"vision": load_backbone("vision", "openclip-tiny"), "audio": load_backbone("audio", "logmel"),
            "text": load_backbone("text", "minilm")}


def _n_crops(dr: DataRoot, split: str, cid: str) -> int:
    d = dr.face_dir(split, cid)
    return len([p for p in d.iterdir() if p.suffix == ".jpg"]) if d.is_dir() else 0


@pytest.fixture(scope="module")
def subset(smoke_root):
    """A few train clips of the smoke root: every clip lacking a modality plus N_PLAIN complete ones."""
    dr = DataRoot(smoke_root)
    lacking = {"vision": [c for c in dr.ids("train") if _n_crops(dr, "train", c) == 0],
               "audio": [c for c in dr.ids("train") if not dr.has("train", c, "audio")],
               "text": [c for c in dr.ids("train") if not dr.has("train", c, "text")]}
    odd = set(sum(lacking.values(), []))
    ids = sorted(odd | set([c for c in dr.ids("train") if c not in odd][:N_PLAIN]))
    assert lacking["vision"] and lacking["audio"], "the smoke profile should lack some faces and audio"
    return dr, ids, lacking


@pytest.fixture(scope="module")
def ref(subset, encoders, tmp_path_factory):
    """One batched extraction of the subset per modality (batch_clips=8)."""
    dr, ids, _ = subset
    store = FeatureStore(tmp_path_factory.mktemp("ref_store"))
    reps = {m: extract_split(dr, "train", store, m, encoders[m].name, ids=ids, encoder=encoders[m],
                             progress=False) for m in encoders}
    return store, reps


def test_shapes_missing_and_meta(subset, ref, encoders):
    dr, ids, lacking = subset
    store, reps = ref
    for m, rep in reps.items():
        assert rep.n_failed == 0, rep.summary()
        assert sorted(rep.missing_ids) == sorted(lacking[m]), rep.summary()
        assert sorted(rep.computed) == sorted(set(ids) - set(lacking[m]))
        assert store.done_ids(m, encoders[m].name, "train") == set(rep.computed)  # nothing for missing clips
        meta = read_meta(store, m, encoders[m].name, "train")
        assert meta["dim"] == encoders[m].dim and meta["n_stored"] == rep.n_done
        assert sorted(meta["missing"]) == sorted(lacking[m]) and meta["failed"] == {}
        for cid in lacking[m]:
            assert cid in rep.summary()
    for cid in reps["vision"].computed:
        assert store.read("vision", "openclip-tiny", "train", cid).shape == (_n_crops(dr, "train", cid), 64)
    for cid in reps["audio"].computed:
        n = len(load_audio(dr.audio_path("train", cid)))
        x = store.read("audio", "logmel", "train", cid)
        assert x.shape == ((n + 80) // 160, 64) and abs(len(x) - 100 * n / 16000) <= 1  # kaldi, snip_edges=False
    assert read_meta(store, "audio", "logmel", "train")["frame_rate"] == 100.0
    for cid in reps["text"].computed:
        x = store.read("text", "minilm", "train", cid)
        assert x.shape == (1, 384) and np.isclose(np.linalg.norm(x), 1.0, atol=1e-4)
    silent = [c for c in reps["text"].computed if dr.transcript_path("train", c).read_text().strip() == ""]
    if silent:  # an empty transcript is a valid clip: the embedding of ""
        np.testing.assert_allclose(store.read("text", "minilm", "train", silent[0])[0],
                                   encoders["text"].encode_texts([""])[0], atol=1e-5)


class CrashingEncoder:
    """Wraps an encoder, counts its calls and the frames it sees, raises on call ``crash_at``."""

    def __init__(self, enc, crash_at=None):
        self.enc, self.name, self.dim, self.crash_at = enc, enc.name, enc.dim, crash_at
        self.calls, self.frames = 0, 0

    def encode_frames(self, frames):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        self.frames += len(frames)
        return self.enc.encode_frames(frames)


def test_resume_after_interruption(subset, ref, encoders, tmp_path):
    dr, ids, lacking = subset
    ref_store, _ = ref
    with_faces = [c for c in ids if c not in lacking["vision"]]
    store = FeatureStore(tmp_path / "features")
    crashing = CrashingEncoder(encoders["vision"], crash_at=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_split(dr, "train", store, "vision", "openclip-tiny", ids=ids, encoder=crashing, batch_clips=1,
                      progress=False)
    first = store.done_ids("vision", "openclip-tiny", "train")
    assert len(first) == 3  # three clips written before the crash, each complete
    folder = store.folder("vision", "openclip-tiny", "train")
    assert not (folder / META_NAME).exists()  # metadata is written at the end only
    mtimes = {c: store.path("vision", "openclip-tiny", "train", c).stat().st_mtime_ns for c in first}
    # a crash during np.save leaves a half-written .tmp: readers ignore it, the rerun replaces it
    todo = [c for c in with_faces if c not in first]
    (folder / f"{todo[0]}.npy.tmp").write_bytes(b"\x93NUMPY half-written")
    stale = folder / f"{lacking['vision'][0]}.npy.tmp"  # an old leftover whose clip is never redone
    stale.write_bytes(b"junk")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert store.done_ids("vision", "openclip-tiny", "train") == first

    again = CrashingEncoder(encoders["vision"])
    rep = extract_split(dr, "train", store, "vision", "openclip-tiny", ids=ids, encoder=again, batch_clips=1,
                        progress=False)
    assert sorted(rep.existing) == sorted(first) and sorted(rep.computed) == sorted(todo)
    assert again.calls == len(todo)  # the earlier clips were not recomputed
    assert again.frames == sum(_n_crops(dr, "train", c) for c in todo)
    assert rep.cleaned_tmp == 1 and not list(folder.glob("*.tmp*"))
    assert all(store.path("vision", "openclip-tiny", "train", c).stat().st_mtime_ns == t for c, t in mtimes.items())
    assert store.done_ids("vision", "openclip-tiny", "train") == set(with_faces)
    for cid in with_faces:  # per-clip (batch_clips=1) == batched (reference, batch_clips=8)
        np.testing.assert_allclose(store.read("vision", "openclip-tiny", "train", cid),
                                   ref_store.read("vision", "openclip-tiny", "train", cid), atol=1e-4)
    meta = read_meta(store, "vision", "openclip-tiny", "train")
    assert meta["n_stored"] == len(with_faces) and sorted(meta["missing"]) == lacking["vision"]
    assert not meta["complete"]  # "complete" is about the whole split; this run covered a subset
    # a third run has nothing to do and keeps the metadata
    rep3 = extract_split(dr, "train", store, "vision", "openclip-tiny", ids=ids, encoder=again, progress=False)
    assert rep3.n_done == 0 and again.calls == len(todo) and rep3.dim == 64


def test_no_mixing_of_backbones(subset, ref, encoders):
    dr, ids, _ = subset
    store, _ = ref  # already holds text/minilm for the subset
    tiny_text = load_backbone("text", "openclip-tiny")
    rep = extract_split(dr, "train", store, "text", "openclip-tiny", ids=ids[:3], encoder=tiny_text, progress=False)
    assert rep.n_existing == 0 and rep.n_done == 3  # minilm's files do not count as done
    a, b = store.folder("text", "minilm", "train"), store.folder("text", "openclip-tiny", "train")
    assert a.is_dir() and b.is_dir() and a != b
    for cid in ids[:3]:
        assert store.read("text", "minilm", "train", cid).shape == (1, 384)
        assert store.read("text", "openclip-tiny", "train", cid).shape == (1, 64)
    assert all(x.shape[1] == 384 for x in store.load_split("text", "minilm", "train").values())
    assert all(x.shape[1] == 64 for x in store.load_split("text", "openclip-tiny", "train").values())
    # one backbone on another input (label prompts) gets its own key too
    key = store_backbone("text", "minilm", text_source="label_prompt")
    assert key == "minilm[label_prompt]"
    rep = extract_split(dr, "train", store, "text", "minilm", ids=ids[:2], text_source="label_prompt",
                        encoder=encoders["text"], progress=False)
    assert rep.store_backbone == key and rep.n_done == 2
    assert not np.allclose(store.read("text", key, "train", ids[0]), store.read("text", "minilm", "train", ids[0]))
    with pytest.raises(ValueError, match="test split"):
        extract_split(dr, "test", store, "text", "minilm", text_source="label_prompt", encoder=encoders["text"])

    class WrongDim:  # another model under an existing name: refused, not mixed in
        name, dim = "minilm", 7

    with pytest.raises(ValueError, match="D=384"):
        extract_split(dr, "train", store, "text", "minilm", ids=ids, encoder=WrongDim(), progress=False)


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_backbone_and_unsafe_pickle(tmp_path, smoke_root):
    root = tmp_path / "root"
    ids = write_tiny_root(root)
    marker = tmp_path / "pwned"
    (root / "vit" / f"{ids['train'][1]}.pkl").write_bytes(pickle.dumps(Evil(marker)))
    store = FeatureStore(tmp_path / "features")
    rep = extract_split(root, "train", store, "vision", "official", progress=False)
    assert not marker.exists()  # the pickle was refused, not executed
    assert rep.failed_ids == [ids["train"][1]] and rep.issues.skipped[0][1] == "unsafe"
    assert "unsafe" in rep.summary()
    assert read_meta(store, "vision", "official", "train")["failed"][ids["train"][1]]["kind"] == "unsafe"
    for cid in (ids["train"][0], ids["train"][2]):
        assert store.read("vision", "official", "train", cid).shape == (5, 8)
    with pytest.raises(DataError) as err:
        extract_split(root, "train", store, "vision", "official", on_error="raise", progress=False)
    assert err.value.kind == "unsafe" and not marker.exists()

    rep = extract_split(root, "valid", store, "audio", "official", progress=False)
    assert rep.n_done == 2 and store.read("audio", "official", "valid", ids["valid"][0]).shape == (7, 12)
    # max_frames spreads the kept rows over the whole clip (stride ceil(5/2) = 3 -> rows 0 and 3)
    rep = extract_split(root, "valid", store, "vision", "official", max_frames=2, progress=False)
    assert rep.store_backbone == "official[max=2]" and rep.strides == {c: 3 for c in ids["valid"]}
    from emi_lib.data import load_features

    full = load_features(DataRoot(root).feature_path("valid", ids["valid"][0], "vit"))
    np.testing.assert_array_equal(store.read("vision", "official[max=2]", "valid", ids["valid"][0]), full[[0, 3]])
    with pytest.raises(DataError, match="no vit/ folder"):  # SynthMimic ships no official features
        extract_split(smoke_root, "train", FeatureStore(tmp_path / "synth_features"), "vision", "official",
                      progress=False)
    with pytest.raises(ProvenanceError, match="another data root"):  # this store holds the tiny root's features
        extract_split(smoke_root, "train", store, "vision", "official", progress=False)


def test_failed_clip_video_source_and_cli(tmp_path, encoders):
    root = tmp_path / "root"
    ids = write_tiny_root(root)
    bad = ids["train"][0]
    for crop in (root / "face_images" / bad).glob("*.jpg"):  # every crop unreadable: a failed clip
        crop.write_bytes(b"not a jpeg")
    store = FeatureStore(tmp_path / "features")
    rep = extract_split(root, "train", store, "vision", "openclip-tiny", encoder=encoders["vision"], progress=False)
    assert rep.failed_ids == [bad] and rep.issues.skipped[0][1] == "unreadable" and rep.n_done == 2
    assert "all 4 face crop(s) are unreadable" in rep.issues.skipped[0][2]
    assert not store.has("vision", "openclip-tiny", "train", bad)
    with pytest.raises(DataError):
        extract_split(root, "train", store, "vision", "openclip-tiny", encoder=encoders["vision"],
                      on_error="raise", progress=False)
    # frames decoded from the mp4 (6 frames): max_frames=3 -> stride 2, own key
    rep = extract_split(root, "train", store, "vision", "openclip-tiny", vision_source="video", max_frames=3,
                        encoder=encoders["vision"], progress=False)
    assert rep.store_backbone == "openclip-tiny[video,max=3]" and rep.n_done == 3
    assert store.read("vision", rep.store_backbone, "train", bad).shape == (3, 64)

    shutil.rmtree(root / "audio")  # no train clip has audio: listed as missing, not a failure
    (root / "vit" / f"{bad}.pkl").write_bytes(pickle.dumps(Evil(tmp_path / "pwned")))  # a failure: exit status 1
    out = tmp_path / "cli_store"
    rc = main([str(root), "--store", str(out), "--vision", "official", "--audio", "logmel", "--splits", "train",
               "test", "--no-progress"])
    assert rc == 1 and not (tmp_path / "pwned").exists()
    assert main([str(tmp_path / "nowhere"), "--store", str(out), "--audio", "logmel"]) == 2
    meta = read_meta(out, "audio", "logmel", "train")
    assert meta["n_missing"] == 3 and meta["n_stored"] == 0 and meta["complete"]
    assert read_meta(out, "audio", "logmel", "test")["n_stored"] == 2
    assert json.loads((FeatureStore(out).folder("vision", "official", "test") / META_NAME).read_text())["n_stored"] == 2
    reps = extract_all(root, out, vision_backbone="official", splits=["train"], progress=False)
    assert list(reps) == ["vision/train"] and reps["vision/train"].n_existing == 2
    assert reps["vision/train"].failed_ids == [bad]  # a failed clip is retried, and listed again


def test_an_unreadable_crop_costs_one_masked_step_and_is_reported(tmp_path, encoders, capsys):
    """One garbage crop is one masked (whole-NaN) step of a clip that keeps its other crops, reported per clip;
    the failure line is printed with progress off and verbose=False, and recorded for later runs."""
    from emi_lib.features.store import valid_steps

    root = tmp_path / "root"
    ids = write_tiny_root(root)
    partial, failed = ids["train"][1], ids["train"][2]
    (root / "face_images" / partial / "2.jpg").write_bytes(b"\xff\xd8 garbage, not a jpeg" * 8)
    for crop in (root / "face_images" / failed).glob("*.jpg"):
        crop.write_bytes(b"")  # zero bytes: unreadable, not an absent face
    store = FeatureStore(tmp_path / "features")
    reps = extract_all(root, store, encoders["vision"].name, splits=["train"], progress=False, verbose=False)
    rep = reps["vision/train"]
    x = store.read("vision", "openclip-tiny", "train", partial)
    assert x.shape == (4, 64) and valid_steps(x).tolist() == [True, True, False, True]
    clean = store.read("vision", "openclip-tiny", "train", ids["train"][0])
    assert np.isfinite(clean).all() and np.isfinite(x[[0, 1, 3]]).all()
    assert rep.failed_ids == [failed] and sorted(rep.computed) == [ids["train"][0], partial]
    assert list(rep.unreadable_frames) == [partial] and "2.jpg" in rep.unreadable_frames[partial][0]
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "FAILED" in ln)
    assert f"{failed} [unreadable]" in line and f"{partial}: 1" in line
    assert reps.failures == {"vision/train": rep.failures}
    assert list(rep.failures["failed"]) == [failed] and list(rep.failures["unreadable_frames"]) == [partial]
    json.dumps(reps.failures)  # JSON-able, for record()
    meta = read_meta(store, "vision", "openclip-tiny", "train")
    assert list(meta["unreadable_frames"]) == [partial] and meta["n_unreadable_frames"] == 1
    assert list(meta["failed"]) == [failed]
    again = extract_all(root, store, encoders["vision"].name, splits=["train"], progress=False)["vision/train"]
    assert again.n_done == 0 and again.failures == rep.failures  # the stored clip's masked frame is still listed
    assert f"{partial}: 1" in capsys.readouterr().err
    from emi_lib.features.extract import recorded_failures

    assert recorded_failures(store, "vision", "openclip-tiny", ["train", "valid"]) == {"vision/train": rep.failures}



def test_two_extractions_of_one_shared_split_take_turns(subset, ref, encoders, tmp_path):
    """Two runs sharing a store (a cache folder) extract the same split at once: the split folder's lock makes the
    second wait and then skip every clip the first stored, so no clip is encoded twice, and both end with the
    same, complete folder."""
    import threading

    dr, ids, lacking = subset
    with_faces = [c for c in ids if c not in lacking["vision"]]
    store = FeatureStore(tmp_path / "shared")
    first_inside = threading.Event()

    class Slow(CrashingEncoder):  # holds the lock long enough for the other thread to arrive
        def encode_frames(self, frames):
            first_inside.set()
            time.sleep(0.05)
            return super().encode_frames(frames)

    encs, reports = [Slow(encoders["vision"]), Slow(encoders["vision"])], [None, None]

    def run(k):
        reports[k] = extract_split(dr, "train", store, "vision", "openclip-tiny", ids=ids, encoder=encs[k],
                                   batch_clips=1, progress=False)

    a = threading.Thread(target=run, args=(0,))
    a.start()
    assert first_inside.wait(60)  # the first run is encoding, inside the folder's lock
    b = threading.Thread(target=run, args=(1,))
    b.start()
    a.join(120)
    b.join(120)
    assert encs[0].calls == len(with_faces) and encs[1].calls == 0  # every clip encoded once, by the first
    assert sorted(reports[0].computed) == sorted(with_faces) and sorted(reports[1].existing) == sorted(with_faces)
    assert store.done_ids("vision", "openclip-tiny", "train") == set(with_faces)
    ref_store, _ = ref
    for cid in with_faces:  # the same features as an extraction alone (per clip vs batched: atol as above)
        np.testing.assert_allclose(store.read("vision", "openclip-tiny", "train", cid),
                                   ref_store.read("vision", "openclip-tiny", "train", cid), atol=1e-4)


@pytest.mark.parametrize("modality,key,expected", [
    ("vision", "openclip-tiny[max=8]", ("openclip-tiny", {"max_frames": 8})),
    ("vision", "mediapipe-facemesh[max=8]+fer[max=8]", ("mediapipe-facemesh+fer", {"max_frames": 8})),
    ("vision", "openclip-tiny[video,stride=2,max=64,size=112]",
     ("openclip-tiny", {"vision_source": "video", "frame_stride": 2, "max_frames": 64, "face_size": 112})),
    ("vision", "openclip:ViT-B-32/openai[size=112x96]", ("openclip:ViT-B-32/openai", {"face_size": (112, 96)})),
    ("audio", "opensmile-compare+logmel", ("opensmile-compare+logmel", {})),
    ("text", "minilm[label_prompt]", ("minilm", {"text_source": "label_prompt"})),
])
def test_a_store_name_parses_back_into_the_backbone_and_settings_that_write_it(modality, key, expected):
    from emi_lib.features.extract import parse_store_backbone, store_backbone

    backbone, kwargs = parse_store_backbone(modality, key)
    assert (backbone, kwargs) == expected
    assert store_backbone(modality, backbone, **kwargs) == key


@pytest.mark.parametrize("modality,key", [("vision", "a[max=8]+b"), ("vision", "x[foo=1]"), ("audio", "logmel[max=3]")])
def test_a_name_store_backbone_never_writes_is_refused(modality, key):
    from emi_lib.features.extract import parse_store_backbone

    with pytest.raises(ValueError, match="a\\[max=8\\]\\+b|foo=1|max=3"):
        parse_store_backbone(modality, key)


@pytest.mark.parametrize("stream,key,media", [
    ("vision", "openclip-tiny", "faces"), ("vision", "openclip-tiny[video,max=8]", "video"),
    ("vision", "mediapipe-facemesh[video]+fer[video]", "video"), ("vision", "official", "vit"),
    ("audio", "official", "wav2vec2"), ("audio", "opensmile-compare+logmel", "audio"),
])
def test_a_streams_media_is_read_off_its_store_name(stream, key, media):
    from emi_lib.train.data import stream_media

    assert stream_media(stream, key) == media
