"""ViLBERT from scratch: regions with 5-D spatial encodings, co-attention between a text stream and a
visual stream, and the two pre-training heads (masked region modelling, image-text alignment).

The text stream is a pretrained BERT (frozen here, so its output states are computed once); the visual
stream is a set of region features from a frozen CNN (the boxes of the shapes stand in for Faster R-CNN
detections). Co-attention layers on top let each stream query the other.

Shapes: B = batch, L = text tokens, R = regions per image, C = region feature size, E = BERT width,
D = co-attention width, H = heads, K = classes of the CNN (1,000 ImageNet classes).
"""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from homl16.boxes import check_boxes
from homl16.checks import check_rank
from homl16.data.shapes import COLOURS, SHAPES, SIZES, caption_for
from homl16.efficientnet import frozen_cnn
from homl16.runtime import get_device, seed_offset
from homl16.train import adamw_one_cycle, train
from homl16.transformer import MLP, EncoderBlock, MultiHeadAttention

RELATION_FLIPS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NEGATIVE_KINDS = ("colour", "shape", "size", "relation")


# ---------------------------------------------------------------- regions

def image_hw(image_size):
    """An int or an (height, width) pair -> (height, width) floats, checked positive."""
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return float(height), float(width)


def spatial_encoding(boxes, image_size):
    """ViLBERT's 5-D location of each region: boxes (..., 4) pixel corners (x0, y0, x1, y1) ->
    (..., 5) = (x0 / W, y0 / H, x1 / W, y1 / H, box area / image area)."""
    check_boxes("boxes", boxes)
    height, width = image_hw(image_size)
    x0, y0, x1, y1 = boxes.float().unbind(-1)
    if (x1 < x0).any() or (y1 < y0).any():
        raise ValueError("boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
    area = (x1 - x0) * (y1 - y0) / (width * height)
    return torch.stack([x0 / width, y0 / height, x1 / width, y1 / height, area], dim=-1)


def box_cell_weights(boxes, grid_size, image_size):
    """How much of each feature-map cell a box covers, normalised to sum to 1 per box.

    boxes (..., 4) pixel corners, inclusive of their last pixel as in the shapes world;
    grid_size (h, w) of the feature map -> (..., h * w) weights.
    """
    height, width = image_hw(image_size)
    h, w = grid_size
    boxes = boxes.float()

    def overlap(low, high, cells, size):  # (...,) box extent -> (..., cells) covered length per cell
        edges = torch.arange(cells, device=boxes.device) * (size / cells)
        right = torch.minimum(edges + size / cells, (high + 1).unsqueeze(-1))
        return (right - torch.maximum(edges, low.unsqueeze(-1))).clamp(min=0)

    x0, y0, x1, y1 = boxes.unbind(-1)
    weights = overlap(y0, y1, h, height).unsqueeze(-1) * overlap(x0, x1, w, width).unsqueeze(-2)
    weights = weights.flatten(-2)
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)


def region_features(maps, boxes, image_size):
    """Mean-pool a feature map inside each box (cells weighted by the share the box covers them).

    maps (B, C, h, w), boxes (B, R, 4) pixel corners -> (B, R, C).
    """
    check_rank("maps", maps, 4, "(batch, channels, height, width)")
    check_rank("boxes", boxes, 3, "(batch, regions, 4)")
    check_boxes("boxes", boxes)
    if len(maps) != len(boxes):
        raise ValueError(f"maps and boxes batch sizes differ: {len(maps)} vs {len(boxes)}")
    weights = box_cell_weights(boxes, maps.shape[2:], image_size)  # (B, R, h*w)
    return weights @ maps.flatten(2).transpose(1, 2)


def region_crops(images, boxes, size=64, margin=2):
    """Crop every box (with a small margin) and resize it: images (B, 3, H, W) in [0, 1], boxes (B, R, 4)
    -> (B, R, 3, size, size)."""
    check_rank("images", images, 4, "(batch, 3, height, width)")
    check_rank("boxes", boxes, 3, "(batch, regions, 4)")
    H, W = images.shape[2:]
    crops = []
    for image, image_boxes in zip(images, boxes.long().tolist()):
        for x0, y0, x1, y1 in image_boxes:
            x0, y0 = max(x0 - margin, 0), max(y0 - margin, 0)
            x1, y1 = min(x1 + 1 + margin, W), min(y1 + 1 + margin, H)
            crop = image[:, y0:y1, x0:x1].unsqueeze(0)
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops).view(*boxes.shape[:2], 3, size, size)


