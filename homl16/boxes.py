"""Bounding boxes as pure functions: conversions, IoU, generalized IoU and mAP@0.5.

Boxes are float tensors (..., 4), either corners (x0, y0, x1, y1) or centre and size (cx, cy, w, h),
in any unit (pixels, or normalised to [0, 1] as DETR predicts them).
"""

import numpy as np
import torch

from homl16.checks import check_positive, check_probability, check_rank, check_tensor


def check_boxes(name, boxes, listed=False):
    """Raise unless ``boxes`` is (..., 4), or (N, 4) when ``listed``."""
    check_tensor(name, boxes)
    if listed and (boxes.dim() != 2 or boxes.shape[-1] != 4):
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")


def cxcywh_to_xyxy(boxes):
    """(..., 4) centre and size (cx, cy, w, h) -> (..., 4) corners (x0, y0, x1, y1)."""
    check_boxes("boxes", boxes)
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes):
    """(..., 4) corners (x0, y0, x1, y1) -> (..., 4) centre and size (cx, cy, w, h)."""
    check_boxes("boxes", boxes)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_iou(boxes1, boxes2):
    """Pairwise IoU of corner boxes: (N, 4) x (M, 4) -> (iou (N, M), union (N, M))."""
    check_boxes("boxes1", boxes1, listed=True)
    check_boxes("boxes2", boxes2, listed=True)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = area1[:, None] + area2[None, :] - intersection
    return intersection / union, union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of corner boxes: (N, 4) x (M, 4) -> (N, M).

    GIoU = IoU - (area of the smallest enclosing box C - union) / area of C, in [-1, 1]: it equals the
    IoU for nested boxes, 1 for identical ones, and keeps decreasing (below 0) as disjoint boxes move
    apart, so unlike the IoU it still gives a gradient when the boxes do not overlap.
    """
    iou, union = box_iou(boxes1, boxes2)  # checks the shapes
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(f"{name} must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
    top_left = torch.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing = (bottom_right - top_left).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing


def average_precision(scores, is_true_positive, num_targets):
    """Area under the precision-recall curve with all-point interpolation (PASCAL VOC since 2010;
    COCO reads the same monotone curve at 101 recall points instead).

    scores (D,) and is_true_positive (D,) bool for the detections of one class, num_targets: the number of
    ground-truth boxes of that class. Precision is made monotone (each point takes the best precision at
    any higher recall), then summed over the recall steps. Returns a float in [0, 1].
    """
    if num_targets == 0:
        raise ValueError("average precision is undefined for a class with no ground-truth boxes")
    if num_targets < 0:
        raise ValueError(f"num_targets must be positive, got {num_targets}")
    scores = np.asarray(scores, dtype=float)
    hits = np.asarray(is_true_positive, dtype=float)
    if scores.ndim != 1 or scores.shape != hits.shape:
        raise ValueError(f"scores {scores.shape} and is_true_positive {hits.shape} must be (D,) vectors "
                         f"of one length")
    if hits.sum() > num_targets:
        raise ValueError(f"{int(hits.sum())} true positives but only num_targets={num_targets} boxes")
    order = np.argsort(-scores, kind="stable")
    true_positives = np.cumsum(hits[order])
    recall = np.concatenate([[0.0], true_positives / num_targets])
    precision = np.concatenate([[1.0], true_positives / np.arange(1, len(scores) + 1)])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def mean_average_precision(predictions, targets, iou_threshold=0.5, matching="coco"):
    """mAP@iou_threshold over a set of images, with all-point interpolation (``average_precision``).

    predictions: per image a dict with boxes (D, 4) corners, scores (D,), labels (D,);
    targets: per image a dict with boxes (T, 4) corners, labels (T,). Per class, detections of all
    images are ranked by score and each one is a true positive or a false positive. Each ground-truth
    box can be claimed once, so a duplicate of a found object is a false positive; ``matching`` says
    which box a detection tries to claim:

    - "coco" (pycocotools' rule): the best-overlapping *unclaimed* ground-truth box of its class;
    - "voc" (PASCAL VOC's devkit): the best-overlapping box, claimed or not; if it is already
      claimed, the detection is a false positive even when another free box overlaps it enough.

    It is a true positive if that box has IoU >= threshold. AP per class, averaged over the classes
    that have ground truth. Returns {"map": float, "ap_per_class": {class id: AP}}.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets")
    check_probability("iou_threshold", iou_threshold)
    if matching not in ("coco", "voc"):
        raise ValueError(f"matching must be 'coco' or 'voc', got {matching!r}")
    if len(targets) == 0:
        raise ValueError("mean_average_precision needs at least one image")
    classes = sorted({int(c) for t in targets for c in t["labels"]})
    if not classes:
        raise ValueError("the targets hold no ground-truth boxes")
    ap_per_class = {}
    for c in classes:
        scores, hits, num_targets = [], [], 0
        for prediction, target in zip(predictions, targets):
            gt = target["boxes"][target["labels"] == c].float()
            num_targets += len(gt)
            keep = prediction["labels"] == c
            boxes, box_scores = prediction["boxes"][keep].float(), prediction["scores"][keep].float()
            if len(boxes) == 0:
                continue
            order = box_scores.argsort(descending=True, stable=True)
            boxes, box_scores = boxes[order], box_scores[order]
            hits += match_detections(boxes, gt, iou_threshold, matching)
            scores.extend(box_scores.tolist())
        ap_per_class[c] = average_precision(scores, hits, num_targets)
    return {"map": float(np.mean(list(ap_per_class.values()))), "ap_per_class": ap_per_class}


def match_detections(boxes, gt, iou_threshold, matching):
    """Detections (D, 4) in decreasing score order against ground truth (T, 4) of one class and image
    -> list of D bools (true positive or not), claiming each ground-truth box at most once."""
    if len(gt) == 0:
        return [False] * len(boxes)
    claimed = torch.zeros(len(gt), dtype=torch.bool)
    hits = []
    for ious in box_iou(boxes, gt)[0]:
        candidates = ious.masked_fill(claimed, -1.0) if matching == "coco" else ious
        best = int(candidates.argmax())
        hit = bool(candidates[best] >= iou_threshold) and not claimed[best]
        claimed[best] |= hit
        hits.append(hit)
    return hits


def pack_targets(boxes, labels, image_size, max_objects):
    """Per-image lists of pixel boxes [[x0, y0, x1, y1], ...] and labels -> one padded tensor
    (N, max_objects, 5): label, then (cx, cy, w, h) normalised by ``image_size``; padding rows have
    label -1. One tensor can be indexed by a batch of item indices like the images."""
    if len(boxes) != len(labels):
        raise ValueError(f"got {len(boxes)} box lists but {len(labels)} label lists")
    check_positive("image_size", image_size)
    check_positive("max_objects", max_objects, integer=True)
    packed = torch.zeros(len(boxes), max_objects, 5)
    packed[:, :, 0] = -1
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels)):
        if len(image_boxes) > max_objects:
            raise ValueError(f"image {i} has {len(image_boxes)} objects, more than max_objects={max_objects}")
        if len(image_boxes) != len(image_labels):
            raise ValueError(f"image {i} has {len(image_boxes)} boxes but {len(image_labels)} labels")
        if len(image_boxes):
            corners = torch.tensor(image_boxes, dtype=torch.float32) / image_size
            packed[i, :len(image_boxes), 0] = torch.tensor(image_labels, dtype=torch.float32)
            packed[i, :len(image_boxes), 1:] = xyxy_to_cxcywh(corners)
    return packed


def unpack_targets(packed):
    """(B, max_objects, 5) padded targets -> list of B dicts {labels (n,) long, boxes (n, 4) cxcywh}."""
    check_rank("packed", packed, 3, "(batch, max_objects, 5)")
    if packed.shape[2] != 5:
        raise ValueError(f"packed must have shape (batch, max_objects, 5), got {tuple(packed.shape)}")
    keep = packed[:, :, 0] >= 0
    return [{"labels": row[k, 0].long(), "boxes": row[k, 1:]} for row, k in zip(packed, keep)]
