import pytest
import torch

from homl16.data.tasks import shapes_segmentation_data
from homl16.segment import (
    CLASS_NAMES,
    SegmentationHead,
    intersection_over_union,
    mean_iou,
)
from homl16.train import accuracy


def test_shapes_segmentation_data_masks_match_the_objects():
    X, masks = shapes_segmentation_data(8, image_size=32)
    assert X.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32) and masks.dtype == torch.long
    assert 0 < (masks > 0).float().mean() < 0.6 and masks.max() < len(CLASS_NAMES)
    background = X.permute(0, 2, 3, 1)[masks == 0]
    objects = X.permute(0, 2, 3, 1)[masks > 0]
    assert background.std(0).mean() < objects.std(0).mean()  # object pixels carry the colours


def test_iou_by_hand():
    targets = torch.tensor([[[0, 0, 1, 1]]])
    predictions = torch.tensor([[[0, 1, 1, 1]]])
    iou = intersection_over_union(predictions, targets, 3)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3) and torch.isnan(iou[2])
    assert mean_iou(predictions, targets, 3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert mean_iou(targets, targets, 3) == 1.0
    with pytest.raises(ValueError, match="differ"):
        mean_iou(predictions[0], targets, 3)


def test_head_upsamples_every_map_to_the_image_and_accuracy_counts_pixels():
    head = SegmentationHead([8, 16], num_classes=5)
    logits = head([torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)], image_size=(32, 32))
    assert logits.shape == (2, 5, 32, 32)
    targets = logits.argmax(1)
    targets[0, 0, :4] = (targets[0, 0, :4] + 1) % 5
    assert accuracy(logits, targets) == pytest.approx(1 - 4 / (2 * 32 * 32))
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        head([torch.randn(2, 8, 8, 8)], image_size=(32, 32))
