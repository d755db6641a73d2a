"""DETR (Carion et al., 2020): detection as set prediction with a transformer.

A CNN feature map -> 1x1 projection -> + 2-D sine positional encoding -> ``nn.Transformer``
encoder-decoder whose decoder input is a set of learned object queries -> per query a class
(including "no object") and a box (cx, cy, w, h) normalised to [0, 1]. Training matches the
predictions to the ground-truth objects one-to-one with the Hungarian algorithm (``hungarian_match``)
and applies the set loss (``set_loss``) to the matched pairs; the unmatched queries learn "no object".
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from homl16.boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, unpack_targets
from homl16.checks import check_positive, check_rank
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train


def sine_position_encoding(height, width, dim, temperature=10_000):
    """DETR's fixed 2-D sine encoding of a (height, width) grid -> (height * width, dim), row-major.

    The first dim/2 channels encode the row (y), the last dim/2 the column (x); each half interleaves
    sin and cos at geometrically spaced frequencies of the position normalised to (0, 2 pi].
    """
    if dim % 4 != 0:
        raise ValueError(f"dim must be divisible by 4, got {dim}")
    half = dim // 2
    y = torch.arange(1, height + 1, dtype=torch.float32) / height * 2 * math.pi
    x = torch.arange(1, width + 1, dtype=torch.float32) / width * 2 * math.pi
    frequencies = temperature ** (2 * (torch.arange(half) // 2) / half)

    def encode(positions):  # (n,) -> (n, half): sin on even channels, cos on odd ones
        angles = positions[:, None] / frequencies
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat([pos_y, pos_x], dim=-1).reshape(height * width, dim)


class DETR(nn.Module):
    """A small DETR over feature maps.

    forward(features): (B, in_channels, h, w) CNN feature maps (or images, if a ``backbone`` module
    is given) -> dict with ``logits`` (B, num_queries, num_classes + 1), the last class meaning
    "no object", ``boxes`` (B, num_queries, 4) sigmoid (cx, cy, w, h) in [0, 1], and ``aux``: the same
    two outputs for every earlier decoder layer (for the auxiliary decoding loss).
    """

    def __init__(self, num_classes, in_channels, dim=64, num_heads=4, num_encoder_layers=2,
                 num_decoder_layers=2, ff_dim=128, num_queries=10, dropout=0.0, backbone=None):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("num_queries", num_queries)):
            check_positive(name, value, integer=True)
        if dim % 4 != 0 or dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by 4 (the sine encoding) and by num_heads={num_heads}, "
                             f"got {dim}")
        self.num_classes, self.num_queries, self.in_channels = num_classes, num_queries, in_channels
        self.backbone = backbone
        self.project = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.transformer = nn.Transformer(dim, num_heads, num_encoder_layers, num_decoder_layers, ff_dim,
                                          dropout, batch_first=True)
        self.queries = nn.Parameter(torch.randn(num_queries, dim))
        self.class_head = nn.Linear(dim, num_classes + 1)
        self.box_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                      nn.Linear(dim, 4))

    def encode(self, features):
        """(B, C, h, w) -> memory (B, h*w, dim): the encoder's output over the projected map + position."""
        _, _, height, width = features.shape
        tokens = self.project(features).flatten(2).transpose(1, 2)  # (B, h*w, dim)
        position = sine_position_encoding(height, width, tokens.shape[-1]).to(tokens)
        return self.transformer.encoder(tokens + position)

    def decode(self, memory):
        """memory (B, n, dim) -> one (B, num_queries, dim) output per decoder layer (final norm applied)."""
        decoder = self.transformer.decoder
        x = self.queries.expand(len(memory), -1, -1)
        outputs = []
        for layer in decoder.layers:
            x = layer(x, memory)
            outputs.append(decoder.norm(x))
        return outputs

    def heads(self, x):
        return {"logits": self.class_head(x), "boxes": self.box_head(x).sigmoid()}

    def forward(self, X):
        features = X if self.backbone is None else self.backbone(X)
        check_rank("features", features, 4, "(batch, channels, height, width)")
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features must have {self.in_channels} channels, got {features.shape[1]}")
        *earlier, last = [self.heads(x) for x in self.decode(self.encode(features))]
        return {**last, "aux": earlier}


