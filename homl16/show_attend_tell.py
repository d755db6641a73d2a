"""Show, Attend and Tell: a recurrent caption decoder with additive attention over a CNN's feature map.

The frozen CNN (``homl16.efficientnet``) turns an image into a grid of feature vectors, one per
region. At every step the decoder scores each region against its current state with additive
(Bahdanau) attention, takes the weighted average of the regions (the *context*), and feeds it to an
LSTM cell with the previous word to predict the next word. The attention weights of each step say
where the decoder looked when it wrote that word.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_ids, check_positive, check_rank, check_strings
from homl16.data.shapes import COLOURS, SHAPES
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train

RELATION_WORDS = ("left", "right", "above", "below")


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention: weights = softmax_i(vᵀ tanh(W₁ h_i + W₂ s)).

    forward(features (B, L, D), state (B, S)) -> context (B, D), weights (B, L) summing to 1 over
    the L regions. ``projected`` (B, L, A), the W₁ h_i of ``project(features)``, can be passed to
    avoid recomputing it at every decoding step.
    """

    def __init__(self, feature_dim, state_dim, attention_dim):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)  # W₁ (its bias plays the role of b)
        self.state_proj = nn.Linear(state_dim, attention_dim, bias=False)  # W₂
        self.score = nn.Linear(attention_dim, 1, bias=False)  # v

    def project(self, features):
        return self.feature_proj(features)

    def forward(self, features, state, projected=None):
        check_rank("features", features, 3, "(batch, regions, feature_dim)")
        check_rank("state", state, 2, "(batch, state_dim)")
        if features.shape[0] != state.shape[0]:
            raise ValueError(f"features and state batch sizes differ: "
                             f"{features.shape[0]} vs {state.shape[0]}")
        feature_dim, state_dim = self.feature_proj.in_features, self.state_proj.in_features
        if features.shape[2] != feature_dim or state.shape[1] != state_dim:
            raise ValueError(f"features must have {feature_dim} and state {state_dim} dimensions, "
                             f"got {features.shape[2]} and {state.shape[1]}")
        if projected is None:
            projected = self.project(features)
        scores = self.score(torch.tanh(projected + self.state_proj(state).unsqueeze(1))).squeeze(-1)
        weights = scores.softmax(dim=-1)  # (B, L)
        context = torch.einsum("bl,bld->bd", weights, features)
        return context, weights


class CaptionDecoder(nn.Module):
    """An LSTM caption decoder that attends over a feature map at every step (Show, Attend and Tell).

    Step t: weights, context z_t = attention(regions, h_{t-1}); z_t is gated by β = σ(f_β(h_{t-1}));
    h_t, c_t = LSTMCell([E y_{t-1}, β·z_t], (h_{t-1}, c_{t-1})); and the paper's "deep output"
    logits = L_o(E y_{t-1} + L_h h_t + L_z β·z_t) predicts word t from the previous word, the state and
    what was just looked at. The initial state (h_0, c_0) is a function of the mean region.

    forward(maps (B, D, H, W), tokens (B, T)) -> logits (B, T, V), weights (B, T, H, W), with
    teacher forcing: ``tokens`` are the inputs (start token first), position t predicts token t + 1.
    """

    def __init__(self, feature_dim, vocab_size, embed_dim=64, hidden_dim=128, attention_dim=64, dropout=0.2):
        super().__init__()
        self.feature_dim, self.vocab_size = feature_dim, vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attention_dim)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.gate = nn.Linear(hidden_dim, feature_dim)
        self.cell = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.output_h = nn.Linear(hidden_dim, embed_dim)  # L_h
        self.output_z = nn.Linear(feature_dim, embed_dim, bias=False)  # L_z
        self.output = nn.Linear(embed_dim, vocab_size)  # L_o

    def regions(self, maps):
        """(B, D, H, W) feature maps -> (B, H·W, D) region vectors, row by row."""
        check_rank("maps", maps, 4, "(batch, feature_dim, height, width)")
        if maps.shape[1] != self.feature_dim:
            raise ValueError(f"maps must have {self.feature_dim} channels, got {maps.shape[1]}")
        return maps.flatten(2).transpose(1, 2)

    def init_state(self, regions):
        mean = regions.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def step(self, regions, projected, tokens, state):
        """One decoding step: previous tokens (B,) and state -> logits (B, V), new state, weights (B, L)."""
        h, c = state
        context, weights = self.attention(regions, h, projected)
        context = torch.sigmoid(self.gate(h)) * context
        embedded = self.embedding(tokens)
        h, c = self.cell(torch.cat([embedded, context], dim=-1), (h, c))
        logits = self.output(self.dropout(embedded + self.output_h(h) + self.output_z(context)))
        return logits, (h, c), weights

    def forward(self, maps, tokens):
        regions = self.regions(maps)
        check_rank("tokens", tokens, 2, "(batch, length)")
        if tokens.shape[0] != maps.shape[0]:
            raise ValueError(f"maps and tokens batch sizes differ: {maps.shape[0]} vs {tokens.shape[0]}")
        check_ids("tokens", tokens, self.vocab_size)
        projected = self.attention.project(regions)
        state = self.init_state(regions)
        all_logits, all_weights = [], []
        for t in range(tokens.shape[1]):
            logits, state, weights = self.step(regions, projected, tokens[:, t], state)
            all_logits.append(logits)
            all_weights.append(weights)
        H, W = maps.shape[2:]
        return torch.stack(all_logits, 1), torch.stack(all_weights, 1).unflatten(2, (H, W))

    @torch.no_grad()
    def generate(self, maps, start_id, end_id, max_length=20):
        """Greedy decoding, no teacher forcing: maps (B, D, H, W) -> tokens (B, T) (without the start
        token; the end token and then ``end_id`` padding once a caption is finished), weights
        (B, T, H, W). Stops as soon as every caption has produced ``end_id`` (or at ``max_length``)."""
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        for name, token_id in (("start_id", start_id), ("end_id", end_id)):
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"{name}={token_id} is outside the vocabulary of {self.vocab_size}")
        regions = self.regions(maps)
        projected = self.attention.project(regions)
        state = self.init_state(regions)
        tokens = torch.full((len(maps),), start_id, dtype=torch.long, device=maps.device)
        finished = torch.zeros(len(maps), dtype=torch.bool, device=maps.device)
        all_tokens, all_weights = [], []
        for _ in range(max_length):
            logits, state, weights = self.step(regions, projected, tokens, state)
            tokens = logits.argmax(dim=-1).masked_fill(finished, end_id)
            all_tokens.append(tokens)
            all_weights.append(weights)
            finished |= tokens == end_id
            if finished.all():
                break
        H, W = maps.shape[2:]
        return torch.stack(all_tokens, 1), torch.stack(all_weights, 1).unflatten(2, (H, W))


