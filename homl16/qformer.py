"""BLIP-2's Q-Former and its stage-1 pre-training.

The Q-Former is a BERT whose layers also hold learned *query* tokens that cross-attend to frozen
image features in every other layer. It mirrors transformers' ``Blip2QFormerModel`` layer for layer
(post-norm BERT layers, a separate feed-forward network for the queries), starts from a pretrained
BERT (``qformer_from_bert``) and converts into transformers exactly (``to_hf_qformer``); both copies
go through ``homl16.weights.copy_weights``.

Stage 1 trains it with three losses that share one network and differ only in the self-attention
mask (``qformer_mask``): image-text contrastive (ITC), image-text matching (ITM, with hard negatives)
and image-grounded text generation (LM). Stage 2 (``homl16.blip2``) connects it to a frozen LM.

Shapes: B = batch, Q = query tokens, T = text tokens, L = Q + T, D = Q-Former width,
N = image tokens, C = image-token width, E = ITC embedding size, V = vocabulary.
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_rank
from homl16.contrastive import symmetric_infonce
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.transformer import MLP, MultiHeadAttention
from homl16.weights import copy_weights, linear_pairs

MASK_KINDS = ("itc", "itm", "lm")
DECODE_TOKEN = "[unused0]"  # BLIP-2's [DEC] token: BERT's vocabulary has unused slots for such tokens


# ---------------------------------------------------------------- the three masks of stage 1

def qformer_mask(kind, num_queries, num_text, device=None):
    """The stage-1 self-attention mask (L, L), True where row token may attend to column token;
    the first Q tokens are the queries, the next T the text.

    "itc" (unimodal): queries see queries, text sees text; "itm" (bidirectional): all see all;
    "lm" (multimodal causal): queries see queries only, text token t sees every query and text
    tokens 0..t.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if num_queries < 1 or num_text < 0:
        raise ValueError(f"need num_queries >= 1 and num_text >= 0, got {num_queries}, {num_text}")
    Q, L = num_queries, num_queries + num_text
    mask = torch.ones(L, L, dtype=torch.bool, device=device)
    if kind == "itm":
        return mask
    mask[:Q, Q:] = False  # queries never see the text (ITC and LM)
    if kind == "itc":
        mask[Q:, :Q] = False
    else:
        mask[Q:, Q:] = torch.ones(num_text, num_text, dtype=torch.bool, device=device).tril()
    return mask


def batch_mask(mask, text_padding):
    """Add key padding to a (L, L) mask: text_padding (B, T), True at real tokens -> (B, 1, L, L)."""
    check_rank("text_padding", text_padding, 2, "(batch, text_tokens)")
    Q = mask.shape[0] - text_padding.shape[1]
    keys = torch.cat([text_padding.new_ones(len(text_padding), Q), text_padding], dim=1).bool()
    return mask[None, None] & keys[:, None, None, :]


# ---------------------------------------------------------------- the Q-Former

class QFormerLayer(nn.Module):
    """One post-norm BERT layer of the Q-Former; queries and text share the self-attention.

    forward(x (B, L, D), num_queries, image (B, N, C) or None, attn_mask) -> (B, L, D):
    x = LN(x + SelfAttention(x)); for the queries only, q = LN(q + MultiHeadAttention(q, context=image)) when
    the layer has cross-attention; then each part goes through its own feed-forward network,
    queries through ``query_mlp``, text through ``text_mlp``: y = LN(y + MLP(y)).
    """

    def __init__(self, dim, num_heads, ff_dim, image_dim=None, eps=1e-12):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.self_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = None
        if image_dim is not None:
            self.cross_attn = MultiHeadAttention(dim, num_heads, context_dim=image_dim)
            self.cross_norm = nn.LayerNorm(dim, eps=eps)
        self.query_mlp, self.query_norm = MLP(dim, ff_dim), nn.LayerNorm(dim, eps=eps)
        self.text_mlp, self.text_norm = MLP(dim, ff_dim), nn.LayerNorm(dim, eps=eps)

    def forward(self, x, num_queries, image=None, attn_mask=None):
        x = self.self_norm(x + self.self_attn(x, attn_mask=attn_mask))
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.cross_attn is not None:
            queries = self.cross_norm(queries + self.cross_attn(queries, image))
        queries = self.query_norm(queries + self.query_mlp(queries))
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.text_norm(text + self.text_mlp(text))], dim=1)


