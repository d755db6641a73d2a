"""One small training loop for every notebook that trains by hand."""

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from homl16.checks import check_positive, check_tensor
from homl16.runtime import get_device


def accuracy(logits, targets):
    """Share of predictions equal to the target, with classes on dim 1 as in ``F.cross_entropy``:
    logits (B, C) and targets (B,), or per-pixel logits (B, C, H, W) and targets (B, H, W) -> float."""
    check_tensor("logits", logits)
    check_tensor("targets", targets)
    if logits.dim() < 2 or logits.shape[:1] + logits.shape[2:] != targets.shape:
        raise ValueError(f"logits (B, C[, H, W]) and targets (B[, H, W]) do not match: "
                         f"{tuple(logits.shape)} vs {tuple(targets.shape)}")
    return (logits.argmax(dim=1) == targets).float().mean().item()


def tensor_batches(X, y, batch_size, shuffle=False, generator=None):
    """Yield (X_batch, y_batch) slices of in-memory tensors; faster than a DataLoader for small data."""
    if len(X) != len(y):
        raise ValueError(f"X and y lengths differ: {len(X)} vs {len(y)}")
    if len(X) == 0:
        raise ValueError("cannot make batches from an empty dataset")
    check_positive("batch_size", batch_size, integer=True)
    order = torch.randperm(len(X), generator=generator) if shuffle else torch.arange(len(X))
    for start in range(0, len(X), batch_size):
        idx = order[start:start + batch_size]
        yield X[idx], y[idx]


@torch.no_grad()
def predict(model, X, batch_size=512, device=None):
    """Logits of ``model`` for every row of ``X``, computed in eval mode, returned on the CPU."""
    if len(X) == 0:
        raise ValueError("X is empty: nothing to predict")
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    model.eval()
    return torch.cat([model(X[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(X), batch_size)])


def evaluate(model, X, y, loss_fn=F.cross_entropy, batch_size=512, device=None):
    """{"loss": mean loss, "accuracy": share correct} of ``model`` on tensors X, y."""
    logits = predict(model, X, batch_size, device)
    return {"loss": loss_fn(logits, y).item(), "accuracy": accuracy(logits, y)}


def fit(model, train_data, epochs, optimizer, scheduler=None, loss_fn=F.cross_entropy,
        valid_data=None, batch_size=128, augment=None, device=None, seed=42, desc="training"):
    """Train ``model`` on in-memory tensors and return its history.

    train_data / valid_data: (X, y) tensor pairs. ``scheduler`` is stepped after every
    batch (e.g. OneCycleLR). ``augment(X_batch) -> X_batch`` runs on the device.
    Returns a dict of per-epoch lists: epoch, train_loss, train_accuracy, seconds, and
    valid_loss, valid_accuracy when ``valid_data`` is given.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not isinstance(train_data, (tuple, list)) or len(train_data) != 2:
        raise ValueError("train_data must be an (X, y) pair of tensors")
    if valid_data is not None and (not isinstance(valid_data, (tuple, list)) or len(valid_data) != 2):
        raise ValueError("valid_data must be an (X, y) pair of tensors or None")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a callable X_batch -> X_batch, got {type(augment).__name__}")
    device = device or get_device()
    model.to(device)
    X, y = train_data
    generator = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "train_loss": [], "train_accuracy": [], "seconds": []}
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        total_loss = total_correct = 0.0
        for X_batch, y_batch in tensor_batches(X, y, batch_size, shuffle=True, generator=generator):
            X_batch, y_batch = X_batch.to(device), y_batch.to(device)
            if augment is not None:
                X_batch = augment(X_batch)
            logits = model(X_batch)
            loss = loss_fn(logits, y_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * len(y_batch)
            total_correct += accuracy(logits, y_batch) * len(y_batch)
        history["epoch"].append(epoch)
        history["train_loss"].append(total_loss / len(y))
        history["train_accuracy"].append(total_correct / len(y))
        if valid_data is not None:
            for name, value in evaluate(model, *valid_data, loss_fn=loss_fn, device=device).items():
                history.setdefault(f"valid_{name}", []).append(value)
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix({k: f"{v[-1]:.3f}" for k, v in history.items() if k.endswith(("loss", "accuracy"))})
    return history


def adamw_one_cycle(groups, epochs, steps_per_epoch, weight_decay=0.05):
    """AdamW over parameter ``groups`` ([{"params": [...], "lr": peak lr}, ...]) with a one-cycle
    schedule (10% warm-up, then cosine decay) over ``epochs * steps_per_epoch`` steps."""
    check_positive("epochs", epochs, integer=True)
    check_positive("steps_per_epoch", steps_per_epoch, integer=True)
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                    total_steps=epochs * steps_per_epoch, pct_start=0.1)
    return optimizer, scheduler


def minimise(model, batch_loss, num_items, epochs, optimizer, scheduler, batch_size, seed=42,
             desc="training"):
    """Minimise ``batch_loss(indices) -> scalar loss`` over shuffled batches of ``num_items`` items
    for ``epochs`` epochs (``model`` in training mode), stepping ``scheduler`` after every batch.
    Returns a history of per-epoch lists: epoch, loss, seconds."""
    check_positive("epochs", epochs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    generator = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "loss": [], "seconds": []}
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        total = 0.0
        for batch in torch.randperm(num_items, generator=generator).split(batch_size):
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        history["epoch"].append(epoch)
        history["loss"].append(total / num_items)
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    return history
