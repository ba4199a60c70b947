"""The README's results section is generated from the published tables and figures, never typed."""

from __future__ import annotations

import pytest

from emi_lib.notebook import repo_root
from emi_lib.report import BEGIN, END, build_section, main, render


def test_readme_results_section_matches_the_published_files():
    assert main(["--check"]) == 0, "README.md's results section is stale: run python -m emi_lib.report"


def test_build_section_uses_tables_and_marks_missing_ones(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "ablation_table.md").write_text("| a | b |\n|---|---|\n| x | 0.123 |\n")
    (tmp_path / "ablation_bars.png").write_bytes(b"png")
    sec = build_section(tmp_path)
    assert sec.startswith(BEGIN) and sec.endswith(END)
    assert "| x | 0.123 |" in sec and "![ablation_bars](figures/ablation_bars.png)" in sec
    assert "`figures/tables/ridge_by_modality.md` not published yet" in sec
    assert "stage2_pcc_bars.png" not in sec  # a figure that does not exist is not linked


def test_render_replaces_only_between_the_markers():
    text = f"head\n{BEGIN}\nold\n{END}\ntail\n"
    assert render(text, f"{BEGIN}\nnew\n{END}") == f"head\n{BEGIN}\nnew\n{END}\ntail\n"
    with pytest.raises(ValueError, match="markers"):
        render("no markers", "x")


def test_grid_files_parse_and_name_notebook_parameters():
    import json

    import yaml

    from emi_lib.batch import expand

    for grid_file, nb in (("ablation.yaml", "03_ablation_fusion_weights.ipynb"),
                          ("stage2_fusion.yaml", "02_stage2_fusion_training.ipynb")):
        grid = yaml.safe_load((repo_root() / "benchmarks" / "grids" / grid_file).read_text())
        assert expand(grid)
        cells = json.loads((repo_root() / "notebooks" / nb).read_text())["cells"]
        params = "".join(next(c["source"] for c in cells if "parameters" in c["metadata"].get("tags", [])))
        for name in {**(grid.get("base") or {}), **(grid.get("grid") or {})}:
            assert f"\n{name} = " in "\n" + params, f"{grid_file}: {name} is not a parameter of {nb}"
