"""Batch augmentations on tensors (no torchvision needed)."""

import math

import torch
import torch.nn.functional as F

from homl16.checks import check_images, check_interval, check_positive, check_probability, check_rank


def random_shift(X, max_shift=2, generator=None):
    """Shift each image by its own random whole-pixel offset in [-max_shift, max_shift].

    X: (B, C, H, W) -> (B, C, H, W); pixels shifted in from outside are zero.
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
    B, _, H, W = X.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (B, 2), generator=generator).to(X.device)
    padded = F.pad(X, [max_shift] * 4)
    rows = torch.arange(H, device=X.device) + max_shift - shifts[:, 0, None]  # (B, H)
    cols = torch.arange(W, device=X.device) + max_shift - shifts[:, 1, None]  # (B, W)
    batch = torch.arange(B, device=X.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def uniform(low, high, size, generator=None, device="cpu"):
    """``size`` random floats drawn uniformly from [low, high), on ``device``."""
    return (low + (high - low) * torch.rand(size, generator=generator)).to(device)


def chance(p, size, generator=None, device="cpu"):
    """A (size,) boolean tensor, each entry True with probability ``p``."""
    check_probability("p", p)
    return (torch.rand(size, generator=generator) < p).to(device)


def random_resized_crop(X, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None):
    """Crop a random region of each image and resize it (bilinear) to size x size.

    The region covers a share of the image area drawn from ``scale`` and has an aspect ratio
    drawn (log-uniformly) from ``ratio``, as in torchvision's RandomResizedCrop.
    X: (B, C, H, W) -> (B, C, size, size).
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    check_positive("size", size, integer=True)
    check_interval("scale", scale, high=1)
    check_interval("ratio", ratio)
    B = X.shape[0]
    area = uniform(*scale, B, generator)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]), B, generator)
    # width and height as shares of the image side, clipped so the region stays inside the image
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    center_x = width / 2 + (1 - width) * torch.rand(B, generator=generator)
    center_y = height / 2 + (1 - height) * torch.rand(B, generator=generator)
    theta = torch.zeros(B, 2, 3)  # maps output coordinates in [-1, 1] to input coordinates
    theta[:, 0, 0], theta[:, 0, 2] = width, 2 * center_x - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * center_y - 1
    grid = F.affine_grid(theta.to(X.device, X.dtype), [B, X.shape[1], size, size], align_corners=False)
    return F.grid_sample(X, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_horizontal_flip(X, p=0.5, generator=None):
    """Mirror each image left-right with probability ``p``. X: (B, C, H, W) -> (B, C, H, W)."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    flip = chance(p, X.shape[0], generator, X.device)[:, None, None, None]
    return torch.where(flip, X.flip(-1), X)


def grayscale(X):
    """Luma (ITU-R 601) of RGB images: (B, 3, H, W) -> (B, 1, H, W); grey images pass through."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    if X.shape[1] not in (1, 3):
        raise ValueError(f"X must have 1 or 3 channels, got {X.shape[1]} (shape {tuple(X.shape)})")
    if X.shape[1] == 1:
        return X
    weights = torch.tensor([0.299, 0.587, 0.114], device=X.device, dtype=X.dtype)
    return (X * weights[:, None, None]).sum(1, keepdim=True)


def random_grayscale(X, p=0.2, generator=None):
    """Turn each image grey (kept with C channels) with probability ``p``. X in [0, 1]: (B, C, H, W)."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    grey = chance(p, X.shape[0], generator, X.device)[:, None, None, None]
    return torch.where(grey, grayscale(X).expand_as(X), X)


def color_jitter(X, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8, generator=None):
    """Randomly change brightness, contrast, saturation and hue of each image, with probability ``p``.

    Factors are drawn per image from [1 - s, 1 + s] (hue: a rotation of up to ``hue`` turns of the
    colour wheel, done in the YIQ colour space). X in [0, 1]: (B, C, H, W) -> same; C = 1 images
    only get brightness and contrast.
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    for name, strength in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0 <= strength <= 1:
            raise ValueError(f"{name} must be in [0, 1] (factors drawn from [1 - s, 1 + s]), got {strength}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5] turns of the colour wheel, got {hue}")
    B, device = X.shape[0], X.device

    def factor(strength):
        return uniform(1 - strength, 1 + strength, B, generator, device)[:, None, None, None]

    out = X * factor(brightness)
    mean_grey = grayscale(out).mean((1, 2, 3), keepdim=True)
    out = (out - mean_grey) * factor(contrast) + mean_grey
    if X.shape[1] == 3:
        grey = grayscale(out)
        out = (out - grey) * factor(saturation) + grey
        out = rotate_hue(out, uniform(-hue, hue, B, generator, device) * 2 * math.pi)
    jitter = chance(p, B, generator, device)[:, None, None, None]
    return torch.where(jitter, out.clamp(0, 1), X)


RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(X, angles):
    """Rotate the hue of RGB images (B, 3, H, W) by ``angles`` (B,) radians, in the YIQ colour space."""
    check_images("X", X, 3)
    check_rank("angles", angles, 1, "(batch,)")
    if len(angles) != len(X):
        raise ValueError(f"got {len(angles)} angles for a batch of {len(X)} images")
    to_yiq = RGB_TO_YIQ.to(X.device, X.dtype)
    cos, sin = angles.cos(), angles.sin()
    rotation = torch.zeros(len(angles), 3, 3, device=X.device, dtype=X.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    transform = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3), in RGB
    return torch.einsum("bij,bjhw->bihw", transform, X)


def gaussian_blur(X, sigma=(0.1, 2.0), p=0.5, generator=None):
    """Blur each image with probability ``p``, with a Gaussian whose sigma (pixels) is drawn from ``sigma``.

    X: (B, C, H, W) -> (B, C, H, W); borders are reflected.
    """
    check_rank("X", X, 4, "(batch, channels, height, width)")
    check_interval("sigma", sigma)
    B, C, H, W = X.shape
    sigmas = uniform(*sigma, B, generator, X.device)
    radius = min(math.ceil(2 * sigma[1]), (min(H, W) - 1) // 2)
    offsets = torch.arange(-radius, radius + 1, device=X.device, dtype=X.dtype)
    kernels = torch.exp(-offsets**2 / (2 * sigmas[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B * C, 2r + 1)
    out = F.pad(X.reshape(1, B * C, H, W), [radius] * 4, mode="reflect")
    out = F.conv2d(out, kernels[:, None, None, :], groups=B * C)  # along rows, then columns
    out = F.conv2d(out, kernels[:, None, :, None], groups=B * C).reshape(B, C, H, W)
    blur = chance(p, B, generator, X.device)[:, None, None, None]
    return torch.where(blur, out, X)


def random_solarize(X, p=0.2, threshold=0.5, generator=None):
    """Invert the pixels above ``threshold`` of each image with probability ``p``. X in [0, 1]."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    solarize = chance(p, X.shape[0], generator, X.device)[:, None, None, None]
    return torch.where(solarize & (X >= threshold), 1 - X, X)
