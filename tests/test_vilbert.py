import numpy as np
import pytest
import torch

from homl16.data import ShapesWorld
from homl16.vilbert import (
    CoAttentionLayer,
    RegionEmbedding,
    ViLBERT,
    box_cell_weights,
    mask_regions,
    masked_region_kl,
    one_word_negative,
    region_crops,
    region_features,
    spatial_encoding,
)


def test_spatial_encoding_of_known_boxes():
    boxes = torch.tensor([[0, 0, 32, 16], [16, 32, 64, 64], [0, 0, 64, 64]])
    expected = torch.tensor([[0, 0, 0.5, 0.25, 0.125], [0.25, 0.5, 1, 1, 0.375], [0, 0, 1, 1, 1]])
    torch.testing.assert_close(spatial_encoding(boxes, 64), expected)
    # non-square image: x by the width, y by the height
    torch.testing.assert_close(spatial_encoding(torch.tensor([10.0, 20, 30, 60]), (80, 40)),
                               torch.tensor([0.25, 0.25, 0.75, 0.75, 0.25]))


def test_spatial_encoding_rejects_bad_boxes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        spatial_encoding(torch.zeros(3, 5), 64)
    with pytest.raises(ValueError, match="x1 >= x0"):
        spatial_encoding(torch.tensor([10, 0, 5, 5]), 64)


def test_region_features_mean_pool_the_cells_inside_the_box():
    maps = torch.arange(16.0).view(1, 1, 4, 4)  # 4x4 grid over a 64x64 image: cells of 16 pixels
    boxes = torch.tensor([[[0, 0, 15, 15], [16, 0, 47, 15], [0, 0, 63, 63]]])
    pooled = region_features(maps, boxes, 64)[0, :, 0]
    torch.testing.assert_close(pooled, torch.tensor([0.0, 1.5, 7.5]))
    assert torch.allclose(box_cell_weights(boxes, (4, 4), 64).sum(-1), torch.ones(1, 3))


def test_region_crops_cut_the_box():
    images = torch.zeros(1, 3, 64, 64)
    images[:, 0, 10:20, 30:40] = 1.0
    crops = region_crops(images, torch.tensor([[[30, 10, 39, 19]]]), size=16, margin=0)
    assert crops.shape == (1, 1, 3, 16, 16) and torch.allclose(crops[0, 0, 0], torch.ones(16, 16))


def make_layer():
    torch.manual_seed(0)
    return CoAttentionLayer(embed_dim=16, num_heads=2, ff_dim=32).eval()