@torch.no_grad()
def region_class_distributions(images, boxes, size=64, batch_size=256, device=None):
    """The frozen CNN's ImageNet class distribution for each region crop, the target of masked region
    modelling (ViLBERT used its Faster R-CNN's distribution over Visual Genome classes):
    images (B, 3, H, W), boxes (B, R, 4) -> (B, R, 1000) probabilities, on the CPU."""
    device = device or get_device()
    cnn = frozen_cnn().to(device)
    crops = region_crops(images, boxes, size).flatten(0, 1)
    probabilities = torch.cat([cnn(crops[i:i + batch_size].to(device)).softmax(-1).cpu()
                               for i in range(0, len(crops), batch_size)])
    return probabilities.view(*boxes.shape[:2], -1)


class RegionEmbedding(nn.Module):
    """Region features plus their projected 5-D locations, with the [IMG] token in front.

    forward(features (B, R, C), spatial (B, R, 5), region_mask (B, R) bool or None)
    -> tokens (B, 1 + R, D), mask (B, 1 + R). [IMG] = the mean of the (valid) region features with the
    location of the whole image (0, 0, 1, 1, 1); it goes through the same projections as the regions.
    """

    def __init__(self, feature_dim, embed_dim, dropout=0.0):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, embed_dim)
        self.spatial_proj = nn.Linear(5, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features, spatial, region_mask=None):
        check_rank("features", features, 3, "(batch, regions, feature_dim)")
        check_rank("spatial", spatial, 3, "(batch, regions, 5)")
        if spatial.shape[:2] != features.shape[:2] or spatial.shape[2] != 5:
            raise ValueError(f"spatial must be {tuple(features.shape[:2]) + (5,)}, "
                             f"got {tuple(spatial.shape)}")
        if region_mask is None:
            region_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        weights = region_mask.unsqueeze(-1).float()
        mean_feature = (features * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        whole_image = spatial.new_tensor([0.0, 0.0, 1.0, 1.0, 1.0]).expand(len(spatial), 1, 5)
        features = torch.cat([mean_feature, features], dim=1)
        spatial = torch.cat([whole_image, spatial], dim=1)
        tokens = self.norm(self.feature_proj(features) + self.spatial_proj(spatial))
        mask = torch.cat([region_mask.new_ones(len(region_mask), 1), region_mask], dim=1)
        return self.dropout(tokens), mask


# ---------------------------------------------------------------- co-attention

def key_mask(mask):
    """(B, M) bool (True = real token) -> (B, 1, 1, M), the attention mask over keys; None stays None."""
    return None if mask is None else mask[:, None, None, :]


class CoAttentionLayer(nn.Module):
    """ViLBERT's co-attention layer pair (Co-TRM followed by a TRM block in each stream), pre-norm.

    Text queries attend to the visual keys/values and visual queries to the text keys/values (both
    from the states before this layer), each added residually; then each stream runs its own
    self-attention and feed-forward block. forward(text (B, L, D), visual (B, N, D), text_mask (B, L),
    visual_mask (B, N)) -> (text, visual); with ``return_attention=True`` also the co-attention weights
    (text -> visual (B, H, L, N), visual -> text (B, H, N, L)).
    """

    def __init__(self, embed_dim, num_heads, ff_dim, dropout=0.0):
        super().__init__()
        self.text_query_norm, self.text_kv_norm = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.visual_query_norm, self.visual_kv_norm = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.text_to_visual = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.visual_to_text = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.text_block = EncoderBlock(embed_dim, num_heads, ff_dim, dropout)
        self.visual_block = EncoderBlock(embed_dim, num_heads, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text, visual, text_mask=None, visual_mask=None, return_attention=False):
        from_visual = self.text_to_visual(self.text_query_norm(text), context=self.visual_kv_norm(visual),
                                          attn_mask=key_mask(visual_mask), return_attention=return_attention)
        from_text = self.visual_to_text(self.visual_query_norm(visual), context=self.text_kv_norm(text),
                                        attn_mask=key_mask(text_mask), return_attention=return_attention)
        if return_attention:
            (from_visual, text_weights), (from_text, visual_weights) = from_visual, from_text
        text = self.text_block(text + self.dropout(from_visual), attn_mask=key_mask(text_mask))
        visual = self.visual_block(visual + self.dropout(from_text), attn_mask=key_mask(visual_mask))
        return (text, visual, text_weights, visual_weights) if return_attention else (text, visual)


class ViLBERT(nn.Module):
    """Two-stream encoder on top of a (frozen) BERT, with ViLBERT's two pre-training heads.

    forward(text_states (B, L, E) BERT outputs, text_mask (B, L) bool, features (B, R, C),
    spatial (B, R, 5), region_mask (B, R) bool or None) -> dict with text (B, L, D), visual
    (B, 1 + R, D) (index 0 is [IMG]), alignment_logits (B, 2) from [IMG] * [CLS] (class 1 = the caption
    matches), region_logits (B, R, K) for masked region modelling, and with ``return_attention=True``
    co_attention: per layer the text -> visual weights (B, H, L, 1 + R).
    The BERT states enter the co-attention width D through one linear layer (ViLBERT's streams also
    have different widths: 768 for text, 1,024 for the image).
    """

    def __init__(self, text_dim, feature_dim, embed_dim=128, depth=2, num_heads=4, ff_dim=256,
                 num_region_classes=1000, dropout=0.1):
        super().__init__()
        self.text_proj = nn.Sequential(nn.Linear(text_dim, embed_dim), nn.LayerNorm(embed_dim))
        self.regions = RegionEmbedding(feature_dim, embed_dim, dropout)
        self.layers = nn.ModuleList(CoAttentionLayer(embed_dim, num_heads, ff_dim, dropout)
                                    for _ in range(depth))
        self.text_norm, self.visual_norm = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.alignment_head = nn.Linear(embed_dim, 2)
        self.region_head = nn.Sequential(MLP(embed_dim, ff_dim), nn.Linear(embed_dim, num_region_classes))

    def forward(self, text_states, text_mask, features, spatial, region_mask=None, return_attention=False):
        check_rank("text_states", text_states, 3, "(batch, text_tokens, text_dim)")
        if len(text_states) != len(features):
            raise ValueError(f"text and image batch sizes differ: {len(text_states)} vs {len(features)}")
        text = self.text_proj(text_states)
        visual, visual_mask = self.regions(features, spatial, region_mask)
        co_attention = []
        for layer in self.layers:
            out = layer(text, visual, text_mask, visual_mask, return_attention=return_attention)
            text, visual = out[:2]
            if return_attention:
                co_attention.append(out[2])
        text, visual = self.text_norm(text), self.visual_norm(visual)
        result = {"text": text, "visual": visual,
                  "alignment_logits": self.alignment_head(visual[:, 0] * text[:, 0]),
                  "region_logits": self.region_head(visual[:, 1:])}
        if return_attention:
            result["co_attention"] = co_attention
        return result


# ---------------------------------------------------------------- pre-training losses

def mask_regions(features, region_mask, probability, generator=None):
    """Masked region modelling's input: each real region is masked with ``probability`` (at least one
    per image) and its feature zeroed; its location stays. features (B, R, C), region_mask (B, R) bool
    -> (masked features, masked (B, R) bool)."""
    check_rank("features", features, 3, "(batch, regions, feature_dim)")
    if not 0 < probability <= 1:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    draws = torch.rand(region_mask.shape, generator=generator).to(features.device)
    masked = (draws < probability) & region_mask
    scores = draws.masked_fill(~region_mask, 2.0)  # force the lowest draw of each image if none is masked
    forced = F.one_hot(scores.argmin(1), region_mask.shape[1]).bool() & region_mask
    masked = masked | (forced & ~masked.any(1, keepdim=True))
    return features.masked_fill(masked.unsqueeze(-1), 0.0), masked


def masked_region_kl(region_logits, target_probabilities, masked):
    """KL(target || predicted) averaged over the masked regions: region_logits (B, R, K), target
    probabilities (B, R, K), masked (B, R) bool -> scalar (0 if nothing is masked)."""
    check_rank("region_logits", region_logits, 3, "(batch, regions, classes)")
    if region_logits.shape != target_probabilities.shape:
        raise ValueError(f"logits {tuple(region_logits.shape)} and targets "
                         f"{tuple(target_probabilities.shape)} shapes differ")
    if not masked.any():
        return region_logits.sum() * 0.0
    log_predicted = region_logits[masked].log_softmax(-1)
    return F.kl_div(log_predicted, target_probabilities[masked], reduction="batchmean")


# ---------------------------------------------------------------- captions and negatives

def replace_attribute(objects, index, attribute, value):
    """A copy of the objects list with one object's colour, shape or size changed."""
    return [dataclasses.replace(o, **{attribute: value}) if i == index else o for i, o in enumerate(objects)]


def one_word_negative(objects, kind, rng):
    """A caption of the scene with exactly one word changed, so it no longer describes the scene.

    kind: "colour", "shape" or "size" (one object's attribute gets another value, which may be the
    other object's, so the model must bind attributes to regions), or "relation" ("left of" <->
    "right of", "above" <-> "below"; two-object scenes only). rng: a numpy Generator.
    """
    if kind == "relation":
        if len(objects) != 2:
            raise ValueError("relation negatives need two-object scenes")
        caption = caption_for(objects)
        for word, flipped in RELATION_FLIPS.items():
            if f" {word} " in caption:
                return caption.replace(f" {word} ", f" {flipped} ")
    choices = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES)}
    if kind not in choices:
        raise ValueError(f"kind must be one of {NEGATIVE_KINDS}, got {kind!r}")
    index = int(rng.integers(len(objects)))
    old = getattr(objects[index], kind)
    new = [v for v in choices[kind] if v != old][int(rng.integers(len(choices[kind]) - 1))]
    return caption_for(replace_attribute(objects, index, kind, new))


