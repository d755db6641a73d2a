"""One small training loop for every notebook that trains by hand."""

import time

import torch
import torch.nn.functional as F

from homl16.checks import check_positive, check_tensor
from homl16.progress import progress_bar
from homl16.runtime import get_device, seed_offset


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


def steps_per_epoch(num_items, batch_size, drop_last=False):
    """Number of batches of ``batch_size`` in an epoch over ``num_items`` items."""
    check_positive("num_items", num_items, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    return num_items // batch_size if drop_last else -(-num_items // batch_size)


def index_batches(num_items, batch_size, generator, drop_last=False):
    """Endless shuffled batches of indices (LongTensor (B,)), epoch after epoch."""
    while True:
        for batch in torch.randperm(num_items, generator=generator).split(batch_size):
            if drop_last and len(batch) < batch_size:
                break
            yield batch


def _as_losses(output):
    """A batch loss as a dict of named scalar tensors, with "loss" the one to minimise."""
    if isinstance(output, torch.Tensor):
        return {"loss": output}
    if isinstance(output, dict) and "loss" in output:
        return output
    raise TypeError("batch_loss must return a scalar tensor or a dict of tensors with a 'loss' entry, "
                    f"got {type(output).__name__}")


def train(model, batch_loss, num_items, optimizer, epochs=None, steps=None, batch_size=64,
          scheduler=None, clip_grad=None, after_step=None, evaluate=None, drop_last=False, seed=42,
          desc="training"):
    """The course's one training loop: minimise ``batch_loss`` over shuffled batches of item indices.

    ``batch_loss(indices)`` gets a LongTensor (B,) of item indices in [0, num_items) and returns a
    scalar loss, or a dict of named scalars whose "loss" entry is minimised (the others are logged).
    Train for ``epochs`` passes over the items or for ``steps`` batches (give exactly one). After
    every optimiser step: the gradient norm is clipped to ``clip_grad`` (if set) before the step,
    ``scheduler.step()`` runs, then ``after_step(step)`` (e.g. an EMA teacher update or a clamp).
    ``evaluate()`` -> dict of numbers runs after every epoch (or once at the end with ``steps``),
    with ``model`` in eval mode. Batches are drawn from ``seed`` (plus ``runtime.seed_offset()``).

    Returns a history dict: per epoch (``epochs``) the mean of every logged loss, each ``evaluate``
    entry, "epoch" and "seconds"; and per step "step_<name>" for every logged loss.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs and steps")
    check_positive("epochs" if steps is None else "steps", epochs if steps is None else steps, integer=True)
    check_positive("num_items", num_items, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    if drop_last and batch_size > num_items:
        raise ValueError(f"batch_size={batch_size} exceeds num_items={num_items} with drop_last=True")
    per_epoch = steps_per_epoch(num_items, batch_size, drop_last)
    total_steps = steps or epochs * per_epoch
    generator = torch.Generator().manual_seed(seed + seed_offset())
    batches = index_batches(num_items, batch_size, generator, drop_last)
    history, sums, start = {}, {}, time.perf_counter()
    model.train()
    with progress_bar(total=total_steps, desc=desc, unit="step") as bar:
        for step in range(1, total_steps + 1):
            losses = _as_losses(batch_loss(next(batches)))
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step(step)
            for name, value in losses.items():
                value = value.detach().item() if isinstance(value, torch.Tensor) else float(value)
                history.setdefault(f"step_{name}", []).append(value)
                sums[name] = sums.get(name, 0.0) + value
            bar.update()
            bar.set_postfix(loss=f"{history['step_loss'][-1]:.3f}", refresh=False)
            if step % per_epoch == 0 or step == total_steps:
                if epochs is not None:
                    history.setdefault("epoch", []).append(step // per_epoch)
                    for name, total in sums.items():
                        history.setdefault(name, []).append(total / per_epoch)
                    sums = {}
                if evaluate is not None and (epochs is not None or step == total_steps):
                    model.eval()
                    with torch.no_grad():
                        for name, value in evaluate().items():
                            history.setdefault(name, []).append(value)
                    model.train()
                history.setdefault("seconds", []).append(time.perf_counter() - start)
    return history


def fit(model, train_data, epochs, optimizer, scheduler=None, loss_fn=F.cross_entropy,
        valid_data=None, batch_size=128, augment=None, device=None, seed=42, desc="training"):
    """Train a classifier on in-memory tensors with ``train`` and return its history.

    train_data / valid_data: (X (N, ...), y (N,)) tensor pairs. ``scheduler`` is stepped after every
    batch (e.g. OneCycleLR). ``augment(X_batch) -> X_batch`` runs on the device.
    Returns per-epoch lists: epoch, train_loss, train_accuracy, seconds, and valid_loss, valid_accuracy when
    ``valid_data`` is given.
    """
    for name, data in (("train_data", train_data), ("valid_data", valid_data)):
        if data is not None and (not isinstance(data, (tuple, list)) or len(data) != 2
                                 or len(data[0]) != len(data[1]) or len(data[0]) == 0):
            raise ValueError(f"{name} must be a non-empty (X, y) pair of tensors of one length")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a callable X_batch -> X_batch, got {type(augment).__name__}")
    device = device or get_device()
    model.to(device)
    X, y = train_data

    def batch_loss(idx):
        X_batch, y_batch = X[idx].to(device), y[idx].to(device)
        if augment is not None:
            X_batch = augment(X_batch)
        logits = model(X_batch)
        return {"loss": loss_fn(logits, y_batch), "accuracy": torch.tensor(accuracy(logits, y_batch))}

    def valid_scores():
        scores = evaluate(model, *valid_data, loss_fn=loss_fn, device=device)
        return {f"valid_{k}": v for k, v in scores.items()}

    history = train(model, batch_loss, len(X), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, evaluate=valid_scores if valid_data is not None else None,
                    seed=seed, desc=desc)
    renamed = {"loss": "train_loss", "accuracy": "train_accuracy"}
    return {renamed.get(k, k): v for k, v in history.items() if not k.startswith("step_")}


def adamw_one_cycle(params, lr, num_items, batch_size, epochs, weight_decay=0.05, drop_last=False):
    """AdamW with a one-cycle schedule (10% warm-up, then cosine decay) over a run of ``train``.

    ``params``: a module, parameters, or groups ([{"params": [...], "lr": peak lr}, ...]; a group
    without "lr" gets ``lr``). The schedule spans ``epochs`` epochs of ``num_items`` items in
    batches of ``batch_size``. Returns (optimizer, scheduler).
    """
    check_positive("lr", lr)
    check_positive("epochs", epochs, integer=True)
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    groups = list(params)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    groups = [{**g, "lr": g.get("lr", lr)} for g in groups]
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    total_steps = epochs * steps_per_epoch(num_items, batch_size, drop_last)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                    total_steps=total_steps, pct_start=0.1)
    return optimizer, scheduler


def minimise(model, batch_loss, num_items, epochs, optimizer, scheduler, batch_size, seed=42,
             desc="training"):
    """Transition alias of ``train`` (to be removed once every trainer calls ``train``)."""
    history = train(model, batch_loss, num_items, optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}