def check_predictions(scores, boxes, scores_name):
    """Raise unless scores (B, Q, C + 1) and boxes (B, Q, 4) describe the same queries."""
    check_rank(scores_name, scores, 3, "(batch, queries, classes + 1)")
    check_rank("boxes", boxes, 3, "(batch, queries, 4)")
    if boxes.shape[2] != 4 or boxes.shape[:2] != scores.shape[:2]:
        raise ValueError(f"boxes must be (batch, queries, 4) matching {scores_name} "
                         f"{tuple(scores.shape)}, got {tuple(boxes.shape)}")


@torch.no_grad()
def hungarian_match(logits, boxes, targets, class_weight=1.0, l1_weight=5.0, giou_weight=2.0):
    """The one-to-one assignment of predictions to targets with the lowest total cost, per image.

    logits (B, Q, C + 1), boxes (B, Q, 4) cxcywh; targets: list of B dicts with labels (n_i,) and
    boxes (n_i, 4) cxcywh. The cost of predicting target j with query q is
    ``- class_weight * p_q(label_j) + l1_weight * |box_q - box_j|_1 - giou_weight * GIoU(box_q, box_j)``.
    It is computed for the whole batch at once, (B*Q, sum n_i), then each image's (Q, n_i) block is
    solved with scipy's ``linear_sum_assignment``. Returns B pairs of long tensors
    (query indices, target indices), each of length n_i (needs n_i <= Q).
    """
    check_predictions(logits, boxes, "logits")
    batch_size, num_queries = logits.shape[:2]
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size}")
    sizes = [len(t["labels"]) for t in targets]
    if max(sizes, default=0) > num_queries:
        raise ValueError(f"an image has {max(sizes)} objects but there are only {num_queries} queries")
    if sum(sizes) == 0:
        empty = torch.empty(0, dtype=torch.long)
        return [(empty, empty) for _ in targets]
    probabilities = logits.flatten(0, 1).softmax(-1)  # (B*Q, C+1)
    pred_boxes = boxes.flatten(0, 1)  # (B*Q, 4)
    target_labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
    target_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.device)
    cost = (-class_weight * probabilities[:, target_labels]
            + l1_weight * torch.cdist(pred_boxes, target_boxes, p=1)
            - giou_weight * generalized_box_iou(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(target_boxes)))
    cost = cost.view(batch_size, num_queries, -1).cpu()
    matches = []
    for i, block in enumerate(cost.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(block[i].numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches


def set_loss(outputs, targets, no_object_weight=0.1, class_weight=1.0, l1_weight=5.0, giou_weight=2.0,
             aux_loss=True):
    """DETR's set loss for one batch.

    outputs: the model's dict (logits (B, Q, C + 1), boxes (B, Q, 4), aux); targets: list of B dicts
    {labels, boxes cxcywh} (see ``unpack_targets``). For each decoder output: Hungarian matching,
    then cross-entropy over all queries (unmatched ones have target "no object" = C, whose weight is
    down-weighted to ``no_object_weight`` against the class imbalance), plus the L1 and 1 - GIoU
    losses of the matched boxes, averaged over the number of target boxes. With ``aux_loss`` the
    earlier decoder layers' outputs add the same loss (the auxiliary decoding loss).
    Returns a dict: loss (the total to minimise), and the final layer's ce, l1 and giou terms.
    """
    logits = outputs["logits"]
    num_classes = logits.shape[-1] - 1
    class_weights = torch.ones(num_classes + 1, device=logits.device)
    class_weights[-1] = no_object_weight
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    layers = [outputs] + (list(outputs.get("aux", [])) if aux_loss else [])
    total, terms = 0.0, None
    for layer in layers:
        matches = hungarian_match(layer["logits"], layer["boxes"], targets,
                                  class_weight, l1_weight, giou_weight)
        batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
        query_index = torch.cat([q for q, _ in matches])
        target_classes = torch.full(layer["logits"].shape[:2], num_classes, dtype=torch.long,
                                    device=logits.device)
        target_classes[batch_index, query_index] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, matches)]).to(logits.device)
        ce = F.cross_entropy(layer["logits"].transpose(1, 2), target_classes, weight=class_weights)
        matched = layer["boxes"][batch_index, query_index]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, matches)]).to(matched)
        l1 = F.l1_loss(matched, target_boxes, reduction="sum") / num_boxes
        giou = (1 - generalized_box_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target_boxes)).diag()).sum()
        giou = giou / num_boxes
        total = total + class_weight * ce + l1_weight * l1 + giou_weight * giou
        if terms is None:
            terms = {"ce": ce.item(), "l1": l1.item(), "giou": giou.item()}
    return {"loss": total, **terms}