@torch.no_grad()
def bert_text_states(bert, tokenizer, captions, max_length=16, batch_size=256, device=None):
    """Run the frozen BERT once: captions (list of N str) -> (states (N, L, E), mask (N, L) bool),
    on the CPU."""
    device = device or get_device()
    bert = bert.to(device).eval()
    tokens = tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_length,
                       return_tensors="pt")
    states = []
    for i in range(0, len(captions), batch_size):
        batch = {k: v[i:i + batch_size].to(device) for k, v in tokens.items()}
        states.append(bert(**batch).last_hidden_state.cpu())
    return torch.cat(states), tokens["attention_mask"].bool()


# ---------------------------------------------------------------- training and evaluation

def input_statistics(data):
    """Per-dimension mean and std of the real text tokens (E,), region features (C,) and region
    locations (5,) of a training set."""
    tokens = data["text"][data["text_mask"]]
    statistics = {"text": (tokens.mean(0), tokens.std(0) + 1e-3)}
    for key in ("features", "spatial"):
        values = data[key][data["region_mask"]]
        statistics[key] = (values.mean(0), values.std(0) + 1e-3)
    return statistics


def standardise_inputs(data, statistics):
    """A copy of ``data`` with text, negatives, features and spatial standardised per dimension (with
    the training set's ``input_statistics``). The frozen BERT's output has dimensions of very different
    scales, so without this what makes "red" differ from "blue" is a tiny signal; likewise box areas
    vary between about 0.02 and 0.15 only, so "small" and "large" would hardly move the location code."""
    data = dict(data)
    text_mean, text_std = statistics["text"]
    for key in ("text", "negatives"):
        data[key] = (data[key] - text_mean) / text_std
    for key in ("features", "spatial"):
        mean, std = statistics[key]
        data[key] = (data[key] - mean) / std
    return data



