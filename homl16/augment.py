"""Batch augmentations on tensors (no torchvision needed)."""

import torch
import torch.nn.functional as F

from homl16.checks import check_rank


def random_shift(X, max_shift=2, generator=None):
    """Shift each image by its own random whole-pixel offset in [-max_shift, max_shift].

    X: (B, C, H, W) -> (B, C, H, W); pixels shifted in from outside are zero.
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    B, _, H, W = X.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator).to(X.device)
    padded = F.pad(X, [max_shift] * 4)
    rows = torch.arange(H, device=X.device) + max_shift - shifts[:, 0, None]  # (B, H)
    cols = torch.arange(W, device=X.device) + max_shift - shifts[:, 1, None]  # (B, W)
    batch = torch.arange(B, device=X.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
