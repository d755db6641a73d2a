import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from homl16.vit import PatchEmbedding, ViT, copy_weights_from_hf, hf_vit_config, to_hf_vit


def test_patch_embedding_gives_the_chapters_196_patches_of_768_values():
    patch_embed = PatchEmbedding(in_channels=3, embed_dim=768, patch_size=16)
    tokens = patch_embed(torch.randn(2, 3, 224, 224))
    assert tokens.shape == (2, 196, 768)
    assert patch_embed.conv2d.weight[0].numel() == 16 * 16 * 3 == 768


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch():
    patch_embed = PatchEmbedding(in_channels=3, embed_dim=8, patch_size=4)
    X = torch.randn(1, 3, 8, 8)
    second_patch = X[0, :, 0:4, 4:8].reshape(-1)  # row 0, column 1
    expected = patch_embed.conv2d.weight.reshape(8, -1) @ second_patch + patch_embed.conv2d.bias
    torch.testing.assert_close(patch_embed(X)[0, 1], expected, rtol=1e-5, atol=1e-5)


def test_vit_book_signature_and_output_shapes():
    vit = ViT(img_size=32, patch_size=8, in_channels=3, num_classes=5, embed_dim=32, depth=2,
              num_heads=4, ff_dim=64, dropout=0.1)
    X = torch.randn(3, 3, 32, 32)
    assert vit(X).shape == (3, 5)
    logits, maps = vit(X, return_attention=True)
    assert logits.shape == (3, 5) and len(maps) == 2
    assert maps[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(3, 4, 17))


def test_attention_weights_path_matches_the_fused_kernel():
    vit = ViT(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=16, depth=2,
              num_heads=2, ff_dim=32, dropout=0.0).eval()
    X = torch.randn(2, 1, 16, 16)
    fused = vit(X)
    with_maps, _ = vit(X, return_attention=True)
    torch.testing.assert_close(fused, with_maps, rtol=1e-5, atol=1e-5)


def test_vit_matches_transformers_vit_model_with_copied_weights():
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=3,
                       num_attention_heads=4, intermediate_size=96)
    hf = ViTModel(config, add_pooling_layer=False).eval()
    vit = ViT(img_size=32, patch_size=8, in_channels=3, num_classes=2, embed_dim=48, depth=3,
              num_heads=4, ff_dim=96, dropout=0.0).eval()
    copy_weights_from_hf(vit, hf)
    X = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=X).last_hidden_state
        torch.testing.assert_close(vit.forward_features(X), expected, rtol=1e-5, atol=1e-5)
        tokens, _ = vit.forward_features(X, return_attention=True)
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth, embed_dim, message", [(2, 16, "depth"), (1, 32, "sizes differ")])
def test_copy_weights_rejects_a_different_architecture(depth, embed_dim, message):
    hf = ViTModel(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    vit = ViT(img_size=16, patch_size=8, embed_dim=embed_dim, depth=depth, num_heads=2, ff_dim=32)
    with pytest.raises(ValueError, match=message):
        copy_weights_from_hf(vit, hf)


@pytest.mark.parametrize("X, message", [
    (torch.randn(1, 3, 30, 32), "must be 32x32"),
    (torch.randn(1, 1, 32, 32), "3 channels"),
    (torch.randn(0, 3, 32, 32), "empty batch"),
    (torch.randn(3, 32, 32), "shape"),
])
def test_vit_rejects_bad_images_with_a_clear_message(X, message):
    vit = ViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, ff_dim=32)
    with pytest.raises(ValueError, match=message):
        vit(X)


def test_sizes_not_divisible_by_the_patch_size_are_rejected():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViT(img_size=30, patch_size=16)
    vit = ViT(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, ff_dim=32)
    with pytest.raises(ValueError, match="image height=30 must be divisible by patch_size"):
        vit(torch.randn(1, 3, 30, 32), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ViT(img_size=32, patch_size=8, embed_dim=30, num_heads=4)


def test_vit_rejects_non_tensors():
    vit = ViT(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, ff_dim=32)
    with pytest.raises(TypeError, match="torch.Tensor"):
        vit([[1.0]])


def test_vit_matches_transformers_classifier_logits_with_copied_weights():
    torch.manual_seed(1)
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=3)
    hf = ViTForImageClassification(config).eval()
    vit = ViT(img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=2, num_heads=2,
              ff_dim=64, dropout=0.0).eval()
    copy_weights_from_hf(vit, hf)
    X = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit(X), hf(pixel_values=X).logits, rtol=1e-5, atol=1e-5)


def test_to_hf_vit_reads_the_sizes_the_vit_keeps_and_computes_what_it_computes():
    torch.manual_seed(2)
    vit = ViT(img_size=16, patch_size=4, in_channels=1, num_classes=0, embed_dim=32, depth=2, num_heads=4,
              ff_dim=48, dropout=0.0).eval()
    config = hf_vit_config(vit)
    assert (config.image_size, config.patch_size, config.num_channels, config.hidden_size) == (16, 4, 1, 32)
    assert (config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (2, 4, 48)
    hf = to_hf_vit(vit)
    X = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=X).last_hidden_state, vit.forward_features(X),
                                   rtol=1e-5, atol=1e-5)
    back = copy_weights_from_hf(ViT(img_size=16, patch_size=4, in_channels=1, num_classes=0, embed_dim=32,
                                    depth=2, num_heads=4, ff_dim=48, dropout=0.0), hf).eval()
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features(X), vit.forward_features(X), rtol=1e-5, atol=1e-5)


def test_forward_visible_runs_the_encoder_on_the_kept_patches_only():
    torch.manual_seed(0)
    vit = ViT(img_size=8, patch_size=4, in_channels=1, num_classes=0, embed_dim=16, depth=2, num_heads=2,
              ff_dim=32, dropout=0.0).eval()
    X = torch.randn(3, 1, 8, 8)
    every = torch.arange(4).expand(3, -1)
    torch.testing.assert_close(vit.forward_visible(X, every), vit.forward_features(X))
    keep = torch.tensor([[2, 0], [1, 3], [3, 2]])
    # the same as attending over the kept tokens of the full sequence only
    tokens = vit.forward_visible(X, keep)
    assert tokens.shape == (3, 3, 16)
    swapped = vit.forward_visible(X, keep.flip(1))
    torch.testing.assert_close(swapped[:, 1:], tokens[:, 1:].flip(1))
    with pytest.raises(ValueError, match="keep must index the 4 patches"):
        vit.forward_visible(X, torch.tensor([[0, 4]] * 3))