def train_detr(model, features, packed_targets, epochs, lr=1e-3, batch_size=64, aux_loss=True,
               weight_decay=1e-4, device=None, seed=42, desc="training DETR", **loss_options):
    """Train ``model`` with the course's loop: AdamW, a one-cycle schedule and gradient clipping (0.1,
    as DETR) on in-memory features (N, C, h, w) and padded targets (N, max_objects, 5) (``pack_targets``).
    Returns a history of per-epoch lists: epoch, loss, ce, l1, giou, seconds."""
    if len(features) != len(packed_targets):
        raise ValueError(f"got {len(features)} feature maps but {len(packed_targets)} targets")
    device = device or get_device()
    model.to(device)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(features), batch_size, epochs, weight_decay)

    def batch_loss(indices):
        outputs = model(features[indices].to(device))
        return set_loss(outputs, unpack_targets(packed_targets[indices]), aux_loss=aux_loss, **loss_options)

    history = train(model, batch_loss, len(features), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, clip_grad=0.1, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


@torch.no_grad()
def predict_detr(model, features, batch_size=256, device=None):
    """All queries' predictions for every image: -> dict of CPU tensors ``probabilities``
    (N, Q, C + 1) and ``boxes`` (N, Q, 4) cxcywh in [0, 1]."""
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    model.eval()
    outputs = [model(features[i:i + batch_size].to(device)) for i in range(0, len(features), batch_size)]
    return {"probabilities": torch.cat([o["logits"].softmax(-1).cpu() for o in outputs]),
            "boxes": torch.cat([o["boxes"].cpu() for o in outputs])}


def detections(probabilities, boxes, image_size=1.0, threshold=0.0):
    """Per image, the queries as detections: label = most likely real class, score = its probability
    (no NMS: the set loss already taught the queries not to duplicate each other).

    probabilities (N, Q, C + 1), boxes (N, Q, 4) cxcywh in [0, 1] -> list of N dicts with boxes
    (D, 4) corners scaled by ``image_size``, scores (D,), labels (D,), keeping scores > threshold.
    """
    check_predictions(probabilities, boxes, "probabilities")
    scores, labels = probabilities[..., :-1].max(-1)
    corners = cxcywh_to_xyxy(boxes) * image_size
    keep = scores > threshold
    return [{"boxes": c[k], "scores": s[k], "labels": lab[k]}
            for c, s, lab, k in zip(corners, scores, labels, keep)]


def matched_iou(probabilities, boxes, targets):
    """Mean IoU between every ground-truth box and the prediction the Hungarian matcher assigns to it:
    probabilities (N, Q, C + 1), boxes (N, Q, 4), targets: list of dicts {labels, boxes cxcywh}."""
    matches = hungarian_match(probabilities.clamp_min(1e-9).log(), boxes, targets)
    ious = [box_iou(cxcywh_to_xyxy(b[q]), cxcywh_to_xyxy(t["boxes"][j]))[0].diag()
            for b, t, (q, j) in zip(boxes, targets, matches)]
    return float(np.mean(torch.cat(ious).tolist()))


def small_hf_detr(id2label=None, seed=0):
    """A randomly initialised transformers ``DetrForObjectDetection`` small enough for a CPU: a 4-stage
    ResNet backbone built from a ``ResNetConfig`` (no timm, no pretrained weights to download), a
    64-wide one-layer encoder and decoder and 10 queries. Same classes and output format as
    facebook/detr-resnet-50 (logits (B, 10, num_labels + 1), pred_boxes (B, 10, 4)), random predictions."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    id2label = id2label or {0: "circle", 1: "square", 2: "triangle", 3: "diamond"}
    backbone_config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                   layer_type="basic", out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                        backbone_config=backbone_config, d_model=64, encoder_layers=1, decoder_layers=1,
                        encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4,
                        decoder_attention_heads=4, num_queries=10,
                        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    with torch.random.fork_rng():  # seed the weights without touching the notebook's random state
        torch.manual_seed(seed)
        return DetrForObjectDetection(config).eval()


def small_detr_processor():
    """The image processor for ``small_hf_detr``: DETR's own preprocessing (ImageNet normalisation,
    resize, padding mask) at a CPU-friendly size (shortest edge 128 pixels)."""
    from transformers import DetrImageProcessor

    return DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})


def offline_detr_checkpoint():
    """Directory of the offline stand-in for facebook/detr-resnet-50: ``small_hf_detr`` and its processor,
    saved once (see ``homl16.pretrained.STAND_INS``)."""
    from homl16.pretrained import local_checkpoint

    return local_checkpoint("small-detr", lambda: (small_hf_detr(), small_detr_processor()))
