import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from homl16.clip import (
    CLIP,
    HELD_OUT_COMBINATIONS,
    MAX_LOGIT_SCALE,
    ImageEncoder,
    TextEncoder,
    clip_loss,
    clip_processor,
    grouped_clip_loss,
    seen_combinations,
    small_clip,
    to_hf_clip,
    tokenize,
    train_caption_tokenizer,
    train_clip,
    zero_shot_classify,
)
from homl16.contrastive import recall_at_k
from homl16.data.captions import describe
from homl16.data.shapes import ShapeObject
from homl16.data.tasks import images_to_tensor, shapes_clip_data

CAPTIONS = ["a small red circle left of a large blue square", "This is a photo of a green triangle.",
            "a photo of a purple diamond above a yellow circle", "an image of an orange square"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS * 5)


def tiny_hf_clip(logit_scale=2.0):
    config = CLIPConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 12, "eos_token_id": 1,
                     "bos_token_id": 0, "pad_token_id": 1},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8, logit_scale_init_value=logit_scale)
    torch.manual_seed(0)
    return CLIPModel(config).eval()


def test_clip_loss_equals_the_transformers_clip_model_loss():
    hf = tiny_hf_clip(logit_scale=2.3)
    input_ids = torch.randint(2, 50, (5, 7))
    input_ids[:, -1] = 1
    with torch.no_grad():
        out = hf(input_ids=input_ids, pixel_values=torch.randn(5, 3, 16, 16), return_loss=True)
        # transformers 5 leaves the projected, not yet normalised, embeddings in pooler_output
        image_embeds = out.vision_model_output.pooler_output * 3.0
        text_embeds = out.text_model_output.pooler_output
        ours = clip_loss(image_embeds, text_embeds, hf.logit_scale)
    torch.testing.assert_close(ours, out.loss)
    assert ours > 0


def test_clip_loss_is_symmetric_small_for_matching_pairs_and_clips_the_scale():
    torch.manual_seed(0)
    embeds = torch.randn(6, 8)
    scale = torch.tensor(math.log(100))
    assert clip_loss(embeds, embeds, scale) < 0.05  # each pair matches itself far better than the rest
    other = torch.randn(6, 8)
    torch.testing.assert_close(clip_loss(embeds, other, scale), clip_loss(other, embeds, scale))
    above = clip_loss(embeds, other, torch.tensor(10.0))
    torch.testing.assert_close(above, clip_loss(embeds, other, torch.tensor(MAX_LOGIT_SCALE)))


def test_grouped_clip_loss_contrasts_each_pair_with_its_group_only():
    torch.manual_seed(0)
    image_embeds, text_embeds, scale = torch.randn(8, 4), torch.randn(8, 4), torch.tensor(2.0)
    torch.testing.assert_close(grouped_clip_loss(image_embeds, text_embeds, scale, 8),
                               clip_loss(image_embeds, text_embeds, scale))
    halves = (clip_loss(image_embeds[:4], text_embeds[:4], scale)
              + clip_loss(image_embeds[4:], text_embeds[4:], scale)) / 2
    torch.testing.assert_close(grouped_clip_loss(image_embeds, text_embeds, scale, 4), halves)
    with pytest.raises(ValueError, match="group_size"):
        grouped_clip_loss(image_embeds, text_embeds, scale, 1)


def test_clip_loss_rejects_mismatched_embeddings():
    with pytest.raises(ValueError, match="shapes differ"):
        clip_loss(torch.randn(4, 8), torch.randn(3, 8), torch.tensor(1.0))
    with pytest.raises(ValueError, match="image_embeds"):
        clip_loss(torch.randn(4), torch.randn(4), torch.tensor(1.0))


def test_tokenizer_is_a_clip_tokenizer_with_whole_caption_words(tokenizer):
    from transformers import CLIPTokenizer

    assert isinstance(tokenizer, CLIPTokenizer)
    tokens = tokenizer.tokenize("a small red circle")
    assert tokens == ["a</w>", "small</w>", "red</w>", "circle</w>"]
    ids = tokenize(tokenizer, ["a red circle", "a small red circle left of a large blue square"])
    assert ids[0, 0] == tokenizer.bos_token_id and (ids[0] == tokenizer.eos_token_id).any()


