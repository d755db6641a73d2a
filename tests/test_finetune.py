import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from homl16.finetune import device_recipe, finetune_arguments, image_collator, load_classifier

ROOT = Path(__file__).resolve().parents[1]


def test_collator_turns_rows_of_any_image_mode_into_a_batch():
    model, processor, pretrained = load_classifier("vit", ["a", "b", "c"])
    assert not pretrained and model.config.num_labels == 3  # offline: the small stand-in with a new head
    rows = [{"image": Image.new(mode, (40, 30)), "label": i} for i, mode in enumerate(["RGB", "L", "RGBA"])]
    batch = image_collator(processor)(rows)
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].tolist() == [0, 1, 2]
    assert model(**batch).logits.shape == (3, 3)
    with pytest.raises(ValueError, match="unknown classifier"):
        load_classifier("resnet", ["a", "b"])


def test_classifier_head_is_reproducible_for_a_seed():
    first, _, _ = load_classifier("deit", ["a", "b"], seed=3)
    again, _, _ = load_classifier("deit", ["a", "b"], seed=3)
    assert torch.equal(first.classifier.weight, again.classifier.weight)


def test_arguments_follow_the_device_and_the_starting_point(tmp_path):
    assert device_recipe() == {"use_cpu": True}  # no GPU in CI: the setting that lets torchrun form a group
    assert finetune_arguments(tmp_path, pretrained=True, epochs=1).learning_rate == 5e-5
    assert finetune_arguments(tmp_path, pretrained=False, epochs=1).learning_rate == 5e-4
    with pytest.raises(ValueError, match="positive"):
        finetune_arguments(tmp_path, pretrained=True, epochs=0)


def run_or_dump_stacks(command, env, timeout):
    """Run ``command``; if it outlives ``timeout``, its Python processes (torchrun and its ranks) print
    their threads' stacks (faulthandler, on SIGABRT) before they are killed. Returns (returncode, or None
    on a timeout; stdout; stderr)."""
    process = subprocess.Popen(command, env=dict(env, PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        return process.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for member in reversed(family):  # the ranks first: torchrun would otherwise SIGTERM them
            member.send_signal(signal.SIGABRT)
        psutil.wait_procs(family, timeout=30)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        stdout, stderr = process.communicate()
        return None, stdout, stderr


def test_finetune_script_trains_with_two_processes_under_torchrun(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(ROOT / "scripts" / "finetune.py"), "--epochs", "1", "--max-train-examples", "64",
               "--max-test-examples", "32", "--per-device-batch-size", "8", "--output-dir", str(tmp_path)]
    returncode, stdout, stderr = run_or_dump_stacks(command, env, timeout=300)  # it takes 10-20 s
    assert returncode is not None, f"torchrun hung; its processes' stacks:\n{stderr[-8000:]}"
    assert returncode == 0, stderr[-3000:]
    # 64 examples, 8 per process and step, 2 processes: 4 steps (one process alone would take 8)
    assert "2 process(es) on cpu: 4 optimizer steps" in stdout
    assert (tmp_path / "final" / "config.json").exists()


def test_the_offline_stand_in_is_built_only_when_needed(monkeypatch):
    """Online, load_classifier loads the hub's model and builds no offline checkpoint."""
    import transformers

    from homl16 import finetune, pretrained

    built = []
    monkeypatch.setattr(finetune, "offline_classifier_checkpoint", lambda name: built.append(name))
    monkeypatch.setattr(pretrained, "keep_hub_kernels_off_offline", lambda: True)  # online
    hub_model = type("HubModel", (), {"name_or_path": "google/vit-base-patch16-224-in21k"})()
    monkeypatch.setattr(transformers.ViTForImageClassification, "from_pretrained", lambda *a, **k: hub_model)
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", lambda *a, **k: "processor")
    assert load_classifier("vit", ["a", "b"]) == (hub_model, "processor", True)
    assert built == []


def test_a_label_map_of_another_length_than_the_checkpoints_gives_no_warning(tmp_path, monkeypatch):
    """The real DeiT has 1,000 labels; the pets 37 (offline 4): no "num_labels ... incompatible" warning, and
    a head of another size is replaced (transformers 5 raises unless told to)."""
    import logging

    from transformers import DeiTConfig, DeiTForImageClassification
    from transformers.utils import logging as transformers_logging

    from homl16 import finetune

    config = DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=10)
    DeiTForImageClassification(config).save_pretrained(tmp_path / "deit")
    from transformers import ViTImageProcessor
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "deit")
    monkeypatch.setattr(finetune, "offline_classifier_checkpoint", lambda name: str(tmp_path / "deit"))
    warnings = []
    handler = type("Collect", (logging.Handler,), {"emit": lambda self, record: warnings.append(record)})()
    logger = transformers_logging.get_logger("transformers.configuration_utils")
    transformers_logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        model, _, _ = load_classifier("deit", ["a", "b", "c", "d"])
    finally:
        logger.removeHandler(handler)
        transformers_logging.set_verbosity_error()
    assert model.config.num_labels == 4
    assert not [r for r in warnings if "incompatible" in r.getMessage()]


def test_accuracy_leaves_no_empty_prediction_bar_in_a_notebook(tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import Trainer
    from transformers.utils.notebook import NotebookProgressCallback

    from homl16.finetune import trainer_accuracy

    closed = []
    monkeypatch.setattr(NotebookProgressCallback, "on_predict", lambda self, *a, **k: closed.append(1))
    model, processor, _ = load_classifier("vit", ["a", "b"])
    rows = Dataset.from_dict({"image": [Image.new("RGB", (32, 32))] * 4, "label": [0, 1, 0, 1]})
    trainer = Trainer(model=model, args=finetune_arguments(str(tmp_path), False, 1, eval_strategy="no"),
                      data_collator=image_collator(processor), callbacks=[NotebookProgressCallback])
    accuracy = trainer_accuracy(trainer, rows)
    assert 0 <= accuracy <= 1 and not closed  # its close() would store an empty HTML output
    assert any(isinstance(c, NotebookProgressCallback) for c in trainer.callback_handler.callbacks)
