"""DALL·E from scratch: a discrete image tokenizer and a causal transformer over text + image tokens.

Stage 1, the image tokenizer: a small VQ-VAE turns a 32x32 image into an 8x8 grid of codebook
ids (and back). DALL·E's own tokenizer is a discrete VAE trained with the Gumbel-softmax
relaxation; the VQ-VAE's nearest-code lookup with a straight-through gradient and a commitment
loss does the same job with fewer knobs (no temperature schedule, no KL weight), which suits a
one-minute CPU run.

Stage 2, the prior: a decoder-only transformer reads [text tokens, image tokens] as one sequence
under a causal mask and learns to predict every image token from the text and the image tokens
before it. Generation samples image tokens one by one (temperature, top-k), and the tokenizer's
decoder turns them back into pixels.

Shapes: B = batch, S = image size, G = grid size (S / 4), D = code size, K = codebook size,
T = text tokens, M = image tokens (G * G), E = transformer width.
"""

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from homl16.checks import check_ids, check_images, check_positive, check_rank, check_strings, check_tensor
from homl16.data.captions import describe
from homl16.data.shapes import COLOURS, SHAPES, SIZES
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, minimise, tensor_batches
from homl16.transformer import EncoderBlock, causal_mask

# ---------------------------------------------------------------- stage 1: the image tokenizer


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in a learned codebook of K vectors of size D.

    ``forward(z)``: z (B, D, G, G) -> (z_q (B, D, G, G), ids (B, G, G), loss). ``z_q`` equals the
    nearest codes in the forward pass, but its gradient flows straight through to ``z`` (the
    straight-through estimator); ``loss`` is the codebook loss ||sg[z] - e||^2 plus ``beta`` times
    the commitment loss ||z - sg[e]||^2, which keeps the encoder close to the codes it picks.
    """

    def __init__(self, num_codes=64, code_dim=16, beta=0.25, normalize=False):
        super().__init__()
        check_positive("num_codes", num_codes, integer=True)
        check_positive("code_dim", code_dim, integer=True)
        self.num_codes, self.code_dim, self.beta, self.normalize = num_codes, code_dim, beta, normalize
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.codebook.weight.data.uniform_(-1 / num_codes, 1 / num_codes)

    def lookup(self, ids):
        """The codes (..., D) of ids (...)."""
        codes = self.codebook(ids)
        return F.normalize(codes, dim=-1) if self.normalize else codes

    def nearest(self, z):
        """Ids (N,) of the nearest codes to vectors z (N, D)."""
        return torch.cdist(z, self.lookup(torch.arange(self.num_codes, device=z.device))).argmin(dim=1)

    def forward(self, z):
        check_rank("z", z, 4, "(batch, code_dim, grid, grid)")
        if z.shape[1] != self.code_dim:
            raise ValueError(f"z must have {self.code_dim} channels (the code size), got {z.shape[1]}")
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*G*G, D)
        if self.normalize:
            flat = F.normalize(flat, dim=1)
        ids = self.nearest(flat)
        quantized = self.lookup(ids)
        loss = F.mse_loss(quantized, flat.detach()) + self.beta * F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()  # straight-through: codes forward, identity backward
        z_q = quantized.view(B, H, W, D).permute(0, 3, 1, 2)
        return z_q, ids.view(B, H, W), loss

    @torch.no_grad()
    def restart_dead_codes(self, z, counts):
        """Move every code with ``counts == 0`` onto a random encoder output among z (N, D);
        returns how many codes were restarted. Keeps the whole codebook in use."""
        dead = (counts == 0).nonzero().flatten()
        if len(dead):
            picks = torch.randint(len(z), (len(dead),), device=z.device)
            self.codebook.weight.data[dead] = z[picks] + 0.01 * torch.randn_like(z[picks])
        return len(dead)


def residual_block(channels):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 1))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block = residual_block(channels)

    def forward(self, x):
        return x + self.block(x)


class VQVAE(nn.Module):
    """A small VQ-VAE: images (B, 3, S, S) in [-1, 1] <-> code ids (B, S/4, S/4).

    Encoder: two stride-2 convs and a residual block -> (B, D, G, G); ``VectorQuantizer``;
    decoder: a residual block and two stride-2 transposed convs back to (B, 3, S, S).
    Each token sees a neighbourhood of its 4x4 patch, so its code also says what lies around it
    (a background tile next to an object gets its own codes): this makes the tokens more
    informative for the transformer than codes of isolated patches, which measured worse.
    ``forward(X)`` -> (reconstruction, ids, vq_loss); ``encode(X)`` -> ids; ``decode(ids)`` -> images.
    """

    def __init__(self, num_codes=64, code_dim=16, width=64, beta=0.25, normalize=False):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), Residual(width), nn.ReLU(),
            nn.Conv2d(width, code_dim, 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta, normalize)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, width, 3, padding=1), Residual(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1))

    @property
    def num_codes(self):
        return self.quantizer.num_codes

    def forward(self, X):
        check_images("X", X, 3)
        z_q, ids, vq_loss = self.quantizer(self.encoder(X))
        return self.decoder(z_q), ids, vq_loss

    @torch.no_grad()
    def encode(self, X, batch_size=512):
        """Code ids (B, G, G) of images X (B, 3, S, S)."""
        check_images("X", X, 3)
        check_positive("batch_size", batch_size, integer=True)
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self.quantizer(self.encoder(X[i:i + batch_size].to(device)))[1].cpu()
                          for i in range(0, len(X), batch_size)])

    @torch.no_grad()
    def decode(self, ids):
        """Images (B, 3, S, S), clamped to [-1, 1], of code ids (B, G, G) or (B, G*G)."""
        check_tensor("ids", ids)
        if ids.dim() == 2:
            side = int(round(ids.shape[1] ** 0.5))
            if side * side != ids.shape[1]:
                raise ValueError(f"ids of shape {tuple(ids.shape)} is not a square grid of tokens")
            ids = ids.view(len(ids), side, side)
        check_rank("ids", ids, 3, "(batch, grid, grid)")
        if ids.min() < 0 or ids.max() >= self.num_codes:
            raise ValueError(f"ids must be in [0, {self.num_codes}), got [{ids.min()}, {ids.max()}]")
        self.eval()
        device = next(self.parameters()).device
        z_q = self.quantizer.lookup(ids.to(device)).permute(0, 3, 1, 2)
        return self.decoder(z_q).clamp(-1, 1).cpu()


def train_vqvae(model, X, epochs, batch_size=64, lr=2e-3, restart_every=20, device=None, seed=42,
                desc="VQ-VAE"):
    """Train a ``VQVAE`` on images X (N, 3, S, S): MSE reconstruction + codebook and commitment losses.

    Adam with a one-cycle schedule; every ``restart_every`` steps, the codes no batch used in that
    window are restarted on random encoder outputs (``VectorQuantizer.restart_dead_codes``), as
    VQ-VAEs otherwise tend to use only a few of their codes. Returns a history dict: per epoch
    ``epoch``, ``reconstruction_mse``, ``codebook_usage`` (share of codes used), ``seconds``, and
    ``restarted`` (codes restarted in total).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    check_images("X", X, 3)
    device = device or get_device()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(X) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "reconstruction_mse": [], "codebook_usage": [], "seconds": [], "restarted": 0}
    counts = torch.zeros(model.num_codes, device=device)
    start, step = time.perf_counter(), 0
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        total, used = 0.0, torch.zeros(model.num_codes, dtype=torch.bool, device=device)
        for X_batch, _ in tensor_batches(X, X, batch_size, shuffle=True, generator=generator):
            X_batch = X_batch.to(device)
            z = model.encoder(X_batch)
            z_q, ids, vq_loss = model.quantizer(z)
            mse = F.mse_loss(model.decoder(z_q), X_batch)
            optimizer.zero_grad(set_to_none=True)
            (mse + vq_loss).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            counts += torch.bincount(ids.flatten(), minlength=model.num_codes)
            used |= counts > 0
            if restart_every and step % restart_every == 0 and step < 0.8 * steps:
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                history["restarted"] += model.quantizer.restart_dead_codes(flat, counts)
                counts.zero_()
            total += mse.item() * len(X_batch)
        history["epoch"].append(epoch)
        history["reconstruction_mse"].append(total / len(X))
        history["codebook_usage"].append(used.float().mean().item())
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix(mse=f"{history['reconstruction_mse'][-1]:.4f}",
                        usage=f"{history['codebook_usage'][-1]:.0%}")
    return history


