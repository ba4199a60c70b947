"""The committed notebooks are what Jupyter itself would save, so that opening one does not mark it modified.

JupyterLab marks a notebook modified as soon as it rewrites anything: its JSON normalisation (nbformat's key
order and layout), the ``kernelspec`` of the kernel it starts (this repository installs ``python3`` as
"Python 3 (EMI workbench)", see the Makefile) and the ``language_info`` that kernel reports (ipykernel's, with
the Python version). A notebook that holds exactly these opens clean.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# notebooks still to normalise (none: every notebook is written by nbformat with the kernel's metadata)
NOT_NORMALISED: set = set()
OLD_METADATA: set = set()


def _params(pending: set, why: str = "not normalised yet") -> list:
    mark = pytest.mark.xfail(reason=f"{why} (a notebook outside this branch's files)", strict=False)
    return [pytest.param(p, id=p.name, marks=[mark] if p.name in pending else []) for p in NOTEBOOKS]


def _kernel_display_name() -> str:
    m = re.search(r'ipykernel install .*--name python3 --display-name "([^"]+)"', (ROOT / "Makefile").read_text())
    assert m, "the Makefile installs the python3 kernel with a display name"
    return m.group(1)


@pytest.mark.parametrize("path", _params(NOT_NORMALISED))
def test_notebook_round_trips_through_nbformat_unchanged(path):
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.nbformat_minor == nbformat.v4.nbformat_minor  # no version upgrade on open
    written = nbformat.writes(nb)
    assert written + "\n" == text, "differs from nbformat's own layout (rewrite it with nbformat.writes)"
    # stripped (what nbstripout leaves): no outputs, no execution counts, no per-cell trust or widget state
    for cell in nb.cells:
        assert "trusted" not in cell.metadata and "execution" not in cell.metadata
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert "widgets" not in nb.metadata and "signature" not in nb.metadata


@pytest.mark.parametrize("path", _params(OLD_METADATA))
def test_notebook_metadata_is_what_the_kernel_writes(path):
    from ipykernel.ipkernel import IPythonKernel

    meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    assert meta["kernelspec"] == {"display_name": _kernel_display_name(), "language": "python", "name": "python3"}
    info = dict(meta["language_info"])
    version = info.pop("version")
    expected = dict(IPythonKernel.language_info)
    expected.pop("version", None)
    assert info == expected
    # the committed version is the environment's Python (3.11, environment.yml); its patch level is that of the
    # machine the notebook was last saved on
    assert version.split(".")[:2] == [str(v) for v in sys.version_info[:2]]


def _path_returning_helpers() -> set:
    import inspect

    import emi_lib.notebook as nbh

    names = {"Path"}
    for name, fn in vars(nbh).items():
        if callable(fn) and not name.startswith("_"):
            try:
                ret = inspect.signature(fn).return_annotation
            except (TypeError, ValueError):
                continue
            if ret in ("Path", Path):
                names.add(name)
    return names


@pytest.mark.parametrize("path", _params(set()))
def test_no_cell_ends_on_a_path(path):
    """A cell whose last line is ``save_table(...)`` (any helper that returns a Path) shows ``PosixPath('...')``
    as its output: assign it or end the line with ``;``."""
    import ast

    helpers = _path_returning_helpers()
    assert {"save_figure", "save_table", "run_dir"} <= helpers
    bad = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or src.rstrip().endswith(";"):
            continue
        body = ast.parse(src).body
        last = body[-1] if body else None
        if isinstance(last, ast.Expr) and isinstance(last.value, ast.Call):
            name = ast.unparse(last.value.func).split(".")[-1]
            if name in helpers:
                bad.append(f"cell {cell.get('id')}: {ast.unparse(last)[:80]}")
    assert not bad, "\n".join(bad)
