"""Seed-to-seed spread of the figures notebooks 03 and 04 build a lesson on (outside the test suite).

    python benchmarks/seeds_vit_deit.py            # seeds 42, 43, 44 (42 is the notebooks' own)

Notebook 04: the CNN teacher, the plain ViT student and the hard-distilled DeiT student on the same 1,000
digits, with the notebook's recipe; the seed sets the initial weights and the batch order (the 1,000 digits
stay the notebook's). Notebook 03: the offline Trainer path (the small stand-in ViT, from scratch, on the
4-class pets stand-in); the seed sets the new head and the Trainer's data order (the stand-in's weights are
the same for every seed). Prints a Markdown table and writes it to benchmarks/seeds_vit_deit.md.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch.nn.functional as F

from homl16.augment import random_shift
from homl16.cnn import SmallCNN
from homl16.data import load_pets, mnist_tensors
from homl16.deit import DeiT, Distiller
from homl16.finetune import finetune_arguments, image_collator, load_classifier, trainer_accuracy
from homl16.runtime import set_seed
from homl16.train import adamw_one_cycle, evaluate, fit
from homl16.vit import ViT

STUDENT = dict(img_size=28, patch_size=7, in_channels=1, num_classes=10, embed_dim=64, depth=4, num_heads=4,
               ff_dim=128, dropout=0.0)


def distillation_run(seed, data, batch_size=64, lr=3e-3):
    """Test accuracies of notebook 04's teacher, plain student and distilled student for one seed."""
    X_train, y_train, X_test, y_test = data

    def train_model(model, epochs, loss_fn=F.cross_entropy, trainable=None):
        optimizer, scheduler = adamw_one_cycle(trainable or model, lr, len(X_train), batch_size, epochs)
        fit(model, (X_train, y_train), epochs, optimizer, scheduler, loss_fn=loss_fn, batch_size=batch_size,
            augment=random_shift, device="cpu", seed=seed, desc=f"seed {seed}")
        return evaluate(model, X_test, y_test, device="cpu")["accuracy"]

    set_seed(seed)
    teacher = SmallCNN(in_channels=1, num_classes=10, width=16)
    scores = {"teacher": train_model(teacher, 15)}
    set_seed(seed)
    scores["ViT student"] = train_model(ViT(**STUDENT), 30)
    set_seed(seed)
    deit = DeiT(**STUDENT)
    distiller = Distiller(deit, teacher, loss="hard")
    train_model(distiller, 30, loss_fn=distiller.loss_fn, trainable=deit)
    scores["DeiT student (hard distillation)"] = evaluate(deit, X_test, y_test, device="cpu")["accuracy"]
    scores["distillation gain"] = scores["DeiT student (hard distillation)"] - scores["ViT student"]
    return scores


def trainer_run(seed, pets, output_dir):
    """Notebook 03's offline Trainer test accuracy for one seed."""
    from transformers import Trainer

    names = pets["train"].features["label"].names
    model, processor, pretrained = load_classifier("vit", names, seed=seed)
    args = finetune_arguments(output_dir, pretrained, epochs=3 if pretrained else 8, seed=seed,
                              disable_tqdm=True)
    trainer = Trainer(model=model, args=args, data_collator=image_collator(processor),
                      train_dataset=pets["train"], eval_dataset=pets["test"])
    trainer.train()
    return {"03 Trainer path (offline stand-in)": trainer_accuracy(trainer, pets["test"])}


def table(rows, seeds):
    names = list(rows[0])
    lines = ["| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | spread (max - min) |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for name in names:
        values = [row[name] for row in rows]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {statistics.mean(values):.3f} | {max(values) - min(values):.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    start = time.perf_counter()
    data = mnist_tensors(train_size=1000, seed=0)  # notebook 04's data
    pets = load_pets()
    rows = []
    with tempfile.TemporaryDirectory() as output_dir:
        for seed in args.seeds:
            rows.append({**distillation_run(seed, data), **trainer_run(seed, pets, output_dir)})
    text = (f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}), "
            f"{time.perf_counter() - start:.0f} s, by `python benchmarks/seeds_vit_deit.py`.\n\n"
            f"{table(rows, args.seeds)}\n")
    print(text)
    Path(__file__).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
