"""Swin v2's three changes to the Swin block, and moving a trained Swin (v1 or v2) to larger windows.

1. Scaled cosine attention: the score of a query and a key is their cosine similarity times a learned
   per-head temperature (stored as its log, clamped at 100), so no pair of tokens can dominate a window
   just because its activations grew large.
2. Log-spaced continuous relative position bias: a small MLP maps each relative offset (dy, dx), on a
   log scale, to one bias per head (16 · sigmoid(MLP), as in the paper's code), instead of v1's table
   with one learned entry per offset. A larger window only asks the MLP for offsets it has not seen.
3. Res-post-norm: x + LN(attention(x)), then x + LN(MLP(x)), so the residual stream is no longer the
   sum of ever-larger unnormalised branch outputs.

Windows, shifts, masks, patch merging and the backbone come from ``homl16.swin``: ``Swin(block=SwinV2Block)``
is a Swin v2 backbone (with v1's patch merging; the paper's code also moves its norm after the projection).
Layouts follow transformers' ``Swinv2SelfAttention`` and ``Swinv2Layer`` (the tests copy weights both ways).
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_positive
from homl16.swin import (
    Swin,
    SwinBlock,
    WindowAttention,
    check_windows,
    relative_position_index,
    window_attn_mask,
)
from homl16.transformer import MultiHeadAttention
from homl16.weights import copy_weights, linear_pairs


def log_spaced_coordinates(window_size, pretrained_window_size=None):
    """The log-spaced coordinates of every relative offset in a window.

    -> float ((2w - 1)², 2) for w = window_size, rows in the order of ``relative_position_index``'s
    table: each offset d (rows, then columns) in [-(w - 1), w - 1] becomes u = 8 d / (w₀ - 1) and then
    sign(u) · log2(1 + |u|) / 3, with w₀ = pretrained_window_size (default: window_size). The offsets
    of the window a model was trained at fill [-log2(9) / 3, log2(9) / 3] = [-1.06, 1.06]; a window
    twice as large, with w₀ kept, reaches 1.43 for 4 -> 8 (35% beyond), where raw offsets would
    reach 7/3 = 2.3 times as far.
    """
    check_positive("window_size", window_size, integer=True)
    reference = pretrained_window_size or window_size
    check_positive("pretrained_window_size", reference, integer=True)
    offsets = torch.arange(-(window_size - 1), window_size, dtype=torch.float32)
    coords = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # (2w - 1, 2w - 1, 2)
    if reference > 1:
        coords = coords / (reference - 1)
    coords = coords * 8
    return (torch.sign(coords) * torch.log2(coords.abs() + 1.0) / math.log2(8)).flatten(0, 1)


class ContinuousPositionBias(nn.Module):
    """Swin v2's relative position bias: an MLP (2 -> hidden -> num_heads) over ``log_spaced_coordinates``.

    forward() -> (num_heads, N, N), N = window_size²: 16 · sigmoid(MLP(coordinates of the offset of
    (i, j))), so every bias lies in (0, 16). ``set_window_size`` re-evaluates it on another window.
    """

    def __init__(self, num_heads, window_size, hidden_dim=512, pretrained_window_size=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, num_heads, bias=False))
        self.set_window_size(window_size, pretrained_window_size)

    def set_window_size(self, window_size, pretrained_window_size=None):
        """Use windows of ``window_size`` from now on, with coordinates scaled by ``pretrained_window_size``
        (the window the MLP was trained at; default window_size). No parameter changes."""
        device = self.mlp[0].weight.device
        self.window_size, self.pretrained_window_size = window_size, pretrained_window_size
        coordinates = log_spaced_coordinates(window_size, pretrained_window_size)
        self.register_buffer("coordinates", coordinates.to(device), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(window_size).to(device),
                             persistent=False)

    def forward(self):
        table = self.mlp(self.coordinates)  # ((2w - 1)², num_heads): one bias per offset and head
        return 16 * torch.sigmoid(table[self.relative_position_index].permute(2, 0, 1))


class CosineWindowAttention(MultiHeadAttention):
    """Swin v2's window attention: scores = temperature · cos(q, k) per head, plus ``ContinuousPositionBias``.

    forward(windows, mask=None) as ``homl16.swin.WindowAttention``: windows (B * num_windows, N, D),
    mask None or float (num_windows, N, N) -> (B * num_windows, N, D). The temperature is
    exp(logit_scale), learned per head, starting at 10 and clamped at ``max_logit_scale`` = 100.
    The key projection has no bias (as in the paper's code and transformers): unlike in dot-product
    attention, a key bias would change cosine scores.
    """

    def __init__(self, embed_dim, num_heads, window_size, max_logit_scale=100.0):
        super().__init__(embed_dim, num_heads, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1), math.log(10.0)))
        self.max_logit_scale = max_logit_scale
        self.position_bias = ContinuousPositionBias(num_heads, window_size)

    @property
    def window_size(self):
        return self.position_bias.window_size

    def temperature(self):
        """(num_heads, 1): the factor of each head's cosine similarities."""
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def project_qkv(self, x, context):
        """q, k, v as ``MultiHeadAttention`` computes them, then q and k of each head made unit-length and
        q multiplied by the head's temperature and by sqrt(head_dim), which ``MultiHeadAttention``
        divides the scores by: its scores become temperature · cos(q, k)."""
        q, k, v = super().project_qkv(x, context)
        heads = (*q.shape[:-1], self.num_heads, self.head_dim)
        q = F.normalize((q + self.q_bias).view(heads), dim=-1) * self.temperature() * self.head_dim ** 0.5
        k = F.normalize(k.view(heads), dim=-1)
        return q.flatten(-2), k.flatten(-2), v + self.v_bias

    def forward(self, windows, mask=None):
        check_windows(windows, self.window_size)
        bias = window_attn_mask(self.position_bias(), mask, windows)
        return super().forward(windows, attn_mask=bias)


class SwinV2Block(SwinBlock):
    """Res-post-norm Swin v2 block: x + LN(SW-MSA(x)), then x + LN(MLP(x)), with ``CosineWindowAttention``.

    forward(x, grid_size) as ``SwinBlock``: x (B, H * W, D) -> (B, H * W, D). Masked pairs of shifted
    windows get -inf (transformers adds -100, which cosine scores of up to ±100 plus a bias up to 16
    could overcome).
    """

    attention_type = CosineWindowAttention

    def forward(self, x, grid_size):
        x = x + self.norm1(self.window_attention(x, grid_size))
        return x + self.norm2(self.mlp(x))


def resize_bias_table(table, window_size):
    """v1's relative position bias table ((2w - 1)², num_heads) resized bicubically to window_size's
    ((2w' - 1)², num_heads), as the Swin v2 paper and timm do to move a Swin v1 to other windows."""
    old_side, new_side = math.isqrt(table.shape[0]), 2 * window_size - 1
    grid = table.T.reshape(1, -1, old_side, old_side)  # the table as a (num_heads)-channel image of offsets
    resized = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized.reshape(-1, new_side * new_side).T.contiguous()


@torch.no_grad()
def with_window_size(model, window_size):
    """A copy of a trained Swin (``SwinBlock``s or ``SwinV2Block``s, or any module holding them) that runs
    with ``window_size`` windows, without retraining: v1's bias tables are resized bicubically
    (``resize_bias_table``), v2's continuous bias is evaluated at the new offsets, scaled as at training
    (the window it was trained at stays its ``pretrained_window_size``); shifts become window_size // 2.
    """
    check_positive("window_size", window_size, integer=True)
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (SwinBlock, Swin)):
            if getattr(module, "shift_size", 0):
                module.shift_size = window_size // 2
            module.window_size = window_size
        if isinstance(module, WindowAttention):
            table = resize_bias_table(module.relative_position_bias_table, window_size)
            module.relative_position_bias_table = nn.Parameter(table)
            module.relative_position_index = relative_position_index(window_size).to(table.device)
            module.window_size = window_size
        if isinstance(module, ContinuousPositionBias):
            module.set_window_size(window_size, module.pretrained_window_size or module.window_size)
    return model


