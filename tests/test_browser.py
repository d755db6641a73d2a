"""A real client: JupyterLab in headless Chromium runs a notebook with the course's attention explorer.

Skipped where Chromium or Playwright is missing; `.ci/run` installs both (Debian's `chromium`, driven by
Playwright through `executable_path`, so no browser download is needed).
"""

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

EXPLORER_CELL = """
import torch
from homl16.widgets import attention_explorer

torch.manual_seed(0)
images = [torch.rand(3, 32, 32) for _ in range(2)]
maps = torch.rand(2, 3, 2, 4, 4).softmax(-1)  # (images, layers, heads, h, w)
attention_explorer(images, maps, titles=["first", "second"])
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {seconds} s")


@pytest.fixture
def jupyterlab(tmp_path):
    """(base URL, token) of a JupyterLab serving tmp_path, which holds explorer.ipynb."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(EXPLORER_CELL.strip())])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "explorer.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.allow_root=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(f"{base}/api/status?token={token}")
        yield base, token
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (Debian package `chromium`)")
def test_attention_explorer_renders_as_live_widgets_in_jupyterlab(jupyterlab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token = jupyterlab
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/lab/tree/explorer.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)  # the kernel is up
        page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
        page.keyboard.press("Shift+Enter")
        slider = page.wait_for_selector(".jp-OutputArea-output .widget-slider", timeout=120_000)
        page.wait_for_selector(".jp-OutputArea-output .widget-dropdown select", timeout=10_000)
        page.wait_for_selector(".widget-output .jp-RenderedImage img", timeout=60_000)
        page.select_option(".widget-dropdown select >> nth=1", label="2")  # head 2: a one-head view
        page.wait_for_function(
            "() => [...document.querySelectorAll('.widget-output img')].some(i => i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "explorer.png"))
        assert slider.is_visible()
        browser.close()
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
