"""Notebook 04's explorer: the fusion-weight timeline, the pure figure functions and the widget app.

Inputs are random features shaped like the smoke root's clips (one vision step per face crop, 100 audio
steps per second), so no feature extraction runs here; the model is a tiny untrained ``EMIModel``."""

from __future__ import annotations

import json
import shutil
import threading
import time
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
from emi_lib.viz import explorer_draw as D
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
def test_figures_render_with_and_without_media_outside_pyplot(inputs):
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    tl = fusion_timeline(_model(), data, cid, _times(data, cid), times=np.linspace(0, 3, 10))
    wave = np.sin(np.linspace(0, 300, 16000)).astype(np.float32)
    mel = X.compute_logmel(wave)
    assert mel.shape[1] == 64 and abs(len(mel) - 100) <= 3
    assert X.compute_logmel(None) is None and X.compute_logmel(wave[:100]) is None
    pred = pd.Series(0.5, index=list(EMOTIONS))
    frame = np.zeros((16, 16, 3), np.uint8)
    plt.close("all")
    figs = [D.frame_figure(frame, frame, 0, 3, 0.0), D.frame_figure(None), D.audio_figure(wave, mel, 0.5, 1.0),
            D.audio_figure(None, None, None, 1.0), D.intensity_figure(pred, pred * 0.5), D.intensity_figure(None),
            D.weights_figure(tl, 1.0, 3.0), D.weights_figure(None, None, 3.0)]
    for fig in figs:
        png = D.fig_to_png(fig, dpi=40)
        assert png.startswith(PNG)
        w, h = D.png_size(png)  # fixed size: the picture does not change size between frames or clips
        assert (w, h) == tuple(round(v * 40) for v in fig.get_size_inches())
    assert plt.get_fignums() == []  # nothing went through pyplot's global state
    view = X.ClipView(cid, "test", None, 10.0, [0, 2], np.stack([frame, frame]), wave, mel, "hi", pred, None, tl,
                      {"face_corruption": "occlusion", "face_severity": 0.3, "audio_corruption": "none"})
    assert view.n_frames == 3 and view.face_at(2) is not None and view.face_at(1) is None
    assert "occlusion" in X.describe(view) and '"hi"' in X.describe(view)
    fig = X.snapshot_figure(view, 1)
    assert len(fig.axes) >= 6 and plt.get_fignums() == []


def test_panels_are_labelled_and_the_cursor_is_one_visible_colour(inputs):
    data = inputs.sets["test"]
    cid = _clip_with_both(data)
    tl = fusion_timeline(_model(), data, cid, _times(data, cid), times=np.linspace(0, 3, 10))
    wave = np.sin(np.linspace(0, 3000, 48000)).astype(np.float32)
    fig = D.audio_figure(wave, X.compute_logmel(wave), 0.0, 3.0)
    wfig = D.weights_figure(tl, 0.0, 3.0)
    axes = [*fig.axes, *wfig.axes]
    for ax in axes:  # the cursor of frame 0 lies inside the axes, off the axis line
        lo, hi = ax.get_xlim()
        assert lo < 0.0 < hi
        cursors = [ln for ln in ax.get_lines() if ln.get_color() == D.CURSOR]
        assert len(cursors) == 1 and cursors[0].get_xdata()[0] == 0.0
    colours = {ln.get_color() for ax in axes for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 2
               and ln.get_xdata()[0] == ln.get_xdata()[1]}
    assert colours == {D.CURSOR}
    frame = np.zeros((32, 32, 3), np.uint8)
    titles = [ax.get_title() for ax in D.frame_figure(frame, frame[:16, :16], 4, 10, 0.4).axes]
    assert titles[0].startswith("video frame 4") and titles[1].startswith("face crop the model saw")
    assert "no face crop" in D.frame_figure(frame, None, 4, 10, 0.4).axes[1].get_title()
    # the legend sits outside the axes and the y range holds the tallest bar (no bar under the legend)
    pred = pd.Series([0.2, 1.3, 0.5, -0.2, 0.9, 1.0], index=list(EMOTIONS))
    fig = D.intensity_figure(pred, pred.clip(0, 1))
    ax = fig.axes[0]
    fig.canvas.draw()
    leg, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert leg.x0 >= box.x1 - 1
    lo, hi = ax.get_ylim()
    assert lo < -0.2 and hi > 1.3


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