def copy_weights_from_hf_v2_layer(block, hf_layer):
    """Copy a transformers ``Swinv2Layer``'s weights into a ``SwinV2Block`` of the same sizes (its separate
    k and v projections go into the course's fused ``kv``), with ``homl16.weights.copy_weights``.
    The two then compute the same function. Returns ``block``."""
    attention, theirs = block.attn, hf_layer.attention.self
    pairs = [(attention.q_bias, theirs.query.bias), (attention.v_bias, theirs.value.bias),
             (attention.logit_scale, theirs.logit_scale.view(-1, 1))]
    for ours, hf in [(attention.q, theirs.query), (attention.kv, [theirs.key, theirs.value]),
                     (attention.proj, hf_layer.attention.output.dense),
                     (attention.position_bias.mlp[0], theirs.continuous_position_bias_mlp[0]),
                     (attention.position_bias.mlp[2], theirs.continuous_position_bias_mlp[2]),
                     (block.norm1, hf_layer.layernorm_before), (block.norm2, hf_layer.layernorm_after),
                     (block.mlp.fc1, hf_layer.intermediate.dense), (block.mlp.fc2, hf_layer.output.dense)]:
        pairs += linear_pairs(ours, hf)
    copy_weights(pairs, to="course", model_name="Swin v2 block")
    block.norm1.eps = block.norm2.eps = hf_layer.layernorm_before.eps
    return block
