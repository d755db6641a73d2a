"""Bad inputs raise a clear ``ValueError``/``TypeError`` that names the argument (issue 11).

One table for the whole package: (function or class, bad arguments, expected exception, message
regex). Every module of ``homl16`` that takes inputs has rows here, including the checks that
existed before, so the table is the one place that shows the coverage. Models are tiny, so the
whole table runs in a few seconds.
"""

import inspect

import matplotlib
import numpy as np
import pytest
import torch
from transformers import Swinv2Config
from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

from homl16 import (
    augment,
    bert,
    blip2,
    boxes,
    checks,
    clip,
    cnn,
    contrastive,
    cost,
    dalle,
    deit,
    detr,
    dino,
    efficientnet,
    flamingo,
    notebook,
    perceiver,
    plot,
    pretrained,
    pvt,
    qformer,
    runtime,
    search,
    segment,
    show_attend_tell,
    swin,
    swinv2,
    tokencut,
    train,
    transformer,
    videobert,
    vilbert,
    vit,
    vqvae,
    weights,
    widgets,
)
from homl16.data import captions, convert, digits, food, pets, photos, shapes, tasks

matplotlib.use("Agg")


def images(batch=2, channels=3, size=8):
    return torch.rand(batch, channels, size, size)


def where(function):
    """(module, qualified name) of a function, class, bound method or module instance of homl16."""
    if not (inspect.isfunction(function) or inspect.isclass(function) or inspect.ismethod(function)):
        function = type(function)  # a model instance: its forward
    return function.__module__.removeprefix("homl16."), function.__qualname__


def case(function, *args, raises=ValueError, match, **kwargs):
    """One row of the table: ``function(*args, **kwargs)`` must raise ``raises`` matching ``match``."""
    return pytest.param(function, args, kwargs, raises, match, id=".".join(where(function)))


class Tokenizer:  # the two attributes small_clip needs
    eos_token_id = 1

    def __len__(self):
        return 10


torch.manual_seed(0)
SMALL_CNN = cnn.SmallCNN(in_channels=3, num_classes=2, width=4)
SMALL_VIT = vit.ViT(
    img_size=8, patch_size=4, in_channels=3, num_classes=2, embed_dim=8, depth=1, num_heads=2, ff_dim=8
)
SMALL_DEIT = deit.DeiT(img_size=8, patch_size=4, num_classes=2, embed_dim=8, depth=1, num_heads=2, ff_dim=8)
SMALL_CLIP = clip.small_clip(
    Tokenizer(),
    image_size=8,
    patch_size=4,
    embed_dim=8,
    image_depth=1,
    text_depth=1,
    num_heads=2,
    projection_dim=4,
    max_length=6,
)
TEXT_ENCODER = SMALL_CLIP.text_encoder
EOS_2_TEXT_ENCODER = clip.TextEncoder(10, 2, max_length=6, embed_dim=8, depth=1, num_heads=2, ff_dim=8,
                                      projection_dim=4)  # transformers pools differently at end-of-text id 2
VQVAE = vqvae.VQVAE(num_codes=4, code_dim=2, width=4)
DALLE = dalle.DalleTransformer(
    text_vocab_size=5, num_codes=4, text_length=2, image_tokens=4, embed_dim=8, depth=1, num_heads=2
)
WORDS = dalle.WordTokenizer(["a", "red", "circle"])
DETR = detr.DETR(
    num_classes=2,
    in_channels=4,
    dim=8,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    ff_dim=8,
    num_queries=3,
)
DINO_LOSS = dino.DINOLoss(out_dim=4)
DINO_NET = dino.DINONetwork(
    vit.ViT(img_size=8, patch_size=4, num_classes=1, embed_dim=8, depth=1, num_heads=2, ff_dim=8),
    dino.DINOHead(8, 4, hidden_dim=8, bottleneck_dim=4),
)
PVT_SRA = pvt.SpatialReductionAttention(8, 2, sr_ratio=4)
SWIN_BLOCK = swin.SwinBlock(8, 2, window_size=2)
SWIN = swin.Swin(embed_dim=8, depths=(1,), num_heads=(2,), window_size=2)
SEG_HEAD = segment.SegmentationHead([4, 8], num_classes=3)
ATTENTION = show_attend_tell.AdditiveAttention(feature_dim=4, state_dim=6, attention_dim=5)
DECODER = show_attend_tell.CaptionDecoder(
    feature_dim=4, vocab_size=7, embed_dim=4, hidden_dim=6, attention_dim=5
)
VOCABULARY = show_attend_tell.Vocabulary(["a red circle"])
MHA = transformer.MultiHeadAttention(8, 2)
MLP = transformer.MLP(8, 16)
TARGET = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}
RNG = np.random.default_rng(0)
SHAPE = shapes.ShapeObject("circle", "red", "small", (10, 10), 4)
PERCEIVER = perceiver.PerceiverClassifier(8, in_channels=1, num_latents=4, latent_dim=8, num_blocks=1,
                                          self_attends_per_block=1, num_self_attention_heads=2)
HF_VIT = vit.small_hf_vit(image_size=8, patch_size=4, hidden_size=8, depth=2, num_heads=2)[0]
HF_DEIT = deit.small_hf_deit(image_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2,
                             num_labels=2)[0]
HF_SWIN = swin.small_hf_swin(embed_dim=8, depths=(2,), num_heads=(2,), window_size=4)[0]
HF_SWINV2_LAYER = Swinv2Layer(Swinv2Config(window_size=4), dim=16, input_resolution=(8, 8), num_heads=2)
QFORMER = qformer.QFormer(2, dim=8, num_layers=1, num_heads=2, ff_dim=8, image_dim=3, vocab_size=10,
                          max_positions=8)
STAGE1 = qformer.Blip2Stage1(QFORMER, torch.arange(1, 5), embed_dim=4)
CAPTION_TOKENIZER = blip2.caption_lm_tokenizer(["a red circle"])
RESAMPLER = flamingo.PerceiverResampler(feature_dim=4, dim=8, num_latents=2, depth=1, num_heads=2)
XATTN = flamingo.GatedCrossAttentionDense(8, 2)


def small_flamingo():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=6, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    return flamingo.Flamingo(GPT2LMHeadModel(config), feature_dim=4, num_latents=2, resampler_depth=1,
                             num_heads=2)


def tiny_bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=8, max_position_embeddings=8))


FLAMINGO = small_flamingo()


def tiny_bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=16)
    return BertForMaskedLM(config)


class WordPieces:  # the attributes VideoBERT's probes read; no word is in its vocabulary
    all_special_ids, unk_token_id = [0], 0

    def convert_tokens_to_ids(self, words):
        return [0] * len(words)


VIDEOBERT = videobert.VideoBert(tiny_bert_mlm())
VILBERT = vilbert.ViLBERT(text_dim=6, feature_dim=4, embed_dim=8, depth=1, num_heads=2, ff_dim=8,
                          num_region_classes=3)
REGIONS = vilbert.RegionEmbedding(feature_dim=4, embed_dim=8)

