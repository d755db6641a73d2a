import pytest
import torch

from homl16.cost import (
    attention_scores,
    growth_per_doubling,
    make_block,
    measure_cost_growth,
    time_block,
    window_block_parts,
)


def test_attention_scores_chapter_numbers_and_growth():
    assert attention_scores("global", 28) == 784 ** 2 == 614_656
    assert attention_scores("window", (28, 28), window_size=7) == 784 * 49 == 38_416
    assert attention_scores("sra", (56, 56), sr_ratio=8) == 3136 * 49
    for kind, factor in [("global", 16), ("sra", 16), ("window", 4)]:
        assert attention_scores(kind, 112) / attention_scores(kind, 56) == factor
    with pytest.raises(ValueError, match="divisible by window_size"):
        attention_scores("window", 30)
    with pytest.raises(ValueError, match="kind must be one of"):
        attention_scores("local", 28)


def test_every_kind_of_block_keeps_the_token_shape():
    x = torch.randn(2, 14 * 14, 16)
    for kind in ("global", "sra", "window"):
        block, call = make_block(kind, embed_dim=16, num_heads=2, window_size=7, sr_ratio=2)
        with torch.no_grad():
            assert call(block, x, (14, 14)).shape == x.shape


def test_time_block_and_growth_from_measurements():
    block, call = make_block("window", embed_dim=16, num_heads=2, window_size=7)
    seconds = time_block(block, torch.randn(1, 196, 16), (14, 14), repeats=2, call=call)
    assert 0 < seconds < 5
    rows = measure_cost_growth([28, 56], patch_size=2, kinds=("global", "window"), embed_dim=16, repeats=1)
    assert [(r["kind"], r["tokens"]) for r in rows] == [("global", 196), ("global", 784),
                                                         ("window", 196), ("window", 784)]
    assert growth_per_doubling(rows, "global", key="scores") == 16
    assert growth_per_doubling(rows, "window", key="scores") == 4
    synthetic = [{"kind": "k", "image_side": s, "seconds": t} for s, t in [(8, 1.0), (16, 2.0), (32, 8.0)]]
    assert growth_per_doubling(synthetic, "k") == 4
    assert growth_per_doubling(synthetic, "k", last=False) == pytest.approx(2 ** 1.5)
    with pytest.raises(ValueError, match="must double"):
        growth_per_doubling(synthetic[:1] + synthetic[2:], "k")
    with pytest.raises(ValueError, match="at least two"):
        growth_per_doubling(synthetic, "other")


def test_interleaved_rounds_and_the_parts_of_a_swin_block():
    rows = measure_cost_growth([28, 56], patch_size=2, kinds=("window",), embed_dim=16, repeats=3)
    assert all(len(row["all_seconds"]) == 3 and row["seconds"] > 0 for row in rows)
    parts = window_block_parts([28, 56], embed_dim=16, repeats=2)
    assert list(parts) == [28, 56]
    assert list(parts[28]) == ["layer norms", "roll + windows", "window attention", "MLP"]
    assert all(seconds > 0 for side in parts.values() for seconds in side.values())


def test_time_side_by_side_times_every_call_each_round():
    from homl16.cost import time_side_by_side

    calls = []
    times = time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4 and set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    with pytest.raises(ValueError, match="empty"):
        time_side_by_side({})
