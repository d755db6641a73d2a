"""Flamingo from scratch: a frozen vision encoder and a frozen language model, bridged by new layers.

Flamingo (Alayrac et al., 2022) keeps a pretrained vision encoder and a pretrained causal language
model frozen and trains only what connects them:

* the **Perceiver Resampler** turns the variable-size grid of visual features of each image (or
  video frames) into a fixed, small number of visual tokens: learned latent queries cross-attend to
  the features (plus a learned time embedding per frame);
* a **gated xattn-dense** layer before every LM block: the text tokens cross-attend to the visual
  tokens, then go through a feed-forward layer; each of the two sublayers has a skip connection and
  its output is multiplied by tanh(α) with a learned scalar α initialised at 0, so at the start the
  model *is* the frozen LM, and the gates open as training finds vision useful;
* the **media mask**: a text token cross-attends only to the visual tokens of the closest image
  before it (earlier images reach it only through the LM's own self-attention);
* two special tokens, ``<image>`` (where an image stands in the text) and ``<|endofchunk|>`` (the
  end of the text that goes with an image), whose embeddings are trained.

The language model here is a transformers ``GPT2LMHeadModel``; its blocks are wrapped in place
(``FlamingoLayer``), as OpenFlamingo does. Shapes: B = batch, L = text tokens, M = images per
sequence, T = frames per image, F = visual feature tokens per frame, R = latents per image,
D = LM width, V = the LM's vocabulary size (the special tokens get ids V and V + 1).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_positive, check_rank, check_tensor
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.transformer import MLP, MultiHeadAttention

IMAGE_TOKEN, END_OF_CHUNK = "<image>", "<|endofchunk|>"


# ---------------------------------------------------------------- the Perceiver Resampler

class PerceiverResamplerLayer(nn.Module):
    """One resampler layer: latents (B, R, D) attend to [features; latents] (B, F + R, D), then an MLP,
    both pre-norm with skip connections. Attending to the latents too is the paper's choice."""

    def __init__(self, dim, num_heads, ff_mult=2):
        super().__init__()
        self.norm_features = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm_ff = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ff_mult * dim)

    def forward(self, features, latents):
        latents_normed = self.norm_latents(latents)
        context = torch.cat([self.norm_features(features), latents_normed], dim=1)
        latents = latents + self.attn(latents_normed, context)
        return latents + self.mlp(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    """Visual features of any size -> a fixed number of visual tokens per image.

    forward(features (B, M, T, F, C)) -> (B, M, R, D). Each image (its T frames of F feature vectors
    of size C) is handled on its own: the features are projected to D, a learned time embedding
    (one vector per frame index, ``max_frames`` of them) is added, the T x F vectors are flattened,
    and R learned latents cross-attend to them through ``depth`` layers.
    """

    def __init__(self, feature_dim, dim, num_latents=8, depth=2, num_heads=4, max_frames=1, ff_mult=2):
        super().__init__()
        self.feature_dim, self.max_frames = feature_dim, max_frames
        self.input_proj = nn.Linear(feature_dim, dim)
        self.time_embed = nn.Parameter(torch.zeros(max_frames, 1, dim))
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(PerceiverResamplerLayer(dim, num_heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features):
        check_rank("features", features, 5, "(batch, media, frames, feature_tokens, feature_dim)")
        B, M, T, Fn, C = features.shape
        if C != self.feature_dim:
            raise ValueError(f"features must have {self.feature_dim} channels, got {C}")
        if T > self.max_frames:
            raise ValueError(f"at most max_frames={self.max_frames} frames per image, got {T}")
        x = self.input_proj(features) + self.time_embed[:T]  # (B, M, T, F, D)
        x = x.flatten(2, 3).flatten(0, 1)  # (B * M, T * F, D)
        latents = self.latents.expand(len(x), -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents).unflatten(0, (B, M))


# ---------------------------------------------------------------- the media mask

def media_positions(ids, image_id):
    """For each text token, the (1-based) index of the latest ``<image>`` at or before it, 0 if none:
    ids (B, L) -> long (B, L). ``[x, <image>, a, b, <image>, c]`` -> ``[0, 1, 1, 1, 2, 2]``."""
    check_rank("ids", ids, 2, "(batch, tokens)")
    return (ids == image_id).long().cumsum(dim=1)


def media_attention_mask(ids, image_id, num_media, num_latents):
    """Which visual tokens each text token may cross-attend to: only the R latents of its closest
    preceding image (Flamingo's "only attend to the immediately preceding image").

    ids (B, L) -> bool (B, 1, L, M * R), True = may attend; rows of tokens with no image before them
    are all False (their cross-attention output is set to 0 by ``GatedCrossAttentionDense``).
    """
    positions = media_positions(ids, image_id)  # (B, L)
    if positions.max() > num_media:
        raise ValueError(f"the ids hold {int(positions.max())} <image> tokens but only {num_media} images "
                         f"were given")
    media_index = torch.arange(1, num_media + 1, device=ids.device).repeat_interleave(num_latents)
    return (positions[:, :, None] == media_index)[:, None]


# ---------------------------------------------------------------- gated xattn-dense

class GatedCrossAttentionDense(nn.Module):
    """Flamingo's gated xattn-dense layer, inserted before a frozen LM block: (B, L, D) -> (B, L, D).

    x = x + tanh(α_xattn) * CrossAttention(LayerNorm(x), visual tokens, media mask)
    x = x + tanh(α_dense) * FeedForward(LayerNorm(x))

    Both α start at 0, so at initialisation the layer is the identity and the LM's outputs are
    exactly those of the frozen LM. ``visual`` is (B, M * R, D); ``mask`` (B, 1, L, M * R) from
    ``media_attention_mask``. Tokens that may attend to no visual token get no cross-attention.
    """

    def __init__(self, dim, num_heads, ff_mult=2):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_ff = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ff_mult * dim)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, visual, mask):
        check_rank("x", x, 3, "(batch, tokens, dim)")
        check_rank("visual", visual, 3, "(batch, media * latents, dim)")
        check_tensor("mask", mask)
        if mask.shape[-2:] != (x.shape[1], visual.shape[1]):
            raise ValueError(f"mask must end in ({x.shape[1]}, {visual.shape[1]}), got {tuple(mask.shape)}")
        has_media = mask.any(dim=-1).transpose(1, 2)  # (B, L, 1)
        safe_mask = mask | ~has_media.transpose(1, 2)[..., None]  # image-less rows: any value, zeroed below
        attended = self.attn(self.norm_attn(x), visual, attn_mask=safe_mask) * has_media
        x = x + torch.tanh(self.attn_gate) * attended
        return x + torch.tanh(self.ff_gate) * self.mlp(self.norm_ff(x))


