"""The tiny hub of the online test: every id the notebooks load is there, loads with the notebooks' class,
and carries the real checkpoint's flags, label maps and processor settings."""

import importlib.util
import json
from pathlib import Path

import pytest
from hub.tiny_repos import (
    COCO_NAMES,
    FOOD_NAMES,
    MODEL_REPOS,
    PET_NAMES,
    build_model_repo,
    tiny_hub_dir,
    vit_in21k,
)

MODEL_CLASSES = {  # hub id -> (revision, the class the notebooks load it with)
    "google/vit-base-patch16-224-in21k": ("main", "ViTForImageClassification"),
    "facebook/deit-base-distilled-patch16-224": ("main", "DeiTForImageClassification"),
    "facebook/detr-resnet-50": ("no_timm", "DetrForObjectDetection"),
    "OpenGVLab/pvt_v2_b0": ("main", "PvtV2ForImageClassification"),
    "microsoft/swin-tiny-patch4-window7-224": ("main", "SwinModel"),
    "facebook/dino-vitb8": ("main", "AutoModel"),
    "unc-nlp/lxmert-base-uncased": ("main", "LxmertModel"),
    "openai/clip-vit-base-patch32": ("main", "CLIPModel"),
    "deepmind/vision-perceiver-fourier": ("main", "PerceiverForImageClassificationFourier"),
    "HuggingFaceM4/idefics-9b-instruct": ("main", "IdeficsForVisionText2Text"),
    "Salesforce/blip2-opt-2.7b": ("main", "Blip2ForConditionalGeneration"),
    "bert-base-uncased": ("main", "BertForMaskedLM"),
}
PROCESSOR_CLASSES = {  # hub id -> the class the notebooks load its processor or tokenizer with
    "google/vit-base-patch16-224-in21k": "AutoImageProcessor",
    "facebook/deit-base-distilled-patch16-224": "AutoImageProcessor",
    "facebook/detr-resnet-50": "DetrImageProcessor",
    "OpenGVLab/pvt_v2_b0": "AutoImageProcessor",
    "microsoft/swin-tiny-patch4-window7-224": "AutoImageProcessor",
    "facebook/dino-vitb8": "AutoImageProcessor",
    "unc-nlp/lxmert-base-uncased": "AutoTokenizer",
    "openai/clip-vit-base-patch32": "CLIPProcessor",
    "deepmind/vision-perceiver-fourier": "AutoImageProcessor",
    "HuggingFaceM4/idefics-9b-instruct": "AutoProcessor",
    "Salesforce/blip2-opt-2.7b": "Blip2Processor",
    "bert-base-uncased": "AutoTokenizer",
}


@pytest.fixture(scope="module")
def hub():
    return Path(tiny_hub_dir())


def repo(hub, repo_id, revision="main", kind="models"):
    return hub / kind / repo_id / revision


def config_of(hub, repo_id, revision="main"):
    return json.loads((repo(hub, repo_id, revision) / "config.json").read_text())


def test_every_notebook_id_is_in_the_hub_within_its_size(hub):
    ids = {repo_id for repo_id, _, _ in MODEL_REPOS}
    assert ids == set(MODEL_CLASSES)
    for repo_id, revision, _ in MODEL_REPOS:
        files = [f for f in repo(hub, repo_id, revision).rglob("*") if f.is_file()]
        assert {"config.json", "model.safetensors"} <= {f.name for f in files}, repo_id
        assert 0.1e6 < sum(f.stat().st_size for f in files) < 8e6, repo_id
    for dataset_id in ("timm/oxford-iiit-pet", "ethz/food101"):
        assert (repo(hub, dataset_id, kind="datasets") / "README.md").exists()


@pytest.mark.parametrize("repo_id", sorted(MODEL_CLASSES))
def test_each_model_loads_with_the_notebooks_classes(hub, repo_id):
    import transformers

    revision, class_name = MODEL_CLASSES[repo_id]
    path = str(repo(hub, repo_id, revision))
    model = getattr(transformers, class_name).from_pretrained(path)
    assert config_of(hub, repo_id, revision)["model_type"] == model.config.model_type
    assert getattr(transformers, PROCESSOR_CLASSES[repo_id]).from_pretrained(path) is not None


