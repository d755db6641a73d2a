"""Where code runs (device) and how runs repeat (seeds)."""

import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def get_device():
    """The best available device: "cuda", then "mps" (Apple silicon), then "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def seed_offset():
    """``$HOML16_SEED_OFFSET`` (default 0): added to every seed of ``set_seed`` and ``train``, so that
    ``benchmarks/seeds.py`` can re-run a notebook under other seeds without editing it."""
    value = os.environ.get("HOML16_SEED_OFFSET", "0")
    if not value.isdigit():
        raise ValueError(f"HOML16_SEED_OFFSET must be a non-negative integer, got {value!r}")
    return int(value)


def set_seed(seed=42):
    """Seed Python, NumPy and PyTorch (every device) so a run can be repeated; returns the seed used
    (``seed`` plus ``seed_offset()``)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed += seed_offset()
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return seed


def cache_dir():
    """Where homl16 keeps what it can regenerate (datasets, features, small checkpoints).

    ``$HOML16_CACHE`` if set; ``data/cache/`` in a clone of the course; else ``~/.cache/homl16``.
    """
    if os.environ.get("HOML16_CACHE"):
        path = Path(os.environ["HOML16_CACHE"])
    elif (REPO_ROOT / "pyproject.toml").exists():
        path = REPO_ROOT / "data" / "cache"
    else:
        path = Path.home() / ".cache" / "homl16"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_once(path, write):
    """Create the file or folder ``path`` with ``write(tmp)`` into a temporary sibling, then move it in place.

    A crash mid-write never leaves a half-written entry behind, and several processes building the same
    entry at once (torchrun, notebooks run side by side) are safe: the first to finish wins.
    """
    path = Path(path)
    if path.exists():
        return path
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    write(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process moved its copy (a folder) into place first
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return path


def stale_imports():
    """Packages this process had imported before pip installed another version of them, as sorted
    (module, version in use, version installed): Python keeps running the old code until a restart."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    from packaging.version import InvalidVersion, Version

    distributions = packages_distributions()
    stale = []
    for name, module in list(sys.modules.items()):
        with warnings.catch_warnings():  # some packages deprecate their __version__
            warnings.simplefilter("ignore")
            loaded = getattr(module, "__version__", None)
        owners = set(distributions.get(name, []))  # a name twice when two site-packages hold it
        if "." in name or len(owners) != 1 or not isinstance(loaded, str):
            continue
        try:
            installed = version(owners.pop())  # the one import finds first
            if Version(loaded) != Version(installed):
                stale.append((name, loaded, installed))
        except (PackageNotFoundError, InvalidVersion):
            continue
    return sorted(stale)


def check_no_stale_imports():
    """Raise, asking for a runtime restart, if pip has just replaced a package this process already uses
    (on Colab, one its kernel imports at start); the notebook's first cell calls it after installing."""
    stale = stale_imports()
    if stale:
        changes = ", ".join(f"{name} {loaded} -> {installed}" for name, loaded, installed in stale)
        raise RuntimeError(f"pip upgraded packages this runtime had already imported ({changes}): restart "
                           "the runtime (Colab: Runtime > Restart session), then run this cell again")
