"""Every load from the Hugging Face hub goes through here.

Online, the hub is used as in the book. Offline (no network, or ``HF_HUB_OFFLINE=1``)
nothing waits on network retries: the local hub cache is tried, then the given
fallback, and one printed line says which was used.
"""

import functools
import importlib
import os
import socket
from pathlib import Path

from homl16.runtime import cache_dir, write_once

HUB_HOST = "huggingface.co"

# The book's hub ids -> "module:function" that returns the course's offline stand-in (a checkpoint
# directory, built once): one place that says what each notebook uses when the hub is out of reach.
STAND_INS = {}
_announced = set()  # one "Offline: ..." line per checkpoint, not one per model, processor and tokenizer


def stand_in(model_id):
    """The registered offline stand-in builder of ``model_id`` (see ``STAND_INS``)."""
    if model_id not in STAND_INS:
        raise ValueError(f"no offline stand-in is registered for {model_id!r}: pass fallback=..., "
                         f"or use one of {sorted(STAND_INS)}")
    module, name = STAND_INS[model_id].split(":")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=1)
def hub_available(timeout=2.0):
    """True when ``HF_HUB_OFFLINE`` is not set and the hub answers within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def keep_hub_kernels_off_offline():
    """Offline, stop transformers from fetching kernels from the hub; returns whether the hub is available.

    With the ``kernels`` package installed, transformers (5.2x) swaps some layers of a model that
    ``from_pretrained`` loads on a GPU (activations, norms) for kernels it downloads from the hub; without
    a network that download fails, and so does the load. ``USE_HUB_KERNELS=NO`` keeps the PyTorch layers.
    """
    online = hub_available()
    if not online:
        os.environ.setdefault("USE_HUB_KERNELS", "NO")
    return online


def load_pretrained(model_class, model_id, fallback=None, **kwargs):
    """``model_class.from_pretrained(model_id, **kwargs)`` with an offline fallback.

    Works for models, processors and tokenizers. ``fallback`` is a local directory (loaded with
    the same class and kwargs), or a callable returning either the object or such a directory
    (e.g. ``course_clip_checkpoint``, which builds the course's model on first use: only when
    the hub cannot be used); by default, the stand-in registered for ``model_id`` in ``STAND_INS``.
    One line says what was used, once per checkpoint.
    """
    if not model_id or not isinstance(model_id, str):
        raise ValueError(f"model_id must be a hub id like 'google/vit-base-patch16-224', got {model_id!r}")
    if fallback is None:
        fallback = stand_in(model_id)
    if not (callable(fallback) or os.path.isdir(str(fallback))):
        raise ValueError(f"fallback must be a callable or an existing directory, got {fallback!r}")
    online = keep_hub_kernels_off_offline()
    try:
        loaded = model_class.from_pretrained(model_id, local_files_only=not online, **kwargs)
        announce(model_id, f"Loaded {model_id} ({'from the hub' if online else 'from the local hub cache'}).")
        return loaded
    except OSError:
        if online:
            raise
    if callable(fallback):
        loaded = fallback()
        if not (isinstance(loaded, (str, os.PathLike)) and os.path.isdir(loaded)):
            announce(model_id, f"Offline: {model_id} is not available, so using "
                               f"{getattr(fallback, '__name__', 'fallback')}() instead.")
            return loaded
        fallback = loaded
    # a relative path, so that transformers' load report names no user's home either
    loaded = model_class.from_pretrained(os.path.relpath(fallback), **kwargs)
    announce(model_id, f"Offline: {model_id} is not available, so using {short_path(fallback)} instead.")
    return loaded


def announce(model_id, line):
    """Print ``line`` unless the same line was printed for ``model_id`` already."""
    if (model_id, line) not in _announced:
        _announced.add((model_id, line))
        print(line)


def short_path(path):
    """``path`` for printing: from ``site-packages`` on for a folder inside an installed package (e.g. the
    offline BERT), else relative to the working directory (so no user's home appears in a notebook)."""
    parts = Path(path).resolve().parts
    if "site-packages" in parts:
        last = len(parts) - 1 - parts[::-1].index("site-packages")
        return os.path.join("...", *parts[last:])
    return os.path.relpath(path)


def load_hub_dataset(dataset_id, fallback, **kwargs):
    """``datasets.load_dataset(dataset_id, **kwargs)`` when the hub is reachable, else ``fallback()``."""
    if not dataset_id or not isinstance(dataset_id, str):
        raise ValueError(f"dataset_id must be a hub id like 'timm/oxford-iiit-pet', got {dataset_id!r}")
    if not callable(fallback):
        raise ValueError("fallback must be a callable that returns a dataset")
    if hub_available():
        from datasets import load_dataset

        print(f"Loading {dataset_id} from the hub.")
        return load_dataset(dataset_id, **kwargs)
    print(f"Offline: {dataset_id} is not available, so using {fallback.__name__}() instead.")
    return fallback()


def local_checkpoint(name, build):
    """Directory of a small locally built checkpoint, made once with ``build()``.

    ``build()`` returns objects with ``save_pretrained`` (a model, its processor, ...);
    they are saved together so ``from_pretrained(directory)`` loads them back.
    """
    if not name or not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain folder name like 'shapes-clip-v1', got {name!r}")
    if not callable(build):
        raise ValueError(f"build must be a callable returning objects with save_pretrained, got {build!r}")
    path = cache_dir() / "checkpoints" / name
    def save(tmp):
        for part in build():
            part.save_pretrained(str(tmp))

    write_once(path, save)
    return str(path)
