"""Online steps sized to the machine: what each checkpoint and dataset costs, and what to do with it here.

Before a heavy online step (a large download, a big model, a fine-tuning) a notebook calls ``plan_for``: it
measures this machine (device, free GPU memory, free RAM and disk), prints what it is about to do, and returns
a ``Plan``: the book's recipe on a GPU in half precision; a small subset and one epoch on a CPU; or a skip,
so that the offline stand-in is used, when the model cannot fit. ``choose_plan`` is the rule itself, a pure
function of a ``Machine`` and a checkpoint's ``Needs`` (the tests fake machines with it).
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

CPU_TRAIN_EXAMPLES = 256  # a CPU fine-tunes on this many examples (and evaluates on half as many), 1 epoch
CPU_INFERENCE_EXAMPLES = 32  # and runs a big model on at most this many (e.g. photos to caption)
CPU_MAX_PARAMS_M = 4_000  # no CPU plan above 4B parameters: generating with them takes many minutes a step
TRAIN_ACTIVATIONS_GB = 2.0  # activations of a batch of 16 images at 224x224 through a Base model (rough)


@dataclass(frozen=True)
class Needs:
    """What a checkpoint or dataset costs: ``download_gb`` (the files ``from_pretrained``/``load_dataset``
    fetch), ``params_m`` (millions of parameters, 0 for a dataset), ``gflops`` (one forward pass of one
    example, for time estimates), ``book`` (what the book's full run reaches, for fine-tuning), and
    ``examples`` (a dataset's training examples)."""
    download_gb: float
    params_m: float = 0.0
    gflops: float = 0.0
    book: str = ""
    examples: int = 0

    def memory_gb(self, dtype, training=False):
        """Memory to hold the model in ``dtype`` ("float32", "float16", "bfloat16"): the weights plus 20% for
        inference; training with AdamW in mixed precision keeps float32 weights, gradients and two moments
        (16 bytes a parameter) plus the activations of a batch."""
        if training:
            return self.params_m * 16e-3 + TRAIN_ACTIVATIONS_GB
        return self.params_m * 1e-3 * (4 if dtype == "float32" else 2) * 1.2

    def scaled(self, download_gb):
        """These needs for a checkpoint of the same kind served at another size (a mirror's tiny test copy):
        parameters and compute in proportion to the download."""
        ratio = download_gb / self.download_gb
        return Needs(download_gb, self.params_m * ratio, self.gflops * ratio, self.book)


# From the model and dataset cards on the hub (sizes rounded; ~ where the figure is our estimate). Downloads
# are the weight files transformers fetches (safetensors), or a dataset's Parquet files.
NEEDS = {
    "google/vit-base-patch16-224-in21k": Needs(0.35, 86, 17.6, "about 91.8% accuracy on Pets after 3 epochs"),
    "google/vit-base-patch16-224": Needs(0.35, 87, 17.6),
    "facebook/deit-base-distilled-patch16-224": Needs(0.35, 87, 17.7,
                                                      "about 94.4% accuracy on Pets after 3 epochs"),
    "facebook/detr-resnet-50": Needs(0.17, 41, 86),
    "microsoft/swin-tiny-patch4-window7-224": Needs(0.11, 28, 4.5),
    "OpenGVLab/pvt_v2_b0": Needs(0.015, 3.7, 0.6),
    "facebook/dino-vitb8": Needs(0.35, 86, 78),
    "unc-nlp/lxmert-base-uncased": Needs(0.87, 210),  # ~ parameters: from the download
    "openai/clip-vit-base-patch32": Needs(0.61, 151, 4.4),
    "deepmind/vision-perceiver-fourier": Needs(0.19, 48, 500),  # ~ compute
    "HuggingFaceM4/idefics-9b-instruct": Needs(18, 8_900),  # stored in bfloat16
    "Salesforce/blip2-opt-2.7b": Needs(15.5, 3_900),  # stored in float32
    "bert-base-uncased": Needs(0.44, 110, 22),
    "timm/oxford-iiit-pet": Needs(0.8, examples=3_680),  # and 3,669 test images; 37 breeds
    "ethz/food101": Needs(5.0, examples=75_750),  # and 25,250 validation images; 101 dishes
}
# Sustained TFLOPS in mixed-precision training of a Base vision transformer (rough; for time estimates only)
GPU_TFLOPS = {"T4": 4, "P100": 4, "V100": 12, "L4": 10, "A10": 12, "A100": 30, "L40": 30, "H100": 60,
              "H200": 60}


@dataclass(frozen=True)
class Machine:
    """What a plan depends on: ``device`` ("cuda", "mps" or "cpu"), free memory in GB, and for a GPU its
    name and whether it computes in bfloat16 natively (compute capability 8.0 on: Ampere, Ada, Hopper; a
    T4 only emulates it, so float16 is its half precision)."""
    device: str
    ram_free_gb: float
    gpu_name: str = ""
    gpu_free_gb: float = 0.0
    native_bf16: bool = False
    disk_free_gb: float = float("inf")
    cpu_count: int = 2

    @property
    def half(self):
        """The GPU's half precision: bfloat16 where native, else float16."""
        return "bfloat16" if self.native_bf16 else "float16"

    def tflops(self, device):
        """Rough sustained training TFLOPS of ``device`` on this machine."""
        if device == "cuda":
            return next((v for k, v in GPU_TFLOPS.items() if k in self.gpu_name), 8)
        return 0.015 * self.cpu_count  # float32 on a CPU core, about 15 GFLOPS sustained


@dataclass(frozen=True)
class Plan:
    """What to do: ``run`` (False: skip the hub step and use the offline stand-in), on ``device`` in ``dtype``
    (a torch dtype name), for ``epochs``, on at most ``max_examples`` training examples (None: all), and
    ``why``, the line ``plan_for`` prints."""
    run: bool
    device: str = "cpu"
    dtype: str = "float32"
    epochs: int = 1
    max_examples: int = None
    why: str = ""

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def take(self, dataset, share=1.0, seed=42):
        """``dataset``, or a random subset of ``share * max_examples`` rows of it when the plan says so
        (a random one: the hub's datasets are sorted by class)."""
        if self.max_examples is None or len(dataset) <= self.max_examples * share:
            return dataset
        return dataset.shuffle(seed=seed).select(range(int(self.max_examples * share)))


def choose_plan(machine, needs, training=False, epochs=3, examples=0):
    """The plan for ``needs`` (a ``Needs``) on ``machine`` (a ``Machine``): inference, or fine-tuning for the
    book's ``epochs`` on ``examples`` examples when ``training``.

    On a GPU where it fits, the book's recipe in half precision; else on the CPU in float32 when the model
    has at most 4B parameters and fits the free RAM (fine-tuning: a random subset of ``CPU_TRAIN_EXAMPLES``
    examples and one epoch; inference: at most ``CPU_INFERENCE_EXAMPLES``); else skipped. A download larger
    than the free disk is skipped too.
    """
    if not isinstance(machine, Machine) or not isinstance(needs, Needs):
        raise ValueError(f"choose_plan takes a Machine and a Needs, got {machine!r} and {needs!r}")
    download = f"downloading {size(needs.download_gb)}"
    if needs.download_gb > machine.disk_free_gb:
        return Plan(False, why=f"{download} does not fit the {machine.disk_free_gb:.0f} GB free on disk")
    if machine.device == "cuda":
        need = needs.memory_gb(machine.half, training)
        if need <= machine.gpu_free_gb:
            parts = [f"{download}, needs {size(need)} of GPU memory in {machine.half} "
                     f"({machine.gpu_free_gb:.0f} GB free on the {machine.gpu_name})"]
            if training:
                parts.append(f"the book's recipe: {epochs} epochs on all {examples:,} training examples, "
                             f"{estimate(machine, 'cuda', needs, epochs, examples)}")
            return Plan(True, "cuda", machine.half, epochs, None, "; ".join(parts))
    need = needs.memory_gb("float32", training)
    device = "mps" if machine.device == "mps" else "cpu"
    if needs.params_m > CPU_MAX_PARAMS_M or need > machine.ram_free_gb:
        gpu = f"more GPU memory than the {machine.gpu_free_gb:.0f} GB free, or " if machine.device == "cuda" \
            else ""
        return Plan(False, why=f"{download}, needs {gpu}{size(need)} of RAM in float32 "
                               f"({machine.ram_free_gb:.0f} GB free): too big for this machine")
    parts = [f"{download}, needs {size(need)} of RAM in float32 ({machine.ram_free_gb:.0f} GB free), "
             f"on the {device}"]
    if not training:
        parts.append(f"on at most {CPU_INFERENCE_EXAMPLES} examples where there are more")
        return Plan(True, device, "float32", epochs, CPU_INFERENCE_EXAMPLES, "; ".join(parts))
    subset = min(examples or CPU_TRAIN_EXAMPLES, CPU_TRAIN_EXAMPLES)
    of_all = f" of the {examples:,} training examples" if examples else " training examples"
    parts.append(f"no GPU, so 1 epoch on a random {subset}{of_all}, "
                 f"{estimate(machine, device, needs, 1, subset)}")
    if needs.book:
        parts.append(f"the book's run: {epochs} epochs on all of them on a GPU, {needs.book}")
    return Plan(True, device, "float32", 1, CPU_TRAIN_EXAMPLES, "; ".join(parts))


def size(gb):
    """``gb`` for reading: "15.5 GB", "3.4 GB", "350 MB", "1 MB"."""
    return f"{gb:.1f} GB" if gb >= 1 else f"{max(1, round(gb * 1000))} MB"


def estimate(machine, device, needs, epochs, examples):
    """"about N minutes" of fine-tuning (a backward pass costs two forward ones; the evaluation runs on
    half as many examples), or "time unknown"."""
    if not needs.gflops:
        return "time unknown"
    tflop = (3 * epochs + 0.5) * examples * needs.gflops * 1e-3
    return f"about {max(1, round(tflop / machine.tflops(device) / 60))} minute(s) (a rough estimate)"


def this_machine():
    """The ``Machine`` this code runs on (free memory measured now)."""
    import torch

    from homl16.runtime import get_device

    device = get_device()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpu = {}
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        gpu = dict(gpu_name=torch.cuda.get_device_name(0), gpu_free_gb=free / 1e9,
                   native_bf16=torch.cuda.get_device_capability(0) >= (8, 0))
    return Machine(device, free_ram_gb(), disk_free_gb=free_disk_gb(), cpu_count=cpus, **gpu)


def free_ram_gb():
    """Available RAM in GB: /proc/meminfo's MemAvailable on Linux (Colab), else what the OS reports free."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (AttributeError, ValueError, OSError):  # e.g. Windows
        return 8.0  # unknown: a laptop's


def free_disk_gb():
    """Free disk space in GB where huggingface_hub stores its downloads."""
    from huggingface_hub.constants import HF_HUB_CACHE

    path = Path(HF_HUB_CACHE)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def served_download_gb(model_id, revision=None):
    """The size in GB of the weights the hub serves for ``model_id`` (a safetensors file, or the total of a
    sharded one's index), or None when it cannot tell."""
    import json

    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    try:  # the hub's errors (no such file, repo or revision; gated) are OSErrors
        index = hf_hub_download(model_id, "model.safetensors.index.json", revision=revision)
        return json.loads(Path(index).read_text())["metadata"]["total_size"] / 1e9
    except (OSError, KeyError, ValueError):
        pass
    try:
        return get_hf_file_metadata(hf_hub_url(model_id, "model.safetensors", revision=revision)).size / 1e9
    except (OSError, TypeError):  # TypeError: no size given
        return None


def plan_for(model_id, dataset_id=None, training=False, epochs=3, revision=None):
    """The plan for ``model_id`` on this machine (fine-tuned on ``dataset_id`` for the book's ``epochs`` when
    ``training``; the dataset's download counts too), printed as one line before anything is downloaded.
    Offline: a silent ``Plan(False)`` (the loaders say which stand-in they use; ``take`` keeps all of it).
    The model's size is the one the hub serves (so a mirror's small test copy is planned as small), else
    the ``NEEDS`` table's."""
    from homl16.pretrained import hub_available

    if model_id not in NEEDS or (dataset_id is not None and dataset_id not in NEEDS):
        raise ValueError(f"no requirements are known for {model_id!r} or {dataset_id!r}: add them to NEEDS")
    if not hub_available():
        return Plan(False, epochs=epochs, why="offline")
    needs = NEEDS[model_id]
    served = served_download_gb(model_id, revision)
    if served:
        needs = needs.scaled(served)
    examples = 0
    if dataset_id is not None:
        needs = Needs(needs.download_gb + NEEDS[dataset_id].download_gb, needs.params_m, needs.gflops,
                      needs.book)
        examples = NEEDS[dataset_id].examples
    plan = choose_plan(this_machine(), needs, training, epochs, examples)
    print(f"Plan for {model_id}: {plan.why}." if plan.run else
          f"Plan for {model_id}: skipped, {plan.why}; the offline stand-in instead.")
    return plan
