"""CLIP from scratch: a dual encoder trained with a symmetric contrastive loss, and zero-shot use.

An image tower (a ViT) and a text tower (a causal transformer) each end with a linear
projection into a shared embedding space of size P. Matching image-caption pairs are pulled
together, every other pair of the batch pushed apart. Both towers mirror transformers'
``CLIPVisionModel`` / ``CLIPTextModel`` layer for layer, so ``to_hf_clip`` turns a trained
model into a ``CLIPModel`` that the book's ``pipeline`` code loads.

Shapes: B = batch, L = tokens per caption, D = tower width, P = projection size, C = classes.
"""

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import (
    check_ids,
    check_positive,
    check_rank,
    check_strings,
    check_tensor,
)
from homl16.contrastive import symmetric_infonce
from homl16.data.shapes import COLOURS, SHAPES
from homl16.data.tasks import shapes_clip_data
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, predict, train
from homl16.transformer import EncoderBlock, causal_mask
from homl16.vit import ViT
from homl16.weights import copy_weights, linear_pairs

MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned scale at 100, i.e. a temperature >= 0.01
PROMPT_TEMPLATE = "This is a photo of a {}."
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # the image tower maps pixels in [0, 1] to [-1, 1], as its processor does
# One held-out colour per shape: each colour and each shape is still seen, never these pairs together.
HELD_OUT_COMBINATIONS = (("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "diamond"))


def clip_loss(image_embeds, text_embeds, logit_scale):
    """CLIP's symmetric contrastive loss (InfoNCE), as the chapter explains it.

    image_embeds, text_embeds: (B, P), row i of each from the same pair; logit_scale: scalar
    tensor, the log of the inverse temperature (clipped at ln 100). Both are l2-normalised,
    their cosine similarities (B, B) divided by the temperature, and cross-entropy with target i
    is taken over rows (image -> text) and columns (text -> image), then averaged.
    """
    check_rank("image_embeds", image_embeds, 2, "(batch, projection_dim)")
    check_rank("text_embeds", text_embeds, 2, "(batch, projection_dim)")
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image_embeds and text_embeds shapes differ: {tuple(image_embeds.shape)} "
                         f"vs {tuple(text_embeds.shape)}")
    check_tensor("logit_scale", logit_scale)
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    return symmetric_infonce(image_embeds @ text_embeds.T * logit_scale.clamp(max=MAX_LOGIT_SCALE).exp())


class ImageEncoder(nn.Module):
    """CLIP's image tower: images (B, 3, S, S) in [0, 1] -> (B, P).

    Pixels are normalised with mean ``PIXEL_MEAN`` and std ``PIXEL_STD`` (the ``CLIPProcessor`` of
    ``clip_processor`` does the same, so the converted model gets what this tower sees). Then the
    course's ViT, plus the LayerNorm that CLIP puts on the embedded tokens before the encoder; the
    class token's final (normalised) state is projected to P dimensions, without bias.
    """

    def __init__(self, img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, ff_dim=128,
                 projection_dim=64):
        super().__init__()
        self.sizes = {"image_size": img_size, "patch_size": patch_size, "hidden_size": embed_dim,  # as
                      "num_hidden_layers": depth, "num_attention_heads": num_heads,  # CLIPVisionConfig
                      "intermediate_size": ff_dim, "projection_dim": projection_dim}  # names them
        self.vit = ViT(img_size, patch_size, 3, 0, embed_dim, depth, num_heads, ff_dim, dropout=0.0,
                       pre_norm=True)  # no classifier: the projection below replaces it
        self.projection = nn.Linear(embed_dim, projection_dim, bias=False)

    def forward(self, X):
        X = (X - PIXEL_MEAN) / PIXEL_STD
        return self.projection(self.vit.forward_features(X)[:, 0])  # class token's final state -> (B, P)


class TextEncoder(nn.Module):
    """CLIP's text tower: token ids (B, L) -> (B, P).

    Token and position embeddings, pre-norm encoder blocks with a causal mask, a final LayerNorm;
    the state of the end-of-text token (the first ``eos_token_id`` of each row) is projected to P.
    Thanks to the causal mask, padding after that token changes nothing.
    """

    def __init__(self, vocab_size, eos_token_id, max_length=32, embed_dim=64, depth=2, num_heads=4,
                 ff_dim=128, projection_dim=64):
        super().__init__()
        self.eos_token_id = eos_token_id
        self.max_length = max_length
        self.sizes = {"vocab_size": vocab_size, "max_position_embeddings": max_length,  # as CLIPTextConfig
                      "hidden_size": embed_dim, "num_hidden_layers": depth,  # names them
                      "num_attention_heads": num_heads, "intermediate_size": ff_dim,
                      "projection_dim": projection_dim}
        self.token_embed = nn.Embedding(vocab_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_length, embed_dim) * 0.01)
        self.blocks = nn.ModuleList(EncoderBlock(embed_dim, num_heads, ff_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.projection = nn.Linear(embed_dim, projection_dim, bias=False)

    def forward(self, input_ids):
        check_rank("input_ids", input_ids, 2, "(batch, tokens)")
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"input_ids has {length} tokens, more than max_length={self.max_length}")
        check_ids("input_ids", input_ids, self.token_embed.num_embeddings)
        is_eos = input_ids == self.eos_token_id
        if not is_eos.any(dim=1).all():
            raise ValueError(f"every row of input_ids needs an end-of-text token (id {self.eos_token_id})")
        Z = self.token_embed(input_ids) + self.pos_embed[:, :length]  # (B, L, D)
        mask = causal_mask(length, input_ids.device)
        for block in self.blocks:
            Z = block(Z, attn_mask=mask)
        Z = self.norm(Z)
        eos = is_eos.int().argmax(dim=1)  # first end-of-text token of each row
        return self.projection(Z[torch.arange(len(Z), device=Z.device), eos])  # (B, P)


class CLIP(nn.Module):
    """A dual encoder: ``forward(X, input_ids)`` -> (image_embeds (B, P), text_embeds (B, P)).

    Any two towers that map to the same P work; ``logit_scale`` (the log inverse temperature) is
    learned, starting at ln(1 / 0.07) as in the paper.
    """

    def __init__(self, image_encoder, text_encoder, logit_scale=math.log(1 / 0.07)):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def forward(self, X, input_ids):
        if len(X) != len(input_ids):
            raise ValueError(f"X and input_ids batch sizes differ: {len(X)} vs {len(input_ids)}")
        return self.image_encoder(X), self.text_encoder(input_ids)


def small_clip(tokenizer, image_size=32, patch_size=4, embed_dim=64, image_depth=3, text_depth=2,
               num_heads=4, projection_dim=64, max_length=32, seed=42):
    """The course's small CLIP, randomly initialised from ``seed``, its text tower sized for ``tokenizer``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        image_encoder = ImageEncoder(image_size, patch_size, embed_dim, image_depth, num_heads,
                                     2 * embed_dim, projection_dim)
        text_encoder = TextEncoder(len(tokenizer), tokenizer.eos_token_id, max_length, embed_dim,
                                   text_depth, num_heads, 2 * embed_dim, projection_dim)
        return CLIP(image_encoder, text_encoder)


# ---------------------------------------------------------------- captions and tokenizer

def train_caption_tokenizer(captions, vocab_size=400):
    """A CLIP tokenizer (byte-level BPE, ``</w>`` word ends) trained on ``captions`` with `tokenizers`."""
    from transformers import CLIPTokenizer

    captions = check_strings("captions", captions)
    # no progress: the Rust trainer writes blank lines to the process's stdout, which a notebook stores
    trained = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=vocab_size, show_progress=False)
    # The BPE trainer breaks ties between equally frequent pairs in hash order, so its token ids
    # change from run to run: renumber them in a fixed order (special tokens first, then by length
    # and text) so that a seed gives the same model.
    bpe = json.loads(trained.backend_tokenizer.to_str())["model"]
    specials = set(trained.all_special_tokens)
    ordered = sorted(bpe["vocab"],
                     key=lambda t: (0, bpe["vocab"][t], "") if t in specials else (1, len(t), t))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(ordered)}, merges=merges)


def tokenize(tokenizer, texts, max_length=32):
    """Token ids (N, L) of ``texts``, padded to the longest (at most ``max_length`` tokens)."""
    texts = check_strings("texts", texts)
    check_positive("max_length", max_length, integer=True)
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"]


# ---------------------------------------------------------------- data

def seen_combinations(held_out=HELD_OUT_COMBINATIONS):
    """Every (colour, shape) pair except the ``held_out`` ones."""
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]


# ---------------------------------------------------------------- training

def grouped_clip_loss(image_embeds, text_embeds, logit_scale, group_size):
    """``clip_loss`` averaged over consecutive groups of ``group_size`` pairs: each pair is then
    contrasted with only ``group_size - 1`` negatives, as if the batch were that small."""
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (a contrastive loss needs negatives), "
                         f"got {group_size}")
    groups = zip(image_embeds.split(group_size), text_embeds.split(group_size))
    return torch.stack([clip_loss(i, t, logit_scale) for i, t in groups if len(i) > 1]).mean()


def train_clip(model, images, input_ids, epochs, batch_size=128, lr=2e-3, weight_decay=0.05,
               negatives_group=None, device=None, seed=42, desc="CLIP"):
    """Train ``model`` (a ``CLIP``) on matching pairs: images (N, 3, S, S), input_ids (N, L).

    AdamW with a one-cycle schedule (no weight decay on biases, norms and ``logit_scale``), by
    ``homl16.train.train``; after every step ``logit_scale`` is clipped to [0, ln 100], as in CLIP.
    ``negatives_group`` (optional) restricts the loss to groups of that many pairs within each batch
    (``grouped_clip_loss``), to study the number of negatives at equal cost.
    Returns a history dict: per epoch ``epoch``, ``loss``, ``seconds``; per step ``step_loss``
    and ``step_logit_scale``.
    """
    check_positive("epochs", epochs, integer=True)
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (a contrastive loss needs negatives), "
                         f"got {batch_size}")
    device = device or get_device()
    model.to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases, norms, logit_scale
    # a 30% warm-up, not the usual 10%: with 10% the small CLIP learns shapes much worse
    # (zero-shot shape accuracy 0.92 -> 0.83, unseen pairs 0.50 -> 0.30 in notebook 12)
    optimizer, scheduler = adamw_one_cycle([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr,
                                           len(images), batch_size, epochs, weight_decay, warmup=0.3)
    scales = []

    def batch_loss(batch):
        image_embeds, text_embeds = model(images[batch].to(device), input_ids[batch].to(device))
        if negatives_group is None:
            return clip_loss(image_embeds, text_embeds, model.logit_scale)
        return grouped_clip_loss(image_embeds, text_embeds, model.logit_scale, negatives_group)

    def clip_scale(step):
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        scales.append(model.logit_scale.item())

    history = train(model, batch_loss, len(images), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, after_step=clip_scale, seed=seed, desc=desc)
    return {**history, "step_logit_scale": scales}


# ---------------------------------------------------------------- zero-shot use

@torch.no_grad()
def encode_images(model, X, batch_size=512, device=None):
    """l2-normalised image embeddings (N, P) of images X (N, 3, S, S), on the CPU."""
    check_tensor("X", X)
    return F.normalize(predict(model.image_encoder, X, batch_size, device), dim=-1)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, device=None):
    """l2-normalised text embeddings (N, P) of a list of strings, on the CPU."""
    device = device or get_device()
    model.eval().to(device)
    input_ids = tokenize(tokenizer, texts, getattr(model.text_encoder, "max_length", 32))
    return F.normalize(model.text_encoder(input_ids.to(device)), dim=-1).cpu()


def zero_shot_classify(model, tokenizer, X, class_names, template=PROMPT_TEMPLATE, device=None):
    """Zero-shot class probabilities (N, C) of images X (N, 3, S, S).

    Each class name goes into ``template`` ("This is a photo of a {}."), the prompts are
    embedded, and each image's cosine similarities to them, times the learned scale, go
    through a softmax.
    """
    class_names = check_strings("class_names", class_names)
    if len(class_names) < 2:
        raise ValueError(f"class_names needs at least 2 classes, got {class_names}")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' where the class name goes, got {template!r}")
    text_embeds = encode_texts(model, tokenizer, [template.format(name) for name in class_names], device)
    image_embeds = encode_images(model, X, device=device)
    scale = model.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp().cpu()
    return (scale * image_embeds @ text_embeds.T).softmax(dim=-1)


# ---------------------------------------------------------------- to transformers

def hf_clip_config(model):
    """A transformers ``CLIPConfig`` with the sizes of ``model`` (a ``CLIP`` of the two towers above).

    transformers' ``CLIPTextModel`` pools at the first end-of-text token, as ``TextEncoder`` does,
    except when the end-of-text id is 2: it then pools at the largest token id (a legacy rule kept
    for old checkpoints), so such a model is refused rather than converted into a different one."""
    from transformers import CLIPConfig

    image, text = getattr(model, "image_encoder", None), getattr(model, "text_encoder", None)
    if not isinstance(image, ImageEncoder) or not isinstance(text, TextEncoder):
        raise ValueError("to_hf_clip needs a CLIP made of an ImageEncoder and a TextEncoder")
    if text.eos_token_id == 2:
        raise ValueError("the text tower's end-of-text id is 2, which transformers' CLIPTextModel treats "
                         "as a legacy checkpoint (it pools at the largest token id, not at the first "
                         "end-of-text token): give the end-of-text token another id "
                         "(train_caption_tokenizer gives 1)")
    common = {"hidden_act": "gelu", "layer_norm_eps": 1e-6}
    vision_config = {**image.sizes, **common}
    text_config = {**text.sizes, **common, "eos_token_id": text.eos_token_id,
                   "pad_token_id": text.eos_token_id, "bos_token_id": 0}
    return CLIPConfig(text_config=text_config, vision_config=vision_config,
                      projection_dim=image.sizes["projection_dim"],
                      logit_scale_init_value=model.logit_scale.item())


def block_pairs(block, layer):
    """(course, transformers) tensor pairs of an ``EncoderBlock`` and a ``CLIPEncoderLayer``;
    the fused key-value projection pairs with transformers' separate ``k_proj`` and ``v_proj``."""
    attention = layer.self_attn
    return [*linear_pairs(block.attn.q, attention.q_proj),
            *linear_pairs(block.attn.kv, [attention.k_proj, attention.v_proj]),
            *linear_pairs(block.attn.proj, attention.out_proj),
            *linear_pairs(block.norm1, layer.layer_norm1), *linear_pairs(block.norm2, layer.layer_norm2),
            *linear_pairs(block.mlp.fc1, layer.mlp.fc1), *linear_pairs(block.mlp.fc2, layer.mlp.fc2)]


def clip_pairs(model, hf):
    """Every (course, transformers) tensor pair of a ``CLIP`` and a ``CLIPModel`` of the same sizes."""
    image, text, vision, words = model.image_encoder, model.text_encoder, hf.vision_model, hf.text_model
    vit = image.vit
    # transformers' patch conv has no bias: adding ours to every patch position's embedding is the same
    position = torch.cat([vit.pos_embed[0, :1], vit.pos_embed[0, 1:] + vit.patch_embed.conv2d.bias])
    pairs = [(vit.patch_embed.conv2d.weight, vision.embeddings.patch_embedding.weight),
             (vit.cls_token[0, 0], vision.embeddings.class_embedding),
             (position, vision.embeddings.position_embedding.weight),
             *linear_pairs(vit.pre_norm, vision.pre_layrnorm)]
    for block, layer in zip(vit.blocks, vision.encoder.layers):
        pairs += block_pairs(block, layer)
    pairs += [*linear_pairs(vit.norm, vision.post_layernorm),
              *linear_pairs(image.projection, hf.visual_projection),
              (text.token_embed.weight, words.embeddings.token_embedding.weight),
              (text.pos_embed[0], words.embeddings.position_embedding.weight)]
    for block, layer in zip(text.blocks, words.encoder.layers):
        pairs += block_pairs(block, layer)
    return pairs + [*linear_pairs(text.norm, words.final_layer_norm),
                    *linear_pairs(text.projection, hf.text_projection), (model.logit_scale, hf.logit_scale)]


@torch.no_grad()
def to_hf_clip(model):
    """A transformers ``CLIPModel`` computing the same embeddings as ``model`` (a trained ``CLIP``).

    ``get_text_features(ids).pooler_output`` equals ``model.text_encoder(ids)``; for images X in
    [0, 1], ``get_image_features((X - 0.5) / 0.5).pooler_output`` equals ``model.image_encoder(X)``:
    the pixel normalisation is the processor's job (``clip_processor``), as for OpenAI's CLIP.
    """
    from transformers import CLIPModel

    hf = CLIPModel(hf_clip_config(model)).eval()
    copy_weights(clip_pairs(model.cpu(), hf), to="transformers", model_name="CLIP")
    return hf


def clip_processor(tokenizer, image_size=32):
    """A ``CLIPProcessor`` for ``to_hf_clip``'s model: images resized to ``image_size``, scaled to [0, 1],
    then normalised with the image tower's mean and std, so they reach the model as ``ImageEncoder``'s
    own normalisation leaves them."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size},
                                            image_mean=[PIXEL_MEAN] * 3, image_std=[PIXEL_STD] * 3)
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- the course's CLIP

def train_course_clip(num_scenes=3000, epochs=16, batch_size=128, lr=3e-3, image_size=32, patch_size=4,
                      embed_dim=64, seed=42, device=None):
    """Notebook 12's recipe: a small CLIP trained on shapes-world scenes whose (colour, shape)
    pairs exclude ``HELD_OUT_COMBINATIONS``. Returns (model, tokenizer, history)."""
    X, captions, _ = shapes_clip_data(num_scenes, seed=0, image_size=image_size,
                                      combinations=seen_combinations())
    tokenizer = train_caption_tokenizer(captions)
    model = small_clip(tokenizer, image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                       seed=seed)
    history = train_clip(model, X, tokenize(tokenizer, captions), epochs, batch_size, lr,
                         device=device, seed=seed)
    return model.cpu().eval(), tokenizer, history


def course_clip_checkpoint(model=None, tokenizer=None):
    """Directory of the course's shapes CLIP saved as a transformers ``CLIPModel`` with its
    ``CLIPProcessor``, e.g. for ``CLIPModel.from_pretrained(course_clip_checkpoint())`` to score
    generated scenes. Made once, from ``model`` and ``tokenizer`` when given (notebook 12 passes
    the CLIP it has just trained with ``train_course_clip``), otherwise by training it now."""
    from homl16.pretrained import local_checkpoint

    def build():
        trained, trained_tokenizer = (model, tokenizer) if model is not None else train_course_clip()[:2]
        trained = trained.cpu().eval()
        image_size = trained.image_encoder.sizes["image_size"]
        return to_hf_clip(trained), clip_processor(trained_tokenizer, image_size)

    return local_checkpoint("shapes-clip-v3", build)  # v3: images in [0, 1], trained by homl16.train
