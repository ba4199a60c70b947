"""Repository rules that CI enforces: pins agree, notebooks are clean and parameterised."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)$")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    out = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"not an exact pin: {line!r}"
        out[_norm(m.group(1))] = m.group(2)
    return out


def test_requirements_are_exact_pins_and_in_the_lock():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert len(lock) > len(req) > 10
    for name, ver in req.items():
        assert lock.get(name) == ver, f"{name}=={ver} in requirements.txt but {lock.get(name)} in requirements.lock"


def test_no_deps_requirements_are_pinned_locked_and_installed_by_make():
    nodeps = _pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    assert nodeps, "requirements-nodeps.txt pins nothing"
    for name, ver in nodeps.items():
        assert lock.get(name) == ver, f"{name}=={ver} in requirements-nodeps.txt but {lock.get(name)} in the lock"
    make = (ROOT / "Makefile").read_text()
    assert "--no-deps -r requirements-nodeps.txt" in make
    assert "requirements-nodeps.txt" in (ROOT / "environment.yml").read_text()


def test_environment_yml_agrees_with_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python=3.11") for d in deps if isinstance(d, str))
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip_section, "the pip section must install the project"
    env_pins = _pins([p for p in pip_section if p != "-e ."])
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert env_pins == req


def test_there_are_numbered_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no numbered notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: cells {dirty} keep outputs or execution counts (strip them)"
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: {len(params)} cells tagged 'parameters' (want exactly 1)"
    src = "".join(params[0]["source"])
    for name in ("PROFILE", "DATA_SEED", "RUN_DIR", "DATA_ROOT"):
        assert re.search(rf"^{name}\s*=", src, re.M), f"{path.name}: parameter {name} missing"
    assert "default_profile()" in src, f"{path.name}: PROFILE must default to the EMI_PROFILE environment variable"


def test_the_repository_references_nothing_outside_itself_and_no_issue_numbers():
    """Docs and code point at files in the repository (the design document is docs/DESIGN.md) and never at
    tracker issue numbers, which mean nothing to a reader of the code."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md", root / "Makefile", *root.glob("docs/*.md"), *root.glob("emi_lib/**/*.py"),
             *root.glob("tests/*.py"), *root.glob("benchmarks/**/*.py"), *root.glob("benchmarks/**/*.yaml"),
             *root.glob("notebooks/*.ipynb")]
    bad = []
    for f in files:
        if f == Path(__file__).resolve():
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\bissues? \d+\b|\bissue #\d+|\.\./shared|(?<!docs/)\bDESIGN\.md", line):
                bad.append(f"{f.relative_to(root)}:{n}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_make_install_installs_the_whole_lock_split_in_two_and_checks_it(tmp_path):
    """tools/install_lock.py: the two pip processes together install every pin of the lock exactly once, in
    halves of about equal size; make install runs it; its pip check may excuse only the no-deps packages."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("install_lock", ROOT / "tools" / "install_lock.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    lock = tool.pins(ROOT / "requirements.lock")
    assert "setuptools" in lock and "torch" in lock  # complete: setuptools too (torch requires >= 77)
    a, b = tool.split(lock)
    assert sorted(a + b) == sorted(f"{n}=={v}" for n, v in lock.items()) and not set(a) & set(b)
    size = [sum(tool.WHEEL_MB.get(p.split("==")[0], 1) for p in half) for half in (a, b)]
    assert abs(size[0] - size[1]) <= max(tool.WHEEL_MB.values())
    assert "tools/install_lock.py $(PY)" in (ROOT / "Makefile").read_text()
    with pytest.raises(SystemExit, match="not an exact pin"):
        bad = tmp_path / "bad_lock.txt"
        bad.write_text("torch>=2\n")
        tool.pins(bad)
