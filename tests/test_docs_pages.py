"""The executed notebooks published as pages (docs/notebooks/, rendered by python -m emi_lib.docs): one page per
numbered notebook, linked from the README, images as files, and the numbers of the published tables.

The page tests read committed files only (no notebook runs); the renderer is tested on a tiny notebook."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest

from emi_lib.docs import MissingNotebooks, main, render_notebook, render_run
from emi_lib.report import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "notebooks"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
IMAGE_REF = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]+src=\"([^\"]+)\"")
NUMBER = re.compile(r"(?<![\w.])[-−]?\d+\.\d+(?![\w.])|(?<![\w.])[-−]?\d+(?![\w.])")
TABLE_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{3}(?![\w.])")
# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _page(nb: Path) -> Path:
    return PAGES / f"{nb.stem}.md"


def test_every_numbered_notebook_has_a_page_with_its_header_and_the_readme_links_it():
    assert NOTEBOOKS
    readme = (ROOT / "README.md").read_text()
    for nb in NOTEBOOKS:
        page = _page(nb)
        assert page.exists(), f"{page.relative_to(ROOT)} missing: run make docs (after make demo)"
        head = page.read_text()[:2000]
        assert head.startswith(f"> **Executed copy of [`notebooks/{nb.name}`](../../notebooks/{nb.name})**"), head[:300]
        assert "profile `" in head and "data root `" in head
        assert f"](docs/notebooks/{page.name})" in readme, f"README.md does not link {page.relative_to(ROOT)}"
        assert f"]({page.name})" in (PAGES / "README.md").read_text()


def test_pages_hold_no_base64_images_every_image_exists_and_sizes_stay_small():
    total = 0
    for nb in NOTEBOOKS:
        page = _page(nb)
        text = page.read_text()
        assert "data:image" not in text and ";base64," not in text, f"{page.name} inlines an image"
        assert page.stat().st_size < 200_000, f"{page.name}: {page.stat().st_size} bytes"
        refs = {a or b for a, b in IMAGE_REF.findall(text)}
        for ref in refs:
            assert not re.match(r"\w+:", ref), f"{page.name} links an image outside the repository: {ref}"
            assert (page.parent / ref).is_file(), f"{page.name} shows {ref}, which does not exist"
        files_dir = PAGES / f"{nb.stem}_files"
        files = {p.relative_to(PAGES).as_posix() for p in files_dir.rglob("*") if p.is_file()}
        assert files == refs, f"{page.name}: unreferenced {sorted(files - refs)}, missing {sorted(refs - files)}"
        total += sum((PAGES / f).stat().st_size for f in files)
    assert total < 5_000_000, f"the pages' images weigh {total} bytes"


def _notebook_of_tables() -> dict[str, str]:
    """Published table -> the numbered notebook that writes it (from the report's sections, "Notebook NN ·")."""
    stems = {nb.name[:2]: nb.stem for nb in NOTEBOOKS}
    out = {}
    for heading, _lead, tables, _figs in SECTIONS:
        m = re.match(r"Notebook (\d\d) ", heading)
        if m and m.group(1) in stems:
            out.update({t: stems[m.group(1)] for t in tables})
    return out


TABLES = _notebook_of_tables()


def _shows(value: str, page_numbers: list[str]) -> bool:
    """A table's 3-decimal number is in the page when the page writes it so, or writes the same value with more
    decimals (pandas shows 0.831854 for 0.832) or fewer (0.6 for 0.600, 16 for 16.000), or shows it rounded twice
    (a table rounded to 4 decimals, then displayed with 3: 0.43848 -> 0.4385 -> 0.439 on the page, 0.438 in the table)."""
    x = float(value)
    for tok in page_numbers:
        y = float(tok.replace("−", "-"))
        decimals = len(tok.split(".")[1]) if "." in tok else 0
        if f"{y:.3f}" == value or (decimals > 3 and abs(y - x) <= 0.0005 + 1e-9) or (
                decimals == 3 and abs(y - x) <= 0.001 + 1e-9):
            return True
    return False


def test_the_published_tables_are_mapped_to_notebooks():
    published = {p.stem for p in (ROOT / "figures" / "tables").glob("*.md")}
    assert set(TABLES) <= published, f"the report names tables that are not published: {set(TABLES) - published}"
    assert len(TABLES) >= 5


@pytest.mark.parametrize("table", sorted(TABLES))
def test_the_page_shows_the_numbers_of_its_published_table(table):
    stem = TABLES[table]
    text = (ROOT / "figures" / "tables" / f"{table}.md").read_text()
    values = sorted(set(TABLE_FLOAT.findall(text)))
    assert values, f"{table}.md has no 3-decimal number"
    page_numbers = sorted(set(NUMBER.findall((PAGES / f"{stem}.md").read_text())))
    missing = [v for v in values if not _shows(v, page_numbers)]
    assert not missing, (f"docs/notebooks/{stem}.md does not show {len(missing)} of the {len(values)} numbers of "
                         f"figures/tables/{table}.md (pages and figures from different runs?): {missing[:10]}")


# ------------------------------------------------------------------------------------------- the renderer
def _tiny_executed(path: Path, *, failed: bool = False) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": "y" * 5000}}}
    nb.metadata["papermill"] = {"parameters": {"PROFILE": "smoke"}, "start_time": "2026-01-02T03:04:05+00:00",
                                "end_time": "2026-01-02T03:05:00+00:00", "duration": 55.0,
                                "exception": failed, "input_path": "/elsewhere/repo/notebooks/" + path.name}
    params = nbformat.v4.new_code_cell('PROFILE = "demo"\nDATA_ROOT = ""')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('# Parameters\nPROFILE = "smoke"\n', execution_count=1)
    injected.metadata["tags"] = ["injected-parameters"]
    code = nbformat.v4.new_code_cell("print(root); show()", execution_count=2)
    code.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "load:   0%|          | 0/9 [00:00<?, ?it/s]"}),
        nbformat.v4.new_output("stream", name="stdout", text="data root: /elsewhere/repo/runs/x/tiny_root\n"
                               + "".join(f"line {i}\n" for i in range(100))),
        nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(),
                                                     "text/plain": "<Figure size 640x480 with 1 Axes>"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny\n\nSome *text*."), params, injected, code]
    nbformat.write(nb, path)