@dataclasses.dataclass
class PairBatch:
    """Image-caption pairs for the model: text (B, L, E), text_mask (B, L), features (B, R, C),
    spatial (B, R, 5), region_mask (B, R), and is_match (B,) long (1 = the caption matches)."""

    text: torch.Tensor
    text_mask: torch.Tensor
    features: torch.Tensor
    spatial: torch.Tensor
    region_mask: torch.Tensor
    is_match: torch.Tensor

    def to(self, device):
        return PairBatch(*(t.to(device) for t in dataclasses.astuple(self)))


def sample_pairs(data, index, generator, hard_share=0.35, random_share=0.15, keep=None):
    """Pair each image in ``index`` with its caption, a one-word negative (``hard_share``) or the
    caption of another image (``random_share``); images where ``keep`` (B,) bool is True always get
    their own caption. ``data`` holds text (N, L, E), text_mask (N, L), negatives (N, k, L, E),
    negatives_mask (N, k, L), features, spatial, region_mask."""
    n = len(index)
    draw = torch.rand(n, generator=generator)
    hard, other = draw < hard_share, (draw >= hard_share) & (draw < hard_share + random_share)
    if keep is not None:
        hard, other = hard & ~keep, other & ~keep
    text, text_mask = data["text"][index].clone(), data["text_mask"][index].clone()
    which = torch.randint(data["negatives"].shape[1], (n,), generator=generator)
    text[hard] = data["negatives"][index[hard], which[hard]]
    text_mask[hard] = data["negatives_mask"][index[hard], which[hard]]
    shift = torch.randint(1, len(data["text"]), (n,), generator=generator)
    others = (index + shift) % len(data["text"])  # never the image's own caption
    text[other], text_mask[other] = data["text"][others[other]], data["text_mask"][others[other]]
    return PairBatch(text, text_mask, data["features"][index], data["spatial"][index],
                     data["region_mask"][index],
                     (~(hard | other)).long())


