"""Every notebook's online branch, run against the local tiny hub (tests/hub): the book's code executes.

For each notebook with cells tagged ``online``, its first code cell and the tagged cells run in a fresh
kernel, in notebooks/, with the hub reachable only at ``HF_ENDPOINT`` (127.0.0.1) and a connection guard
that fails the test on any other address. Nothing is compared with the stored (offline) outputs, and
nothing is written back.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
GUARD = Path(__file__).parent / "hub" / "guard"
TIME_LIMIT = 180  # seconds per notebook on a 2-core CPU (issue 20)

# The hub ids each notebook's online branch loads: the ones its tagged cells name, and those the homl16
# helpers it calls load (load_pets, load_classifier, load_bert, load_food101).
EXPECTED = {
    "02_detr": {"facebook/detr-resnet-50"},
    "03_vit": {"timm/oxford-iiit-pet", "google/vit-base-patch16-224-in21k"},
    "04_deit": {"timm/oxford-iiit-pet", "facebook/deit-base-distilled-patch16-224"},
    "05_pvt": {"OpenGVLab/pvt_v2_b0"},
    "06_swin": {"microsoft/swin-tiny-patch4-window7-224"},
    "07_dino": {"facebook/dino-vitb8"},
    "10_videobert": {"bert-base-uncased"},
    "11_vilbert": {"bert-base-uncased", "unc-nlp/lxmert-base-uncased"},
    "12_clip": {"openai/clip-vit-base-patch32"},
    "14_perceiver": {"deepmind/vision-perceiver-fourier"},
    "15_flamingo": {"HuggingFaceM4/idefics-9b-instruct"},
    "16_blip2": {"bert-base-uncased", "Salesforce/blip2-opt-2.7b"},
    "17_exercises": {"ethz/food101", "google/vit-base-patch16-224-in21k", "openai/clip-vit-base-patch32",
                     "Salesforce/blip2-opt-2.7b"},
}


def online_cells(notebook):
    """The first code cell and every code cell tagged ``online``, in notebook order."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    return [cell for i, cell in enumerate(code) if i == 0 or "online" in cell.metadata.get("tags", [])]


def tagged_notebooks():
    return [path for path in sorted(NOTEBOOKS.glob("*.ipynb"))
            if len(online_cells(nbformat.read(path, as_version=4))) > 1]


def kernel_environment(url, home, guard_log):
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    path = [str(GUARD), str(ROOT), os.environ.get("PYTHONPATH")]  # the guard loads at start-up
    env.update(HF_ENDPOINT=url, HF_HOME=str(home), HOML16_MODE="online", HF_UPDATE_DOWNLOAD_COUNTS="0",
               HOML16_GUARD_LOG=str(guard_log), PYTHONPATH=os.pathsep.join(filter(None, path)))
    return env


def test_the_guard_stops_and_records_connections_that_leave_the_machine(tmp_path):
    code = """
import socket
for host in ("huggingface.co", "8.8.8.8", "datasets-server.127.0.0.1", "127.0.0.1"):
    try:
        socket.create_connection((host, 9), timeout=1)
    except OSError as error:
        print(host, type(error).__name__)
"""
    env = kernel_environment("http://127.0.0.1:9", tmp_path, tmp_path / "guard.log")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    out = out.stdout
    assert out.split("\n")[:4] == ["huggingface.co OSError", "8.8.8.8 OSError",
                                   "datasets-server.127.0.0.1 gaierror", "127.0.0.1 ConnectionRefusedError"]
    assert (tmp_path / "guard.log").read_text().splitlines() == ["lookup huggingface.co", "lookup 8.8.8.8"]


def test_every_notebook_that_loads_from_the_hub_has_an_online_branch_and_expected_ids():
    assert {path.stem for path in tagged_notebooks()} == set(EXPECTED)


@pytest.mark.parametrize("path", tagged_notebooks(), ids=lambda path: path.stem)
def test_online_branch_runs_against_the_local_hub(path, local_hub, tmp_path):
    server, url = local_hub
    notebook = nbformat.read(path, as_version=4)
    notebook.cells = online_cells(notebook)
    named = {hub_id for hub_id in server.hub.repos()
             if re.search(rf"[\"']{re.escape(hub_id)}[\"']", "".join(c.source for c in notebook.cells))}
    expected = EXPECTED[path.stem]
    assert named <= expected, f"ids the tagged cells name, missing from EXPECTED: {named - expected}"
    guard_log = tmp_path / "guard.log"
    first_request = len(server.hub.requested)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=TIME_LIMIT, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(
        env=kernel_environment(url, tmp_path / "hf_home", guard_log))
    seconds = time.perf_counter() - start
    served = {repo_id for _, repo_id in server.hub.requested[first_request:]}
    print(f"{path.stem}: {len(notebook.cells)} cells in {seconds:.0f} s; served {sorted(served)}")
    left = guard_log.read_text().splitlines() if guard_log.exists() else []
    assert not left, f"{path.stem} tried to leave 127.0.0.1: {left}"
    assert expected <= served, f"{path.stem} never asked the hub for {expected - served}"
    assert seconds < TIME_LIMIT, f"{path.stem}'s online branch took {seconds:.0f} s (limit {TIME_LIMIT} s)"
