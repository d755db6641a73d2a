"""DALL·E from scratch: a causal transformer over text + image tokens, and reranking with CLIP.

Stage 1, the image tokenizer, is the VQ-VAE of ``homl16.vqvae``: it turns a 32x32 image into an
8x8 grid of codebook ids (and back).

Stage 2, the prior: a decoder-only transformer reads [text tokens, image tokens] as one sequence
under a causal mask and learns to predict every image token from the text and the image tokens
before it. Generation samples image tokens one by one (temperature, top-k), and the tokenizer's
decoder turns them back into pixels.

Shapes: B = batch, S = image size, K = codebook size, T = text tokens, M = image tokens,
E = transformer width.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_ids, check_images, check_positive, check_rank, check_strings
from homl16.data.captions import describe
from homl16.data.shapes import COLOURS, SHAPES, SIZES
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.transformer import EncoderBlock, causal_mask

# ---------------------------------------------------------------- text tokens

class WordTokenizer:
    """A word-level tokenizer for shapes-world prompts: id 0 is padding, then one id per word.

    ``encode(texts, length)`` -> ids (N, length), right-padded; ``decode(ids)`` -> texts.
    Unknown words raise a ``ValueError`` naming them (the vocabulary is closed).
    """

    PAD = "<pad>"

    def __init__(self, words):
        words = list(dict.fromkeys(words))
        if not words:
            raise ValueError("words is empty")
        self.vocab = {word: i for i, word in enumerate([self.PAD, *words])}
        self.words = list(self.vocab)

    def __len__(self):
        return len(self.vocab)

    def encode(self, texts, length):
        texts = check_strings("texts", [texts] if isinstance(texts, str) else texts)
        check_positive("length", length, integer=True)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = text.lower().split()
            unknown = [w for w in words if w not in self.vocab]
            if unknown:
                raise ValueError(f"unknown words {unknown} in {text!r}; the vocabulary is {self.words[1:]}")
            if len(words) > length:
                raise ValueError(f"{text!r} has {len(words)} words, more than length={length}")
            ids[row, :len(words)] = torch.tensor([self.vocab[w] for w in words], dtype=torch.long)
        return ids

    def decode(self, ids):
        check_rank("ids", ids, 2, "(texts, length)")
        return [" ".join(self.words[i] for i in row if i != 0) for row in ids.tolist()]


def shapes_word_tokenizer():
    """The ``WordTokenizer`` of every word a shapes-world caption uses (``describe``'s captions)."""
    return WordTokenizer(["a", *SIZES, *COLOURS, *SHAPES, "shape", "left", "right", "of", "above", "below"])


def shapes_prompts(scenes, seed=0, keep_size=0.5):
    """One caption per scene ("a red circle", "a small blue square left of a green triangle"), by
    ``homl16.data.captions.describe``: the colour is always named, the size with probability ``keep_size``,
    and one object in ten is just a "shape" ("a red shape"); there are no template wrappers."""
    rng = np.random.default_rng(seed)
    return [describe(scene.objects, rng, keep=(keep_size, 1.0), templates=("{}",)) for scene in scenes]


# ---------------------------------------------------------------- stage 2: the transformer


class DalleTransformer(nn.Module):
    """A decoder-only transformer over [T text tokens, M image tokens].

    ``forward(text_ids (B, T), image_ids (B, m))`` with 0 <= m < M -> logits (B, m + 1, K): the
    distribution of image token j (j = 0..m) given the text and image tokens 0..j-1. Text and
    image tokens have their own embedding tables, every position a learned embedding; the blocks
    are the course's pre-norm ``EncoderBlock`` with a causal mask (``causal_mask``), which makes
    them decoder blocks: position i only attends to positions j <= i.
    """

    def __init__(self, text_vocab_size, num_codes, text_length=10, image_tokens=64, embed_dim=128,
                 depth=4, num_heads=4, ff_dim=None, dropout=0.0):
        super().__init__()
        self.text_length, self.image_tokens, self.num_codes = text_length, image_tokens, num_codes
        self.text_embed = nn.Embedding(text_vocab_size, embed_dim)
        self.image_embed = nn.Embedding(num_codes, embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, text_length + image_tokens - 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, ff_dim or 4 * embed_dim, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_codes)

    def forward(self, text_ids, image_ids):
        check_rank("text_ids", text_ids, 2, "(batch, text_tokens)")
        check_rank("image_ids", image_ids, 2, "(batch, image_tokens_so_far)")
        if text_ids.shape[1] != self.text_length:
            raise ValueError(f"text_ids must have {self.text_length} tokens, got {text_ids.shape[1]}")
        if image_ids.shape[1] >= self.image_tokens:
            raise ValueError(f"image_ids may hold at most {self.image_tokens - 1} tokens (the last one is "
                             f"only predicted), got {image_ids.shape[1]}")
        if len(text_ids) != len(image_ids):
            raise ValueError(f"text_ids and image_ids batch sizes differ: "
                             f"{len(text_ids)} vs {len(image_ids)}")
        check_ids("text_ids", text_ids, self.text_embed.num_embeddings)
        check_ids("image_ids", image_ids, self.num_codes)
        Z = torch.cat([self.text_embed(text_ids), self.image_embed(image_ids)], dim=1)  # (B, T + m, E)
        length = Z.shape[1]
        Z = Z + self.pos_embed[:, :length]
        mask = causal_mask(length, Z.device)
        for block in self.blocks:
            Z = block(Z, attn_mask=mask)
        return self.head(self.norm(Z[:, self.text_length - 1:]))  # (B, m + 1, K)


def dalle_loss(model, text_ids, image_ids):
    """Next-token cross-entropy of all M image tokens: text_ids (B, T), image_ids (B, M)."""
    check_rank("image_ids", image_ids, 2, "(batch, image_tokens)")
    logits = model(text_ids, image_ids[:, :-1])  # (B, M, K)
    return F.cross_entropy(logits.flatten(0, 1), image_ids.flatten())


def train_dalle(model, text_ids, image_ids, epochs, batch_size=64, lr=2e-3, weight_decay=0.01, device=None,
                seed=42, desc="DALL·E"):
    """Train a ``DalleTransformer`` on (text_ids (N, T), image_ids (N, M)) pairs with ``dalle_loss``.

    AdamW, one-cycle schedule, ``homl16.train.train``. Returns a history dict: per epoch ``epoch``,
    ``loss``, ``seconds``; per step ``step_loss``.
    """
    if len(text_ids) != len(image_ids) or len(text_ids) == 0:
        raise ValueError(f"text_ids and image_ids must hold the same, non-zero number of pairs, "
                         f"got {len(text_ids)} and {len(image_ids)}")
    device = device or get_device()
    model.to(device)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(text_ids), batch_size, epochs, weight_decay)

    def batch_loss(batch):
        return dalle_loss(model, text_ids[batch].to(device), image_ids[batch].to(device))

    return train(model, batch_loss, len(text_ids), optimizer, epochs=epochs, batch_size=batch_size,
                 scheduler=scheduler, seed=seed, desc=desc)


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """Draw one id per row of logits (B, K): divide by ``temperature``, keep the ``top_k`` largest
    (None keeps all), softmax, sample. ``temperature=0`` takes the argmax."""
    check_rank("logits", logits, 2, "(batch, vocabulary)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= logits.shape[1]:
        raise ValueError(f"top_k must be between 1 and {logits.shape[1]}, got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=1).values[:, -1:]  # (B, 1), the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model, text_ids, temperature=1.0, top_k=None, seed=0, device=None):
    """Sample image token ids (B, M) for text_ids (B, T), one token at a time.

    The simple loop re-runs the whole sequence at every step (no key/value cache): M forward
    passes over at most T + M - 1 tokens, which is fine at these sizes.
    """
    check_rank("text_ids", text_ids, 2, "(batch, text_tokens)")
    device = device or get_device()
    model.eval().to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    text_ids = text_ids.to(device)
    image_ids = torch.zeros(len(text_ids), 0, dtype=torch.long, device=device)
    for _ in range(model.image_tokens):
        logits = model(text_ids, image_ids)  # (B, j + 1, K) at step j
        next_ids = sample_next(logits[:, -1].float(), temperature, top_k, generator)
        image_ids = torch.cat([image_ids, next_ids[:, None]], dim=1)
    return image_ids.cpu()


# ---------------------------------------------------------------- reranking with CLIP


@torch.no_grad()
def clip_similarity(clip_model, processor, images, prompts):
    """Cosine similarity (N,) between each image and its prompt, by a transformers ``CLIPModel``.

    images: (N, 3, S, S) in [0, 1], as the VQ-VAE decodes them; they are normalised with the
    processor's image mean and std (what it does to pixels after scaling them to [0, 1]) and go in
    as ``pixel_values``. prompts: N strings, tokenized by ``processor``.
    """
    check_images("images", images, 3)
    prompts = check_strings("prompts", prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    clip_model.eval()
    mean, std = (torch.tensor(v)[:, None, None] for v in (processor.image_processor.image_mean,
                                                         processor.image_processor.image_std))
    pixel_values = (images - mean) / std
    unique = list(dict.fromkeys(prompts))
    text = processor(text=unique, return_tensors="pt", padding=True, truncation=True)
    text_embeds = F.normalize(clip_model.get_text_features(**text).pooler_output, dim=-1)
    image_embeds = F.normalize(clip_model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    rows = torch.tensor([unique.index(p) for p in prompts])
    return (image_embeds * text_embeds[rows]).sum(dim=1)


def best_of(scores, k):
    """DALL·E's reranking: in every consecutive group of ``k`` samples keep the best-scored one.

    scores: (P, N) for P prompts with N samples each (N divisible by k) -> indices (P, N // k)
    into the N samples of each prompt."""
    check_rank("scores", scores, 2, "(prompts, samples)")
    check_positive("k", k, integer=True)
    if k < 1 or scores.shape[1] % k:
        raise ValueError(f"k must divide the {scores.shape[1]} samples per prompt, got {k}")
    P, N = scores.shape
    return scores.view(P, N // k, k).argmax(dim=2) + torch.arange(0, N, k, device=scores.device)
