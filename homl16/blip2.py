"""BLIP-2: a Q-Former bridges a frozen image encoder and a frozen language model.

Stage 1 trains the Q-Former (a BERT whose layers also hold learned *query* tokens that
cross-attend to the frozen image features in every other layer) with three losses that share one
network and differ only in the self-attention mask: image-text contrastive (ITC), image-text
matching (ITM, with hard negatives) and image-grounded text generation (LM). Stage 2 projects the
query outputs into the frozen language model's input space, as a soft visual prompt.

Here the frozen image encoder is the course's EfficientNet-Lite0 grid (``homl16.efficientnet``),
the Q-Former starts from the pretrained BERT of ``homl16.bert`` and the frozen LM is a small OPT
trained on caption text. The Q-Former mirrors transformers' ``Blip2QFormerModel`` layer for layer
(post-norm BERT layers, a separate feed-forward network for the queries), so ``to_hf_qformer``
and ``to_hf_blip2`` copy it into transformers exactly.

Shapes: B = batch, Q = query tokens, T = text tokens, L = Q + T, D = Q-Former width,
N = image tokens, C = image-token width, E = ITC embedding size, V = vocabulary.
"""

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from homl16.checks import check_rank, check_tensor
from homl16.contrastive import symmetric_infonce
from homl16.efficientnet import add_coordinates, standardise
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, minimise
from homl16.transformer import MLP, MultiHeadAttention

MASK_KINDS = ("itc", "itm", "lm")
COORDINATE_SCALE = 4.0  # (x, y) channels appended to the CNN grid, as in notebook 01
DECODE_TOKEN = "[unused0]"  # BLIP-2's [DEC] token: BERT's vocabulary has unused slots for such tokens
IMAGE_TOKEN = "<image>"  # the LM's placeholder for the projected query outputs (transformers' convention)


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
            if image is None:
                raise ValueError("this layer cross-attends to the image: pass image tokens")
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
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=eps)
        self.cross_attention_frequency = cross_attention_frequency
        self.layers = nn.ModuleList(
            QFormerLayer(dim, num_heads, ff_dim, None if i % cross_attention_frequency else image_dim, eps)
            for i in range(num_layers))

    @property
    def num_queries(self):
        return self.query_tokens.shape[1]

    @property
    def image_dim(self):
        return self.layers[0].cross_attn.kv.in_features

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


@torch.no_grad()
def copy_bert_attention(attention, bert_self, bert_output):
    """BERT's separate query/key/value/output Linears -> a course ``MultiHeadAttention``."""
    attention.q.load_state_dict(bert_self.query.state_dict())
    attention.kv.weight.copy_(torch.cat([bert_self.key.weight, bert_self.value.weight]))
    attention.kv.bias.copy_(torch.cat([bert_self.key.bias, bert_self.value.bias]))
    attention.proj.load_state_dict(bert_output.dense.state_dict())


@torch.no_grad()
def copy_bert_mlp(mlp, norm, intermediate, output):
    mlp.fc1.load_state_dict(intermediate.dense.state_dict())
    mlp.fc2.load_state_dict(output.dense.state_dict())
    norm.load_state_dict(output.LayerNorm.state_dict())


@torch.no_grad()
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
    qformer.word_embeddings.load_state_dict(embeddings.word_embeddings.state_dict())
    qformer.position_embeddings.weight.copy_(embeddings.position_embeddings.weight
                                             + embeddings.token_type_embeddings.weight[0])
    qformer.embed_norm.load_state_dict(embeddings.LayerNorm.state_dict())
    for layer, bert_layer in zip(qformer.layers, bert.encoder.layer):
        copy_bert_attention(layer.self_attn, bert_layer.attention.self, bert_layer.attention.output)
        layer.self_norm.load_state_dict(bert_layer.attention.output.LayerNorm.state_dict())
        for mlp, norm in ((layer.query_mlp, layer.query_norm), (layer.text_mlp, layer.text_norm)):
            copy_bert_mlp(mlp, norm, bert_layer.intermediate, bert_layer.output)
    return qformer


