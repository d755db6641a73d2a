"""One progress-bar policy for the course: refresh at most once a second, keep the final state as text.

In a Jupyter kernel the bar is a plain-text display that is updated in place, so the saved notebook
(and GitHub's view of it) shows where the run ended, not a widget frozen at ``0%``. Elsewhere it is
tqdm's usual terminal bar.
"""

import sys

from tqdm.std import tqdm


def _in_notebook():
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and hasattr(ip, "kernel")


class _DisplayLine:
    """A file-like target for tqdm that shows only the latest line, in one updatable display."""

    def __init__(self):
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def write(self, text):
        line = text.replace("\r", "").strip()
        if line:
            self.handle.update({"text/plain": line}, raw=True)

    def flush(self):
        pass


def progress_bar(iterable=None, total=None, desc=None, unit="it", **kwargs):
    """A tqdm bar over ``iterable`` (or ``total`` steps) following the course's policy; a loop of one
    step or none gets no bar (it would only show 100% of nothing)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if total is not None and total <= 1:
        return tqdm(iterable, total=total, disable=True)
    kwargs.setdefault("mininterval", 1.0)
    kwargs.setdefault("dynamic_ncols", False)
    target = _DisplayLine() if _in_notebook() else sys.stderr
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=target, ncols=100, **kwargs)
