import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from homl16.data import (
    PHOTO_NAMES,
    image_dataset,
    image_to_tensor,
    load_digits,
    load_image,
    load_image_folder,
    load_mnist,
    load_pets,
    load_photo,
    mnist_tensors,
    photos_dataset,
    to_pil_rgb,
    to_tensors,
)


def assert_book_schema(split, num_classes):
    row = split[0]
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB"
    assert split.features["label"].num_classes == num_classes
    assert 0 <= row["label"] < num_classes


def test_mnist_is_4000_train_1000_test_real_digits_balanced():
    mnist = load_mnist()
    assert (len(mnist["train"]), len(mnist["test"])) == (4000, 1000)
    assert_book_schema(mnist["test"], 10)
    assert mnist["test"][0]["image"].size == (28, 28)
    assert np.bincount(mnist["test"]["label"]).tolist() == [100] * 10
    X, y = to_tensors(mnist["test"], mode="L")
    assert X.shape == (1000, 1, 28, 28) and 0 <= X.min() and X.max() == 1
    assert 0.08 < X.mean() < 0.2  # real digits: mostly black background, white strokes


def test_mnist_tensors_standardise_with_the_training_statistics_and_draw_a_fixed_subset():
    X_train, y_train, X_test, y_test = mnist_tensors()
    assert X_train.shape == (4000, 1, 28, 28) and X_test.shape == (1000, 1, 28, 28)
    assert y_train.dtype == y_test.dtype == torch.long and len(y_train) == 4000
    assert abs(X_train.mean()) < 1e-5 and abs(X_train.std() - 1) < 1e-5
    raw_test = to_tensors(load_mnist()["test"], mode="L")[0]
    scale = (X_train.max() - X_train.min())  # 1 / std: full ink minus blank
    torch.testing.assert_close(X_test, X_train.min() + raw_test * scale)  # the same affine map
    X_small, y_small, X_test_small, _ = mnist_tensors(train_size=100, size=14, channels=3, standardise=False)
    assert X_small.shape == (100, 3, 14, 14) and X_test_small.shape == (1000, 3, 14, 14)
    assert 0 <= X_small.min() and X_small.max() <= 1 and torch.equal(X_small[:, 0], X_small[:, 2])
    torch.testing.assert_close(X_test_small[:, :1], F.avg_pool2d(raw_test, 2))  # area averaging
    assert torch.equal(y_small, mnist_tensors(train_size=100, standardise=False)[1])  # fixed by the seed
    assert not torch.equal(y_small, mnist_tensors(train_size=100, seed=1)[1])


def test_sklearn_digits_split():
    digits = load_digits()
    assert (len(digits["train"]), len(digits["test"])) == (1437, 360)
    assert_book_schema(digits["train"], 10)


def test_photos_are_real_rgb_images():
    assert {"chelsea", "coffee", "astronaut", "china", "flower"} <= set(PHOTO_NAMES)
    cat = load_photo("chelsea")
    assert cat.mode == "RGB" and cat.size == (451, 300)
    assert load_photo("camera").mode == "RGB"  # a grey photo comes back as RGB
    ds = photos_dataset(["china", "coffee"])
    assert ds["name"] == ["china", "coffee"] and ds[0]["image"].size == (640, 427)
    with pytest.raises(ValueError, match="unknown photo"):
        load_photo("dog")


def test_pets_offline_stand_in_has_the_pets_schema(capsys):
    pets = load_pets()
    assert "Offline" in capsys.readouterr().out
    assert set(pets) == {"train", "test"}
    assert_book_schema(pets["train"], pets["train"].features["label"].num_classes)
    assert pets["train"].column_names == ["image", "label"]


@pytest.mark.parametrize("image", [
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)),
    Image.new("L", (5, 4), 7),
    Image.new("P", (5, 4)),
    np.full((4, 5), 65535, dtype=np.uint16),
    np.zeros((4, 5), dtype=bool),
    np.zeros((4, 5, 4), dtype=np.uint8),
])
def test_images_of_any_mode_become_rgb(image):
    rgb = to_pil_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


