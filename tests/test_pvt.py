import pytest
import torch

from homl16.pvt import (
    PVTBlock,
    PVTSegmenter,
    PyramidVisionTransformer,
    SpatialReductionAttention,
    copy_weights_from_hf,
    pvt_options_from_hf_config,
    small_hf_pvt_v2,
)


def test_sra_output_has_the_query_length_and_attends_to_reduced_tokens():
    # the chapter's numbers: a 256x192 image, stage 1 at stride 4 is a 64x48 grid = 3,072 tokens,
    # reduced 8 times per side to 8x6 = 48 keys: 147,456 scores instead of 9,437,184
    attn = SpatialReductionAttention(64, num_heads=1, sr_ratio=8)
    x = torch.randn(1, 64 * 48, 64)
    out, weights = attn(x, (64, 48), return_attention=True)
    assert out.shape == x.shape
    assert weights.shape == (1, 1, 3072, 48) and weights[0, 0].numel() == 147_456 == 3072 * 48
    assert 3072 ** 2 == 9_437_184
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 1, 3072))
    torch.testing.assert_close(attn(x, (64, 48)), out)  # fused kernel == explicit weights
    with pytest.raises(ValueError, match="grid_size"):
        attn(x, (64, 40))


def test_block_keeps_the_shape():
    block = PVTBlock(32, 2, 64, 4)
    x = torch.randn(2, 12 * 8, 32)
    assert block(x, (12, 8)).shape == x.shape
    assert PVTBlock(32, 2, 64, 4, conv_mlp=False)(x, (12, 8)).shape == x.shape


@pytest.mark.parametrize("overlap", [True, False])
def test_pyramid_shapes_of_the_chapter(overlap):
    pvt = PyramidVisionTransformer(depths=(1, 1, 1, 1), mlp_ratios=(1, 1, 1, 1), overlap=overlap)
    with torch.no_grad():
        features = pvt(torch.randn(1, 3, 256, 192))
    assert [tuple(f.shape) for f in features] == [(1, 64, 64, 48), (1, 128, 32, 24),
                                                  (1, 320, 16, 12), (1, 512, 8, 6)]
    with pytest.raises(ValueError, match="channels"):
        pvt(torch.randn(1, 1, 64, 64))


def hf_block_inputs(hf, stage=0, seed=1):
    layer = hf.encoder.layers[stage]
    size = 64 // 4
    torch.manual_seed(seed)
    return layer, torch.randn(2, size * size, layer.blocks[0].layer_norm_1.normalized_shape[0]), (size, size)


def test_sra_matches_transformers_pvt_v2_attention():
    hf = small_hf_pvt_v2()
    layer, x, (h, w) = hf_block_inputs(hf)
    hf_attention = layer.blocks[0].attention
    ours = SpatialReductionAttention(16, 1, sr_ratio=8).eval()
    copy_weights_from_hf(ours, hf_attention)
    expected, expected_weights = hf_attention(x, h, w, output_attentions=True)
    out, weights = ours(x, (h, w), return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(ours(x, (h, w)), expected)


def test_block_and_pyramid_match_transformers_pvt_v2():
    hf = small_hf_pvt_v2()
    layer, x, (h, w) = hf_block_inputs(hf)
    block = copy_weights_from_hf(PVTBlock(16, 1, 32, 8).eval(), layer.blocks[0])
    torch.testing.assert_close(block(x, (h, w)), layer.blocks[0](x, h, w)[0])

    pvt = PyramidVisionTransformer(**pvt_options_from_hf_config(hf.config)).eval()
    copy_weights_from_hf(pvt, hf)
    X = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features = pvt(X)
        expected = hf(X, output_hidden_states=True).hidden_states
    assert len(features) == len(expected) == 4
    for ours, theirs in zip(features, expected):
        torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="depth"):
        copy_weights_from_hf(PyramidVisionTransformer(embed_dims=(16, 32, 48, 64), depths=(2, 1, 1, 1),
                                                      num_heads=(1, 2, 3, 4)), hf)


def test_segmenter_gives_per_pixel_logits():
    model = PVTSegmenter(5, head_dim=16, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                         num_heads=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


def test_vit_segmenter_baseline_maps_patch_tokens_back_to_their_grid():
    from homl16.segment import ViTSegmenter

    model = ViTSegmenter(5, img_size=32, patch_size=8, head_dim=8, embed_dim=16, depth=1, num_heads=2,
                         ff_dim=16, dropout=0.0).eval()
    X = torch.randn(2, 3, 32, 32)
    assert model(X).shape == (2, 5, 32, 32)
    with torch.no_grad():  # changing one 8x8 patch changes the logits of that patch's region first
        X2 = X.clone()
        X2[:, :, :8, :8] += 1
        diff = (model(X2) - model(X)).abs().sum(1)
    assert diff[:, :8, :8].mean() > diff[:, 16:, 16:].mean()
