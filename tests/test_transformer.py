import pytest
import torch
from torch import nn

from homl16.transformer import EncoderBlock, MultiHeadAttention


def torch_attention_like(attention, embed_dim, num_heads):
    """torch's nn.MultiheadAttention with the same weights as ``attention``."""
    reference = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([attention.q.weight, attention.kv.weight]))
        reference.in_proj_bias.copy_(torch.cat([attention.q.bias, attention.kv.bias]))
        reference.out_proj.load_state_dict(attention.proj.state_dict())
    return reference.eval()


@pytest.mark.parametrize("return_attention", [False, True])
def test_cross_attention_with_a_mask_matches_torch(return_attention):
    torch.manual_seed(0)
    attention = MultiHeadAttention(embed_dim=16, num_heads=4).eval()
    reference = torch_attention_like(attention, 16, 4)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    allowed = torch.rand(5, 7) > 0.3
    allowed[:, 0] = True  # every query sees at least one key
    out = attention(x, context, attn_mask=allowed, return_attention=return_attention)
    expected, expected_weights = reference(x, context, context, attn_mask=~allowed,
                                           average_attn_weights=False)
    if return_attention:
        out, weights = out
        torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
        assert (weights[..., ~allowed] == 0).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_self_attention_stacks_q_and_kv_into_one_product_with_the_same_results():
    torch.manual_seed(0)
    attention = MultiHeadAttention(embed_dim=16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    expected, _ = torch_attention_like(attention, 16, 4)(x, x, x)
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)
    gradients = []
    for context in (None, x.clone()):  # self-attention (one stacked product), then two products
        attention.zero_grad()
        attention(x, context).square().sum().backward()
        gradients.append([p.grad.clone() for p in attention.parameters()])
    for stacked, separate in zip(*gradients):
        torch.testing.assert_close(stacked, separate, rtol=1e-5, atol=1e-6)


def test_additive_bias_shifts_attention():
    attention = MultiHeadAttention(embed_dim=8, num_heads=2).eval()
    x = torch.randn(1, 3, 8)
    bias = torch.zeros(3, 3)
    bias[:, 2] = 100.0  # every query should look (almost only) at token 2
    _, weights = attention(x, attn_mask=bias, return_attention=True)
    assert (weights[..., 2] > 0.99).all()


def test_encoder_block_keeps_shapes_and_checks_inputs():
    block = EncoderBlock(embed_dim=8, num_heads=2, ff_dim=16)
    assert block(torch.randn(3, 4, 8)).shape == (3, 4, 8)
    with pytest.raises(ValueError, match="batch sizes differ"):
        MultiHeadAttention(8, 2)(torch.randn(2, 3, 8), torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match="shape"):
        block(torch.randn(4, 8))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