def test_tokenizer_ids_are_the_same_on_every_training_which_prints_nothing(tokenizer, capfd):
    capfd.readouterr()
    again = train_caption_tokenizer(CAPTIONS * 5)
    assert capfd.readouterr() == ("", "")  # its Rust trainer prints to fd 1, kept by notebooks
    assert again.get_vocab() == tokenizer.get_vocab()
    assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 1


def tiny_clip(tokenizer, eos_token_id=None):
    torch.manual_seed(0)
    image = ImageEncoder(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, ff_dim=32,
                         projection_dim=8)
    text = TextEncoder(len(tokenizer), tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
                       max_length=24, embed_dim=16, depth=2, num_heads=2, ff_dim=32, projection_dim=8)
    model = CLIP(image, text, logit_scale=3.0).eval()
    for p in model.parameters():  # non-trivial norms and biases, so a missed copy shows
        nn.init.normal_(p, std=0.2) if p.dim() < 2 else None
    return model


def test_to_hf_clip_with_its_processor_gives_the_same_embeddings_and_scale(tokenizer):
    model = tiny_clip(tokenizer)
    hf, processor = to_hf_clip(model), clip_processor(tokenizer, image_size=16)
    pixels = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(3)]
    inputs = processor(text=CAPTIONS[:3], images=pixels, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
                                   model.image_encoder(images_to_tensor(pixels)), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hf.get_text_features(input_ids=inputs["input_ids"],
                                                        attention_mask=inputs["attention_mask"]).pooler_output,
                                   model.text_encoder(inputs["input_ids"]), rtol=1e-4, atol=1e-5)
    assert hf.logit_scale.item() == pytest.approx(model.logit_scale.item())
    assert hf.config.text_config.num_hidden_layers == 2 and hf.config.vision_config.patch_size == 8


def test_to_hf_clip_refuses_an_end_of_text_id_of_2(tokenizer):
    # transformers pools at input_ids.argmax(-1) when eos_token_id == 2 (a legacy rule); the course pools
    # at the first end-of-text token, so with id 2 the converted text embeddings would differ
    model = tiny_clip(tokenizer, eos_token_id=2)
    with pytest.raises(ValueError, match="end-of-text id is 2"):
        to_hf_clip(model)


def test_text_encoder_ignores_padding_after_the_end_token(tokenizer):
    torch.manual_seed(0)
    text = TextEncoder(len(tokenizer), tokenizer.eos_token_id, max_length=24, embed_dim=16, depth=1,
                       num_heads=2, ff_dim=32, projection_dim=8).eval()
    alone = tokenize(tokenizer, ["a red circle"])
    padded = tokenize(tokenizer, ["a red circle", CAPTIONS[0]])[:1]
    assert padded.shape[1] > alone.shape[1]
    torch.testing.assert_close(text(alone), text(padded))
    with pytest.raises(ValueError, match="end-of-text"):
        text(torch.full((1, 4), 5))


class ColourTower(nn.Module):
    """Planted image tower: one-hot of the brightest channel of each image (B, 3, S, S) -> (B, 3)."""

    def forward(self, X):
        return nn.functional.one_hot(X.mean(dim=(2, 3)).argmax(dim=1), 3).float()


class WordTower(nn.Module):
    """Planted text tower: one-hot of which of three colour-word token ids a caption holds."""

    def __init__(self, word_ids):
        super().__init__()
        self.word_ids = word_ids

    def forward(self, input_ids):
        return torch.stack([(input_ids == i).any(dim=1).float() for i in self.word_ids], dim=1)


def test_zero_shot_ranks_the_planted_matching_caption_first(tokenizer):
    word_ids = [tokenizer.convert_tokens_to_ids(f"{c}</w>") for c in ("red", "green", "blue")]
    model = CLIP(ColourTower(), WordTower(word_ids), logit_scale=math.log(100))
    X = torch.zeros(3, 3, 4, 4)
    X[0, 2], X[1, 0], X[2, 1] = 1, 1, 1  # blue, red, green images
    probabilities = zero_shot_classify(model, tokenizer, X, ["green", "blue", "red"], device="cpu")
    assert probabilities.shape == (3, 3)
    assert probabilities.argmax(dim=1).tolist() == [1, 2, 0]
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="template"):
        zero_shot_classify(model, tokenizer, X, ["red", "blue"], template="a photo", device="cpu")


