"""DINO: self-distillation with no labels (Caron et al., 2021), small enough for a CPU.

A student network learns to predict, from any crop of an image, what a teacher network
outputs for a large ("global") crop of the same image. The teacher is not trained by
gradient descent: it is an exponential moving average (EMA) of the student. Two tricks keep
the outputs from collapsing to a constant: *centering* (subtract a running mean of the
teacher's outputs) and *sharpening* (a low teacher softmax temperature).

Shapes: B = batch, V = views (crops) of each image, K = output dimensions ("prototypes").
Everything runs in one process: there is no ``torch.distributed`` all-reduce of the centre.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from homl16 import augment
from homl16.checks import check_positive, check_probability, check_rank, check_tensor
from homl16.runtime import get_device
from homl16.train import train


class MultiCrop:
    """DINO's multi-crop augmentation: 2 global crops and ``num_local`` local crops of each image.

    Global crops cover ``global_scale`` of the image area and are resized to ``global_size``;
    local crops cover ``local_scale`` and are resized to the smaller ``local_size``. Every crop
    is flipped, colour-jittered and sometimes turned grey; the first global crop is always
    blurred, the second rarely but is sometimes solarised, local crops are blurred half the time.
    ``__call__(X)``: X in [0, 1], (B, C, H, W) -> list of 2 + num_local tensors, the 2 global
    ones (B, C, global_size, global_size) first, then (B, C, local_size, local_size).
    """

    def __init__(self, global_size, local_size, num_local=6, global_scale=(0.4, 1.0),
                 local_scale=(0.05, 0.4), blur_sigma=(0.1, 2.0)):
        if not 0 < local_size <= global_size:
            raise ValueError(f"need 0 < local_size <= global_size, got {local_size}, {global_size}")
        if num_local < 0:
            raise ValueError(f"num_local must be >= 0, got {num_local}")
        self.global_size, self.local_size, self.num_local = global_size, local_size, num_local
        self.global_scale, self.local_scale, self.blur_sigma = global_scale, local_scale, blur_sigma

    def crop(self, X, size, scale, blur, solarize, generator):
        X = augment.random_resized_crop(X, size, scale, generator=generator)
        X = augment.random_horizontal_flip(X, generator=generator)
        X = augment.color_jitter(X, generator=generator)
        X = augment.random_grayscale(X, p=0.2, generator=generator)
        X = augment.gaussian_blur(X, self.blur_sigma, p=blur, generator=generator)
        return augment.random_solarize(X, p=solarize, generator=generator)

    def __call__(self, X, generator=None):
        check_rank("X", X, 4, "(batch, channels, height, width)")
        global_crops = [self.crop(X, self.global_size, self.global_scale, blur, solarize, generator)
                        for blur, solarize in ((1.0, 0.0), (0.1, 0.2))]
        local_crops = [self.crop(X, self.local_size, self.local_scale, 0.5, 0.0, generator)
                       for _ in range(self.num_local)]
        return global_crops + local_crops


class DINOHead(nn.Module):
    """Projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear layer to K outputs.

    (..., in_dim) -> (..., out_dim). The last layer's weight rows are unit vectors (DINO's weight
    normalisation with its gain frozen at 1), so each output is a cosine similarity to a
    learned "prototype".
    """

    def __init__(self, in_dim, out_dim, hidden_dim=256, bottleneck_dim=64, num_layers=3, batch_norm=False):
        super().__init__()
        check_positive("num_layers", num_layers, integer=True)
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        layers = []
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if batch_norm else []), nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(dims[-1], bottleneck_dim))
        self.prototypes = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes.weight, dim=-1))


class DINONetwork(nn.Module):
    """A ViT backbone and a ``DINOHead`` applied to the class token of every crop.

    ``forward(crops)``: a list of V crop batches, each (B, C, h, w), sizes may differ (the ViT
    interpolates its position embeddings) -> (V, B, out_dim). Consecutive crops of the same size
    go through the backbone together, as in DINO's MultiCropWrapper.
    """

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops):
        if not crops:
            raise ValueError("crops must be a non-empty list of image batches")
        for i, crop in enumerate(crops):
            check_rank(f"crops[{i}]", crop, 4, "(batch, channels, height, width)")
            if len(crop) != len(crops[0]):
                raise ValueError(f"every crop needs the batch size of crops[0] ({len(crops[0])}), "
                                 f"crops[{i}] has {len(crop)}")
        outputs, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape == crops[start].shape:
                end += 1
            X = torch.cat(crops[start:end])  # ((end - start) * B, C, h, w)
            tokens = self.backbone.forward_features(X, interpolate_pos_encoding=True)
            outputs.append(self.head(tokens[:, 0]))
            start = end
        return torch.cat(outputs).view(len(crops), crops[0].shape[0], -1)


def dino_loss(student_out, teacher_out, center, student_temp=0.1, teacher_temp=0.04):
    """DINO's cross-entropy between teacher and student distributions, averaged over view pairs.

    student_out (Vs, B, K) for all crops; teacher_out (Vt, B, K) for the global crops, which are
    the first Vt student crops; center (K,). The teacher's distribution is centred and sharpened,
    P_t = softmax((t - center) / teacher_temp), the student's is P_s = softmax(s / student_temp),
    and the loss is the mean over pairs of different views (v != w) and images of
    -sum_k P_t[v, k] log P_s[w, k]. The teacher side gets no gradient. Returns a scalar.
    """
    check_rank("student_out", student_out, 3, "(views, batch, out_dim)")
    check_rank("teacher_out", teacher_out, 3, "(views, batch, out_dim)")
    if teacher_out.shape[1:] != student_out.shape[1:] or teacher_out.shape[0] > student_out.shape[0]:
        raise ValueError(f"teacher_out {tuple(teacher_out.shape)} must have at most as many views as "
                         f"student_out {tuple(student_out.shape)} and the same batch and out_dim")
    check_center(center, teacher_out)
    check_positive("student_temp", student_temp)
    check_positive("teacher_temp", teacher_temp)
    teacher_probs = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach()
    student_log_probs = F.log_softmax(student_out / student_temp, dim=-1)
    # cross_entropy[v, w]: teacher view v against student view w, averaged over the batch
    cross_entropy = -torch.einsum("vbk,wbk->vw", teacher_probs, student_log_probs) / student_out.shape[1]
    different_views = ~torch.eye(*cross_entropy.shape, dtype=torch.bool, device=cross_entropy.device)
    return cross_entropy[different_views].mean()


def check_center(center, teacher_out):
    """Raise unless center is (K,) for teacher_out (V, B, K)."""
    check_rank("teacher_out", teacher_out, 3, "(views, batch, out_dim)")
    check_tensor("center", center)
    if center.shape != teacher_out.shape[2:]:
        raise ValueError(f"center must have shape ({teacher_out.shape[2]},) (out_dim), "
                         f"got {tuple(center.shape)}")


@torch.no_grad()
def update_center(center, teacher_out, momentum=0.9):
    """EMA of the teacher's mean output: momentum * center + (1 - momentum) * mean over views and batch.

    center (K,), teacher_out (V, B, K) -> new center (K,). With momentum 1 the centre stays put.
    """
    check_center(center, teacher_out)
    check_probability("momentum", momentum)
    return momentum * center + (1 - momentum) * teacher_out.mean(dim=(0, 1))


class DINOLoss(nn.Module):
    """``dino_loss`` with its centre kept as a buffer; ``update_center(teacher_out)`` moves the centre
    (``update_center``) after a training step.

    ``centering=False`` keeps the centre at zero; sharpening comes from ``teacher_temp`` being lower
    than ``student_temp`` (set them equal to switch it off).
    """

    def __init__(self, out_dim, student_temp=0.1, teacher_temp=0.04, center_momentum=0.9, centering=True):
        super().__init__()
        check_positive("out_dim", out_dim, integer=True)
        check_positive("student_temp", student_temp)
        check_positive("teacher_temp", teacher_temp)
        check_probability("center_momentum", center_momentum)
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.center_momentum, self.centering = center_momentum, centering
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, student_out, teacher_out):
        return dino_loss(student_out, teacher_out, self.center, self.student_temp, self.teacher_temp)

    def update_center(self, teacher_out):
        """Move the centre towards the mean of teacher_out (V, B, K) (a no-op without centering)."""
        if self.centering:
            self.center = update_center(self.center, teacher_out, self.center_momentum)


def cosine_schedule(start, end, steps, warmup_steps=0, warmup_start=0.0):
    """Per-step values: linear warm-up from ``warmup_start`` to ``start``, then cosine from ``start``
    to ``end``. Returns a (steps,) tensor (DINO schedules its learning rate, weight decay and
    teacher momentum this way)."""
    if steps < 1 or not 0 <= warmup_steps < steps:
        raise ValueError(f"need steps >= 1 and 0 <= warmup_steps < steps, got {steps}, {warmup_steps}")
    warmup = torch.linspace(warmup_start, start, warmup_steps + 1)[:-1]
    progress = torch.arange(steps - warmup_steps) / max(steps - warmup_steps - 1, 1)
    cosine = end + (start - end) * (1 + torch.cos(math.pi * progress)) / 2
    return torch.cat([warmup, cosine])


def make_teacher(student):
    """A copy of ``student`` that gradient descent never updates (only ``ema_update`` does)."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher, student, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    check_probability("momentum", momentum)
    if [p.shape for p in teacher.parameters()] != [p.shape for p in student.parameters()]:
        raise ValueError("teacher and student must have the same parameters (make the teacher with "
                         "make_teacher(student))")
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def entropy(probs):
    """Shannon entropy (nats) of distributions along the last dimension: (..., K) -> (...)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def collapse_diagnostics(teacher_out, center, teacher_temp):
    """How close the teacher is to either collapse, from teacher_out (V, B, K) and center (K,).

    teacher_entropy: mean entropy of each image's teacher distribution (-> 0 when one prototype
    dominates, -> log K for uniform collapse); batch_entropy: entropy of the batch's mean
    distribution (-> 0 when every image picks the same prototype); center_spread: standard
    deviation of the centre's entries (grows when one dimension dominates).
    """
    probs = F.softmax((teacher_out - center) / teacher_temp, dim=-1)
    return {"teacher_entropy": entropy(probs).mean().item(),
            "batch_entropy": entropy(probs.mean(dim=(0, 1))).item(),
            "center_spread": center.std().item()}


def train_dino(student, X, multi_crop, epochs, loss_fn, lr=1e-3, weight_decay=(0.04, 0.2),
               momentum=(0.99, 1.0), batch_size=64, warmup_epochs=1, freeze_prototypes_epochs=1,
               clip_grad=3.0, device=None, seed=42, desc="DINO"):
    """Train ``student`` (a ``DINONetwork``) with DINO on unlabelled images X (N, C, H, W) in [0, 1].

    ``multi_crop(X_batch)`` makes the crops; the teacher sees the 2 global ones, the student all
    of them. AdamW with DINO's schedules: the learning rate ``lr * batch_size / 256`` is warmed up
    linearly for ``warmup_epochs`` then decays (cosine) to 1% of it, weight decay follows a cosine
    from ``weight_decay[0]`` to ``weight_decay[1]``, the teacher momentum from ``momentum[0]`` to
    ``momentum[1]``; the head's prototypes stay frozen for ``freeze_prototypes_epochs``.
    ``loss_fn`` is a ``DINOLoss``. The loop is ``homl16.train.train``: after every step the teacher
    and the centre move (``after_step``). Returns (teacher, history): ``train``'s history (per-epoch
    means of loss, teacher_entropy, batch_entropy, center_spread, their per-step "step_*" lists,
    "seconds") plus the per-step schedules "step_lr" and "step_momentum".
    """
    check_positive("batch_size", batch_size, integer=True)
    if epochs < 1 or len(X) < batch_size:
        raise ValueError(f"need epochs >= 1 and at least batch_size={batch_size} images, "
                         f"got {epochs} and {len(X)}")
    device = device or get_device()
    student.to(device).train()
    loss_fn.to(device)
    teacher = make_teacher(student)
    crop_generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(X) // batch_size  # drop the last partial batch: every step sees full batches
    steps = epochs * steps_per_epoch
    lrs = cosine_schedule(lr * batch_size / 256, lr * batch_size / 256 / 100, steps,
                          warmup_steps=min(warmup_epochs * steps_per_epoch, steps - 1))
    weight_decays = cosine_schedule(*weight_decay, steps)
    momenta = cosine_schedule(*momentum, steps)
    decayed = [p for p in student.parameters() if p.ndim > 1]  # no weight decay on biases and norms
    others = [p for p in student.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decayed}, {"params": others, "weight_decay": 0.0}])
    last = {}  # the teacher's outputs of the current step, for the centre update

    def set_schedules(step):  # step: 0-based index of the step about to run
        for group in optimizer.param_groups:
            group["lr"] = lrs[step].item()
        optimizer.param_groups[0]["weight_decay"] = weight_decays[step].item()
        student.head.prototypes.requires_grad_(step >= freeze_prototypes_epochs * steps_per_epoch)

    def batch_loss(indices):
        crops = multi_crop(X[indices].to(device), generator=crop_generator)
        with torch.no_grad():
            last["teacher_out"] = teacher(crops[:2])
        diagnostics = collapse_diagnostics(last["teacher_out"], loss_fn.center, loss_fn.teacher_temp)
        return {"loss": loss_fn(student(crops), last["teacher_out"]), **diagnostics}

    def after_step(step):  # step: 1-based count of the steps taken
        ema_update(teacher, student, momenta[step - 1].item())
        loss_fn.update_center(last["teacher_out"])
        if step < steps:
            set_schedules(step)

    set_schedules(0)
    history = train(student, batch_loss, len(X), optimizer, epochs=epochs, batch_size=batch_size,
                    clip_grad=clip_grad or None, after_step=after_step, drop_last=True, seed=seed, desc=desc)
    history.update(step_lr=lrs.tolist(), step_momentum=momenta.tolist())
    return teacher.eval(), history


@torch.no_grad()
def class_token_features(vit, X, batch_size=500, device=None):
    """The class token's output (after the final norm) of ``vit`` for every image: (N, C, H, W) -> (N, D)."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    vit.eval().to(device)
    return torch.cat([vit.forward_features(X[i:i + batch_size].to(device))[:, 0].cpu()
                      for i in range(0, len(X), batch_size)])


