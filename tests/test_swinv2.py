import math

import pytest
import torch
from transformers import Swinv2Config
from transformers.models.swinv2 import modeling_swinv2 as hf_swinv2

from homl16.swin import Swin, SwinBlock, WindowAttention, shifted_window_mask
from homl16.swinv2 import (
    ContinuousPositionBias,
    CosineWindowAttention,
    SwinV2Block,
    copy_weights_from_hf_v2_layer,
    log_spaced_coordinates,
    resize_bias_table,
    with_window_size,
)


def hf_layer(dim=16, num_heads=2, window_size=4, shift_size=2, grid=(8, 12), seed=0):
    torch.manual_seed(seed)
    config = Swinv2Config(embed_dim=dim, window_size=window_size, num_heads=[num_heads], depths=[2],
                          attn_implementation="eager")
    layer = hf_swinv2.Swinv2Layer(config, dim, grid, num_heads, shift_size=shift_size).eval()
    with torch.no_grad():  # transformers starts LayerNorms and logit scales at constants: randomise
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return layer


def hf_position_bias(attention):
    """transformers' continuous position bias (num_heads, N, N), as its forward computes it."""
    table = attention.continuous_position_bias_mlp(attention.relative_coords_table).view(
        -1, attention.num_attention_heads)
    N = attention.window_size[0] * attention.window_size[1]
    bias = table[attention.relative_position_index.view(-1)].view(N, N, -1)
    return 16 * torch.sigmoid(bias.permute(2, 0, 1))


def hf_self_attention(window_size, pretrained_window_size=0, num_heads=2):
    config = Swinv2Config(embed_dim=12, window_size=window_size, attn_implementation="eager")
    return hf_swinv2.Swinv2SelfAttention(config, 12, num_heads, window_size,
                                         pretrained_window_size=[pretrained_window_size] * 2)


@pytest.mark.parametrize("window_size, pretrained_window_size", [(1, 0), (4, 0), (7, 0), (8, 4), (12, 6)])
def test_log_spaced_coordinates_equal_transformers(window_size, pretrained_window_size):
    reference = hf_self_attention(window_size, pretrained_window_size).relative_coords_table.flatten(0, 2)
    ours = log_spaced_coordinates(window_size, pretrained_window_size or None)
    assert torch.equal(ours, reference)
    if not pretrained_window_size and window_size > 1:  # the trained window spans ±log2(9) / 3
        assert ours.abs().max() == math.log2(9) / 3


@pytest.mark.parametrize("window_size, pretrained_window_size", [(4, None), (8, 4)])
def test_continuous_position_bias_equals_transformers(window_size, pretrained_window_size):
    torch.manual_seed(0)
    theirs = hf_self_attention(window_size, pretrained_window_size or 0, num_heads=3)
    ours = ContinuousPositionBias(3, window_size, pretrained_window_size=pretrained_window_size)
    ours.mlp.load_state_dict(theirs.continuous_position_bias_mlp.state_dict())
    with torch.no_grad():
        bias = ours()
        torch.testing.assert_close(bias, hf_position_bias(theirs), rtol=0, atol=1e-6)
    N = window_size ** 2
    assert bias.shape == (3, N, N) and ((bias > 0) & (bias < 16)).all()


@pytest.mark.parametrize("shift_size", [0, 2])
def test_cosine_window_attention_equals_transformers(shift_size):
    grid = (8, 12)
    layer = hf_layer(shift_size=shift_size, grid=grid)
    attention = copy_weights_from_hf_v2_layer(SwinV2Block(16, 2, window_size=4, shift_size=shift_size),
                                              layer).attn.eval()
    windows = torch.randn(2 * 6, 16, 16)  # two images of 2 x 3 windows of 4 x 4 tokens
    mask = shifted_window_mask(grid, 4, 2) if shift_size else None
    with torch.no_grad():
        expected = layer.attention(windows, layer.get_attn_mask(*grid, torch.float32))[0]
        torch.testing.assert_close(attention(windows, mask), expected, rtol=0, atol=1e-5)
        assert torch.equal(attention.temperature(), layer.attention.self.logit_scale.view(-1, 1).exp())


