"""I-JEPA: a joint-embedding predictive architecture for images (Assran et al., 2023), CPU-sized.

A context encoder sees one large block of an image's patches; a narrow predictor, told where
some other (target) blocks lie, predicts what a target encoder outputs there. The target encoder
sees the whole image and is an exponential moving average (EMA) of the context encoder, as DINO's
teacher is. The loss compares embeddings, never pixels.

The encoders are the course's ``ViT``. I-JEPA's ViT has no class token; the course's keeps its
class token as one extra token the patches attend to, and the loss ignores its output, so the
encoder computes exactly ``ViT.forward_features`` when it sees every patch (and the probe, which
runs ``forward_features``, sees the encoder as it was trained).

Shapes: B = images, N = patches (grid x grid), D = encoder width, M = target blocks per image,
T = patches per target block, C = context patches, P = predictor width.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_interval, check_positive, check_rank
from homl16.dino import cosine_schedule, ema_update, make_teacher
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.transformer import EncoderBlock


def block_size(grid_size, scale, aspect_ratio, generator):
    """A random block's (height, width) in patches: its area a share ``scale`` (low, high) of the
    grid, its height / width in ``aspect_ratio`` (low, high), clipped to the grid."""
    low, high = scale
    area = grid_size ** 2 * (low + (high - low) * torch.rand(1, generator=generator).item())
    log_low, log_high = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    aspect = math.exp(log_low + (log_high - log_low) * torch.rand(1, generator=generator).item())
    height = min(max(round(math.sqrt(area * aspect)), 1), grid_size)
    width = min(max(round(math.sqrt(area / aspect)), 1), grid_size)
    return height, width


def block_masks(shape, grid_size, height, width, generator):
    """Boolean masks (*shape, grid_size, grid_size), each True on one height x width block placed at
    random (independently for every mask)."""
    rows = torch.arange(grid_size)
    top = torch.randint(grid_size - height + 1, (*shape, 1), generator=generator)
    left = torch.randint(grid_size - width + 1, (*shape, 1), generator=generator)
    in_rows = (rows >= top) & (rows < top + height)  # (*shape, grid_size)
    in_cols = (rows >= left) & (rows < left + width)
    return in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)


def multiblock_masks(batch_size, grid_size, num_targets=4, target_scale=(0.15, 0.2),
                     target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0), min_context=4,
                     generator=None):
    """I-JEPA's multi-block masking: patch indices (row-major on the grid) of the context and targets.

    As in the paper's collator, the target block size and the context block size are drawn once per
    batch and the places once per image; every image gets ``num_targets`` target blocks and one
    context block with the target patches removed (redrawn while fewer than ``min_context`` patches
    remain). Images keep different numbers of context patches, so all are trimmed to the batch's
    smallest count (the first ones in row-major order) and the indices stack.
    Returns (context (B, C), targets (B, M, T)), long tensors.
    """
    for name, value in (("batch_size", batch_size), ("grid_size", grid_size),
                        ("num_targets", num_targets), ("min_context", min_context)):
        check_positive(name, value, integer=True)
    check_interval("target_scale", target_scale, high=1)
    check_interval("context_scale", context_scale, high=1)
    check_interval("target_aspect", target_aspect)
    target_size = block_size(grid_size, target_scale, target_aspect, generator)
    context_size = block_size(grid_size, context_scale, (1.0, 1.0), generator)
    blocks = torch.zeros(batch_size, num_targets, grid_size, grid_size, dtype=torch.bool)
    context = torch.zeros(batch_size, grid_size, grid_size, dtype=torch.bool)
    redraw = torch.ones(batch_size, dtype=torch.bool)
    for _ in range(100):
        count = int(redraw.sum())
        blocks[redraw] = block_masks((count, num_targets), grid_size, *target_size, generator)
        context[redraw] = (block_masks((count,), grid_size, *context_size, generator)
                           & ~blocks[redraw].any(1))
        redraw = context.flatten(1).sum(1) < min_context
        if not redraw.any():
            break
    else:
        raise ValueError(f"no context of {min_context} patches is left beside {num_targets} target "
                         f"blocks of {target_size} on a {grid_size}x{grid_size} grid")
    keep = int(context.flatten(1).sum(1).min())
    context = torch.argsort((~context).flatten(1).byte(), dim=1, stable=True)[:, :keep]  # kept first
    targets = blocks.flatten(2).nonzero()[:, 2].reshape(batch_size, num_targets, -1)
    return context, targets


def encode(vit, X, keep=None):
    """A course ``ViT`` run on some of each image's patches (and its class token): (B, C, H, W) and
    ``keep`` (B, K) patch indices -> the final patch tokens (B, K, D), in ``keep``'s order.

    ``keep=None`` runs every patch and equals ``vit.forward_features(X)[:, 1:]``.
    """
    if keep is None:
        return vit.forward_features(X)[:, 1:]
    return vit.forward_visible(X, keep)[:, 1:]


def gather_tokens(tokens, indices):
    """tokens (B, N, D) at ``indices`` (B, K) -> (B, K, D)."""
    return tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class Predictor(nn.Module):
    """I-JEPA's narrow predictor: context tokens plus one mask token per target patch -> predicted
    target embeddings.

    forward(context_tokens (B, C, D), context (B, C), targets (B, M, T)) -> (B, M, T, D). The tokens
    are projected to width P; the mask tokens are one learned vector plus the position embedding of
    the patch they stand for. Each target block gets its own pass over (context, its mask tokens),
    so blocks do not see one another.
    """

    def __init__(self, num_patches, embed_dim, width=32, depth=2, num_heads=4, ff_dim=64):
        super().__init__()
        self.embed = nn.Linear(embed_dim, width)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, width) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, ff_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, embed_dim)

    def forward(self, context_tokens, context, targets):
        check_rank("targets", targets, 3, "(batch, target blocks, patches per block)")
        B, M, T = targets.shape
        positions = self.pos_embed.expand(B, -1, -1)
        Z = self.embed(context_tokens) + gather_tokens(positions, context)  # (B, C, P)
        masks = self.mask_token + gather_tokens(positions, targets.flatten(1))  # (B, M * T, P)
        Z = torch.cat([Z.repeat_interleave(M, dim=0), masks.reshape(B * M, T, -1)], dim=1)
        for block in self.blocks:
            Z = block(Z)
        return self.head(self.norm(Z[:, -T:])).reshape(B, M, T, -1)


def target_embeddings(target_encoder, X):
    """The target encoder's patch tokens of the full images, layer-normed without learned scale
    (as the paper): (B, C, H, W) -> (B, N, D)."""
    with torch.no_grad():
        Z = encode(target_encoder, X)
    return F.layer_norm(Z, Z.shape[-1:])


def prediction_loss(predictions, target_tokens, targets):
    """Mean squared error between predictions (B, M, T, D) and ``target_tokens`` (B, N, D) at the
    target patches ``targets`` (B, M, T): every other position is left out."""
    B, M, T = targets.shape
    wanted = gather_tokens(target_tokens, targets.flatten(1)).reshape(B, M, T, -1)
    return F.mse_loss(predictions, wanted)


def embedding_spread(tokens):
    """How far the embeddings are from collapse: the per-dimension standard deviation across images
    of the mean-pooled tokens (B, N, D), averaged over dimensions (0 when every image gets the same
    embedding)."""
    return tokens.mean(1).std(0).mean().item()


class IJEPA(nn.Module):
    """The context encoder (a course ``ViT``), its EMA target encoder and the predictor.

    forward(X (B, C, H, W), context (B, C'), targets (B, M, T)) -> {"loss", "target_spread"}.
    ``ema=False`` (an ablation) makes the target encoder the context encoder itself, with the
    gradient stopped: no moving average.
    """

    def __init__(self, encoder, predictor, ema=True):
        super().__init__()
        self.encoder, self.predictor = encoder, predictor
        self.target_encoder = make_teacher(encoder) if ema else None

    def forward(self, X, context, targets):
        teacher = self.encoder if self.target_encoder is None else self.target_encoder
        target_tokens = target_embeddings(teacher, X)
        predictions = self.predictor(encode(self.encoder, X, context), context, targets)
        return {"loss": prediction_loss(predictions, target_tokens, targets),
                "target_spread": embedding_spread(target_tokens)}


def train_ijepa(model, X, epochs=8, batch_size=128, lr=1e-3, momentum=(0.996, 1.0), device=None,
                seed=42, desc="I-JEPA", **masking):
    """Train an ``IJEPA`` on unlabelled images X (N, C, H, W) with ``homl16.train.train``.

    AdamW with a one-cycle learning rate; after every step the target encoder moves towards the
    context encoder with a momentum rising from ``momentum[0]`` to ``momentum[1]`` (cosine). Masks
    come from ``multiblock_masks(**masking)``, drawn from ``seed``. Returns ``train``'s history
    (per-epoch and per-step "loss" and "target_spread").
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    check_positive("epochs", epochs, integer=True)
    device = device or get_device()
    model.to(device)
    grid_size = model.encoder.img_size // model.encoder.patch_size
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = adamw_one_cycle(trainable, lr, len(X), batch_size, epochs)
    steps = epochs * -(-len(X) // batch_size)
    momenta = cosine_schedule(*momentum, steps)
    generator = torch.Generator().manual_seed(seed)

    def batch_loss(indices):
        context, targets = multiblock_masks(len(indices), grid_size, generator=generator, **masking)
        return model(X[indices].to(device), context.to(device), targets.to(device))

    def after_step(step):  # step: 1-based count of the steps taken
        if model.target_encoder is not None:
            ema_update(model.target_encoder, model.encoder, momenta[step - 1].item())

    return train(model, batch_loss, len(X), optimizer, epochs=epochs, batch_size=batch_size,
                 scheduler=scheduler, after_step=after_step, seed=seed, desc=desc)
