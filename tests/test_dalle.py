import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from homl16.dalle import (
    DalleTransformer,
    WordTokenizer,
    best_of,
    clip_similarity,
    dalle_loss,
    generate,
    sample_next,
    shapes_prompts,
    shapes_word_tokenizer,
    train_dalle,
)
from homl16.data.shapes import ShapesWorld
from homl16.vqvae import VQVAE, VectorQuantizer, codebook_usage, train_vqvae

FIT_EPOCHS, MAX_ERROR = 30, 0.0125  # pixels in [0, 1]


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return DalleTransformer(text_vocab_size=12, num_codes=16, text_length=4, image_tokens=9, embed_dim=32,
                            depth=2, num_heads=4).eval()


def test_quantizer_picks_the_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(num_codes=5, code_dim=3)
    codes = vq.codebook.weight.detach()
    ids = torch.tensor([[[0, 4], [2, 2]]])  # (1, 2, 2)
    z = (codes[ids] + 1e-4 * torch.randn(1, 2, 2, 3)).permute(0, 3, 1, 2).requires_grad_()
    z_q, found, loss = vq(z)
    assert torch.equal(found, ids)
    assert torch.allclose(z_q, codes[ids].permute(0, 3, 1, 2))
    assert loss.item() < 1e-6
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    assert torch.allclose(z.grad, weights)  # the straight-through estimator: d z_q / d z = identity


def test_quantizer_loss_is_codebook_plus_beta_commitment():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=4, code_dim=2, beta=0.25)
    z = torch.randn(2, 2, 3, 3)
    z_q, _, loss = vq(z)
    assert math.isclose(loss.item(), 1.25 * F.mse_loss(z_q, z).item(), rel_tol=1e-5)


def test_restart_dead_codes_moves_unused_codes_onto_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=4, code_dim=2)
    z = torch.full((10, 2), 7.0)
    assert vq.restart_dead_codes(z, torch.tensor([3, 0, 1, 0])) == 2
    assert (vq.codebook.weight[[1, 3]] - 7).abs().max() < 0.1
    assert (vq.codebook.weight[[0, 2]] - 7).abs().min() > 1


def patch_images(num_images=32, seed=0):
    """An easy case: 16x16 images whose 4x4 patches are each flat background, red or blue (in [0, 1])."""
    palette = torch.tensor([[0.96, 0.96, 0.96], [0.86, 0.16, 0.16], [0.16, 0.32, 0.86]])
    grid = torch.randint(0, 3, (num_images, 4, 4), generator=torch.Generator().manual_seed(seed))
    return palette[grid].permute(0, 3, 1, 2).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def test_vqvae_round_trips_after_a_short_fit():
    X = patch_images()
    torch.manual_seed(0)
    model = VQVAE(num_codes=8, code_dim=4, width=32)
    start = F.mse_loss(model.decode(model.encode(X)), X).item()
    history = train_vqvae(model, X, epochs=FIT_EPOCHS, batch_size=4, lr=3e-3, restart_every=4, device="cpu")
    ids = model.encode(X)
    assert ids.shape == (32, 4, 4) and ids.dtype == torch.long
    reconstruction = model.decode(ids)
    error = F.mse_loss(reconstruction, X).item()
    assert error < MAX_ERROR < start  # the three patch colours come back
    assert torch.allclose(model.decode(ids.flatten(1)), reconstruction)  # (B, G*G) works too
    assert torch.allclose(model(X)[0].clamp(0, 1), reconstruction, atol=1e-5)
    usage, perplexity = codebook_usage(ids, model.num_codes)
    assert usage >= 3 / 8 and perplexity >= 2.5  # at least the three patch kinds get their own codes
    assert len(history["codebook_usage"]) == FIT_EPOCHS and 0 < history["codebook_usage"][-1] <= 1
    assert history["restarted"] > 0 and history["reconstruction_mse"][-1] < history["reconstruction_mse"][0]


def test_codebook_usage_and_perplexity():
    assert codebook_usage(torch.tensor([0, 1, 2, 3]), 8) == pytest.approx((0.5, 4.0))
    assert codebook_usage(torch.tensor([[5, 5], [5, 5]]), 8) == pytest.approx((0.125, 1.0))
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([9]), 8)


def test_vqvae_rejects_bad_input():
    model = VQVAE(num_codes=8, code_dim=4, width=8)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="ids must be in"):
        model.decode(torch.full((1, 4, 4), 8))
    with pytest.raises(ValueError, match="square grid"):
        model.decode(torch.zeros(1, 5, dtype=torch.long))


def test_causal_mask_hides_later_tokens():
    model = tiny_transformer()
    text = torch.randint(0, 12, (2, 4))
    image = torch.randint(0, 16, (2, 8))
    logits = model(text, image)
    assert logits.shape == (2, 9, 16)
    changed = image.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 16
    new_logits = model(text, changed)
    # logits j predict image token j from image tokens < j: token 5 first shows in logits 6
    assert torch.allclose(new_logits[:, :6], logits[:, :6], atol=1e-6)
    assert not torch.allclose(new_logits[:, 6:], logits[:, 6:], atol=1e-4)
    # a shorter prefix gives the same logits for the positions it covers
    assert torch.allclose(model(text, image[:, :3]), logits[:, :4], atol=1e-6)
    other_text = text.clone()
    other_text[:, 0] = (other_text[:, 0] + 1) % 12
    assert not torch.allclose(model(other_text, image)[:, 0], logits[:, 0], atol=1e-4)  # the text is seen


