"""How the tests execute a notebook with papermill (shared by conftest.py and the notebook tests)."""

from __future__ import annotations


def execute_notebook(name: str, out_dir, tmp_dir, **params):
    """papermill ``notebooks/<name>`` (PROFILE="smoke", DATA_SEED 0, RUN_DIR ``out_dir``) from a working directory
    other than notebooks/ -> the records its metrics.json holds."""
    from pathlib import Path

    import papermill as pm

    from emi_lib.notebook import read_records

    nb_dir = Path(__file__).resolve().parent.parent / "notebooks"
    cwd = Path(tmp_dir) / "elsewhere"
    cwd.mkdir(exist_ok=True)
    pm.execute_notebook(str(nb_dir / name), str(Path(tmp_dir) / name),
                        parameters={"PROFILE": "smoke", "DATA_SEED": 0, "RUN_DIR": str(out_dir), **params},
                        kernel_name="python3", cwd=str(cwd), progress_bar=False)
    return read_records(out_dir)
