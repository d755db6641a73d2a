"""VideoBERT (Sun et al., 2019): visual words from hierarchical k-means, and BERT over text + video tokens.

The pieces the notebook shows and trains:

* clip features: frames through a frozen CNN, pooled per clip (the stand-in for S3D + 3-D average pooling);
* ``kmeans`` (flat, k-means++ start) and ``HierarchicalKMeans``, which runs ``kmeans`` once per node of a tree
  of ``depth`` levels with ``k`` children each, so it has up to k**depth leaves (the chapter: 12**4 = 20,736);
* ``extend_vocabulary``: append one BERT token per leaf, its embedding the leaf's projected centroid;
* ``VideoBert``: a pretrained BERT with a masked-language-model head over the extended vocabulary and a
  linguistic-visual alignment head; ``make_sequences`` and ``mask_tokens`` build its text-only, video-only and
  text+video training inputs;
* ``zero_shot_predictions``: the chapter's "now let me show you how to [MASK] the [MASK]" probe.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_rank, check_tensor
from homl16.runtime import seed_offset
from homl16.train import adamw_one_cycle, steps_per_epoch, train

# The narrator's verb for each shapes-world action: single WordPiece tokens, so one [MASK] can hold each.
VERBS = {"moves left": "pull", "moves right": "push", "moves up": "lift", "moves down": "drop",
         "grows": "grow", "shrinks": "shrink"}
NARRATION_TEMPLATES = ("now let me show you how to {verb} the {shape}",
                       "now let me show you how to {verb} the {colour} {shape}",
                       "watch me {verb} the {colour} {shape}",
                       "here is how you {verb} this {colour} {shape}")
PROBE = "now let me show you how to [MASK] the [MASK]"


def narration(action, colour, shape, template=0):
    """The narration of one clip, e.g. ("moves right", "red", "circle") -> "now let me show you how to push
    the circle" for template 0 (``template`` indexes ``NARRATION_TEMPLATES``)."""
    if action not in VERBS:
        raise ValueError(f"action must be one of {tuple(VERBS)}, got {action!r}")
    if not 0 <= template < len(NARRATION_TEMPLATES):
        raise ValueError(f"template must be in [0, {len(NARRATION_TEMPLATES)}), got {template}")
    return NARRATION_TEMPLATES[template].format(verb=VERBS[action], colour=colour, shape=shape)


def video_frames(dataset):
    """The frames of a shapes video dataset as one float tensor (N videos, T frames, 3, H, W) in [0, 1]."""
    from homl16.data.convert import image_to_tensor

    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    return torch.stack([torch.stack([image_to_tensor(frame) for frame in video])
                        for video in dataset["frames"]])


