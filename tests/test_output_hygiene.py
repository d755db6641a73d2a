"""The committed notebooks' stored outputs show the lesson, not the plumbing (issue 20, item 4).

Each check reads one notebook's outputs and returns its problems as "cell N: ..." lines. A failure is fixed
at its cause (a library's logging, a progress bar, a loader's notice) and then by re-executing the notebook,
never by editing the stored output.
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REPR_PLACEHOLDER = re.compile(r"<[\w.]+ object(?: at 0x[0-9a-f]+)?>")  # text/plain of a rich-only display
FALLBACK = re.compile(r"\bfalling back\b|torchvision is missing", re.IGNORECASE)  # libraries' own fallbacks
LIBRARY_WARNING = re.compile(r"\b\w*Warning\b|^\s*warnings\.warn\(", re.MULTILINE)
OFFLINE_NOTICE = re.compile(r"^Offline: (\S+)", re.MULTILINE)  # the checkpoint or data set it replaces
TQDM_COUNT = re.compile(r"(\d+)/(\d+) \[(?:\d+:)?\d\d:\d\d<")  # tqdm's "n/total [elapsed<remaining"
HTML_PROGRESS = re.compile(r"<progress value='(\d+)' max='(\d+)'")  # transformers' notebook bars (Trainer)
MACHINE_PATH = re.compile(r"/(?:root|home|work|tmp|Users)/|(?<!\.\.\.)/(?:site|dist)-packages/")


def cell_outputs(nb):
    """(cell index, output) for every stored output."""
    return [(i, out) for i, cell in enumerate(nb["cells"]) for out in cell.get("outputs", [])]


def joined(value):
    return "".join(value) if isinstance(value, list) else value


def output_texts(out):
    """The text a reader sees in an output: a stream's text, an error's traceback, the text/* of a display."""
    if out["output_type"] == "stream":
        return [joined(out.get("text", ""))]
    if out["output_type"] == "error":
        return [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
    return [joined(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]


def texts(nb):
    """(cell index, text) for every text of every output."""
    return [(i, text) for i, out in cell_outputs(nb) for text in output_texts(out)]


def errors(nb):
    return [f"cell {i}: {out.get('ename')}: {out.get('evalue')}" for i, out in cell_outputs(nb)
            if out["output_type"] == "error"]


def load_reports(nb):
    return [f"cell {i}: transformers' LOAD REPORT" for i, text in texts(nb) if "LOAD REPORT" in text]


def colour_codes(nb):
    return [f"cell {i}: terminal colour code" for i, out in cell_outputs(nb) if out["output_type"] != "error"
            for text in output_texts(out) if "\x1b[" in text]


def fallback_warnings(nb):
    return [f"cell {i}: {line.strip()[:120]}" for i, text in texts(nb) for line in text.splitlines()
            if FALLBACK.search(line)]


def library_warnings(nb):
    return [f"cell {i}: {line.strip()[:120]}" for i, out in cell_outputs(nb) if out.get("name") == "stderr"
            for line in joined(out["text"]).splitlines() if LIBRARY_WARNING.search(line)]


def repeated_offline_notices(nb):
    announced = Counter(name for _, text in texts(nb) for name in OFFLINE_NOTICE.findall(text))
    return [f"'Offline: {name} ...' printed {n} times" for name, n in announced.items() if n > 1]


def widget_outputs_without_static_view(nb):
    """A widget output shows on GitHub only through a static fallback (homl16.widgets gives one a PNG);
    without one it is a progress bar or a blank."""
    return [f"cell {i}: widget output with no static view ({joined(out['data'].get('text/plain', ''))[:60]})"
            for i, out in cell_outputs(nb) if WIDGET_VIEW in out.get("data", {}) and
            "image/png" not in out["data"]]


def unfinished_progress_bars(nb):
    problems = []
    for i, text in texts(nb):
        for pattern in (TQDM_COUNT, HTML_PROGRESS):
            problems += [f"cell {i}: progress bar stored at {n}/{total}" for n, total in pattern.findall(text)
                         if int(n) < int(total)]
    return problems


def is_empty(out):
    if out["output_type"] == "stream":
        return not joined(out.get("text", "")).strip()
    if out["output_type"] not in ("display_data", "execute_result"):
        return False
    data = out.get("data", {})
    shown = {k: joined(v) for k, v in data.items()
             if not (k == "text/plain" and REPR_PLACEHOLDER.fullmatch(joined(v).strip()))}
    return not any(v.strip() if isinstance(v, str) else v for v in shown.values())


def empty_outputs(nb):
    return [f"cell {i}: empty {out['output_type']} {sorted(out.get('data', {}))}"
            for i, out in cell_outputs(nb) if is_empty(out)]


def machine_paths(nb):
    return [f"cell {i}: {match.group(0)!r} in {line.strip()[:100]!r}" for i, text in texts(nb)
            for line in text.splitlines() for match in [MACHINE_PATH.search(line)] if match]


def stale_widget_state(nb):
    """Widget models in the notebook's metadata that no output displays (e.g. old loading bars)."""
    models = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = models.get("state", {})
    shown = [out["data"][WIDGET_VIEW]["model_id"] for _, out in cell_outputs(nb)
             if WIDGET_VIEW in out.get("data", {})]
    reachable = set()
    while shown:
        model_id = shown.pop()
        if model_id in reachable or model_id not in models:
            continue
        reachable.add(model_id)
        shown += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(models[model_id]))
    stale = Counter(models[m]["model_name"] for m in models if m not in reachable)
    return [f"{n} stale {name} in metadata.widgets" for name, n in sorted(stale.items())]


CHECKS = [errors, load_reports, colour_codes, fallback_warnings, library_warnings, repeated_offline_notices,
          widget_outputs_without_static_view, unfinished_progress_bars, empty_outputs, machine_paths,
          stale_widget_state]


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_clean(path, check):
    problems = check(json.loads(path.read_text()))
    assert not problems, f"{path.name}: " + "; ".join(problems)


def nb_with(*outputs, widgets=None):
    nb = {"metadata": {}, "cells": [{"cell_type": "code", "outputs": list(outputs)}]}
    if widgets is not None:
        nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": widgets}}
    return nb


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def display(data):
    return {"output_type": "display_data", "data": data, "metadata": {}}


@pytest.mark.parametrize("check, bad, good", [
    (errors, {"output_type": "error", "ename": "ImportError", "evalue": "x", "traceback": []}, stream("ok")),
    (load_reports, stream("ViTModel LOAD REPORT from: x\n"), stream("loaded ViTModel\n")),
    (colour_codes, stream("\x1b[1mbold\x1b[0m"), stream("bold")),
    (fallback_warnings, stream("torchvision is missing, falling back to PIL"), stream("using PIL")),
    (library_warnings, stream("x.py:3: UserWarning: hmm\n  warnings.warn(\n", "stderr"),
     stream("Warnings: 0\n")),
    (repeated_offline_notices, stream("Offline: a/b is not available\nOffline: a/b is not available\n"),
     stream("Offline: a/b is not available\nOffline: a/c is not available\n")),
    (widget_outputs_without_static_view, display({WIDGET_VIEW: {"model_id": "ab"}, "text/plain": "HBox()"}),
     display({WIDGET_VIEW: {"model_id": "ab"}, "text/plain": "VBox()", "image/png": "iVBOR"})),
    (unfinished_progress_bars, display({"text/plain": "ViT:   0%|      | 0/30 [00:00<?, ?step/s]"}),
     display({"text/plain": "ViT: 100%|######| 30/30 [00:04<00:00, 7.1step/s]"})),
    (unfinished_progress_bars, display({"text/html": "<progress value='3' max='375'></progress>"}),
     display({"text/html": "<progress value='375' max='375'></progress>"})),
    (empty_outputs, display({"text/html": "", "text/plain": "<IPython.core.display.HTML object>"}),
     display({"text/plain": "<IPython.core.display.HTML object>", "image/png": "iVBOR"})),
    (empty_outputs, stream(""), stream("0\n")),
    (machine_paths, stream("saved to /root/.cache/homl16/x\n"), stream("saved to ../data/cache/x\n")),
    (machine_paths, stream("/usr/lib/python3/site-packages/gt/m\n"), stream(".../site-packages/gt/m\n")),
])
def test_each_check_tells_bad_outputs_from_good_ones(check, bad, good):
    assert check(nb_with(bad)) and not check(nb_with(good))


def test_widget_state_is_stale_unless_an_output_displays_it_or_its_children():
    box = display({WIDGET_VIEW: {"model_id": "aa"}, "text/plain": "VBox()", "image/png": "iVBOR"})
    state = {"aa": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_bb"]}},
             "bb": {"model_name": "TextModel", "state": {}}}
    assert not stale_widget_state(nb_with(box, widgets=state))
    state["cc"] = {"model_name": "FloatProgressModel", "state": {}}
    stale = stale_widget_state(nb_with(box, widgets=state))
    assert stale == ["1 stale FloatProgressModel in metadata.widgets"]