def train_vilbert(model, data, epochs, batch_size=64, lr=2e-3, weight_decay=0.01, hard_share=0.35,
                  random_share=0.15, region_share=0.3, mask_probability=0.3, region_weight=1.0, device=None,
                  seed=42, desc="ViLBERT"):
    """Pre-train on the two tasks at once with ``train.train`` and AdamW + one-cycle, each image of a batch
    serving one of them: a share ``region_share`` of the images does masked region modelling (with its
    own caption, regions masked with ``mask_probability``, KL to ``data["region_targets"]`` (N, R, K)); the
    others do alignment (own caption, one-word negative (``hard_share``) or another image's caption
    (``random_share``); cross-entropy on matching / not matching, all regions visible: with two regions
    per image, masking one would often hide the very object a one-word negative is about).
    Returns a history dict of per-epoch lists: epoch, loss, alignment_loss, region_kl, alignment_accuracy,
    seconds."""
    device = device or get_device()
    model.to(device)
    generator = torch.Generator().manual_seed(seed + seed_offset())  # tasks, negatives and masks
    num_items = len(data["text"])
    optimizer, scheduler = adamw_one_cycle(model, lr, num_items, batch_size, epochs, weight_decay)

    def batch_loss(index):
        for_regions = torch.rand(len(index), generator=generator) < region_share
        batch = sample_pairs(data, index, generator, hard_share, random_share, keep=for_regions).to(device)
        features, masked = mask_regions(batch.features, batch.region_mask, mask_probability, generator)
        for_regions = for_regions.to(device)
        masked = masked & for_regions.unsqueeze(1)
        features = torch.where(for_regions[:, None, None], features, batch.features)
        out = model(batch.text, batch.text_mask, features, batch.spatial, batch.region_mask)
        logits, is_match = out["alignment_logits"][~for_regions], batch.is_match[~for_regions]
        alignment = F.cross_entropy(logits, is_match) if len(logits) else logits.sum() * 0.0
        region = masked_region_kl(out["region_logits"], data["region_targets"][index].to(device), masked)
        correct = (logits.argmax(1) == is_match).float().mean() if len(logits) else torch.tensor(0.0)
        return {"loss": alignment + region_weight * region, "alignment_loss": alignment, "region_kl": region,
                "alignment_accuracy": correct}

    history = train(model, batch_loss, num_items, optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


@torch.no_grad()
def match_probabilities(model, text, text_mask, features, spatial, region_mask=None, batch_size=512,
                        device=None):
    """P(caption matches image) for each pair: text (N, L, E), features (N, R, C), ... -> (N,) on the CPU."""
    device = device or get_device()
    model.eval()
    if region_mask is None:
        region_mask = torch.ones(features.shape[:2], dtype=torch.bool)
    out = []
    for i in range(0, len(text), batch_size):
        part = [t[i:i + batch_size].to(device) for t in (text, text_mask, features, spatial, region_mask)]
        out.append(model(*part)["alignment_logits"].softmax(-1)[:, 1].cpu())
    return torch.cat(out)


@torch.no_grad()
def pair_scores(model, text, text_mask, features, spatial, region_mask=None, device=None):
    """Match probability of every (image, caption) pair: N images and M captions -> (N, M)."""
    n, m = len(features), len(text)
    if region_mask is None:
        region_mask = torch.ones(features.shape[:2], dtype=torch.bool)
    rows = [match_probabilities(model, text, text_mask, features[i:i + 1].expand(m, -1, -1),
                                spatial[i:i + 1].expand(m, -1, -1), region_mask[i:i + 1].expand(m, -1),
                                device=device) for i in range(n)]
    return torch.stack(rows)


@torch.no_grad()
def masked_region_kl_eval(model, text, text_mask, features, spatial, region_targets, region_mask=None,
                          device=None):
    """Mean KL(CNN distribution || prediction) when each real region in turn is masked (all others
    visible), over N image-caption pairs -> float."""
    device = device or get_device()
    model.eval()
    if region_mask is None:
        region_mask = torch.ones(features.shape[:2], dtype=torch.bool)
    total, count = 0.0, 0
    for r in range(features.shape[1]):
        masked = torch.zeros_like(region_mask)
        masked[:, r] = region_mask[:, r]
        if not masked.any():
            continue
        hidden = features.masked_fill(masked.unsqueeze(-1), 0)
        out = model(text.to(device), text_mask.to(device), hidden.to(device), spatial.to(device),
                    region_mask.to(device))
        kl = masked_region_kl(out["region_logits"].cpu(), region_targets, masked)
        total, count = total + kl.item() * masked.sum().item(), count + masked.sum().item()
    return total / count


# ---------------------------------------------------------------- the shapes data, end to end

def scene_tensors(scenes, max_regions=None):
    """Images (N, 3, S, S) in [0, 1], boxes (N, R, 4) padded with whole-image boxes, region_mask (N, R)."""
    max_regions = max_regions or max(len(s.boxes) for s in scenes)
    size = scenes[0].image.shape[0]
    images = torch.tensor(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    boxes = torch.tensor([[0, 0, size - 1, size - 1]] * max_regions).repeat(len(scenes), 1, 1)
    region_mask = torch.zeros(len(scenes), max_regions, dtype=torch.bool)
    for i, scene in enumerate(scenes):
        boxes[i, :len(scene.boxes)] = torch.tensor(scene.boxes)
        region_mask[i, :len(scene.boxes)] = True
    return images, boxes, region_mask


def shapes_vilbert_data(scenes, bert, tokenizer, negatives_per_scene=2, stride=8, max_length=12, seed=0,
                        device=None):
    """Everything ViLBERT needs for a list of shapes-world Scenes, computed with the frozen networks.

    Returns a dict: images (N, 3, S, S), boxes (N, R, 4), region_mask (N, R), features (N, R, C) (CNN map
    at ``stride`` mean-pooled in each box), spatial (N, R, 5), region_targets (N, R, 1000) (the CNN's
    class distribution of each region crop), captions (N str), text (N, L, E) and text_mask (N, L) (BERT
    states), negative_captions (N lists of k str), negative_kinds (N lists), negatives (N, k, L, E),
    negatives_mask (N, k, L): one-word negatives of random kinds (relation only for two objects).
    """
    from homl16.efficientnet import cached_feature_maps

    if not scenes:
        raise ValueError("scenes is empty")
    if negatives_per_scene > len(NEGATIVE_KINDS) - 1 and any(len(s.objects) != 2 for s in scenes):
        raise ValueError(f"negatives_per_scene must be at most {len(NEGATIVE_KINDS) - 1} when a scene "
                         "has no two objects (relation negatives need two)")
    rng = np.random.default_rng(seed)
    images, boxes, region_mask = scene_tensors(scenes)
    size = images.shape[-1]
    maps = cached_feature_maps(images, stride=stride, device=device)
    kinds = [[NEGATIVE_KINDS[j] for j in rng.choice(len(NEGATIVE_KINDS) - (len(s.objects) != 2),
                                                    negatives_per_scene, replace=False)] for s in scenes]
    negative_captions = [[one_word_negative(s.objects, kind, rng) for kind in scene_kinds]
                         for s, scene_kinds in zip(scenes, kinds)]
    captions = [s.caption for s in scenes]
    text, text_mask = bert_text_states(bert, tokenizer, captions + sum(negative_captions, []), max_length,
                                       device=device)
    n = len(scenes)
    return {"images": images, "boxes": boxes, "region_mask": region_mask,
            "features": region_features(maps, boxes.float(), size), "spatial": spatial_encoding(boxes, size),
            "region_targets": region_class_distributions(images, boxes, device=device),
            "captions": captions, "text": text[:n], "text_mask": text_mask[:n],
            "negative_captions": negative_captions, "negative_kinds": kinds,
            "negatives": text[n:].view(n, negatives_per_scene, *text.shape[1:]),
            "negatives_mask": text_mask[n:].view(n, negatives_per_scene, -1)}


@torch.no_grad()
def co_attention_maps(model, text, text_mask, features, spatial, region_mask=None, layer=-1, device=None):
    """Where each word looks in the image: the text -> visual co-attention of one layer, averaged over
    heads: text (N, L, E), features (N, R, C), ... -> (N, L, 1 + R) on the CPU (column 0 is [IMG])."""
    device = device or get_device()
    model.eval()
    args = [t.to(device) for t in (text, text_mask, features, spatial)]
    region_mask = None if region_mask is None else region_mask.to(device)
    return model(*args, region_mask, return_attention=True)["co_attention"][layer].mean(1).cpu()
