"""Notebook helpers: show the source that runs, and print a notebook's key results."""

import inspect
import math
import numbers
import os
import warnings

from IPython import get_ipython
from IPython.display import Markdown, display

from homl16.pretrained import (
    hub_mode,
    keep_download_counts_local,
    keep_hub_kernels_off_offline,
    set_libraries_offline,
)
from homl16.runtime import get_device, set_seed


def setup_notebook(seed=42, offline=False, dpi=72):
    """Seed everything, pick the device, choose the mode (see ``choose_mode``) and keep figures small;
    prints one line that says all of it, returns the device."""
    import matplotlib.pyplot as plt
    import torch

    from homl16.checks import check_positive

    check_positive("dpi", dpi)
    seed = set_seed(seed)
    plt.rcParams["figure.dpi"] = dpi
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # harmless on a CPU-only machine
    quiet_libraries()
    device = get_device()
    mode, why = choose_mode(offline)
    print(f"homl16 {__import__('homl16').__version__}, torch {torch.__version__}, device: {device}, "
          f"seed: {seed}, mode: {mode} ({why})")
    return device


def choose_mode(offline=False):
    """The session's mode, set up in the libraries before any cell loads from the hub: ``offline=True``
    forces offline, even with a network; otherwise ``hub_mode()`` decides (``HOML16_MODE``,
    ``HF_HUB_OFFLINE``, or whether the hub answers). Offline, huggingface_hub, transformers and datasets
    stay off the network and transformers fetches no hub kernels. Returns (mode, why)."""
    global _forced_offline
    if not isinstance(offline, bool):
        raise ValueError(f"offline must be True or False, got {offline!r}")
    if _forced_offline and not offline:  # the first cell re-run with OFFLINE = False: undo our own forcing
        os.environ.pop("HF_HUB_OFFLINE", None)
        _forced_offline = False
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # also for the processes a notebook starts (torchrun, ...)
        _forced_offline = True
        mode, why = "offline", "offline=True"
    else:
        mode, why = hub_mode()
    set_libraries_offline(mode == "offline")
    keep_download_counts_local()
    keep_hub_kernels_off_offline()
    return mode, why


_forced_offline = False


def quiet_libraries():
    """Keep the libraries' plumbing out of the stored outputs: no per-file loading bars (saved as widgets
    they show "0%" on GitHub) and no load reports; their errors still show."""
    from datasets.utils.logging import disable_progress_bar as datasets_quiet
    from datasets.utils.logging import set_verbosity_error as datasets_errors_only
    from huggingface_hub.utils import disable_progress_bars as hub_quiet
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets_quiet()
    datasets_errors_only()  # e.g. no "Found the latest cached dataset configuration" when offline
    hub_quiet()


def show_source(*objects):
    """Display the source code of functions or classes as a highlighted code block.

    The learner reads the code that actually runs (and is unit-tested), not a copy.
    """
    if not objects:
        raise ValueError("show_source needs at least one function or class")
    for obj in objects:
        try:
            source = inspect.getsource(obj)
        except TypeError as error:
            raise TypeError(f"show_source takes functions or classes, got {type(obj).__name__}") from error
        if get_ipython() is None:  # a plain Python shell or script
            print(source)
        else:
            display(Markdown(f"```python\n{source}```"))


def report(results):
    """Print a notebook's key results, one ``name: value`` line each.

    Floats are rounded to 4 significant decimals; names must be identifiers so the
    lines can be compared across runs (e.g. ``vit_test_accuracy: 0.969``).
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("report needs a non-empty dict of {name: value}")
    for name, value in results.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"report names must be identifiers, got {name!r}")
        if hasattr(value, "item"):  # a one-element tensor or NumPy scalar
            value = value.item()
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"report value {name} is NaN")
            value = round(value, 4)
        print(f"{name}: {value}")
