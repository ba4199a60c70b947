"""Notebook 04's explorer: the fusion-weight timeline, the pure figure functions and the widget app.

Inputs are random features shaped like the smoke root's clips (one vision step per face crop, 100 audio
steps per second), so no feature extraction runs here; the model is a tiny untrained ``EMIModel``."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from emi_lib.constants import EMOTIONS, SAMPLE_RATE
from emi_lib.data import DataRoot
from emi_lib.data.errors import DataError
from emi_lib.data.media import face_files, load_audio
from emi_lib.experiments.explorer_model import resolve_model
from emi_lib.models.emi_model import EMIModel, EMIModelConfig
from emi_lib.train.data import Stage2Data, media_absent
from emi_lib.train.stage2 import predict
from emi_lib.viz import explorer as X
from emi_lib.viz.timeline import fusion_timeline, step_times

torch.set_num_threads(1)
PNG = b"\x89PNG"


def _split_data(root, split: str, seed: int = 0) -> Stage2Data:
    dr, rng = DataRoot(root), np.random.default_rng(seed)
    vision, audio = {}, {}
    for cid in dr.ids(split):
        try:
            n_v = len(face_files(dr.face_dir(split, cid)))
        except DataError:
            n_v = 0
        try:
            n_a = int(len(load_audio(dr.audio_path(split, cid))) / SAMPLE_RATE * 100)
        except DataError:
            n_a = 0
        vision[cid] = rng.normal(size=(n_v, 8)).astype(np.float32)
        audio[cid] = rng.normal(size=(n_a, 6)).astype(np.float32)
    ids = dr.ids(split)
    priors = pd.DataFrame(rng.uniform(size=(len(ids), 2)), index=ids, columns=["face_quality", "audio_quality"])
    labels = dr.split(split) if split != "test" else None
    return Stage2Data(vision, audio, labels=labels, priors=priors, ids=ids, absent=media_absent(root, split))


@pytest.fixture(scope="module")
def inputs(smoke_root):
    sets = {s: _split_data(smoke_root, s, i) for i, s in enumerate(("train", "valid", "test"))}
    return SimpleNamespace(sets=sets, dims=lambda: sets["train"].dims())


def _model(**kw) -> EMIModel:
    torch.manual_seed(0)
    return EMIModel(EMIModelConfig.tiny(8, 6, **kw)).eval()


def _clip_with_both(data: Stage2Data) -> str:
    return next(c for c in data.ids if data.has("vision", c) and data.has("audio", c))


def _times(data, cid, dur=3.0):
    return {"vision": step_times(len(data.vision[cid]), dur), "audio": step_times(len(data.audio[cid]), dur)}


# ------------------------------------------------------------------------------------------------ timeline
@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_window_timeline_is_a_distribution_and_keeps_clip_weights(inputs, pooling):
    data, model = inputs.sets["test"], _model(pooling=pooling)
    cid = _clip_with_both(data)
    grid = np.linspace(0, 3.0, 31)
    tl = fusion_timeline(model, data, cid, _times(data, cid), times=grid, window_s=0.8)
    assert tl.method == "window" and tl.weights.shape == (31, 2) and len(tl.times) == 31
    assert np.all((tl.weights >= 0) & (tl.weights <= 1))
    any_avail = tl.available.any(1)
    np.testing.assert_allclose(tl.weights[any_avail].sum(1), 1.0, atol=1e-6)
    assert np.all(tl.weights[~tl.available] == 0)
    _, w, _ = predict(model, data)
    np.testing.assert_allclose(tl.clip_weights, w.loc[cid, tl.modalities].to_numpy(), atol=1e-6)
    assert set(tl.mean_weights()) == {"vision", "audio"}


def test_missing_modality_gets_exactly_zero(inputs):
    src = inputs.sets["test"]
    cid = _clip_with_both(src)
    data = Stage2Data({cid: src.vision[cid]}, {cid: np.zeros((0, 6), np.float32)}, priors=src.priors, ids=[cid])
    tl = fusion_timeline(_model(), data, cid, {"vision": step_times(len(src.vision[cid]), 3.0), "audio": []},
                         times=np.linspace(0, 3, 20))
    a = tl.modalities.index("audio")
    assert np.all(tl.weights[:, a] == 0.0) and tl.clip_weights[a] == 0.0
    np.testing.assert_allclose(tl.weights[tl.available.any(1)].sum(1), 1.0, atol=1e-6)


def test_window_without_steps_of_a_modality_gives_it_zero(inputs):
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    times = _times(data, cid)
    times["vision"] = np.linspace(0.0, 1.0, len(times["vision"]))  # face crops only in the first second
    tl = fusion_timeline(_model(), data, cid, times, times=np.linspace(0, 3, 31), window_s=0.5)
    v, late = tl.modalities.index("vision"), tl.times > 1.3
    assert not tl.available[late, v].any() and np.all(tl.weights[late, v] == 0)
    np.testing.assert_allclose(tl.weights[late, 1 - v], 1.0)


def test_per_step_and_constant_methods(inputs):
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    tl = fusion_timeline(_model(per_step=True), data, cid, _times(data, cid), times=np.linspace(0, 3, 12))
    assert tl.method == "per_step" and tl.weights.shape == (12, 2)
    np.testing.assert_allclose(tl.weights.sum(1), 1.0, atol=1e-6)
    tl = fusion_timeline(_model(fusion="equal"), data, cid, _times(data, cid), times=np.linspace(0, 3, 5))
    assert tl.method == "constant"
    np.testing.assert_allclose(tl.weights, 0.5)


def test_step_times_and_length_check(inputs):
    np.testing.assert_allclose(step_times(3, 0, frame_numbers=[0, 5, 9], fps=10), [0.0, 0.5, 0.9])
    np.testing.assert_allclose(step_times(4, 2.0), [0.25, 0.75, 1.25, 1.75])
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    bad = {"vision": np.zeros(len(data.vision[cid]) + 1), "audio": step_times(len(data.audio[cid]), 3.0)}
    with pytest.raises(ValueError, match="times"):
        fusion_timeline(_model(), data, cid, bad)


# ------------------------------------------------------------------------------------- pure figure helpers
def test_figures_render_with_and_without_media(inputs):
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    tl = fusion_timeline(_model(), data, cid, _times(data, cid), times=np.linspace(0, 3, 10))
    wave = np.sin(np.linspace(0, 300, 16000)).astype(np.float32)
    mel = X.compute_logmel(wave)
    assert mel.shape[1] == 64 and abs(len(mel) - 100) <= 3
    assert X.compute_logmel(None) is None and X.compute_logmel(wave[:100]) is None
    pred = pd.Series(0.5, index=list(EMOTIONS))
    frame = np.zeros((16, 16, 3), np.uint8)
    figs = [X.frame_figure(frame, frame, "t"), X.frame_figure(None), X.audio_figure(wave, mel, 0.5, 1.0),
            X.audio_figure(None, None, None, 1.0), X.intensity_figure(pred, pred * 0.5), X.intensity_figure(None),
            X.weights_figure(tl, 1.0, 3.0), X.weights_figure(None, None, 3.0)]
    for fig in figs:
        assert X.fig_to_png(fig, dpi=40).startswith(PNG)
    view = X.ClipView(cid, "test", None, 10.0, [0, 2], np.stack([frame, frame]), wave, mel, "hi", pred, None, tl,
                      {"face_corruption": "occlusion", "face_severity": 0.3, "audio_corruption": "none"})
    assert view.n_frames == 3 and view.face_at(2) is not None and view.face_at(1) is None
    assert "occlusion" in X.describe(view) and '"hi"' in X.describe(view)
    fig = X.snapshot_figure(view, 1)
    assert len(fig.axes) >= 6
    plt.close(fig)


def test_match_ids_and_suggestions(smoke_root):
    from emi_lib.eval.corruption import load_corruptions

    ids = ["00007", "00017", "00070"]
    assert X.match_ids(ids, "") == ids
    assert X.match_ids(ids, "7")[0] == "00007" and set(X.match_ids(ids, "7")) == set(ids)
    assert X.match_ids(ids, "0017") == ["00017"] and X.match_ids(ids, "x") == []
    test_ids = DataRoot(smoke_root).ids("test")
    sug = X.suggest_clips(test_ids, load_corruptions(smoke_root))
    assert "clean" in sug and all(v in test_ids for v in sug.values())
    assert X.suggest_clips(ids, None) == {"first": "00007"}


# -------------------------------------------------------------------------------------------------- widgets
def test_explorer_widget_interaction(smoke_root, inputs):
    import ipywidgets as W

    box = X.build_explorer(smoke_root, inputs, _model(), "test", model_source="test model", window_s=0.5)
    assert isinstance(box, W.VBox)
    ex = box.explorer
    assert ex.last_error is None and ex.labels is not None  # SynthMimic: hidden test labels
    for img in (ex.frame_img, ex.bars_img, ex.audio_img, ex.weights_img):
        assert bytes(img.value).startswith(PNG)
    other = ex.ids[1]
    before = (bytes(ex.bars_img.value), bytes(ex.weights_img.value))
    ex.dropdown.value = other
    assert ex.last_error is None and other in ex.status.value and other in ex.info.value
    assert bytes(ex.bars_img.value) != before[0] and bytes(ex.weights_img.value) != before[1]
    assert ex.slider.max == max(ex.view(other).n_frames - 1, 1)
    frame_png = bytes(ex.frame_img.value)
    ex.slider.value = 0 if ex.slider.value else 1
    assert ex.last_error is None and bytes(ex.frame_img.value) != frame_png
    target = ex.ids[-1]
    ex.search.value = target
    assert ex.dropdown.value == target and list(ex.dropdown.options) == [target]
    ex.search.value = "no such clip"
    assert "no clip id" in ex.status.value and ex.dropdown.value == target
    ex.search.value = ""
    assert len(ex.dropdown.options) == len(ex.ids)
    assert ex.view(target) is ex.view(target)  # decoded once


def _fake_root(path, seed):
    (path / "synthmimic").mkdir(parents=True, exist_ok=True)
    (path / "synthmimic" / "manifest.json").write_text(json.dumps({"generator": "SynthMimic", "seed": seed}))
    return path


def _with_provenance(inputs, root, streams=("vision", "fake")):
    """Inputs as prepare_stage2_inputs returns them (the fields a run record and its check read)."""
    from emi_lib.train.inputs import Stage2Inputs

    ns = SimpleNamespace(sets=inputs.sets, dims=inputs.dims, root=root, kind="raw", note="test", stage1=None,
                         store=SimpleNamespace(root=root / "store"), raw_store=SimpleNamespace(root=root / "store"),
                         streams={"vision": streams, "audio": ("audio", "fake")},
                         raw_streams={"vision": streams, "audio": ("audio", "fake")}, with_raw=None, text_pair=None,
                         standardizer=None)
    ns.provenance = lambda: Stage2Inputs.provenance(ns)
    return ns


def test_resolve_model_reuses_a_run_of_the_same_inputs_else_trains(tmp_path, inputs, monkeypatch):
    from emi_lib.data.fingerprint import ProvenanceError
    from emi_lib.paths import model_run_dir, stage_run_dir

    monkeypatch.setenv("EMI_RUNS_DIR", str(tmp_path / "runs"))
    root_a, root_b = _fake_root(tmp_path / "root_a", 0), _fake_root(tmp_path / "root_b", 1)
    mine = _with_provenance(inputs, root_a)
    model, source, why = resolve_model("smoke", mine, tmp_path / "a", seed=0)
    assert source == "trained here" and "no notebook-02 model" in why
    run = tmp_path / "a" / "model_trained_here"
    assert (run / "best.pt").exists() and (run / "inputs.json").exists()  # it records what it was trained on
    model2, source2, _ = resolve_model("smoke", mine, tmp_path / "b", model_run=run)
    assert source2 == "notebook 02"
    a, b = predict(model, inputs.sets["test"])[0], predict(model2, inputs.sets["test"])[0]
    pd.testing.assert_frame_equal(a, b)
    # a model of another data root (same ids, same dims): an explicit MODEL_RUN is refused, naming both roots
    other_root = _with_provenance(inputs, root_b)
    with pytest.raises(ProvenanceError, match="root_a.*root_b"):
        resolve_model("smoke", other_root, tmp_path / "c", model_run=run)
    # ... and the default (notebook 02's folder) falls back to training here, saying why
    nb02 = model_run_dir(stage_run_dir("smoke", "02_stage2_fusion_training"), "full")
    shutil.copytree(run, nb02)
    _, source3, why3 = resolve_model("smoke", other_root, tmp_path / "d")
    assert source3 == "trained here" and "root_a" in why3 and "root_b" in why3
    # other streams (same dims, other features): refused
    with pytest.raises(ProvenanceError, match="was trained on"):
        resolve_model("smoke", _with_provenance(inputs, root_a, streams=("vision", "other")), tmp_path / "e",
                      model_run=run)
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        resolve_model("smoke", mine, tmp_path / "f", model_run=tmp_path / "none")