def test_recall_at_k():
    similarity = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.7, 0.9, 0.2]])
    assert recall_at_k(similarity, 1) == pytest.approx(1 / 3)
    assert recall_at_k(similarity, 2) == pytest.approx(2 / 3)
    assert recall_at_k(similarity, 3) == 1.0
    with pytest.raises(ValueError, match="square"):
        recall_at_k(similarity[:2], 1)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(similarity, 4)


def test_describe_names_the_objects_and_is_repeatable():
    objects = [ShapeObject("circle", "red", "small", (5, 10), 3),
               ShapeObject("square", "blue", "large", (25, 10), 6)]
    captions = [describe(objects, np.random.default_rng(0)) for _ in range(2)]
    assert captions[0] == captions[1]
    many = [describe(objects, np.random.default_rng(seed)) for seed in range(40)]
    assert all("left of" in c for c in many)
    assert any("red circle" in c for c in many) and any("a circle" in c for c in many)
    with pytest.raises(ValueError, match="1 or 2"):
        describe([], np.random.default_rng(0))


def test_held_out_combinations_never_appear_in_training_scenes():
    _, _, scenes = shapes_clip_data(60, seed=3, image_size=16, combinations=seen_combinations())
    pairs = {(o.colour, o.shape) for s in scenes for o in s.objects}
    assert pairs and not pairs & set(HELD_OUT_COMBINATIONS)
    assert len(seen_combinations()) == 24 - len(HELD_OUT_COMBINATIONS)


def test_train_clip_lowers_the_loss_and_keeps_the_scale_clipped(tokenizer):
    torch.manual_seed(0)
    X, captions, _ = shapes_clip_data(64, seed=0, image_size=16)
    model = small_clip(tokenizer, image_size=16, patch_size=8, embed_dim=16, image_depth=1, text_depth=1,
                       num_heads=2, projection_dim=8)
    with torch.no_grad():
        model.logit_scale.fill_(MAX_LOGIT_SCALE)
    history = train_clip(model, X, tokenize(tokenizer, captions), epochs=4, batch_size=32, lr=1e-2,
                         device="cpu")
    assert history["loss"][-1] < history["loss"][0]
    assert len(history["step_logit_scale"]) == 8
    assert max(history["step_logit_scale"]) <= MAX_LOGIT_SCALE + 1e-6
    with pytest.raises(ValueError, match="batch_size"):
        train_clip(model, X, tokenize(tokenizer, captions), epochs=1, batch_size=1, device="cpu")


def test_course_clip_checkpoint_saves_a_clip_model_and_processor_once(tokenizer, monkeypatch, tmp_path):
    from transformers import CLIPProcessor

    import homl16.clip

    calls = []

    def tiny_recipe():
        calls.append(1)
        model = small_clip(tokenizer, image_size=16, patch_size=8, embed_dim=16, image_depth=1, text_depth=1,
                           num_heads=2, projection_dim=8)
        return model.eval(), tokenizer, {}

    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    monkeypatch.setattr(homl16.clip, "train_course_clip", tiny_recipe)
    path = homl16.clip.course_clip_checkpoint()
    assert homl16.clip.course_clip_checkpoint() == path and len(calls) == 1
    model, processor = CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)
    assert model.config.vision_config.image_size == 16
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    inputs = processor(text=["a red circle"], images=image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 16, 16)
    monkeypatch.setenv("HOML16_CACHE", str(tmp_path / "given"))
    given, _, _ = tiny_recipe()
    path = homl16.clip.course_clip_checkpoint(given, tokenizer)  # notebook 12 hands over its trained CLIP
    assert len(calls) == 2 and "given" in path
    torch.testing.assert_close(CLIPModel.from_pretrained(path).text_projection.weight,
                               given.text_encoder.projection.weight)
