"""BLIP-2: a Q-Former bridges a frozen image encoder and a frozen language model.

Stage 1 (``homl16.qformer``) trains the Q-Former (a BERT whose layers also hold learned *query* tokens
that cross-attend to the frozen image features) with three losses: image-text contrastive, image-text
matching and image-grounded text generation. Stage 2 (here) projects the query outputs into the
frozen language model's input space, as a soft visual prompt.

Here the frozen image encoder is the course's EfficientNet-Lite0 grid (``homl16.efficientnet``),
the Q-Former starts from the pretrained BERT of ``homl16.bert`` and the frozen LM is a small OPT
trained on caption text; ``to_hf_blip2`` copies the whole into transformers exactly.

Shapes: B = batch, Q = query tokens, T = text tokens, D = Q-Former width, N = image tokens,
C = image-token width, V = vocabulary.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_tensor
from homl16.efficientnet import add_coordinates, standardise
from homl16.qformer import (
    Blip2Stage1,
    bert_caption_ids,
    hf_qformer_config,
    hf_qformer_pairs,
    pretrained_parameter_names,
    qformer_from_bert,
    train_stage1,
)
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.weights import copy_weights, linear_pairs, module_pairs

COORDINATE_SCALE = 4.0  # (x, y) channels appended to the CNN grid, as in notebook 01
IMAGE_TOKEN = "<image>"  # the LM's placeholder for the projected query outputs (transformers' convention)


# ---------------------------------------------------------------- image tokens

def visual_tokens(maps, mean=None, std=None):
    """Frozen CNN grids (N, C, H, W) -> image tokens (N, H·W, C + 2) for the Q-Former: each channel
    standardised (with the given or the grids' own statistics), plus each cell's (x, y) position
    ("CoordConv", scaled to ±4: CNN features alone say little about *where*). Returns
    (tokens, mean, std)."""
    maps, mean, std = standardise(maps, mean, std)
    return add_coordinates(maps, COORDINATE_SCALE).flatten(2).transpose(1, 2).contiguous(), mean, std


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
    Returns train's history: per-epoch loss."""
    device = device or get_device()
    lm.to(device).train()
    optimizer, scheduler = adamw_one_cycle(lm, lr, len(input_ids), batch_size, epochs, weight_decay=0.01)

    def batch_loss(batch):
        ids, mask = input_ids[batch].to(device), attention_mask[batch].to(device)
        logits = lm(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(logits.flatten(0, 1), lm_targets(ids, mask).flatten())

    history = train(lm, batch_loss, len(input_ids), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, seed=seed, desc=desc)
    freeze(lm)
    return history


def freeze(module):
    """Freeze a module: no parameter needs (or holds) a gradient; eval mode (``Blip2Captioner`` keeps
    it there)."""
    module.requires_grad_(False).zero_grad(set_to_none=True)
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
        self.projection = nn.Linear(qformer.dim, language_model.config.hidden_size)

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
    Returns train's history: per-epoch loss."""
    if not len(image_tokens) == len(input_ids) == len(attention_mask):
        raise ValueError("image_tokens, input_ids and attention_mask must have the same length")
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

    return train(model, batch_loss, len(input_ids), optimizer, epochs=epochs, batch_size=batch_size,
                 scheduler=scheduler, seed=seed, desc=desc)


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
    pairs = [(qformer.query_tokens, hf.query_tokens), *hf_qformer_pairs(qformer, hf.qformer, False),
             *linear_pairs(captioner.projection, hf.language_projection),
             *module_pairs(lm, hf.language_model)]
    copy_weights(pairs, to="transformers", model_name="BLIP-2")
    for generation_config in (hf.generation_config, hf.language_model.generation_config):
        generation_config.update(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    image_processor = BlipImageProcessorPil(do_resize=False, size={"height": image_size, "width": image_size},
                                         do_rescale=True, do_normalize=False, do_convert_rgb=True)
    return hf, Blip2Processor(image_processor, tokenizer, num_query_tokens=qformer.num_queries)


# ---------------------------------------------------------------- the course's BLIP-2

def train_course_blip2(device=None):
    """Notebook 16's recipe from start to end: stage 1 on 1,000 shapes scenes, the small OPT pre-trained on
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
    from ``model`` and ``processor`` when given (notebook 16 passes the ones it has just trained),
    otherwise by training now with ``train_course_blip2`` (about a minute on a CPU)."""
    from homl16.pretrained import local_checkpoint

    if (model is None) != (processor is None):
        raise ValueError("give both model and processor (from to_hf_blip2) or neither")
    return local_checkpoint("shapes-blip2-v1", lambda: (model, processor) if model is not None
                            else train_course_blip2())