class QFormer(nn.Module):
    """The Querying Transformer: Q learned query tokens and (optionally) text through BERT layers;
    layers 0, f, 2f, ... (f = ``cross_attention_frequency``) cross-attend to the image tokens.

    forward(image (B, N, C), input_ids (B, T) or None, attn_mask (L, L) or (B, 1, L, L) or None)
    -> (B, Q + T, D): the query outputs first, then the text's. The text embeddings are BERT's
    (word + position, LayerNorm); the queries get the same LayerNorm but no position.
    """

    def __init__(self, num_queries=8, dim=384, num_layers=4, num_heads=12, ff_dim=1536, image_dim=114,
                 vocab_size=30522, max_positions=512, cross_attention_frequency=2, eps=1e-12):
        super().__init__()
        self.num_queries, self.dim, self.num_heads, self.ff_dim = num_queries, dim, num_heads, ff_dim
        self.image_dim, self.vocab_size, self.max_positions = image_dim, vocab_size, max_positions
        self.eps = eps
        self.cross_attention_frequency = cross_attention_frequency
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(
            QFormerLayer(dim, num_heads, ff_dim, None if i % cross_attention_frequency else image_dim, eps)
            for i in range(num_layers))

    def embed(self, batch_size, input_ids=None):
        """Queries (and the text's word + position embeddings), before the LayerNorm: (B, L, D)."""
        queries = self.query_tokens.expand(batch_size, -1, -1)
        if input_ids is None:
            return queries
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        text = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return torch.cat([queries, text], dim=1)

    def forward(self, image, input_ids=None, attn_mask=None):
        check_rank("image", image, 3, "(batch, image_tokens, image_dim)")
        if image.shape[-1] != self.image_dim:
            raise ValueError(f"image tokens must have {self.image_dim} values, got {image.shape[-1]}")
        if input_ids is not None:
            check_rank("input_ids", input_ids, 2, "(batch, text_tokens)")
            if len(input_ids) != len(image):
                raise ValueError(f"image and input_ids batch sizes differ: {len(image)} vs {len(input_ids)}")
        x = self.embed_norm(self.embed(len(image), input_ids))
        for layer in self.layers:
            x = layer(x, self.num_queries, image, attn_mask)
        return x


# ---------------------------------------------------------------- weights from BERT, to transformers

def attention_pairs(attention, norm, bert_self, bert_output):
    """(course, BERT-style) pairs of an attention sublayer: our fused key/value Linear against the
    separate ``key`` and ``value`` Linears of a BERT (or Q-Former) ``*SelfAttention`` and its output."""
    return (linear_pairs(attention.q, bert_self.query)
            + linear_pairs(attention.kv, [bert_self.key, bert_self.value])
            + linear_pairs(attention.proj, bert_output.dense) + linear_pairs(norm, bert_output.LayerNorm))


def mlp_pairs(mlp, norm, intermediate, output):
    """(course, BERT-style) pairs of a feed-forward sublayer and its LayerNorm."""
    return (linear_pairs(mlp.fc1, intermediate.dense) + linear_pairs(mlp.fc2, output.dense)
            + linear_pairs(norm, output.LayerNorm))


def qformer_from_bert(bert, num_queries=8, num_layers=4, image_dim=114, cross_attention_frequency=2, seed=0):
    """A ``QFormer`` initialised as BLIP-2 does: the first ``num_layers`` layers of the pretrained
    ``bert`` (a transformers ``BertModel``) give the self-attention and both feed-forward networks
    (queries and text start from the same one); the cross-attention layers and the query tokens
    are new (random, from ``seed``). BERT's token-type embedding 0 is folded into the positions."""
    config = bert.config
    if not 1 <= num_layers <= config.num_hidden_layers:
        raise ValueError(f"num_layers must be between 1 and {config.num_hidden_layers}, got {num_layers}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        qformer = QFormer(num_queries, config.hidden_size, num_layers, config.num_attention_heads,
                          config.intermediate_size, image_dim, config.vocab_size,
                          config.max_position_embeddings, cross_attention_frequency, config.layer_norm_eps)
    embeddings = bert.embeddings
    positions = embeddings.position_embeddings.weight + embeddings.token_type_embeddings.weight[0]
    pairs = [(qformer.word_embeddings.weight, embeddings.word_embeddings.weight),
             (qformer.position_embeddings.weight, positions.detach()),
             *linear_pairs(qformer.embed_norm, embeddings.LayerNorm)]
    for layer, bert_layer in zip(qformer.layers, bert.encoder.layer):
        pairs += attention_pairs(layer.self_attn, layer.self_norm, bert_layer.attention.self,
                                 bert_layer.attention.output)
        for mlp, norm in ((layer.query_mlp, layer.query_norm), (layer.text_mlp, layer.text_norm)):
            pairs += mlp_pairs(mlp, norm, bert_layer.intermediate, bert_layer.output)
    copy_weights(pairs, to="course", model_name="Q-Former")
    return qformer


