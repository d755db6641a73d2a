"""Property-based tests of the pure functions: they must hold for every input, not just examples."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from homl16.clip import recall_at_k
from homl16.data.convert import to_pil_rgb
from homl16.dino import cosine_schedule
from homl16.segment import mean_iou

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