CASES = [
    # ---------------------------------------------------------------- checks (the shared helpers)
    case(checks.check_tensor, "x", [1, 2], raises=TypeError, match="x must be a torch.Tensor"),
    case(checks.check_rank, "x", torch.zeros(2, 3), 3, "(b, n, d)", match=r"x must have shape \(b, n, d\)"),
    case(checks.check_rank, "x", torch.zeros(0, 3), 2, "(b, d)", match="x is an empty batch"),
    case(checks.check_images, "X", images(channels=1), 3, match="X must have 3 channels"),
    case(checks.check_images, "X", images(), 3, 16, 16, match="X must be 16x16 images"),
    case(checks.check_grid_tokens, "x", torch.zeros(1, 5, 2), (2, 2), match="x has 5 tokens"),
    case(checks.check_divisible, "img_size", 30, 4, "patch_size", match="divisible by patch_size=4"),
    case(checks.check_divisible, "img_size", 32, 0, "patch_size", match="patch_size must be positive"),
    case(checks.check_positive, "epochs", 0, match="epochs must be positive"),
    case(checks.check_positive, "batch_size", 2.5, integer=True, raises=TypeError,
         match="batch_size must be an int"),
    case(checks.check_probability, "p", 1.5, match=r"p must be a probability in \[0, 1\]"),
    case(checks.check_interval, "scale", (0.5, 0.1), match="scale must be a pair"),
    case(checks.check_strings, "texts", "a red circle", raises=TypeError,
         match="texts must be a list of strings"),
    case(checks.check_strings, "texts", [], match="texts is empty"),
    case(checks.check_ids, "ids", torch.tensor([0, 9]), 5, match=r"ids must be in \[0, 5\)"),
    case(checks.check_ids, "ids", torch.tensor([0.5]), 5, raises=TypeError, match="integer token ids"),
    # ---------------------------------------------------------------- augment
    case(augment.random_shift, torch.zeros(3, 8, 8), match="X must have shape"),
    case(augment.random_shift, images(), max_shift=-1, match="max_shift must be a non-negative int"),
    case(augment.chance, 1.5, 4, match="p must be a probability"),
    case(augment.random_horizontal_flip, images(), p=-0.1, match="p must be a probability"),
    case(augment.random_grayscale, images(), p=2, match="p must be a probability"),
    case(augment.random_solarize, images(), p=1.1, match="p must be a probability"),
    case(augment.random_resized_crop, images(), 0, match="size must be positive"),
    case(augment.random_resized_crop, images(), 4, scale=(0.5, 2.0), match="scale"),
    case(augment.random_resized_crop, images(), 4, ratio=(0, 1), match="ratio must be a pair"),
    case(augment.grayscale, images(channels=2), match="X must have 1 or 3 channels"),
    case(augment.grayscale, torch.zeros(3, 8, 8), match="X must have shape"),
    case(augment.color_jitter, images(), brightness=1.5, match=r"brightness must be in \[0, 1\]"),
    case(augment.color_jitter, images(), hue=0.7, match=r"hue must be in \[0, 0.5\]"),
    case(augment.rotate_hue, images(), torch.zeros(3), match="got 3 angles for a batch of 2"),
    case(augment.gaussian_blur, images(), sigma=(0.0, 1.0), match="sigma must be a pair"),
    # ---------------------------------------------------------------- boxes
    case(boxes.cxcywh_to_xyxy, torch.zeros(2, 3), match=r"boxes must have shape \(\.\.\., 4\)"),
    case(boxes.xyxy_to_cxcywh, [0, 0, 1, 1], raises=TypeError, match="boxes must be a torch.Tensor"),
    case(boxes.box_iou, torch.zeros(4), torch.zeros(2, 4), match=r"boxes1 must have shape \(N, 4\)"),
    case(boxes.generalized_box_iou, torch.tensor([[1.0, 1, 0, 0]]), torch.zeros(1, 4), match="x1 >= x0"),
    case(boxes.generalized_box_iou, torch.zeros(1, 4), torch.zeros(2, 2, 4),
         match=r"boxes2 must have shape \(N, 4\)"),
    case(boxes.average_precision, [0.5], [True], 0, match="no ground-truth"),
    case(boxes.average_precision, [0.5, 0.2], [True], 1, match="is_true_positive"),
    case(boxes.average_precision, [0.5, 0.2], [True, True], 1,
         match="2 true positives but only num_targets=1"),
    case(boxes.mean_average_precision, [], [], match="at least one image"),
    case(boxes.mean_average_precision, [{}], [{}, {}], match="1 predictions but 2 targets"),
    case(boxes.mean_average_precision,
         [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
         [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}], iou_threshold=50, match="iou_threshold"),
    case(boxes.mean_average_precision,
         [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
         [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}], matching="pascal",
         match="matching must be"),
    # ---------------------------------------------------------------- cnn
    case(cnn.SmallCNN, in_channels=0, match="in_channels must be positive"),
    case(SMALL_CNN, images(channels=1), match="X must have 3 channels"),
    case(SMALL_CNN, images(size=4), match="at least 8x8 pixels"),
    # ---------------------------------------------------------------- cost
    case(cost.grid_shape, 0, match="grid sides must be positive"),
    case(cost.grid_shape, "big", match="grid must be an int side or an"),
    case(cost.attention_scores, "local", 8, match="kind must be one of"),
    case(cost.attention_scores, "window", 8, window_size=0, match="window_size must be positive"),
    case(cost.attention_scores, "sra", 8, sr_ratio=0, match="sr_ratio must be positive"),
    case(cost.attention_scores, "window", 9, window_size=7, match="divisible by window_size"),
    case(cost.make_block, "local", match="kind must be one of"),
    case(cost.time_block, torch.nn.Identity(), torch.zeros(1), repeats=0, match="repeats must be at least 1"),
    case(cost.measure_cost_growth, [16], patch_size=0, match="patch_size must be positive"),
    case(cost.measure_cost_growth, [], match="image_sides is empty"),
    case(cost.measure_cost_growth, [16], kinds=("local",), match="kind must be one of"),
    case(cost.window_block_parts, [56], repeats=0, match="repeats must be positive"),
    case(cost.growth_per_doubling, [{"kind": "global", "image_side": 8, "seconds": 1}], "global",
         match="at least two sizes"),
    # ---------------------------------------------------------------- vit
    case(vit.PatchEmbedding, 3, 8, patch_size=0, match="patch_size must be positive"),
    case(vit.ViT, img_size=30, patch_size=4, match="img_size=30 must be divisible by patch_size=4"),
    case(SMALL_VIT, images(size=16), match="X must be 8x8 images"),
    case(SMALL_VIT.forward_features, images(size=10), interpolate_pos_encoding=True,
         match="image height=10 must be divisible by patch_size=4"),
    case(SMALL_VIT, images(channels=1), match="X must have 3 channels"),
    case(vit.copy_weights_from_hf, SMALL_VIT, HF_VIT, match="depth differs: 2 hf layers vs 1 blocks"),
    # ---------------------------------------------------------------- deit
    case(deit.DeiT, img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, ff_dim=8,
         inference_head="both", match="inference_head must be one of"),
    case(SMALL_DEIT.forward_heads, images(size=16), match="X must be 8x8 images"),
    case(deit.hard_distillation_loss, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long),
         torch.zeros(2, 3), match="3 labels for a batch of 2"),
    case(deit.soft_distillation_loss, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
         torch.zeros(2, 4), match="teacher_logits has shape"),
    case(deit.soft_distillation_loss, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
         torch.zeros(2, 3), alpha=2, match="alpha"),
    case(deit.Distiller, SMALL_DEIT, SMALL_CNN, loss="medium", match="loss must be one of"),
    case(deit.copy_deit_weights_from_hf, SMALL_DEIT, HF_DEIT, match="the sizes differ"),
    # ---------------------------------------------------------------- transformer
    case(transformer.MultiHeadAttention, 10, 3, match="embed_dim=10 must be divisible by num_heads=3"),
    case(transformer.MultiHeadAttention, 8, 0, match="num_heads must be positive"),
    case(MHA, torch.zeros(2, 8), match=r"x must have shape \(batch, tokens, embed_dim\)"),
    case(MHA, torch.zeros(2, 3, 6), match="x must have 8 features"),
    case(MHA, torch.zeros(2, 3, 8), context=torch.zeros(2, 3, 6), match="context must have 8 features"),
    case(MHA, torch.zeros(2, 3, 8), context=torch.zeros(1, 3, 8), match="batch sizes differ"),
    case(MLP, torch.zeros(2, 3, 6), match="x must have embed_dim=8"),
    case(transformer.EncoderBlock(8, 2, 16), torch.zeros(0, 3, 8), match="x is an empty batch"),
    # ---------------------------------------------------------------- train
    case(train.accuracy, torch.zeros(4, 3), torch.zeros(4, 1), match="do not match"),
    case(train.predict, SMALL_CNN, images(), batch_size=0, match="batch_size must be positive"),
    case(train.predict, SMALL_CNN, torch.zeros(0, 3, 8, 8), match="X is empty"),
    case(train.evaluate, SMALL_CNN, torch.zeros(0, 3, 8, 8), torch.zeros(0), match="X is empty"),
    case(train.fit, SMALL_CNN, (images(), torch.zeros(2)), 0, None, match="epochs must be positive"),
    case(train.fit, SMALL_CNN, images(), 1, None, match=r"train_data must be a non-empty \(X, y\) pair"),
    case(train.fit, SMALL_CNN, (images(), torch.zeros(2)), 1, None, augment="flip", raises=TypeError,
         match="augment must be a callable"),
    # ---------------------------------------------------------------- clip
    case(clip.clip_loss, torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor(1.0), match="shapes differ"),
    case(clip.clip_loss, torch.zeros(2, 4), torch.zeros(2, 4), 2.0, raises=TypeError,
         match="logit_scale must be a torch.Tensor"),
    case(transformer.causal_mask, 0, match="length must be positive"),
    case(TEXT_ENCODER, torch.tensor([[2, 3, 1, 1, 1, 1, 1]]), match="more than max_length=6"),
    case(TEXT_ENCODER, torch.tensor([[2, 3]]), match="end-of-text token"),
    case(TEXT_ENCODER, torch.tensor([[2, 30, 1]]), match=r"input_ids must be in \[0, 10\)"),
    case(SMALL_CLIP, images(), torch.tensor([[2, 1]]), match="batch sizes differ"),
    case(captions.object_phrase, SHAPE, RNG, keep=(0.5, 2.0), match=r"keep\[1\] must be a probability"),
    case(captions.describe, [], RNG, match="1 or 2 objects"),
    case(clip.train_caption_tokenizer, "a red circle", raises=TypeError,
         match="captions must be a list of strings"),
    case(clip.tokenize, None, "a red circle", raises=TypeError, match="texts must be a list of strings"),
    case(clip.tokenize, None, [], match="texts is empty"),
    case(tasks.images_to_tensor, [], match="images is empty"),
    case(tasks.images_to_tensor, [np.zeros((8, 8), np.uint8)], match=r"images must be \(N, H, W, 3\)"),
    case(clip.grouped_clip_loss, torch.zeros(4, 2), torch.zeros(4, 2), torch.tensor(1.0), 1,
         match="group_size"),
    case(clip.train_clip, SMALL_CLIP, images(), torch.ones(2, 2, dtype=torch.long), 0, match="epochs"),
    case(clip.train_clip, SMALL_CLIP, images(), torch.ones(2, 2, dtype=torch.long), 1, batch_size=1,
         match="batch_size must be at least 2"),
    case(clip.encode_images, SMALL_CLIP, [[0.0]], raises=TypeError, match="X must be a torch.Tensor"),
    case(clip.zero_shot_classify, SMALL_CLIP, None, images(), "circle", raises=TypeError,
         match="class_names must be a list of strings"),
    case(clip.zero_shot_classify, SMALL_CLIP, None, images(), ["circle"], match="at least 2 classes"),
    case(clip.zero_shot_classify, SMALL_CLIP, None, images(), ["a", "b"], template="photo", match="template"),
    case(contrastive.recall_at_k, torch.zeros(2, 3), 1, match="square"),
    case(contrastive.recall_at_k, torch.zeros(2, 2), 3, match="k must be between 1 and 2"),
    case(contrastive.symmetric_infonce, torch.zeros(2, 3), match="square"),
    case(weights.copy_weights, [(torch.zeros(2), torch.zeros(3))],
         match=r"\(2,\) in the course's model vs \(3,\)"),
    case(weights.copy_weights, [], to="hf", match="to must be"),
    case(weights.module_pairs, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, bias=False),
         match="not the same"),
    case(train.train, torch.nn.Linear(2, 2), None, 4, None, match="exactly one of epochs and steps"),
    case(train.train, torch.nn.Linear(2, 2), None, 4, None, epochs=1, batch_size=8, drop_last=True,
         match="exceeds num_items"),
    case(clip.hf_clip_config, torch.nn.Module(), match="needs a CLIP made of an ImageEncoder"),
    case(clip.to_hf_clip, clip.CLIP(SMALL_CLIP.image_encoder, EOS_2_TEXT_ENCODER),
         match="end-of-text id is 2"),
    # ---------------------------------------------------------------- vqvae, dalle
    case(vqvae.VectorQuantizer, num_codes=0, match="num_codes must be positive"),
    case(VQVAE.quantizer, torch.zeros(1, 3, 2, 2), match="z must have 2 channels"),
    case(VQVAE, images(channels=1), match="X must have 3 channels"),
    case(VQVAE.encode, images(), batch_size=0, match="batch_size must be positive"),
    case(VQVAE.decode, torch.zeros(1, 5, dtype=torch.long), match="not a square grid"),
    case(VQVAE.decode, torch.full((1, 2, 2), 9), match="ids must be in"),
    case(vqvae.train_vqvae, VQVAE, images(), 0, match="epochs must be positive"),
    case(vqvae.train_vqvae, VQVAE, images(channels=1), 1, match="X must have 3 channels"),
    case(vqvae.codebook_usage, torch.tensor([], dtype=torch.long), 4, match="ids is empty"),
    case(vqvae.codebook_usage, torch.tensor([-1, 2]), 4, match=r"ids must be in \[0, 4\)"),
    case(dalle.WordTokenizer, [], match="words is empty"),
    case(WORDS.encode, ["a blue circle"], 4, match="unknown words"),
    case(WORDS.encode, ["a red circle"], 2, match="more than length=2"),
    case(WORDS.encode, ["a red circle"], 0, match="length must be positive"),
    case(WORDS.decode, [[1, 2]], raises=TypeError, match="ids must be a torch.Tensor"),
    case(DALLE, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long),
         match="text_ids must have 2"),
    case(DALLE, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), match="at most 3"),
    case(DALLE, torch.zeros(1, 2, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long),
         match="batch sizes differ"),
    case(DALLE, torch.full((1, 2), 7), torch.zeros(1, 1, dtype=torch.long),
         match=r"text_ids must be in \[0, 5\)"),
    case(DALLE, torch.zeros(1, 2, dtype=torch.long), torch.full((1, 1), 4),
         match=r"image_ids must be in \[0, 4\)"),
    case(dalle.dalle_loss, DALLE, torch.zeros(1, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long),
         match="image_ids must have shape"),
    case(dalle.train_dalle, DALLE, torch.zeros(2, 2), torch.zeros(2, 4), 0,
         match="epochs must be positive"),
    case(dalle.train_dalle, DALLE, torch.zeros(2, 2), torch.zeros(3, 4), 1,
         match="same, non-zero number of pairs"),
    case(dalle.sample_next, torch.zeros(2, 4), temperature=-1, match="temperature must be >= 0"),
    case(dalle.sample_next, torch.zeros(2, 4), top_k=5, match="top_k must be between 1 and 4"),
    case(dalle.generate, DALLE, torch.zeros(2), match="text_ids must have shape"),
    case(dalle.clip_similarity, None, None, images(), ["a red circle"], match="got 2 images but 1 prompts"),
    case(dalle.clip_similarity, None, None, images(), "a red circle", raises=TypeError,
         match="prompts must be a list of strings"),
    case(dalle.best_of, torch.zeros(2, 4), 3, match="k must divide"),
    case(dalle.best_of, torch.zeros(2, 4), 0, match="k must be positive"),
    # ---------------------------------------------------------------- detr
    case(detr.sine_position_encoding, 4, 4, 6, match="dim must be divisible by 4"),
    case(detr.DETR, 2, 4, dim=6, num_heads=2, match="dim must be divisible by 4"),
    case(detr.DETR, 2, 4, num_queries=0, match="num_queries must be positive"),
    case(DETR, torch.zeros(1, 3, 2, 2), match="features must have 4 channels"),
    case(DETR, torch.zeros(3, 2, 2), match="features must have shape"),
    case(boxes.pack_targets, [[[0, 0, 1, 1]]], [[0], [1]], 8, 2, match="1 box lists but 2 label lists"),
    case(boxes.pack_targets, [[[0, 0, 1, 1]] * 3], [[0] * 3], 8, 2, match="more than max_objects=2"),
    case(boxes.pack_targets, [[[0, 0, 1, 1]]], [[0, 1]], 8, 2, match="image 0 has 1 boxes but 2 labels"),
    case(boxes.pack_targets, [[[0, 0, 1, 1]]], [[0]], 0, 2, match="image_size must be positive"),
    case(boxes.unpack_targets, torch.zeros(1, 2, 4),
         match=r"packed must have shape \(batch, max_objects, 5\)"),
    case(detr.hungarian_match, torch.zeros(1, 3, 3), torch.zeros(1, 3, 4), [TARGET, TARGET],
         match="2 targets"),
    case(detr.hungarian_match, torch.zeros(1, 3, 3), torch.zeros(1, 2, 4), [TARGET], match="boxes must be"),
    case(detr.hungarian_match, torch.zeros(1, 1, 3), torch.zeros(1, 1, 4),
         [{"labels": torch.tensor([0, 1]), "boxes": torch.zeros(2, 4)}], match="only 1 queries"),
    case(detr.train_detr, DETR, torch.zeros(2, 4, 2, 2), torch.zeros(3, 1, 5), 1,
         match="2 feature maps but 3 targets"),
    case(detr.train_detr, DETR, torch.zeros(2, 4, 2, 2), torch.zeros(2, 1, 5), 1, batch_size=0,
         match="batch_size must be positive"),
    case(detr.predict_detr, DETR, torch.zeros(2, 4, 2, 2), batch_size=0, match="batch_size must be positive"),
    case(detr.detections, torch.zeros(1, 3, 3), torch.zeros(1, 3, 2), match="boxes must be"),
    # ---------------------------------------------------------------- dino
    case(dino.MultiCrop, 8, 16, match="local_size <= global_size"),
    case(dino.MultiCrop, 16, 8, num_local=-1, match="num_local"),
    case(dino.MultiCrop(8, 4, num_local=0), torch.zeros(3, 8, 8), match="X must have shape"),
    case(dino.DINOHead, 8, 4, num_layers=0, match="num_layers must be positive"),
    case(DINO_NET, [], match="non-empty list"),
    case(DINO_NET, [images(), images(batch=3)], match=r"crops\[1\] has 3"),
    case(dino.dino_loss, torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), torch.zeros(4), match="teacher_out"),
    case(dino.dino_loss, torch.zeros(3, 4), torch.zeros(2, 3, 4), torch.zeros(4), match="student_out"),
    case(dino.dino_loss, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(5),
         match=r"center must have shape \(4,\)"),
    case(dino.dino_loss, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(4), teacher_temp=0,
         match="teacher_temp must be positive"),
    case(dino.update_center, torch.zeros(4), torch.zeros(2, 3, 4), momentum=1.5,
         match="momentum must be a probability"),
    case(dino.DINOLoss, 4, student_temp=0, match="student_temp must be positive"),
    case(DINO_LOSS, torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), match="center must have shape"),
    case(dino.cosine_schedule, 1.0, 0.0, 0, match="steps >= 1"),
    case(dino.ema_update, SMALL_CNN, SMALL_VIT, 0.9, match="same parameters"),
    case(dino.ema_update, SMALL_CNN, SMALL_CNN, 2.0, match="momentum must be a probability"),
    case(dino.train_dino, DINO_NET, images(), None, 1, DINO_LOSS, batch_size=4,
         match="at least batch_size=4"),
    case(dino.train_dino, DINO_NET, images(), None, 1, DINO_LOSS, batch_size=0,
         match="batch_size must be positive"),
    case(dino.class_token_features, SMALL_VIT, images(), batch_size=0, match="batch_size must be positive"),
    case(dino.nearest_class_mean_accuracy, torch.zeros(3, 2), torch.zeros(2), torch.zeros(1, 2),
         torch.zeros(1), match="one label per row"),
    case(dino.knn_accuracy, torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 3), torch.zeros(1),
         match="differ in size"),
    case(dino.knn_accuracy, torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 2), torch.zeros(1), k=0,
         match="k must be positive"),
    case(dino.class_token_attention, torch.zeros(2, 5, 5), direction="sideways", match="direction"),
    case(dino.class_token_attention, torch.zeros(2, 6, 6), match="do not form a square grid"),
    case(dino.class_token_attention, torch.zeros(5), match=r"maps must be \(\.\.\., 1 \+ N, 1 \+ N\)"),
    case(dino.attention_on_object, torch.zeros(2, 2, 2), torch.zeros(2, 5, 4),
         match="multiples of the attention grid"),
    case(dino.attention_on_object, torch.zeros(2, 2, 2), np.zeros((2, 4, 4)), raises=TypeError,
         match="masks must be a torch.Tensor"),
    # ---------------------------------------------------------------- efficientnet
    case(efficientnet.top_k_labels, torch.zeros(2, 10), match="logits must have 1000 ImageNet classes"),
    case(efficientnet.top_k_labels, torch.zeros(2, 1000), k=0, match="k must be positive"),
    case(efficientnet.top_k_labels, torch.zeros(1000), match=r"logits must have shape \(batch, 1000\)"),
    case(efficientnet.cached_feature_maps, images(), stride=7, match="stride must be one of"),
    case(efficientnet.cached_feature_maps, images(channels=1), match="X must have 3 channels"),
    case(efficientnet.cached_feature_maps, np.zeros((1, 3, 8, 8)), raises=TypeError,
         match="X must be a torch.Tensor"),
    # ---------------------------------------------------------------- notebook and runtime
    case(notebook.setup_notebook, dpi=0, match="dpi must be positive"),
    case(notebook.setup_notebook, seed=-1, match="seed must be a non-negative int"),
    case(notebook.show_source, match="at least one function or class"),
    case(notebook.show_source, 3, raises=TypeError, match="functions or classes"),
    case(notebook.report, {}, match="non-empty dict"),
    case(notebook.report, {"test accuracy": 0.5}, match="identifiers"),
    case(notebook.report, {"loss": float("nan")}, match="NaN"),
    case(runtime.set_seed, 1.5, match="seed must be a non-negative int"),
    # ---------------------------------------------------------------- perceiver
    case(perceiver.grid_positions, (0, 3), match="grid sizes must be positive"),
    case(perceiver.fourier_features, torch.zeros(4, 2), 0, 8, match="num_bands must be at least 1"),
    case(perceiver.fourier_features, torch.zeros(4, 2), 3, (8, 8, 8), match="max_resolution has 3 entries"),
    case(perceiver.fourier_features, torch.zeros(4), 3, 8, match=r"positions must have shape"),
    case(perceiver.FourierPositionalEncoding(8, in_channels=1), images(),
         match="images must have 1 channels"),
    case(PERCEIVER, images(channels=1, size=9), match="8x8"),
    case(PERCEIVER.encoder, torch.zeros(2, 5, 3), match="inputs must have"),
    case(PERCEIVER.encoder, torch.zeros(5, 3), match=r"inputs must have shape \(batch, tokens, channels\)"),
    case(perceiver.PerceiverEncoder, 5, num_latents=0, match="must be at least 1"),
    case(perceiver.CrossAttentionBlock(8, 4), torch.zeros(1, 2, 8), torch.zeros(3, 4), match="context"),
    case(perceiver.PerceiverIODecoder(8, 8, 3), torch.zeros(2, 8), torch.zeros(1, 2, 8), match="queries"),
    case(perceiver.MultimodalInputs, {}, match="at least one modality"),
    case(perceiver.MultimodalInputs({"image": 4}), {"text": torch.zeros(1, 2, 4)},
         match="expected modalities"),
    case(perceiver.MultimodalInputs({"image": 4}), {"image": torch.zeros(1, 2, 5)}, match="4 channels"),
    case(perceiver.attention_score_counts, 0, 8, match="must be positive"),
    case(perceiver.saved_activation_bytes, PERCEIVER, np.zeros((1, 1, 8, 8)), raises=TypeError,
         match="x must be a torch.Tensor"),
    case(perceiver.hf_perceiver_config, perceiver.PerceiverEncoder(5, cross_attend_every_block=True),
         match="cross_attend_every_block=False"),
    case(perceiver.downsample, torch.zeros(8, 8), 2, match="images must have shape"),
    # ---------------------------------------------------------------- plot
    case(plot.to_numpy_image, torch.zeros(1, 3, 4, 4), match=r"image must be \(C, H, W\) or \(H, W\)"),
    case(plot.to_numpy_image, np.zeros(4), match="image must be 2-D or 3-D"),
    case(plot.show_images, [], match="at least one image"),
    case(plot.show_images, [np.zeros((2, 2))], titles=["a", "b"], match="1 images but 2 titles"),
    case(plot.show_images, [np.zeros((2, 2))], ncols=0, match="ncols must be positive"),
    case(plot.overlay_attention, np.zeros((4, 4)), torch.zeros(2, 2, 2), match="attention must have shape"),
    case(plot.draw_boxes, np.zeros((4, 4)), [[0, 0, 1, 1, 1]], match=r"boxes must be \(N, 4\)"),
    case(plot.draw_boxes, np.zeros((4, 4)), [[0, 0, 1, 1]], labels=["a", "b"], match="1 boxes but 2 labels"),
    case(plot.show_mask, np.zeros((2, 2, 2)), match=r"mask must be \(height, width\)"),
    case(plot.plot_history, match="at least one history"),
    case(plot.plot_history, {"epoch": [1]}, {"epoch": [1]}, labels=["only one"],
         match="2 histories but 1 labels"),
    case(plot.plot_history, {"loss": [1]}, match="'epoch' list"),
    # ---------------------------------------------------------------- widgets
    case(widgets.figure_png, None, raises=TypeError, match="figure must be a matplotlib Figure"),
    case(widgets.WithStaticFallback, None, None, raises=TypeError,
         match="widget must be an ipywidgets widget"),
    case(widgets.check_maps, [np.zeros((4, 4))], torch.zeros(1, 1, 4, 4),
         match=r"maps must be \(images, layers"),
    case(widgets.check_maps, [], torch.zeros(0, 1, 1, 4, 4), match="one entry per image"),
    case(widgets.check_maps, [np.zeros((4, 4))], "maps", raises=TypeError,
         match="maps must be a tensor or array"),
    case(widgets.attention_explorer, [np.zeros((4, 4))], torch.zeros(1, 1, 1, 2, 2), titles=["a", "b"],
         match="1 images but 2 titles"),
    # ---------------------------------------------------------------- pretrained
    case(pretrained.load_pretrained, object, "", lambda: None, match="model_id must be a hub id"),
    case(pretrained.load_pretrained, object, "google/vit", 42,
         match="fallback must be a callable or a directory"),
    case(pretrained.load_hub_dataset, "", lambda: None, match="dataset_id must be a hub id"),
    case(pretrained.load_hub_dataset, "timm/oxford-iiit-pet", "shapes", match="fallback must be a callable"),
    case(pretrained.local_checkpoint, "../escape", list, match="name must be a plain folder name"),
    case(pretrained.local_checkpoint, "ok-name", None, match="build must be a callable"),
    # ---------------------------------------------------------------- pvt
    case(pvt.tokens_to_grid, torch.zeros(1, 5, 4), (2, 2), match="x has 5 tokens but grid_size"),
    case(pvt.grid_to_tokens, torch.zeros(1, 4, 4),
         match=r"x must have shape \(batch, channels, height, width\)"),
    case(pvt.SpatialReductionAttention, 8, 2, 0, match="sr_ratio must be at least 1"),
    case(PVT_SRA, torch.zeros(1, 4, 8), (2, 2), match=r"grid_size \(2, 2\) is smaller than sr_ratio=4"),
    case(pvt.OverlapPatchEmbedding, 3, 8, 0, match="stride must be positive"),
    case(pvt.OverlapPatchEmbedding(3, 8, 2), images(channels=1), match="X must have 3 channels"),
    case(pvt.PyramidVisionTransformer, embed_dims=(8, 16), match="one entry per stage"),
    case(pvt.PyramidVisionTransformer, embed_dims=(), depths=(), num_heads=(), mlp_ratios=(), sr_ratios=(),
         strides=(), match="at least one stage"),
    case(pvt.copy_weights_from_hf, torch.nn.Linear(2, 2), None, match="cannot copy transformers weights"),
    # ---------------------------------------------------------------- segment
    case(segment.SegmentationHead, [], 3, match="at least one feature map"),
    case(segment.SegmentationHead, [4], 0, match="num_classes must be positive"),
    case(SEG_HEAD, [torch.zeros(1, 4, 4, 4)], (8, 8), match="expected 2 feature maps"),
    case(SEG_HEAD, [torch.zeros(1, 4, 4, 4), torch.zeros(1, 6, 2, 2)], (8, 8),
         match=r"features\[1\] must have 8 channels"),
    case(segment.intersection_over_union, torch.zeros(2, 2, dtype=torch.long),
         torch.zeros(2, 3, dtype=torch.long), 3, match="differ"),
    case(segment.intersection_over_union, torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long), 3,
         match=r"predictions must be in \[0, 3\)"),
    case(segment.mean_iou, torch.zeros(2, 2), torch.zeros(2, 2), 3, raises=TypeError, match="integer"),
    # ---------------------------------------------------------------- swin
    case(SWIN_BLOCK, torch.zeros(1, 12, 8), (3, 4), match="grid height=3 must be divisible by window_size=2"),
    case(swin.relative_position_index, 0, match="window_size must be positive"),
    case(swin.shifted_window_mask, (4, 4), 2, 2, match="shift_size must be in 1..window_size - 1"),
    case(swin.WindowAttention(8, 2, 2), torch.zeros(1, 5, 8),
         match=r"windows must be \(batch \* num_windows, 4 tokens"),
    case(swin.WindowAttention(8, 2, 2), torch.zeros(3, 4, 8), torch.zeros(2, 4, 4),
         match="batch \\* num_windows=3 must be divisible by num_windows"),
    case(swin.SwinBlock, 8, 2, window_size=2, shift_size=2, match="shift_size must be in 0..window_size - 1"),
    case(SWIN_BLOCK, torch.zeros(1, 6, 8), (2, 2), match="x has 6 tokens but grid_size"),
    case(swin.PatchMerging(8), torch.zeros(1, 6, 8), (3, 2), match="divisible by 2"),
    case(swin.Swin, depths=(1, 1), num_heads=(2,), match="must be non-empty and as long"),
    case(SWIN, images(size=12), match="image height=12 must be divisible by"),
    case(swin.copy_weights_from_hf_layer, SWIN_BLOCK, HF_SWIN.encoder.layers[0].blocks[0],
         match="in the course.s Swin block vs .* the sizes differ"),
    # ---------------------------------------------------------------- swinv2
    case(swinv2.log_spaced_coordinates, 0, match="window_size must be positive"),
    case(swinv2.log_spaced_coordinates, 4, -4, match="pretrained_window_size must be positive"),
    case(swinv2.CosineWindowAttention(8, 2, 2), torch.zeros(1, 5, 8),
         match=r"windows must be \(batch \* num_windows, 4 tokens"),
    case(swinv2.SwinV2Block(8, 2, window_size=2), torch.zeros(1, 12, 8), (3, 4),
         match="grid height=3 must be divisible by window_size=2"),
    case(swinv2.with_window_size, SWIN, 0, match="window_size must be positive"),
    case(swinv2.copy_weights_from_hf_v2_layer, swinv2.SwinV2Block(8, 2, window_size=4),
         HF_SWINV2_LAYER, match="in the course.s Swin v2 block vs .* the sizes differ"),
    # ---------------------------------------------------------------- tokencut
    case(tokencut.affinity_graph, torch.randn(1, 4), match="at least 2 patches"),
    case(tokencut.affinity_graph, torch.randn(4, 3), eps=0.0, match="eps must be > 0"),
    case(tokencut.second_smallest_eigenvector, torch.ones(3, 4), match=r"W must be \(\.\.\., N, N\)"),
    case(tokencut.second_smallest_eigenvector, torch.zeros(3, 3), match="positive degree"),
    case(tokencut.tokencut, torch.randn(15, 4), (4, 4), match="15 patches"),
    case(tokencut.patch_keys, SMALL_VIT, torch.zeros(3, 8, 8), match="X must have shape"),
    case(tokencut.upsample_mask, torch.ones(1, 4, 4), (10, 16), match="multiple of the grid"),
    case(tokencut.mask_iou, torch.ones(1, 4, 4), torch.ones(1, 4, 5), match="differ"),
    case(tokencut.attention_mass_mask, -torch.ones(4, 4), match="non-negative"),
    case(tokencut.attention_mass_mask, torch.ones(4, 4), 1.5, match="mass must be a probability"),
    # ---------------------------------------------------------------- show_attend_tell
    case(ATTENTION, torch.zeros(2, 3, 4), torch.zeros(3, 6), match="batch sizes differ"),
    case(ATTENTION, torch.zeros(2, 3, 5), torch.zeros(2, 6), match="features must have 4 and state 6"),
    case(efficientnet.add_coordinates, torch.zeros(2, 4, 4), match="maps must have shape"),
    case(DECODER, torch.zeros(2, 5, 3, 3), torch.zeros(2, 4, dtype=torch.long),
         match="maps must have 4 channels"),
    case(DECODER, torch.zeros(2, 4, 3, 3), torch.zeros(2, dtype=torch.long), match="tokens must have shape"),
    case(DECODER, torch.zeros(2, 4, 3, 3), torch.full((2, 3), 9), match=r"tokens must be in \[0, 7\)"),
    case(DECODER.generate, torch.zeros(2, 4, 3, 3), 1, 2, max_length=0,
         match="max_length must be at least 1"),
    case(DECODER.generate, torch.zeros(2, 4, 3, 3), 1, 9, match="end_id=9 is outside the vocabulary"),
    case(show_attend_tell.Vocabulary, [""], match="at least one non-empty caption"),
    case(show_attend_tell.Vocabulary, "a red circle", raises=TypeError,
         match="captions must be a list of strings"),
    case(VOCABULARY.encode, ["a blue circle"], match="not in the vocabulary"),
    case(VOCABULARY.encode, [], match="captions is empty"),
    case(efficientnet.standardise, torch.zeros(2, 3, 4, 4), mean=torch.zeros(1, 3, 1, 1),
         match="both mean and std"),
    case(show_attend_tell.caption_loss, torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long),
         torch.zeros(2, 3, 2, 2), match="must share"),
    case(show_attend_tell.train_captioner, DECODER, torch.zeros(2, 4, 3, 3), torch.zeros(3, 4), 1,
         match="as many maps as captions"),
    case(show_attend_tell.greedy_captions, DECODER, torch.zeros(2, 4, 3, 3), VOCABULARY, batch_size=0,
         match="batch_size must be positive"),
    case(show_attend_tell.caption_accuracy, [["a"]], [], match="as many generated captions"),
    case(show_attend_tell.attention_in_box, [["a"]], torch.zeros(1, 2, 3, 3), [None], 0,
         match="image_size must be positive"),
    case(show_attend_tell.attention_in_box, [["a"]], torch.zeros(1, 2, 3), [None], 16,
         match="weights must have shape"),
    case(show_attend_tell.attention_in_box, [["a"]], torch.zeros(2, 1, 2, 2), [None], 16,
         match="lengths differ"),
    # ---------------------------------------------------------------- bert, videobert, vilbert
    case(bert.load_bert, model_id="", match="model_id must be a hub id"),
    case(videobert.narration, "jumps", "red", "circle", match="action must be one of"),
    case(videobert.narration, "grows", "red", "circle", template=9, match=r"template must be in \[0, 4\)"),
    case(videobert.video_frames, [], match="the dataset is empty"),
    case(videobert.clip_features, torch.zeros(2, 8, 4), 3, match="frames_per_clip=3 must be >= 2"),
    case(videobert.kmeans, torch.zeros(4, 2), 0, match="k must be a positive int"),
    case(videobert.kmeans, torch.zeros(4, 2, 1), 2, match="X must have shape"),
    case(videobert.kmeans, torch.zeros(4, 2, dtype=torch.long), 2, raises=TypeError, match="floating-point"),
    case(videobert.HierarchicalKMeans, 1, 2, match="k must be an int >= 2"),
    case(videobert.HierarchicalKMeans, 2, 0, match="depth must be a positive int"),
    case(videobert.HierarchicalKMeans(2, 1).predict, torch.zeros(3, 2), raises=RuntimeError,
         match="call fit"),
    case(videobert.project_centroids, torch.zeros(3), torch.zeros(4, 2), match="centroids must have shape"),
    case(videobert.extend_vocabulary, tiny_bert_mlm(), torch.zeros(2, 5), match=r"shape \(tokens, 8\)"),
    case(videobert.VideoBert, tiny_bert_mlm(), alignment_pooling="max", match="alignment_pooling must be"),
    case(videobert.VideoBert, tiny_bert_mlm(), num_layers=3, match=r"num_layers must be in \[1, 2\]"),
    case(videobert.VideoBert, tiny_bert_mlm(), train_from_layer=3, match="train_from_layer must be in"),
    case(videobert.VideoBert, tiny_bert_mlm(), output_ids=[10], match="output_ids must be a 1-D tensor"),
    case(VIDEOBERT, torch.zeros(3, dtype=torch.long), None, None, match="input_ids must have shape"),
    case(videobert.make_sequences, None, match="need texts, video_tokens or both"),
    case(videobert.make_sequences, None, ["a"], torch.zeros(2, 1, dtype=torch.long),
         match="1 texts but 2 videos"),
    case(videobert.mask_tokens, torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool), 1, match="maskable"),
    case(videobert.mask_tokens, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), 1,
         match="at least one maskable position"),
    case(videobert.videobert_losses, VIDEOBERT, WordPieces(), [[1]], torch.zeros(1, 1, dtype=torch.long), [0],
         None, match="at least 2 pairs per batch"),
    case(videobert.train_videobert, VIDEOBERT, WordPieces(), ["a", "b"], torch.zeros(2, 1), [0, 1], 1,
         alignment_weight=-1.0, match="alignment_weight must be >= 0"),
    case(videobert.train_videobert, VIDEOBERT, WordPieces(), ["a", "b"], torch.zeros(2, 1), [0, 1], 1,
         schedule="cosine", match="schedule must be 'linear' or 'one_cycle'"),
    case(videobert.train_videobert, VIDEOBERT, WordPieces(), ["a", "b"], torch.zeros(3, 1), [0, 1], 1,
         match="2 texts, 3 videos, 2 meanings"),
    case(videobert.zero_shot_predictions, VIDEOBERT, WordPieces(), torch.zeros(1, 1), [["push"]],
         match="every candidate must be one token"),
    case(videobert.mismatched_texts, ["a", "b"], [0, 0], match="at least two different meanings"),
    case(videobert.cluster_purity, [0, 1], [0], match="2 leaves but 1 labels"),
    case(vilbert.spatial_encoding, torch.zeros(3, 5), 64, match=r"boxes must have shape \(\.\.\., 4\)"),
    case(vilbert.spatial_encoding, torch.tensor([10, 0, 5, 5]), 64, match="x1 >= x0"),
    case(vilbert.spatial_encoding, torch.zeros(1, 4), 0, match="image_size must be positive"),
    case(vilbert.region_features, torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 5), 64,
         match=r"boxes must have shape \(\.\.\., 4\)"),
    case(vilbert.region_features, torch.zeros(2, 2, 4, 4), torch.zeros(1, 2, 4), 64,
         match="batch sizes differ"),
    case(vilbert.region_crops, torch.zeros(1, 3, 8), torch.zeros(1, 1, 4), match="images must have shape"),
    case(REGIONS, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), match=r"spatial must be \(2, 3, 5\)"),
    case(VILBERT, torch.zeros(2, 6), torch.ones(2, 3), torch.zeros(2, 2, 4), torch.zeros(2, 2, 5),
         match="text_states must have shape"),
    case(VILBERT, torch.zeros(2, 3, 6), torch.ones(2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 5),
         match="text and image batch sizes differ"),
    case(vilbert.mask_regions, torch.zeros(2, 2, 3), torch.ones(2, 2, dtype=torch.bool), 0,
         match=r"probability must be in \(0, 1\]"),
    case(vilbert.masked_region_kl, torch.zeros(2, 2, 3), torch.zeros(2, 2, 4),
         torch.ones(2, 2, dtype=torch.bool), match="shapes differ"),
    case(vilbert.one_word_negative, [SHAPE], "texture", RNG, match="kind must be one of"),
    case(vilbert.one_word_negative, [SHAPE], "relation", RNG, match="relation negatives need two"),
    case(vilbert.shapes_vilbert_data, [], None, None, match="scenes is empty"),
    case(vilbert.train_vilbert, VILBERT, {"text": torch.zeros(4, 3, 6)}, 0, device="cpu",
         match="epochs must be positive"),
    # ---------------------------------------------------------------- data
    case(convert.to_pil_rgb, np.zeros((4, 4, 2), np.uint8), match="cannot read an image of shape"),
    case(convert.to_pil_rgb, "photo.jpg", raises=TypeError,
         match="image must be a PIL image or a numeric array"),
    case(convert.to_pil_rgb, np.zeros((0, 4, 3)), match="image is empty"),
    case(convert.load_image, "/no/such/image.png", match="cannot read image"),
    case(convert.load_image_folder, "/no/such/folder", match="is not a folder"),
    case(convert.image_files, "/no/such/folder", match="is not a folder"),
    case(food.shapes_food_stand_in, 0, match="num_scenes must be at least 1"),
    case(search.fill_photo_folder, "/no/such/folder", num_scenes=0, match="num_scenes must be"),
    case(search.fill_photo_folder, "/no/such/folder", num_scenes=5, num_duplicates=9,
         match="num_duplicates must be between 0 and num_scenes"),
    case(search.embed_images, None, None, [], match="at least one image"),
    case(search.embed_texts, None, None, "a cat", match="texts must be a non-empty list"),
    case(search.embed_texts, None, None, ["a cat", " "], match="texts must be a non-empty list"),
    case(search.build_photo_index, "/no/such/folder", None, None, match="is not a folder"),
    case(search.build_photo_index, "/no/such/folder", None, None, batch_size=0, match="batch_size"),
    case(search.load_photo_index, "/no/such/folder", match="no saved photo index"),
    case(search.duplicate_recall_at_1, None, [], match="no .original, duplicate. pairs"),
    case(search.show_results, [], "a cat", match="no results"),
    case(search.caption_images, None, None, [], match="at least one image"),
    case(search.caption_folder, "/no/such/folder", None, match="is not a folder"),
    case(search.search_captions, [], " ", match="keyword must be a non-empty string"),
    case(convert.image_to_tensor, None, raises=TypeError, match="image must be a PIL image"),
    case(convert.image_dataset, [], [], ["a"], match="no images"),
    case(convert.image_dataset, [np.zeros((4, 4, 3), np.uint8)], [0, 1], ["a"],
         match="1 images but 2 labels"),
    case(convert.image_dataset, [np.zeros((4, 4, 3), np.uint8)], [0], ["a"], caption=["x", "y"],
         match="column 'caption' has 2 values for 1 images"),
    case(convert.to_tensors, [], match="dataset is empty"),
    case(convert.cached_dataset, "../x", lambda: None, match="name must be a plain name"),
    case(convert.cached_dataset, "x", list, raises=TypeError, match="build must be a Python function"),
    case(digits.mnist_tensors, size=32, match="size must be at most 28"),
    case(digits.mnist_tensors, channels=2, match="channels must be 1"),
    case(digits.mnist_tensors, train_size=5000, match="train_size must be at most 4000"),
    case(digits.split_digits, np.zeros((4, 8, 8), np.uint8), [0, 1], 1,
         match="inconsistent numbers of samples"),
    case(pets.shapes_pets_stand_in, train_size=0, match="num_scenes must be at least 1"),
    case(photos.load_photo, "mona_lisa", match="unknown photo"),
    case(photos.photos_dataset, "china", raises=TypeError, match="names must be a list of strings"),
    case(photos.photos_dataset, [], match="names is empty"),
    case(shapes.split_rng, 0, "holdout", match="split must be one of"),
    case(shapes.shape_mask, "star", (4, 4), 2, 8, match="unknown shape"),
    case(shapes.caption_for, [], match="at least one object"),
    case(shapes.ShapesWorld, image_size=8, match="image_size must be at least 16"),
    case(shapes.ShapesWorld, min_objects=3, max_objects=2, match="min_objects <= max_objects"),
    case(shapes.ShapesWorld, shapes=("star",), match="shapes must be a non-empty subset"),
    case(shapes.ShapesWorld, combinations=[("red", "star")], match="combinations must be"),
    case(shapes.ShapesWorld().scenes, 0, match="num_scenes must be at least 1"),
    case(shapes.ShapesWorld().video, RNG, num_frames=1, match="num_frames must be at least 2"),
    case(shapes.shapes_video_dataset, 0, match="num_videos must be at least 1"),
    # the Q-Former and stage 1
    case(qformer.qformer_mask, "causal", 2, 2, match="kind must be one of"),
    case(qformer.qformer_mask, "itc", 0, 2, match="num_queries >= 1"),
    case(qformer.batch_mask, torch.ones(4, 4, dtype=torch.bool), torch.ones(2),
         match="text_padding must have shape"),
    case(QFORMER, torch.randn(2, 3), match="image must have shape"),
    case(QFORMER, torch.randn(2, 5, 4), match="image tokens must have 3 values"),
    case(QFORMER, torch.randn(2, 5, 3), torch.ones(3, 4, dtype=torch.long), match="batch sizes differ"),
    case(qformer.qformer_from_bert, tiny_bert(), num_layers=2, image_dim=3,
         match="num_layers must be between"),
    case(qformer.Blip2Stage1, QFORMER, torch.ones(2, 2, dtype=torch.long), match="vocab_ids must have shape"),
    case(qformer.Blip2Stage1, QFORMER, torch.arange(3), text_pooling="max", match="text_pooling must be"),
    case(qformer.hard_negatives, torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool),
         match="at least one different caption"),
    case(qformer.train_stage1, STAGE1, torch.randn(3, 5, 3), torch.ones(2, 4, dtype=torch.long),
         torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.long), 1, match="same length"),
    # BLIP-2
    case(blip2.caption_lm_tokenizer, [], match="captions is empty"),
    case(blip2.repeated_caption_ids, CAPTION_TOKENIZER, ["a red circle"], copies=0, match="copies must be"),
    case(blip2.train_stage2, None, torch.randn(3, 5, 3), torch.ones(2, 4, dtype=torch.long),
         torch.ones(2, 4, dtype=torch.long), 1, match="same length"),
    case(blip2.course_blip2_checkpoint, model=object(), match="give both model and processor"),
    case(blip2.visual_tokens, torch.randn(2, 3, 4), match="maps must have shape"),
    case(blip2.FrozenCNNVision(), [images()], raises=TypeError, match="pixel_values must be a torch.Tensor"),
    # Flamingo
    case(RESAMPLER, torch.randn(1, 5, 4), match="features must have shape"),
    case(RESAMPLER, torch.randn(1, 1, 1, 5, 3), match="must have 4 channels"),
    case(RESAMPLER, torch.randn(1, 1, 2, 5, 4), match="at most max_frames=1"),
    case(flamingo.media_positions, torch.ones(3, dtype=torch.long), 5, match="ids must have shape"),
    case(flamingo.media_attention_mask, torch.tensor([[5, 5, 1]]), 5, 1, 2, match="only 1 images"),
    case(XATTN, torch.randn(1, 3, 8), torch.randn(1, 2, 8), torch.ones(1, 1, 3, 3, dtype=torch.bool),
         match="mask must end in"),
    case(FLAMINGO, torch.tensor([[0, 9]]), match="ids must be in"),
    case(FLAMINGO, torch.tensor([[0, 6]]), torch.randn(2, 1, 1, 5, 4), match="batch sizes differ"),
    case(flamingo.answer, SHAPE, "count", match="answer_format must be one of"),
    case(flamingo.sample_episodes, [SHAPE], 0, 1, match="num_episodes >= 1"),
    case(flamingo.prompt_texts, {"images": torch.zeros(1, 2, dtype=torch.long), "texts": [["a", "b"]]}, 2,
         match="shots must be between"),
    case(flamingo.train_language_model, None, torch.ones(2, 3, dtype=torch.long), 0, match="steps must be"),
]

MODULES = [
    "augment",
    "bert",
    "blip2",
    "boxes",
    "checks",
    "clip",
    "cnn",
    "cost",
    "dalle",
    "deit",
    "detr",
    "dino",
    "efficientnet",
    "flamingo",
    "notebook",
    "perceiver",
    "plot",
    "pretrained",
    "pvt",
    "qformer",
    "runtime",
    "search",
    "segment",
    "show_attend_tell",
    "swin",
    "swinv2",
    "tokencut",
    "train",
    "transformer",
    "videobert",
    "vilbert",
    "vit",
    "vqvae",
    "widgets",
    "contrastive",
    "weights",
    "data.captions",
    "data.convert",
    "data.tasks",
    "data.digits",
    "data.food",
    "data.pets",
    "data.photos",
    "data.shapes",
]


@pytest.mark.parametrize("function, args, kwargs, error, message", CASES)
def test_bad_input_raises_a_clear_error(function, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        function(*args, **kwargs)
    matplotlib.pyplot.close("all")


def test_the_table_covers_every_module():
    covered = {where(case.values[0])[0] for case in CASES}
    missing = [m for m in MODULES if m not in covered]
    assert not missing, f"no bad-input rows for {missing}"