def pretrained_parameter_names(qformer):
    """Names of the Q-Former parameters that come from BERT (the rest is new: queries, cross-attention)."""
    return [name for name, _ in qformer.named_parameters()
            if not (name == "query_tokens" or ".cross_" in name)]


def hf_qformer_config(qformer, use_qformer_text_input=True, attn_implementation="sdpa"):
    """A transformers ``Blip2QFormerConfig`` with the sizes of ``qformer`` (no dropout)."""
    from transformers import Blip2QFormerConfig

    config = Blip2QFormerConfig(
        vocab_size=qformer.vocab_size, hidden_size=qformer.dim, num_hidden_layers=len(qformer.layers),
        num_attention_heads=qformer.num_heads, intermediate_size=qformer.ff_dim, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=qformer.max_positions, layer_norm_eps=qformer.eps,
        cross_attention_frequency=qformer.cross_attention_frequency,
        encoder_hidden_size=qformer.image_dim, use_qformer_text_input=use_qformer_text_input)
    config._attn_implementation = attn_implementation
    return config


def hf_qformer_pairs(qformer, hf, use_qformer_text_input=True):
    """(course, transformers) pairs of a ``QFormer`` and a ``Blip2QFormerModel`` of its configuration
    (the text feed-forward networks only with ``use_qformer_text_input``)."""
    pairs = linear_pairs(qformer.embed_norm, hf.layernorm)
    for layer, hf_layer in zip(qformer.layers, hf.encoder.layer):
        attention = hf_layer.attention
        pairs += attention_pairs(layer.self_attn, layer.self_norm, attention.attention, attention.output)
        if layer.cross_attn is not None:
            cross = hf_layer.crossattention
            pairs += attention_pairs(layer.cross_attn, layer.cross_norm, cross.attention, cross.output)
        pairs += mlp_pairs(layer.query_mlp, layer.query_norm, hf_layer.intermediate_query,
                           hf_layer.output_query)
        if use_qformer_text_input:
            pairs += mlp_pairs(layer.text_mlp, layer.text_norm, hf_layer.intermediate, hf_layer.output)
    return pairs


def to_hf_qformer(qformer, use_qformer_text_input=True, attn_implementation="sdpa"):
    """transformers' ``Blip2QFormerModel`` holding the weights of ``qformer`` (a ``QFormer``).

    ``hf(query_embeds=qformer.embed(B, ids), query_length=Q, encoder_hidden_states=image)`` equals
    ``qformer(image, ids)`` with the ITM mask (transformers' Q-Former takes the embeddings, not ids).
    ``use_qformer_text_input=False`` leaves out the text feed-forward networks (stage 2 needs none).
    """
    from transformers import Blip2QFormerModel

    hf = Blip2QFormerModel(hf_qformer_config(qformer, use_qformer_text_input, attn_implementation)).eval()
    pairs = hf_qformer_pairs(qformer, hf, use_qformer_text_input)
    copy_weights(pairs, to="transformers", model_name="Q-Former")
    return hf


# ---------------------------------------------------------------- stage 1: three losses

