"""Property-based tests of the pure functions: they must hold for every input, not just examples."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from homl16.boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from homl16.contrastive import recall_at_k
from homl16.data.convert import to_pil_rgb
from homl16.dino import cosine_schedule
from homl16.segment import mean_iou
from homl16.swin import cyclic_shift, window_partition, window_reverse

settings.register_profile("course", max_examples=40, deadline=None)
settings.load_profile("course")

sizes = st.integers(1, 6)


@given(arrays(st.sampled_from([np.uint8, np.uint16, np.float32, bool]),
              st.tuples(sizes, sizes) | st.tuples(sizes, sizes, st.sampled_from([3, 4])),
))
def test_any_array_image_becomes_rgb_of_the_same_size(array):
    if array.dtype.kind == "f":
        array = np.nan_to_num(np.abs(array), posinf=1.0)
    rgb = to_pil_rgb(array)
    assert rgb.mode == "RGB" and rgb.size == (array.shape[1], array.shape[0])


@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_mean_iou_is_one_exactly_for_perfect_predictions_and_within_bounds(batch, num_classes, seed):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(num_classes, (batch, 5, 5), generator=generator)
    predictions = torch.randint(num_classes, (batch, 5, 5), generator=generator)
    assert mean_iou(targets, targets, num_classes) == 1.0
    value = mean_iou(predictions, targets, num_classes)
    assert 0.0 <= value <= 1.0
    assert value < 1.0 or torch.equal(predictions, targets)


@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_recall_at_k_grows_with_k_and_is_one_at_k_equal_n(n, seed):
    similarity = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    recalls = [recall_at_k(similarity, k) for k in range(1, n + 1)]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0


@given(st.floats(-10, 10), st.floats(-10, 10), st.integers(1, 50), st.data())
def test_cosine_schedule_starts_and_ends_where_asked(start, end, steps, data):
    warmup = data.draw(st.integers(0, steps - 1))
    values = cosine_schedule(start, end, steps, warmup_steps=warmup)
    tolerance = 1e-5 * max(1.0, abs(start), abs(end))  # float32 arithmetic
    assert values.shape == (steps,)
    if warmup < steps - 1:
        assert abs(values[warmup].item() - start) < tolerance and abs(values[-1].item() - end) < tolerance
    assert values[warmup:].min() >= min(start, end) - tolerance
    assert values[warmup:].max() <= max(start, end) + tolerance


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_window_partition_then_reverse_gives_back_the_grid(batch, rows, cols, window, channels, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, rows * window, cols * window, channels, generator=generator)
    windows = window_partition(x, window)
    assert windows.shape == (batch * rows * cols, window, window, channels)
    assert torch.equal(window_reverse(windows, (rows * window, cols * window)), x)
    assert torch.equal(windows[-1], x[-1, -window:, -window:])  # last window = bottom-right corner
    shift = window // 2
    assert torch.equal(cyclic_shift(cyclic_shift(x, shift), shift, reverse=True), x)


corners = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))


def as_box(c):
    """(x0, y0, x1, y1) with x0 < x1 and y0 < y1 from any four numbers (zero-area boxes have no IoU)."""
    return [min(c[0], c[2]), min(c[1], c[3]), max(c[0], c[2]) + 1e-3, max(c[1], c[3]) + 1e-3]


@given(st.lists(corners, min_size=1, max_size=6), st.lists(corners, min_size=1, max_size=6))
def test_box_conversions_round_trip_and_iou_bounds(first, second):
    a, b = torch.tensor([as_box(c) for c in first]), torch.tensor([as_box(c) for c in second])
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(a)), a, atol=1e-6, rtol=0)
    (iou, _), giou = box_iou(a, b), generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (len(a), len(b))
    assert ((iou >= -1e-6) & (iou <= 1 + 1e-6)).all()
    assert ((giou >= -1 - 1e-6) & (giou <= iou + 1e-6)).all()  # GIoU never exceeds IoU
