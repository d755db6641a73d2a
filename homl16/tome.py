"""Token merging (ToMe, Bolya et al., 2023) and token pruning in a trained course ViT, at run time.

Between the attention and the MLP of every block, ToMe merges the ``r`` most similar pairs of tokens
(bipartite soft matching on the attention keys), so each layer runs on ``r`` fewer tokens than the
one before, with no retraining. A merged token stands for several patches: its ``size`` is tracked,
merges average tokens weighted by size, and proportional attention adds log(size) to the attention
logits of every key, so a token of size s counts as s copies of itself. Token pruning instead drops
the ``r`` patch tokens the class token attends to least.

The functions run a ``homl16.vit.ViT``'s own modules (no copy of its weights). Shapes: B = batch,
T = tokens (class token first), D = embedding size, H = heads.
"""

import torch
import torch.nn.functional as F

from homl16.checks import check_images, check_rank
from homl16.transformer import attention_weights

MODES = ("merge", "prune")


def bipartite_soft_matching(metric, r, protect_class_token=True):
    """ToMe's matching: a function that merges the ``r`` most similar token pairs of a (B, T, C) tensor.

    The tokens are split alternately into sets A (even positions) and B (odd positions); each A token
    is matched to its most similar B token (cosine similarity of ``metric`` (B, T, C'), e.g. the keys),
    and the ``r`` A tokens with the most similar matches are added into their matches. The class
    token (position 0, in A) is never merged when ``protect_class_token``. The returned
    ``merge(x)`` maps x (B, T, C) to (B, T - r, C): the unmerged A tokens (in their order) then the B
    tokens, each B token the *sum* of itself and the A tokens merged into it (``merge_tokens``
    turns sums into size-weighted averages).
    """
    check_rank("metric", metric, 3, "(batch, tokens, channels)")
    num_a = (metric.shape[1] + 1) // 2
    mergeable = num_a - int(protect_class_token)
    if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= mergeable:
        raise ValueError(f"r must be an int in [0, {mergeable}] for {metric.shape[1]} tokens "
                         f"(at most half of them can merge), got {r!r}")
    if r == 0:
        return lambda x: x
    metric = F.normalize(metric, dim=-1)
    similarity = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, |A|, |B|)
    if protect_class_token:
        similarity[:, 0] = -torch.inf
    best, match = similarity.max(dim=-1)  # (B, |A|): each A token's best B token
    order = best.argsort(dim=-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values  # sorted: the class token stays first
    destination = match.gather(1, merged)  # (B, r)

    def merge(x):
        def rows(index):
            return index[..., None].expand(-1, -1, x.shape[-1])

        a, b = x[:, ::2], x[:, 1::2]
        b = b.scatter_add(1, rows(destination), a.gather(1, rows(merged)))
        return torch.cat([a.gather(1, rows(kept)), b], dim=1)

    return merge


def merge_tokens(x, size, merge):
    """Merge tokens x (B, T, D) of sizes ``size`` (B, T, 1) with a ``bipartite_soft_matching``
    function: each merged token is the size-weighted average of its parts, its size their total.
    Returns (x (B, T - r, D), size (B, T - r, 1))."""
    new_size = merge(size)
    return merge(x * size) / new_size, new_size


def class_attention_keep(weights, r):
    """Indices (B, T - r) of the tokens token pruning keeps: the class token, then the T - 1 - r patch
    tokens the class token attends to most (mean over heads of ``weights`` (B, H, T, T)), in order."""
    scores = weights[:, :, 0, 1:].mean(dim=1)  # (B, T - 1)
    if not 0 <= r <= scores.shape[1]:
        raise ValueError(f"r must be in [0, {scores.shape[1]}] to prune {scores.shape[1]} patch tokens, "
                         f"got {r}")
    top = scores.topk(scores.shape[1] - r, dim=-1).indices.sort(dim=-1).values + 1
    return torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)


