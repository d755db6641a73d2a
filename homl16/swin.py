"""Swin Transformer from scratch: windows, relative position bias, shifted windows, patch merging.

Tokens live on a 2-D grid. ``x`` is (B, L, D) with L = H * W tokens in row-major order and
``grid_size = (H, W)``; a window holds N = window_size² tokens. Attention runs inside each window
only (all windows of all images batched as one tensor), so its cost grows like L · N instead of L².
Every other block shifts the windows by half a window with a cyclic ``torch.roll`` and masks the
pairs of tokens that the roll brought together from far-apart parts of the image.

Layouts follow the Swin paper and transformers' ``SwinLayer`` (the tests check the blocks against it
after copying weights). One difference: each stage here *starts* with patch merging (as in the
paper's figure), so a stage's output is its feature map; transformers merges at the end of a stage.
"""

import torch
from torch import nn

from homl16.checks import check_divisible, check_grid_tokens, check_images, check_positive
from homl16.segment import SegmentationHead
from homl16.transformer import MLP, MultiHeadAttention
from homl16.vit import PatchEmbedding
from homl16.weights import copy_weights, linear_pairs


def window_partition(x, window_size):
    """Cut a grid of tokens into non-overlapping square windows (H and W divisible by window_size).

    x (B, H, W, D) -> (B * num_windows, window_size, window_size, D), windows in row-major order
    per image (num_windows = H / window_size * W / window_size).
    """
    B, H, W, D = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, D)
    return x.transpose(2, 3).reshape(-1, window_size, window_size, D)


def window_reverse(windows, grid_size):
    """The inverse of ``window_partition``: (B * num_windows, w, w, D) -> (B, H, W, D)."""
    H, W = grid_size
    window_size, D = windows.shape[1], windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, D)
    return x.transpose(2, 3).reshape(-1, H, W, D)


def cyclic_shift(x, shift_size, reverse=False):
    """Roll a (B, H, W, D) grid up and left by ``shift_size`` (down and right with ``reverse``)."""
    shift = shift_size if reverse else -shift_size
    return torch.roll(x, shifts=(shift, shift), dims=(1, 2))


def relative_position_index(window_size):
    """Index into the relative position bias table for every pair of positions in a window.

    -> long (N, N), N = window_size²: entry (i, j) numbers the offset (dy, dx) from token j to
    token i, each in [-(w - 1), w - 1], as (dy + w - 1) * (2w - 1) + (dx + w - 1); there are
    (2w - 1)² different offsets.
    """
    check_positive("window_size", window_size, integer=True)
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing="ij")).flatten(1)  # (2, N): row and column of each token
    offsets = coords[:, :, None] - coords[:, None, :] + window_size - 1  # (2, N, N), in [0, 2w - 2]
    return offsets[0] * (2 * window_size - 1) + offsets[1]


def shift_regions(grid_size, window_size, shift_size):
    """Which part of the image each position of the *cyclically shifted* grid comes from.

    -> long (H, W) with values in 0..8: along each axis, 0 = positions that were already there,
    1 = the rest of the last window, 2 = the ``shift_size`` rows/columns rolled in from the other side.
    Two tokens may attend to each other after the shift only if they share a region.
    """
    H, W = grid_size
    rows, cols = torch.arange(H), torch.arange(W)
    row_region = (rows >= H - window_size).long() + (rows >= H - shift_size).long()
    col_region = (cols >= W - window_size).long() + (cols >= W - shift_size).long()
    return row_region[:, None] * 3 + col_region[None, :]


def shifted_window_mask(grid_size, window_size, shift_size, fill=float("-inf")):
    """Additive attention mask of shifted-window attention.

    -> float (num_windows, N, N): 0 where two tokens of a window come from the same region of the
    image (see ``shift_regions``), ``fill`` where they do not. transformers (like the original
    Swin code) uses ``fill=-100.0``; -inf gives exactly zero weight to masked pairs.
    """
    H, W = grid_size
    check_divisible("grid height", H, window_size, "window_size")
    check_divisible("grid width", W, window_size, "window_size")
    if not 0 < shift_size < window_size:
        raise ValueError(f"shift_size must be in 1..window_size - 1, got {shift_size}")
    regions = shift_regions(grid_size, window_size, shift_size)
    regions = window_partition(regions[None, :, :, None], window_size).flatten(1)  # (num_windows, N)
    different = regions[:, :, None] != regions[:, None, :]  # (num_windows, N, N)
    return torch.zeros(different.shape).masked_fill(different, fill)


