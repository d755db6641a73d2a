"""Colab: every badge and install line comes from pyproject's one address, and the install works there."""

import copy
import importlib.metadata
import importlib.util
import re
import sys
import types
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest

from homl16.runtime import check_no_stale_imports, stale_imports
from homl16.widgets import WithStaticFallback

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
spec = importlib.util.spec_from_file_location("colab_links", ROOT / "scripts" / "colab_links.py")
colab_links = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab_links)
REPOSITORY = colab_links.repository((ROOT / "pyproject.toml").read_text())
FIX = "run `python scripts/colab_links.py`"


def read(path):
    return nbformat.read(path, as_version=4)


def first(nb, kind):
    return next(c for c in nb.cells if c.cell_type == kind)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_badge_install_lines_and_gpu_request_come_from_pyproject(path):
    nb = read(path)
    expected = colab_links.colab_url(REPOSITORY, f"notebooks/{path.name}")
    markdown = first(nb, "markdown").source
    assert colab_links.html_badge(expected) in markdown, FIX
    everywhere = [link for cell in nb.cells for link in colab_links.COLAB_LINK.findall(cell.source)]
    assert everywhere == [expected], FIX
    code = first(nb, "code").source
    assert code.startswith(colab_links.header(REPOSITORY)), FIX
    assert f"%pip install -q git+{REPOSITORY}@{colab_links.BRANCH}\n" in code
    assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"] == "T4", FIX
    assert nb.metadata["kernelspec"]["name"] == "python3"
    rewritten = colab_links.rewrite_notebook(copy.deepcopy(nb), REPOSITORY, f"notebooks/{path.name}")
    assert rewritten == nb, FIX


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_cell_sets_offline_then_imports_then_sets_up_the_notebook(path):
    code = first(read(path), "code").source
    assert code.splitlines()[0].startswith("OFFLINE = False  # True: ")
    assert "HOML16_MODE=offline" in code.splitlines()[0]
    assert re.search(r"^device = homl16\.setup_notebook\(seed=\d+, offline=OFFLINE\)$", code, re.MULTILINE)


def test_readme_badges_come_from_pyproject():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("|") and "(notebooks/" in line]
    assert len(rows) == len(NOTEBOOKS)
    for path, row in zip(NOTEBOOKS, rows):
        assert f"(notebooks/{path.name})" in row
        expected = colab_links.colab_url(REPOSITORY, f"notebooks/{path.name}")
        assert colab_links.COLAB_LINK.findall(row) == [expected]
    assert colab_links.rewrite_readme(readme, REPOSITORY) == readme, FIX


def test_a_fork_changes_every_link_by_editing_pyproject_and_running_the_script(tmp_path, capsys):
    for name in ["README.md", "pyproject.toml", *[f"notebooks/{p.name}" for p in NOTEBOOKS[:2]]]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(REPOSITORY, "https://github.com/someone/fork"))
    colab_links.main(tmp_path)
    assert "rewrote: 01_visual_attention.ipynb" in capsys.readouterr().out
    readme = (tmp_path / "README.md").read_text()
    for path in sorted((tmp_path / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert REPOSITORY not in text and "%pip install -q git+https://github.com/someone/fork@main" in text
        assert f"colab.research.google.com/github/someone/fork/blob/main/notebooks/{path.name}" in text
        assert f"colab.research.google.com/github/someone/fork/blob/main/notebooks/{path.name}" in readme
    colab_links.main(tmp_path)
    assert "rewrote: nothing" in capsys.readouterr().out


@pytest.mark.parametrize("url", ["", "https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a"])
def test_the_address_must_be_a_github_repository(url):
    with pytest.raises(ValueError, match="Repository must be https://github.com/<owner>/<name>"):
        colab_links.repository(f'[project.urls]\nRepository = "{url}"\n')


def test_a_notebook_without_a_badge_gets_one_under_its_title():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · New\n\nText."),
                                         nbformat.v4.new_code_cell("import homl16\n\ndevice = 1")])
    nb = colab_links.rewrite_notebook(nb, "https://github.com/a/b", "notebooks/99_new.ipynb")
    url = "https://colab.research.google.com/github/a/b/blob/main/notebooks/99_new.ipynb"
    assert nb.cells[0].source == f"# 99 · New\n\n{colab_links.html_badge(url)}\n\nText."
    header = colab_links.header("https://github.com/a/b")
    assert nb.cells[1].source == f"{header}\nimport homl16\n\ndevice = 1"


def test_stale_imports_names_a_package_upgraded_under_the_running_process(monkeypatch):
    assert stale_imports() == []  # this process: nothing replaced
    import tqdm

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(__version__="0.0.1"))
    assert stale_imports() == [("tqdm", "0.0.1", tqdm.__version__)]
    with pytest.raises(RuntimeError, match=r"tqdm 0\.0\.1 -> .*restart the runtime"):
        check_no_stale_imports()
    # a venv over the system's site-packages (or a user site) lists a package once per copy
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"tqdm": ["tqdm", "tqdm"]})
    assert stale_imports() == [("tqdm", "0.0.1", tqdm.__version__)]


def test_explorers_display_with_ipywidgets_7_which_has_no_repr_mimebundle():
    """Colab's ipywidgets 7 widgets have a model_id but display through _ipython_display_ only."""
    import ipywidgets

    class Widget7:
        model_id = "abc123"

        def __repr__(self):
            return "VBox()"

    bundle = WithStaticFallback(Widget7(), plt.figure())._repr_mimebundle_()
    view = {"version_major": 2, "version_minor": 0, "model_id": "abc123"}
    assert bundle["application/vnd.jupyter.widget-view+json"] == view and bundle["text/plain"] == "VBox()"
    assert bundle["image/png"].startswith("iVBOR")
    widget = ipywidgets.VBox([ipywidgets.Text("a long query " * 20)])
    own = widget._repr_mimebundle_() if hasattr(widget, "_repr_mimebundle_") else None  # ipywidgets 8
    ours = WithStaticFallback(widget, plt.figure())._repr_mimebundle_()
    assert own is None or {k: v for k, v in ours.items() if k != "image/png"} == own
