"""Input checks that turn shape mistakes into clear ``ValueError``s."""

import torch


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_rank(name, x, rank, layout):
    """Raise unless ``x`` is a non-empty tensor with ``rank`` dimensions laid out as ``layout``."""
    check_tensor(name, x)
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")


def check_images(name, x, channels, height=None, width=None):
    """Raise unless ``x`` is an image batch (B, channels, height, width)."""
    check_rank(name, x, 4, "(batch, channels, height, width)")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if height is not None and tuple(x.shape[2:]) != (height, width):
        raise ValueError(f"{name} must be {height}x{width} images, got {x.shape[2]}x{x.shape[3]}")


def check_grid_tokens(name, x, grid_size):
    """Raise unless ``x`` is (batch, H * W tokens, dim) for ``grid_size`` = (H, W)."""
    check_rank(name, x, 3, "(batch, tokens, embed_dim)")
    height, width = grid_size
    if x.shape[1] != height * width:
        raise ValueError(f"{name} has {x.shape[1]} tokens but grid_size {tuple(grid_size)} "
                         f"holds {height * width}")


def check_divisible(name, size, divisor, divisor_name):
    if size % divisor != 0:
        raise ValueError(f"{name}={size} must be divisible by {divisor_name}={divisor}")


def check_paired_shapes(pairs, model_name):
    """Raise unless each (course tensor, transformers tensor) pair has one shape (before copying weights)."""
    for ours, theirs in pairs:
        if ours.shape != theirs.shape:
            raise ValueError(f"sizes differ: {tuple(ours.shape)} in the course's {model_name} "
                             f"vs {tuple(theirs.shape)} in transformers'")
