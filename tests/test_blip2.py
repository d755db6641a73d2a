import pytest
import torch
import torch.nn.functional as F

from homl16.blip2 import (
    Blip2Captioner,
    attach_frozen_cnn,
    caption_lm_tokenizer,
    fold_standardisation,
    freeze,
    lm_caption_ids,
    repeated_caption_ids,
    small_opt,
    to_hf_blip2,
    train_stage2,
    visual_tokens,
)
from homl16.qformer import (
    Blip2Stage1,
    QFormer,
    batch_mask,
    hard_negatives,
    hf_qformer_config,
    hf_qformer_pairs,
    itc_similarity,
    qformer_from_bert,
    qformer_mask,
    query_similarity,
    to_hf_qformer,
    train_stage1,
)
from homl16.weights import copy_weights

CAPTIONS = ["a small red circle left of a large blue square", "a large green diamond",
            "a small yellow triangle above a small red circle", "a large blue square"]


def parameter_snapshot(module):
    """{name: detached copy} of every parameter, to check later that frozen ones did not change."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def unchanged(module, snapshot):
    """True when every parameter of ``module`` equals its copy in ``snapshot``."""
    return all(torch.equal(p.detach().cpu(), snapshot[name].cpu()) for name, p in module.named_parameters())


def small_qformer(num_queries=3, num_layers=2, image_dim=6, seed=0):
    torch.manual_seed(seed)
    return QFormer(num_queries, dim=32, num_layers=num_layers, num_heads=4, ff_dim=64, image_dim=image_dim,
                   vocab_size=50, max_positions=20)


@pytest.mark.parametrize("kind", ["itc", "itm", "lm"])
def test_each_mask_matches_its_definition(kind):
    Q, T = 3, 4
    mask = qformer_mask(kind, Q, T)
    for i in range(Q + T):
        for j in range(Q + T):
            query_i, query_j = i < Q, j < Q
            if kind == "itm":
                allowed = True
            elif kind == "itc":  # unimodal: each side sees only itself
                allowed = query_i == query_j
            else:  # lm: queries see queries; text sees the queries and earlier (or same) text
                allowed = query_j if query_i else (query_j or j <= i)
            assert mask[i, j].item() == allowed, (kind, i, j)


def test_mask_rejects_an_unknown_kind_and_padding_hides_keys():
    with pytest.raises(ValueError, match="kind"):
        qformer_mask("causal", 2, 2)
    padded = batch_mask(qformer_mask("itm", 2, 3), torch.tensor([[True, True, False]]))
    assert padded.shape == (1, 1, 5, 5)
    assert not padded[0, 0, :, 4].any() and padded[0, 0, :, :4].all()


def test_itc_mask_makes_one_pass_equal_to_two_separate_passes():
    qformer = small_qformer().eval()
    image, ids = torch.randn(2, 5, 6), torch.randint(1, 50, (2, 4))
    with torch.no_grad():
        joint = qformer(image, ids, qformer_mask("itc", 3, 4))
        queries_alone = qformer(image)
        other_image = qformer(torch.randn(2, 5, 6), ids, qformer_mask("itc", 3, 4))
    torch.testing.assert_close(joint[:, :3], queries_alone)
    torch.testing.assert_close(joint[:, 3:], other_image[:, 3:])  # text never sees the image


def test_lm_mask_is_causal_for_text_and_hides_text_from_queries():
    qformer = small_qformer().eval()
    image, ids = torch.randn(1, 5, 6), torch.randint(1, 50, (1, 4))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % 50
    with torch.no_grad():
        a = qformer(image, ids, qformer_mask("lm", 3, 4))
        b = qformer(image, changed, qformer_mask("lm", 3, 4))
        c = qformer(image, changed, qformer_mask("itm", 3, 4))
        d = qformer(image, ids, qformer_mask("itm", 3, 4))
    torch.testing.assert_close(a[:, :5], b[:, :5])  # queries and text tokens 0, 1 unaffected
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert not torch.allclose(c[:, :3], d[:, :3])  # with ITM the queries do see the text


def test_qformer_equals_transformers_blip2_qformer():
    qformer = small_qformer(num_layers=3).eval()
    hf = to_hf_qformer(qformer)
    assert [hasattr(layer, "crossattention") for layer in hf.encoder.layer] == [True, False, True]
    image, ids = torch.randn(2, 5, 6), torch.randint(1, 50, (2, 4))
    with torch.no_grad():
        ours = qformer(image, ids, qformer_mask("itm", 3, 4))
        theirs = hf(query_embeds=qformer.embed(2, ids), query_length=3, encoder_hidden_states=image)
    torch.testing.assert_close(ours, theirs.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_qformer_from_bert_reads_text_like_the_pretrained_bert():
    from homl16.bert import load_bert, load_bert_tokenizer

    bert, tokenizer = load_bert().eval(), load_bert_tokenizer()
    qformer = qformer_from_bert(bert, num_queries=4, num_layers=2, image_dim=6).eval()
    encoded = tokenizer(CAPTIONS[:2], padding=True, return_tensors="pt")
    T = encoded.input_ids.shape[1]
    mask = batch_mask(qformer_mask("itc", 4, T), encoded.attention_mask.bool())
    with torch.no_grad():
        text = qformer(torch.randn(2, 5, 6), encoded.input_ids, mask)[:, 4:]
        expected = bert(**encoded, output_hidden_states=True).hidden_states[2]
    real = encoded.attention_mask.bool()
    torch.testing.assert_close(text[real], expected[real], atol=1e-4, rtol=1e-4)


def test_query_similarity_is_the_max_over_queries_and_negatives_are_never_the_same_caption():
    image_embeds, text_embeds = torch.randn(3, 4, 8), torch.randn(5, 8)
    similarity = query_similarity(image_embeds, text_embeds)
    assert similarity.shape == (3, 5)
    assert torch.isclose(similarity[1, 2], (image_embeds[1] @ text_embeds[2]).max())
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # captions 0 and 1 are identical
    for _ in range(20):
        texts, images = hard_negatives(torch.randn(4, 4), same)
        assert not same[torch.arange(4), texts].any() and not same[images, torch.arange(4)].any()


def test_frozen_parts_get_no_gradient_and_do_not_change():
    tokenizer = caption_lm_tokenizer(CAPTIONS)
    lm = freeze(small_opt(tokenizer, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32))
    model = Blip2Captioner(small_qformer(), lm)
    lm_before, qformer_before = parameter_snapshot(lm), parameter_snapshot(model.qformer)
    ids, mask = lm_caption_ids(tokenizer, CAPTIONS)
    loss = model.loss(torch.randn(4, 5, 6), ids, mask)
    loss.backward()
    assert all(p.grad is None for p in lm.parameters())
    assert model.projection.weight.grad is not None and model.qformer.query_tokens.grad is not None
    model.zero_grad()
    train_stage2(model, torch.randn(4, 5, 6), ids, mask, epochs=2, batch_size=2, device="cpu")
    assert unchanged(lm, lm_before) and not lm.training
    assert unchanged(model.qformer.word_embeddings, {"weight": qformer_before["word_embeddings.weight"]})
    assert not unchanged(model.qformer, qformer_before)


def test_stage1_trains_the_qformer_but_not_its_frozen_word_embeddings():
    qformer = small_qformer()
    ids = torch.randint(5, 50, (4, 6))
    ids[:, 0] = 1
    padding = torch.ones(4, 6, dtype=torch.bool)
    decode_ids = ids.clone()
    decode_ids[:, 0] = 2
    model = Blip2Stage1(qformer, torch.arange(1, 50))
    before = parameter_snapshot(model)
    history = train_stage1(model, torch.randn(4, 5, 6), ids, padding, decode_ids, epochs=2, batch_size=4,
                           device="cpu")
    assert set(history) >= {"itc", "itm", "lm"}
    after = dict(model.named_parameters())
    assert torch.equal(after["qformer.word_embeddings.weight"], before["qformer.word_embeddings.weight"])
    assert not torch.equal(after["qformer.query_tokens"], before["qformer.query_tokens"])
    similarity = itc_similarity(model, torch.randn(3, 5, 6), ids[:3], padding[:3], device="cpu")
    assert similarity.shape == (3, 3)


def test_lm_tokenizer_follows_opt_conventions():
    tokenizer = caption_lm_tokenizer(CAPTIONS)
    ids, mask = lm_caption_ids(tokenizer, CAPTIONS[1:2])
    assert ids[0, 0] == ids[0, -1] == tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == CAPTIONS[1]
    repeated, _ = repeated_caption_ids(tokenizer, CAPTIONS[1:2], copies=2)
    assert tokenizer.decode(repeated[0]) == f"</s> {CAPTIONS[1]} </s> {CAPTIONS[1]} </s>"


def test_folded_standardisation_gives_the_same_linear_map():
    linear, x = torch.nn.Linear(5, 3), torch.randn(4, 5)
    mean, std = torch.randn(3), torch.rand(3) + 0.5
    expected = linear(torch.cat([(x[:, :3] - mean) / std, x[:, 3:]], dim=1))
    fold_standardisation(linear, mean, std)
    torch.testing.assert_close(linear(x), expected, atol=1e-5, rtol=1e-5)


def test_transformers_blip2_generates_the_same_tokens_as_the_course_model(tmp_path):
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from homl16.data.tasks import shapes_caption_data
    from homl16.efficientnet import frozen_cnn

    X, captions, scenes = shapes_caption_data(4, split="test")
    maps = frozen_cnn().feature_map(F.interpolate(X, size=128, mode="bilinear", align_corners=False), 16)
    mean, std = maps.mean(dim=(0, 2, 3), keepdim=True), torch.full((1, 112, 1, 1), 2.0)
    tokens, mean, std = visual_tokens(maps, mean, std)
    tokenizer = caption_lm_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    lm = freeze(small_opt(tokenizer, hidden_size=16, num_layers=1, num_heads=2, ffn_dim=32))
    model = Blip2Captioner(small_qformer(image_dim=114), lm).eval()
    ours = model.generate(tokens, tokenizer.bos_token_id, tokenizer.eos_token_id, max_new_tokens=6)
    hf, processor = to_hf_blip2(model, tokenizer, mean, std, max_new_tokens=6)
    hf.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # the book's code
    processor = Blip2Processor.from_pretrained(tmp_path)
    loaded = attach_frozen_cnn(Blip2ForConditionalGeneration.from_pretrained(tmp_path))
    images = [Image.fromarray(scene.image) for scene in scenes]
    inputs = processor(images=images, text=[""] * len(images), return_tensors="pt")
    generated_ids = loaded.generate(**inputs)
    prompt_length = inputs["input_ids"].shape[1]
    theirs = generated_ids[:, prompt_length:]
    theirs = theirs.masked_fill(theirs == tokenizer.pad_token_id, tokenizer.eos_token_id)  # ours repeats eos
    assert torch.equal(theirs, ours)
    assert processor.batch_decode(generated_ids, skip_special_tokens=True) == [
        tokenizer.decode(row, skip_special_tokens=True) for row in ours]


def test_qformer_keeps_its_configuration_and_the_transformers_config_reads_it():
    qformer = small_qformer(num_layers=3, image_dim=7)
    config = hf_qformer_config(qformer)
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
             "max_position_embeddings", "encoder_hidden_size")
    sizes = tuple(getattr(config, name) for name in names)
    assert sizes == (32, 3, 4, 64, 50, 20, 7)


def test_conversion_refuses_mismatched_sizes_and_leaves_both_sides_alone():
    from transformers import Blip2QFormerModel

    qformer = small_qformer()
    config = hf_qformer_config(qformer)
    config.intermediate_size = 48
    hf = Blip2QFormerModel(config)
    before = parameter_snapshot(hf)
    with pytest.raises(ValueError, match="sizes differ"):
        copy_weights(hf_qformer_pairs(qformer, hf), to="transformers")
    assert unchanged(hf, before)


def test_course_blip2_checkpoint_needs_both_model_and_processor():
    from homl16.blip2 import course_blip2_checkpoint

    with pytest.raises(ValueError, match="give both model and processor"):
        course_blip2_checkpoint(model=object())
