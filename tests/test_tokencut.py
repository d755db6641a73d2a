import numpy as np
import pytest
import scipy.linalg
import torch

from homl16 import tokencut
from homl16.vit import ViT


def dense_partition(W):
    """The reference: scipy's dense generalized solver on (D - W) x = lambda D x, TokenCut's own call."""
    D = np.diag(W.sum(1))
    values, vectors = scipy.linalg.eigh(D - W, D)
    x = vectors[:, 1]
    above = x > x.mean()
    return above == above[np.abs(x).argmax()], values


@pytest.mark.parametrize("seed", range(8))
def test_the_cut_equals_a_dense_generalized_eigensolver_on_random_graphs(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(12, 3, generator=generator)  # few dims: cosines spread on both sides of tau
    W = tokencut.affinity_graph(features)
    expected, values = dense_partition(W.numpy())
    assert values[2] - values[1] > 1e-6, "the second eigenvalue must be simple for the test to be defined"
    x = tokencut.second_smallest_eigenvector(W)
    D = torch.diag(W.sum(1))
    residual = (D - W) @ x - values[1] * D @ x  # x solves the generalized problem for lambda_2
    assert residual.abs().max() < 1e-8
    np.testing.assert_array_equal(tokencut.foreground(x).numpy(), expected)


def test_a_batch_is_cut_image_by_image():
    features = torch.randn(5, 16, 8, generator=torch.Generator().manual_seed(0))
    masks = tokencut.tokencut(features, (4, 4))
    assert masks.shape == (5, 4, 4) and masks.dtype == torch.bool
    for i in range(5):
        torch.testing.assert_close(masks[i], tokencut.tokencut(features[i], (4, 4)))


def test_the_foreground_does_not_depend_on_the_eigenvectors_sign():
    x = torch.tensor([0.9, 0.1, -0.2, -0.3, 0.05])
    torch.testing.assert_close(tokencut.foreground(x), tokencut.foreground(-x))
    assert tokencut.foreground(x).tolist() == [True, False, False, False, False]


def test_two_clusters_are_cut_apart():
    generator = torch.Generator().manual_seed(0)
    # a small object (5 patches) and a large background (11 patches): two tight clusters of directions
    centers = torch.eye(8)[:2]
    labels = torch.tensor([1] * 5 + [0] * 11)[torch.randperm(16, generator=generator)]
    features = centers[labels] + 0.05 * torch.randn(16, 8, generator=generator)
    mask = tokencut.tokencut(features, (4, 4)).flatten()
    assert mask.tolist() == (labels == 1).tolist() or mask.tolist() == (labels == 0).tolist()


def test_the_patch_keys_are_the_last_blocks_keys():
    torch.manual_seed(0)
    vit = ViT(img_size=8, patch_size=4, in_channels=1, num_classes=0, embed_dim=8, depth=2, num_heads=2,
              ff_dim=16, dropout=0.0).eval()
    X = torch.rand(3, 1, 8, 8)
    Z = vit.patch_embed(X)
    Z = torch.cat([vit.prefix_tokens(3), Z], 1) + vit.pos_embed
    Z = vit.blocks[0](Z)
    expected = vit.blocks[1].attn.kv(vit.blocks[1].norm1(Z))[..., :8]  # the keys come first in kv
    torch.testing.assert_close(tokencut.patch_keys(vit, X), expected[:, 1:])


def test_upsample_mask_spreads_each_patch_over_its_pixels():
    mask = torch.tensor([[[True, False], [False, True]]])
    up = tokencut.upsample_mask(mask, (4, 6))
    assert up.shape == (1, 4, 6)
    assert up[0, :2, :3].all() and not up[0, :2, 3:].any() and up[0, 2:, 3:].all()


def test_mask_iou():
    a = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    b = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 0]], [[0, 1], [0, 0]]])
    torch.testing.assert_close(tokencut.mask_iou(a, b), torch.tensor([1 / 3, 1.0, 0.0], dtype=torch.float64))


def test_attention_mass_mask_keeps_the_fewest_patches_holding_the_mass():
    attention = torch.tensor([[0.5, 0.05], [0.3, 0.15]])
    assert tokencut.attention_mass_mask(attention, 0.6).tolist() == [[True, False], [True, False]]
    assert tokencut.attention_mass_mask(attention, 0.8).tolist() == [[True, False], [True, False]]
    assert tokencut.attention_mass_mask(attention * 7, 0.81).tolist() == [[True, False], [True, True]]
    assert tokencut.attention_mass_mask(attention, 1.0).all()