class WindowAttention(MultiHeadAttention):
    """The course's ``MultiHeadAttention`` run inside windows, plus a learned relative position bias.

    forward(windows, mask=None): windows (B * num_windows, N, D) with N = window_size²;
    mask None or float (num_windows, N, N) added to the scores -> (B * num_windows, N, D).
    The bias (num_heads, N, N) and the mask go to ``MultiHeadAttention`` as one additive float
    ``attn_mask``: (num_heads, N, N) without a mask, (B * num_windows, num_heads, N, N) with one.
    """

    def __init__(self, embed_dim, num_heads, window_size, qkv_bias=True):
        super().__init__(embed_dim, num_heads, bias=qkv_bias)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window_size - 1) ** 2, num_heads) * 0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size),
                             persistent=False)

    def relative_position_bias(self):
        """(num_heads, N, N): the table entry of each pair's offset, per head."""
        return self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)

    def forward(self, windows, mask=None):
        check_windows(windows, self.window_size)
        bias = window_attn_mask(self.relative_position_bias(), mask, windows)
        return super().forward(windows, attn_mask=bias)


def check_windows(windows, window_size):
    """Raise unless ``windows`` is (B * num_windows, window_size², D)."""
    if windows.dim() != 3 or windows.shape[1] != window_size ** 2:
        raise ValueError(f"windows must be (batch * num_windows, {window_size ** 2} tokens, "
                         f"embed_dim), got shape {tuple(windows.shape)}")


