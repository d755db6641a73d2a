"""Every load from the Hugging Face hub goes through here, and the session's mode (online or offline).

Online, the hub is used as in the book. Offline (``HOML16_MODE=offline``, ``HF_HUB_OFFLINE=1``, or no
answer from the hub) nothing waits on network retries: the local hub cache is tried, then the given
fallback, and one printed line says which was used.
"""

import contextlib
import functools
import importlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from homl16.runtime import cache_dir, write_once

DEFAULT_ENDPOINT = "https://huggingface.co"
MODES = ("auto", "online", "offline")
TRUE = ("1", "true", "yes", "on")

# The book's hub ids -> "module:function" that returns the course's offline stand-in (a checkpoint
# directory, built once): one place that says what each notebook uses when the hub is out of reach.
STAND_INS = {
    "facebook/detr-resnet-50": "homl16.detr:offline_detr_checkpoint",
    "OpenGVLab/pvt_v2_b0": "homl16.pvt:offline_pvt_checkpoint",
    "microsoft/swin-tiny-patch4-window7-224": "homl16.swin:offline_swin_checkpoint",
    "deepmind/vision-perceiver-fourier": "homl16.perceiver:offline_perceiver_checkpoint",
    "openai/clip-vit-base-patch32": "homl16.clip:course_clip_checkpoint",  # the course's shapes CLIP
    "Salesforce/blip2-opt-2.7b": "homl16.blip2:course_blip2_checkpoint",  # the course's shapes BLIP-2
}
_announced = set()  # one "Offline: ..." line per checkpoint, not one per model, processor and tokenizer


def stand_in(model_id):
    """The registered offline stand-in builder of ``model_id`` (see ``STAND_INS``)."""
    if model_id not in STAND_INS:
        raise ValueError(f"no offline stand-in is registered for {model_id!r}: pass fallback=..., "
                         f"or use one of {sorted(STAND_INS)}")
    module, name = STAND_INS[model_id].split(":")
    return getattr(importlib.import_module(module), name)


def hub_endpoint():
    """The hub's address: ``$HF_ENDPOINT`` (a mirror, a proxy, a local hub) or https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or DEFAULT_ENDPOINT


def hub_mode(timeout=2.0):
    """("online" or "offline", why). Offline when ``HOML16_MODE=offline`` or ``HF_HUB_OFFLINE`` is set; online
    when ``HOML16_MODE=online``; else (``auto``, the default) online when the endpoint answers."""
    mode = os.environ.get("HOML16_MODE", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"HOML16_MODE must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "offline":
        return "offline", "HOML16_MODE=offline"
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in TRUE:
        return "offline", f"HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']}"
    endpoint = hub_endpoint()
    if mode == "online":
        return "online", f"HOML16_MODE=online, hub at {endpoint}"
    if endpoint_answers(endpoint, timeout):
        return "online", f"hub reachable at {endpoint}"
    return "offline", f"no answer from {endpoint}"


def hub_available(timeout=2.0):
    """True when the session is online (see ``hub_mode``)."""
    return hub_mode(timeout)[0] == "online"


@functools.lru_cache(maxsize=8)
def endpoint_answers(endpoint, timeout):
    """Whether a TCP connection to the endpoint's host and port (443 for https, 80 for http unless the
    address names one) opens within ``timeout`` seconds; asked once per endpoint and session."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"HF_ENDPOINT must be an http(s) address like {DEFAULT_ENDPOINT}, got {endpoint!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def set_libraries_offline(offline):
    """Switch huggingface_hub (and so transformers) and datasets off or back on the network now: both read
    ``HF_HUB_OFFLINE`` once, when imported, so setting the variable later changes nothing by itself."""
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = offline
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = offline


@contextlib.contextmanager
def libraries_offline():
    """Inside the block, huggingface_hub and datasets use their caches only; after it, all is as before."""
    import datasets.config
    import huggingface_hub.constants

    saved = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE,
             datasets.config.HF_DATASETS_OFFLINE)
    set_libraries_offline(True)
    try:
        yield
    finally:
        (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE,
         datasets.config.HF_DATASETS_OFFLINE) = saved


def keep_download_counts_local():
    """Keep ``datasets.load_dataset`` from sending its download-count request to Amazon S3, a host outside
    ``HF_ENDPOINT`` (datasets 5.x; the variable is read at import, so its copy is set too)."""
    import datasets.config

    os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


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


