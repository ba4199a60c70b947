"""Notebook 00 executed headlessly by papermill (PROFILE="smoke"), metrics read back and asserted.
Notebooks 01 to 04 have their own files (test_notebook_01_03.py, test_notebook_02.py, test_notebook_04.py)."""

from __future__ import annotations

import math


def test_00_data_inspection(run_notebook):
    rec, out_dir = run_notebook("00_data_inspection.ipynb")
    sizes = rec["split_sizes"]
    assert sizes["train"] > 0 and sizes["valid"] > 0 and sizes["test"] > 0
    table = rec["ridge_table"]
    for row in ("face", "voice", "text", "all", "noise ceiling"):
        assert row in table, f"ridge table lacks row {row}"
        assert table[row]["mean"] is not None and math.isfinite(table[row]["mean"])
    assert 0.5 < table["noise ceiling"]["mean"] <= 1.0
    assert rec["runtime_s"] > 0  # recorded; speed is measured by the test phase's time, not asserted
    assert (out_dir / "label_histograms.png").stat().st_size > 0