def window_attn_mask(bias, mask, windows):
    """A position bias (num_heads, N, N) and an optional shifted-window mask (num_windows, N, N) as one
    additive ``attn_mask`` for ``MultiHeadAttention`` on ``windows`` (B * num_windows, N, D):
    (num_heads, N, N) without a mask, (B * num_windows, num_heads, N, N) with one."""
    bias = bias.to(windows.dtype)  # the same for every window
    if mask is None:
        return bias
    num_windows, N = mask.shape[0], mask.shape[1]  # one bias per window and head, repeated for every image
    check_divisible("batch * num_windows", len(windows), num_windows, "num_windows")
    bias = (bias + mask[:, None]).expand(len(windows) // num_windows, -1, -1, -1, -1)
    return bias.reshape(-1, bias.shape[-3], N, N)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: x + W-MSA(LN(x)) (or SW-MSA when ``shift_size > 0``), then x + MLP(LN(x)).

    forward(x, grid_size): x (B, H * W, D), grid_size (H, W) divisible by window_size -> (B, H * W, D).
    When the grid is a single window the shift is skipped (it would only mask pairs), as in transformers.
    Subclasses change the attention through ``attention_type`` (built as (embed_dim, num_heads, window_size)).
    """

    attention_type = WindowAttention

    def __init__(self, embed_dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, eps=1e-5):
        super().__init__()
        check_positive("window_size", window_size, integer=True)
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in 0..window_size - 1, got {shift_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(embed_dim, eps=eps)
        self.attn = self.attention_type(embed_dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(embed_dim, eps=eps)
        self.mlp = MLP(embed_dim, int(embed_dim * mlp_ratio))
        self._masks = {}  # (grid_size, device, dtype) -> shifted-window mask

    def shift_mask(self, grid_size, device, dtype):
        """The shifted-window mask (num_windows, N, N) of a grid, built once per grid size, window size,
        device and dtype and cached on the block (it holds no parameter: only the grid decides it)."""
        key = (tuple(grid_size), self.window_size, self.shift_size, torch.device(device), dtype)
        if key not in self._masks:
            mask = shifted_window_mask(grid_size, self.window_size, self.shift_size)
            self._masks[key] = mask.to(device, dtype)
        return self._masks[key]

    def forward(self, x, grid_size):
        x = x + self.window_attention(self.norm1(x), grid_size)
        return x + self.mlp(self.norm2(x))

    def window_attention(self, x, grid_size):
        """(Shifted-)window attention over a grid of tokens: roll, cut into windows, attend, put the
        windows back, roll back. x (B, H * W, D) -> (B, H * W, D)."""
        check_grid_tokens("x", x, grid_size)
        H, W = grid_size
        B, L, D = x.shape
        w = self.window_size
        check_divisible("grid height", H, w, "window_size")
        check_divisible("grid width", W, w, "window_size")
        shift = self.shift_size if min(H, W) > w else 0
        grid = x.view(B, H, W, D)
        mask = None
        if shift:
            grid = cyclic_shift(grid, shift)
            mask = self.shift_mask((H, W), x.device, x.dtype)
        windows = window_partition(grid, w).view(-1, w * w, D)  # (B * num_windows, N, D)
        windows = self.attn(windows, mask)
        grid = window_reverse(windows.view(-1, w, w, D), (H, W))
        if shift:
            grid = cyclic_shift(grid, shift, reverse=True)
        return grid.reshape(B, L, D)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of neighbouring tokens, normalise, and project 4D -> 2D.

    forward(x, grid_size): x (B, H * W, D) -> (B, H/2 * W/2, 2D); the grid halves, channels double.
    Concatenation order as in Swin: (0, 0), (1, 0), (0, 1), (1, 1) as (row, column) offsets.
    """

    def __init__(self, embed_dim, eps=1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(4 * embed_dim, eps=eps)
        self.reduction = nn.Linear(4 * embed_dim, 2 * embed_dim, bias=False)

    def forward(self, x, grid_size):
        check_grid_tokens("x", x, grid_size)
        H, W = grid_size
        B, L, D = x.shape
        check_divisible("grid height", H, 2, "2")
        check_divisible("grid width", W, 2, "2")
        grid = x.view(B, H, W, D)
        merged = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2],
                            grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], dim=-1)  # (B, H/2, W/2, 4D)
        return self.reduction(self.norm(merged.view(B, -1, 4 * D)))


