from types import SimpleNamespace

import pytest
import torch

from homl16.data.captions import caption_order
from homl16.data.shapes import ShapeObject, caption_for, relation
from homl16.data.tasks import shapes_caption_data
from homl16.efficientnet import add_coordinates
from homl16.show_attend_tell import (
    AdditiveAttention,
    CaptionDecoder,
    Vocabulary,
    attention_in_box,
    caption_accuracy,
    caption_loss,
    cell_centres_in_box,
    greedy_captions,
    train_captioner,
    word_referents,
)

CAPTIONS = ["a small red circle left of a large blue square", "a large green triangle",
            "a small yellow diamond above a small red circle"]


def test_additive_attention_matches_the_formula_and_sums_to_one():
    torch.manual_seed(0)
    attention = AdditiveAttention(feature_dim=6, state_dim=5, attention_dim=4)
    features, state = torch.randn(3, 10, 6), torch.randn(3, 5)
    context, weights = attention(features, state)
    W1, b1 = attention.feature_proj.weight, attention.feature_proj.bias
    W2, v = attention.state_proj.weight, attention.score.weight[0]
    expected = torch.empty(3, 10)
    for b in range(3):
        for i in range(10):
            expected[b, i] = v @ torch.tanh(W1 @ features[b, i] + b1 + W2 @ state[b])
    expected = expected.softmax(dim=1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(context, (expected[:, :, None] * features).sum(dim=1))
    projected = attention.project(features)  # precomputed W1 h_i gives the same result
    torch.testing.assert_close(attention(features, state, projected)[1], weights)


def test_attention_bad_inputs():
    attention = AdditiveAttention(6, 5, 4)
    with pytest.raises(ValueError, match="features must have shape"):
        attention(torch.randn(3, 6), torch.randn(3, 5))
    with pytest.raises(ValueError, match="batch sizes differ"):
        attention(torch.randn(3, 10, 6), torch.randn(2, 5))
    with pytest.raises(ValueError, match="empty batch"):
        attention(torch.randn(0, 10, 6), torch.randn(0, 5))


def test_decoder_shapes():
    torch.manual_seed(0)
    decoder = CaptionDecoder(feature_dim=7, vocab_size=11, embed_dim=8, hidden_dim=16, attention_dim=8)
    logits, weights = decoder(torch.randn(2, 7, 3, 4), torch.randint(0, 11, (2, 5)))
    assert logits.shape == (2, 5, 11) and weights.shape == (2, 5, 3, 4)
    torch.testing.assert_close(weights.sum(dim=(2, 3)), torch.ones(2, 5))
    logits.sum().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_decoder_bad_inputs():
    decoder = CaptionDecoder(feature_dim=7, vocab_size=11, embed_dim=8, hidden_dim=16, attention_dim=8)
    with pytest.raises(ValueError, match="7 channels"):
        decoder(torch.randn(2, 5, 3, 3), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="maps must have shape"):
        decoder(torch.randn(2, 7, 9), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes differ"):
        decoder(torch.randn(2, 7, 3, 3), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must have shape"):
        decoder(torch.randn(2, 7, 3, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.generate(torch.randn(2, 7, 3, 3), start_id=1, end_id=11)
    with pytest.raises(ValueError, match="max_length"):
        decoder.generate(torch.randn(2, 7, 3, 3), start_id=1, end_id=2, max_length=0)


def test_greedy_decoding_stops_at_the_end_token():
    torch.manual_seed(0)
    decoder = CaptionDecoder(feature_dim=7, vocab_size=11, embed_dim=8, hidden_dim=16, attention_dim=8).eval()
    maps = torch.randn(3, 7, 2, 2)
    with torch.no_grad():
        decoder.output.weight.zero_()
        decoder.output.bias.copy_(torch.arange(11.0))  # always predicts token 10
    tokens, weights = decoder.generate(maps, start_id=1, end_id=10, max_length=8)
    assert tokens.tolist() == [[10]] * 3 and weights.shape == (3, 1, 2, 2)
    tokens, _ = decoder.generate(maps, start_id=1, end_id=2, max_length=8)  # never ends: max_length
    assert tokens.shape == (3, 8) and (tokens == 10).all()
    # caption 0 ends at step 2, caption 1 at step 4: decoding stops there, caption 0 is padded with ends
    scripted = iter([[5, 6], [3, 7], [8, 5], [9, 3], [4, 4]])
    original_step = decoder.step

    def step(*args):
        logits, state, weights = original_step(*args)
        return torch.nn.functional.one_hot(torch.tensor(next(scripted)), 11).float(), state, weights

    decoder.step = step
    tokens, weights = decoder.generate(maps[:2], start_id=1, end_id=3, max_length=8)
    assert tokens.tolist() == [[5, 3, 3, 3], [6, 7, 5, 3]] and weights.shape == (2, 4, 2, 2)


def test_vocabulary_round_trip_and_errors():
    vocabulary = Vocabulary(CAPTIONS)
    ids = vocabulary.encode(CAPTIONS)
    assert ids.shape == (3, 12) and ids[:, 0].eq(vocabulary.start_id).all()
    assert ids[1].tolist()[5:] == [vocabulary.end_id] + [vocabulary.pad_id] * 6
    assert [" ".join(vocabulary.decode(row[1:])) for row in ids] == CAPTIONS
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocabulary.encode(["a purple circle"])
    with pytest.raises(ValueError, match="at least one"):
        Vocabulary([""])


def test_caption_accuracy_is_position_wise_over_the_reference():
    references = ["a small red circle", "a large blue square left of a small red circle"]
    generated = [["a", "small", "red", "circle"], ["a", "large", "blue", "square"]]
    scores = caption_accuracy(generated, references)
    assert scores["exact_match"] == 0.5
    assert scores["word_accuracy"] == pytest.approx(8 / 14)  # missing words count as wrong
    with pytest.raises(ValueError, match="as many"):
        caption_accuracy(generated, references[:1])


def test_caption_loss_penalty_is_the_papers_up_to_a_constant():
    torch.manual_seed(0)
    targets = torch.tensor([[4, 5, 6, 0], [4, 5, 6, 7]])
    logits = torch.randn(2, 4, 9)
    uniform = torch.full((2, 4, 3, 3), 1 / 9)
    ce = caption_loss(logits, targets, uniform, attention_penalty=0)
    assert caption_loss(logits, targets, uniform) == pytest.approx(ce.item())  # even spread: no penalty
    differences = []
    for _ in range(3):
        weights = torch.randn(2, 4, 3, 3).flatten(2).softmax(-1).unflatten(2, (3, 3))
        coverage = (weights * (targets != 0)[:, :, None, None]).sum(1).flatten(1)
        paper = ((1 - coverage) ** 2).sum(1).mean()
        differences.append((caption_loss(logits, targets, weights) - ce - paper).item())
    assert max(differences) - min(differences) < 1e-5


def test_shapes_captions_have_one_canonical_order():
    X, captions, scenes = shapes_caption_data(30, seed=3, split="test")
    assert X.shape == (30, 3, 64, 64) and 0 <= X.min() and X.max() <= 1
    assert {len(scene.objects) for scene in scenes} == {1, 2}
    for caption, scene in zip(captions, scenes):
        assert caption == caption_for(scene.objects)
        if len(scene.objects) == 2:
            assert relation(*scene.objects) in ("left of", "above")
    left = ShapeObject("circle", "red", "small", (10, 30), 5)
    right = ShapeObject("square", "blue", "large", (50, 35), 8)
    below = ShapeObject("triangle", "green", "small", (12, 55), 5)
    assert caption_for(caption_order([right, left])) == "a small red circle left of a large blue square"
    assert caption_for(caption_order([below, left])) == "a small red circle above a small green triangle"
    assert caption_order([left]) == [left]


def test_word_referents_and_boxes():
    words = "a small red circle left of a large blue square".split()
    assert word_referents(words) == [None, None, 0, 0, None, None, None, None, 1, 1]
    inside = cell_centres_in_box((0, 0, 15, 7), grid=8, image_size=64)  # cells of 8 px, centres at 3.5 + 8k
    assert inside.sum() == 2 and inside[0, 0] and inside[0, 1]


def test_attention_in_box_scores_peaks():
    obj = ShapeObject("circle", "red", "small", (8, 8), 5, box=(2, 2, 13, 13))  # 2x2 cells of an 8x8 grid
    scene = SimpleNamespace(objects=[obj])
    weights = torch.zeros(2, 4, 8, 8)
    weights[0, :, 1, 1] = 1  # peaks inside the box
    weights[1, :, 6, 6] = 1  # peaks elsewhere
    words = [["a", "small", "red", "circle"]] * 2
    result = attention_in_box(words, weights, [scene, scene], image_size=64)
    assert result == {"in_box": 0.5, "chance": pytest.approx(4 / 64), "words": 4}
    with pytest.raises(ValueError, match="lengths differ"):
        attention_in_box(words, weights, [scene], image_size=64)


def test_add_coordinates():
    maps = add_coordinates(torch.zeros(2, 3, 2, 4))
    assert maps.shape == (2, 5, 2, 4)
    torch.testing.assert_close(maps[0, 3, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    torch.testing.assert_close(maps[0, 4, :, 0], torch.tensor([-0.5, 0.5]))
    scaled = add_coordinates(torch.zeros(1, 3, 2, 4), scale=4)
    torch.testing.assert_close(scaled[0, 4, :, 0], torch.tensor([-2.0, 2.0]))


def test_a_tiny_decoder_learns_to_caption():
    torch.manual_seed(0)
    vocabulary = Vocabulary(CAPTIONS)
    tokens = vocabulary.encode(CAPTIONS)
    maps = torch.randn(3, 5, 2, 2)
    decoder = CaptionDecoder(5, len(vocabulary), embed_dim=8, hidden_dim=32, attention_dim=8, dropout=0)
    # batches of 2 mix captions of different lengths: each is cut to its longest caption, pads ignored
    history = train_captioner(decoder, maps, tokens, epochs=60, batch_size=2, lr=1e-2, device="cpu")
    assert set(history) == {"epoch", "loss", "token_accuracy", "seconds"}
    assert history["loss"][-1] < history["loss"][0] and history["token_accuracy"][-1] == 1.0
    generated, weights = greedy_captions(decoder, maps, vocabulary, max_length=12, device="cpu")
    assert caption_accuracy(generated, CAPTIONS)["exact_match"] == 1.0 and weights.shape == (3, 12, 2, 2)