class Blip2Stage1(nn.Module):
    """The Q-Former with the heads of its three stage-1 objectives.

    ``vocab_ids`` (V,) are the BERT token ids the captions use: the LM head scores only those (a
    CPU shortcut: a softmax over 30,522 words costs more than the whole Q-Former here), starting
    from their BERT word embeddings as a tied head would.
    """

    def __init__(self, qformer, vocab_ids, embed_dim=128, temperature=0.07, text_pooling="mean",
                 itm_pairs=None):
        super().__init__()
        check_rank("vocab_ids", vocab_ids, 1, "(vocabulary,)")
        if text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling must be 'cls' or 'mean', got {text_pooling!r}")
        self.text_pooling = text_pooling
        self.itm_pairs = itm_pairs  # ITM on the first itm_pairs pairs of a batch only (None: all)
        self.qformer, dim = qformer, qformer.dim
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.itm_head = nn.Linear(dim, 2)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.lm_head = nn.Linear(dim, len(vocab_ids))
        self.lm_head.weight = nn.Parameter(qformer.word_embeddings.weight[vocab_ids].detach().clone())
        nn.init.zeros_(self.lm_head.bias)
        lookup = torch.full((qformer.word_embeddings.num_embeddings,), -100, dtype=torch.long)
        lookup[vocab_ids] = torch.arange(len(vocab_ids))
        self.register_buffer("vocab_ids", vocab_ids.clone(), persistent=False)
        self.register_buffer("vocab_index", lookup, persistent=False)

    def text_embedding(self, text_out, text_padding):
        """Text outputs (B, T, D) -> normalised ITC text embeddings (B, E): the [CLS] output (BLIP-2)
        or, with ``text_pooling="mean"``, the mean over the real tokens."""
        if self.text_pooling == "cls":
            pooled = text_out[:, 0]
        else:
            keep = text_padding[..., None].to(text_out.dtype)
            pooled = (text_out * keep).sum(dim=1) / keep.sum(dim=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def itc_embeddings(self, image, input_ids, text_padding):
        """One pass with the ITC mask -> normalised query embeddings (B, Q, E), text embeddings (B, E)."""
        Q, T = self.qformer.num_queries, input_ids.shape[1]
        mask = batch_mask(qformer_mask("itc", Q, T, image.device), text_padding)
        out = self.qformer(image, input_ids, mask)
        image_embeds = F.normalize(self.vision_proj(out[:, :Q]), dim=-1)
        return image_embeds, self.text_embedding(out[:, Q:], text_padding)

    def itm_logits(self, image, input_ids, text_padding):
        """One pass with the ITM mask -> (B, 2) logits (no match, match): the mean of the per-query logits."""
        Q, T = self.qformer.num_queries, input_ids.shape[1]
        mask = batch_mask(qformer_mask("itm", Q, T, image.device), text_padding)
        out = self.qformer(image, input_ids, mask)
        return self.itm_head(out[:, :Q]).mean(dim=1)

    def lm_logits(self, image, decode_ids, text_padding):
        """One pass with the LM mask on [DEC] w1 ... [SEP] -> (B, T, V) next-token logits (``vocab_ids``)."""
        Q, T = self.qformer.num_queries, decode_ids.shape[1]
        mask = batch_mask(qformer_mask("lm", Q, T, image.device), text_padding)
        out = self.qformer(image, decode_ids, mask)
        return self.lm_head(out[:, Q:])

    def forward(self, image, input_ids, text_padding, decode_ids):
        """Stage-1 losses for a batch of matching pairs: image (B, N, C), input_ids (B, T) starting with
        [CLS], text_padding (B, T) True at real tokens, decode_ids (B, T): the same with [DEC] first.
        ITM sees each of the first n pairs (n = ``itm_pairs`` or B) with its hard-negative text and
        with its text's hard-negative image (3n sequences, labels match / no / no).
        -> {"itc", "itm", "lm": scalar losses, "similarity": (B, B) image-to-text similarities}."""
        image_embeds, text_embeds = self.itc_embeddings(image, input_ids, text_padding)
        similarity = query_similarity(image_embeds, text_embeds)
        itc = symmetric_infonce(similarity / self.temperature.clamp(min=0.001))  # pair i matches pair i
        same = (input_ids[:, None] == input_ids[None]).all(-1)  # identical captions are no negatives
        logits = similarity.detach() / self.temperature.detach()
        negative_texts, negative_images = hard_negatives(logits, same)
        n = len(image) if self.itm_pairs is None else min(self.itm_pairs, len(image))
        images = torch.cat([image[:n], image[:n], image[negative_images[:n]]])
        texts = torch.cat([input_ids[:n], input_ids[negative_texts[:n]], input_ids[:n]])
        padding = torch.cat([text_padding[:n], text_padding[negative_texts[:n]], text_padding[:n]])
        labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(image.device)
        itm = F.cross_entropy(self.itm_logits(images, texts, padding), labels)
        logits = self.lm_logits(image, decode_ids, text_padding)
        targets = self.vocab_index[decode_ids[:, 1:]].masked_fill(~text_padding[:, 1:].bool(), -100)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())
        return {"itc": itc, "itm": itm, "lm": lm, "similarity": similarity.detach()}


def query_similarity(image_embeds, text_embeds):
    """BLIP-2's ITC similarity: for each (image, text) pair the largest cosine similarity between any
    of the image's query embeddings and the text embedding. (B, Q, E), (B', E) -> (B, B')."""
    return torch.einsum("bqe,te->btq", image_embeds, text_embeds).amax(dim=-1)


