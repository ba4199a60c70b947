"""Provenance: every derived thing records the data root it was made from and every reader checks it.

Each test here guards a silent failure that existed: a stage-1 run of another root consumed without a word,
a feature store (and its priors cache) kept after its root was regenerated in place, a notebook run on
another data seed publishing into the repository's figures/."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from emi_lib.data.fingerprint import ProvenanceError, check_same_root, clear_cache, root_fingerprint
from emi_lib.features.store import FeatureStore, derived_store
from emi_lib.paths import is_canonical_run, model_run_dir
from emi_lib.train.inputs import find_stage1


def _fake_synth(path, seed=0, **config):
    """A folder that has SynthMimic's manifest (all a fingerprint reads)."""
    (path / "synthmimic").mkdir(parents=True, exist_ok=True)
    man = {"generator": "SynthMimic", "version": "1.0.0", "seed": seed, "profile": "smoke",
           "config": {"seed": seed, **config}, "splits": ["train", "valid", "test"], "wall_time_s": 1.0}
    (path / "synthmimic" / "manifest.json").write_text(json.dumps(man))
    return path


def test_fingerprints_tell_roots_apart_and_ignore_timing(tmp_path):
    a = root_fingerprint(_fake_synth(tmp_path / "a", seed=0))
    b = root_fingerprint(_fake_synth(tmp_path / "b", seed=1))
    again = root_fingerprint(_fake_synth(tmp_path / "c", seed=0))
    assert a["kind"] == "synthmimic" and a["fingerprint"] != b["fingerprint"]
    assert again["fingerprint"] == a["fingerprint"]  # the same generator config is the same data
    man = json.loads((tmp_path / "a" / "synthmimic" / "manifest.json").read_text())
    man["wall_time_s"] = 99.0
    (tmp_path / "a" / "synthmimic" / "manifest.json").write_text(json.dumps(man))
    assert root_fingerprint(tmp_path / "a")["fingerprint"] == a["fingerprint"]


