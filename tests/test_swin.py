import pytest
import torch
from transformers import SwinConfig
from transformers.models.swin import modeling_swin as hf_swin

from homl16.segment import SegmentationHead
from homl16.swin import (
    PatchMerging,
    Swin,
    SwinBlock,
    SwinSegmenter,
    WindowAttention,
    copy_weights_from_hf_layer,
    cyclic_shift,
    relative_position_index,
    shift_regions,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def hf_layer(dim=16, num_heads=2, window_size=4, shift_size=2, grid=(8, 8), seed=0):
    torch.manual_seed(seed)
    config = SwinConfig(embed_dim=dim, window_size=window_size, num_heads=[num_heads], depths=[2],
                        attn_implementation="eager")
    layer = hf_swin.SwinLayer(config, dim, grid, num_heads, shift_size=shift_size).eval()
    with torch.no_grad():  # transformers starts the bias table and LayerNorms at constants: randomise
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return layer


def test_window_partition_and_reverse_are_inverses():
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 3)
    assert torch.equal(windows[1], x[0, :4, 4:8])  # second window: top row, middle column of windows
    assert torch.equal(windows[6 + 3], x[1, 4:8, :4])  # second image, second row of windows, first window
    assert torch.equal(window_reverse(windows, (8, 12)), x)
    assert torch.equal(window_partition(x, 4), hf_swin.window_partition(x, 4))
    with pytest.raises(ValueError, match="divisible by window_size"):  # checked at the block, the public edge
        SwinBlock(3, 1, window_size=5)(x.view(2, 96, 3), (8, 12))


def test_relative_position_index_matches_transformers():
    for window_size in (2, 4, 7):
        reference = hf_swin.SwinRelativePositionBias(2, (window_size, window_size)).relative_position_index
        assert torch.equal(relative_position_index(window_size).flatten(), reference)
    index = relative_position_index(7)
    assert index.shape == (49, 49) and index.unique().numel() == 13 ** 2
    assert (index.diagonal() == index[0, 0]).all()  # zero offset: one entry of the table


@pytest.mark.parametrize("grid, window_size, shift_size", [((8, 8), 4, 2), ((12, 8), 4, 2), ((14, 14), 7, 3)])
def test_shifted_window_mask_equals_transformers(grid, window_size, shift_size):
    layer = hf_layer(window_size=window_size, shift_size=shift_size, grid=grid)
    reference = layer.get_attn_mask(*grid, torch.float32, torch.device("cpu"))
    ours = shifted_window_mask(grid, window_size, shift_size, fill=-100.0)
    assert torch.equal(ours, reference)
    assert torch.equal(shifted_window_mask(grid, window_size, shift_size).isinf(), reference != 0)


def test_masked_tokens_never_attend_across_regions():
    grid, w, s = (8, 8), 4, 2
    mask = shifted_window_mask(grid, w, s)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert (mask[1:] != 0).any(dim=(1, 2)).all()  # the 3 others mix regions (②, ③, ④ of the figure)
    # weights of a real attention: zero between tokens from different regions of the image
    regions = window_partition(shift_regions(grid, w, s)[None, :, :, None], w).flatten(1)
    attention = WindowAttention(8, 2, w)
    q = torch.randn(4, 2, 16, 4)
    weights = (q @ q.transpose(-2, -1) + attention.relative_position_bias() + mask[:, None]).softmax(-1)
    different = regions[:, None, :, None] != regions[:, None, None, :]
    assert different.any() and (weights[different.expand_as(weights)] == 0).all()
    # and in a shifted block, the output at a token ignores the tokens of its window from other regions
    block = SwinBlock(8, 2, window_size=w, shift_size=s).eval()
    ids = window_partition(cyclic_shift(torch.arange(64).view(1, 8, 8, 1), s), w).flatten(1)  # per window
    target = 7 * 8 + 7  # bottom-right token: its shifted window gathers all four corners of the image
    window = (ids == target).any(1).nonzero().item()
    same = regions[window] == regions[window][(ids[window] == target).nonzero().item()]
    others, neighbours = ids[window][~same], ids[window][same & (ids[window] != target)]
    assert len(others) and len(neighbours)
    x = torch.randn(1, 64, 8)
    with torch.no_grad():
        y = x.clone()
        y[0, others] = torch.randn(len(others), 8)
        assert torch.allclose(block(x, grid)[0, target], block(y, grid)[0, target], atol=1e-6)
        y = x.clone()
        y[0, neighbours] = torch.randn(len(neighbours), 8)
        assert not torch.allclose(block(x, grid)[0, target], block(y, grid)[0, target], atol=1e-3)


