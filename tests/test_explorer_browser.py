"""Notebook 04 in JupyterLab in a real (headless) browser, driven like a user: it opens unmodified, runs, every
picture keeps its aspect ratio while clips change, play/pause keeps the frame and no JSON tree is shown.

It needs Playwright and a Chromium it can start; without them (no browser on this machine) it is skipped and
says why. The in-process widget tests (``test_explorer.py``) cover the same behaviour without a browser.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "firefox")


def _why_no_browser() -> str | None:
    found = [b for b in BROWSERS if shutil.which(b)]
    if importlib.util.find_spec("playwright") is None:
        have = "selenium is installed but this test drives Playwright; " if importlib.util.find_spec("selenium") else ""
        return (f"no browser test: {have}the Python package playwright is not installed "
                f"(browsers on PATH: {', '.join(found) or 'none'})")
    return None


def _skip_without_browser() -> None:
    why = _why_no_browser()
    if why:
        print(why)  # printed as well: -rs shows it too
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, notebook_env):
    """A JupyterLab server on a copy of notebook 04 (a browser's autosave never touches the repository)."""
    _skip_without_browser()
    from test_notebook_04 import _prepare_shared_inputs

    _prepare_shared_inputs()
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "04_explorer.ipynb", work / "04_explorer.ipynb")
    port, token = _free_port(), "emi-browser-test"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's own (inline) backend
    env.update(EMI_PROFILE="smoke", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                             f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}",
                             "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=", "--ServerApp.ip=127.0.0.1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}/lab/tree/04_explorer.ipynb?token={token}", work
    finally:
        proc.terminate()
        proc.wait(30)


def _kernel_idle(page, timeout_s: float) -> None:
    page.wait_for_function(
        "() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        " return s && s.getAttribute('data-status') === 'idle'; }", timeout=timeout_s * 1000)


def _dirty(page) -> bool:
    return page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count() > 0


def _aspect_errors(page) -> list:
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.jp-OutputArea img.widget-image')).filter(i => i.naturalWidth)"
        ".map(i => [i.naturalWidth / i.naturalHeight, i.getBoundingClientRect().width / i.getBoundingClientRect().height])"
        ".filter(([a, b]) => Math.abs(a - b) / a > 0.02)")


def test_notebook_04_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, work = lab
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(headless=True)
        except Exception as err:  # playwright without its browser build
            why = f"no browser test: Playwright cannot start Chromium ({str(err).splitlines()[0]})"
            print(why)
            pytest.skip(why)
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.goto(url)
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        _kernel_idle(page, 120)
        time.sleep(2)
        assert not _dirty(page), "opening the notebook marked it modified"
        page.keyboard.press("Control+Shift+C")  # command palette: run all cells
        page.keyboard.type("Run All Cells")
        page.keyboard.press("Enter")
        page.wait_for_selector("text=notebook 04 finished", timeout=600_000)
        _kernel_idle(page, 60)
        assert page.locator(".jp-RenderedJSON").count() == 0  # record() prints no JSON tree
        assert page.locator(".jp-OutputArea-output:has-text('PosixPath(')").count() == 0
        assert page.locator(".jp-OutputArea-output:has-text('Toy model')").count() >= 2  # banner: app and output
        assert not _aspect_errors(page)
        select = page.locator(".widget-dropdown select").first
        options = select.locator("option").all_inner_texts()
        bars = page.locator("img.widget-image").nth(1)
        size = bars.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        for clip in options[:6]:
            select.select_option(clip)
            page.wait_for_selector(f".widget-html-content:has-text('clip {clip}:')", timeout=60_000)
            _kernel_idle(page, 60)
            assert bars.evaluate("i => [i.naturalWidth, i.naturalHeight]") == size  # same picture size every clip
            assert not _aspect_errors(page)
        readout = page.locator(".widget-readout").first
        start = readout.inner_text()
        play = page.locator("button[title^='play the clip']")
        play.click()
        time.sleep(3)
        play.click()  # pause
        _kernel_idle(page, 60)
        time.sleep(1)
        paused = readout.inner_text()
        time.sleep(1.5)
        assert paused != start and readout.inner_text() == paused  # it played, and pause kept the frame
        browser.close()
