import pytest
import torch

from homl16.data.convert import image_to_tensor
from homl16.data.photos import load_photo
from homl16.efficientnet import cached_feature_maps, frozen_cnn, imagenet_classes, top_k_labels


def photo_batch(*names, size=224):
    return torch.stack([image_to_tensor(load_photo(name).resize((size, size))) for name in names])


def test_real_imagenet_weights_recognise_real_photos():
    labels = top_k_labels(frozen_cnn()(photo_batch("chelsea", "coffee")), k=3)
    assert labels[0][0][0] in {"tabby", "tiger cat", "Egyptian cat"} and labels[0][0][1] > 0.5
    assert labels[1][0][0] == "espresso" and labels[1][0][1] > 0.5
    assert len(imagenet_classes()) == 1000 and imagenet_classes()[0] == "tench"


def test_feature_maps_per_stride_and_frozen():
    model = frozen_cnn()
    X = torch.rand(2, 3, 64, 64)
    shapes = {s: tuple(model.feature_map(X, s).shape) for s in (8, 16, 32)}
    assert shapes == {8: (2, 40, 8, 8), 16: (2, 112, 4, 4), 32: (2, 320, 2, 2)}
    assert model.channels == {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training  # batch norm keeps its ImageNet statistics
    with pytest.raises(ValueError, match="stride"):
        model.feature_map(X, 3)
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.rand(2, 1, 64, 64))


def test_cached_feature_maps_equal_a_fresh_computation(tmp_path, monkeypatch):
    monkeypatch.setenv("HOML16_CACHE", str(tmp_path))
    X = torch.rand(3, 3, 32, 32)
    first = cached_feature_maps(X, stride=16)
    assert len(list(tmp_path.rglob("*.pt"))) == 1
    torch.testing.assert_close(cached_feature_maps(X, stride=16), first)
    torch.testing.assert_close(first, frozen_cnn().feature_map(X, 16))