def proportional_attention(q, k, v, size, return_weights=False):
    """Attention in which a key of size s counts s times: softmax(q k^T / sqrt(d) + log s) v.

    q, k, v (B, H, T, d), size (B, T, 1) -> (B, H, T, d), and with ``return_weights`` also the weights
    (B, H, T, T). With every size 1 this is plain attention.
    """
    bias = size.log().transpose(1, 2)[:, None]  # (B, 1, 1, T), added to every query's logits
    if return_weights:
        weights = attention_weights(q, k, bias)
        return weights @ v, weights
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def reduced_block(block, x, size, r, mode="merge", proportional=True):
    """One ``homl16.transformer.EncoderBlock`` of a trained model with ``r`` tokens merged or pruned
    between its attention and its MLP, computed with the block's own modules.

    x (B, T, D), size (B, T, 1) -> (x (B, T - r, D), size (B, T - r, 1)). The queries, keys and values
    are computed once with the block's weights; the keys averaged over heads are ToMe's metric.
    """
    attn = block.attn
    h = block.norm1(x)
    q, k, v = (attn.split_heads(t) for t in attn.project_qkv(h, h))
    pruning = mode == "prune" and r > 0
    out = proportional_attention(q, k, v, size if proportional else torch.ones_like(size), pruning)
    if pruning:
        out, weights = out
    x = x + block.dropout(attn.proj(out.transpose(1, 2).flatten(2)))
    if mode == "merge":
        x, size = merge_tokens(x, size, bipartite_soft_matching(k.mean(dim=1), r))
    elif pruning:
        keep = class_attention_keep(weights, r)[..., None]
        x, size = x.gather(1, keep.expand(-1, -1, x.shape[-1])), size.gather(1, keep)
    return x + block.mlp(block.norm2(x)), size


def layer_schedule(r, depth):
    """``r`` as one count per layer: an int (the same in every layer) or a list of ``depth`` ints."""
    schedule = [r] * depth if isinstance(r, int) and not isinstance(r, bool) else list(r)
    if len(schedule) != depth or any(isinstance(n, bool) or not isinstance(n, int) or n < 0
                                     for n in schedule):
        raise ValueError(f"r must be a non-negative int or a list of {depth} of them (one per layer), "
                         f"got {r!r}")
    return schedule


def max_r(num_tokens, depth):
    """The largest r that ToMe can merge in each of ``depth`` layers from ``num_tokens`` tokens
    (class token included): each layer merges at most half its tokens, the class token never."""
    r = 0
    while all((num_tokens - (r + 1) * layer + 1) // 2 - 1 >= r + 1 for layer in range(depth)):
        r += 1
    return r


def tome_forward_features(vit, X, r, mode="merge", proportional=True):
    """A course ``ViT``'s ``forward_features`` with ``r`` tokens merged (``mode="merge"``, ToMe) or pruned
    (``mode="prune"``) in every block; ``r`` is an int or one int per layer.

    X (B, C, H, W) -> (tokens (B, T_L, D), normalised, class token first; sizes (B, T_L, 1), the number
    of patches (or class token) each token stands for; the token count after each layer, a list).
    With r = 0 the tokens equal ``vit.forward_features(X)``. Run the model in eval mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    schedule = layer_schedule(r, len(vit.blocks))
    if vit.prefix_tokens(1).shape[1] != 1:
        raise ValueError("ToMe here protects one class token; this model has other prefix tokens")
    check_images("X", X, vit.in_channels, vit.img_size, vit.img_size)
    Z = vit.patch_embed(X)
    Z = torch.cat([vit.prefix_tokens(len(Z)), Z], dim=1)
    Z = vit.pre_norm(vit.dropout(Z + vit.pos_embed))  # (B, 1 + N, D)
    size = Z.new_ones(*Z.shape[:2], 1)
    counts = []
    for block, layer_r in zip(vit.blocks, schedule):
        Z, size = reduced_block(block, Z, size, layer_r, mode, proportional)
        counts.append(Z.shape[1])
    return vit.norm(Z), size, counts


def tome_forward(vit, X, r, mode="merge", proportional=True):
    """A course ``ViT``'s logits (B, num_classes) with ``r`` tokens merged or pruned per layer
    (see ``tome_forward_features``); with r = 0 they equal ``vit(X)``."""
    Z, _, _ = tome_forward_features(vit, X, r, mode, proportional)
    return vit.head(Z[:, 0])