# ------------------------------------------------------------------------------------- occlusion ground truth
@pytest.fixture(scope="module")
def occluded_root(tmp_path_factory):
    """A SynthMimic test split where every clip is occluded, with the occluded frames the generator drew
    (recorded from its frame-span draw; the corruption table keeps only the clip's kind and severity)."""
    import emi_lib.data.synth.corrupt as corrupt
    import emi_lib.data.synth.writer as writer
    from emi_lib.data.synth import SynthConfig, generate

    spans, current = {}, {}
    render, frame_span = writer.render_clip, corrupt.frame_span

    def recording_render(task):
        current["id"] = task[1].clip_id
        return render(task)

    def recording_span(*args, **kw):
        mask = frame_span(*args, **kw)
        spans[current["id"]] = mask.copy()
        return mask

    out = tmp_path_factory.mktemp("synth_occluded")
    cfg = SynthConfig.from_profile("smoke", seed=3, n_test=6, occlusion_rate=1.0, missing_frames_rate=0.0,
                                   no_face_rate=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "render_clip", recording_render)
        mp.setattr(corrupt, "frame_span", recording_span)
        generate(out, cfg, workers=1, progress=False, splits=("test",))
    return out, {f"{int(k):05d}": v for k, v in spans.items()}


def test_the_focus_frame_of_an_occluded_clip_lies_inside_the_occlusion(occluded_root):
    from emi_lib.eval.corruption import load_corruptions

    root, spans = occluded_root
    cor = load_corruptions(root)
    min_share = X.occlusion_min_share(root)
    assert min_share > 0
    for cid in DataRoot(root).ids("test"):
        view = X.load_clip_view(root, "test", cid, corruptions=cor, min_share=min_share)
        truth = spans[cid]
        k, why = X.focus_frame(view)
        assert truth[k] and "occlusion" in why, (cid, k, np.flatnonzero(truth))
        iou = (view.occlusion & truth).sum() / (view.occlusion | truth).sum()
        assert iou > 0.7, (cid, np.flatnonzero(view.occlusion), np.flatnonzero(truth))
        # the snapshot's default frame is that frame
        assert X.snapshot_figure(view).axes[0].get_title().startswith(f"video frame {k} ")


def test_the_explorer_opens_on_the_most_occluded_clip_inside_the_occlusion(occluded_root):
    from emi_lib.eval.corruption import load_corruptions

    root, spans = occluded_root
    data = _split_data(root, "test")
    ns = SimpleNamespace(sets={"test": data})
    ex = X.ClipExplorer(root, ns, _model(), "test", dpi=30)
    most = load_corruptions(root).loc[ex.ids, "face_severity"].astype(float).idxmax()
    assert ex.start_clip == most and ex.dropdown.value == most and ex.last_error is None
    cid, k = ex.shown
    assert cid == most and spans[cid][k] and ex.slider.value == k
    assert "inside the occlusion" in ex.status.value


# -------------------------------------------------------------------------------------------------- widgets
def _explorer(smoke_root, inputs, **kw):
    kw.setdefault("model_source", "test model")
    return X.build_explorer(smoke_root, inputs, _model(), "test", window_s=0.5, **kw).explorer


def _pngs(ex) -> dict:
    return {p: bytes(ex.images[p].value) for p in X.PANELS}


