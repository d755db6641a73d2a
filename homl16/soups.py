"""Model soups (Wortsman et al., 2022): average the weights of models fine-tuned from one start.

Fine-tuned copies of one pretrained network tend to land in one basin of the loss, so their weight
average is itself a good model: one network, so no extra inference cost, unlike the ensemble of
the same models (which averages their predictions and runs every one of them).
"""

import copy

import torch
from torch import nn

from homl16.checks import check_positive
from homl16.runtime import set_seed
from homl16.train import accuracy, adamw_one_cycle, fit, predict


def with_head(encoder, num_classes):
    """A copy of a course ``ViT`` (e.g. a ``num_classes=0`` encoder) with a new, zero-initialised linear
    head of ``num_classes`` outputs: the one starting point every ingredient is fine-tuned from.

    A zero head is the same for every copy (a random one would differ between seeds, and the
    heads' average would be meaningless); its gradient is not zero, so it learns from the first step.
    """
    check_positive("num_classes", num_classes, integer=True)
    model = copy.deepcopy(encoder)
    model.num_classes = num_classes
    model.head = nn.Linear(model.embed_dim, num_classes)
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def fine_tune(start, train_data, lr, epochs, seed=0, augment=None, batch_size=64, weight_decay=0.05,
              device=None):
    """A copy of ``start`` fine-tuned on ``train_data`` = (X (N, ...), y (N,)) with ``fit`` (AdamW,
    one-cycle schedule peaking at ``lr``), batches and augmentation drawn from ``seed``. ``start`` is
    left unchanged. Returns (model, history)."""
    model = copy.deepcopy(start)
    set_seed(seed)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(train_data[0]), batch_size, epochs,
                                           weight_decay=weight_decay)
    history = fit(model, train_data, epochs, optimizer, scheduler, batch_size=batch_size, augment=augment,
                  device=device, seed=seed, desc=f"fine-tuning (lr {lr:g}, seed {seed})")
    return model.eval(), history


def uniform_soup(state_dicts):
    """The average of ``state_dicts`` (models of one architecture): a state dict.

    Floating-point tensors are averaged; other buffers (integer counters and the like) are taken
    from the first. Raises ValueError if the keys or the shapes differ.
    """
    state_dicts = list(state_dicts)
    if not state_dicts:
        raise ValueError("a soup needs at least one state dict")
    first = state_dicts[0]
    for i, other in enumerate(state_dicts[1:], 1):
        if other.keys() != first.keys():
            raise ValueError(f"state dict {i} has other keys than the first: "
                             f"{sorted(set(other) ^ set(first))[:5]}")
        for key, tensor in first.items():
            if other[key].shape != tensor.shape:
                raise ValueError(f"{key!r} has shape {tuple(other[key].shape)} in state dict {i}, "
                                 f"{tuple(tensor.shape)} in the first")
    return {key: torch.stack([sd[key].float() for sd in state_dicts]).mean(0).to(tensor.dtype)
            if tensor.is_floating_point() else tensor.clone()
            for key, tensor in first.items()}


def soup_of(models):
    """One model whose weights are the uniform soup of ``models`` (a copy of the first, reloaded)."""
    models = list(models)
    if not models:
        raise ValueError("a soup needs at least one model")
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(uniform_soup(m.state_dict() for m in models))  # not a conversion: same network
    return soup.eval()


def greedy_soup(models, X_val, y_val, device=None):
    """Wortsman et al.'s greedy soup: take the ingredients from the best to the worst on the held-out
    (X_val, y_val), and keep each one whose addition does not lower the soup's validation accuracy.

    Returns (soup model, indices of the kept models in the order they were added, the soup's
    validation accuracy). The soup's validation accuracy is never below its best ingredient's.
    """
    models = list(models)
    if not models:
        raise ValueError("a soup needs at least one model")
    if len(X_val) != len(y_val) or len(X_val) == 0:
        raise ValueError(f"X_val and y_val must be non-empty and of one length, "
                         f"got {len(X_val)} and {len(y_val)}")

    def val_accuracy(model):
        return accuracy(predict(model, X_val, device=device), y_val)

    scores = [val_accuracy(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        score = val_accuracy(soup_of(models[j] for j in [*kept, i]))
        if score >= best:
            kept, best = [*kept, i], score
    return soup_of(models[j] for j in kept), kept, best


@torch.no_grad()
def ensemble_probabilities(models, X, device=None):
    """The ensemble's prediction: the mean of the models' softmax outputs, (N, num_classes)."""
    models = list(models)
    if not models:
        raise ValueError("an ensemble needs at least one model")
    return torch.stack([predict(m, X, device=device).softmax(-1) for m in models]).mean(0)