def test_render_notebook_writes_images_as_files_and_the_header(tmp_path):
    (tmp_path / "notebooks").mkdir()
    src = tmp_path / "notebooks" / "00_tiny.ipynb"
    _tiny_executed(src)
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    _tiny_executed(run / "00_tiny.ipynb")
    out = tmp_path / "docs" / "notebooks"
    page, images = render_notebook(run / "00_tiny.ipynb", out, run_label="runs/x", source=src,
                                   roots=["/elsewhere/repo"])
    text = page.read_text()
    assert page == out / "00_tiny.md"
    assert text.startswith("> **Executed copy of [`notebooks/00_tiny.ipynb`](../../notebooks/00_tiny.ipynb)** from "
                           "the run `runs/x`: profile `smoke`, run 2026-01-02 03:04:05 to 03:05:00 UTC (55 s), data root "
                           "`tiny_root`; parameters injected by papermill: `PROFILE = 'smoke'`.")
    assert "The code is the source notebook's." in text
    assert [p.relative_to(out).as_posix() for p in images] == ["00_tiny_files/00_tiny_2_1.png"]
    assert images[0].read_bytes() == PNG
    assert "![png](00_tiny_files/00_tiny_2_1.png)" in text and "data:image" not in text and "base64" not in text
    assert "# Tiny" in text and 'DATA_ROOT = ""' in text
    assert "# Parameters" not in text and "0/9" not in text and "yyyy" not in text  # injection, tqdm, widget state
    assert "data root: runs/x/tiny_root" in text and "/elsewhere" not in text  # paths relative to the repository
    assert "line 58" in text and "line 59" not in text and "[... 41 more lines cut" in text
    # a rerun replaces the images folder (no stale files)
    (out / "00_tiny_files" / "stale.png").write_bytes(PNG)
    render_notebook(run / "00_tiny.ipynb", out, run_label="runs/x", source=src, roots=["/elsewhere/repo"])
    assert not (out / "00_tiny_files" / "stale.png").exists()


def test_render_run_refuses_a_partial_or_failed_run_and_names_the_notebooks(tmp_path, capsys):
    nbs, run, out = tmp_path / "notebooks", tmp_path / "runs" / "x", tmp_path / "pages"
    nbs.mkdir()
    run.mkdir(parents=True)
    for name in ("00_a.ipynb", "01_b.ipynb", "02_c.ipynb"):
        _tiny_executed(nbs / name)
    _tiny_executed(run / "00_a.ipynb")
    _tiny_executed(run / "02_c.ipynb", failed=True)
    with pytest.raises(MissingNotebooks, match=r"01_b.ipynb: no executed copy") as err:
        render_run(run, out, nbs)
    assert "02_c.ipynb: the copy" in str(err.value) and "failed" in str(err.value)
    assert main(["--runs", str(run), "--out", str(out), "--notebooks", str(nbs)]) == 1
    assert "01_b.ipynb" in capsys.readouterr().err
    assert not out.exists()
    _tiny_executed(run / "01_b.ipynb")
    _tiny_executed(run / "02_c.ipynb")
    assert main(["--runs", str(run), "--out", str(out), "--notebooks", str(nbs)]) == 0
    assert sorted(p.name for p in out.glob("*.md")) == ["00_a.md", "01_b.md", "02_c.md", "README.md"]
