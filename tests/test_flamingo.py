import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from homl16.data.shapes import ShapeObject
from homl16.flamingo import (
    Flamingo,
    FlamingoLayer,
    GatedCrossAttentionDense,
    PerceiverResampler,
    answer,
    few_shot_answers,
    interleaved_ids,
    media_attention_mask,
    media_positions,
    sample_episodes,
    text_episode_ids,
    train_flamingo,
)
from homl16.show_attend_tell import Vocabulary

VOCAB, DIM, FEATURE_DIM = 20, 32, 24
IMAGE, EOC = VOCAB, VOCAB + 1


def small_lm(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=DIM, n_layer=2, n_head=4,
                        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config).eval()


def small_flamingo(seed=0):
    lm = small_lm(seed)
    reference = small_lm(seed)  # an untouched copy of the same frozen LM
    torch.manual_seed(seed + 1)
    return Flamingo(lm, FEATURE_DIM, num_latents=4, resampler_depth=1, num_heads=4), reference


def interleaved_batch():
    """Two sequences with two images each: text, <image>, text, <image>, text."""
    torch.manual_seed(3)
    ids = torch.randint(3, VOCAB, (2, 12))
    ids[:, 2], ids[:, 7] = IMAGE, IMAGE
    ids[:, 6] = EOC
    return ids, torch.randn(2, 2, 1, 5, FEATURE_DIM)


def open_gates(model, value=1.0):
    for layer in model.layers:
        layer.xattn.attn_gate.data.fill_(value)
        layer.xattn.ff_gate.data.fill_(value)


def test_blocks_are_wrapped_in_place():
    model, reference = small_flamingo()
    assert len(model.layers) == len(reference.transformer.h) == 2
    assert all(isinstance(layer, FlamingoLayer) for layer in model.lm.transformer.h)
    assert torch.equal(model.gates(), torch.zeros(2, 2))


def test_closed_gates_give_the_frozen_lm_logits_exactly():
    model, reference = small_flamingo()
    text = torch.randint(0, VOCAB, (3, 10))
    features = torch.randn(3, 1, 1, 5, FEATURE_DIM)
    with torch.no_grad():
        expected = reference(text).logits
        assert torch.equal(model(text)[..., :VOCAB], expected)
        assert torch.equal(model(text, features)[..., :VOCAB], expected)
        # with images in the sequence: the frozen LM fed the same (special-token) embeddings
        ids, features = interleaved_batch()
        logits = model(ids, features)
        assert torch.equal(logits[..., :VOCAB], reference(inputs_embeds=model.embed(ids)).logits)
        assert torch.equal(logits, model(ids, torch.randn_like(features)))  # the image has no effect yet


def test_open_gates_let_the_images_in():
    model, _ = small_flamingo()
    open_gates(model)
    ids, features = interleaved_batch()
    with torch.no_grad():
        first, second = model(ids, features), model(ids, torch.randn_like(features))
    assert not torch.allclose(first[:, 2:], second[:, 2:])
    assert torch.equal(first[:, :2], second[:, :2])  # tokens before the first image never see one


