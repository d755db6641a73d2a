"""Transformer building blocks shared by every model of the course.

Shapes use B = batch, N = query tokens, M = key/value tokens, D = embedding size,
H = heads. Attention runs through ``F.scaled_dot_product_attention`` unless the
caller asks for the attention weights, which the fused kernel does not return.
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_divisible, check_positive, check_rank


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention.

    ``forward(x, context=None, attn_mask=None, return_attention=False)``:
    ``x`` is (B, N, D); ``context`` (B, M, C) defaults to ``x`` (self-attention), with
    C = ``context_dim`` (default D: cross-attention to tokens of another width, e.g. a
    Perceiver's inputs or a Q-Former's image features, sets it);
    ``attn_mask`` is a boolean mask (True = may attend) or an additive float bias,
    broadcastable to (B, H, N, M). Returns (B, N, D), and with
    ``return_attention=True`` also the weights (B, H, N, M).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, context_dim=None):
        super().__init__()
        check_divisible("embed_dim", embed_dim, num_heads, "num_heads")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.kv = nn.Linear(context_dim or embed_dim, 2 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def split_heads(self, x):
        """(B, N, D) -> (B, H, N, D/H)"""
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def project_qkv(self, x, context):
        """q (B, N, D), k and v (B, M, D). Self-attention (``context is x``) runs the q and kv
        projections as one matrix product with their weights stacked, as timm's fused ``qkv`` does:
        one large product is faster on a GPU than two smaller ones."""
        if context is x:
            weight = torch.cat([self.q.weight, self.kv.weight])  # (3D, D)
            bias = None if self.q.bias is None else torch.cat([self.q.bias, self.kv.bias])
            return F.linear(x, weight, bias).chunk(3, dim=-1)
        return (self.q(x), *self.kv(context).chunk(2, dim=-1))

    def forward(self, x, context=None, attn_mask=None, return_attention=False):
        check_rank("x", x, 3, "(batch, tokens, embed_dim)")
        context = x if context is None else context
        check_rank("context", context, 3, "(batch, tokens, embed_dim)")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"x and context batch sizes differ: {x.shape[0]} vs {context.shape[0]}")
        for name, tokens, projection in (("x", x, self.q), ("context", context, self.kv)):
            if tokens.shape[2] != projection.in_features:
                raise ValueError(f"{name} must have {projection.in_features} features (embed_dim), "
                                 f"got {tokens.shape[2]}")
        q, k, v = self.project_qkv(x, context)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        dropout = self.dropout if self.training else 0.0
        if return_attention:
            weights = attention_weights(q, k, attn_mask)
            out = F.dropout(weights, dropout) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        out = self.proj(out.transpose(1, 2).flatten(2))
        return (out, weights) if return_attention else out


def attention_weights(q, k, attn_mask=None):
    """softmax(q k^T / sqrt(d) + mask): q (..., N, d), k (..., M, d) -> (..., N, M)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(dim=-1)


class MLP(nn.Module):
    """Position-wise feed-forward network: (..., D) -> (..., D), GELU in between."""

    def __init__(self, embed_dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if x.shape[-1] != self.fc1.in_features:
            raise ValueError(f"x must have embed_dim={self.fc1.in_features} features, "
                             f"got shape {tuple(x.shape)}")
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block (as in the ViT paper).

    x + Attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); (B, N, D) -> (B, N, D).
    With ``return_attention=True`` also returns the weights (B, H, N, N).
    """

    def __init__(self, embed_dim, num_heads, ff_dim, dropout=0.0, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dim, eps=eps)
        self.attn = MultiHeadAttention(embed_dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(embed_dim, eps=eps)
        self.mlp = MLP(embed_dim, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, attn_mask=None, return_attention=False):
        attended = self.attn(self.norm1(x), attn_mask=attn_mask, return_attention=return_attention)
        if return_attention:
            attended, weights = attended
        x = x + self.dropout(attended)
        x = x + self.mlp(self.norm2(x))
        return (x, weights) if return_attention else x


def causal_mask(length, device=None):
    """(L, L) boolean mask, True where token i may attend to token j (j <= i)."""
    check_positive("length", length, integer=True)
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()
