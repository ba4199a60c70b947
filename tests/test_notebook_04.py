"""Notebook 04 (clip explorer) executed headlessly by papermill in the smoke profile: the widgets are built and
driven by the notebook's cells without a browser, the static snapshot is saved and the records are read back.

The shared SynthMimic smoke root and its raw features are prepared first (as notebooks 00/01 do under
``make test``). The notebook trains its own small model unless a notebook-02 model of this profile exists
(the reuse path is tested in ``test_explorer.py::test_resolve_model_reuses_a_run_of_the_same_inputs_else_trains``)."""

from __future__ import annotations

import math
from pathlib import Path


def _prepare_shared_inputs() -> None:
    from emi_lib.data.synth import ensure_synthmimic
    from emi_lib.features.extract import extract_all
    from emi_lib.features.store import FeatureStore
    from emi_lib.notebook import feature_store_dir, synth_root

    root = ensure_synthmimic(synth_root("smoke", 0), profile="smoke", seed=0, progress=False)
    extract_all(root, FeatureStore(feature_store_dir("smoke", root)), "openclip-tiny", "logmel", None,
                progress=False)


def _check(rec: dict, out_dir: Path) -> None:
    from emi_lib.data import DataRoot

    root = Path(rec["data_root"])
    ids = DataRoot(root).ids("test")
    assert rec["n_clips"] == len(ids) and rec["clip_id"] in ids
    assert rec["timeline_method"] == "window"
    w = rec["snapshot_mean_weights"]
    assert set(w) == {"vision", "audio"} and all(v is not None and 0 <= v <= 1 for v in w.values())
    assert math.isclose(sum(w.values()), 1.0, abs_tol=1e-4)
    assert math.isclose(sum(rec["snapshot_clip_weights"].values()), 1.0, abs_tol=1e-4)
    assert rec["runtime_s"] > 0  # recorded; speed is measured by the test phase's time, not asserted
    assert (out_dir / "explorer_snapshot.png").stat().st_size > 0
    occluded = rec["snapshot_occluded_frames"]
    if occluded:  # the most occluded clip: the snapshot shows a frame the occluder covers
        assert rec["snapshot_frame"] in occluded and "occlusion" in rec["snapshot_frame_reason"]


def _outputs(executed: Path) -> list:
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _check_outputs(outputs: list, rec: dict) -> None:
    """What a reader sees: no JSON trees (record() is quiet), no stray reprs, the toy-model warning, the snapshot."""
    kinds = [k for o in outputs for k in o.get("data", {})]
    assert "application/json" not in kinds
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    for stray in ("PosixPath(", "recorded ", "<Figure size"):
        assert stray not in text, stray
    assert [o for o in outputs if o["output_type"] == "execute_result"][-1]["data"].get(
        "application/vnd.jupyter.widget-view+json")  # the only cell value shown is the app
    assert sum(k == "image/png" for k in kinds) == 1  # the snapshot
    markdown = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "Toy model" in markdown and "profile smoke" in markdown  # a smoke run says it is a toy


def test_04_explorer(run_notebook):
    _prepare_shared_inputs()
    rec, out_dir = run_notebook("04_explorer.ipynb")
    assert rec["model_source"] in ("notebook 02", "trained here")
    _check(rec, out_dir)
    _check_outputs(_outputs(out_dir.parent / "04_explorer.ipynb"), rec)
    if rec["model_source"] == "trained here":  # no notebook-02 model of this profile: trained on the smoke budget
        assert (out_dir / "model_trained_here" / "best.pt").exists()
