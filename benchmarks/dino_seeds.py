"""Seed-to-seed spread of the DINO notebook's figures (notebook 07), outside the test suite.

    python benchmarks/dino_seeds.py 42 0 1 2   # about 2 to 3 minutes a seed on a CPU

Trains the notebook's DINO (same data, model, settings) once per seed (the seed sets the initial weights,
the batches and the crops) and writes a Markdown table to benchmarks/dino_seeds.md: nearest-class-mean
and 20-NN accuracy of the teacher and of the same ViT at its random initialisation, and the last layer's
class-token attention on the strokes relative to their area (1 = no preference).
"""

import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from homl16 import dino
from homl16.data import load_mnist, to_tensors
from homl16.runtime import set_seed
from homl16.vit import ViT

ROOT = Path(__file__).resolve().parents[1]


def shrink(X):  # (N, 3, 28, 28) -> (N, 3, 16, 16), as in the notebook
    return F.avg_pool2d(F.pad(X, (2, 2, 2, 2)), 2)


def run(seed, X_train, y_train, X_test, y_test):
    set_seed(seed)
    vit = ViT(img_size=16, patch_size=4, in_channels=3, num_classes=0, embed_dim=64, depth=4, num_heads=4,
              ff_dim=128, dropout=0.0)
    random_vit = copy.deepcopy(vit)  # the same network before training
    head = dino.DINOHead(64, 128, hidden_dim=256, bottleneck_dim=64, batch_norm=True)
    student = dino.DINONetwork(vit, head)
    loss_fn = dino.DINOLoss(128, student_temp=0.1, teacher_temp=0.02, center_momentum=0.9)
    multi_crop = dino.MultiCrop(global_size=16, local_size=8, num_local=2, blur_sigma=(0.1, 0.3))
    teacher, history = dino.train_dino(student, X_train, multi_crop, epochs=20, loss_fn=loss_fn, lr=1e-2,
                                       momentum=(0.99, 0.99), batch_size=64, device="cpu", seed=seed,
                                       desc=f"seed {seed}")
    row = {"seed": seed, "seconds": history["seconds"][-1]}
    for name, backbone in (("dino", teacher.backbone), ("random", random_vit)):
        train_features = dino.class_token_features(backbone, X_train, device="cpu")
        test_features = dino.class_token_features(backbone, X_test, device="cpu")
        row[f"{name}_ncm"] = dino.nearest_class_mean_accuracy(train_features, y_train, test_features, y_test)
        row[f"{name}_knn"] = dino.knn_accuracy(train_features, y_train, test_features, y_test, k=20)
        n = 500
        maps = dino.attention_maps(backbone, X_test[:n], device="cpu")
        mass, area = dino.attention_on_object(dino.class_token_attention(maps[:, -1]), X_test[:n, 0] > 0.5)
        row[f"{name}_ratio"] = (mass.mean() / area.mean()).item()
    return row


def main(seeds):
    mnist = load_mnist()
    X_train, y_train = to_tensors(mnist["train"])
    X_test, y_test = to_tensors(mnist["test"])
    data = shrink(X_train), y_train, shrink(X_test), y_test
    rows = []
    for seed in seeds:
        rows.append(run(seed, *data))
        print(rows[-1], flush=True)
    lines = ["Notebook 07's DINO run, one row per seed (CPU), from `python benchmarks/dino_seeds.py "
             + " ".join(map(str, seeds)) + "`.", "",
             "| seed | NCM teacher | NCM random init | gain | 20-NN teacher | 20-NN random init | gain "
             "| attention on strokes / area, teacher | random init | train s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['dino_ncm']:.3f} | {r['random_ncm']:.3f} | "
                     f"{100 * (r['dino_ncm'] - r['random_ncm']):+.1f} | {r['dino_knn']:.3f} | "
                     f"{r['random_knn']:.3f} | "
                     f"{100 * (r['dino_knn'] - r['random_knn']):+.1f} | {r['dino_ratio']:.2f} | "
                     f"{r['random_ratio']:.2f} | {r['seconds']:.0f} |")
    gains = torch.tensor([[100 * (r["dino_ncm"] - r["random_ncm"]), 100 * (r["dino_knn"] - r["random_knn"]),
                           r["dino_ratio"]] for r in rows])
    lines += ["", f"Mean (min to max) over {len(rows)} seeds: NCM gain {gains[:, 0].mean():+.1f} points "
              f"({gains[:, 0].min():+.1f} to {gains[:, 0].max():+.1f}), 20-NN gain {gains[:, 1].mean():+.1f} "
              f"({gains[:, 1].min():+.1f} to {gains[:, 1].max():+.1f}), attention ratio "
              f"{gains[:, 2].mean():.2f} ({gains[:, 2].min():.2f} to {gains[:, 2].max():.2f})."]
    (ROOT / "benchmarks" / "dino_seeds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [42, 0, 1, 2])