@pytest.mark.parametrize("shift_size", [0, 2])
def test_swin_v2_block_equals_transformers_swinv2_layer(shift_size):
    grid = (8, 12)
    layer = hf_layer(shift_size=shift_size, grid=grid)
    block = SwinV2Block(16, 2, window_size=4, shift_size=shift_size)
    block = copy_weights_from_hf_v2_layer(block, layer).eval()
    x = torch.randn(2, 8 * 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x, grid), layer(x, grid)[0], rtol=0, atol=1e-5)


def test_cosine_scores_ignore_the_size_of_queries_and_keys_and_the_temperature_is_clamped():
    torch.manual_seed(0)
    attention = CosineWindowAttention(8, 2, window_size=2).eval()
    windows = torch.randn(3, 4, 8)
    with torch.no_grad():
        out = attention(windows)
        attention.q.weight.mul_(10), attention.q_bias.mul_(10), attention.kv.weight[:8].mul_(0.1)
        torch.testing.assert_close(attention(windows), out)  # dot-product attention would change
        attention.logit_scale.fill_(math.log(100.0))
        at_the_clamp = attention(windows)
        attention.logit_scale.fill_(20.0)
        assert torch.equal(attention(windows), at_the_clamp)
        torch.testing.assert_close(attention.temperature(), torch.full((2, 1), 100.0))


def test_res_post_norm_with_zeroed_norms_is_the_identity():
    block = SwinV2Block(8, 2, window_size=2, shift_size=1).eval()
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        for norm in (block.norm1, block.norm2):
            norm.weight.zero_(), norm.bias.zero_()
        assert torch.equal(block(x, (4, 4)), x)  # both branches end in their norm


def test_resize_bias_table_keeps_its_size_and_constants_and_grows_bicubically():
    table = torch.randn(7 * 7, 3)
    assert torch.equal(resize_bias_table(table, 4), table)
    assert torch.allclose(resize_bias_table(torch.full((49, 2), 0.5), 8), torch.full((15 * 15, 2), 0.5))
    grown = resize_bias_table(table, 8)
    reference = torch.nn.functional.interpolate(table.T.reshape(1, 3, 7, 7), size=(15, 15), mode="bicubic")
    assert torch.equal(grown, reference.reshape(3, -1).T)
    corner = table.view(7, 7, 3)[0, 0]  # the extreme offset stays near the extreme offset
    assert torch.allclose(grown.view(15, 15, 3)[0, 0], corner, atol=0.5 * corner.abs().max() + 1e-6)


def test_with_window_size_moves_v1_and_v2_models_to_larger_windows_without_training():
    torch.manual_seed(0)
    for block in (SwinBlock, SwinV2Block):
        model = Swin(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=2, block=block).eval()
        larger = with_window_size(model, 4)
        assert model.window_size == 2 and larger.window_size == 4  # a copy: the original keeps its windows
        blocks = [m for m in larger.modules() if isinstance(m, SwinBlock)]
        assert [(b.window_size, b.shift_size) for b in blocks] == [(4, 0), (4, 2)] * 2
        with torch.no_grad():
            features = larger(torch.randn(1, 3, 32, 32))  # grids 8x8 and 4x4: windows of 4
            assert [f.shape for f in features] == [(1, 8, 8, 8), (1, 16, 4, 4)]
            images = torch.randn(2, 3, 16, 16)
            same = with_window_size(model, 2)
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(same(images), model(images)))
    v1 = [m for m in larger.modules() if isinstance(m, WindowAttention)]
    assert not v1  # the last model was v2: its continuous bias evaluates the new offsets instead
    old = [m for m in model.modules() if isinstance(m, ContinuousPositionBias)][0]
    new = [m for m in larger.modules() if isinstance(m, ContinuousPositionBias)][0]
    assert new.pretrained_window_size == 2 and new.coordinates.shape == (7 * 7, 2)
    with torch.no_grad():  # the offsets seen in training keep their bias; the others extrapolate
        torch.testing.assert_close(new.mlp(new.coordinates).view(7, 7, -1)[2:5, 2:5],
                                   old.mlp(old.coordinates).view(3, 3, -1))
    v1_model = Swin(embed_dim=8, depths=(2,), num_heads=(1,), window_size=2)
    v1_larger = with_window_size(v1_model, 4)
    attention = v1_larger.stages[0].blocks[0].attn
    assert attention.relative_position_bias_table.shape == (7 * 7, 1)
    assert attention.relative_position_bias().shape == (1, 16, 16)