# ---------------------------------------------------------------- words

class Vocabulary:
    """A word-level vocabulary built from captions, with <pad> = 0, <start> = 1 and <end> = 2."""

    PAD, START, END = "<pad>", "<start>", "<end>"

    def __init__(self, captions):
        captions = check_strings("captions", captions)
        words = sorted({word for caption in captions for word in caption.split()})
        if not words:
            raise ValueError("Vocabulary needs at least one non-empty caption")
        self.words = [self.PAD, self.START, self.END, *words]
        self.index = {word: i for i, word in enumerate(self.words)}
        self.pad_id, self.start_id, self.end_id = 0, 1, 2

    def __len__(self):
        return len(self.words)

    def encode(self, captions):
        """Captions -> long (N, T): <start> words <end> <pad>..., T = longest caption + 2."""
        captions = check_strings("captions", captions)
        unknown = sorted({w for c in captions for w in c.split() if w not in self.index})
        if unknown:
            raise ValueError(f"words not in the vocabulary: {unknown}")
        length = max(len(c.split()) for c in captions) + 2
        ids = torch.full((len(captions), length), self.pad_id, dtype=torch.long)
        for row, caption in zip(ids, captions):
            sequence = [self.start_id, *(self.index[w] for w in caption.split()), self.end_id]
            row[:len(sequence)] = torch.tensor(sequence)
        return ids

    def decode(self, ids):
        """Token ids (T,) -> the words before the first <end> (skipping <start> and <pad>)."""
        words = []
        for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
            if i == self.end_id:
                break
            if i not in (self.pad_id, self.start_id):
                words.append(self.words[i])
        return words


# ---------------------------------------------------------------- shapes-world data

# ---------------------------------------------------------------- training

