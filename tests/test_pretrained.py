import os
import time

import pytest
from transformers import AutoImageProcessor, ViTForImageClassification

from homl16.pretrained import (
    hub_available,
    keep_hub_kernels_off_offline,
    load_hub_dataset,
    load_pretrained,
    local_checkpoint,
)
from homl16.vit import small_hf_vit


def test_hub_is_off_when_hf_hub_offline_is_set():
    assert hub_available() is False


def test_offline_transformers_does_not_fetch_hub_kernels_unless_the_user_asked(monkeypatch):
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")  # a user's own choice stays
    assert keep_hub_kernels_off_offline() is False
    assert os.environ["USE_HUB_KERNELS"] == "YES"
    monkeypatch.delenv("USE_HUB_KERNELS")
    keep_hub_kernels_off_offline()
    assert os.environ["USE_HUB_KERNELS"] == "NO"


def test_offline_fallback_is_instant_and_says_what_it_used(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    local = local_checkpoint("small-vit", lambda: small_hf_vit(image_size=32, patch_size=8))
    start = time.perf_counter()
    model = load_pretrained(ViTForImageClassification, "google/vit-base-patch16-224-in21k", local,
                            num_labels=7)
    processor = load_pretrained(AutoImageProcessor, "google/vit-base-patch16-224-in21k", local)
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert out.count("Offline: google/vit-base-patch16-224-in21k is not available") == 1  # once
    assert "small-vit instead" in out and "using /" not in out  # a relative path is printed
    assert model.config.num_labels == 7 and model.config.image_size == 32
    assert processor.size == {"height": 32, "width": 32}


def test_callable_fallback_and_dataset_fallback(capsys):
    def tiny():
        return "tiny model"

    assert load_pretrained(ViTForImageClassification, "no-such/model", tiny) == "tiny model"
    assert load_hub_dataset("no-such/dataset", fallback=lambda: [1, 2]) == [1, 2]
    assert "tiny()" in capsys.readouterr().out


def test_a_callable_fallback_may_make_the_directory_on_demand(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    calls = []

    def checkpoint():
        calls.append(1)
        return local_checkpoint("small-vit", lambda: small_hf_vit(image_size=32, patch_size=8))

    model = load_pretrained(ViTForImageClassification, "google/vit-base-patch16-224-in21k", checkpoint)
    assert isinstance(model, ViTForImageClassification) and model.config.image_size == 32 and calls == [1]
    assert "small-vit instead" in capsys.readouterr().out


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="model_id"):
        load_pretrained(ViTForImageClassification, "", lambda: None)
    with pytest.raises(ValueError, match="fallback"):
        load_pretrained(ViTForImageClassification, "a/b", "/no/such/directory")
    with pytest.raises(ValueError, match="fallback"):
        load_hub_dataset("a/b", fallback="not callable")


def test_a_registered_stand_in_is_the_default_fallback(capsys, tmp_path, monkeypatch):
    from homl16 import pretrained

    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    monkeypatch.setitem(pretrained.STAND_INS, "someone/tiny-vit", "test_pretrained:tiny_vit_checkpoint")
    model = load_pretrained(ViTForImageClassification, "someone/tiny-vit", num_labels=3)
    assert model.config.num_labels == 3
    assert "Offline: someone/tiny-vit is not available" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no offline stand-in is registered for 'nobody/model'"):
        load_pretrained(ViTForImageClassification, "nobody/model")


def tiny_vit_checkpoint():
    return local_checkpoint("tiny-vit", lambda: small_hf_vit(image_size=32, patch_size=8))


def test_every_registered_stand_in_names_a_function_of_the_course():
    from homl16.pretrained import STAND_INS, stand_in

    for model_id in STAND_INS:
        assert callable(stand_in(model_id)), model_id


def test_the_detr_stand_in_loads_as_the_book_loads_the_real_one(tmp_path, monkeypatch, capsys):
    from transformers import DetrForObjectDetection, DetrImageProcessor

    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    model = load_pretrained(DetrForObjectDetection, "facebook/detr-resnet-50")
    processor = load_pretrained(DetrImageProcessor, "facebook/detr-resnet-50")
    assert model.config.num_queries == 10 and processor.size
    assert capsys.readouterr().out.count("Offline: facebook/detr-resnet-50") == 1
