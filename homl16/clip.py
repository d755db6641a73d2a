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
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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
from homl16.train import predict, tensor_batches
from homl16.transformer import EncoderBlock, causal_mask
from homl16.vit import ViT

MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned scale at 100, i.e. a temperature >= 0.01
PROMPT_TEMPLATE = "This is a photo of a {}."
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
    """CLIP's image tower: (B, 3, S, S) -> (B, P).

    The course's ViT, plus the LayerNorm that CLIP puts on the embedded tokens before the encoder;
    the class token's final (normalised) state is projected to P dimensions, without bias.
    """

    def __init__(self, img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4, ff_dim=128,
                 projection_dim=64):
        super().__init__()
        self.vit = ViT(img_size, patch_size, 3, 0, embed_dim, depth, num_heads, ff_dim, dropout=0.0,
                       pre_norm=True)  # no classifier: the projection below replaces it
        self.projection = nn.Linear(embed_dim, projection_dim, bias=False)

    def forward(self, X):
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
    trained = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=vocab_size)
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

    AdamW with a one-cycle schedule; after every step ``logit_scale`` is clipped to [0, ln 100],
    as in CLIP. ``negatives_group`` (optional) restricts the loss to groups of that many pairs
    within each batch (``grouped_clip_loss``), to study the number of negatives at equal cost.
    Returns a history dict: per epoch ``epoch``, ``loss``, ``seconds``; per step ``step_loss``
    and ``step_logit_scale``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (a contrastive loss needs negatives), "
                         f"got {batch_size}")
    device = device or get_device()
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # biases, norms, logit_scale
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps = epochs * -(-len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    history = {"epoch": [], "loss": [], "seconds": [], "step_loss": [], "step_logit_scale": []}
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        model.train()
        total = 0.0
        for X_batch, ids_batch in tensor_batches(images, input_ids, batch_size, shuffle=True,
                                                 generator=generator):
            image_embeds, text_embeds = model(X_batch.to(device), ids_batch.to(device))
            if negatives_group is None:
                loss = clip_loss(image_embeds, text_embeds, model.logit_scale)
            else:
                loss = grouped_clip_loss(image_embeds, text_embeds, model.logit_scale, negatives_group)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            total += loss.item() * len(X_batch)
            history["step_loss"].append(loss.item())
            history["step_logit_scale"].append(model.logit_scale.item())
        history["epoch"].append(epoch)
        history["loss"].append(total / len(images))
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    return history


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
    """A transformers ``CLIPConfig`` with the sizes of ``model`` (a ``CLIP`` of the two towers above)."""
    from transformers import CLIPConfig

    image, text = getattr(model, "image_encoder", None), getattr(model, "text_encoder", None)
    if not isinstance(image, ImageEncoder) or not isinstance(text, TextEncoder):
        raise ValueError("to_hf_clip needs a CLIP made of an ImageEncoder and a TextEncoder")
    vit = image.vit

    def tower(blocks, width):
        return {"hidden_size": width, "intermediate_size": blocks[0].mlp.fc1.out_features,
                "num_hidden_layers": len(blocks), "num_attention_heads": blocks[0].attn.num_heads,
                "hidden_act": "gelu", "layer_norm_eps": 1e-6}

    vision_config = tower(vit.blocks, vit.pos_embed.shape[-1])
    vision_config.update(image_size=vit.img_size, patch_size=vit.patch_embed.patch_size)
    text_config = tower(text.blocks, text.pos_embed.shape[-1])
    text_config.update(vocab_size=text.token_embed.num_embeddings, max_position_embeddings=text.max_length,
                       eos_token_id=text.eos_token_id, pad_token_id=text.eos_token_id, bos_token_id=0)
    return CLIPConfig(text_config=text_config, vision_config=vision_config,
                      projection_dim=image.projection.out_features,
                      logit_scale_init_value=model.logit_scale.item())


@torch.no_grad()
def copy_block_to_hf(block, layer):
    """Copy an ``EncoderBlock``'s weights into a transformers ``CLIPEncoderLayer``."""
    attention, (k_weight, v_weight), (k_bias, v_bias) = layer.self_attn, block.attn.kv.weight.chunk(2), \
        block.attn.kv.bias.chunk(2)
    attention.q_proj.load_state_dict(block.attn.q.state_dict())
    attention.k_proj.weight.copy_(k_weight)
    attention.k_proj.bias.copy_(k_bias)
    attention.v_proj.weight.copy_(v_weight)
    attention.v_proj.bias.copy_(v_bias)
    attention.out_proj.load_state_dict(block.attn.proj.state_dict())
    layer.layer_norm1.load_state_dict(block.norm1.state_dict())
    layer.layer_norm2.load_state_dict(block.norm2.state_dict())
    layer.mlp.fc1.load_state_dict(block.mlp.fc1.state_dict())
    layer.mlp.fc2.load_state_dict(block.mlp.fc2.state_dict())


@torch.no_grad()
def to_hf_clip(model):
    """A transformers ``CLIPModel`` computing the same embeddings as ``model`` (a trained ``CLIP``).

    ``get_image_features(X).pooler_output`` equals ``model.image_encoder(X)`` and
    ``get_text_features(ids).pooler_output`` equals ``model.text_encoder(ids)``.
    """
    from transformers import CLIPModel

    hf = CLIPModel(hf_clip_config(model)).eval()
    image, text = model.image_encoder.cpu(), model.text_encoder.cpu()
    vit, vision = image.vit, hf.vision_model
    vision.embeddings.patch_embedding.weight.copy_(vit.patch_embed.conv2d.weight)
    vision.embeddings.class_embedding.copy_(vit.cls_token[0, 0])
    # transformers' patch conv has no bias: adding ours to every patch position's embedding is the same
    position = vit.pos_embed[0].clone()
    position[1:] += vit.patch_embed.conv2d.bias
    vision.embeddings.position_embedding.weight.copy_(position)
    vision.pre_layrnorm.load_state_dict(vit.pre_norm.state_dict())
    for block, layer in zip(vit.blocks, vision.encoder.layers):
        copy_block_to_hf(block, layer)
    vision.post_layernorm.load_state_dict(vit.norm.state_dict())
    hf.visual_projection.load_state_dict(image.projection.state_dict())
    words = hf.text_model
    words.embeddings.token_embedding.load_state_dict(text.token_embed.state_dict())
    words.embeddings.position_embedding.weight.copy_(text.pos_embed[0])
    for block, layer in zip(text.blocks, words.encoder.layers):
        copy_block_to_hf(block, layer)
    words.final_layer_norm.load_state_dict(text.norm.state_dict())
    hf.text_projection.load_state_dict(text.projection.state_dict())
    hf.logit_scale.copy_(model.logit_scale.detach().cpu())
    return hf


def clip_processor(tokenizer, image_size=32):
    """A ``CLIPProcessor``: images resized to ``image_size`` and scaled to [-1, 1] as in training."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size},
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


# ---------------------------------------------------------------- the course's CLIP

def train_course_clip(num_scenes=3000, epochs=16, batch_size=128, lr=3e-3, image_size=32, patch_size=4,
                      embed_dim=64, seed=42, device=None):
    """Notebook 10's recipe: a small CLIP trained on shapes-world scenes whose (colour, shape)
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
    generated scenes. Made once, from ``model`` and ``tokenizer`` when given (notebook 10 passes
    the CLIP it has just trained with ``train_course_clip``), otherwise by training it now."""
    from homl16.pretrained import local_checkpoint

    def build():
        trained, trained_tokenizer = (model, tokenizer) if model is not None else train_course_clip()[:2]
        trained = trained.cpu().eval()
        return to_hf_clip(trained), clip_processor(trained_tokenizer, trained.image_encoder.vit.img_size)

    return local_checkpoint("shapes-clip-v1", build)
