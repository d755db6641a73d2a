"""Write every Colab link of the course from the one repository address in pyproject.toml.

    python scripts/colab_links.py

reads ``Repository`` in pyproject.toml's ``[project.urls]`` and rewrites, in place: the "Open in Colab" badge
of each notebook's first markdown cell and of README's notebook table, the install lines at the top of each
notebook's first code cell, and the notebook metadata that asks Colab for a GPU. A fork (or the course's real
home) changes that one address and runs this again; tests/test_colab_links.py checks that they agree.
"""

import re
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^\s\"')]+")
HTML_BADGE = re.compile(r'<a href="https://colab\.research\.google\.com/[^"]*"[^>]*>'
                        r'<img src="[^"]*colab-badge\.svg"[^>]*/></a>')
MARKDOWN_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
# The first code cell opens with these lines (no blank line among them), then the notebook's own imports.
HEADER = """\
OFFLINE = False  # True: the course's small offline stand-ins, even with a network (or HOML16_MODE=offline)
try:
    import homl16
except ImportError:  # e.g. on Colab: install the course package from its repository
    %pip install -q git+{repository}@{branch}
    from homl16.runtime import check_no_stale_imports
    check_no_stale_imports()  # asks for a runtime restart only if the install upgraded a package in use
"""


def repository(pyproject_text):
    """The https://github.com/<owner>/<name> address in ``[project.urls] Repository`` (Colab opens GitHub)."""
    urls = tomllib.loads(pyproject_text).get("project", {}).get("urls", {})
    url = urls.get("Repository", "").removesuffix("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError("pyproject.toml's [project.urls] Repository must be "
                         f"https://github.com/<owner>/<name>, got {url!r}")
    return url


def colab_url(repository, path):
    """Colab's address of the file ``path`` (relative to the repository root) on the course's branch."""
    return f"https://colab.research.google.com/github/{repository.removeprefix('https://github.com/')}" \
           f"/blob/{BRANCH}/{path}"


def header(repository):
    return HEADER.format(repository=repository, branch=BRANCH)


def html_badge(url):
    return f'<a href="{url}" target="_parent"><img src="{BADGE_IMAGE}" alt="Open In Colab"/></a>'


def markdown_badge(url):
    return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def with_header(source, repository):
    """A first code cell's source with the install header of ``repository`` in place of its old one."""
    old_header = source.startswith(("OFFLINE =", "try:"))
    rest = source.split("\n\n", 1)[1] if old_header and "\n\n" in source else "" if old_header else source
    return f"{header(repository)}\n{rest}"


def with_badge(source, url):
    """A first markdown cell's source with one Colab badge to ``url``, after the title if it had none."""
    if HTML_BADGE.search(source):
        return HTML_BADGE.sub(lambda _: html_badge(url), source, count=1)
    title, _, rest = source.partition("\n")
    return f"{title}\n\n{html_badge(url)}\n{rest}"


def rewrite_notebook(nb, repository, path):
    """Point ``nb`` (the notebook at ``path``, relative to the root) at ``repository``; returns it."""
    cells = {kind: next((c for c in nb.cells if c.cell_type == kind), None) for kind in ("markdown", "code")}
    if None in cells.values():
        raise ValueError(f"{path} needs a markdown cell (title, badge) and a code cell (install, imports)")
    cells["markdown"].source = with_badge(cells["markdown"].source, colab_url(repository, path))
    cells["code"].source = with_header(cells["code"].source, repository)
    nb.metadata["accelerator"] = "GPU"  # Colab opens the notebook on a GPU runtime
    nb.metadata.setdefault("colab", {})["gpuType"] = "T4"  # the free tier's
    return nb


def rewrite_readme(text, repository):
    """README's text with each notebook row's Colab badge pointing at ``repository``."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        notebook = re.search(r"\]\((notebooks/[\w.-]+\.ipynb)\)", line)
        if line.startswith("|") and notebook:
            if not MARKDOWN_BADGE.search(line):
                raise ValueError(f"README's row for {notebook.group(1)} has no Colab badge")
            badge = markdown_badge(colab_url(repository, notebook.group(1)))
            lines[i] = MARKDOWN_BADGE.sub(lambda _: badge, line, count=1)
    return "\n".join(lines)


def main(root=ROOT):
    repo = repository((root / "pyproject.toml").read_text())
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        old = path.read_text()
        nb = rewrite_notebook(nbformat.reads(old, as_version=4), repo, path.relative_to(root).as_posix())
        new = nbformat.writes(nb) + "\n"
        if new != old:
            path.write_text(new)
            changed.append(path.name)
    readme = root / "README.md"
    old = readme.read_text()
    if rewrite_readme(old, repo) != old:
        readme.write_text(rewrite_readme(old, repo))
        changed.append(readme.name)
    print(f"Colab links point at {repo} (branch {BRANCH}); rewrote: {', '.join(changed) or 'nothing'}")


if __name__ == "__main__":
    main()