def pretrained_parameter_names(qformer):
    """Names of the Q-Former parameters that come from BERT (the rest is new: queries, cross-attention)."""
    return [name for name, _ in qformer.named_parameters()
            if not (name == "query_tokens" or ".cross_" in name)]


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
        self.qformer = qformer
        dim = qformer.query_tokens.shape[-1]
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.itm_head = nn.Linear(dim, 2)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.lm_head = nn.Linear(dim, len(vocab_ids))
        with torch.no_grad():
            self.lm_head.weight.copy_(qformer.word_embeddings.weight[vocab_ids])
            self.lm_head.bias.zero_()
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
        itc = itc_loss(similarity, self.temperature)
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
    check_rank("image_embeds", image_embeds, 3, "(batch, queries, embed_dim)")
    check_rank("text_embeds", text_embeds, 2, "(batch, embed_dim)")
    return torch.einsum("bqe,te->btq", image_embeds, text_embeds).amax(dim=-1)


def itc_loss(similarity, temperature):
    """Symmetric InfoNCE over a (B, B) similarity matrix (pair i matches pair i) / the temperature."""
    return symmetric_infonce(similarity / temperature.clamp(min=0.001))


def hard_negatives(logits, same):
    """For each image a negative text, and for each text a negative image, drawn with probability
    softmax(ITC logits) over the other pairs of the batch, so similar-looking pairs (hard negatives)
    are picked most. logits (B, B), same (B, B) True where two captions are identical (never
    negatives). -> (negative text index per image (B,), negative image index per text (B,))."""
    check_rank("logits", logits, 2, "(images, texts)")
    allowed = ~same
    if not allowed.any(dim=1).all():
        raise ValueError("every pair needs at least one different caption in the batch to draw a negative")
    picks = []
    for scores in (logits, logits.T):
        weights = scores.float().softmax(dim=1).masked_fill(~allowed, 0) + allowed * 1e-8
        picks.append(torch.multinomial(weights, 1).squeeze(1))
    return picks[0], picks[1]


# ---------------------------------------------------------------- data

def visual_tokens(maps, mean=None, std=None):
    """Frozen CNN grids (N, C, H, W) -> image tokens (N, H·W, C + 2) for the Q-Former: each channel
    standardised (with the given or the grids' own statistics), plus each cell's (x, y) position
    ("CoordConv", scaled to ±4: CNN features alone say little about *where*). Returns
    (tokens, mean, std)."""
    maps, mean, std = standardise(maps, mean, std)
    return add_coordinates(maps, COORDINATE_SCALE).flatten(2).transpose(1, 2).contiguous(), mean, std


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
    """Train a ``Blip2Stage1`` on the sum of its three losses (AdamW, cosine schedule): pretrained
    BERT weights at ``lr``, new parts at ``new_lr``; the parameters named in ``frozen`` stay fixed.
    Returns a history of per-epoch lists: epoch, itc, itm, lm, seconds."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
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
    generator = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "itc": [], "itm": [], "lm": [], "seconds": []}
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        totals = {"itc": 0.0, "itm": 0.0, "lm": 0.0}
        order = torch.randperm(len(input_ids), generator=generator)
        for batch in order.split(batch_size):
            length = int(padding[batch].sum(dim=1).max())
            parts = [t[batch].to(device) for t in (image_tokens, input_ids, padding, decode_ids)]
            losses = model(parts[0], *(t[:, :length] for t in parts[1:]))
            loss = losses["itc"] + losses["itm"] + losses["lm"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for name in totals:
                totals[name] += losses[name].item() * len(batch)
        history["epoch"].append(epoch)
        for name, total in totals.items():
            history[name].append(total / len(input_ids))
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix({name: f"{history[name][-1]:.3f}" for name in totals})
    return history


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


# ---------------------------------------------------------------- the frozen language model

def caption_lm_tokenizer(captions):
    """A word-level tokenizer for the frozen LM, in OPT's conventions: "</s>" is both the start
    and the end token and is put in front of every text; "<pad>", "<unk>" and "<image>" (the
    placeholder for BLIP-2's query outputs) are special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for caption in captions for word in caption.split()})
    if not words:
        raise ValueError("captions is empty: the tokenizer needs words")
    specials = ["<pad>", "</s>", "<unk>", IMAGE_TOKEN]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="</s>",
                                   eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=[IMAGE_TOKEN])