def test_explorer_widget_interaction(smoke_root, inputs):
    import ipywidgets as W

    box = X.build_explorer(smoke_root, inputs, _model(), "test", model_source="test model", window_s=0.5)
    assert isinstance(box, W.VBox)
    ex = box.explorer
    assert ex.last_error is None and ex.labels is not None  # SynthMimic: hidden test labels
    assert ex.start_clip == ex.suggested["occluded"]  # opens on the most occluded clip, not on a clean one
    for img in ex.images.values():
        assert bytes(img.value).startswith(PNG)
    other = next(c for c in ex.ids if c != ex.dropdown.value)
    before = (bytes(ex.bars_img.value), bytes(ex.weights_img.value))
    ex.dropdown.value = other
    assert ex.last_error is None and other in ex.status.value and other in ex.info.value
    assert bytes(ex.bars_img.value) != before[0] and bytes(ex.weights_img.value) != before[1]
    assert ex.slider.max == max(ex.view(other).n_frames - 1, 1)
    frame_png = bytes(ex.frame_img.value)
    ex.slider.value = 0 if ex.slider.value else 1
    assert ex.last_error is None and bytes(ex.frame_img.value) != frame_png
    assert ex.shown == (other, ex.slider.value)
    target = ex.ids[-1]
    ex.search.value = target
    assert ex.dropdown.value == target and list(ex.dropdown.options) == [target]
    ex.search.value = "no such clip"
    assert "no clip id" in ex.status.value and ex.dropdown.value == target
    ex.search.value = ""
    assert len(ex.dropdown.options) == len(ex.ids)
    assert ex.view(target) is ex.view(target)  # decoded once
    for b in (ex.play_btn, ex.prev_btn, ex.next_btn):  # every control says what it does
        assert b.tooltip and b.description
    k = ex.slider.value
    ex.next_btn.click()
    assert ex.slider.value == min(k + 1, ex.slider.max) and ex.shown == (target, ex.slider.value)
    ex.prev_btn.click()
    assert ex.slider.value == k and ex.shown == (target, k)


def test_images_keep_their_true_aspect_ratio(smoke_root, inputs):
    ex = _explorer(smoke_root, inputs)
    for cid in ex.ids[:2]:
        ex.dropdown.value = cid
        for p, img in ex.images.items():
            w, h = D.png_size(img.value)
            assert (img.width, img.height) == (str(w), str(h)), p
            assert img.layout.object_fit == "contain" and img.layout.height == "auto"
    rows = [c for c in ex.widget.children if hasattr(c, "children") and any(i in c.children for i in ex.images.values())]
    assert len(rows) == 2 and all(r.layout.align_items == "flex-start" for r in rows)  # no stretched children


