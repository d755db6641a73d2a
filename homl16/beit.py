"""BEiT: masked image modelling with visual tokens (Bao et al., 2021), around the course's ViT.

A tokenizer turns each image into a grid of discrete ids, one per patch. The ViT sees the image with
~40% of its patch embeddings replaced by a learned mask token, and a linear head predicts, at every
masked position, the id the tokenizer gave that patch: BERT's masked language modelling, with
visual tokens as the words. Predicting ids rather than pixels spends no capacity on pixel detail.
BEiT's tokenizer is DALL·E's discrete VAE; the course's is its VQ-VAE (``homl16.vqvae``), whose
4x4 downsampling gives one token per 4x4 patch.

Masks are drawn blockwise, as in the paper: rectangles of at least ``min_block`` patches, with
random aspect ratios, until the wanted number of patches is masked. Shapes: B = batch,
G = grid side, N = G * G patches, D = encoder width, V = vocabulary (codebook) size.
"""

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_ids, check_images, check_positive, check_rank
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train


def block_mask(grid_size, num_masked, rng, min_block=4, min_aspect=0.3):
    """One BEiT blockwise mask: (G, G) bool, True = masked, with ``num_masked`` True entries (fewer
    only when no rectangle fits in 10 tries).

    Each round draws a rectangle of area in [min_block, still to mask] and aspect ratio in
    [min_aspect, 1 / min_aspect] (log-uniform) at a random place, and masks its unmasked patches if
    they are no more than still needed. ``rng`` is a ``random.Random``. BEiT's own setting is 75 of
    14x14 patches and min_block=16; a 7x7 grid scales it down to blocks of 4 or more.
    """
    check_positive("grid_size", grid_size, integer=True)
    if not 0 < num_masked < grid_size * grid_size:
        raise ValueError(f"num_masked must be in (0, {grid_size * grid_size}), got {num_masked}")
    mask = np.zeros((grid_size, grid_size), dtype=bool)  # NumPy: small slices cost ~1 us, not ~10
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    count = 0
    while count < num_masked:
        left_to_mask = num_masked - count
        for _ in range(10):
            area = rng.uniform(min(min_block, left_to_mask), left_to_mask)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < h < grid_size and 0 < w < grid_size:
                top, left = rng.randint(0, grid_size - h), rng.randint(0, grid_size - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= left_to_mask:
                    mask[top:top + h, left:left + w] = True
                    count += new
                    break
        else:
            break
    return torch.from_numpy(mask)


def block_masks(batch_size, grid_size, num_masked, rng, min_block=4):
    """``block_mask`` for each of ``batch_size`` images, flattened row-major: (B, N) bool."""
    check_positive("batch_size", batch_size, integer=True)
    return torch.stack([block_mask(grid_size, num_masked, rng, min_block).flatten()
                        for _ in range(batch_size)])


def visual_tokens(tokenizer, X):
    """The tokenizer's ids (B, N) of images X (B, 1 or 3, S, S) in [0, 1], row-major like the ViT's
    patches. Grey images are repeated to RGB for the VQ-VAE."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    if X.shape[1] == 1:
        X = X.repeat(1, 3, 1, 1)
    return tokenizer.encode(X).flatten(1)


class BEiT(nn.Module):
    """A course ``ViT`` (``num_classes=0``) with a learned mask token and a linear head to V token ids.

    ``encode(X, mask)``: X (B, C, S, S), mask (B, N) bool -> tokens (B, 1 + N, D), where the masked
    patches' embeddings were replaced by the mask token before the position embeddings were added.
    ``forward(X, mask)`` -> logits (B, N, V) at every position (the loss reads the masked ones).
    """

    def __init__(self, vit, vocab_size):
        super().__init__()
        if vit.num_classes:
            raise ValueError("BEiT needs a ViT without a head (num_classes=0)")
        check_positive("vocab_size", vocab_size, integer=True)
        self.encoder, self.vocab_size = vit, vocab_size
        self.num_patches = vit.pos_embed.shape[1] - 1
        self.mask_token = nn.Parameter(torch.randn(1, 1, vit.embed_dim) * 0.02)
        self.head = nn.Linear(vit.embed_dim, vocab_size)

    def check_mask(self, X, mask):
        check_rank("mask", mask, 2, "(batch, patches)")
        if mask.dtype != torch.bool or mask.shape != (len(X), self.num_patches):
            raise ValueError(f"mask must be a bool tensor ({len(X)}, {self.num_patches}), "
                             f"got {mask.dtype} {tuple(mask.shape)}")

    def encode(self, X, mask):
        vit = self.encoder
        check_images("X", X, vit.in_channels, vit.img_size, vit.img_size)
        self.check_mask(X, mask)
        Z = torch.where(mask[..., None], self.mask_token, vit.patch_embed(X))  # (B, N, D)
        Z = torch.cat([vit.prefix_tokens(len(X)), Z], dim=1) + vit.pos_embed
        Z = vit.pre_norm(vit.dropout(Z))
        for block in vit.blocks:
            Z = block(Z)
        return vit.norm(Z)

    def forward(self, X, mask):
        return self.head(self.encode(X, mask)[:, 1:])


def masked_token_loss(logits, ids, mask):
    """Cross-entropy of logits (B, N, V) against token ids (B, N) at the masked positions (mask (B, N)
    bool, True = masked) only."""
    check_rank("logits", logits, 3, "(batch, patches, vocab)")
    check_ids("ids", ids, logits.shape[2])
    if ids.shape != logits.shape[:2] or mask.shape != ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, ids {tuple(ids.shape)} and mask "
                         f"{tuple(mask.shape)} do not match")
    if not mask.any():
        raise ValueError("no patch is masked: nothing to predict")
    return F.cross_entropy(logits[mask], ids[mask])


def num_masked(num_patches, mask_ratio):
    """Patches to mask per image: round(N * ratio), at least 1 and at most N - 1."""
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return min(max(1, round(num_patches * mask_ratio)), num_patches - 1)


def train_beit(beit, X, ids, epochs=8, batch_size=128, lr=1e-3, mask_ratio=0.4, device=None, seed=42,
               desc="BEiT"):
    """Pretrain ``beit`` on images X (M, C, S, S) to predict their token ids (M, N) under fresh
    blockwise masks (``mask_ratio`` of the patches), with ``homl16.train.train`` and AdamW one-cycle.
    Returns the history: per epoch "loss" and "accuracy" (share of masked tokens predicted), "seconds"."""
    check_images("X", X, beit.encoder.in_channels)
    check_ids("ids", ids, beit.vocab_size)
    if ids.shape != (len(X), beit.num_patches):
        raise ValueError(f"ids must be ({len(X)}, {beit.num_patches}), one id per patch, "
                         f"got {tuple(ids.shape)}")
    device = device or get_device()
    beit.to(device)
    grid, count, rng = int(round(beit.num_patches ** 0.5)), num_masked(beit.num_patches, mask_ratio), \
        random.Random(seed)
    optimizer, scheduler = adamw_one_cycle(beit, lr, len(X), batch_size, epochs)

    def batch_loss(batch):
        mask = block_masks(len(batch), grid, count, rng).to(device)
        logits, targets = beit(X[batch].to(device), mask), ids[batch].to(device)
        hits = (logits[mask].argmax(-1) == targets[mask]).float().mean()
        return {"loss": masked_token_loss(logits, targets, mask), "accuracy": hits}

    history = train(beit, batch_loss, len(X), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


@torch.no_grad()
def masked_token_accuracy(beit, X, ids, mask_ratio=0.4, seed=0, batch_size=500):
    """Share of masked patches of images X (M, C, S, S) whose token id (ids (M, N)) ``beit`` predicts,
    under blockwise masks drawn from ``seed``; also the share a constant guess of the most frequent
    masked id gets, the baseline to beat: (accuracy, majority_accuracy)."""
    beit.eval()
    device = next(beit.parameters()).device
    grid, count, rng = int(round(beit.num_patches ** 0.5)), num_masked(beit.num_patches, mask_ratio), \
        random.Random(seed)
    hits, targets = [], []
    for i in range(0, len(X), batch_size):
        X_batch, ids_batch = X[i:i + batch_size].to(device), ids[i:i + batch_size].to(device)
        mask = block_masks(len(X_batch), grid, count, rng).to(device)
        hits.append(beit(X_batch, mask)[mask].argmax(-1) == ids_batch[mask])
        targets.append(ids_batch[mask])
    targets = torch.cat(targets)
    return torch.cat(hits).float().mean().item(), (targets == targets.mode().values).float().mean().item()