def test_configs_carry_the_real_checkpoints_flags_and_labels(hub):
    detr_main = config_of(hub, "facebook/detr-resnet-50")
    detr_no_timm = config_of(hub, "facebook/detr-resnet-50", "no_timm")
    assert detr_main["use_timm_backbone"] is True and detr_main["backbone"] == "resnet50"
    assert "backbone_config" not in detr_main
    assert detr_no_timm["use_timm_backbone"] is False
    assert detr_no_timm["backbone_config"]["model_type"] == "resnet"
    assert detr_no_timm["backbone_config"]["layer_type"] == "bottleneck"
    assert len(COCO_NAMES) == 91 and detr_no_timm["id2label"]["17"] == "cat"
    assert config_of(hub, "google/vit-base-patch16-224-in21k")["architectures"] == ["ViTModel"]
    deit = config_of(hub, "facebook/deit-base-distilled-patch16-224")
    assert deit["architectures"] == ["DeiTForImageClassificationWithTeacher"]
    for repo_id in ("facebook/deit-base-distilled-patch16-224", "microsoft/swin-tiny-patch4-window7-224",
                    "OpenGVLab/pvt_v2_b0", "deepmind/vision-perceiver-fourier"):
        labels = config_of(hub, repo_id)["id2label"]
        assert len(labels) == 1000 and labels["281"] == "tabby, tabby cat", repo_id
    assert config_of(hub, "facebook/dino-vitb8")["patch_size"] == 8
    assert config_of(hub, "deepmind/vision-perceiver-fourier")["d_model"] == 261
    blip2 = config_of(hub, "Salesforce/blip2-opt-2.7b")
    assert blip2["num_query_tokens"] == 32 and blip2["text_config"]["model_type"] == "opt"
    assert config_of(hub, "bert-base-uncased")["vocab_size"] == 30522
    assert config_of(hub, "unc-nlp/lxmert-base-uncased")["visual_feat_dim"] == 2048


def test_processors_have_the_real_sizes_and_statistics(hub):
    from transformers import AutoImageProcessor

    deit = AutoImageProcessor.from_pretrained(str(repo(hub, "facebook/deit-base-distilled-patch16-224")))
    assert (deit.size.height, deit.crop_size.height, deit.do_center_crop) == (256, 224, True)
    vit = AutoImageProcessor.from_pretrained(str(repo(hub, "google/vit-base-patch16-224-in21k")))
    assert list(vit.image_mean) == [0.5] * 3 and vit.size.height == 224
    detr = AutoImageProcessor.from_pretrained(str(repo(hub, "facebook/detr-resnet-50")))
    assert (detr.size.shortest_edge, detr.size.longest_edge) == (800, 1333)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_detr_main_needs_timm_as_the_real_one_does(hub):
    from transformers import DetrForObjectDetection

    with pytest.raises(ImportError, match="timm"):
        DetrForObjectDetection.from_pretrained(str(repo(hub, "facebook/detr-resnet-50")))


def test_tokenizers_encode_the_notebooks_prompts(hub):
    from transformers import AutoProcessor, AutoTokenizer, Blip2Processor, CLIPProcessor

    clip = CLIPProcessor.from_pretrained(str(repo(hub, "openai/clip-vit-base-patch32"))).tokenizer
    ids = clip("a photo of a cup of coffee.").input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id == max(clip.get_vocab().values())
    assert clip.decode(ids, skip_special_tokens=True).strip() == "a photo of a cup of coffee ."
    bert = AutoTokenizer.from_pretrained(str(repo(hub, "bert-base-uncased")))
    assert bert.tokenize("The cat sat") == ["the", "cat", "sat"] and len(bert) == 30522
    blip2 = Blip2Processor.from_pretrained(str(repo(hub, "Salesforce/blip2-opt-2.7b")))
    image_token = blip2.tokenizer.convert_tokens_to_ids("<image>")
    assert image_token == config_of(hub, "Salesforce/blip2-opt-2.7b")["image_token_index"]
    assert blip2.num_query_tokens == 32
    idefics = AutoProcessor.from_pretrained(str(repo(hub, "HuggingFaceM4/idefics-9b-instruct"))).tokenizer
    for token in ("<image>", "<fake_token_around_image>", "<end_of_utterance>"):
        assert idefics(token, add_special_tokens=False).input_ids == [idefics.convert_tokens_to_ids(token)]


def test_datasets_have_the_real_schema_and_splits(hub):
    from datasets import load_dataset

    pets = load_dataset(str(repo(hub, "timm/oxford-iiit-pet", kind="datasets")))
    assert set(pets) == {"train", "test"}
    assert pets["train"].features["label"].names == PET_NAMES and len(PET_NAMES) == 37
    assert list(pets["train"].features) == ["image", "label", "image_id", "label_cat_dog"]
    food = load_dataset(str(repo(hub, "ethz/food101", kind="datasets")))
    assert set(food) == {"train", "validation"}
    assert food["validation"].features["label"].names == FOOD_NAMES and len(FOOD_NAMES) == 101
    assert food["train"][0]["image"].size[0] > 0


def test_a_repo_builds_the_same_bytes_twice(tmp_path):
    for name in ("a", "b"):
        build_model_repo(tmp_path / name, "google/vit-base-patch16-224-in21k", "main", vit_in21k)
    first, second = (tmp_path / name / "models/google/vit-base-patch16-224-in21k/main" for name in ("a", "b"))
    for file in first.iterdir():
        assert file.read_bytes() == (second / file.name).read_bytes(), file.name