def test_images_from_the_wild(tmp_path):
    wide = Image.new("RGB", (6, 3), (200, 10, 10))
    exif = wide.getexif()
    exif[0x0112] = 6  # orientation: the camera was turned; show it rotated 90 degrees
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (3, 6)
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(to_pil_rgb(transparent)).min() == 255  # laid on white, not black
    sixteen = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I") and np.asarray(to_pil_rgb(sixteen)).min() == 255
    palette = Image.new("P", (2, 2))
    palette.info["transparency"] = 0
    assert to_pil_rgb(palette).mode == "RGB"


def test_image_folder_skips_broken_files_and_rejects_empty_folders(tmp_path):
    Image.new("L", (4, 4), 9).save(tmp_path / "grey.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "big.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "big.png").read_bytes()[:60])
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="truncated.png"):
        paths, images = load_image_folder(tmp_path)
    assert [p.name for p in paths] == ["big.png", "grey.png"] and all(i.mode == "RGB" for i in images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "truncated.png").write_bytes((tmp_path / "truncated.png").read_bytes())
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable images"):
        load_image_folder(tmp_path / "broken")
    with pytest.raises(ValueError, match="not a folder"):
        load_image_folder(tmp_path / "missing")


def test_16_bit_images_are_rescaled_not_clipped():
    assert np.asarray(to_pil_rgb(np.full((2, 2), 65535, dtype=np.uint16))).max() == 255
    assert np.asarray(to_pil_rgb(np.full((2, 2), 32768, dtype=np.uint16))).max() == 128


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="no images"):
        image_dataset([], [], ["a"])
    with pytest.raises(ValueError, match="labels"):
        image_dataset([np.zeros((2, 2))], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        to_pil_rgb(np.zeros((2, 2, 2)))
    mixed = image_dataset([np.zeros((2, 2)), np.zeros((3, 3))], [0, 0], ["a"])
    with pytest.raises(ValueError, match="different sizes"):
        to_tensors(mixed)
    with pytest.raises(ValueError, match="mode"):
        to_tensors(mixed, mode="CMYK")


def test_image_to_tensor():
    X = image_to_tensor(Image.new("L", (5, 4), 255))
    assert X.shape == (3, 4, 5) and X.min() == X.max() == 1


def test_to_tensors_keeps_pixel_values():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    X, y = to_tensors(image_dataset([image], [0], ["a"]))
    assert torch.equal((X[0].permute(1, 2, 0) * 255).round().byte(), torch.from_numpy(image))
    assert y.tolist() == [0]


def test_cached_dataset_builds_once_per_options(tmp_path, monkeypatch):
    from datasets import Dataset

    from homl16.data import cached_dataset

    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return Dataset.from_dict({"x": [len(calls)]})

    assert cached_dataset("toy", build, seed=0)["x"] == [1]
    assert cached_dataset("toy", build, seed=0)["x"] == [1]  # from the cache
    assert cached_dataset("toy", build, seed=1)["x"] == [2]  # other options, other entry
    assert len(calls) == 2


def test_cached_dataset_is_rebuilt_when_a_data_module_it_uses_changes(tmp_path, monkeypatch):
    """A dataset built in one module (food.py) from another's generator (shapes.py) must not be served
    stale after the generator changes: the key covers the homl16.data sources, not only the build's file."""
    import shutil

    from datasets import Dataset

    from homl16.data import convert

    package = tmp_path / "data"
    shutil.copytree(convert.DATA_PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__", "*.txt"))
    monkeypatch.setattr(convert, "DATA_PACKAGE", package)
    monkeypatch.setenv("HOML16_CACHE", str(tmp_path / "cache"))
    calls = []

    def build():  # defined here, in the test file: its own source does not change below
        calls.append(1)
        return Dataset.from_dict({"x": [len(calls)]})

    before = convert.dataset_key(build, {"seed": 0})
    assert convert.cached_dataset("toy", build, seed=0)["x"] == [1]
    assert convert.cached_dataset("toy", build, seed=0)["x"] == [1]  # from the cache
    with open(package / "shapes.py", "a") as f:
        f.write("\n# the generator changed\n")
    assert convert.dataset_key(build, {"seed": 0}) != before
    assert convert.cached_dataset("toy", build, seed=0)["x"] == [2]  # rebuilt, not stale
    assert len(calls) == 2
