"""SynthMimic: layout, labels, media, corruptions, determinism, overrides, CLI."""

from __future__ import annotations

import json

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from emi_lib.constants import EMOTIONS, HEADER, SAMPLE_RATE, clip_stem
from emi_lib.data.synth import PROFILES, SynthConfig, ensure_synthmimic, generate
from emi_lib.data.synth.latent import make_plan

TINY = dict(n_train=3, n_valid=2, n_test=2, n_subjects=3, duration_range_s=(2.0, 2.5))


def _base(root, split):
    return root / "test_data" if split == "test" else root


def _corr(root):
    return pd.read_csv(root / "synthmimic" / "corruptions.csv").set_index("Filename")


def _split_ids(root):
    return {
        "train": pd.read_csv(root / "train_split.csv")["Filename"].tolist(),
        "valid": pd.read_csv(root / "valid_split.csv")["Filename"].tolist(),
        "test": pd.read_csv(root / "test_data" / "test_split.csv")["Filename"].tolist(),
    }


def test_split_csvs_and_ids(smoke_root):
    for name in ("train_split.csv", "valid_split.csv", "synthmimic/test_labels.csv"):
        assert (smoke_root / name).read_text().splitlines()[0] == ",".join(HEADER)
    assert (smoke_root / "test_data" / "test_split.csv").read_text().splitlines()[0] == "Filename"
    ids = _split_ids(smoke_root)
    cfg = SynthConfig.from_profile("smoke")
    assert [len(ids[s]) for s in ("train", "valid", "test")] == [cfg.n_train, cfg.n_valid, cfg.n_test]
    assert ids["train"] + ids["valid"] + ids["test"] == list(range(cfg.n_total))  # test ids continue after valid
    hidden = pd.read_csv(smoke_root / "synthmimic" / "test_labels.csv")
    assert hidden["Filename"].tolist() == ids["test"]
    assert list(pd.read_csv(smoke_root / "test_data" / "test_split.csv").columns) == ["Filename"]


def test_labels_are_k_over_n_fractions(smoke_root):
    lat = pd.read_csv(smoke_root / "synthmimic" / "latents.csv").set_index("Filename")
    assert list(lat.columns[:7]) == ["split", *EMOTIONS]
    k = SynthConfig.from_profile("smoke").rating_levels
    frames = [pd.read_csv(smoke_root / f) for f in ("train_split.csv", "valid_split.csv", "synthmimic/test_labels.csv")]
    labels = pd.concat(frames).set_index("Filename")
    vals = labels[list(EMOTIONS)].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    denom = (lat.loc[labels.index, "n_annotators"].to_numpy() * k)[:, None]
    assert np.allclose(vals * denom, np.round(vals * denom), atol=1e-6)
    assert (vals == 0).mean() > 0.15  # many exact zeros, like the real labels
    z = lat[list(EMOTIONS)].to_numpy()
    assert ((z >= 0) & (z <= 1)).all()


def test_manifest(smoke_root):
    man = json.loads((smoke_root / "synthmimic" / "manifest.json").read_text())
    assert man["generator"] == "SynthMimic" and man["seed"] == 0 and man["profile"] == "smoke"
    assert man["config"]["n_train"] == PROFILES["smoke"]["n_train"]
    assert man["counts"] == {"train": 24, "valid": 12, "test": 12}
    for split in ("train", "valid", "test"):
        nc = man["noise_ceiling"][split]
        assert set(nc["per_emotion"]) == set(EMOTIONS)
        assert 0.5 < nc["mean"] < 1.0
    assert man["wall_time_s"] > 0


