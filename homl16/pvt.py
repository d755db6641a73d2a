"""Pyramid Vision Transformer (PVT) from scratch: spatial-reduction attention, stages, a 4-level pyramid.

PVT turns the ViT into a CNN-like backbone: four stages, each starting with a patch embedding that
shrinks the grid (stride 4, then 2, 2, 2) and widens the channels, so it returns feature maps at
1/4, 1/8, 1/16 and 1/32 of the image size, ready for dense tasks (detection, segmentation).
Attention stays affordable on the fine grids because the keys and values are computed from a
grid shrunk by a strided convolution (spatial-reduction attention, SRA); the queries are not reduced,
so every position still gets an output.

The blocks follow PVT-v2 (as in transformers' ``PvtV2Model``, which the tests compare against):
overlapping patch embeddings (kernel 7 then 3, zero-padded) followed by a LayerNorm, and a
3x3 depthwise convolution inside the MLP, which give the model its sense of position, so there are
no position embeddings. ``overlap=False`` gives PVT-v1's non-overlapping patch embedding
(kernel = stride); ``conv_mlp=False`` gives PVT-v1's plain MLP.

Shapes: B = batch, N = H * W tokens on an H x W grid, D = embedding size.
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_grid_tokens, check_images, check_positive, check_rank
from homl16.transformer import MLP, MultiHeadAttention
from homl16.weights import copy_weights, linear_pairs


def tokens_to_grid(x, grid_size):
    """(B, N, D) tokens -> (B, D, H, W) feature map, for grid_size = (H, W) with N = H * W."""
    check_grid_tokens("x", x, grid_size)
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid_size)


def grid_to_tokens(x):
    """(B, D, H, W) feature map -> (B, H * W, D) tokens, row by row."""
    check_rank("x", x, 4, "(batch, channels, height, width)")
    return x.flatten(2).transpose(1, 2)


class SpatialReductionAttention(MultiHeadAttention):
    """Multi-head self-attention whose keys and values come from a grid reduced ``sr_ratio`` times.

    forward(x, grid_size, return_attention=False): x (B, N, D) on an H x W grid, grid_size = (H, W)
    -> (B, N, D); with ``return_attention=True`` also the weights (B, num_heads, N, M), where
    M = (H // sr_ratio) * (W // sr_ratio) reduced tokens. The reduction is a Conv2d with
    kernel = stride = sr_ratio followed by a LayerNorm; with sr_ratio = 1 it is plain self-attention.
    Each query costs M scores instead of N: sr_ratio**2 times fewer.
    """

    def __init__(self, embed_dim, num_heads, sr_ratio, dropout=0.0, eps=1e-6):
        super().__init__(embed_dim, num_heads, dropout)
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be at least 1, got {sr_ratio}")
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.reduce = nn.Conv2d(embed_dim, embed_dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.reduce_norm = nn.LayerNorm(embed_dim, eps=eps)

    def reduced_tokens(self, x, grid_size):
        """The keys' and values' source: (B, N, D) -> (B, M, D), M = (H // sr) * (W // sr)."""
        grid = tokens_to_grid(x, grid_size)  # also checks N = H * W
        if self.sr_ratio == 1:
            return x
        if min(grid_size) < self.sr_ratio:
            raise ValueError(f"grid_size {tuple(grid_size)} is smaller than sr_ratio={self.sr_ratio}: "
                             "the images are too small for this stage's spatial reduction")
        return self.reduce_norm(grid_to_tokens(self.reduce(grid)))

    def forward(self, x, grid_size, return_attention=False):
        return super().forward(x, context=self.reduced_tokens(x, grid_size),
                               return_attention=return_attention)


class ConvMLP(MLP):
    """PVT-v2's feed-forward network: Linear, 3x3 depthwise conv on the grid, GELU, Linear.

    forward(x, grid_size): (B, N, D) -> (B, N, D). The zero-padded depthwise conv lets each token
    see its neighbours, which tells the model where it is (PVT-v2 has no position embeddings).
    """

    def __init__(self, embed_dim, hidden_dim, dropout=0.0):
        super().__init__(embed_dim, hidden_dim, dropout)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)

    def forward(self, x, grid_size):
        hidden = grid_to_tokens(self.dwconv(tokens_to_grid(self.fc1(x), grid_size)))
        return self.dropout(self.fc2(self.dropout(F.gelu(hidden))))


class PVTBlock(nn.Module):
    """Pre-norm encoder block with spatial-reduction attention:
    x + SRA(LayerNorm(x)), then x + MLP(LayerNorm(x)).

    forward(x, grid_size, return_attention=False): (B, N, D) -> (B, N, D)
    (and the (B, num_heads, N, M) weights when asked). ``conv_mlp=True`` (PVT-v2) puts a depthwise
    conv in the MLP, ``False`` (PVT-v1) uses a plain MLP.
    """

    def __init__(self, embed_dim, num_heads, ff_dim, sr_ratio, dropout=0.0, conv_mlp=True, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=eps)
        self.attn = SpatialReductionAttention(embed_dim, num_heads, sr_ratio, dropout, eps)
        self.norm2 = nn.LayerNorm(embed_dim, eps=eps)
        self.mlp = ConvMLP(embed_dim, ff_dim, dropout) if conv_mlp else MLP(embed_dim, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, grid_size, return_attention=False):
        attended = self.attn(self.norm1(x), grid_size, return_attention=return_attention)
        if return_attention:
            attended, weights = attended
        x = x + self.dropout(attended)
        hidden = self.norm2(x)
        x = x + (self.mlp(hidden, grid_size) if isinstance(self.mlp, ConvMLP) else self.mlp(hidden))
        return (x, weights) if return_attention else x


class OverlapPatchEmbedding(nn.Module):
    """Patch embedding that shrinks the grid ``stride`` times: Conv2d, then LayerNorm over channels.

    (B, in_channels, H, W) -> tokens (B, N, embed_dim) and grid_size (H', W') with N = H' * W'.
    With ``overlap=True`` (PVT-v2) the kernel is 2 * stride - 1 (7 for stride 4, 3 for stride 2) with
    zero padding, so neighbouring patches overlap and H' = ceil(H / stride); with ``overlap=False``
    (PVT-v1) kernel = stride and H' = H // stride.
    """

    def __init__(self, in_channels, embed_dim, stride, overlap=True, eps=1e-6):
        super().__init__()
        check_positive("stride", stride, integer=True)
        self.in_channels = in_channels
        kernel_size = 2 * stride - 1 if overlap else stride
        padding = kernel_size // 2 if overlap else 0
        self.conv2d = nn.Conv2d(in_channels, embed_dim, kernel_size, stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, X):
        check_images("X", X, self.in_channels)
        X = self.conv2d(X)  # (B, embed_dim, H', W')
        return self.norm(grid_to_tokens(X)), tuple(X.shape[2:])


class PVTStage(nn.Module):
    """One level of the pyramid: patch embedding (grid shrunk ``stride`` times), ``depth`` PVT blocks,
    a LayerNorm, and the tokens reshaped back to a grid.

    forward(X, return_attention=False): (B, in_channels, H, W) -> (B, embed_dim, H / stride, W / stride)
    (and a list of one (B, num_heads, N, M) map per block when asked).
    """

    def __init__(self, in_channels, embed_dim, depth, num_heads, mlp_ratio, sr_ratio, stride,
                 overlap=True, conv_mlp=True, dropout=0.0, eps=1e-6):
        super().__init__()
        self.patch_embed = OverlapPatchEmbedding(in_channels, embed_dim, stride, overlap, eps)
        self.blocks = nn.ModuleList(
            PVTBlock(embed_dim, num_heads, int(embed_dim * mlp_ratio), sr_ratio, dropout, conv_mlp, eps)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, X, return_attention=False):
        x, grid_size = self.patch_embed(X)  # (B, N, D)
        maps = []
        for block in self.blocks:
            x = block(x, grid_size, return_attention=return_attention)
            if return_attention:
                x, weights = x
                maps.append(weights)
        X = tokens_to_grid(self.norm(x), grid_size)  # (B, D, H', W')
        return (X, maps) if return_attention else X


class PyramidVisionTransformer(nn.Module):
    """A PVT backbone: four stages at strides 4, 2, 2, 2 (1/4 ... 1/32 of the image).

    forward(X): (B, in_channels, H, W) -> list of 4 feature maps
    (B, embed_dims[i], H / 4 / 2**i, W / 4 / 2**i).
    The defaults are PVT-v2-b1's (and PVT-v1's widths): 64, 128, 320, 512 channels.
    """

    def __init__(self, in_channels=3, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2),
                 num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1),
                 strides=(4, 2, 2, 2), overlap=True, conv_mlp=True, dropout=0.0, eps=1e-6):
        super().__init__()
        sizes = {len(v) for v in (embed_dims, depths, num_heads, mlp_ratios, sr_ratios, strides)}
        if len(sizes) != 1 or not embed_dims:
            raise ValueError("embed_dims, depths, num_heads, mlp_ratios, sr_ratios and strides "
                             "must have one entry per stage (at least one stage)")
        self.in_channels = in_channels
        self.embed_dims = tuple(embed_dims)
        channels = (in_channels,) + self.embed_dims[:-1]
        self.stages = nn.ModuleList(
            PVTStage(c, d, n, h, m, s, st, overlap, conv_mlp, dropout, eps)
            for c, d, n, h, m, s, st in zip(channels, embed_dims, depths, num_heads, mlp_ratios,
                                            sr_ratios, strides))

    def forward(self, X, return_attention=False):
        check_images("X", X, self.in_channels)
        features, maps = [], []
        for stage in self.stages:
            X = stage(X, return_attention=return_attention)
            if return_attention:
                X, stage_maps = X
                maps.append(stage_maps)
            features.append(X)
        return (features, maps) if return_attention else features


