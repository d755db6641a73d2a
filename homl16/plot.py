"""Plots every notebook uses: image grids, attention overlays, boxes, masks, learning curves."""

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from homl16.checks import check_positive, check_rank


def to_numpy_image(image):
    """PIL image, (C, H, W) / (H, W) tensor or (H, W[, C]) array -> (H, W[, C]) array for imshow."""
    if isinstance(image, Image.Image):
        return np.asarray(image)
    if isinstance(image, torch.Tensor):
        if image.dim() not in (2, 3):
            raise ValueError(f"image must be (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        image = image.detach().cpu().float()
        if image.dim() == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        low, high = image.min(), image.max()
        return (image - low) / (high - low) if high > low else image * 0
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D or 3-D, got shape {image.shape}")
    return image


def show_images(images, titles=None, ncols=8, size=1.4, cmap="gray"):
    """Show images in a grid with optional titles; returns the figure."""
    images = list(images)
    if not images:
        raise ValueError("show_images needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(images)} images but {len(titles)} titles")
    check_positive("ncols", ncols, integer=True)
    check_positive("size", size)
    ncols = min(ncols, len(images))
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(to_numpy_image(image), cmap=cmap)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def overlay_attention(image, attention, ax=None, alpha=0.6, cmap="jet", title=None):
    """Draw an attention map (h, w) upsampled over an image (any size)."""
    attention = torch.as_tensor(attention, dtype=torch.float32)
    check_rank("attention", attention, 2, "(height, width)")
    image = to_numpy_image(image)
    ax = ax or plt.gca()
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray")
    ax.imshow(attention.numpy(), cmap=cmap, alpha=alpha, extent=(0, width, height, 0),
              interpolation="bilinear")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def draw_boxes(image, boxes, labels=None, ax=None, color="lime"):
    """Draw (x0, y0, x1, y1) pixel boxes, with optional text labels, on an image."""
    boxes = np.asarray(boxes, dtype=float)
    if boxes.size % 4 or (boxes.ndim > 1 and boxes.shape[-1] != 4):
        raise ValueError(f"boxes must be (N, 4) corners (x0, y0, x1, y1), got shape {boxes.shape}")
    boxes = boxes.reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"got {len(boxes)} boxes but {len(labels)} labels")
    ax = ax or plt.gca()
    ax.imshow(to_numpy_image(image))
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                   fill=False, edgecolor=color, linewidth=1.5))
        if labels is not None:
            ax.text(x0, y0 - 1, str(labels[i]), color=color, fontsize=7, va="bottom")
    ax.axis("off")
    return ax


def show_mask(mask, ax=None, num_classes=None, title=None):
    """Show an integer class mask (H, W) with one colour per class (0 = background)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (height, width), got shape {mask.shape}")
    ax = ax or plt.gca()
    ax.imshow(mask, cmap="tab10", vmin=0, vmax=num_classes or 10, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    return ax


def plot_history(*histories, labels=None, metrics=("loss", "accuracy"), size=(8, 2.8)):
    """Learning curves (train and valid) of one or more ``homl16.train.fit`` histories."""
    if not histories:
        raise ValueError("plot_history needs at least one history")
    labels = labels or [""] * len(histories)
    if len(labels) != len(histories):
        raise ValueError(f"got {len(histories)} histories but {len(labels)} labels")
    if not metrics:
        raise ValueError("metrics is empty")
    for history in histories:
        if not isinstance(history, dict) or "epoch" not in history:
            raise ValueError("each history must be a dict with an 'epoch' list (as homl16.train.fit returns)")
    fig, axes = plt.subplots(1, len(metrics), figsize=size, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for history, label in zip(histories, labels):
            for split, style in (("train", "--"), ("valid", "-")):
                key = f"{split}_{metric}"
                if key in history:
                    ax.plot(history["epoch"], history[key], style, label=f"{label} {split}".strip())
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