def test_co_attention_text_stream_sees_the_image_only_through_co_attention():
    layer = make_layer()
    text, visual, other_visual = torch.randn(2, 5, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    text_out, _ = layer(text, visual)
    assert not torch.allclose(text_out, layer(text, other_visual)[0], atol=1e-4)
    # swap the images of the batch: each caption's output follows its image
    swapped, _ = layer(text, visual.flip(0))
    for i in range(2):
        alone, _ = layer(text[i:i + 1], visual[1 - i:2 - i])
        torch.testing.assert_close(swapped[i:i + 1], alone)
    # cut the text -> visual co-attention: the text stream no longer depends on the image at all
    with torch.no_grad():
        layer.text_to_visual.proj.weight.zero_()
        layer.text_to_visual.proj.bias.zero_()
    torch.testing.assert_close(layer(text, visual)[0], layer(text, other_visual)[0])
    torch.testing.assert_close(layer(text, visual)[0], layer.text_block(text))
    # ... while the visual stream still depends on the text (the other co-attention)
    assert not torch.allclose(layer(text, visual)[1], layer(text.flip(0), visual)[1], atol=1e-4)


def test_co_attention_queries_one_stream_and_keys_the_other():
    layer = make_layer()
    visual_mask = torch.tensor([[1, 1, 0], [1, 1, 1]]).bool()
    out = layer(torch.randn(2, 5, 16), torch.randn(2, 3, 16), visual_mask=visual_mask, return_attention=True)
    text_weights, visual_weights = out[2], out[3]
    assert text_weights.shape == (2, 2, 5, 3) and visual_weights.shape == (2, 2, 3, 5)
    assert torch.allclose(text_weights.sum(-1), torch.ones(2, 2, 5))
    assert (text_weights[0, :, :, 2] == 0).all()  # a padded region gets no attention


def tiny_vilbert():
    torch.manual_seed(0)
    return ViLBERT(text_dim=24, feature_dim=8, embed_dim=16, depth=2, num_heads=2, ff_dim=32,
                   num_region_classes=10).eval()


def test_vilbert_alignment_comes_from_the_product_of_img_and_cls():
    model = tiny_vilbert()
    out = model(torch.randn(3, 6, 24), torch.ones(3, 6, dtype=torch.bool), torch.randn(3, 2, 8),
                torch.rand(3, 2, 5), return_attention=True)
    assert out["visual"].shape == (3, 3, 16) and out["region_logits"].shape == (3, 2, 10)
    expected = model.alignment_head(out["visual"][:, 0] * out["text"][:, 0])
    torch.testing.assert_close(out["alignment_logits"], expected)
    assert len(out["co_attention"]) == 2 and out["co_attention"][0].shape == (3, 2, 6, 3)


def test_padded_regions_change_nothing():
    model = tiny_vilbert()
    text, text_mask = torch.randn(1, 6, 24), torch.ones(1, 6, dtype=torch.bool)
    features, spatial = torch.randn(1, 2, 8), torch.rand(1, 2, 5)
    out = model(text, text_mask, features, spatial)
    padded = model(text, text_mask, torch.cat([features, torch.randn(1, 1, 8)], 1),
                   torch.cat([spatial, torch.rand(1, 1, 5)], 1), torch.tensor([[True, True, False]]))
    torch.testing.assert_close(padded["alignment_logits"], out["alignment_logits"])
    torch.testing.assert_close(padded["visual"][:, :3], out["visual"])


def test_img_token_is_the_mean_region_at_the_whole_image():
    embedding = RegionEmbedding(feature_dim=4, embed_dim=8).eval()
    features, spatial = torch.randn(2, 3, 4), torch.rand(2, 3, 5)
    tokens, mask = embedding(features, spatial)
    whole = torch.tensor([0.0, 0, 1, 1, 1]).expand(2, 1, 5)
    expected, _ = embedding(features.mean(1, keepdim=True), whole)
    torch.testing.assert_close(tokens[:, 0], expected[:, 1])
    assert mask.shape == (2, 4) and mask.all()
    with pytest.raises(ValueError, match="spatial"):
        embedding(features, torch.rand(2, 3, 4))


def test_mask_regions_masks_real_regions_only_and_at_least_one():
    features = torch.ones(50, 3, 4)
    region_mask = torch.tensor([[True, True, False]]).repeat(50, 1)
    masked_features, masked = mask_regions(features, region_mask, 0.2, torch.Generator().manual_seed(0))
    assert masked.any(1).all() and not masked[:, 2].any()
    assert (masked_features[masked] == 0).all() and (masked_features[~masked] == 1).all()


def test_masked_region_kl():
    targets = torch.softmax(torch.randn(2, 3, 10), -1)
    masked = torch.tensor([[True, False, False], [False, False, True]])
    assert masked_region_kl(targets.log(), targets, masked).abs() < 1e-6
    logits = torch.randn(2, 3, 10)
    expected = (targets[masked] * (targets[masked].log() - logits[masked].log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(masked_region_kl(logits, targets, masked), expected)


@pytest.mark.parametrize("kind", ["colour", "shape", "size", "relation"])
def test_one_word_negatives_differ_in_exactly_one_word(kind):
    rng = np.random.default_rng(0)
    for scene in ShapesWorld(64, 2, 2).scenes(20):
        negative = one_word_negative(scene.objects, kind, rng)
        words, negative_words = scene.caption.split(), negative.split()
        assert len(words) == len(negative_words)
        assert sum(a != b for a, b in zip(words, negative_words)) == 1
    with pytest.raises(ValueError, match="kind"):
        one_word_negative(scene.objects, "texture", rng)


def test_sample_pairs_labels_follow_the_caption_used():
    from homl16.vilbert import sample_pairs

    n = 40
    data = {"text": torch.arange(n).float().view(n, 1, 1).expand(n, 3, 2).clone(),
            "text_mask": torch.ones(n, 3).bool(), "negatives": -torch.ones(n, 2, 3, 2),
            "negatives_mask": torch.ones(n, 2, 3).bool(), "features": torch.randn(n, 2, 4),
            "spatial": torch.rand(n, 2, 5), "region_mask": torch.ones(n, 2).bool()}
    index = torch.arange(n)
    keep = torch.arange(n) % 4 == 0
    batch = sample_pairs(data, index, torch.Generator().manual_seed(0), 0.4, 0.3, keep=keep)
    own = batch.text[:, 0, 0] == index.float()
    assert torch.equal(batch.is_match.bool(), own) and own[keep].all()
    assert 0 < batch.is_match.sum() < n and (batch.text[:, 0, 0] == -1).any()
