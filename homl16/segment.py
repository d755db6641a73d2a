"""Semantic segmentation on shapes-world scenes: the data, a light multi-scale head, and mean IoU.

Shared by the hierarchical ViTs (PVT, Swin) and the plain-ViT baseline they are compared with.
Train with ``homl16.train.fit``: per-pixel logits (B, C, H, W) and masks (B, H, W) work with its
cross-entropy and accuracy (which is then pixel accuracy).
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_ids, check_positive, check_rank, check_tensor
from homl16.data.shapes import SHAPES

CLASS_NAMES = ("background",) + tuple(SHAPES)


class SegmentationHead(nn.Module):
    """FPN-style light head: project each feature map to ``dim`` channels (1x1 conv), upsample
    them to the finest map's grid, sum, refine with a 3x3 conv, classify per position, and
    upsample the logits to the image size.

    features: list of (B, C_i, H_i, W_i) with C_i = in_channels[i] -> logits (B, num_classes, H, W).
    """

    def __init__(self, in_channels, num_classes, dim=64):
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("in_channels must list at least one feature map's channels")
        check_positive("num_classes", num_classes, integer=True)
        self.in_channels = tuple(in_channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.classify = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features, image_size):
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        for i, (f, channels) in enumerate(zip(features, self.in_channels)):
            check_rank(f"features[{i}]", f, 4, "(batch, channels, height, width)")
            if f.shape[1] != channels or len(f) != len(features[0]):
                raise ValueError(f"features[{i}] must have {channels} channels and the batch size of "
                                 f"features[0] ({len(features[0])}), got shape {tuple(f.shape)}")
        size = features[0].shape[-2:]
        fused = sum(F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
                    for lateral, f in zip(self.lateral, features))
        logits = self.classify(self.fuse(fused))
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)


def intersection_over_union(predictions, targets, num_classes):
    """Per-class IoU over a whole set: predictions, targets long (N, H, W) -> (num_classes,) float,
    NaN for a class absent from both."""
    check_tensor("predictions", predictions)
    check_tensor("targets", targets)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    check_positive("num_classes", num_classes, integer=True)
    check_ids("predictions", predictions, num_classes)
    check_ids("targets", targets, num_classes)
    predictions, targets = predictions.flatten(), targets.flatten()
    confusion = torch.bincount(targets * num_classes + predictions, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes).double()
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.nan)


def mean_iou(predictions, targets, num_classes):
    """Mean over classes of the IoU (classes absent from both are skipped): (N, H, W) x 2 -> float."""
    return intersection_over_union(predictions, targets, num_classes).nanmean().item()


class ViTSegmenter(nn.Module):
    """Plain-ViT baseline for segmentation: ``homl16.vit.ViT.forward_features``, the class token
    dropped, the patch tokens reshaped to their grid (one single-scale map), and a ``SegmentationHead``.

    forward(X): (B, in_channels, img_size, img_size) -> logits (B, num_classes, img_size, img_size).
    ``vit_options`` go to ``ViT`` (its classification head is replaced by an identity).
    """

    def __init__(self, num_classes, img_size=64, patch_size=4, head_dim=64, **vit_options):
        from homl16.vit import ViT

        super().__init__()
        self.vit = ViT(img_size=img_size, patch_size=patch_size, num_classes=0, **vit_options)
        self.grid_size = img_size // patch_size
        self.head = SegmentationHead([self.vit.cls_token.shape[-1]], num_classes, head_dim)

    def forward(self, X):
        tokens = self.vit.forward_features(X)[:, 1:]  # (B, N, D), class token dropped
        grid = tokens.transpose(1, 2).reshape(len(X), -1, self.grid_size, self.grid_size)  # (B, D, h, w)
        return self.head([grid], image_size=X.shape[-2:])
