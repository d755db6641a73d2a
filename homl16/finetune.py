"""The book's fine-tuning with transformers' ``Trainer``, shared by the notebooks and ``scripts/finetune.py``.

Online, ``load_classifier("vit")`` is the book's ViT-Base pretrained on ImageNet-21k (``"deit"``: its
distilled DeiT-B); offline, a small randomly initialised model of the same class, built once and cached.
The ``Trainer`` runs unchanged on a CPU, one GPU, or several GPUs and nodes under ``torchrun`` or
``accelerate launch`` (DDP).
"""

import torch

CLASSIFIERS = {  # name: (hub checkpoint, transformers class name, offline checkpoint name)
    "vit": ("google/vit-base-patch16-224-in21k", "ViTForImageClassification", "small-vit-32"),
    "deit": ("facebook/deit-base-distilled-patch16-224", "DeiTForImageClassification", "small-deit-32"),
}


def image_collator(image_processor):
    """The book's collate function: a list of {"image": PIL, "label": int} rows ->
    {"pixel_values": (B, 3, H, W), "labels": (B,)}, any image mode converted to RGB."""
    def collate(batch):
        if not batch:
            raise ValueError("collate got an empty batch")
        inputs = image_processor([row["image"] for row in batch], return_tensors="pt", do_convert_rgb=True)
        inputs["labels"] = torch.tensor([row["label"] for row in batch])
        return inputs

    return collate


def offline_classifier_checkpoint(name):
    """Directory of the small offline ViT or DeiT (32x32 images, patches of 4), built once."""
    from homl16.deit import small_hf_deit
    from homl16.pretrained import local_checkpoint
    from homl16.vit import small_hf_vit

    build = {"vit": small_hf_vit, "deit": small_hf_deit}[name]
    return local_checkpoint(CLASSIFIERS[name][2], lambda: build(image_size=32, patch_size=4))


def load_classifier(name, label_names, seed=42, plan=None):
    """(model, image processor, pretrained) for ``name`` in ``CLASSIFIERS``, with a new head for
    ``label_names`` (initialised from ``seed``); ``pretrained`` is False when the offline stand-in
    was loaded (offline, or when ``plan``, a ``homl16.plan.Plan``, skips the hub model)."""
    import transformers
    from transformers import AutoImageProcessor

    from homl16.pretrained import load_pretrained
    from homl16.runtime import set_seed

    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}: choose one of {sorted(CLASSIFIERS)}")
    if len(label_names) < 2:
        raise ValueError(f"label_names must name at least 2 classes, got {list(label_names)}")
    model_id, class_name, _ = CLASSIFIERS[name]

    def offline():  # built only when needed; its first build seeds on its own, so the head's seed comes after
        path = offline_classifier_checkpoint(name)
        set_seed(seed)
        return path

    set_seed(seed)
    # id2label sets num_labels too (giving both warns when the checkpoint's own map has another length); a
    # checkpoint's head for another number of classes is replaced by a new one (else transformers raises)
    model = load_pretrained(getattr(transformers, class_name), model_id, offline, plan,
                            ignore_mismatched_sizes=True, id2label=dict(enumerate(label_names)),
                            label2id={label: i for i, label in enumerate(label_names)})
    processor = load_pretrained(AutoImageProcessor, model_id, lambda: offline_classifier_checkpoint(name),
                                plan)  # no re-seeding here
    return model, processor, model.name_or_path == model_id


def device_recipe():
    """``TrainingArguments`` options for the device at hand.

    On a CUDA GPU, the course's GPU recipe: half-precision autocast and fused AdamW (see
    benchmarks/gpu_vit_throughput.py for its speed); bf16 where the GPU computes it natively (compute
    capability 8.0 on), else fp16 (a T4 reports bf16 as supported but only emulates it, slowly). On a
    machine with no accelerator, ``use_cpu=True``, without which several processes under torchrun do
    not form a (gloo) process group.
    """
    if torch.cuda.is_available():
        half = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
        return {half: True, "optim": "adamw_torch_fused"}
    return {} if torch.backends.mps.is_available() else {"use_cpu": True}


def finetune_arguments(output_dir, pretrained, epochs, batch_size=16, **overrides):
    """The book's ``TrainingArguments`` plus ``device_recipe()``. A pretrained model is fine-tuned gently
    (lr 5e-5); the offline stand-in starts from random weights and needs a larger learning rate (5e-4).
    The Trainer's seed is 42 plus ``runtime.seed_offset()`` (``benchmarks/seeds.py`` shifts it)."""
    from transformers import TrainingArguments

    from homl16.runtime import seed_offset

    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    options = dict(per_device_train_batch_size=batch_size, per_device_eval_batch_size=2 * batch_size,
                   eval_strategy="epoch", num_train_epochs=epochs, learning_rate=5e-5 if pretrained else 5e-4,
                   warmup_steps=50, save_strategy="no", logging_strategy="epoch",
                   remove_unused_columns=False, report_to="none", seed=42 + seed_offset(),
                   disable_tqdm=False,  # its default follows the logging level, which notebooks turn down
                   **device_recipe())
    return TrainingArguments(output_dir, **{**options, **overrides})


def trainer_accuracy(trainer, dataset):
    """Accuracy of the trainer's model on ``dataset`` (every process gets the gathered result).

    In a notebook, transformers' progress callback would replace the short prediction bar by an empty HTML
    output when it closes (saved as such); it is left out of the ``predict`` call.
    """
    from transformers.utils.notebook import NotebookProgressCallback

    callback = trainer.pop_callback(NotebookProgressCallback)
    try:
        predictions = trainer.predict(dataset)
    finally:
        if callback is not None:
            trainer.add_callback(callback)
    return float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())