class SwinStage(nn.Module):
    """Optional patch merging, then ``depth`` Swin blocks alternating regular and shifted windows.

    forward(x, grid_size): x (B, H * W, in_dim) -> (x (B, H' * W', out_dim), (H', W')), with
    out_dim = 2 * in_dim and H' = H / 2 when ``downsample`` (else out_dim = in_dim). ``block`` is the
    block class (``SwinBlock``, or ``homl16.swinv2.SwinV2Block``).
    """

    def __init__(self, in_dim, depth, num_heads, window_size=7, downsample=False, mlp_ratio=4.0,
                 block=SwinBlock):
        super().__init__()
        self.merge = PatchMerging(in_dim) if downsample else None
        dim = 2 * in_dim if downsample else in_dim
        self.blocks = nn.ModuleList(
            block(dim, num_heads, window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                  mlp_ratio=mlp_ratio)
            for i in range(depth))

    def forward(self, x, grid_size):
        if self.merge is not None:
            x = self.merge(x, grid_size)
            grid_size = (grid_size[0] // 2, grid_size[1] // 2)
        for block in self.blocks:
            x = block(x, grid_size)
        return x, grid_size


class Swin(nn.Module):
    """A small hierarchical Swin backbone: patch embedding, then one stage per entry of ``depths``.

    forward(X): (B, in_channels, H, W) -> list of feature maps, one per stage, (B, C_i, H_i, W_i) with
    C_i = embed_dim * 2^i and H_i = H / (patch_size * 2^i) (each normalised by a LayerNorm), ready for
    ``homl16.segment.SegmentationHead(model.channels, ...)``. ``block``: the block class of every stage.
    """

    def __init__(self, in_channels=3, patch_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                 window_size=4, mlp_ratio=4.0, block=SwinBlock):
        super().__init__()
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must be non-empty and as long")
        self.in_channels, self.patch_size, self.window_size = in_channels, patch_size, window_size
        self.patch_embed = PatchEmbedding(in_channels, embed_dim, patch_size)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.channels = [embed_dim * 2 ** i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            SwinStage(self.channels[max(i - 1, 0)], depth, heads, window_size, downsample=i > 0,
                      mlp_ratio=mlp_ratio, block=block)
            for i, (depth, heads) in enumerate(zip(depths, num_heads)))
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)

    def forward(self, X):
        check_images("X", X, self.in_channels)
        stride = self.patch_size * 2 ** (len(self.stages) - 1) * self.window_size
        check_divisible("image height", X.shape[2], stride, "patch_size * 2^(stages - 1) * window_size")
        check_divisible("image width", X.shape[3], stride, "patch_size * 2^(stages - 1) * window_size")
        x = self.embed_norm(self.patch_embed(X))  # (B, L, D)
        grid_size = (X.shape[2] // self.patch_size, X.shape[3] // self.patch_size)
        features = []
        for stage, norm in zip(self.stages, self.out_norms):
            x, grid_size = stage(x, grid_size)
            features.append(norm(x).transpose(1, 2).reshape(x.shape[0], -1, *grid_size))
        return features


class SwinSegmenter(nn.Module):
    """Swin backbone + ``SegmentationHead``: images (B, C, H, W) -> logits (B, num_classes, H, W)."""

    def __init__(self, num_classes, head_dim=64, **swin_options):
        super().__init__()
        self.backbone = Swin(**swin_options)
        self.head = SegmentationHead(self.backbone.channels, num_classes, dim=head_dim)

    def forward(self, X):
        return self.head(self.backbone(X), image_size=X.shape[-2:])


def small_hf_swin(image_size=64, patch_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                  window_size=4, seed=0):
    """A small, randomly initialised (from ``seed``) transformers ``SwinModel`` and its image processor:
    the offline stand-in for ``microsoft/swin-tiny-patch4-window7-224`` (224 pixels, embed_dim 96,
    depths (2, 2, 6, 2), 7x7 windows)."""
    from transformers import SwinConfig, SwinModel, ViTImageProcessorPil

    config = SwinConfig(image_size=image_size, patch_size=patch_size, embed_dim=embed_dim,
                        depths=list(depths), num_heads=list(num_heads), window_size=window_size)
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SwinModel(config)
    return model, processor


def copy_weights_from_hf_layer(block, hf_layer):
    """Copy a transformers ``SwinLayer``'s weights into a ``SwinBlock`` of the same sizes (its separate
    k and v projections go into the course's fused ``kv``), with ``homl16.weights.copy_weights``.
    The two then compute the same function. Returns ``block``."""
    attention = hf_layer.attention
    pairs = [(block.attn.relative_position_bias_table,
              attention.relative_position_bias.relative_position_bias_table)]
    for ours, theirs in [(block.attn.q, attention.q_proj),
                         (block.attn.kv, [attention.k_proj, attention.v_proj]),
                         (block.attn.proj, attention.o_proj), (block.norm1, hf_layer.layernorm_before),
                         (block.norm2, hf_layer.layernorm_after), (block.mlp.fc1, hf_layer.mlp.fc1),
                         (block.mlp.fc2, hf_layer.mlp.fc2)]:
        pairs += linear_pairs(ours, theirs)
    copy_weights(pairs, to="course", model_name="Swin block")
    block.norm1.eps = block.norm2.eps = hf_layer.layernorm_before.eps
    return block


def offline_swin_checkpoint():
    """Directory of the offline stand-in for microsoft/swin-tiny-patch4-window7-224: a small Swin with the
    real one's image size, patch and window sizes and four stages, saved once (see ``STAND_INS``)."""
    from homl16.pretrained import local_checkpoint

    return local_checkpoint("small-swin-224", lambda: small_hf_swin(
        image_size=224, patch_size=4, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
        window_size=7))