class FlamingoLayer(nn.Module):
    """A frozen LM block with a ``GatedCrossAttentionDense`` before it (as in OpenFlamingo).

    The LM calls it like the block it replaces; the visual tokens and the mask are set beforehand
    with ``condition(visual, mask)`` (``None`` = text only: the block runs alone).
    """

    def __init__(self, xattn, block):
        super().__init__()
        self.xattn, self.block = xattn, block
        self.visual = self.mask = None

    def condition(self, visual, mask):
        self.visual, self.mask = visual, mask

    def forward(self, hidden_states, *args, **kwargs):
        if self.visual is not None:
            hidden_states = self.xattn(hidden_states, self.visual, self.mask)
        return self.block(hidden_states, *args, **kwargs)


def lm_blocks(lm):
    """The ``nn.ModuleList`` of decoder blocks of a transformers causal LM (GPT-2: ``transformer.h``;
    Llama-style: ``model.layers``)."""
    for path in ("transformer.h", "model.layers"):
        module = lm
        try:
            for name in path.split("."):
                module = getattr(module, name)
        except AttributeError:
            continue
        return module
    raise TypeError(f"cannot find the decoder blocks of {type(lm).__name__}")


class Flamingo(nn.Module):
    """A frozen causal LM (transformers GPT-2) turned into a Flamingo.

    The LM is frozen (``requires_grad_(False)``) and each of its blocks is wrapped in a
    ``FlamingoLayer``; the trainable parts are the resampler, the gated xattn-dense layers and the
    embeddings of the two special tokens (ids V = ``image_id`` and V + 1 = ``eoc_id``). Their output
    embeddings are tied to their input embeddings, so the model can also predict them.

    forward(ids (B, L), features (B, M, T, F, C) or None) -> logits (B, L, V + 2).
    """

    def __init__(self, lm, feature_dim, num_latents=8, resampler_depth=2, num_heads=4, ff_mult=2,
                 max_frames=1):
        super().__init__()
        lm.requires_grad_(False)
        self.lm = lm.eval()
        dim, self.vocab_size = lm.config.hidden_size, lm.config.vocab_size
        self.image_id, self.eoc_id = self.vocab_size, self.vocab_size + 1
        self.resampler = PerceiverResampler(feature_dim, dim, num_latents, resampler_depth, num_heads,
                                            max_frames, ff_mult)
        blocks = lm_blocks(lm)
        for i, block in enumerate(blocks):
            blocks[i] = FlamingoLayer(GatedCrossAttentionDense(dim, num_heads, ff_mult), block)
        self.special_embed = nn.Embedding(2, dim)
        self.special_embed.weight.data.normal_(0, 0.02)

    @property
    def layers(self):
        return list(lm_blocks(self.lm))

    def gates(self):
        """tanh of every gate, (num_layers, 2): column 0 the cross-attention, column 1 the dense."""
        return torch.stack([torch.tanh(torch.cat([layer.xattn.attn_gate, layer.xattn.ff_gate]))
                            for layer in self.layers]).detach()

    def train(self, mode=True):
        super().train(mode)
        self.lm.eval()  # the frozen LM stays in eval mode (no dropout), the new layers follow ``mode``
        for layer in self.layers:
            layer.xattn.train(mode)
        return self

    def embed(self, ids):
        """ids (B, L) with LM ids and the two special ids -> embeddings (B, L, D)."""
        special = ids >= self.vocab_size
        embeds = self.lm.get_input_embeddings()(ids.masked_fill(special, 0))
        special_embeds = self.special_embed((ids - self.vocab_size).clamp(0, 1))
        return torch.where(special[..., None], special_embeds, embeds)

    def condition(self, ids, features):
        """Resample the images and set every layer's visual tokens and media mask."""
        if features is None:
            visual = mask = None
        else:
            latents = self.resampler(features)  # (B, M, R, D)
            if len(latents) != len(ids):
                raise ValueError(f"ids and features batch sizes differ: {len(ids)} vs {len(latents)}")
            mask = media_attention_mask(ids, self.image_id, latents.shape[1], latents.shape[2])
            visual = latents.flatten(1, 2)
        for layer in self.layers:
            layer.condition(visual, mask)

    def forward(self, ids, features=None):
        check_rank("ids", ids, 2, "(batch, tokens)")
        if ids.min() < 0 or ids.max() > self.eoc_id:
            raise ValueError(f"ids must be in [0, {self.eoc_id}], got [{int(ids.min())}, {int(ids.max())}]")
        self.condition(ids, features)
        try:
            hidden = self.lm.base_model(inputs_embeds=self.embed(ids)).last_hidden_state
        finally:
            self.condition(ids, None)
        lm_logits = self.lm.get_output_embeddings()(hidden)
        return torch.cat([lm_logits, hidden @ self.special_embed.weight.T], dim=-1)

    @torch.no_grad()
    def generate(self, ids, features, stop_id, max_new_tokens=8):
        """Greedy continuation of prompts of equal length: ids (B, L), features (B, M, T, F, C) ->
        new ids (B, N), N <= ``max_new_tokens``; rows that produced ``stop_id`` are padded with it."""
        finished = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        new = []
        for _ in range(max_new_tokens):
            next_ids = self(ids, features)[:, -1].argmax(dim=-1).masked_fill(finished, stop_id)
            new.append(next_ids)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            finished |= next_ids == stop_id
            if finished.all():
                break
        return torch.stack(new, dim=1)


