import math

import pytest
import torch
from transformers.models.perceiver import modeling_perceiver as hf_perceiver

from homl16.perceiver import (
    CrossAttentionBlock,
    FourierPositionalEncoding,
    MultimodalInputs,
    PerceiverClassifier,
    PerceiverEncoder,
    PerceiverIODecoder,
    PerceiverIOSegmenter,
    attention_score_counts,
    count_parameters,
    fourier_features,
    grid_positions,
    hf_perceiver_config,
    hf_perceiver_latents,
    measure_input_scaling,
    saved_activation_bytes,
    small_hf_perceiver_fourier,
    to_hf_perceiver,
)


def test_fourier_encoding_has_the_chapters_29_dims_for_rgb_pixels():
    encoding = FourierPositionalEncoding(224, num_bands=6)
    assert encoding.output_dim == 3 + 2 * (2 * 6 + 1) == 29
    tokens = encoding(torch.rand(2, 3, 224, 224))
    assert tokens.shape == (2, 224 * 224, 29)
    assert FourierPositionalEncoding(14, num_bands=6, in_channels=1).output_dim == 27


def test_fourier_features_values_at_known_coordinates():
    positions = torch.tensor([[0.0, 1.0], [-1.0, 0.5]])
    features = fourier_features(positions, num_bands=3, max_resolution=8)  # frequencies 1, 2.5, 4
    assert features.shape == (2, 2 * (2 * 3 + 1))
    assert torch.equal(features[:, :2], positions)  # raw coordinates first
    expected_sin_y = torch.sin(math.pi * torch.tensor([1.0, 2.5, 4.0]) * 0.5)
    assert torch.allclose(features[1, 2 + 3:2 + 6], expected_sin_y, atol=1e-6)  # sin of x_2 = 0.5
    assert torch.allclose(features[0, 2:5], torch.zeros(3), atol=1e-6)  # sin(π f 0) = 0
    # sin(π f 1) for f = 1, 2.5, 4
    assert torch.allclose(features[0, 5:8], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(features[0, 8:11], torch.ones(3))  # cos(0) = 1
    with pytest.raises(ValueError, match="num_bands"):
        fourier_features(positions, 0, 8)


def test_fourier_features_and_positions_equal_transformers():
    encoding = hf_perceiver.PerceiverFourierPositionEncoding(num_bands=6, max_resolution=(14, 10))
    reference = encoding([14, 10], batch_size=1, device="cpu", dtype=torch.float32)[0]
    assert torch.allclose(fourier_features(grid_positions((14, 10)), 6, (14, 10)), reference, atol=1e-6)


def test_perceiver_encoder_matches_transformers_perceiver_model():
    torch.manual_seed(0)
    model = PerceiverClassifier(10, in_channels=3, num_latents=8, latent_dim=32, num_blocks=3,
                                self_attends_per_block=2, num_self_attention_heads=4,
                                num_cross_attention_heads=2,
                                cross_attention_widening_factor=2).eval()
    with torch.no_grad():  # LayerNorms start at constants: randomise everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    config = hf_perceiver_config(model)
    sizes = (config.num_latents, config.d_latents, config.num_blocks, config.num_cross_attention_heads)
    assert sizes == (8, 32, 3, 2)
    hf = to_hf_perceiver(model)
    head = count_parameters(model.norm) + count_parameters(model.head)
    assert count_parameters(hf) == count_parameters(model) - head
    images = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        ours = model.encoder(model.encode_pixels(images))
        theirs = hf_perceiver_latents(hf, images)
    assert torch.allclose(ours, theirs, atol=1e-4)
    with pytest.raises(ValueError, match="cross_attend_every_block"):
        hf_perceiver_config(PerceiverEncoder(5, cross_attend_every_block=True))


def test_weight_sharing_and_repeated_cross_attention():
    shared = PerceiverEncoder(5, num_blocks=4, cross_attend_every_block=True, share_weights=True)
    unshared = PerceiverEncoder(5, num_blocks=4, cross_attend_every_block=True, share_weights=False)
    # the first cross-attention has its own weights, the later ones share one
    assert (len(shared.cross_attends), len(shared.latent_transformers)) == (2, 1)
    assert (len(unshared.cross_attends), len(unshared.latent_transformers)) == (4, 4)
    assert count_parameters(shared) < count_parameters(unshared)
    x = torch.randn(2, 7, 5)
    assert shared(x).shape == unshared(x).shape == (2, 32, 64)
    latents, weights = shared(x, return_attention=True)
    assert weights.shape == (2, 1, 32, 7) and torch.allclose(weights.sum(-1), torch.ones(2, 1, 32))


def test_encoder_output_does_not_depend_on_input_order():
    torch.manual_seed(0)
    encoder = PerceiverEncoder(6, num_latents=4, latent_dim=16, num_self_attention_heads=2).eval()
    x = torch.randn(1, 20, 6)
    with torch.no_grad():
        assert torch.allclose(encoder(x), encoder(x[:, torch.randperm(20)]), atol=1e-5)


def test_perceiver_io_output_length_equals_number_of_queries():
    decoder = PerceiverIODecoder(query_dim=16, latent_dim=32, out_dim=3, num_heads=2)
    latents = torch.randn(2, 8, 32)
    for num_queries in (1, 5, 100):
        assert decoder(torch.randn(2, num_queries, 16), latents).shape == (2, num_queries, 3)
    segmenter = PerceiverIOSegmenter(16, num_classes=5, num_latents=8, latent_dim=32, num_blocks=1)
    assert segmenter.output_queries(2).shape == (2, 256, 64)
    assert segmenter(torch.rand(2, 3, 16, 16)).shape == (2, 5, 16, 16)


def test_cross_attention_block_reads_a_context_of_another_width():
    block = CrossAttentionBlock(8, 4, num_heads=2, use_query_residual=False)
    out = block(torch.randn(3, 5, 8), torch.randn(3, 6, 4))
    assert out.shape == (3, 5, 8)
    with pytest.raises(ValueError, match="context"):
        block(torch.randn(3, 5, 8), torch.randn(6, 4))


def test_multimodal_inputs_pad_with_a_learned_modality_embedding():
    inputs = MultimodalInputs({"image": 29, "text": 16}, min_padding=4)
    image, text = torch.randn(2, 10, 29), torch.randn(2, 3, 16)
    tokens = inputs({"image": image, "text": text})
    assert inputs.dim == 33 and tokens.shape == (2, 13, 33)
    assert torch.equal(tokens[:, :10, :29], image) and torch.equal(tokens[:, 10:, :16], text)
    assert torch.equal(tokens[0, 10, 16:], inputs.padding["text"].detach())
    with pytest.raises(ValueError, match="channels"):
        inputs({"image": image, "text": torch.randn(2, 3, 5)})


def test_attention_score_counts_of_the_chapter():
    counts = attention_score_counts(224 * 224, 512)
    assert counts["cross_attention"] == 50_176 * 512 == 25_690_112
    assert counts["self_attention"] == 50_176 ** 2 == 2_517_630_976


def test_measured_cost_grows_linearly_in_the_inputs_for_the_perceiver():
    torch.manual_seed(0)
    models = {"perceiver": PerceiverEncoder(8, num_latents=16, latent_dim=32, num_blocks=1,
                                            self_attends_per_block=1)}
    rows = measure_input_scaling([256, 1024, 4096], models, input_dim=8, repeats=1)
    memory = [row["bytes"] for row in rows]
    growth = (memory[2] - memory[1]) / (memory[1] - memory[0])  # 4 if linear (a + b M), 16 if quadratic
    assert 3.5 < growth < 4.5
    assert all(row["seconds"] > 0 for row in rows)


class CrossAttentionOnly(torch.nn.Module):
    """8 queries attend to a context; ``explicit=True`` materialises the attention weights."""

    def __init__(self, explicit):
        super().__init__()
        self.block, self.explicit = CrossAttentionBlock(16, 16), explicit
        self.queries = torch.randn(1, 8, 16)

    def forward(self, context):
        out = self.block(self.queries, context, return_attention=self.explicit)
        return out[0] if self.explicit else out


def test_saved_activation_bytes_sees_the_explicit_attention_matrix():
    context = torch.randn(1, 4000, 16)
    fused, explicit = (saved_activation_bytes(CrossAttentionOnly(e), context) for e in (False, True))
    # the (1, 1, 8, 4000) float32 weights, less the log-sum-exp that SDPA keeps instead
    assert explicit - fused > 0.99 * 8 * 4000 * 4


def test_book_path_small_perceiver_fourier_runs_offline():
    model, processor = small_hf_perceiver_fourier(num_labels=3, num_latents=4, d_latents=16,
                                                  num_self_attends_per_block=1)
    assert model.perceiver.input_preprocessor.num_channels == 3 + 2 * (2 * 64 + 1)  # 64 bands
    pixel_values = processor(images=[torch.rand(3, 300, 300).numpy()], return_tensors="pt",
                             do_rescale=False).pixel_values
    assert pixel_values.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(inputs=pixel_values).logits.shape == (1, 3)


def test_inputs_are_checked():
    model = PerceiverClassifier(8, in_channels=1, num_latents=4, latent_dim=16, num_blocks=1)
    with pytest.raises(ValueError, match="1 channels"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="8x8"):
        model(torch.randn(2, 1, 9, 9))
    with pytest.raises(ValueError, match="channels"):
        model.encoder(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="positive"):
        grid_positions((0, 3))