def clip_features(frame_features, frames_per_clip, motion_weight=2.0, scales=None):
    """Pool per-frame CNN features into clip features: the stand-in for S3D + 3-D average pooling.

    frame_features (N, T, D) -> (features (N, T // frames_per_clip, 2 D), scales (2,)): per clip, the mean of
    its frames' features ("what is there") concatenated with the last minus the first frame's features ("what
    moved", a crude temporal derivative: a mean alone cannot tell "moves left" from "moves right"; S3D's 3-D
    convolutions can). Each half is divided by its total standard deviation (``scales``, computed here unless
    given, e.g. the training set's for the test set) and the motion half multiplied by ``motion_weight``, so
    that k-means (which only sees Euclidean distances) weighs motion against appearance as we choose.
    """
    check_rank("frame_features", frame_features, 3, "(videos, frames, features)")
    n, t, d = frame_features.shape
    if not 2 <= frames_per_clip <= t or t % frames_per_clip:
        raise ValueError(f"frames_per_clip={frames_per_clip} must be >= 2 and divide the {t} frames")
    clips = frame_features.reshape(n, t // frames_per_clip, frames_per_clip, d)
    appearance, motion = clips.mean(dim=2), clips[:, :, -1] - clips[:, :, 0]
    if scales is None:
        scales = torch.stack([x.flatten(0, 1).std(dim=0).pow(2).sum().sqrt() for x in (appearance, motion)])
    return torch.cat([appearance / scales[0], motion_weight * motion / scales[1]], dim=-1), scales


def _check_vectors(X):
    check_rank("X", X, 2, "(vectors, features)")
    if not X.is_floating_point():
        raise TypeError(f"X must be a floating-point tensor, got {X.dtype}")


def squared_distances(X, centroids):
    """X (N, D), centroids (K, D) -> (N, K) squared Euclidean distances."""
    return (X.pow(2).sum(1, keepdim=True) - 2 * X @ centroids.T + centroids.pow(2).sum(1)).clamp_min(0)


def kmeans(X, k, iterations=50, seed=0):
    """Flat k-means (Lloyd's algorithm, k-means++ start): X (N, D) -> (centroids (k', D), assignments (N,),
    inertia), with k' = min(k, number of distinct vectors). Deterministic for a seed. Inertia is the sum of
    squared distances of the vectors to their centroid."""
    _check_vectors(X)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    generator = torch.Generator().manual_seed(seed)
    k = min(k, len(torch.unique(X, dim=0)))
    centroids = X[torch.randint(len(X), (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: draw each next centroid with probability ~ squared distance
        nearest = squared_distances(X, centroids).min(dim=1).values
        centroids = torch.cat([centroids, X[torch.multinomial(nearest, 1, generator=generator)]])
    for _ in range(iterations):
        assignments = squared_distances(X, centroids).argmin(dim=1)
        counts = torch.bincount(assignments, minlength=k).unsqueeze(1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, X)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    distances = squared_distances(X, centroids)
    assignments = distances.argmin(dim=1)
    return centroids, assignments, distances.gather(1, assignments[:, None]).sum().item()


class HierarchicalKMeans:
    """VideoBERT's tokenizer: k-means with ``k`` clusters, then k-means inside each cluster, ``depth`` levels.

    ``fit(X)`` with X (N, D) builds the tree; a node with fewer than ``k`` distinct vectors gets fewer
    children, so there are at most k**depth leaves. After fitting: ``leaf_centroids`` (num_leaves, D),
    ``labels_`` (N,) the leaf of each training vector, ``inertia_``. ``predict(X)`` walks each vector down the
    tree (nearest centroid at each level) -> leaf ids (N,). Leaf ids are 0 .. num_leaves - 1, grouped by
    their parent.
    """

    def __init__(self, k, depth, iterations=50, seed=0):
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"k must be an int >= 2, got {k!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        self.k, self.depth, self.iterations, self.seed = k, depth, iterations, seed

    @property
    def max_leaves(self):
        """k ** depth: the vocabulary size when every node gets its k children."""
        return self.k ** self.depth

    def fit(self, X):
        _check_vectors(X)
        self.leaf_centroids_list = []
        self.labels_ = torch.empty(len(X), dtype=torch.long)
        self.root = self._split(X, torch.arange(len(X)), level=0, seed=self.seed)
        self.leaf_centroids = torch.stack(self.leaf_centroids_list)
        del self.leaf_centroids_list
        self.inertia_ = (X - self.leaf_centroids[self.labels_]).pow(2).sum().item()
        return self

    def _split(self, X, index, level, seed):
        """Cluster the rows ``index`` of X; returns a node: (centroids, children) or a leaf id (int)."""
        if level == self.depth:
            leaf = len(self.leaf_centroids_list)
            self.leaf_centroids_list.append(X[index].mean(dim=0))
            self.labels_[index] = leaf
            return leaf
        centroids, assignments, _ = kmeans(X[index], self.k, self.iterations, seed)
        children = [self._split(X, index[assignments == c], level + 1, seed * self.k + c + 1)
                    for c in range(len(centroids))]
        return centroids, children

    @property
    def num_leaves(self):
        return len(self.leaf_centroids)

    def predict(self, X):
        _check_vectors(X)
        if not hasattr(self, "root"):
            raise RuntimeError("call fit(X) before predict(X)")
        leaves = torch.empty(len(X), dtype=torch.long)
        stack = [(self.root, torch.arange(len(X)))]
        while stack:
            node, index = stack.pop()
            if isinstance(node, int):
                leaves[index] = node
                continue
            centroids, children = node
            nearest = squared_distances(X[index], centroids).argmin(dim=1)
            stack.extend((child, index[nearest == c]) for c, child in enumerate(children))
        return leaves


def project_centroids(centroids, word_embeddings, seed=0):
    """Map centroids (L, D) into BERT's embedding space: -> (L, H) with H = word_embeddings.shape[1].

    A fixed random (Johnson-Lindenstrauss) projection of the centred centroids keeps their relative distances;
    the result is rescaled so its mean norm equals that of the word embeddings (V, H), and shifted by their
    mean.
    """
    check_rank("centroids", centroids, 2, "(leaves, features)")
    check_rank("word_embeddings", word_embeddings, 2, "(vocabulary, hidden)")
    generator = torch.Generator().manual_seed(seed)
    projection = torch.randn(centroids.shape[1], word_embeddings.shape[1], generator=generator)
    projected = (centroids - centroids.mean(dim=0)).float() @ projection
    mean_word = word_embeddings.mean(dim=0)
    target_norm = (word_embeddings - mean_word).norm(dim=1).mean()
    projected = projected * target_norm / projected.norm(dim=1).mean().clamp_min(1e-12)
    return projected.to(word_embeddings.dtype) + mean_word


def extend_vocabulary(model, embeddings):
    """Append one token per row of ``embeddings`` (L, H) to a transformers model's input (and tied output)
    embeddings. The original V rows stay unchanged; returns the id of the first new token (V), so visual token
    ``i`` has id V + i."""
    check_tensor("embeddings", embeddings)
    old = model.get_input_embeddings()
    first_id, hidden = old.weight.shape
    if embeddings.dim() != 2 or embeddings.shape[1] != hidden:
        raise ValueError(f"embeddings must have shape (tokens, {hidden}), got {tuple(embeddings.shape)}")
    model.resize_token_embeddings(first_id + len(embeddings), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[first_id:] = embeddings.to(old.weight.dtype)
    return first_id


class VideoBert(nn.Module):
    """A pretrained ``BertForMaskedLM`` over text + visual tokens, plus the linguistic-visual alignment head.

    ``forward(input_ids, token_type_ids, attention_mask)``: each (B, S) -> hidden states (B, S, H).
    ``mlm_logits(hidden, labels)``: scores (M, len(output_ids)) at the M positions where labels (B, S) !=
    -100, over ``output_ids`` (default: the whole vocabulary), and the targets (M,) as indices into
    ``output_ids``.
    Scoring only the masked positions, and optionally only the tokens this world uses, saves most of the cost:
    the output layer over 30,000+ tokens is the costliest layer of a small BERT.
    ``alignment_logit(hidden, attention_mask)``: (B,) logit that the text and the video of each sequence
    match, read from the [CLS] output (``alignment_pooling="cls"``, as in VideoBERT) or from the mean of all
    outputs (``"mean"``: all-MiniLM-L6-v2 was trained with mean pooling, and its [CLS] output barely varies),
    through BERT's pooler (dense + tanh) and a linear classifier.
    Only the first ``num_layers`` encoder layers are kept (default all); those below ``train_from_layer`` and
    the embeddings are frozen: the text tokens keep their pretrained embeddings and the visual tokens their
    projected centroids (the MLM head's output weights are tied to both). Training the visual rows too was
    slower on a CPU (a dense gradient over the whole 30,000-row table each step) and no better here.
    """

    def __init__(self, bert_mlm, train_from_layer=0, num_layers=None, output_ids=None,
                 alignment_pooling="cls"):
        super().__init__()
        if alignment_pooling not in ("cls", "mean"):
            raise ValueError(f"alignment_pooling must be 'cls' or 'mean', got {alignment_pooling!r}")
        self.alignment_pooling = alignment_pooling
        self.bert_mlm = bert_mlm
        encoder = bert_mlm.bert.encoder
        num_layers = len(encoder.layer) if num_layers is None else num_layers
        if not 1 <= num_layers <= len(encoder.layer):
            raise ValueError(f"num_layers must be in [1, {len(encoder.layer)}], got {num_layers}")
        if not 0 <= train_from_layer <= num_layers:
            raise ValueError(f"train_from_layer must be in [0, {num_layers}], got {train_from_layer}")
        encoder.layer = encoder.layer[:num_layers]
        bert_mlm.config.num_hidden_layers = num_layers
        vocabulary = bert_mlm.get_input_embeddings().num_embeddings
        output_ids = torch.arange(vocabulary) if output_ids is None else torch.as_tensor(output_ids)
        if output_ids.dim() != 1 or output_ids.min() < 0 or output_ids.max() >= vocabulary:
            raise ValueError(f"output_ids must be a 1-D tensor of ids below {vocabulary}")
        self.register_buffer("output_ids", output_ids, persistent=False)
        index = torch.full((vocabulary,), -1, dtype=torch.long)
        index[output_ids] = torch.arange(len(output_ids))
        self.register_buffer("output_index", index, persistent=False)
        hidden = bert_mlm.config.hidden_size  # BERT's pooler (dense + tanh), then a linear classifier
        self.alignment_head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        bert_mlm.bert.embeddings.requires_grad_(False)
        for layer in encoder.layer[:train_from_layer]:
            layer.requires_grad_(False)

    def forward(self, input_ids, token_type_ids, attention_mask):
        check_rank("input_ids", input_ids, 2, "(batch, sequence)")
        return self.bert_mlm.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                  attention_mask=attention_mask).last_hidden_state

    def token_logits(self, hidden, token_ids):
        """hidden (M, H) -> scores (M, len(token_ids)) of the MLM head for those tokens only."""
        head = self.bert_mlm.cls.predictions
        return head.transform(hidden) @ head.decoder.weight[token_ids].T + head.decoder.bias[token_ids]

    def mlm_logits(self, hidden, labels):
        targets = self.output_index[labels[labels != -100]]
        if (targets < 0).any():
            raise ValueError("a masked token is not among output_ids")
        return self.token_logits(hidden[labels != -100], self.output_ids), targets

    def alignment_logit(self, hidden, attention_mask):
        if self.alignment_pooling == "cls":
            pooled = hidden[:, 0]
        else:  # the mean over the sequence's real tokens
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        return self.alignment_head(pooled).squeeze(-1)


def make_sequences(tokenizer, texts=None, video_tokens=None):
    """BERT inputs for text-only, video-only or text+video sequences (VideoBERT's three regimes).

    texts: list of B strings (or of lists of WordPiece ids, already tokenized) or None; video_tokens: (B, C)
    visual token ids or None (not both None; C = 0 gives text-only sequences). Sequences are
    [CLS] text [SEP] video [SEP] ([SEP] stands in for VideoBERT's [>] separator), with token type 0 for the
    text and 1 for the video. Returns input_ids, token_type_ids, attention_mask, each (B, S), right-padded.
    """
    if texts is None and video_tokens is None:
        raise ValueError("need texts, video_tokens or both")
    if video_tokens is not None:
        check_rank("video_tokens", video_tokens, 2, "(batch, clips)")
        if texts is not None and len(texts) != len(video_tokens):
            raise ValueError(f"{len(texts)} texts but {len(video_tokens)} videos")
    batch = len(texts) if texts is not None else len(video_tokens)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    rows = []
    for i in range(batch):
        ids, types = [cls], [0]
        if texts is not None:
            text = texts[i]
            if isinstance(text, str):
                text = tokenizer(text, add_special_tokens=False)["input_ids"]
            text = list(text) + [sep]
            ids, types = ids + text, types + [0] * len(text)
        if video_tokens is not None and video_tokens.shape[1] > 0:  # (B, 0): text only, as a probe's prior
            video = video_tokens[i].tolist() + [sep]
            ids, types = ids + video, types + [1] * len(video)
        rows.append((ids, types))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((batch, length), pad)
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        token_type_ids[i, :len(ids)] = torch.tensor(types)
        attention_mask[i, :len(ids)] = 1
    return input_ids, token_type_ids, attention_mask


def mask_tokens(input_ids, maskable, mask_id, probability=0.15, generator=None):
    """BERT's masking: each maskable position is chosen with ``probability`` (at least one per row) and
    replaced by ``mask_id``. input_ids, maskable (bool) (B, S) -> (masked input_ids, labels), labels = -100
    where not chosen."""
    check_rank("input_ids", input_ids, 2, "(batch, sequence)")
    if maskable.shape != input_ids.shape:
        raise ValueError(f"maskable {tuple(maskable.shape)} must match input_ids {tuple(input_ids.shape)}")
    if not maskable.any(dim=1).all():
        raise ValueError("every row needs at least one maskable position")
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~maskable, 2.0)
    chosen = (scores < probability) & maskable
    first = scores.argmin(dim=1)  # make sure every row predicts something
    chosen[torch.arange(len(chosen)), first] = True
    labels = input_ids.masked_fill(~chosen, -100)
    return input_ids.masked_fill(chosen, mask_id), labels


def videobert_losses(model, tokenizer, texts, video_tokens, meanings, generator, mask_probability=0.15,
                     single_modality_share=0.25):
    """One training step's four losses (each a scalar tensor), on a batch of B matching (text, video) pairs:

    text-only MLM and video-only MLM on the first ``single_modality_share`` of the batch, and text+video MLM +
    alignment on all of it (one forward pass). For alignment, half of the pairs get the text of a random other
    pair of the batch whose meaning differs (``meanings``: one hashable per pair, e.g. its (action, shape)): a
    random-pair negative. The joint MLM loss counts only the matching pairs (a masked word of a mismatched
    text cannot be read from the video). The alignment head reads the same masked pass: a separate unmasked
    pass cost a third more time per step and, in our runs, lowered the zero-shot verb accuracy while barely
    changing the alignment accuracy. texts: strings or lists of WordPiece ids; video_tokens (B, C).
    """
    device = next(model.parameters()).device
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def mlm(inputs, scored=None):
        input_ids, token_type_ids, attention_mask = inputs
        maskable = attention_mask.bool() & ~torch.isin(input_ids, special)
        masked, labels = mask_tokens(input_ids, maskable, tokenizer.mask_token_id, mask_probability,
                                     generator)
        if scored is not None:
            labels[~scored] = -100
        hidden = model(masked.to(device), token_type_ids.to(device), attention_mask.to(device))
        logits, targets = model.mlm_logits(hidden, labels.to(device))
        return F.cross_entropy(logits, targets), hidden, attention_mask.to(device)

    batch = len(texts)
    if batch < 2:
        raise ValueError(f"need at least 2 pairs per batch (for negatives), got {batch}")
    single = max(1, round(single_modality_share * batch))
    text_loss, *_ = mlm(make_sequences(tokenizer, texts=texts[:single]))
    video_loss, *_ = mlm(make_sequences(tokenizer, video_tokens=video_tokens[:single]))
    shift = torch.randint(1, batch, (batch,), generator=generator)
    negative = torch.rand(batch, generator=generator) < 0.5
    paired = []
    for i in range(batch):
        j = (i + shift[i].item()) % batch
        negative[i] &= meanings[j] != meanings[i]  # stays a positive if the draw says the same thing
        paired.append(texts[j] if negative[i] else texts[i])
    joint_inputs = make_sequences(tokenizer, texts=paired, video_tokens=video_tokens)
    joint_loss, hidden, attention_mask = mlm(joint_inputs, scored=~negative)
    alignment_loss = F.binary_cross_entropy_with_logits(model.alignment_logit(hidden, attention_mask),
                                                        (~negative).float().to(device))
    return {"text_mlm": text_loss, "video_mlm": video_loss, "joint_mlm": joint_loss,
            "alignment": alignment_loss}


def _linear_warmup_decay(optimizer, total_steps, warmup_share=0.1):
    """LambdaLR: the learning rate climbs linearly to its peak over the first ``warmup_share`` of the steps,
    then falls linearly to 0 at ``total_steps``."""
    warmup = max(1, round(warmup_share * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / (total_steps - warmup + 1))))


def train_videobert(model, tokenizer, texts, video_tokens, meanings, epochs, batch_size=32, lr=1e-4, seed=42,
                    alignment_weight=20.0, schedule="linear", mask_seed=None):
    """Train on matching (texts[i], video_tokens[i]) pairs for ``epochs`` passes with ``train.train``
    (full batches only: a batch needs 2 pairs for its negatives) and AdamW (weight decay 0.01).
    ``schedule``: "linear" (10% linear warm-up, linear decay to 0) or "one_cycle"
    (``train.adamw_one_cycle``: 10% warm-up from lr/25, cosine decay, Adam's beta1 cycled 0.95-0.85-0.95);
    benchmarks/videobert_schedule.md compares them over three seeds. Batches are drawn from ``seed``; masks
    and negatives from ``mask_seed`` (default ``seed`` + 1000, plus ``runtime.seed_offset()`` either way).
    The loss is the sum of ``videobert_losses`` with the alignment loss multiplied by ``alignment_weight``
    (its gradient on the encoder starts 60 to 90 times smaller than the MLM losses': the fresh head's
    small weights sit in between; unweighted, it stayed at log 2 in our runs). ``meanings``: one hashable
    per pair, what a negative must differ in. Returns a history dict: one list per (unweighted) loss,
    per step."""
    if alignment_weight < 0:
        raise ValueError(f"alignment_weight must be >= 0, got {alignment_weight}")
    if schedule not in ("linear", "one_cycle"):
        raise ValueError(f"schedule must be 'linear' or 'one_cycle', got {schedule!r}")
    if not len(texts) == len(video_tokens) == len(meanings):
        raise ValueError(f"{len(texts)} texts, {len(video_tokens)} videos, {len(meanings)} meanings")
    # not train()'s batch-order seed: two generators seeded alike draw the same numbers, so the masks would
    # replay the batch order's draws
    mask_seed = seed + 1000 if mask_seed is None else mask_seed
    generator = torch.Generator().manual_seed(mask_seed + seed_offset())  # masking and negatives
    token_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    params = [p for p in model.parameters() if p.requires_grad]
    if schedule == "one_cycle":
        optimizer, scheduler = adamw_one_cycle(params, lr, len(texts), batch_size, epochs, weight_decay=0.01,
                                               drop_last=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        scheduler = _linear_warmup_decay(optimizer, epochs * steps_per_epoch(len(texts), batch_size, True))

    def batch_loss(index):
        index = index.tolist()
        losses = videobert_losses(model, tokenizer, [token_ids[i] for i in index], video_tokens[index],
                                  [meanings[i] for i in index], generator)
        return {"loss": sum(losses.values()) + (alignment_weight - 1) * losses["alignment"], **losses}

    history = train(model, batch_loss, len(texts), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, drop_last=True, seed=seed, desc="VideoBERT")
    return {name: history[f"step_{name}"] for name in ("text_mlm", "video_mlm", "joint_mlm", "alignment")}


@torch.no_grad()
def zero_shot_predictions(model, tokenizer, video_tokens, candidates, probe=PROBE, batch_size=256):
    """The chapter's zero-shot classifier: feed ``probe`` + the video tokens and read the probabilities at its
    [MASK]s, restricted to the candidate words.

    video_tokens (N, C); candidates: one list of words per [MASK] of the probe (e.g. [verbs, nouns]).
    Returns one (N, len(words)) probability tensor per [MASK] (renormalised over its candidates).
    """
    device = next(model.parameters()).device
    ids = [tokenizer.convert_tokens_to_ids(words) for words in candidates]
    if any(i == tokenizer.unk_token_id for words in ids for i in words):
        raise ValueError(f"every candidate must be one token of the vocabulary, got {candidates}")
    model.eval()
    outputs = [[] for _ in candidates]
    for start in range(0, len(video_tokens), batch_size):
        chunk = video_tokens[start:start + batch_size]
        input_ids, token_type_ids, attention_mask = make_sequences(tokenizer, [probe] * len(chunk), chunk)
        masks = input_ids == tokenizer.mask_token_id
        if masks.sum(dim=1)[0] != len(candidates):
            raise ValueError(f"the probe has {masks.sum(dim=1)[0]} [MASK]s but {len(candidates)} "
                             "candidate lists")
        hidden = model(input_ids.to(device), token_type_ids.to(device), attention_mask.to(device))
        hidden = hidden[masks.to(device)].reshape(len(chunk), len(candidates), -1)
        for m, words in enumerate(ids):
            outputs[m].append(model.token_logits(hidden[:, m], torch.tensor(words, device=device))
                              .softmax(dim=-1).cpu())
    return [torch.cat(chunks) for chunks in outputs]


@torch.no_grad()
def alignment_scores(model, tokenizer, texts, video_tokens, batch_size=256):
    """Probability that each (texts[i], video_tokens[i]) pair matches, from the alignment head: -> (N,)."""
    device = next(model.parameters()).device
    model.eval()
    scores = []
    for start in range(0, len(texts), batch_size):
        inputs = [x.to(device) for x in make_sequences(tokenizer, texts[start:start + batch_size],
                                                         video_tokens[start:start + batch_size])]
        scores.append(model.alignment_logit(model(*inputs), inputs[2]).sigmoid().cpu())
    return torch.cat(scores)


def mismatched_texts(texts, meanings, seed=0):
    """For each text, a random other text of the list whose meaning differs (random-pair negatives)."""
    if len(texts) != len(meanings) or len(set(meanings)) < 2:
        raise ValueError("need one meaning per text and at least two different meanings")
    rng = random.Random(seed)
    out = []
    for meaning in meanings:
        j = rng.randrange(len(texts))
        while meanings[j] == meaning:
            j = rng.randrange(len(texts))
        out.append(texts[j])
    return out


def cluster_purity(leaves, labels):
    """Share of vectors whose leaf's most common label is their own label: leaves, labels (N,) -> float."""
    if len(leaves) != len(labels):
        raise ValueError(f"{len(leaves)} leaves but {len(labels)} labels")
    leaves, labels = np.asarray(leaves), np.asarray(labels)
    correct = 0
    for leaf in np.unique(leaves):
        correct += np.bincount(labels[leaves == leaf]).max()
    return correct / len(leaves)


def vocabulary_size_arithmetic(k, depth):
    """'12 ** 4 = 20,736'-style string for a tree with k children per node and depth levels."""
    return f"{k} ** {depth} = {k ** depth:,}" + ("" if depth < 2 else f" = {' x '.join([str(k)] * depth)}")