@pytest.mark.parametrize("shift_size", [0, 2])
def test_swin_block_equals_transformers_swin_layer(shift_size):
    grid = (8, 12)
    layer = hf_layer(shift_size=shift_size, grid=grid)
    block = copy_weights_from_hf_layer(SwinBlock(16, 2, window_size=4, shift_size=shift_size), layer).eval()
    x = torch.randn(2, 8 * 12, 16)
    with torch.no_grad():
        expected, _ = layer(x, grid)
        assert torch.allclose(block(x, grid), expected, atol=1e-5)


def test_patch_merging_halves_the_grid_doubles_channels_and_equals_transformers():
    merge = PatchMerging(8)
    reference = hf_swin.SwinPatchMerging(8)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p))
    merge.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6 * 4, 8)
    out = merge(x, (6, 4))
    assert out.shape == (2, 3 * 2, 16)
    assert torch.allclose(out, reference(x, (6, 4)), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 2"):
        merge(torch.randn(1, 15, 8), (5, 3))


def test_swin_returns_a_feature_pyramid_for_the_segmentation_head():
    model = Swin(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4)
    features = model(torch.randn(2, 3, 64, 64))
    assert [f.shape for f in features] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    head = SegmentationHead(model.channels, num_classes=5)
    assert head(features, (64, 64)).shape == (2, 5, 64, 64)
    segmenter = SwinSegmenter(5, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4)
    assert segmenter(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 60, 60))
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 1, 64, 64))


def test_chapter_numbers():
    # 28 x 28 patches in 7 x 7 windows: 784 x 49 scores per head instead of 784²
    mask = shifted_window_mask((28, 28), 7, 3)
    num_windows, N, _ = mask.shape
    assert (num_windows, N) == (16, 49) and num_windows * N * N == 784 * 49 == 38_416


def test_window_attention_is_multi_head_attention_plus_a_relative_position_bias():
    from homl16.transformer import MultiHeadAttention

    attention = WindowAttention(8, 2, window_size=2).eval()
    assert isinstance(attention, MultiHeadAttention)
    plain = MultiHeadAttention(8, 2).eval()
    plain.load_state_dict(attention.state_dict(), strict=False)
    windows = torch.randn(6, 4, 8)
    with torch.no_grad():
        attention.relative_position_bias_table.zero_()  # no bias: plain attention
        torch.testing.assert_close(attention(windows), plain(windows))
        mask = shifted_window_mask((4, 6), 2, 1)  # 6 windows, as for one image of a 4x6 grid
        expected = plain(windows, attn_mask=mask[:, None])
        torch.testing.assert_close(attention(windows, mask), expected)
        torch.testing.assert_close(attention(windows.repeat(2, 1, 1), mask), expected.repeat(2, 1, 1))


def test_the_shift_mask_is_built_once_per_grid_size(monkeypatch):
    import homl16.swin as swin

    calls = []
    build = swin.shifted_window_mask
    monkeypatch.setattr(swin, "shifted_window_mask", lambda *args: calls.append(args) or build(*args))
    block = SwinBlock(8, 2, window_size=4, shift_size=2).eval()
    with torch.no_grad():
        for grid in [(8, 8), (8, 8), (8, 12), (8, 8)]:
            block(torch.randn(2, grid[0] * grid[1], 8), grid)
    assert calls == [((8, 8), 4, 2), ((8, 12), 4, 2)]
    assert all(mask.device == torch.device("cpu") for mask in block._masks.values())
    assert "_masks" not in str(block.state_dict().keys())