def test_every_file_present_or_listed_missing(smoke_root):
    corr = _corr(smoke_root)
    assert set(corr["face_corruption"]) <= {"none", "occlusion", "missing_frames", "no_face"}
    assert set(corr["audio_corruption"]) <= {"none", "noise", "clipping", "dropout", "missing", "silent"}
    for split, ids in _split_ids(smoke_root).items():
        sub = corr.loc[ids]
        # the rare kinds exist in every split, even in smoke
        assert (sub["face_corruption"] == "no_face").sum() >= 1
        assert (sub["audio_corruption"] == "missing").sum() >= 1
        assert (sub["audio_corruption"] == "silent").sum() >= 1
        base = _base(smoke_root, split)
        for cid in ids:
            row, stem = corr.loc[cid], clip_stem(cid)
            assert (base / "raw" / f"{stem}.mp4").stat().st_size > 0
            assert (base / "text" / f"{stem}.txt").exists()
            assert (base / "audio" / f"{stem}.mp3").exists() == (row["audio_corruption"] != "missing")
            crops = sorted(int(p.stem) for p in (base / "face_images" / stem).glob("*.jpg"))
            assert len(crops) == row["n_face_images"]
            if row["face_corruption"] == "no_face":
                assert crops == []
            elif row["face_corruption"] == "missing_frames":
                assert 0 < len(crops) < row["n_frames"]
            else:
                assert crops == list(range(row["n_frames"]))
            text = (base / "text" / f"{stem}.txt").read_text()
            if row["audio_corruption"] in ("missing", "silent"):
                assert text == ""
            assert 0 <= row["face_severity"] <= 1 and 0 <= row["audio_severity"] <= 1
            assert np.isnan(row["audio_snr_db"]) == (row["audio_corruption"] != "noise")