def codebook_usage(ids, num_codes):
    """(share of the ``num_codes`` codes that occur in ``ids``, perplexity of the code distribution).

    The perplexity exp(entropy) is the number of equally used codes with the same entropy: it is
    ``num_codes`` when every code is used equally often, and 1 when a single code is."""
    check_tensor("ids", ids)
    if ids.numel() == 0:
        raise ValueError("ids is empty")
    check_ids("ids", ids, num_codes)
    counts = torch.bincount(ids.flatten(), minlength=num_codes).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return (counts > 0).float().mean().item(), entropy.exp().item()


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
    ``homl16.clip.describe``: the colour is always named, the size with probability ``keep_size``,
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

    AdamW, one-cycle schedule. Returns a history dict: per epoch ``epoch``, ``loss``, ``seconds``.
    """
    if len(text_ids) != len(image_ids) or len(text_ids) == 0:
        raise ValueError(f"text_ids and image_ids must hold the same, non-zero number of pairs, "
                         f"got {len(text_ids)} and {len(image_ids)}")
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    model.to(device)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(text_ids), batch_size, epochs,
                                           weight_decay)

    def batch_loss(batch):
        return dalle_loss(model, text_ids[batch].to(device), image_ids[batch].to(device))

    return minimise(model, batch_loss, len(text_ids), epochs, optimizer, scheduler, batch_size, seed, desc)


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

    images: (N, 3, S, S) in [-1, 1], as the VQ-VAE decodes them, which is exactly what the course
    CLIP's processor makes of pixels (rescale to [0, 1], then mean 0.5, std 0.5), so they go in as
    ``pixel_values`` directly; prompts: N strings, tokenized by ``processor``.
    """
    check_images("images", images, 3)
    prompts = check_strings("prompts", prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    clip_model.eval()
    unique = list(dict.fromkeys(prompts))
    text = processor(text=unique, return_tensors="pt", padding=True, truncation=True)
    text_embeds = F.normalize(clip_model.get_text_features(**text).pooler_output, dim=-1)
    image_embeds = F.normalize(clip_model.get_image_features(pixel_values=images).pooler_output, dim=-1)
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