def small_opt(tokenizer, hidden_size=128, num_layers=2, num_heads=4, ffn_dim=512, max_positions=64, seed=0):
    """A small ``OPTForCausalLM`` (the architecture of BLIP-2's blip2-opt LMs), random from ``seed``."""
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                       num_attention_heads=num_heads, ffn_dim=ffn_dim, max_position_embeddings=max_positions,
                       word_embed_proj_dim=hidden_size, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       dropout=0.0, attention_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return OPTForCausalLM(config)


def lm_caption_ids(tokenizer, captions):
    """(input_ids (N, T) as </s> words </s> <pad>..., attention mask (N, T)) for the frozen LM."""
    encoded = tokenizer([f"{c} {tokenizer.eos_token}" for c in captions], padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def repeated_caption_ids(tokenizer, captions, copies=2, seed=0):
    """LM pre-training text in which captions recur, as phrases recur in real text: each row is
    "</s> c </s> c </s>" (``copies`` times the same caption c), so the LM learns to use its context
    (to copy what it has seen), the skill a visual prompt relies on. -> (input_ids, attention mask)."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    eos = f" {tokenizer.eos_token} "
    texts = [eos.join([c] * copies) + eos.rstrip() for c in captions]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


def lm_targets(input_ids, attention_mask):
    """Next-token targets: ids shifted left, -100 (ignored) at padding and at the last position."""
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.pad(targets, (0, 1), value=-100)




def pretrain_lm(lm, input_ids, attention_mask, epochs, batch_size=128, lr=3e-3, device=None, seed=42,
                desc="language model"):
    """Train the causal LM on caption text alone, then freeze it (no gradients, eval mode).
    Returns a history with per-epoch loss and seconds."""
    device = device or get_device()
    lm.to(device).train()
    optimizer, scheduler = adamw_one_cycle(lm, lr, len(input_ids), batch_size, epochs, weight_decay=0.01)

    def batch_loss(batch):
        ids, mask = input_ids[batch].to(device), attention_mask[batch].to(device)
        logits = lm(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(logits.flatten(0, 1), lm_targets(ids, mask).flatten())

    history = minimise(lm, batch_loss, len(input_ids), epochs, optimizer, scheduler, batch_size, seed, desc)
    freeze(lm)
    return history


def freeze(module):
    """Freeze a module: no parameter needs (or holds) a gradient; eval mode (``Blip2Captioner`` keeps
    it there)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    return module.eval()


# ---------------------------------------------------------------- stage 2: Q-Former -> frozen LM

class Blip2Captioner(nn.Module):
    """Stage 2: the Q-Former's query outputs (B, Q, D), linearly projected to the frozen LM's width,
    are prepended to the text embeddings as a soft visual prompt.

    forward(image (B, N, C), input_ids (B, T), attention_mask (B, T)) -> LM logits (B, Q + T, V).
    """

    def __init__(self, qformer, language_model):
        super().__init__()
        self.qformer = qformer
        self.language_model = language_model
        self.projection = nn.Linear(qformer.query_tokens.shape[-1], language_model.config.hidden_size)

    def train(self, mode=True):
        super().train(mode)
        self.language_model.eval()  # frozen: no dropout, ever
        return self

    def visual_prompt(self, image):
        return self.projection(self.qformer(image))  # queries only: (B, Q, D_lm)

    def forward(self, image, input_ids, attention_mask):
        prompt = self.visual_prompt(image)
        embeds = torch.cat([prompt, self.language_model.get_input_embeddings()(input_ids)], dim=1)
        mask = torch.cat([attention_mask.new_ones(prompt.shape[:2]), attention_mask], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask).logits

    def loss(self, image, input_ids, attention_mask):
        """Next-token cross-entropy on the text only (the visual prompt has no targets)."""
        logits = self(image, input_ids, attention_mask)[:, self.qformer.num_queries:]
        return F.cross_entropy(logits.flatten(0, 1), lm_targets(input_ids, attention_mask).flatten())

    @torch.no_grad()
    def generate(self, image, bos_token_id, eos_token_id, max_new_tokens=16):
        """Greedy captions: image (B, N, C) -> token ids (B, T) after the start token, ``eos_token_id``
        once a caption has ended."""
        embed = self.language_model.get_input_embeddings()
        embeds = torch.cat([self.visual_prompt(image),
                            embed(torch.full((len(image), 1), bos_token_id, device=image.device))], dim=1)
        finished = torch.zeros(len(image), dtype=torch.bool, device=image.device)
        tokens = []
        for _ in range(max_new_tokens):
            mask = torch.ones(embeds.shape[:2], device=image.device)
            logits = self.language_model(inputs_embeds=embeds, attention_mask=mask).logits
            next_ids = logits[:, -1].argmax(dim=-1).masked_fill(finished, eos_token_id)
            tokens.append(next_ids)
            finished |= next_ids == eos_token_id
            if finished.all():
                break
            embeds = torch.cat([embeds, embed(next_ids)[:, None]], dim=1)
        return torch.stack(tokens, dim=1)


def train_stage2(model, image_tokens, input_ids, attention_mask, epochs, batch_size=64, lr=1e-3,
                 qformer_lr=1e-4, device=None, seed=42, desc="stage 2"):
    """Train the new parts (projection, query tokens, cross-attention: at ``lr``) and the pretrained
    BERT layers of the Q-Former (at ``qformer_lr``) of a ``Blip2Captioner``; the Q-Former's word
    embeddings (unused here) and the frozen LM get no update.
    Returns a history of per-epoch lists: epoch, loss, seconds."""
    device = device or get_device()
    model.to(device)
    model.qformer.word_embeddings.requires_grad_(False)
    pretrained = set(pretrained_parameter_names(model.qformer))
    new = [p for n, p in model.qformer.named_parameters() if n not in pretrained]
    old = [p for n, p in model.qformer.named_parameters() if n in pretrained and p.requires_grad]
    groups = [{"params": list(model.projection.parameters()) + new, "lr": lr},
              {"params": old, "lr": qformer_lr}]
    optimizer, scheduler = adamw_one_cycle(groups, lr, len(input_ids), batch_size, epochs)

    def batch_loss(batch):
        length = int(attention_mask[batch].sum(dim=1).max())
        return model.loss(image_tokens[batch].to(device), input_ids[batch, :length].to(device),
                          attention_mask[batch, :length].to(device))

    return minimise(model, batch_loss, len(input_ids), epochs, optimizer, scheduler, batch_size, seed, desc)


@torch.no_grad()
def generate_captions(model, image_tokens, tokenizer, batch_size=256, max_new_tokens=16, device=None):
    """Greedy captions of a ``Blip2Captioner`` for image tokens (N, L, C) -> list of word lists."""
    device = device or get_device()
    model.to(device).eval()
    captions = []
    for i in range(0, len(image_tokens), batch_size):
        ids = model.generate(image_tokens[i:i + batch_size].to(device), tokenizer.bos_token_id,
                             tokenizer.eos_token_id, max_new_tokens)
        captions += [tokenizer.decode(row, skip_special_tokens=True).split() for row in ids.cpu()]
    return captions


# ---------------------------------------------------------------- to transformers

def hf_qformer_config(qformer, use_qformer_text_input=True, attn_implementation="sdpa"):
    """A transformers ``Blip2QFormerConfig`` with the sizes of ``qformer`` (no dropout)."""
    from transformers import Blip2QFormerConfig

    layer = qformer.layers[0]
    dim = qformer.query_tokens.shape[-1]
    config = Blip2QFormerConfig(
        vocab_size=qformer.word_embeddings.num_embeddings, hidden_size=dim,
        num_hidden_layers=len(qformer.layers), num_attention_heads=layer.self_attn.num_heads,
        intermediate_size=layer.query_mlp.fc1.out_features, hidden_act="gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, max_position_embeddings=qformer.position_embeddings.num_embeddings,
        layer_norm_eps=layer.self_norm.eps, cross_attention_frequency=qformer.cross_attention_frequency,
        encoder_hidden_size=qformer.image_dim, use_qformer_text_input=use_qformer_text_input)
    config._attn_implementation = attn_implementation
    return config


@torch.no_grad()
def copy_attention_to_hf(attention, norm, hf_attention):
    """A course ``MultiHeadAttention`` + its LayerNorm -> transformers' ``Blip2QFormerAttention``."""
    heads = hf_attention.attention
    (k_weight, v_weight), (k_bias, v_bias) = attention.kv.weight.chunk(2), attention.kv.bias.chunk(2)
    heads.query.load_state_dict(attention.q.state_dict())
    heads.key.weight.copy_(k_weight)
    heads.key.bias.copy_(k_bias)
    heads.value.weight.copy_(v_weight)
    heads.value.bias.copy_(v_bias)
    hf_attention.output.dense.load_state_dict(attention.proj.state_dict())
    hf_attention.output.LayerNorm.load_state_dict(norm.state_dict())


@torch.no_grad()
def copy_mlp_to_hf(mlp, norm, intermediate, output):
    intermediate.dense.load_state_dict(mlp.fc1.state_dict())
    output.dense.load_state_dict(mlp.fc2.state_dict())
    output.LayerNorm.load_state_dict(norm.state_dict())


@torch.no_grad()
def to_hf_qformer(qformer, use_qformer_text_input=True, attn_implementation="sdpa"):
    """transformers' ``Blip2QFormerModel`` holding the weights of ``qformer`` (a ``QFormer``).

    ``hf(query_embeds=qformer.embed(B, ids), query_length=Q, encoder_hidden_states=image)`` equals
    ``qformer(image, ids)`` with the ITM mask (transformers' Q-Former takes the embeddings, not ids).
    ``use_qformer_text_input=False`` leaves out the text feed-forward networks (stage 2 needs none).
    """
    from transformers import Blip2QFormerModel

    hf = Blip2QFormerModel(hf_qformer_config(qformer, use_qformer_text_input, attn_implementation)).eval()
    hf.layernorm.load_state_dict(qformer.embed_norm.state_dict())
    for layer, hf_layer in zip(qformer.layers, hf.encoder.layer):
        copy_attention_to_hf(layer.self_attn, layer.self_norm, hf_layer.attention)
        if layer.cross_attn is not None:
            copy_attention_to_hf(layer.cross_attn, layer.cross_norm, hf_layer.crossattention)
        copy_mlp_to_hf(layer.query_mlp, layer.query_norm, hf_layer.intermediate_query, hf_layer.output_query)
        if use_qformer_text_input:
            copy_mlp_to_hf(layer.text_mlp, layer.text_norm, hf_layer.intermediate, hf_layer.output)
    return hf


def hf_qformer_like(qformer, attn_implementation="sdpa"):
    """transformers' ``Blip2QFormerModel`` at the same configuration as ``qformer`` with the same
    weights (for side-by-side timing in ``benchmarks/``): ``to_hf_qformer`` in training mode."""
    return to_hf_qformer(copy.deepcopy(qformer).cpu(), True, attn_implementation).train()


def qformer_benchmark_pair(qformer, batch_size=8, num_text=12, num_image_tokens=64, device="cpu", seed=0):
    """For ``benchmarks/blocks.py``: (description, image tokens x (B, N, C), ours(x), theirs(x)), where
    ours runs ``qformer`` and theirs transformers' ``Blip2QFormerModel`` with the same weights (SDPA
    attention, training mode) on the queries plus ``num_text`` random text tokens, all seeing all
    (the ITM mask); both return (B, Q + T, D)."""
    generator = torch.Generator().manual_seed(seed)
    qformer = qformer.to(device).train()
    theirs_model = hf_qformer_like(qformer).to(device)
    vocab_size = qformer.word_embeddings.num_embeddings
    ids = torch.randint(1, vocab_size, (batch_size, num_text), generator=generator).to(device)
    x = torch.randn(batch_size, num_image_tokens, qformer.image_dim, generator=generator)
    Q = qformer.num_queries

    def theirs(image):
        return theirs_model(query_embeds=qformer.embed(len(image), ids[:len(image)]), query_length=Q,
                            encoder_hidden_states=image).last_hidden_state

    width = qformer.query_tokens.shape[-1]
    description = (f"Q-Former ({Q} queries + {num_text} text tokens, {num_image_tokens} image tokens, "
                   f"{width} wide, {len(qformer.layers)} layers)")
    return description, x, lambda image: qformer(image, ids[:len(image)]), theirs


class FrozenCNNVision(nn.Module):
    """Stands in the ``vision_model`` slot of transformers' BLIP-2: images (B, 3, S, S) in [0, 1] ->
    the frozen EfficientNet-Lite0 grid (resized to ``resize`` pixels, at ``stride``) as tokens with
    their (x, y) channels, returned like a vision model's output (``last_hidden_state`` (B, N, C))."""

    def __init__(self, resize=128, stride=16):
        super().__init__()
        from homl16.efficientnet import frozen_cnn

        self.resize, self.stride = resize, stride
        self.cnn = [frozen_cnn()]  # a list: not a submodule, so it is neither saved nor moved twice

    def forward(self, pixel_values, return_dict=True, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        check_tensor("pixel_values", pixel_values)
        cnn = self.cnn[0].to(pixel_values.device)
        images = F.interpolate(pixel_values.float(), size=self.resize, mode="bilinear", align_corners=False)
        maps = add_coordinates(cnn.feature_map(images, self.stride), COORDINATE_SCALE)
        tokens = maps.flatten(2).transpose(1, 2).to(pixel_values.dtype)  # float16 when the inputs are
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens[:, 0])


def attach_frozen_cnn(model, resize=128, stride=16):
    """Put the frozen CNN into the ``vision_model`` slot of a ``Blip2ForConditionalGeneration``
    made by ``to_hf_blip2`` (transformers' BLIP-2 builds a ViT there; ours is a CNN), and give the
    LM the model's saved generation settings (``Blip2ForConditionalGeneration.generate`` hands the
    LM only the arguments it is called with). Returns model."""
    model.vision_model = FrozenCNNVision(resize, stride)
    model.language_model.generation_config = model.generation_config
    return model


@torch.no_grad()
def fold_standardisation(linear, mean, std):
    """Make ``linear`` act on raw inputs x as it acted on (x - mean) / std (the first len(mean)
    input channels; the others, the coordinates, are left as they are)."""
    mean, std = mean.flatten().to(linear.weight), std.flatten().to(linear.weight)
    channels = len(mean)
    scaled = linear.weight[:, :channels] / std
    linear.bias.sub_(scaled @ mean)
    linear.weight[:, :channels] = scaled


@torch.no_grad()
def to_hf_blip2(captioner, tokenizer, mean, std, image_size=64, max_new_tokens=16):
    """A transformers ``Blip2ForConditionalGeneration`` and ``Blip2Processor`` computing what
    ``captioner`` (a trained ``Blip2Captioner``) computes.

    The Q-Former, the query tokens, the projection and the frozen OPT are copied exactly; the
    channel standardisation (``mean``, ``std`` of ``visual_tokens``) is folded into the
    cross-attention's keys and values. transformers' vision slot is a ViT, so the model has a 0-layer
    placeholder there, saved as such: call ``attach_frozen_cnn`` before use (and after each
    ``from_pretrained``). The processor only rescales images to [0, 1] (no resizing, no
    normalisation: the CNN does its own).
    """
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    qformer = copy.deepcopy(captioner.qformer).cpu()
    for layer in qformer.layers:
        if layer.cross_attn is not None:
            fold_standardisation(layer.cross_attn.kv, mean, std)
    qformer_config = hf_qformer_config(qformer, use_qformer_text_input=False)
    vision_config = {"hidden_size": qformer.image_dim, "num_hidden_layers": 0, "num_attention_heads": 1,
                     "intermediate_size": 4, "image_size": 1, "patch_size": 1}  # a placeholder: see above
    lm = captioner.language_model
    config = Blip2Config(vision_config=vision_config, qformer_config=qformer_config.to_dict(),
                         text_config=lm.config.to_dict(), num_query_tokens=qformer.num_queries,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    hf = Blip2ForConditionalGeneration(config).eval()
    hf.query_tokens.copy_(qformer.query_tokens)
    hf.qformer.load_state_dict(to_hf_qformer(qformer, use_qformer_text_input=False).state_dict())
    hf.language_projection.load_state_dict(captioner.projection.state_dict())
    hf.language_model.load_state_dict(lm.state_dict())
    for generation_config in (hf.generation_config, hf.language_model.generation_config):
        generation_config.update(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    image_processor = BlipImageProcessorPil(do_resize=False, size={"height": image_size, "width": image_size},
                                         do_rescale=True, do_normalize=False, do_convert_rgb=True)
    return hf, Blip2Processor(image_processor, tokenizer, num_query_tokens=qformer.num_queries)


def frozen_cnn_captions(hf_model, processor, images, text="", **generate_kwargs):
    """The book's three lines on a list of PIL images -> list of caption strings."""
    inputs = processor(images=images, text=[text] * len(images), return_tensors="pt")
    generated_ids = hf_model.generate(**inputs, **generate_kwargs)
    return processor.batch_decode(generated_ids, skip_special_tokens=True)


def parameter_snapshot(module):
    """{name: detached copy} of every parameter, to check later that frozen ones did not change."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def unchanged(module, snapshot):
    """True when every parameter of ``module`` equals its copy in ``snapshot``."""
    return all(torch.equal(p.detach().cpu(), snapshot[name].cpu()) for name, p in module.named_parameters())



# ---------------------------------------------------------------- the course's BLIP-2

def train_course_blip2(device=None):
    """Notebook 14's recipe from start to end: stage 1 on 1,000 shapes scenes, the small OPT pre-trained on
    their captions and frozen, stage 2. Returns the transformers (model, processor) of ``to_hf_blip2``."""
    from homl16.bert import load_bert, load_bert_tokenizer
    from homl16.data.tasks import shapes_caption_data
    from homl16.efficientnet import cached_feature_maps

    X, captions, _ = shapes_caption_data(1000, split="train")
    maps = cached_feature_maps(F.interpolate(X, size=128, mode="bilinear", align_corners=False), stride=16)
    image_tokens, mean, std = visual_tokens(maps)
    bert_tokenizer = load_bert_tokenizer()
    qformer = qformer_from_bert(load_bert(), num_queries=8, num_layers=2, image_dim=image_tokens.shape[-1],
                                seed=0)
    input_ids, padding, decode_ids = bert_caption_ids(bert_tokenizer, captions)
    vocab_ids = torch.unique(torch.cat([input_ids, decode_ids]))
    stage1 = Blip2Stage1(qformer, vocab_ids[vocab_ids != bert_tokenizer.pad_token_id], text_pooling="mean",
                         itm_pairs=16)
    train_stage1(stage1, image_tokens, input_ids, padding, decode_ids, epochs=2, batch_size=64, lr=1e-4,
                 new_lr=1e-3, device=device)
    lm_tokenizer = caption_lm_tokenizer(captions)
    lm = small_opt(lm_tokenizer, hidden_size=128, num_layers=2, num_heads=4, ffn_dim=512, seed=0)
    pretrain_lm(lm, *repeated_caption_ids(lm_tokenizer, captions, copies=3), epochs=20, batch_size=128,
                lr=3e-3, device=device)
    captioner = Blip2Captioner(qformer, lm)
    train_stage2(captioner, image_tokens, *lm_caption_ids(lm_tokenizer, captions), epochs=10, batch_size=32,
                 lr=3e-3, qformer_lr=3e-4, device=device)
    return to_hf_blip2(captioner.cpu(), lm_tokenizer, mean, std, max_new_tokens=16)


def course_blip2_checkpoint(model=None, processor=None):
    """Directory of the course's shapes BLIP-2 saved as a transformers ``Blip2ForConditionalGeneration``
    with its ``Blip2Processor`` (load it with ``from_pretrained``, then ``attach_frozen_cnn``). Made once:
    from ``model`` and ``processor`` when given (notebook 14 passes the ones it has just trained),
    otherwise by training now with ``train_course_blip2`` (about a minute on a CPU)."""
    from homl16.pretrained import local_checkpoint

    if (model is None) != (processor is None):
        raise ValueError("give both model and processor (from to_hf_blip2) or neither")
    return local_checkpoint("shapes-blip2-v1", lambda: (model, processor) if model is not None
                            else train_course_blip2())