class PVTSegmenter(nn.Module):
    """Semantic segmentation: a PVT pyramid and ``homl16.segment.SegmentationHead`` over its 4 maps.

    forward(X): (B, in_channels, H, W) -> per-pixel logits (B, num_classes, H, W).
    ``pvt_options`` go to ``PyramidVisionTransformer``.
    """

    def __init__(self, num_classes, head_dim=64, **pvt_options):
        from homl16.segment import SegmentationHead

        super().__init__()
        self.backbone = PyramidVisionTransformer(**pvt_options)
        self.head = SegmentationHead(self.backbone.embed_dims, num_classes, head_dim)

    def forward(self, X):
        return self.head(self.backbone(X), image_size=X.shape[-2:])


def attention_parameter_pairs(attn, hf_attention):
    """(course tensor, transformers tensor) pairs of a ``SpatialReductionAttention`` and a
    transformers ``PvtV2SelfAttention``. The course's fused key/value projection ``kv`` pairs with
    transformers' separate ``key`` and ``value`` (joined); ``reduce``/``reduce_norm`` pair with
    ``spatial_reduction``/``layer_norm``."""
    if hf_attention.spatial_reduction_ratio != attn.sr_ratio or hf_attention.linear_attention:
        raise ValueError(f"sr_ratio differs: {attn.sr_ratio} vs {hf_attention.spatial_reduction_ratio} "
                         "(or the transformers model uses linear attention)")
    pairs = (linear_pairs(attn.q, hf_attention.query) + linear_pairs(attn.proj, hf_attention.proj)
             + linear_pairs(attn.kv, [hf_attention.key, hf_attention.value]))
    if attn.sr_ratio > 1:
        pairs += linear_pairs(attn.reduce, hf_attention.spatial_reduction)
        pairs += linear_pairs(attn.reduce_norm, hf_attention.layer_norm)
    return pairs


