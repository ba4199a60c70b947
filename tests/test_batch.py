"""emi_lib.batch: grid expansion, papermill execution, skip/rerun, failures and collect()."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from emi_lib import batch

ROOT = Path(__file__).resolve().parent.parent


def _write_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('A = 1\nB = "x"\nRUN_DIR = ""')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from pathlib import Path\n"
        "from emi_lib.notebook import record\n"
        'record("score", A * 2, Path(RUN_DIR))\n'
        'record("nested", {"full": {"mean": A + 0.5}, "label": B, "curve": [1, 2]}, Path(RUN_DIR))\n'
        'if B == "boom":\n'
        '    raise RuntimeError("boom variant")\n'
    )
    nb.cells = [params, body]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return _write_notebook(tmp_path_factory.mktemp("nb") / "tiny.ipynb")


@pytest.fixture(scope="module")
def grid_run(notebook, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "grid"
    grid = {"base": {"B": "y"}, "grid": {"A": [1, 2], "B": ["x", "z"]}}
    report = batch.run_grid(notebook, grid, out, progress=False)
    return out, grid, report


def test_expand_grid_names_are_stable_readable_and_distinct():
    vs = batch.expand({"base": {"C": 0}, "grid": {"FUSION": ["quality", "equal"], "SEED": [0, 1, 2]}})
    assert [v.name for v in vs][:2] == ["FUSION=quality__SEED=0", "FUSION=quality__SEED=1"]
    assert len(vs) == 6 and vs[0].params == {"C": 0, "FUSION": "quality", "SEED": 0}
    assert [v.name for v in vs] == [v.name for v in batch.expand(
        {"base": {"C": 0}, "grid": {"FUSION": ["quality", "equal"], "SEED": [0, 1, 2]}})]
    # sanitising would collide ("a/b" vs "a_b"): a parameter hash keeps them apart
    names = [v.name for v in batch.expand({"grid": {"P": ["a/b", "a_b", "a b", [1, 2]]}})]
    assert len(set(names)) == 4 and "P=a_b" in names
    assert all("/" not in n and " " not in n for n in names)


def test_expand_variants_crossed_with_grid_and_errors():
    spec = {"base": {"X": 1}, "variants": [{"name": "full"}, {"FUSION": "equal"}], "grid": {"SEED": [0, 1]}}
    vs = batch.expand(spec)
    assert [v.name for v in vs] == ["full__SEED=0", "full__SEED=1", "FUSION=equal__SEED=0", "FUSION=equal__SEED=1"]
    assert vs[2].params == {"X": 1, "FUSION": "equal", "SEED": 0}
    with pytest.raises(ValueError, match="same name"):
        batch.expand({"variants": [{"name": "a", "X": 1}, {"name": "a", "X": 2}]})
    with pytest.raises(ValueError, match="unknown grid keys"):
        batch.expand({"grid": {"A": [1]}, "seeds": [1]})
    with pytest.raises(ValueError):
        batch.expand({"base": {"A": 1}})


def test_shipped_stage2_grid_matches_notebook_parameters():
    vs = batch.expand(ROOT / "benchmarks/grids/stage2_fusion.yaml")
    assert len(vs) == 6 and {v.params["FUSION"] for v in vs} == {"quality", "equal"}
    nb = json.loads((ROOT / "notebooks/02_stage2_fusion_training.ipynb").read_text())
    src = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    for name in vs[0].params:
        assert f"\n{name} =" in "\n" + src, f"{name} is not a parameter of notebook 02"


def test_grid_executes_every_variant(grid_run, notebook):
    out, _, report = grid_run
    names = ["A=1__B=x", "A=1__B=z", "A=2__B=x", "A=2__B=z"]
    assert report.ok and sorted(report.done) == names and not report.skipped
    for name in names:
        vdir = out / name
        assert (vdir / "_DONE").exists() and (vdir / notebook.name).exists()
        assert (vdir / "run" / "metrics.json").exists()
    assert json.loads((out / "A=2__B=z" / "params.json").read_text()) == {"A": 2, "B": "z"}


def test_collect_flattens_metrics(grid_run):
    out, _, _ = grid_run
    df = batch.collect(out).set_index("variant")
    assert len(df) == 4 and set(df["status"]) == {"done"}
    assert df.loc["A=2__B=z", "param.A"] == 2 and df.loc["A=2__B=z", "param.B"] == "z"
    assert df.loc["A=2__B=z", "score"] == 4 and df.loc["A=1__B=x", "score"] == 2
    assert df.loc["A=2__B=x", "nested.full.mean"] == 2.5 and df.loc["A=2__B=x", "nested.label"] == "x"
    assert "nested.curve" not in df.columns  # only scalars


def test_rerun_skips_finished_variants(grid_run, notebook):
    out, grid, _ = grid_run
    before = {p: p.stat().st_mtime_ns for p in out.glob(f"*/{notebook.name}")}
    report = batch.run_grid(notebook, grid, out, progress=False)
    assert sorted(report.skipped) == sorted(p.parent.name for p in before) and not report.done
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"*/{notebook.name}")} == before


def test_failure_continues_reports_and_changed_params_rerun(notebook, tmp_path, capsys):
    out = tmp_path / "runs"
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"base": {"A": 3}, "grid": {"B": ["boom", "ok"]}}))
    rc = batch.main([str(notebook), str(grid_file), "--out", str(out), "--no-progress"])
    assert rc == 1
    text = capsys.readouterr().out
    assert "FAILED B=boom" in text and "1 run, 0 skipped, 1 failed" in text
    assert "boom variant" in (out / "B=boom" / "_FAILED").read_text()
    assert not (out / "B=boom" / "_DONE").exists() and (out / "B=ok" / "_DONE").exists()
    df = batch.collect(out, include_failed=True).set_index("variant")
    assert df.loc["B=ok", "score"] == 6 and df.loc["B=boom", "status"] == "failed"
    assert list(batch.collect(out)["variant"]) == ["B=ok"]

    # same folder, changed base parameter: the finished variant is rerun with fresh metrics
    grid_file.write_text(yaml.safe_dump({"base": {"A": 5}, "grid": {"B": ["ok"]}}))
    assert batch.main([str(notebook), str(grid_file), "--out", str(out), "--no-progress"]) == 0
    assert "1 run, 0 skipped, 0 failed" in capsys.readouterr().out
    assert batch.collect(out).set_index("variant").loc["B=ok", "score"] == 10

    # dry run lists the state and executes nothing
    assert batch.main([str(notebook), str(grid_file), "--out", str(out), "--dry-run"]) == 0
    assert "[done] B=ok" in capsys.readouterr().out
