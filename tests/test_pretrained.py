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
    with pytest.raises(ValueError, match="fallback folder '/no/such/directory' does not exist"):
        load_pretrained(ViTForImageClassification, "a/b", "/no/such/directory")  # offline in the tests
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


@pytest.fixture
def no_mode_variables(monkeypatch):
    """A session with neither HF_HUB_OFFLINE nor HOML16_MODE nor HF_ENDPOINT set, whose library flags are put
    back afterwards; the hub probe's memory is cleared before and after."""
    import datasets.config
    import huggingface_hub.constants

    from homl16 import pretrained

    for name in ("HF_HUB_OFFLINE", "HOML16_MODE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE)
    pretrained.endpoint_answers.cache_clear()
    yield
    pretrained.endpoint_answers.cache_clear()


def listening_socket():
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_the_hub_probe_follows_hf_endpoint(no_mode_variables, monkeypatch):
    from homl16 import pretrained
    from homl16.pretrained import hub_mode

    server = listening_socket()
    port = server.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}/")
    assert hub_mode() == ("online", f"hub reachable at http://127.0.0.1:{port}")
    server.close()
    pretrained.endpoint_answers.cache_clear()  # asked once per session: a new session
    assert hub_mode() == ("offline", f"no answer from http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_ENDPOINT", "ftp://mirror")
    with pytest.raises(ValueError, match="HF_ENDPOINT must be an http"):
        hub_mode()


def test_offline_wins_over_everything_and_homl16_mode_is_checked(no_mode_variables, monkeypatch):
    from homl16.pretrained import hub_available, hub_mode

    server = listening_socket()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HOML16_MODE", "offline")
    assert hub_mode() == ("offline", "HOML16_MODE=offline") and not hub_available()
    monkeypatch.setenv("HOML16_MODE", "online")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_mode() == ("offline", "HF_HUB_OFFLINE=1")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing there, but online is asked for
    assert hub_mode() == ("online", "HOML16_MODE=online, hub at http://127.0.0.1:9")
    monkeypatch.setenv("HOML16_MODE", "sometimes")
    with pytest.raises(ValueError, match="HOML16_MODE must be one of"):
        hub_mode()
    server.close()


def test_setup_notebook_prints_the_mode_and_offline_true_really_forces_offline(no_mode_variables, monkeypatch,
                                                                                capsys, tmp_path):
    import datasets.config
    import huggingface_hub.constants
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from homl16 import setup_notebook

    server = listening_socket()  # a "hub" that answers the probe
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    huggingface_hub.constants.HF_HUB_OFFLINE = False  # as imported in a session with a network
    setup_notebook(seed=1, offline=True)
    assert capsys.readouterr().out.endswith("seed: 1, mode: offline (offline=True)\n")
    assert os.environ["HF_HUB_OFFLINE"] == "1" and datasets.config.HF_HUB_OFFLINE
    assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is False  # no request to S3, outside the endpoint
    start = time.perf_counter()
    with pytest.raises(LocalEntryNotFoundError):  # the already imported library does not try the network
        hf_hub_download("someone/model", "config.json", cache_dir=tmp_path)
    assert time.perf_counter() - start < 1
    setup_notebook(seed=1)  # the first cell re-run with OFFLINE = False: online again
    assert "mode: online (hub reachable at http://127.0.0.1:" in capsys.readouterr().out
    assert "HF_HUB_OFFLINE" not in os.environ and not huggingface_hub.constants.HF_HUB_OFFLINE
    server.close()


def test_a_checkpoint_needing_a_missing_package_falls_back_with_a_clear_line(tmp_path, monkeypatch, capsys):
    """DETR's main revision asks for a timm backbone, and timm is not a dependency: the course says so."""
    from transformers import DetrForObjectDetection

    from homl16 import pretrained

    def from_pretrained(model_id, **kwargs):
        if not os.path.isdir(model_id):
            raise ImportError("\nTimmBackbone requires the timm library but it was not found in your "
                              "environment. You can install it with pip:\n`pip install timm`.")  # as in 5.25
        return f"stand-in from {model_id}"

    monkeypatch.setattr(pretrained, "keep_hub_kernels_off_offline", lambda: True)  # online
    monkeypatch.setattr(DetrForObjectDetection, "from_pretrained", from_pretrained)
    assert load_pretrained(DetrForObjectDetection, "facebook/detr-resnet-50", str(tmp_path)) == \
        f"stand-in from {os.path.relpath(tmp_path)}"
    assert capsys.readouterr().out.startswith("facebook/detr-resnet-50 needs a package the course does not "
                                              "install (TimmBackbone requires the timm library")


def test_online_a_plan_that_skips_loads_the_stand_in_without_asking_the_hub(monkeypatch, capsys):
    from homl16 import pretrained
    from homl16.plan import Plan

    def from_pretrained(model_id, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(pretrained, "keep_hub_kernels_off_offline", lambda: True)  # online
    monkeypatch.setattr(ViTForImageClassification, "from_pretrained", from_pretrained)

    def tiny():
        return "tiny"

    skip = Plan(False, why="too big for this machine")
    assert load_pretrained(ViTForImageClassification, "someone/huge", tiny, plan=skip) == "tiny"
    out = capsys.readouterr().out
    assert "someone/huge is skipped (too big for this machine), so using tiny() instead." in out


def test_offline_a_cached_dataset_is_loaded_from_the_datasets_cache(monkeypatch, capsys):
    import datasets
    import datasets.config

    def load_dataset(dataset_id, **kwargs):  # the datasets cache holds it: found when looked up offline
        if not datasets.config.HF_HUB_OFFLINE:
            raise ConnectionError("no network")
        return f"cached {dataset_id} {kwargs}"

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # offline by a missing network only
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_hub_dataset("timm/oxford-iiit-pet", lambda: "stand-in", split="train") == \
        "cached timm/oxford-iiit-pet {'split': 'train'}"
    assert "Loaded timm/oxford-iiit-pet from the local datasets cache." in capsys.readouterr().out
    assert datasets.config.HF_HUB_OFFLINE is False  # put back


def test_online_a_fallback_folder_need_not_exist(monkeypatch):
    import homl16.pretrained as pretrained

    class FromHub:
        @classmethod
        def from_pretrained(cls, model_id, **kwargs):
            return cls()

    monkeypatch.setattr(pretrained, "keep_hub_kernels_off_offline", lambda: True)
    assert isinstance(load_pretrained(FromHub, "a/b", "my_folder_made_by_a_cell_not_run"), FromHub)