def test_dalle_loss_is_next_image_token_cross_entropy():
    model = tiny_transformer()
    text, image = torch.randint(0, 12, (3, 4)), torch.randint(0, 16, (3, 9))
    logits = model(text, image[:, :-1])
    expected = sum(F.cross_entropy(logits[:, j], image[:, j]) for j in range(9)) / 9
    assert math.isclose(dalle_loss(model, text, image).item(), expected.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match="at most 8"):
        model(text, image)


def test_sampling_respects_top_k_and_temperature():
    torch.manual_seed(0)
    logits = torch.randn(4, 20)
    top3 = logits.topk(3, dim=1).indices
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.5, top_k=3, generator=generator) for _ in range(300)], dim=1)
    assert (draws[:, :, None] == top3[:, None]).any(dim=2).all()  # never outside the top 3
    assert all(len(row.unique()) == 3 for row in draws)  # and every one of them is drawn
    assert torch.equal(sample_next(logits, 1.0, top_k=1), logits.argmax(1))
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(1))
    everything = torch.stack([sample_next(logits, 5.0, generator=generator) for _ in range(300)], dim=1)
    assert len(everything[0].unique()) > 10  # no top-k and a high temperature: almost any id
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, 1.0, top_k=21)


def test_generate_gives_valid_reproducible_tokens():
    model = tiny_transformer()
    text = torch.randint(0, 12, (5, 4))
    ids = generate(model, text, temperature=1.0, top_k=4, seed=3, device="cpu")
    assert ids.shape == (5, 9) and ids.min() >= 0 and ids.max() < 16
    assert torch.equal(ids, generate(model, text, temperature=1.0, top_k=4, seed=3, device="cpu"))
    greedy = generate(model, text, temperature=0.0, device="cpu")
    assert torch.equal(model(text, greedy[:, :-1]).argmax(-1), greedy)  # each token is argmax given the rest


def test_word_tokenizer_round_trip_and_closed_vocabulary():
    tokenizer = shapes_word_tokenizer()
    prompts = ["a red circle", "a small blue square left of a large green triangle"]
    ids = tokenizer.encode(prompts, 10)
    assert ids.shape == (2, 10) and (ids[0, 3:] == 0).all() and (ids[1] != 0).all()
    assert tokenizer.decode(ids) == prompts
    with pytest.raises(ValueError, match="unknown words"):
        tokenizer.encode("a pink circle", 10)
    with pytest.raises(ValueError, match="more than length"):
        tokenizer.encode(prompts[1], 5)
    assert len(WordTokenizer(["a", "b", "a"])) == 3  # padding + 2 distinct words


def test_shapes_prompts_always_name_colour_and_shape():
    world = ShapesWorld(image_size=32, min_objects=1, max_objects=2)
    scenes = world.scenes(40, seed=0)
    tokenizer = shapes_word_tokenizer()
    for scene, prompt in zip(scenes, shapes_prompts(scenes, seed=0)):
        tokenizer.encode(prompt, 10)  # every word is in the vocabulary, at most 10 words
        for obj in scene.objects:
            assert obj.colour in prompt


def test_best_of_keeps_the_best_of_each_group():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    assert best_of(scores, 2).tolist() == [[1, 2], [0, 2]]
    assert best_of(scores, 4).tolist() == [[1], [2]]
    assert best_of(scores, 1).tolist() == [[0, 1, 2, 3]] * 2
    with pytest.raises(ValueError, match="divide"):
        best_of(scores, 3)


def test_clip_similarity_scores_each_image_against_its_own_prompt():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 20, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 1,
                     "bos_token_id": 0, "pad_token_id": 1},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2}, projection_dim=8)
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()

    class Processor:  # a made-up token, then end-of-text; CLIP's usual image mean and std
        image_processor = SimpleNamespace(image_mean=[0.48, 0.46, 0.41], image_std=[0.27, 0.26, 0.28])

        def __call__(self, text, return_tensors, padding, truncation=False):
            return {"input_ids": torch.tensor([[0, 2 + len(t) % 10, 1] for t in text])}

    processor = Processor()
    images = torch.rand(3, 3, 16, 16)  # in [0, 1], as the VQ-VAE decodes them
    prompts = ["a red circle", "a blue square", "a red circle"]
    scores = clip_similarity(clip, processor, images, prompts)
    mean, std = torch.tensor([0.48, 0.46, 0.41]), torch.tensor([0.27, 0.26, 0.28])
    pixel_values = (images - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        image_embeds = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
        text_ids = processor(prompts, "pt", True)
        text_embeds = F.normalize(clip.get_text_features(**text_ids).pooler_output, dim=-1)
    assert torch.allclose(scores, (image_embeds * text_embeds).sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="prompts"):
        clip_similarity(clip, processor, images, prompts[:2])


def test_train_dalle_lowers_the_loss():
    model = tiny_transformer()
    text, image = torch.randint(0, 12, (32, 4)), torch.randint(0, 4, (32, 9))  # only 4 of the 16 codes occur
    history = train_dalle(model, text, image, epochs=3, batch_size=8, lr=3e-3, device="cpu")
    assert len(history["loss"]) == 3 and len(history["step_loss"]) == 12
    assert history["loss"][-1] < history["loss"][0]
