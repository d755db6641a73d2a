import itertools

import pytest
import torch
from torch import nn

from homl16.boxes import cxcywh_to_xyxy, generalized_box_iou, pack_targets, unpack_targets
from homl16.detr import (
    DETR,
    detections,
    hungarian_match,
    matched_iou,
    set_loss,
    sine_position_encoding,
    train_detr,
)


def random_case(generator, batch_size=3, num_queries=5, num_classes=3, sizes=(2, 0, 4)):
    logits = torch.randn(batch_size, num_queries, num_classes + 1, generator=generator)
    boxes = torch.rand(batch_size, num_queries, 4, generator=generator) * 0.5 + 0.1
    targets = [{"labels": torch.randint(num_classes, (n,), generator=generator),
                "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.1} for n in sizes]
    return logits, boxes, targets


def pair_cost(logits, box, label, target_box):
    """The matching cost of one (query, target) pair, computed on its own."""
    giou = generalized_box_iou(cxcywh_to_xyxy(box[None]), cxcywh_to_xyxy(target_box[None]))[0, 0]
    return -logits.softmax(-1)[label] + 5 * (box - target_box).abs().sum() - 2 * giou


@pytest.mark.parametrize("seed", range(4))
def test_matcher_equals_brute_force_over_permutations(seed):
    logits, boxes, targets = random_case(torch.Generator().manual_seed(seed))
    matches = hungarian_match(logits, boxes, targets)
    for i, (target, (queries, indices)) in enumerate(zip(targets, matches)):
        n = len(target["labels"])
        assert len(queries) == len(indices) == n and len(set(queries.tolist())) == n
        cost = torch.tensor([[pair_cost(logits[i, q], boxes[i, q], target["labels"][j], target["boxes"][j])
                              for j in range(n)] for q in range(boxes.shape[1])])
        best = min((sum(cost[q, j] for j, q in enumerate(chosen)).item(), chosen)
                   for chosen in itertools.permutations(range(boxes.shape[1]), n)) if n else (0.0, ())
        found = cost[queries, indices].sum().item() if n else 0.0
        assert found == pytest.approx(best[0], abs=1e-5)
        assert dict(zip(indices.tolist(), queries.tolist())) == dict(enumerate(best[1]))


def test_matcher_needs_enough_queries():
    logits, boxes, targets = random_case(torch.Generator().manual_seed(0), num_queries=3)
    with pytest.raises(ValueError, match="only 3 queries"):
        hungarian_match(logits, boxes, targets)


def test_sine_position_encoding_matches_transformers():
    from transformers.models.detr.modeling_detr import DetrSinePositionEmbedding

    hf = DetrSinePositionEmbedding(num_position_features=16, normalize=True)
    expected = hf(torch.Size([1, 3, 4, 6]), "cpu", torch.float32)  # (1, 32, 4, 6)
    ours = sine_position_encoding(4, 6, 32)  # (24, 32)
    torch.testing.assert_close(ours, expected[0].flatten(1).T, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(4, 4, 30)


def test_model_output_shapes_with_and_without_a_backbone():
    torch.manual_seed(0)
    model = DETR(num_classes=4, in_channels=8, dim=32, num_queries=6, num_decoder_layers=3)
    out = model(torch.randn(2, 8, 4, 5))
    assert out["logits"].shape == (2, 6, 5) and out["boxes"].shape == (2, 6, 4)
    assert 0 < out["boxes"].min() and out["boxes"].max() < 1
    assert len(out["aux"]) == 2 and all(a["boxes"].shape == (2, 6, 4) for a in out["aux"])
    backbone = nn.Conv2d(3, 8, kernel_size=8, stride=8)
    with_backbone = DETR(num_classes=4, in_channels=8, dim=32, num_queries=6, backbone=backbone)
    assert with_backbone(torch.rand(2, 3, 32, 32))["logits"].shape == (2, 6, 5)
    with pytest.raises(ValueError, match="8 channels"):
        model(torch.randn(2, 3, 4, 5))


def test_set_loss_is_zero_on_boxes_for_a_perfect_prediction_and_ignores_query_order():
    targets = unpack_targets(pack_targets([[[0, 0, 31, 31], [32, 16, 48, 40]], [[8, 8, 24, 24]]],
                                          [[2, 0], [1]], image_size=64, max_objects=3))
    logits = torch.full((2, 4, 4), -10.0)
    logits[..., -1] = 10.0  # "no object" everywhere ...
    boxes = torch.full((2, 4, 4), 0.5)
    for i, target in enumerate(targets):  # ... except one query per object, in reverse order
        for j, (label, box) in enumerate(zip(target["labels"], target["boxes"])):
            logits[i, 3 - j, label], logits[i, 3 - j, -1] = 10.0, -10.0
            boxes[i, 3 - j] = box
    losses = set_loss({"logits": logits, "boxes": boxes, "aux": []}, targets)
    assert losses["l1"] == pytest.approx(0, abs=1e-6) and losses["giou"] == pytest.approx(0, abs=1e-6)
    assert losses["ce"] < 1e-3
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    noisy = {"logits": torch.randn(2, 4, 4), "boxes": torch.rand(2, 4, 4) * 0.5 + 0.2}
    shuffled = {"logits": noisy["logits"][:, order], "boxes": noisy["boxes"][:, order]}
    loss = set_loss(noisy, targets)["loss"].item()
    assert set_loss(shuffled, targets)["loss"].item() == pytest.approx(loss)
    with_aux = set_loss({**noisy, "aux": [noisy]}, targets)["loss"].item()
    assert with_aux == pytest.approx(2 * loss)


def test_pack_targets_and_detections_round_trip_the_pixel_boxes():
    packed = pack_targets([[[0, 0, 32, 16]], []], [[1], []], image_size=64, max_objects=2)
    assert packed.shape == (2, 2, 5) and packed[:, :, 0].tolist() == [[1, -1], [-1, -1]]
    targets = unpack_targets(packed)
    assert targets[0]["boxes"].tolist() == [[0.25, 0.125, 0.5, 0.25]] and len(targets[1]["labels"]) == 0
    probabilities = torch.tensor([[[0.1, 0.7, 0.2], [0.05, 0.05, 0.9]]])
    found = detections(probabilities, targets[0]["boxes"].expand(1, 2, 4), image_size=64, threshold=0.5)
    assert found[0]["boxes"].tolist() == [[0, 0, 32, 16]] and found[0]["labels"].tolist() == [1]
    assert matched_iou(probabilities, targets[0]["boxes"].expand(1, 2, 4), targets[:1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="more than max_objects"):
        pack_targets([[[0, 0, 1, 1]] * 3], [[0, 0, 0]], 64, 2)


def test_train_detr_learns_a_box_with_the_course_loop_and_keeps_its_history_keys():
    torch.manual_seed(0)
    # one object per image whose class and box are written into the features
    labels = torch.arange(8) % 2
    features = torch.zeros(8, 4, 2, 2)
    features[torch.arange(8), labels] = 1.0
    boxes = [[[8, 8, 40, 40]] if c == 0 else [[24, 24, 56, 56]] for c in labels.tolist()]
    packed = pack_targets(boxes, [[c] for c in labels.tolist()], image_size=64, max_objects=1)
    model = DETR(num_classes=2, in_channels=4, dim=16, num_heads=2, num_encoder_layers=1,
                 num_decoder_layers=1, ff_dim=16, num_queries=3)
    history = train_detr(model, features, packed, epochs=40, lr=5e-3, batch_size=4, device="cpu",
                         no_object_weight=0.4)
    assert set(history) == {"epoch", "loss", "ce", "l1", "giou", "seconds"}
    assert history["epoch"] == list(range(1, 41))
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_small_hf_detr_has_the_output_format_of_detr_resnet_50():
    from homl16.detr import small_detr_processor, small_hf_detr

    model = small_hf_detr()
    with torch.no_grad():
        out = model(pixel_values=torch.rand(1, 3, 64, 96))
    assert out.logits.shape == (1, 10, 5) and out.pred_boxes.shape == (1, 10, 4)
    result = small_detr_processor().post_process_object_detection(out, threshold=0.0, target_sizes=[(64, 96)])
    assert set(result[0]) == {"scores", "labels", "boxes"} and result[0]["boxes"].shape == (10, 4)
    assert result[0]["boxes"][:, 2].max() <= 96 + 1e-4  # boxes come back in pixels of the target size
