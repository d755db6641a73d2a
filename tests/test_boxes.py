import pytest
import torch

from homl16.boxes import (
    average_precision,
    box_iou,
    cxcywh_to_xyxy,
    generalized_box_iou,
    mean_average_precision,
    xyxy_to_cxcywh,
)


def random_boxes(n, generator):
    corners = torch.rand(n, 2, 2, generator=generator)
    return torch.cat([corners.min(1).values, corners.max(1).values], dim=1)  # (n, 4) x0 y0 x1 y1


def test_boxes_round_trip_between_formats():
    boxes = random_boxes(20, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)
    assert xyxy_to_cxcywh(torch.tensor([1.0, 2.0, 5.0, 4.0])).tolist() == [3.0, 3.0, 4.0, 2.0]
    assert cxcywh_to_xyxy(torch.tensor([[3.0, 3.0, 4.0, 2.0]])).tolist() == [[1.0, 2.0, 5.0, 4.0]]
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        cxcywh_to_xyxy(torch.rand(3, 5))


def direct_giou(a, b):
    """GIoU of two boxes written out from the definition, in plain Python."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return intersection / union - (enclosing - union) / enclosing


def test_giou_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(1)
    a, b = random_boxes(6, generator).double(), random_boxes(5, generator).double()
    expected = torch.tensor([[direct_giou(x.tolist(), y.tolist()) for y in b] for x in a], dtype=torch.double)
    torch.testing.assert_close(generalized_box_iou(a, b), expected)
    assert (generalized_box_iou(a, b) <= box_iou(a, b)[0] + 1e-12).all()  # GIoU <= IoU


def test_giou_is_one_for_identical_boxes_and_negative_when_far_apart():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 3.0, 4.0, 7.0]])
    torch.testing.assert_close(generalized_box_iou(boxes, boxes).diag(), torch.ones(2))
    near, far = torch.tensor([[2.0, 0.0, 3.0, 1.0]]), torch.tensor([[9.0, 0.0, 10.0, 1.0]])
    giou_near = generalized_box_iou(boxes[:1], near).item()
    giou_far = generalized_box_iou(boxes[:1], far).item()
    assert box_iou(boxes[:1], far)[0].item() == 0 and giou_far < giou_near < 0  # keeps falling with distance
    assert giou_near == pytest.approx(-1 / 3) and giou_far == pytest.approx(-8 / 10)
    with pytest.raises(ValueError, match="x1 >= x0"):
        generalized_box_iou(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), boxes)


def test_average_precision_all_point_interpolation_by_hand():
    assert average_precision([0.9, 0.8], [True, True], 2) == 1.0
    # ranked: TP, FP, TP with 2 targets -> recall 0.5 at precision 1, recall 1 at precision 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([0.9], [True], 4) == pytest.approx(0.25)  # missed targets cap the recall
    assert average_precision([], [], 3) == 0.0
    with pytest.raises(ValueError, match="no ground-truth"):
        average_precision([0.5], [False], 0)


def image(boxes, labels, scores=None):
    result = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.tensor(labels, dtype=torch.long)}
    if scores is not None:
        result["scores"] = torch.tensor(scores, dtype=torch.float32)
    return result


def test_map_is_one_for_perfect_predictions_and_drops_as_expected():
    targets = [image([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]), image([[5, 5, 15, 15]], [0])]
    perfect = [image([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [0.9, 0.8]),
               image([[5, 5, 15, 15]], [0], [0.7])]
    assert mean_average_precision(perfect, targets)["map"] == 1.0
    # a duplicate of a found box is a false positive; ranked below the true ones it does not lower AP
    duplicate_low = [perfect[0], image([[5, 5, 15, 15], [5, 5, 15, 15]], [0, 0], [0.7, 0.1])]
    assert mean_average_precision(duplicate_low, targets)["map"] == 1.0
    # ranked above a true positive it does: class 0 gets TP, FP, TP -> AP 0.5 + 0.5 * 2/3; class 1 keeps 1
    duplicate_high = [image([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0, 1, 0], [0.9, 0.8, 0.85]),
                      perfect[1]]
    result = mean_average_precision(duplicate_high, targets)
    assert result["ap_per_class"] == {0: pytest.approx(0.5 + 0.5 * 2 / 3), 1: 1.0}
    assert result["map"] == pytest.approx((0.5 + 0.5 * 2 / 3 + 1) / 2)
    # a box shifted to IoU 1/3 < 0.5 is a miss; the wrong class is a miss too
    shifted = [image([[0, 0, 10, 10], [25, 20, 35, 30]], [0, 1], [0.9, 0.8]), perfect[1]]
    assert mean_average_precision(shifted, targets)["ap_per_class"][1] == 0.0
    assert mean_average_precision(shifted, targets, iou_threshold=0.3)["map"] == 1.0
    wrong_class = [image([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], [0.9, 0.8]), perfect[1]]
    assert mean_average_precision(wrong_class, targets)["ap_per_class"][1] == 0.0
    with pytest.raises(ValueError, match="2 targets"):
        mean_average_precision(perfect[:1], targets)


def test_map_matching_coco_claims_a_free_box_where_voc_counts_a_false_positive():
    # A and B overlap (IoU 2/3). The first detection is A itself; the second overlaps A best (IoU 0.905)
    # and B enough (0.739). COCO lets it claim the free B; VOC takes its best box A, already claimed.
    targets = [image([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    predictions = [image([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0, 0], [0.9, 0.8])]
    assert mean_average_precision(predictions, targets)["map"] == 1.0  # "coco" is the default
    assert mean_average_precision(predictions, targets, matching="coco")["map"] == 1.0
    assert mean_average_precision(predictions, targets, matching="voc")["map"] == pytest.approx(0.5)
    # where the best box is free, both rules agree
    swapped = [image([[0, 0, 10, 10], [1.5, 0, 11.5, 10]], [0, 0], [0.9, 0.8])]  # IoU 0.74 with A, 0.9 with B
    assert mean_average_precision(swapped, targets, matching="voc")["map"] == 1.0