def test_media_decode(smoke_root):
    corr = _corr(smoke_root)
    lat = pd.read_csv(smoke_root / "synthmimic" / "latents.csv").set_index("Filename")
    cfg = SynthConfig.from_profile("smoke")
    for cid in [0, 5, 30, 40]:
        split = lat.loc[cid, "split"]
        base, stem = _base(smoke_root, split), clip_stem(cid)
        with av.open(str(base / "raw" / f"{stem}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == corr.loc[cid, "n_frames"] == round(lat.loc[cid, "duration_s"] * cfg.fps)
        assert frames[0].shape == (cfg.frame_size, cfg.frame_size, 3)
        mp3 = base / "audio" / f"{stem}.mp3"
        if mp3.exists():
            x, sr = sf.read(str(mp3))
            assert sr == SAMPLE_RATE and x.ndim == 1
            assert abs(len(x) / sr - lat.loc[cid, "duration_s"]) < 0.1
        jpgs = sorted((base / "face_images" / stem).glob("*.jpg"))
        if jpgs:
            assert Image.open(jpgs[0]).size == (cfg.crop_size, cfg.crop_size)


def _snapshot(root):
    """Everything that must be reproducible: CSVs, transcripts, decoded audio and face arrays."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.suffix in (".csv", ".txt"):
            snap[rel] = p.read_text()
        elif p.suffix == ".mp3":
            snap[rel] = sf.read(str(p), dtype="float32")[0]
        elif p.suffix == ".jpg" and p.stem in ("0", "7"):
            snap[rel] = np.asarray(Image.open(p))
        elif p.suffix == ".mp4" and p.stem in ("00000", "00030"):
            with av.open(str(p)) as c:
                snap[rel] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return snap


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], str):
            assert a[k] == b[k], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_same_seed_same_data_any_worker_count(smoke_root, tmp_path):
    # the fixture used the default worker count (os.cpu_count()); regenerate in one process
    generate(tmp_path, SynthConfig.from_profile("smoke", seed=0), workers=1, progress=False)
    a, b = _snapshot(smoke_root), _snapshot(tmp_path)
    assert any(k.endswith(".mp3") for k in a) and any(k.endswith(".mp4") for k in a)
    _same(a, b)


def test_different_seed_different_data(tmp_path):
    generate(tmp_path / "s0", SynthConfig.from_profile("smoke", seed=0, **TINY), workers=2, progress=False)
    generate(tmp_path / "s1", SynthConfig.from_profile("smoke", seed=1, **TINY), workers=1, progress=False)
    l0 = (tmp_path / "s0" / "train_split.csv").read_text()
    l1 = (tmp_path / "s1" / "train_split.csv").read_text()
    assert l0.splitlines()[0] == l1.splitlines()[0] and l0 != l1
    for rel in ("raw/00000.mp4", "raw/00001.mp4", "synthmimic/latents.csv"):
        assert (tmp_path / "s0" / rel).read_bytes() != (tmp_path / "s1" / rel).read_bytes()


def test_overrides_change_corruption_rates():
    def share(cfg, key, kind):
        return np.mean([getattr(p, key) == kind for p in make_plan(cfg)])

    base = SynthConfig.from_profile("demo", seed=0)
    assert share(SynthConfig.from_profile("demo", occlusion_rate=0.0), "face_corruption", "occlusion") == 0
    hi = SynthConfig.from_profile("demo", occlusion_rate=0.6)
    assert share(hi, "face_corruption", "occlusion") > share(base, "face_corruption", "occlusion") + 0.3
    assert share(SynthConfig.from_profile("demo", noise_rate=0.0), "audio_corruption", "noise") == 0
    hi = SynthConfig.from_profile("demo", noise_rate=0.6)
    assert share(hi, "audio_corruption", "noise") > share(base, "audio_corruption", "noise") + 0.3
    with pytest.raises(ValueError, match="sum"):
        SynthConfig.from_profile("demo", noise_rate=0.95)
    with pytest.raises(TypeError, match="unknown"):
        SynthConfig.from_profile("demo", no_such_field=1)
    with pytest.raises(ValueError, match="profile"):
        SynthConfig.from_profile("huge")


def test_overrides_reach_the_files(tmp_path):
    cfg = SynthConfig.from_profile("smoke", seed=3, occlusion_rate=1.0, no_face_rate=0.0, missing_frames_rate=0.0,
                                   noise_rate=0.9, missing_audio_rate=0.0, silent_rate=0.0, **TINY)
    generate(tmp_path, cfg, workers=1, progress=False)
    corr = _corr(tmp_path)
    assert (corr["face_corruption"] == "occlusion").all()
    assert (corr["face_severity"] > 0).all()
    noisy = corr[corr["audio_corruption"] == "noise"]
    assert len(noisy) >= 1 and noisy["audio_snr_db"].between(*cfg.noise_snr_db).all()


def test_ensure_synthmimic_regenerates_only_on_change(tmp_path):
    root = ensure_synthmimic(tmp_path, profile="smoke", seed=0, workers=1, progress=False, **TINY)
    man = root / "synthmimic" / "manifest.json"
    stamp = man.stat().st_mtime_ns
    ensure_synthmimic(tmp_path, profile="smoke", seed=0, workers=1, progress=False, **TINY)
    assert man.stat().st_mtime_ns == stamp
    ensure_synthmimic(tmp_path, profile="smoke", seed=0, workers=1, progress=False, occlusion_rate=0.5, **TINY)
    assert json.loads(man.read_text())["config"]["occlusion_rate"] == 0.5


def test_refuses_to_overwrite_a_foreign_root(tmp_path):
    (tmp_path / "train_split.csv").write_text(",".join(HEADER) + "\n")
    with pytest.raises(FileExistsError, match="refusing"):
        generate(tmp_path, SynthConfig.from_profile("smoke", **TINY), workers=1, progress=False)
    assert (tmp_path / "train_split.csv").exists()


def test_cli_parses_and_reports(monkeypatch, tmp_path, capsys):
    import emi_lib.data.synth.__main__ as cli

    seen = {}

    def fake_generate(out, cfg, workers=None, progress=True):
        seen.update(out=out, cfg=cfg, workers=workers)
        nc = {"per_emotion": dict.fromkeys(EMOTIONS, 0.8), "mean": 0.8}
        return {"version": "x", "counts": {"train": 1, "valid": 1, "test": 1}, "frames_total": 3, "workers": 2,
                "wall_time_s": 1.0, "corruption_counts": {"face": {"none": 3}, "audio": {"none": 3}},
                "noise_ceiling": {"train": nc, "valid": nc, "test": nc}}

    monkeypatch.setattr(cli, "generate", fake_generate)
    assert cli.main(["--out", str(tmp_path), "--profile", "bench", "--seed", "4", "--occlusion-rate", "0.3",
                     "--noise-rate", "0.2", "--workers", "2", "--no-progress"]) == 0
    cfg = seen["cfg"]
    assert (cfg.profile, cfg.seed, cfg.occlusion_rate, cfg.noise_rate, seen["workers"]) == ("bench", 4, 0.3, 0.2, 2)
    assert "noise ceiling" in capsys.readouterr().out
