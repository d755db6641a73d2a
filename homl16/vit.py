"""Vision Transformer (ViT) from scratch: patch embedding, class token, pre-norm encoder.

The constructor signatures are the book's, so its code runs unchanged. Two fixes
to the book: the book passes ``in_channels`` and ``embed_dim`` to ``PatchEmbedding``
and to its ``nn.Conv2d`` in swapped order (the two swaps cancel, so it works by
accident); and the book's ``nn.TransformerEncoderLayer`` is post-norm, while the
ViT paper normalises *before* attention and MLP (pre-norm), which trains more
stably without warm-up tricks.
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_divisible, check_images, check_positive, check_rank
from homl16.transformer import EncoderBlock
from homl16.weights import copy_weights, linear_pairs


class PatchEmbedding(nn.Module):
    """Cut images into non-overlapping patches and project each one linearly.

    (B, in_channels, H, W) -> (B, N, embed_dim) with N = (H / patch_size) * (W / patch_size).
    A conv with kernel = stride = patch_size is exactly "flatten each patch, then Linear".
    A building block: the model that holds it (``ViT``, ``Swin``) checks the images.
    """

    def __init__(self, in_channels, embed_dim, patch_size=16):
        super().__init__()
        check_positive("patch_size", patch_size, integer=True)
        self.patch_size = patch_size
        self.conv2d = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, X):
        X = self.conv2d(X)  # (B, embed_dim, H / P, W / P)
        return X.flatten(2).transpose(1, 2)  # (B, N, embed_dim)


class ViT(nn.Module):
    """Vision Transformer classifier.

    forward: (B, in_channels, img_size, img_size) -> logits (B, num_classes), or the class token's
    final state (B, embed_dim) when ``num_classes=0`` (no head). ``pre_norm=True`` adds a LayerNorm
    on the embedded tokens before the encoder, as CLIP's image tower has.
    ``forward_features`` returns the normalised tokens (B, 1 + N, embed_dim), class token first;
    with ``return_attention=True`` both also return one (B, num_heads, 1 + N, 1 + N) map per layer.
    With ``interpolate_pos_encoding=True`` both accept other image sizes (the position embeddings
    are resized to the patch grid, as in transformers' ViT and in DINO).
    """

    def __init__(self, img_size=224, patch_size=16, in_channels=3, num_classes=1000,
                 embed_dim=768, depth=12, num_heads=12, ff_dim=3072, dropout=0.1, pre_norm=False):
        super().__init__()
        check_divisible("img_size", img_size, patch_size, "patch_size")
        # The sizes, kept for the conversions to transformers (hf_vit_config)
        self.img_size, self.patch_size, self.in_channels = img_size, patch_size, in_channels
        self.num_classes, self.embed_dim, self.depth = num_classes, embed_dim, depth
        self.num_heads, self.ff_dim, self.layer_norm_eps = num_heads, ff_dim, 1e-6
        self.patch_embed = PatchEmbedding(in_channels, embed_dim, patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, ff_dim, dropout, self.layer_norm_eps) for _ in range(depth))
        self.pre_norm = nn.LayerNorm(embed_dim, eps=1e-6) if pre_norm else nn.Identity()  # CLIP's has one
        self.norm = nn.LayerNorm(embed_dim, eps=self.layer_norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def forward_features(self, X, return_attention=False, interpolate_pos_encoding=False):
        if interpolate_pos_encoding:  # any size divisible by the patch size (e.g. DINO's small crops)
            check_images("X", X, self.in_channels)
            check_divisible("image height", X.shape[2], self.patch_size, "patch_size")
            check_divisible("image width", X.shape[3], self.patch_size, "patch_size")
        else:
            check_images("X", X, self.in_channels, self.img_size, self.img_size)
        Z = self.patch_embed(X)  # (B, N, D)
        pos_embed = self.pos_embed
        if interpolate_pos_encoding:
            rows, cols = X.shape[2] // self.patch_size, X.shape[3] // self.patch_size
            pos_embed = self.interpolate_pos_encoding(rows, cols)
        Z = torch.cat([self.prefix_tokens(len(Z)), Z], dim=1)  # (B, 1 + N, D)
        Z = self.pre_norm(self.dropout(Z + pos_embed))
        maps = []
        for block in self.blocks:
            Z = block(Z, return_attention=return_attention)
            if return_attention:
                Z, weights = Z
                maps.append(weights)
        Z = self.norm(Z)
        return (Z, maps) if return_attention else Z

    def forward_visible(self, X, keep):
        """The encoder on some of each image's patches only (MAE's visible patches, I-JEPA's context).

        X (B, C, H, W) and ``keep`` (B, K) patch indices -> normalised tokens (B, P + K, D): the P prefix
        tokens (the class token), then the kept patches in ``keep``'s order, each with its own position
        embedding. Keeping every patch in order computes ``forward_features(X)``.
        """
        check_images("X", X, self.in_channels, self.img_size, self.img_size)
        check_rank("keep", keep, 2, "(batch, kept patches)")
        prefix = self.prefix_tokens(len(X))
        num_prefix, num_patches = prefix.shape[1], self.pos_embed.shape[1] - prefix.shape[1]
        if len(keep) != len(X):
            raise ValueError(f"keep has {len(keep)} rows for {len(X)} images")
        if keep.numel() and (keep.min() < 0 or keep.max() >= num_patches):
            raise ValueError(f"keep must index the {num_patches} patches, got values in "
                             f"[{keep.min()}, {keep.max()}]")
        Z = self.patch_embed(X) + self.pos_embed[:, num_prefix:]  # (B, N, D)
        Z = Z.gather(1, keep[..., None].expand(-1, -1, Z.shape[2]))  # (B, K, D)
        Z = torch.cat([prefix + self.pos_embed[:, :num_prefix], Z], dim=1)
        Z = self.pre_norm(self.dropout(Z))
        for block in self.blocks:
            Z = block(Z)
        return self.norm(Z)

    def prefix_tokens(self, batch_size):
        """The learned tokens placed before the patch tokens: the class token, (B, 1, D)."""
        return self.cls_token.expand(batch_size, -1, -1)

    def interpolate_pos_encoding(self, rows, cols):
        """The position embeddings resized (bicubic) to a rows x cols patch grid: (1, 1 + rows * cols, D).

        Computes what transformers' ViT does with ``interpolate_pos_encoding=True``, so a model
        trained at one image size also runs on other sizes.
        """
        num_prefix = self.prefix_tokens(1).shape[1]
        side = int((self.pos_embed.shape[1] - num_prefix) ** 0.5)
        if (rows, cols) == (side, side):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :num_prefix], self.pos_embed[:, num_prefix:]
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        patch_pos = F.interpolate(patch_pos, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    def set_layer_norm_eps(self, eps):
        """Use ``eps`` in the encoder's LayerNorms (transformers' checkpoints say which one they use)."""
        self.layer_norm_eps = eps
        for norm in [self.norm, *(m for block in self.blocks for m in (block.norm1, block.norm2))]:
            norm.eps = eps

    def forward(self, X, return_attention=False, interpolate_pos_encoding=False):
        Z = self.forward_features(X, return_attention, interpolate_pos_encoding)
        if return_attention:
            Z, maps = Z
            return self.head(Z[:, 0]), maps
        return self.head(Z[:, 0])  # classify from the class token


def paired_parameters(vit, hf_model):
    """(course tensor, transformers tensor) pairs holding the same weights, in ``vit`` and a
    transformers ``ViTModel`` or ``ViTForImageClassification`` (whose classifier pairs with the head).

    The course's fused key/value projection pairs with transformers' separate ones, joined.
    """
    hf = getattr(hf_model, "vit", hf_model)
    if len(hf.layers) != vit.depth:
        raise ValueError(f"depth differs: {len(hf.layers)} hf layers vs {vit.depth} blocks")
    pairs = [(vit.cls_token, hf.embeddings.cls_token), (vit.pos_embed, hf.embeddings.position_embeddings),
             *linear_pairs(vit.patch_embed.conv2d, hf.embeddings.patch_embeddings.projection),
             *linear_pairs(vit.norm, hf.layernorm)]
    for block, layer in zip(vit.blocks, hf.layers):
        attention = layer.attention
        for ours, theirs in ((block.attn.q, attention.q_proj),
                             (block.attn.kv, [attention.k_proj, attention.v_proj]),  # fused vs separate
                             (block.attn.proj, attention.o_proj), (block.norm1, layer.layernorm_before),
                             (block.norm2, layer.layernorm_after), (block.mlp.fc1, layer.mlp.fc1),
                             (block.mlp.fc2, layer.mlp.fc2)):
            pairs += linear_pairs(ours, theirs)
    if hasattr(hf_model, "classifier") and vit.num_classes:
        pairs += linear_pairs(vit.head, hf_model.classifier)
    return pairs


def copy_weights_from_hf(vit, hf_model):
    """Copy a transformers ``ViTModel``'s (or ``ViTForImageClassification``'s) weights into ``vit``.

    The two then compute the same function: ``vit.forward_features(X)`` equals
    ``hf_model(X).last_hidden_state`` (and ``vit(X)`` the classifier's logits). The
    LayerNorm eps is taken from the config. Returns ``vit``.
    """
    copy_weights(paired_parameters(vit, hf_model), to="course", model_name="ViT")
    vit.set_layer_norm_eps(hf_model.config.layer_norm_eps)
    return vit


def hf_config_sizes(vit):
    """The sizes of the course's ``vit`` (or ``DeiT``) as transformers' ``ViTConfig``/``DeiTConfig``
    arguments, dropout off: a dict."""
    return dict(image_size=vit.img_size, patch_size=vit.patch_size, num_channels=vit.in_channels,
                hidden_size=vit.embed_dim, num_hidden_layers=vit.depth, num_attention_heads=vit.num_heads,
                intermediate_size=vit.ff_dim, layer_norm_eps=vit.layer_norm_eps,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def hf_vit_config(vit):
    """A transformers ``ViTConfig`` with the sizes of the course's ``vit`` (no dropout)."""
    from transformers import ViTConfig

    return ViTConfig(**hf_config_sizes(vit))


def to_hf_vit(vit):
    """A transformers ``ViTModel`` (no pooler, eval mode) that computes what ``vit.forward_features`` does."""
    from transformers import ViTModel

    hf_model = ViTModel(hf_vit_config(vit), add_pooling_layer=False).eval()
    copy_weights(paired_parameters(vit, hf_model), to="transformers", model_name="ViT")
    return hf_model


def small_hf_vit(image_size=64, patch_size=8, hidden_size=64, depth=4, num_heads=4, seed=0):
    """A small, randomly initialised (from ``seed``) transformers ``ViTModel`` and its image processor.

    The offline stand-in for ``google/vit-base-patch16-224-in21k`` (which is a 224-pixel,
    768-wide, 12-layer ViT): same classes, so the book's fine-tuning code runs unchanged.
    """
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=depth, num_attention_heads=num_heads,
                       intermediate_size=2 * hidden_size)
    processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with torch.random.fork_rng():  # the same weights for a seed, without touching the global RNG
        torch.manual_seed(seed)
        model = ViTModel(config, add_pooling_layer=False)
    return model, processor
