import pytest
import torch
import torch.nn.functional as F

from homl16.tome import (
    bipartite_soft_matching,
    class_attention_keep,
    max_r,
    merge_tokens,
    proportional_attention,
    tome_forward,
    tome_forward_features,
)
from homl16.vit import ViT


def small_vit(depth=4):
    torch.manual_seed(0)
    return ViT(img_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=16, depth=depth,
               num_heads=2, ff_dim=32, dropout=0.0).eval()


@pytest.mark.parametrize("mode", ["merge", "prune"])
def test_with_r_zero_the_output_is_the_plain_vits(mode):
    vit, X = small_vit(), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(tome_forward(vit, X, 0, mode), vit(X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["merge", "prune"])
def test_each_layer_drops_r_tokens_and_the_sizes_add_up_to_the_patches(mode):
    vit, X, r = small_vit(), torch.randn(3, 1, 28, 28), 6
    with torch.no_grad():
        tokens, size, counts = tome_forward_features(vit, X, r, mode)
    assert counts == [50 - r * layer for layer in range(1, 5)]
    assert tokens.shape == (3, 50 - 4 * r, 16)
    assert size[:, 0, 0].tolist() == [1.0] * 3  # the class token is never merged
    if mode == "merge":
        torch.testing.assert_close(size.sum(dim=(1, 2)), torch.full((3,), 50.0))
    else:
        assert (size == 1).all()


def test_the_largest_r_runs_and_one_more_raises():
    vit, X = small_vit(), torch.randn(2, 1, 28, 28)
    assert max_r(50, 4) == 9
    with torch.no_grad():
        assert tome_forward_features(vit, X, 9)[2] == [41, 32, 23, 14]
        with pytest.raises(ValueError, match="at most half"):
            tome_forward(vit, X, 10)


def test_proportional_attention_with_unit_sizes_is_plain_attention():
    q, k, v = torch.randn(3, 2, 2, 7, 4).unbind(0)
    plain = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(proportional_attention(q, k, v, torch.ones(2, 7, 1)), plain)
    out, weights = proportional_attention(q, k, v, torch.ones(2, 7, 1), return_weights=True)
    torch.testing.assert_close(out, plain)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))


def test_a_key_of_size_two_counts_as_two_copies():
    q, k, v = torch.randn(3, 1, 1, 5, 4).unbind(0)
    duplicated = [0, 1, 2, 3, 4, 4]  # the last key and value twice
    expected = F.scaled_dot_product_attention(q, k[:, :, duplicated], v[:, :, duplicated])
    size = torch.tensor([1.0, 1, 1, 1, 2])[None, :, None]
    torch.testing.assert_close(proportional_attention(q, k, v, size), expected)


def test_two_identical_tokens_merge_into_their_weighted_average():
    # tokens 0 (class), 1, 2, 3: token 2 (set A) equals token 3 (set B); the others point elsewhere
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]])
    x = torch.tensor([[[0.0], [10.0], [2.0], [4.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0]]])
    merged, new_size = merge_tokens(x, size, bipartite_soft_matching(metric, 1))
    assert merged.flatten().tolist() == [0.0, 10.0, pytest.approx((3 * 2 + 4) / 4)]
    assert new_size.flatten().tolist() == [1.0, 1.0, 4.0]


def test_the_class_token_is_protected_even_when_it_is_the_best_match():
    metric = torch.tensor([[[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 1.0]]])  # class token = token 1
    merge = bipartite_soft_matching(metric, 1)
    x = torch.arange(4.0)[None, :, None]
    assert merge(x).flatten().tolist() == [0.0, 1.0, 5.0]  # token 2 went into token 3, not 0 into 1


def test_pruning_keeps_the_class_token_and_the_most_attended_patches():
    weights = torch.zeros(1, 2, 5, 5)
    weights[:, :, 0] = torch.tensor([0.2, 0.1, 0.4, 0.0, 0.3])
    assert class_attention_keep(weights, 2).tolist() == [[0, 2, 4]]


def test_bad_inputs_raise():
    vit, X = small_vit(), torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="mode"):
        tome_forward(vit, X, 2, mode="drop")
    with pytest.raises(ValueError, match="one per layer"):
        tome_forward(vit, X, [2, 2])
    with pytest.raises(ValueError, match="one per layer"):
        tome_forward(vit, X, -1)
    with pytest.raises(ValueError, match="28"):
        tome_forward(vit, torch.randn(2, 1, 32, 32), 2)
    with pytest.raises(ValueError, match="metric must have shape"):
        bipartite_soft_matching(torch.randn(4, 3), 1)
