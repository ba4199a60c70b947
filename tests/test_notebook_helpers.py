"""emi_lib.notebook helpers that every notebook's set-up cell calls."""

import pytest

from emi_lib.notebook import resolve_data_root, synth_root


def test_resolve_data_root_given_path(tmp_path):
    assert resolve_data_root(str(tmp_path), "demo", 0) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        resolve_data_root(str(tmp_path / "nope"), "demo", 0)


def test_resolve_data_root_empty_generates_shared_synthmimic(tmp_path, monkeypatch):
    monkeypatch.setenv("EMI_RUNS_DIR", str(tmp_path))
    root = resolve_data_root("", "smoke", 0)
    assert root == synth_root("smoke", 0).resolve()
    assert (root / "synthmimic" / "manifest.json").exists()
    manifest = (root / "synthmimic" / "manifest.json").stat().st_mtime
    assert resolve_data_root("", "smoke", 0) == root  # reused, not regenerated
    assert (root / "synthmimic" / "manifest.json").stat().st_mtime == manifest