def test_fingerprint_of_a_real_layout_sees_tables_and_files(smoke_root, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(smoke_root, root, ignore=shutil.ignore_patterns("synthmimic"))
    fp = root_fingerprint(root)
    assert fp["kind"] == "files" and fp["data_root"] == str(root.resolve())
    csv = root / "valid_split.csv"
    csv.write_text(csv.read_text().replace("0.", "0.0", 1))  # a label edited
    fp2 = root_fingerprint(root)
    assert fp2["fingerprint"] != fp["fingerprint"]
    audio = next((root / "audio").iterdir())
    audio.write_bytes(audio.read_bytes() + b"\0")  # a file rewritten in place changed size
    clear_cache()  # (in this process such an edit is seen after fingerprint.CACHE_SECONDS)
    fp3 = root_fingerprint(root)
    assert fp3["fingerprint"] != fp2["fingerprint"]
    (root / "audio" / "extra.mp3").write_bytes(b"x")  # a file added: the folder's time changes, seen at once
    assert root_fingerprint(root)["fingerprint"] != fp3["fingerprint"]


def test_a_store_of_another_root_is_refused_naming_both(tmp_path):
    a, b = _fake_synth(tmp_path / "a", seed=0), _fake_synth(tmp_path / "b", seed=1)
    store = FeatureStore(tmp_path / "store").bind(a)
    store.write("vision", "fake", "train", "00000", np.ones((2, 3)))
    assert store.bind(a) is store and store.provenance()["data"]["data_root"] == str(a.resolve())
    with pytest.raises(ProvenanceError, match=rf"{a.resolve()}.*{b.resolve()}"):
        store.bind(b)
    assert store.has("vision", "fake", "train", "00000")  # refusing loses nothing
    legacy = FeatureStore(tmp_path / "legacy")
    legacy.write("vision", "fake", "train", "00000", np.ones((2, 3)))  # written before stores kept a record
    with pytest.raises(ProvenanceError, match="no provenance record"):
        legacy.bind(a)


def test_a_regenerated_root_empties_its_derived_store_and_priors(tmp_path, monkeypatch):
    monkeypatch.setenv("EMI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("EMI_CACHE_DIR", raising=False)  # its stores in this test's runs folder, not the shared cache
    root = _fake_synth(tmp_path / "root", seed=0, n_train=4)
    store = derived_store("smoke", root)
    store.write("audio", "fake", "train", "00000", np.ones((2, 3)))
    (store.root / "priors").mkdir()
    (store.root / "priors" / "train.csv").write_text("Filename,face_quality\n00000,1.0\n")
    assert derived_store("smoke", root).has("audio", "fake", "train", "00000")  # same root: kept
    _fake_synth(root, seed=0, n_train=5)  # regenerated in place with another config
    again = derived_store("smoke", root)
    assert not again.has("audio", "fake", "train", "00000") and not (again.root / "priors").exists()
    assert again.provenance()["data"] == root_fingerprint(root)
    with pytest.raises(ProvenanceError, match="regenerated or changed"):  # an explicit store is never emptied
        FeatureStore(store.root).bind(_fake_synth(root, seed=0, n_train=6))


def _stage1_run(tmp_path, root):
    store = FeatureStore(tmp_path / "s1store").bind(root)
    for m in ("vision", "audio"):
        for s in ("train", "valid", "test"):
            store.write(f"{m}_aligned", "key", s, "00000", np.ones((2, 4)))
    run = tmp_path / "s1run"
    run.mkdir()
    info = {"schema": "emi.stage1_outputs/v1", "data_root": str(root), "data": root_fingerprint(root),
            "store_dir": str(store.root), "splits": ["train", "valid", "test"],
            "modalities": {m: {"frames": {"modality": f"{m}_aligned", "backbone": "key"},
                               "raw": {"modality": m, "backbone": "fake"}} for m in ("vision", "audio")}}
    (run / "stage1_outputs.json").write_text(json.dumps(info))
    return run


def test_a_foreign_stage1_run_is_refused_with_both_roots_named(tmp_path, monkeypatch):
    a, b = _fake_synth(tmp_path / "a", seed=0), _fake_synth(tmp_path / "b", seed=1)
    run = _stage1_run(tmp_path, a)
    s1, note = find_stage1(run, "smoke", a)
    assert s1 is not None and s1.streams["vision"] == ("vision_aligned", "key")
    with pytest.raises(ProvenanceError, match=rf"{a.resolve()}.*{b.resolve()}"):
        find_stage1(run, "smoke", b)
    # "auto" falls back to raw features and says why
    monkeypatch.setenv("EMI_RUNS_DIR", str(tmp_path / "runs"))
    shutil.copytree(run, tmp_path / "runs" / "01_stage1_contrastive_pretraining")
    s1, note = find_stage1("auto", "smoke", b)
    assert s1 is None and "fell back to raw features" in note and str(a.resolve()) in note
    assert find_stage1("auto", "smoke", a)[0] is not None


def test_check_same_root_explains_a_regeneration(tmp_path):
    old = {"data_root": "/r", "fingerprint": "1"}
    with pytest.raises(ProvenanceError, match="regenerated or changed since"):
        check_same_root(old, {"data_root": "/r", "fingerprint": "2"}, "x")
    with pytest.raises(ProvenanceError, match="another data root"):
        check_same_root(old, {"data_root": "/s", "fingerprint": "2"}, "x")
    with pytest.raises(ProvenanceError, match="unrecorded"):
        check_same_root(None, {"data_root": "/s", "fingerprint": "2"}, "x")


def test_only_the_canonical_demo_run_publishes(tmp_path, monkeypatch):
    monkeypatch.delenv("EMI_FIGURES_DIR", raising=False)
    monkeypatch.setenv("EMI_RUNS_DIR", str(tmp_path / "runs"))
    inside = tmp_path / "runs" / "02_stage2_fusion_training"
    assert is_canonical_run("demo", "", 0, inside)[0]
    assert not is_canonical_run("demo", "", 1, inside)[0]  # another data seed
    assert not is_canonical_run("smoke", "", 0, inside)[0]
    assert not is_canonical_run("demo", "/data/hume", 0, inside)[0]
    assert not is_canonical_run("demo", "", 0, tmp_path / "elsewhere")[0]  # a run folder outside the runs root


def test_model_folders_are_named_by_one_function(tmp_path):
    assert model_run_dir(tmp_path, "full (quality fusion)") == tmp_path / "models" / "full"
    assert model_run_dir(tmp_path, "equal-weight fusion") == tmp_path / "models" / "equal_weight_fusion"