def caption_loss(logits, targets, weights, pad_id=0, attention_penalty=1.0):
    """Cross-entropy over the non-pad targets plus Show, Attend and Tell's "doubly stochastic"
    attention penalty, which nudges every region to get some attention over the caption.

    The paper's penalty is λ Σ_i (1 - Σ_t α_{t,i})² over the L regions. Since Σ_i Σ_t α_{t,i} = T
    (the caption length), it equals λ Σ_i (T/L - Σ_t α_{t,i})² plus a constant: same gradients, but
    this form is 0 when the attention is spread evenly, so it is the one computed (averaged over the
    batch; the sums over t run over the real, non-pad steps).

    logits (B, T, V), targets (B, T), weights (B, T, H, W) -> scalar loss.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2] or weights.shape[:2] != logits.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and weights "
                         f"{tuple(weights.shape)} must share (batch, length)")
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    if attention_penalty:
        real = (targets != pad_id).to(weights.dtype)[:, :, None, None]
        coverage = (weights * real).sum(dim=1).flatten(1)  # (B, L): attention per region over the caption
        even = real.sum(dim=1).flatten(1) / coverage.shape[1]  # (B, 1): T / L
        loss = loss + attention_penalty * ((even - coverage) ** 2).sum(dim=1).mean()
    return loss


def train_captioner(model, maps, tokens, epochs, batch_size=64, lr=3e-3, attention_penalty=0.0,
                    pad_id=0, device=None, seed=42, desc="captioner"):
    """Train a ``CaptionDecoder`` with teacher forcing on maps (N, D, H, W) and tokens (N, T) (from
    ``Vocabulary.encode``) with the course's loop: AdamW without weight decay, a one-cycle schedule and
    gradient clipping at 5. Each batch is cut to its longest caption, so a batch of short captions
    takes fewer decoding steps.

    Returns a history dict of per-epoch lists: epoch, loss, token_accuracy (teacher-forced, over
    non-pad targets), seconds.
    """
    if len(maps) != len(tokens) or len(maps) == 0:
        raise ValueError(f"need as many maps as captions (at least one), got {len(maps)} and {len(tokens)}")
    device = device or get_device()
    model.to(device)
    lengths = (tokens != pad_id).sum(dim=1)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(maps), batch_size, epochs, weight_decay=0.0)

    def batch_loss(indices):
        tokens_batch = tokens[indices, :int(lengths[indices].max())].to(device)
        inputs, targets = tokens_batch[:, :-1], tokens_batch[:, 1:]
        logits, weights = model(maps[indices].to(device), inputs)
        real = targets != pad_id
        correct = (logits.argmax(-1) == targets)[real].float().mean()
        return {"loss": caption_loss(logits, targets, weights, pad_id, attention_penalty),
                "token_accuracy": correct}

    history = train(model, batch_loss, len(maps), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, clip_grad=5.0, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def greedy_captions(model, maps, vocabulary, max_length=20, batch_size=512, device=None):
    """Greedy captions of maps (N, D, H, W) -> (list of word lists, weights (N, T, H, W) on the CPU)."""
    check_positive("batch_size", batch_size, integer=True)
    device = device or get_device()
    model.to(device).eval()
    words, weights = [], []
    for i in range(0, len(maps), batch_size):
        tokens, batch_weights = model.generate(maps[i:i + batch_size].to(device), vocabulary.start_id,
                                               vocabulary.end_id, max_length)
        words += [vocabulary.decode(row) for row in tokens.cpu()]
        weights.append(F.pad(batch_weights.cpu(), (0, 0, 0, 0, 0, max_length - batch_weights.shape[1])))
    return words, torch.cat(weights)


def caption_accuracy(generated, references):
    """Exact match (share of captions identical to the reference, length included) and word accuracy:
    position-wise over the reference words (generated word t == reference word t; missing words are
    wrong, extra words are ignored), pooled over all reference words. generated: word lists;
    references: strings or word lists."""
    if len(generated) != len(references) or not references:
        raise ValueError(f"need as many generated captions as references (at least one), "
                         f"got {len(generated)} and {len(references)}")
    references = [r.split() if isinstance(r, str) else list(r) for r in references]
    exact = np.mean([list(g) == r for g, r in zip(generated, references)])
    correct = sum(sum(gw == rw for gw, rw in zip(g, r)) for g, r in zip(generated, references))
    return {"word_accuracy": correct / sum(len(r) for r in references), "exact_match": float(exact)}


def word_referents(words):
    """For each word of a shapes caption, the index of the object it names when it is a colour or
    shape word (0 before the relation, 1 after it), else None: 'a small red circle left of a blue
    square' -> [None, None, 0, 0, None, None, None, None, 1, 1]."""
    referents, phrase = [], 0
    for word in words:
        if word in RELATION_WORDS:
            phrase = 1
        referents.append(phrase if word in COLOURS or word in SHAPES else None)
    return referents


def cell_centres_in_box(box, grid, image_size):
    """Boolean (grid, grid): which cell centres of a grid×grid map over the image lie inside the
    pixel box (x0, y0, x1, y1) (inclusive pixel indices)."""
    centres = (torch.arange(grid) + 0.5) * image_size / grid - 0.5  # in pixel-index coordinates
    x0, y0, x1, y1 = box
    inside_x = (centres >= x0) & (centres <= x1)
    inside_y = (centres >= y0) & (centres <= y1)
    return inside_y[:, None] & inside_x[None, :]


def attention_in_box(generated, weights, scenes, image_size):
    """How often the attention peak of a generated colour or shape word lies inside the box of the
    object that word names (``word_referents``; objects in caption order). Also returns the chance
    level: the share of grid cells inside that box, i.e. the score of a peak placed uniformly at random.

    generated: word lists; weights (N, T, g, g); scenes with ``objects`` in caption order.
    -> {"in_box", "chance", "words"} (rates over the counted words, and how many were counted).
    """
    check_rank("weights", weights, 4, "(captions, length, grid, grid)")
    check_positive("image_size", image_size)
    if not len(generated) == len(weights) == len(scenes):
        raise ValueError(f"lengths differ: {len(generated)} captions, {len(weights)} weights, "
                         f"{len(scenes)} scenes")
    grid = weights.shape[-1]
    hits, chance = [], []
    for words, scene_weights, scene in zip(generated, weights, scenes):
        for t, referent in enumerate(word_referents(words)):
            if referent is None or referent >= len(scene.objects):
                continue
            inside = cell_centres_in_box(scene.objects[referent].box, grid, image_size)
            peak = scene_weights[t].argmax()
            hits.append(bool(inside.flatten()[peak]))
            chance.append(inside.float().mean().item())
    if not hits:
        raise ValueError("no colour or shape words to score")
    return {"in_box": float(np.mean(hits)), "chance": float(np.mean(chance)), "words": len(hits)}
