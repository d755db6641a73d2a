import pytest
import torch

from homl16.probe import linear_probe_accuracy, pooled_features, probe_accuracy
from homl16.vit import ViT


def small_vit():
    torch.manual_seed(0)
    return ViT(img_size=8, patch_size=4, in_channels=1, num_classes=0, embed_dim=16, depth=1, num_heads=2,
               ff_dim=32, dropout=0.0)


def test_pooled_features_are_the_mean_of_the_patch_tokens():
    vit, X = small_vit(), torch.randn(5, 1, 8, 8)
    tokens = vit.eval().forward_features(X)
    torch.testing.assert_close(pooled_features(vit, X, batch_size=2, device="cpu"), tokens[:, 1:].mean(1))


def test_a_linear_probe_separates_separable_features_and_not_noise():
    torch.manual_seed(0)
    labels = torch.arange(200) % 2
    separable = torch.randn(200, 4) + 3 * labels[:, None].float()
    assert linear_probe_accuracy(separable[:100], labels[:100], separable[100:], labels[100:]) > 0.95
    noise = torch.randn(200, 4)
    assert linear_probe_accuracy(noise[:100], labels[:100], noise[100:], labels[100:]) < 0.75


def test_probe_accuracy_runs_end_to_end():
    X, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 2
    assert 0.0 <= probe_accuracy(small_vit(), X[:20], y[:20], X[20:], y[20:], device="cpu") <= 1.0


def test_linear_probe_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="labels"):
        linear_probe_accuracy(torch.randn(4, 3), torch.arange(3), torch.randn(2, 3), torch.arange(2))
    with pytest.raises(ValueError, match="differ in size"):
        linear_probe_accuracy(torch.randn(4, 3), torch.arange(4), torch.randn(2, 5), torch.arange(2))