def load_pretrained(model_class, model_id, fallback=None, plan=None, **kwargs):
    """``model_class.from_pretrained(model_id, **kwargs)`` with an offline fallback.

    Works for models, processors and tokenizers. ``fallback`` is a local directory (loaded with
    the same class and kwargs; it needs to exist only when it is used), or a callable returning either the
    object or such a directory
    (e.g. ``course_clip_checkpoint``, which builds the course's model on first use: only when
    the hub cannot be used); by default, the stand-in registered for ``model_id`` in ``STAND_INS``.
    The fallback is used offline, online when ``plan`` (a ``homl16.plan.Plan``) says the model does not fit
    this machine, and when the checkpoint needs a package the course does not install. One line says what was
    used, once per checkpoint.
    """
    if not model_id or not isinstance(model_id, str):
        raise ValueError(f"model_id must be a hub id like 'google/vit-base-patch16-224', got {model_id!r}")
    if fallback is None:
        fallback = stand_in(model_id)
    if not (callable(fallback) or isinstance(fallback, (str, os.PathLike))):
        raise ValueError(f"fallback must be a callable or a directory, got {fallback!r}")
    online = keep_hub_kernels_off_offline()
    reason = f"Offline: {model_id} is not available"
    if online and plan is not None and not plan.run:
        reason = f"{model_id} is skipped ({plan.why})"
    else:
        try:
            loaded = model_class.from_pretrained(model_id, local_files_only=not online, **kwargs)
            where = "from the hub" if online else "from the local hub cache"
            announce(model_id, f"Loaded {model_id} ({where}).")
            return loaded
        except OSError:
            if online:
                raise
        except (ImportError, ValueError) as error:
            if not needs_missing_package(error):
                raise
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            reason = f"{model_id} needs a package the course does not install ({first_line})"
    return load_fallback(model_class, model_id, fallback, reason, kwargs)


def needs_missing_package(error):
    """Whether ``from_pretrained`` failed because the checkpoint's code needs a package that is not installed
    (e.g. a config asking for a timm backbone)."""
    return isinstance(error, ImportError) or "pip install" in str(error)


def load_fallback(model_class, model_id, fallback, reason, kwargs):
    """The fallback of ``load_pretrained``, announced as "``reason``, so using ... instead."."""
    kwargs = {k: v for k, v in kwargs.items() if k != "revision"}  # a hub revision means nothing locally
    if callable(fallback):
        loaded = fallback()
        if not (isinstance(loaded, (str, os.PathLike)) and os.path.isdir(loaded)):
            announce(model_id, f"{reason}, so using {getattr(fallback, '__name__', 'fallback')}() instead.")
            return loaded
        fallback = loaded
    if not os.path.isdir(fallback):  # checked only now: online, the folder is never needed
        raise ValueError(f"{reason}, and the fallback folder {str(fallback)!r} does not exist: run the cells "
                         "above that make it")
    # a relative path, so that transformers' load report names no user's home either
    loaded = model_class.from_pretrained(os.path.relpath(fallback), **kwargs)
    announce(model_id, f"{reason}, so using {short_path(fallback)} instead.")
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
    """``datasets.load_dataset(dataset_id, **kwargs)``: from the hub when online, else from the local datasets
    cache if it holds the dataset, else ``fallback()``; a printed line says which."""
    if not dataset_id or not isinstance(dataset_id, str):
        raise ValueError(f"dataset_id must be a hub id like 'timm/oxford-iiit-pet', got {dataset_id!r}")
    if not callable(fallback):
        raise ValueError("fallback must be a callable that returns a dataset")
    from datasets import load_dataset

    keep_download_counts_local()
    if hub_available():
        print(f"Loading {dataset_id} from the hub.")
        return load_dataset(dataset_id, **kwargs)
    try:
        with libraries_offline():
            dataset = load_dataset(dataset_id, **kwargs)
    except (OSError, ValueError):  # not cached (ConnectionError, FileNotFoundError), or another split cached
        print(f"Offline: {dataset_id} is not available, so using {fallback.__name__}() instead.")
        return fallback()
    print(f"Loaded {dataset_id} from the local datasets cache.")
    return dataset


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