def hard_negatives(logits, same):
    """For each image a negative text, and for each text a negative image, drawn with probability
    softmax(ITC logits) over the other pairs of the batch, so similar-looking pairs (hard negatives)
    are picked most. logits (B, B), same (B, B) True where two captions are identical (never
    negatives). -> (negative text index per image (B,), negative image index per text (B,))."""
    allowed = ~same
    if not allowed.any(dim=1).all():
        raise ValueError("every pair needs at least one different caption in the batch to draw a negative")
    picks = []
    for scores in (logits, logits.T):
        weights = scores.float().softmax(dim=1).masked_fill(~allowed, 0) + allowed * 1e-8
        picks.append(torch.multinomial(weights, 1).squeeze(1))
    return picks[0], picks[1]


# ---------------------------------------------------------------- text, training, retrieval

def bert_caption_ids(tokenizer, captions, max_length=16):
    """BERT ids of captions for stage 1: (input_ids (N, T) as [CLS] words [SEP] [PAD]...,
    padding (N, T) True at real tokens, decode_ids: input_ids with [CLS] replaced by [DEC])."""
    encoded = tokenizer(list(captions), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    input_ids = encoded["input_ids"]
    decode_ids = input_ids.clone()
    decode_ids[:, 0] = tokenizer.convert_tokens_to_ids(DECODE_TOKEN)
    return input_ids, encoded["attention_mask"].bool(), decode_ids


def train_stage1(model, image_tokens, input_ids, padding, decode_ids, epochs, batch_size=64, lr=1e-4,
                 new_lr=1e-3, frozen=("qformer.word_embeddings.weight",), device=None, seed=42,
                 desc="stage 1"):
    """Train a ``Blip2Stage1`` on the sum of its three losses with ``homl16.train.train`` (AdamW,
    one-cycle schedule): pretrained BERT weights at ``lr``, new parts at ``new_lr``; the parameters
    named in ``frozen`` stay fixed. Returns train's history: per-epoch itc, itm, lm, loss (their sum)."""
    if not len(image_tokens) == len(input_ids) == len(padding) == len(decode_ids):
        raise ValueError("image_tokens, input_ids, padding and decode_ids must have the same length")
    device = device or get_device()
    model.to(device)
    pretrained = {f"qformer.{n}" for n in pretrained_parameter_names(model.qformer)}
    groups = {"pretrained": [], "new": []}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
        if name not in frozen:
            groups["pretrained" if name in pretrained else "new"].append(parameter)
    optimizer, scheduler = adamw_one_cycle([{"params": groups["pretrained"], "lr": lr},
                                            {"params": groups["new"], "lr": new_lr}], lr,
                                           len(input_ids), batch_size, epochs)

    def batch_loss(batch):
        length = int(padding[batch].sum(dim=1).max())  # drop columns that are padding only
        ids, pad, dec = (t[batch, :length].to(device) for t in (input_ids, padding, decode_ids))
        losses = model(image_tokens[batch].to(device), ids, pad, dec)
        parts = {name: losses[name] for name in ("itc", "itm", "lm")}
        return {"loss": sum(parts.values()), **parts}

    return train(model, batch_loss, len(input_ids), optimizer, epochs=epochs, batch_size=batch_size,
                 scheduler=scheduler, seed=seed, desc=desc)


@torch.no_grad()
def itc_similarity(model, image_tokens, input_ids, padding, batch_size=256, device=None):
    """Image-to-text ITC similarities (N images, M texts) of a trained ``Blip2Stage1`` on the CPU:
    images and texts are embedded apart (the ITC mask lets neither see the other) and compared."""
    device = device or get_device()
    model.to(device).eval()
    Q = model.qformer.num_queries
    image_embeds, text_embeds = [], []
    for i in range(0, max(len(image_tokens), len(input_ids)), batch_size):
        images, ids = image_tokens[i:i + batch_size].to(device), input_ids[i:i + batch_size].to(device)
        if len(images):
            out = model.qformer(images)  # queries alone
            image_embeds.append(F.normalize(model.vision_proj(out[:, :Q]), dim=-1).cpu())
        if len(ids):
            dummy = image_tokens[:1].to(device).expand(len(ids), -1, -1)
            text_padding = padding[i:i + batch_size].to(device)
            mask = batch_mask(qformer_mask("itc", Q, ids.shape[1], device), text_padding)
            out = model.qformer(dummy, ids, mask)  # the text does not see the queries: any image will do
            text_embeds.append(model.text_embedding(out[:, Q:], text_padding).cpu())
    return query_similarity(torch.cat(image_embeds), torch.cat(text_embeds))