def block_parameter_pairs(block, hf_layer):
    """Pairs of a ``PVTBlock`` (with ``conv_mlp=True``) and a transformers ``PvtV2BlockLayer``."""
    if not isinstance(block.mlp, ConvMLP):
        raise ValueError("transformers' PVT-v2 block has a depthwise conv in its MLP: use conv_mlp=True")
    mlp, hf_mlp = block.mlp, hf_layer.mlp
    return (attention_parameter_pairs(block.attn, hf_layer.attention)
            + linear_pairs(block.norm1, hf_layer.layer_norm_1)
            + linear_pairs(block.norm2, hf_layer.layer_norm_2)
            + linear_pairs(mlp.fc1, hf_mlp.dense1) + linear_pairs(mlp.dwconv, hf_mlp.dwconv.dwconv)
            + linear_pairs(mlp.fc2, hf_mlp.dense2))


def paired_parameters(pvt, hf_model):
    """Pairs of a ``PyramidVisionTransformer`` and a transformers ``PvtV2Model``
    (or ``PvtV2ForImageClassification``, whose classifier is left out)."""
    hf = getattr(hf_model, "pvt_v2", hf_model)
    if len(hf.encoder.layers) != len(pvt.stages):
        raise ValueError(f"{len(hf.encoder.layers)} transformers stages vs {len(pvt.stages)}")
    pairs = []
    for stage, layer in zip(pvt.stages, hf.encoder.layers):
        if len(stage.blocks) != len(layer.blocks):
            raise ValueError(f"stage depth differs: {len(stage.blocks)} vs {len(layer.blocks)}")
        pairs += linear_pairs(stage.patch_embed.conv2d, layer.patch_embedding.proj)
        pairs += linear_pairs(stage.patch_embed.norm, layer.patch_embedding.layer_norm)
        pairs += linear_pairs(stage.norm, layer.layer_norm)
        for block, hf_layer in zip(stage.blocks, layer.blocks):
            pairs += block_parameter_pairs(block, hf_layer)
    return pairs