# ---------------------------------------------------------------- interleaved shapes-world episodes

ANSWER_FORMATS = {
    "caption": "a {size} {colour} {shape}",
    "colour": "{colour}",
    "shape": "{shape}",
    "size": "{size}",
}


def answer(obj, answer_format):
    """The text for one object in a format of ``ANSWER_FORMATS``: 'a small red circle', 'red', ..."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {tuple(ANSWER_FORMATS)}, got {answer_format!r}")
    return ANSWER_FORMATS[answer_format].format(size=obj.size, colour=obj.colour, shape=obj.shape)


def sample_episodes(objects, num_episodes, shots, seed=0, query_objects=None):
    """Random episodes: each picks one answer format and ``shots + 1`` images.

    objects: the scenes' objects (one per image) the examples are drawn from; query_objects (default
    ``objects``): those the last image of each episode is drawn from. -> dict with "formats"
    (list of str), "images" (long (E, shots + 1): indices, the last into ``query_objects``) and
    "texts" (E lists of shots + 1 answers in the episode's format).
    """
    if shots < 0 or num_episodes < 1:
        raise ValueError(f"need shots >= 0 and num_episodes >= 1, got {shots} and {num_episodes}")
    query_objects = objects if query_objects is None else query_objects
    rng = np.random.default_rng(seed)
    names = list(ANSWER_FORMATS)
    formats = [names[i] for i in rng.integers(len(names), size=num_episodes)]
    examples = np.stack([rng.choice(len(objects), size=shots, replace=False) for _ in range(num_episodes)])
    queries = rng.integers(len(query_objects), size=(num_episodes, 1))
    texts = [[answer(objects[i], f) for i in row] + [answer(query_objects[q[0]], f)]
             for row, q, f in zip(examples, queries, formats)]
    images = torch.from_numpy(np.concatenate([examples.reshape(num_episodes, shots), queries], axis=1))
    return {"formats": formats, "images": images.long(), "texts": texts}


def text_episode_ids(texts, vocabulary):
    """Text-only episodes for pre-training the LM: lists of answers -> ids (E, L), right-padded:
    ``<start> red . blue . green .`` (the LM learns that an episode keeps one format)."""
    rows = [[vocabulary.start_id] + [vocabulary.index[w] for t in episode for w in (*t.split(), ".")]
            for episode in texts]
    return pad_rows(rows, vocabulary.pad_id)


def interleaved_ids(texts, vocabulary, image_id, eoc_id, query_answer=True):
    """Interleaved image-text episodes for Flamingo: lists of answers -> ids (E, L), right-padded:
    ``<start> <image> red . <|endofchunk|> <image> blue . <|endofchunk|> ...``. With
    ``query_answer=False`` the last answer is left out and the sequence ends with its ``<image>``
    (a few-shot prompt)."""
    rows = []
    for episode in texts:
        row = [vocabulary.start_id]
        for k, text in enumerate(episode):
            row.append(image_id)
            if query_answer or k < len(episode) - 1:
                row += [vocabulary.index[w] for w in (*text.split(), ".")] + [eoc_id]
        rows.append(row)
    return pad_rows(rows, vocabulary.pad_id)


def pad_rows(rows, pad_id):
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids


def next_token_targets(ids, pad_id, ignore_ids=()):
    """Inputs ids[:, :-1] and targets ids[:, 1:], with padding and ``ignore_ids`` (e.g. ``<image>``,
    which no text predicts) in the targets replaced by -100 (ignored by the cross-entropy)."""
    targets = ids[:, 1:].clone()
    for token_id in (pad_id, *ignore_ids):
        targets[targets == token_id] = -100
    return ids[:, :-1], targets


# ---------------------------------------------------------------- training

def train_language_model(lm, ids, steps, batch_size=64, lr=3e-3, pad_id=0, device=None, seed=42,
                         desc="LM pre-training"):
    """Pre-train a transformers causal LM on text ids (N, L) by next-token prediction (AdamW,
    one-cycle schedule). Returns a history dict: step, loss, seconds."""
    return train_steps(lm, lambda X: lm(X).logits, ids, None, steps, batch_size, lr, pad_id, (),
                       device, seed, desc)


def train_flamingo(model, ids, image_index, features, steps, batch_size=64, lr=2e-3, gate_lr_scale=1.0,
                   pad_id=0, device=None, seed=42, desc="Flamingo"):
    """Train the new parts of a ``Flamingo`` on interleaved episodes: ids (E, L), image_index (E, M)
    rows of ``features`` (N, T, F, C) for each ``<image>`` of each episode. Only parameters with
    ``requires_grad`` are optimised (the LM stays frozen); the gates' learning rate is ``lr`` times
    ``gate_lr_scale``. Returns a history dict: step, loss, seconds, gates (steps, num_layers, 2)."""
    return train_steps(model, lambda X, idx: model(X, features[idx].to(X.device)), ids, image_index,
                       steps, batch_size, lr, pad_id, (model.image_id,), device, seed, desc,
                       record_gates=model.gates, gate_lr_scale=gate_lr_scale)


def train_steps(model, logits_fn, ids, extra, steps, batch_size, lr, pad_id, ignore_ids, device, seed,
                desc, record_gates=None, gate_lr_scale=1.0):
    """Next-token training of ``model`` for ``steps`` batches of rows of ``ids`` (N, L) with
    ``homl16.train.train``: ``logits_fn(inputs (B, L'))`` (or ``logits_fn(inputs, extra[rows])``) gives
    logits (B, L', V). AdamW without weight decay, one-cycle schedule, gradients clipped at 1.
    Returns {"step", "loss" (per step), "seconds" (total)} and "gates" (steps, ...) of ``record_gates()``."""
    check_positive("steps", steps, integer=True)
    device = device or get_device()
    model.to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not n.endswith("_gate")], "lr": lr}]
    gates = [p for n, p in named if n.endswith("_gate")]
    if gates:
        groups.append({"params": gates, "lr": lr * gate_lr_scale})
    # one "epoch" of steps * batch_size items: the schedule spans exactly ``steps`` steps
    optimizer, scheduler = adamw_one_cycle(groups, lr, steps * batch_size, batch_size, 1, weight_decay=0.0)
    recorded = []

    def batch_loss(batch):
        inputs, targets = next_token_targets(ids[batch], pad_id, ignore_ids)
        length = int((targets != -100).nonzero()[:, 1].max()) + 1  # drop columns that are padding only
        inputs, targets = inputs[:, :length].to(device), targets[:, :length].to(device)
        logits = logits_fn(inputs) if extra is None else logits_fn(inputs, extra[batch])
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    def after_step(step):
        if record_gates is not None:
            recorded.append(record_gates().cpu())

    history = train(model, batch_loss, len(ids), optimizer, steps=steps, batch_size=batch_size,
                    scheduler=scheduler, clip_grad=1.0, after_step=after_step, seed=seed, desc=desc)
    result = {"step": list(range(1, steps + 1)), "loss": history["step_loss"],
              "seconds": history["seconds"][-1]}
    if record_gates is not None:
        result["gates"] = torch.stack(recorded)
    return result


# ---------------------------------------------------------------- few-shot evaluation

def prompt_texts(episodes, shots):
    """The answers of each episode's first ``shots`` examples and of its query (the last one)."""
    available = episodes["images"].shape[1] - 1
    if not 0 <= shots <= available:
        raise ValueError(f"shots must be between 0 and the episodes' {available} examples, got {shots}")
    return [texts[:shots] + texts[-1:] for texts in episodes["texts"]]


@torch.no_grad()
def few_shot_answers(model, episodes, features, support_features, vocabulary, shots, batch_size=256,
                     device=None):
    """Greedy answers of a ``Flamingo`` to few-shot prompts built from ``episodes`` (``sample_episodes``
    with at least ``shots`` examples): the first ``shots`` examples of each episode, then its query image.
    Examples' images are rows of ``support_features``, queries' rows of ``features`` (N, T, F, C).
    -> list of word lists (the words before the first ".")."""
    device = device or get_device()
    model.to(device).eval()
    texts = prompt_texts(episodes, shots)
    images = episodes["images"]
    prompts = interleaved_ids(texts, vocabulary, model.image_id, model.eoc_id, query_answer=False)
    lengths = (prompts != vocabulary.pad_id).sum(dim=1)
    stop_id = vocabulary.index["."]
    answers = [None] * len(texts)
    for length in lengths.unique().tolist():  # prompts of one length batch without padding
        rows = (lengths == length).nonzero().flatten()
        for chunk in rows.split(batch_size):
            example_feats = support_features[images[chunk, :shots]]  # (b, shots, T, F, C)
            query_feats = features[images[chunk, -1:]]  # (b, 1, T, F, C)
            feats = torch.cat([example_feats, query_feats], dim=1).to(device)
            new = model.generate(prompts[chunk, :length].to(device), feats, stop_id).cpu()
            for i, row in zip(chunk.tolist(), new.tolist()):
                words = [vocabulary.words[t] if t < len(vocabulary) else "<special>" for t in row]
                answers[i] = words[:words.index(".")] if "." in words else words
    return answers


@torch.no_grad()
def answer_probability(model, episodes, features, support_features, vocabulary, shots, batch_size=256,
                       device=None):
    """The probability a ``Flamingo`` gives to each episode's reference answer (its words and the
    final ".", teacher-forced) after a prompt with the first ``shots`` examples: -> float (E,).
    Same episodes and features as ``few_shot_answers``."""
    device = device or get_device()
    model.to(device).eval()
    texts = prompt_texts(episodes, shots)
    images = episodes["images"]
    ids = interleaved_ids(texts, vocabulary, model.image_id, model.eoc_id)  # right padding: harmless
    inputs, targets = ids[:, :-1], ids[:, 1:]
    last_image = (inputs == model.image_id).long().cumsum(dim=1) == shots + 1  # from the query's <image> on
    answer_part = last_image & (targets != model.eoc_id) & (targets != vocabulary.pad_id)
    probabilities = []
    for rows in torch.arange(len(ids)).split(batch_size):
        feats = torch.cat([support_features[images[rows, :shots]], features[images[rows, -1:]]], dim=1)
        log_probs = model(inputs[rows].to(device), feats.to(device)).log_softmax(dim=-1).cpu()
        token_log_probs = log_probs.gather(-1, targets[rows, :, None]).squeeze(-1)
        probabilities.append((token_log_probs * answer_part[rows]).sum(dim=1).exp())
    return torch.cat(probabilities)