def check_features(train_features, train_labels, test_features, test_labels):
    check_rank("train_features", train_features, 2, "(images, dims)")
    check_rank("test_features", test_features, 2, "(images, dims)")
    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("each features tensor needs one label per row")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features differ in size: {train_features.shape[1]} vs "
                         f"{test_features.shape[1]}")


def nearest_class_mean_accuracy(train_features, train_labels, test_features, test_labels):
    """Classify each test image as the class whose mean (L2-normalised) train representation is
    the most similar (cosine) to its own; return the accuracy. Features (N, D), labels (N,)."""
    check_features(train_features, train_labels, test_features, test_labels)
    train_features, test_features = F.normalize(train_features, dim=1), F.normalize(test_features, dim=1)
    classes = train_labels.unique()
    means = torch.stack([train_features[train_labels == c].mean(0) for c in classes])  # (classes, D)
    predictions = classes[(test_features @ F.normalize(means, dim=1).T).argmax(1)]
    return (predictions == test_labels).float().mean().item()


def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, temperature=0.07):
    """DINO's weighted k-NN classifier: the k most similar (cosine) train images vote for their
    label with weight exp(similarity / temperature); return the test accuracy."""
    check_features(train_features, train_labels, test_features, test_labels)
    check_positive("k", k, integer=True)
    check_positive("temperature", temperature)
    similarity = F.normalize(test_features, dim=1) @ F.normalize(train_features, dim=1).T  # (test, train)
    top_similarity, top_index = similarity.topk(min(k, len(train_features)), dim=1)
    votes = torch.zeros(len(test_features), int(train_labels.max()) + 1)
    votes.scatter_add_(1, train_labels[top_index], (top_similarity / temperature).exp())
    return (votes.argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def attention_maps(vit, X, device=None):
    """Every layer's attention of ``vit`` on images X: (B, C, H, W) -> (B, layers, heads, 1 + N, 1 + N).

    Each row (a query token) sums to one over the keys; token 0 is the class token.
    """
    device = device or get_device()
    vit.eval().to(device)
    _, maps = vit.forward_features(X.to(device), return_attention=True)
    return torch.stack(maps, dim=1).cpu()


def class_token_attention(maps, direction="cls_to_patch"):
    """Class-token attention over the patch grid: maps (..., 1 + N, 1 + N) -> (..., side, side).

    "cls_to_patch": how much the class token (as the query) attends to each patch (the official
    DINO code). "patch_to_cls": how much each patch (as a query) attends to the class token (the
    book's notebook). Either way the result is rescaled to sum to one over the patches, so the two
    can be compared as distributions (for "cls_to_patch" this only drops the class token's
    attention to itself).
    """
    check_tensor("maps", maps)
    if maps.dim() < 2 or maps.shape[-1] != maps.shape[-2] or maps.shape[-1] < 2:
        raise ValueError(f"maps must be (..., 1 + N, 1 + N) attention maps, got {tuple(maps.shape)}")
    if direction == "cls_to_patch":
        attention = maps[..., 0, 1:]
    elif direction == "patch_to_cls":
        attention = maps[..., 1:, 0]
    else:
        raise ValueError(f"direction must be 'cls_to_patch' or 'patch_to_cls', got {direction!r}")
    attention = attention / attention.sum(-1, keepdim=True)
    side = math.isqrt(attention.shape[-1])
    if side * side != attention.shape[-1]:
        raise ValueError(f"{attention.shape[-1]} patches do not form a square grid")
    return attention.unflatten(-1, (side, side))


def attention_on_object(attention, masks):
    """Share of attention that falls on object pixels, and the share of the image they cover.

    attention (B, ..., h, w): a distribution over patches (e.g. ``class_token_attention``), spread
    evenly over each patch's pixels; masks (B, H, W), True (or > 0) on objects, H and W multiples
    of h and w. Returns (mass, area): mass (B, ...) and area (B, 1, ...) shares in [0, 1]. A ratio
    mass / area above 1 means the attention concentrates on the objects.
    """
    check_tensor("attention", attention)
    check_tensor("masks", masks)
    if attention.dim() < 3:
        raise ValueError(f"attention must be (batch, ..., h, w), got {tuple(attention.shape)}")
    h, w = attention.shape[-2:]
    if masks.dim() != 3 or len(masks) != len(attention) or masks.shape[1] % h or masks.shape[2] % w:
        raise ValueError(f"masks must be (B, H, W) with H, W multiples of the attention grid {h}x{w} "
                         f"and B={len(attention)}, got {tuple(masks.shape)}")
    # the share of each patch covered by objects: (B, h, w)
    covered = (masks > 0).float().unflatten(1, (h, -1)).unflatten(3, (w, -1)).mean((2, 4))
    covered = covered.view(len(masks), *[1] * (attention.dim() - 3), h, w)
    return (attention * covered).sum((-2, -1)), covered.mean((-2, -1))