def copy_weights_from_hf(module, hf_module):
    """Copy transformers' PVT-v2 weights into the course's matching module (with
    ``homl16.weights.copy_weights``) and return it: a ``PyramidVisionTransformer`` from a ``PvtV2Model``,
    a ``PVTBlock`` from a ``PvtV2BlockLayer``, or a ``SpatialReductionAttention`` from a
    ``PvtV2SelfAttention``. They then compute the same thing."""
    if isinstance(module, PyramidVisionTransformer):
        pairs = paired_parameters(module, hf_module)
    elif isinstance(module, PVTBlock):
        pairs = block_parameter_pairs(module, hf_module)
    elif isinstance(module, SpatialReductionAttention):
        pairs = attention_parameter_pairs(module, hf_module)
    else:
        raise ValueError(f"cannot copy transformers weights into a {type(module).__name__}")
    copy_weights(pairs, to="course", model_name=type(module).__name__)
    return module


def pvt_options_from_hf_config(config):
    """``PyramidVisionTransformer`` keyword arguments with the sizes of a transformers ``PvtV2Config``
    (whose patch sizes must be PVT-v2's overlapping 2 * stride - 1)."""
    if list(config.patch_sizes) != [2 * s - 1 for s in config.strides]:
        raise ValueError(f"patch_sizes {config.patch_sizes} are not 2 * stride - 1 "
                         f"for strides {config.strides}")
    return dict(in_channels=config.num_channels, embed_dims=tuple(config.hidden_sizes),
                depths=tuple(config.depths), num_heads=tuple(config.num_attention_heads),
                mlp_ratios=tuple(config.mlp_ratios), sr_ratios=tuple(config.sr_ratios),
                strides=tuple(config.strides), eps=config.layer_norm_eps)


def small_pvt_v2_config(hidden_sizes=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                        mlp_ratios=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1), image_size=64, **options):
    """A small transformers ``PvtV2Config`` (the real ``OpenGVLab/pvt_v2_b0`` has 32, 64, 160, 256
    channels, depths 2, 2, 2, 2 and MLP ratios 8, 8, 4, 4)."""
    from transformers import PvtV2Config

    return PvtV2Config(hidden_sizes=list(hidden_sizes), depths=list(depths),
                       num_attention_heads=list(num_heads),
                       mlp_ratios=list(mlp_ratios), sr_ratios=list(sr_ratios),
                       image_size=[image_size, image_size], **options)


def small_hf_pvt_v2(num_labels=None, seed=0, **config_options):
    """A small, randomly initialised (from ``seed``) transformers PVT-v2: a ``PvtV2Model``, or a
    ``PvtV2ForImageClassification`` when ``num_labels`` is given. The offline stand-in for
    ``OpenGVLab/pvt_v2_b0``: same classes, so the book's code runs unchanged."""
    from transformers import PvtV2ForImageClassification, PvtV2Model

    config = small_pvt_v2_config(**config_options)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if num_labels is None:
            return PvtV2Model(config).eval()
        config.num_labels = num_labels
        return PvtV2ForImageClassification(config).eval()


def offline_pvt_checkpoint():
    """Directory of the offline stand-in for OpenGVLab/pvt_v2_b0: a small PVT-v2 classifier with ImageNet's
    1,000 classes and its 224-pixel image processor, saved once (see ``homl16.pretrained.STAND_INS``)."""
    from transformers import PvtImageProcessorPil

    from homl16.pretrained import local_checkpoint

    return local_checkpoint("small-pvt-v2", lambda: (small_hf_pvt_v2(num_labels=1000, image_size=224),
                                                     PvtImageProcessorPil()))
