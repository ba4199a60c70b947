"""The command line does what the notebooks do: extract -> stage1 --export -> stage2 --stage1 -> predict on a smoke
root gives the submission of the notebook path (prepare_stage2_inputs + train_stage2 + predict, as notebook 02),
and every step records what it was made from and refuses inputs that are not the recorded ones."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from emi_lib.constants import EMOTIONS, clip_stem
from emi_lib.data import DataRoot

VISION = "vision/openclip-tiny[max=8]"


def _launch(*args) -> tuple[int, str]:
    from emi_lib.train.launch import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(a) for a in args])
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def pipeline(smoke_root, tmp_path_factory):
    """The shell pipeline, run in-process: cheap offline backbones, smoke sizes."""
    from emi_lib.features.extract_cli import main as extract

    tmp = tmp_path_factory.mktemp("cli")
    store, s1, s2 = tmp / "feats", tmp / "runs" / "s1", tmp / "runs" / "s2"
    assert extract([str(smoke_root), "--store", str(store), "--vision", "openclip-tiny", "--max-frames", "8",
                    "--audio", "logmel", "--no-progress"]) == 0
    assert extract([str(smoke_root), "--store", str(store), "--text", "openclip-tiny", "--splits", "train", "valid",
                    "--no-progress"]) == 0
    common = ["--root", smoke_root, "--store", store, "--profile", "smoke", "--no-progress", "--device", "cpu"]
    rc, log1 = _launch("stage1", *common, "--vision", VISION, "--audio", "audio/logmel", "--text", "text/openclip-tiny",
                       "--out", s1, "--batch-size", 8, "--export")
    assert rc == 0, log1
    rc, log2 = _launch("stage2", *common, "--stage1", s1, "--out", s2, "--epochs", 2)
    assert rc == 0, log2
    rc, log3 = _launch("predict", "--run", s2)
    assert rc == 0, log3
    return {"root": smoke_root, "store": store, "s1": s1, "s2": s2, "logs": (log1, log2, log3), "tmp": tmp}


def test_cli_submission_equals_the_notebook_path(pipeline):
    from emi_lib.eval.submission import score_submission, write_submission
    from emi_lib.train.config import stage2_config
    from emi_lib.train.inputs import prepare_stage2_inputs
    from emi_lib.train.stage2 import predict, train_stage2

    p = pipeline
    spec = json.loads((p["s1"] / "stage1_outputs.json").read_text())
    assert spec["schema"] == "emi.stage1_outputs/v1" and spec["splits"] == ["train", "valid", "test"]
    assert spec["modalities"]["vision"]["raw"]["backbone"] == "openclip-tiny[max=8]"
    # notebook 02's path on the same stage-1 run, store and config
    inp = prepare_stage2_inputs(p["root"], "smoke", stage1=str(p["s1"]), store_dir=p["store"], verbose=False)
    assert inp.kind == "stage1" and inp.with_raw is not None  # "aligned+raw", notebook 02's default
    cfg = stage2_config("smoke", inp.dims(), fusion="quality", use_priors=True, seed=0,
                        n_train=len(inp.sets["train"]), epochs=2, lr=2e-3, batch_size=32)
    net, _ = train_stage2(cfg, inp.sets["train"], inp.sets["valid"], p["tmp"] / "nb", progress=False, resume=False)
    pred = predict(net, inp.sets["test"], batch_size=64)[0]
    sub = pd.read_csv(p["s2"] / "submission.csv")
    sub.index = [clip_stem(i) for i in sub.pop("Filename")]
    assert set(sub.index) == set(DataRoot(p["root"]).ids("test"))
    np.testing.assert_allclose(sub.loc[pred.index, list(EMOTIONS)].to_numpy(), pred.clip(0, 1).to_numpy(), atol=1e-6)
    nb_sub = write_submission(pred, p["tmp"] / "nb_submission.csv", root=p["root"])
    info = json.loads((p["s2"] / "submission.json").read_text())
    assert info["score"]["mean"] == pytest.approx(score_submission(nb_sub, p["root"])["mean"], abs=1e-5)
    assert info["inputs"]["stage1"] == str((p["s1"] / "stage1_outputs.json").resolve())


def test_cli_records_its_inputs_and_prints_one_line_per_epoch(pipeline):
    from emi_lib.train.inputs import Standardizer

    log1, log2, log3 = pipeline["logs"]
    assert "stage 1 vision-text epoch 3/3: train loss" in log1 and "stage 1 audio-text epoch 1/3" in log1
    assert "stage 2 epoch 1/2: train loss" in log2 and "val mean PCC" in log2 and "stage 2 epoch 2/2" in log2
    assert "(validated)" in log3
    rec = json.loads((pipeline["s2"] / "inputs.json").read_text())
    assert rec["schema"] == "emi.stage2_run/v1" and rec["priors"] and rec["stage1_inputs"] == "aligned+raw"
    assert rec["data_root"] == str(pipeline["root"].resolve()) and set(rec["split_csv_sha1"]) == {"train", "valid", "test"}
    assert rec["with_raw"]["vision"] == ["vision", "openclip-tiny[max=8]"]
    std = Standardizer.load(pipeline["s2"] / rec["standardizer"])
    assert set(std.mean) == {"vision", "audio"} and std.mean["vision"].shape == (64 + 16,)  # raw 64 + aligned E=16


def test_predict_refuses_another_root_store_or_changed_data(pipeline, tmp_path, capsys):
    from emi_lib.train.launch import main

    other = tmp_path / "other_root"
    other.mkdir()
    assert main(["predict", "--run", str(pipeline["s2"]), "--root", str(other)]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and str(pipeline["root"].resolve()) in err
    assert main(["predict", "--run", str(pipeline["s2"]), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and str(pipeline["store"].resolve()) in err
    run = tmp_path / "run"  # a run whose recorded split CSVs are not the root's any more
    shutil.copytree(pipeline["s2"], run)
    rec = json.loads((run / "inputs.json").read_text())
    rec["split_csv_sha1"]["test"] = "0" * 40
    (run / "inputs.json").write_text(json.dumps(rec))
    assert main(["predict", "--run", str(run)]) == 2
    assert "test_split.csv" in capsys.readouterr().err
    assert main(["predict", "--run", str(tmp_path / "nothing")]) == 2
    assert "inputs.json" in capsys.readouterr().err


def test_stage2_refuses_a_stage1_run_of_another_store(pipeline, tmp_path, capsys):
    from emi_lib.train.launch import main

    rc = main(["stage2", "--root", str(pipeline["root"]), "--store", str(tmp_path), "--stage1", str(pipeline["s1"]),
               "--out", str(tmp_path / "s2"), "--profile", "smoke", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stage1_outputs.json" in err and str(pipeline["store"].resolve()) in err


def test_stage1_exports_out_of_fold_with_label_prompts(pipeline, tmp_path):
    from emi_lib.features.extract_cli import main as extract
    from emi_lib.features.store import FeatureStore

    p = pipeline
    assert extract([str(p["root"]), "--store", str(p["store"]), "--text", "openclip-tiny", "--text-source",
                    "label_prompt", "--splits", "train", "valid", "--no-progress"]) == 0
    out = tmp_path / "s1_oof"
    rc, log = _launch("stage1", "--root", p["root"], "--store", p["store"], "--vision", VISION, "--audio", "audio/logmel",
                      "--text", "text/openclip-tiny[label_prompt]", "--out", out, "--profile", "smoke", "--epochs", 1,
                      "--batch-size", 8, "--export", "--oof-folds", 2, "--no-progress", "--device", "cpu")
    assert rc == 0, log
    spec = json.loads((out / "stage1_outputs.json").read_text())
    assert spec["text"]["source"] == "label_prompt" and spec["text"]["backbone"] == "openclip-tiny"
    data, store = DataRoot(p["root"]), FeatureStore(spec["store_dir"])
    for m in ("vision", "audio"):
        mod = spec["modalities"][m]
        assert mod["train_export"] == "out_of_fold" and mod["oof_folds"] == 2
        assert mod["oof_fold_file"] == str((out / "stage1_train_folds.csv").resolve())
        for split in spec["splits"]:
            assert store.done_ids(mod["frames"]["modality"], mod["frames"]["backbone"], split) >= set(data.ids(split))
    folds = pd.read_csv(out / "stage1_train_folds.csv", dtype={"id": str}).set_index("id")["fold"]
    assert set(folds.index) == set(data.ids("train")) and set(folds) == {0, 1}


def test_every_command_line_option_has_help():
    from emi_lib.features.export_official import main as export_main  # noqa: F401  (importable)
    from emi_lib.features.extract_cli import parser as extract_parser
    from emi_lib.train.launch import parser as launch_parser

    def lacking(ap):
        out = [a.dest for a in ap._actions if not a.help and a.dest != "help"]
        for a in ap._actions:
            for name, sub in (getattr(a, "choices", None) or {}).items() if hasattr(a, "_name_parser_map") else ():
                out += [f"{name}: {x}" for x in lacking(sub)]
        return out

    assert lacking(extract_parser()) == []
    assert lacking(launch_parser()) == []
    assert "gets NO file" in extract_parser().format_help()


def test_the_command_line_modules_do_not_shadow_the_package_api():
    """``emi_lib.train.predict`` is stage 2's predict function, also after the command line's modules are imported."""
    import emi_lib.train
    import emi_lib.train.launch  # noqa: F401
    import emi_lib.train.run_record  # noqa: F401
    from emi_lib.train.stage2 import predict

    assert emi_lib.train.predict is predict


def test_a_regenerated_roots_aligned_export_records_its_aligner_and_another_aligner_re_exports(pipeline, tmp_path,
                                                                                               monkeypatch):
    """inputs_for_root (the robustness sweep's path) passes another root's split through the stage-1 aligners and
    records which aligner in ``_source.json``: a second call reuses the export, an aligner with other weights
    re-exports (only its own modality), and the new aligned features are what that aligner gives."""
    import hashlib

    import torch

    import emi_lib.train.stage1 as stage1
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.inputs import inputs_for_root, prepare_stage2_inputs

    p = pipeline
    like = prepare_stage2_inputs(p["root"], "smoke", stage1=str(p["s1"]), store_dir=p["store"], verbose=False)
    assert like.kind == "stage1"
    new_root, store2 = tmp_path / "root2", tmp_path / "feats2"
    shutil.copytree(p["root"], new_root)
    exports = []
    real_export = stage1.export_aligned
    monkeypatch.setattr(stage1, "export_aligned", lambda model, *a, **k: exports.append(model.cfg.modality)
                        or real_export(model, *a, **k))

    def source(m):
        mod, key = like.streams[m]
        return json.loads((FeatureStore(store2).folder(mod, key, "test") / "_source.json").read_text())

    inputs_for_root(new_root, like, "smoke", split="test", store_dir=store2)
    assert sorted(exports) == ["audio", "vision"]
    for m in ("vision", "audio"):
        rec = source(m)
        assert rec["stage1_outputs"] == str(like.stage1.path) and rec["split"] == "test"
        assert rec["checkpoint_sha1"] == hashlib.sha1(like.stage1.checkpoints[m].read_bytes()).hexdigest()
    inputs_for_root(new_root, like, "smoke", split="test", store_dir=store2)
    assert len(exports) == 2  # the same aligners: the export is reused

    mod, key = like.streams["vision"]
    cid = DataRoot(new_root).ids("test")[0]
    before = FeatureStore(store2).read(mod, key, "test", cid)
    model, cfg = stage1.load_aligner(like.stage1.checkpoints["vision"])
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    like.stage1.checkpoints["vision"] = stage1.save_aligner(model, cfg, tmp_path / "retrained" / "aligner_vision.pt")
    inputs_for_root(new_root, like, "smoke", split="test", store_dir=store2)
    assert exports[2:] == ["vision"]  # only the changed aligner re-exports
    assert source("vision")["checkpoint_sha1"] == hashlib.sha1(
        like.stage1.checkpoints["vision"].read_bytes()).hexdigest()
    after = FeatureStore(store2).read(mod, key, "test", cid)
    assert before.shape == after.shape and not np.allclose(before, after)
