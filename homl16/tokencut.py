"""TokenCut (Wang et al., 2022): an object mask from a self-supervised ViT's patch features by normalized cut.

The patches are the nodes of a graph whose edges say which patches look alike (cosine similarity of
their features above ``tau``). The normalized cut splits that graph in two groups that are each
tightly connected and loosely connected to each other; its relaxed solution is the eigenvector of
the second-smallest eigenvalue of the generalized problem (D - W) x = lambda D x. The group that
holds the eigenvector's largest entry (in absolute value) is the object. The paper then keeps only
the connected component of the mask around that patch; on the small grids used here we keep the
whole group.

Shapes: B = images (any leading dimensions), N = patches, D = feature size.
"""

import torch
import torch.nn.functional as F

from homl16.checks import check_probability, check_rank, check_tensor


def check_features(features):
    check_tensor("features", features)
    if features.dim() < 2 or features.shape[-2] < 2:
        raise ValueError(f"features must be (..., patches, dims) with at least 2 patches, "
                         f"got {tuple(features.shape)}")


def affinity_graph(features, tau=0.2, eps=1e-5):
    """TokenCut's graph: W_ij = 1 if cos(f_i, f_j) > tau else eps. (..., N, D) -> (..., N, N) float64.

    The small ``eps`` instead of 0 keeps the graph connected, so every degree is positive and the
    normalized cut is defined.
    """
    check_features(features)
    check_probability("eps", eps)
    if eps == 0:
        raise ValueError("eps must be > 0 (it keeps the graph connected)")
    features = F.normalize(features.double(), dim=-1)
    cosine = features @ features.transpose(-2, -1)
    return torch.where(cosine > tau, 1.0, eps).to(torch.float64)


def second_smallest_eigenvector(W):
    """The eigenvector x of the second-smallest eigenvalue of (D - W) x = lambda D x, D = diag(W 1).

    W (..., N, N) symmetric with positive degrees -> x (..., N), up to sign and scale. Solved as the
    symmetric problem D^-1/2 (D - W) D^-1/2 y = lambda y (one batched ``torch.linalg.eigh``), then
    x = D^-1/2 y.
    """
    check_tensor("W", W)
    if W.dim() < 2 or W.shape[-1] != W.shape[-2] or W.shape[-1] < 2:
        raise ValueError(f"W must be (..., N, N) with N >= 2, got {tuple(W.shape)}")
    degree = W.sum(-1)
    if (degree <= 0).any():
        raise ValueError("every node of W needs a positive degree")
    inv_sqrt = degree.rsqrt()
    laplacian = torch.diag_embed(degree) - W
    normalized = inv_sqrt.unsqueeze(-1) * laplacian * inv_sqrt.unsqueeze(-2)
    _, vectors = torch.linalg.eigh(normalized)  # eigenvalues in ascending order
    return inv_sqrt * vectors[..., 1]


def foreground(eigenvector):
    """The object side of the cut: (..., N) -> (..., N) bool.

    Patches above the eigenvector's mean form one side; the object is the side holding the entry of
    largest absolute value (the paper's rule), so the answer does not depend on the sign.
    """
    check_tensor("eigenvector", eigenvector)
    above = eigenvector > eigenvector.mean(-1, keepdim=True)
    seed = eigenvector.abs().argmax(-1, keepdim=True)
    return above == above.gather(-1, seed)


def tokencut(features, grid_size, tau=0.2, eps=1e-5):
    """TokenCut's object mask on the patch grid: features (..., rows * cols, D) -> (..., rows, cols) bool.

    When the features share one dominant direction, every cosine exceeds ``tau``, every edge weighs 1
    and the second eigenvalue is repeated: the cut is then arbitrary. Subtracting each image's mean
    feature first avoids it (a small ViT's keys need it; DINO's full-size ones do not).
    """
    check_features(features)
    rows, cols = grid_size
    if rows * cols != features.shape[-2]:
        raise ValueError(f"features has {features.shape[-2]} patches but grid_size {tuple(grid_size)} "
                         f"holds {rows * cols}")
    mask = foreground(second_smallest_eigenvector(affinity_graph(features, tau, eps)))
    return mask.unflatten(-1, (rows, cols))


@torch.no_grad()
def patch_keys(vit, X):
    """The last block's attention keys of every patch (all heads concatenated), the features TokenCut
    uses: images (B, C, H, W) -> (B, N, D) on the CPU, the class token (and any other prefix token)
    dropped. Runs ``vit`` where it is."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    attention = vit.blocks[-1].attn
    captured = {}
    hook = attention.register_forward_pre_hook(lambda _, args: captured.update(tokens=args[0]))
    try:
        vit.eval()(X.to(vit.cls_token.device))
    finally:
        hook.remove()
    keys, _ = attention.kv(captured["tokens"]).chunk(2, dim=-1)  # (B, prefix + N, D)
    return keys[:, vit.prefix_tokens(1).shape[1]:].cpu()


def upsample_mask(mask, size):
    """Spread each patch's value over its pixels: (B, rows, cols) -> (B, H, W), H, W multiples of the grid."""
    check_rank("mask", mask, 3, "(batch, rows, cols)")
    height, width = size
    rows, cols = mask.shape[1:]
    if height % rows or width % cols:
        raise ValueError(f"size {tuple(size)} must be a multiple of the grid {rows}x{cols}")
    return mask.repeat_interleave(height // rows, 1).repeat_interleave(width // cols, 2)


def mask_iou(predicted, target):
    """Intersection over union of binary masks, image by image: (B, H, W) x 2 -> (B,). Two empty
    masks agree perfectly (IoU 1)."""
    check_rank("predicted", predicted, 3, "(batch, height, width)")
    check_tensor("target", target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} differ")
    predicted, target = predicted.bool(), target.bool()
    intersection = (predicted & target).sum((1, 2)).double()
    union = (predicted | target).sum((1, 2)).double()
    return torch.where(union > 0, intersection / union.clamp(min=1), 1.0)


def attention_mass_mask(attention, mass=0.6):
    """DINO's mask from an attention map: the fewest patches whose attention holds ``mass`` of the total.

    attention (..., rows, cols), non-negative -> (..., rows, cols) bool.
    """
    check_tensor("attention", attention)
    check_probability("mass", mass)
    if attention.dim() < 2 or (attention < 0).any():
        raise ValueError(f"attention must be a non-negative (..., rows, cols) map, "
                         f"got {tuple(attention.shape)}")
    flat = attention.flatten(-2)
    values, order = flat.sort(-1, descending=True)
    values = values / values.sum(-1, keepdim=True)
    before = values.cumsum(-1) - values  # the mass of the larger patches: keep while it is short of `mass`
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter(-1, order, before < mass)
    return keep.view(attention.shape)