def test_concurrent_callbacks_draw_what_a_serial_draw_draws(smoke_root, inputs, monkeypatch):
    """Widget changes from several threads at once (a browser's slider and clip menu, the player): every picture
    shown is byte-identical to a serial draw of the state it claims, the last one shows the widgets' state, and no
    figure goes through pyplot (whose current figure and figure list are shared by every thread, and which the
    inline backend renders and closes when a cell ends: a half-built chart)."""
    ex = _explorer(smoke_root, inputs, dpi=40)
    pyplot_figures = []
    monkeypatch.setattr(plt, "figure", lambda *a, **kw: pyplot_figures.append(a) or pytest.fail("pyplot figure"))
    applied, apply = [], ex._apply

    def recording_apply(state, pngs):
        applied.append((state, dict(pngs)))
        apply(state, pngs)

    ex._apply = recording_apply
    clips = ex.ids[:3]
    errors = []

    def user(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(4):
                if rng.uniform() < 0.5:
                    ex.dropdown.value = clips[rng.integers(len(clips))]
                else:
                    ex.slider.value = int(rng.integers(0, ex.slider.max + 1))
                time.sleep(float(rng.uniform(0, 0.05)))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and ex.last_error is None and applied and not pyplot_figures
    assert ex.shown == ex.wanted() == (ex.dropdown.value, ex.slider.value)
    serial = {}
    for state, pngs in applied + [(ex.shown, _pngs(ex))]:
        if state not in serial:
            serial[state] = X.render_panels(ex.view(state[0]), state[1], model_source="test model", dpi=40)
        for p, png in pngs.items():
            assert png == serial[state][p], (state, p)


def test_play_never_shows_another_frame_than_the_slider_and_pause_keeps_it(smoke_root, inputs):
    ex = _explorer(smoke_root, inputs, dpi=30, interval_s=0.001)  # asks for frames far faster than they draw
    cid = ex.dropdown.value
    last = ex.view(cid).n_frames - 1
    seen, slider_at, picture_at = [], {}, {}
    ex.frame_img.observe(lambda ch: seen.append((ex.slider.value, ex.shown)), names="value")
    ex.frame_img.observe(lambda ch: picture_at.setdefault(ex.shown[1], time.perf_counter()), names="value")
    ex.slider.observe(lambda ch: slider_at.setdefault(ch["new"], time.perf_counter()), names="value")
    ex.slider.value = last - 4
    seen.clear()
    slider_at.clear()
    picture_at.clear()
    ex.play_btn.value = True
    assert ex.play_btn.description == "pause"
    assert ex.wait_player(120)
    assert ex.last_error is None and ex.play_btn.value is False and ex.play_btn.description == "play"
    frames = list(range(last - 3, last + 1))
    assert [k for k, _ in seen] == frames  # every frame drawn, in order, none skipped
    assert all(shown == (cid, k) for k, shown in seen)  # the slider named the frame the picture showed
    # ... and slider and picture moved together: no draw between them (a player that moves the slider and then
    # draws shows the old picture under the new frame number for a whole draw)
    assert sorted(slider_at) == sorted(picture_at) == frames
    assert max(abs(picture_at[k] - slider_at[k]) for k in frames) < 0.5 * ex.draw_s
    assert ex.slider.value == last and ex.shown == (cid, last)  # the end: stays on the last frame
    # pause in the middle keeps the frame (no jump back to 0); play again from there
    ex.slider.value = 0
    seen.clear()
    ex.play_btn.value = True
    deadline = time.time() + 60
    while ex.slider.value < 2 and time.time() < deadline:
        time.sleep(0.01)
    ex.play_btn.value = False
    assert ex.wait_player(60)
    k = ex.slider.value
    assert 2 <= k < last and ex.shown == (cid, k)
    time.sleep(0.2)
    assert ex.slider.value == k and ex.shown == (cid, k)
    assert all(shown == (cid, s) for s, shown in seen)
    ex.play_btn.value = True
    while ex.slider.value == k and ex.play_btn.value:
        time.sleep(0.01)
    ex.play_btn.value = False
    assert ex.wait_player(60) and ex.slider.value == k + 1 and ex.shown == (cid, k + 1)


def test_toy_models_get_a_warning_banner(smoke_root, inputs):
    assert X.toy_warning("demo", "notebook 02") is None
    assert "smoke" in X.toy_warning("smoke", "notebook 02") and "trained here" in X.toy_warning("demo", "trained here")
    assert "PCC 0.06" in X.toy_warning("smoke", "trained here", 0.061)
    ex = _explorer(smoke_root, inputs, profile="smoke")
    assert ex.warning and "Toy model" in ex.banner.value and ex.widget.children[0] is ex.banner
    assert f"{ex.score:.2f}" in ex.warning
    assert _explorer(smoke_root, inputs, profile="demo", model_source="notebook 02").banner.value == ""


def test_record_writes_metrics_quietly(tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from emi_lib.notebook import read_records, record

    InteractiveShell.instance()
    with capture_output() as cap:
        record("a", {"x": float("nan"), "path": str(tmp_path)}, tmp_path)
        record("b", 1.5, tmp_path)
    assert cap.outputs == [] and cap.stdout == "" and capsys.readouterr().out == ""
    assert read_records(tmp_path) == {"a": {"x": None, "path": str(tmp_path)}, "b": 1.5}
    with capture_output() as cap:
        record("c", list(range(100)), tmp_path, show=True)
    assert cap.outputs == [] and cap.stdout.count("\n") == 1 and len(cap.stdout) <= 122
    assert cap.stdout.startswith("recorded c = [0, 1")


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
    monkeypatch.delenv("EMI_CACHE_DIR", raising=False)  # its stores in this test's runs folder, not the shared cache
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