def test_media_positions_and_mask():
    ids = torch.tensor([[5, IMAGE, 6, 7, IMAGE, 8]])
    assert media_positions(ids, IMAGE).tolist() == [[0, 1, 1, 1, 2, 2]]
    mask = media_attention_mask(ids, IMAGE, num_media=2, num_latents=3)
    assert mask.shape == (1, 1, 6, 6)
    expected = torch.tensor([[0] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    with pytest.raises(ValueError, match="<image>"):
        media_attention_mask(ids, IMAGE, num_media=1, num_latents=3)


def test_a_token_sees_only_its_latest_preceding_image():
    torch.manual_seed(0)
    layer = GatedCrossAttentionDense(DIM, 4)
    layer.attn_gate.data.fill_(1.0)
    ids = torch.tensor([[5, IMAGE, 6, 7, IMAGE, 8, 9]])
    mask = media_attention_mask(ids, IMAGE, num_media=2, num_latents=3)
    x, visual = torch.randn(1, 7, DIM), torch.randn(1, 6, DIM)
    changed_first, changed_second = visual.clone(), visual.clone()
    changed_first[:, :3] += 1.0  # the latents of image 1
    changed_second[:, 3:] += 1.0  # the latents of image 2
    with torch.no_grad():
        out, out_first, out_second = (layer(x, v, mask) for v in (visual, changed_first, changed_second))
    diff_first = (out - out_first).abs().amax(dim=-1)[0]
    diff_second = (out - out_second).abs().amax(dim=-1)[0]
    assert torch.all(diff_first[1:4] > 0) and torch.all(diff_first[[0, 4, 5, 6]] == 0)
    assert torch.all(diff_second[4:] > 0) and torch.all(diff_second[:4] == 0)
    assert torch.equal(out[0, 0], x[0, 0] + layer.ff_gate.tanh() * layer.mlp(layer.norm_ff(x[0, :1]))[0])


def test_frozen_parts_get_no_gradient_and_do_not_change():
    model, _ = small_flamingo()
    frozen = {name: p.clone() for name, p in model.lm.named_parameters() if not p.requires_grad}
    trainable = {name: p.clone() for name, p in model.named_parameters() if p.requires_grad}
    assert len(frozen) > 0 and all(".xattn." not in name for name in frozen)
    assert all(name.startswith(("resampler.", "special_embed.")) or ".xattn." in name for name in trainable)
    ids, features = interleaved_batch()
    model.train()
    assert not model.lm.training and model.layers[0].xattn.training
    model(ids, features).sum().backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(layer.xattn.attn_gate.grad.abs().item() > 0 for layer in model.layers)
    # a few optimiser steps on a batch of episodes change the new parts only
    texts = [["1 2", "3 4", "5 6"], ["7", "8", "9"]]
    vocabulary = Vocabulary(["1 2 3 4 5 6 7 8 9 ."])
    assert len(vocabulary) <= VOCAB
    episode_ids = interleaved_ids(texts, vocabulary, IMAGE, EOC)
    history = train_flamingo(model, episode_ids, torch.tensor([[0, 1, 2], [3, 4, 5]]),
                             torch.randn(6, 1, 5, FEATURE_DIM), steps=3, batch_size=2, device="cpu")
    assert history["gates"].shape == (3, 2, 2)
    named = dict(model.named_parameters())
    assert all(torch.equal(named[f"lm.{name}"], value) for name, value in frozen.items())
    assert any(not torch.equal(named[name], value) for name, value in trainable.items())
    assert history["gates"][-1].abs().sum() > 0  # the gates have started to open


def test_perceiver_resampler_shapes_and_checks():
    resampler = PerceiverResampler(FEATURE_DIM, DIM, num_latents=6, depth=2, num_heads=4, max_frames=2)
    out = resampler(torch.randn(3, 4, 2, 5, FEATURE_DIM))  # 3 sequences, 4 images, 2 frames, 5 tokens
    assert out.shape == (3, 4, 6, DIM)
    # each image is resampled on its own: changing image 0 leaves the latents of image 1 alone
    x = torch.randn(1, 2, 1, 5, FEATURE_DIM)
    y = x.clone()
    y[:, 0] += 1
    assert torch.equal(resampler(x)[:, 1], resampler(y)[:, 1])
    assert not torch.allclose(resampler(x)[:, 0], resampler(y)[:, 0])
    with pytest.raises(ValueError, match="max_frames"):
        resampler(torch.randn(1, 1, 3, 5, FEATURE_DIM))
    with pytest.raises(ValueError, match="channels"):
        resampler(torch.randn(1, 1, 1, 5, FEATURE_DIM + 1))
    with pytest.raises(ValueError, match="shape"):
        resampler(torch.randn(1, 5, FEATURE_DIM))


def test_input_checks():
    model, _ = small_flamingo()
    ids, features = interleaved_batch()
    with pytest.raises(ValueError, match="ids must be in"):
        model(ids + VOCAB, features)
    with pytest.raises(ValueError, match="batch sizes differ"):
        model(ids, features[:1])
    with pytest.raises(ValueError, match="images"):
        model(ids, features[:, :1])
    objects = [ShapeObject("circle", "red", "small", (0, 0), 1)] * 3
    episodes = sample_episodes(objects, 2, shots=2)
    with pytest.raises(ValueError, match="shots"):
        features = torch.randn(3, 1, 5, FEATURE_DIM)
        few_shot_answers(model, episodes, features, features, Vocabulary(["a small red circle ."]), shots=3,
                         device="cpu")


def test_episodes_keep_one_format_and_encode():
    objects = [ShapeObject("circle", "red", "small", (0, 0), 1),
               ShapeObject("square", "blue", "large", (0, 0), 1)]
    assert answer(objects[0], "caption") == "a small red circle" and answer(objects[1], "colour") == "blue"
    episodes = sample_episodes(objects, 10, shots=1, seed=0)
    assert episodes["images"].shape == (10, 2)
    for answer_format, texts, images in zip(episodes["formats"], episodes["texts"], episodes["images"]):
        assert texts == [answer(objects[i], answer_format) for i in images.tolist()]
    vocabulary = Vocabulary(["a small large red blue circle square ."])
    ids = interleaved_ids([["red", "blue"]], vocabulary, 100, 101)
    words = [vocabulary.words[i] if i < 100 else {100: "<image>", 101: "<eoc>"}[i] for i in ids[0].tolist()]
    assert words == ["<start>", "<image>", "red", ".", "<eoc>", "<image>", "blue", ".", "<eoc>"]
    prompt = interleaved_ids([["red", "blue"]], vocabulary, 100, 101, query_answer=False)
    assert prompt[0].tolist() == ids[0, :6].tolist()
    text = text_episode_ids([["red", "blue"]], vocabulary)
    assert [vocabulary.words[i] for i in text[0].tolist()] == ["<start>", "red", ".", "blue", "."]
