"""MAE: masked autoencoders (He et al., 2021), around the course's ViT.

Most patches of each image are dropped at random; the ViT encoder runs on the visible ones only
(plus its class token), which is where the saving comes from; a light decoder gets the encoded
visible tokens back in place, a learned mask token everywhere else, and predicts every patch's
pixels. The loss counts the masked patches only: the visible ones would be copied.

Shapes: B = batch, N = patches per image, K = visible patches, D = encoder width,
d = decoder width, P = patch size, C = channels.
"""

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from homl16.checks import check_images, check_positive, check_rank
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, train
from homl16.transformer import EncoderBlock


def num_visible(num_patches, mask_ratio):
    """How many of ``num_patches`` patches stay visible at ``mask_ratio`` (MAE's int(N (1 - ratio)))."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}")
    return keep


def random_masking(batch_size, num_patches, mask_ratio=0.75, generator=None, device=None):
    """A random subset of patches to keep, drawn per image, as MAE draws it (shuffle, keep the first K).

    Returns (keep (B, K) indices of the visible patches, mask (B, N) with 1 = masked and 0 = visible,
    restore (B, N) the order that puts [visible..., masked...] tokens back in patch order).
    """
    check_positive("batch_size", batch_size, integer=True)
    check_positive("num_patches", num_patches, integer=True)
    keep_count = num_visible(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, generator=generator).to(device)
    shuffle = noise.argsort(dim=1)  # patch ids, the visible ones first
    restore = shuffle.argsort(dim=1)  # the inverse permutation
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep_count] = 0
    return shuffle[:, :keep_count], mask.gather(1, restore), restore


def patchify(X, patch_size):
    """Images (B, C, H, W) -> patches (B, N, P * P * C), row-major like the ViT's patch tokens."""
    check_rank("X", X, 4, "(batch, channels, height, width)")
    B, C, H, W = X.shape
    if H % patch_size or W % patch_size:
        raise ValueError(f"image size {H}x{W} is not divisible by patch_size={patch_size}")
    X = X.reshape(B, C, H // patch_size, patch_size, W // patch_size, patch_size)
    return X.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch_size) * (W // patch_size), -1)


def unpatchify(patches, patch_size, channels):
    """Patches (B, N, P * P * C) of a square grid -> images (B, C, H, W); the inverse of ``patchify``."""
    check_rank("patches", patches, 3, "(batch, patches, pixels)")
    B, N, _ = patches.shape
    side = int(round(N ** 0.5))
    if side * side != N or patches.shape[2] != patch_size * patch_size * channels:
        raise ValueError(f"patches {tuple(patches.shape)} are not a square grid of {patch_size}x{patch_size}"
                         f"x{channels} patches")
    X = patches.reshape(B, side, side, patch_size, patch_size, channels)
    return X.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, side * patch_size, side * patch_size)


def normalise_patches(patches, eps=1e-6):
    """Each patch (..., pixels) shifted and scaled to mean 0, variance 1: MAE's normalised-pixel target."""
    mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_patch_loss(pred, target, mask):
    """Mean squared error over the masked patches only: pred, target (B, N, pixels), mask (B, N),
    1 = masked."""
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} do not match")
    if mask.sum() == 0:
        raise ValueError("no patch is masked: the loss would be 0 / 0")
    per_patch = ((pred - target) ** 2).mean(-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()


class MAE(nn.Module):
    """A masked autoencoder around a course ``ViT`` (built with ``num_classes=0``).

    ``encode(X, mask_ratio)`` -> (tokens (B, 1 + K, D): class token, then the visible patches in
    ``keep`` order; keep, mask, restore from ``random_masking``). ``decode(tokens, restore)`` ->
    pixels (B, N, P * P * C) predicted for every patch. ``forward(X)`` -> (loss, pred, mask).
    With ``norm_pix_loss`` the targets are ``normalise_patches`` of the pixels, as in the paper (on the
    small MNIST run, raw pixels gave the better probe, so they are the default here).
    The decoder is narrow and shallow (``decoder_dim``, ``decoder_depth``) with its own learned
    position embeddings (the paper's are fixed sine-cosine ones).
    """

    def __init__(self, vit, decoder_dim=32, decoder_depth=1, decoder_heads=4, mask_ratio=0.75,
                 norm_pix_loss=False):
        super().__init__()
        if vit.num_classes:
            raise ValueError("MAE needs a ViT without a head (num_classes=0)")
        num_visible(vit.pos_embed.shape[1] - 1, mask_ratio)
        check_positive("decoder_depth", decoder_depth, integer=True)
        self.encoder, self.mask_ratio, self.norm_pix_loss = vit, mask_ratio, norm_pix_loss
        num_patches = vit.pos_embed.shape[1] - 1
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, 1 + num_patches, decoder_dim) * 0.02)
        self.decoder_blocks = nn.ModuleList(EncoderBlock(decoder_dim, decoder_heads, 2 * decoder_dim)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, vit.patch_size ** 2 * vit.in_channels)

    def encode(self, X, mask_ratio=None, generator=None):
        vit = self.encoder
        check_images("X", X, vit.in_channels, vit.img_size, vit.img_size)
        mask_ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        num_patches = vit.pos_embed.shape[1] - 1
        keep, mask, restore = random_masking(len(X), num_patches, mask_ratio, generator, X.device)
        return vit.forward_visible(X, keep), keep, mask, restore  # the encoder never sees the masked patches

    def decode(self, tokens, restore):
        Z = self.decoder_embed(tokens)  # (B, 1 + K, d)
        B, N = restore.shape
        mask_tokens = self.mask_token.expand(B, N - (Z.shape[1] - 1), -1)
        patches = torch.cat([Z[:, 1:], mask_tokens], dim=1)  # (B, N, d), visible first
        patches = patches.gather(1, restore[..., None].expand(-1, -1, Z.shape[2]))  # patch order
        Z = torch.cat([Z[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            Z = block(Z)
        return self.decoder_pred(self.decoder_norm(Z))[:, 1:]  # (B, N, P * P * C), class token dropped

    def targets(self, X):
        """The patches (B, N, P * P * C) the decoder learns to predict: pixels, or normalised pixels."""
        patches = patchify(X, self.encoder.patch_size)
        return normalise_patches(patches) if self.norm_pix_loss else patches

    def forward(self, X, mask_ratio=None, generator=None):
        tokens, _, mask, restore = self.encode(X, mask_ratio, generator)
        pred = self.decode(tokens, restore)
        return masked_patch_loss(pred, self.targets(X), mask), pred, mask


@torch.no_grad()
def reconstruct(mae, X, mask_ratio=None, generator=None):
    """(masked images, reconstructions) of images X (B, C, H, W), both (B, C, H, W).

    Masked images show the visible patches and zeros elsewhere (the data's mean, for standardised
    pixels); reconstructions show the visible patches pasted back over the prediction. A model trained
    on normalised pixels predicts each patch's shape, not its brightness: its predicted patches are
    mapped back with the true patch's mean and standard deviation (two numbers per patch the model was
    not given, so such a figure flatters it a little).
    """
    mae.eval()
    _, pred, mask = mae(X, mask_ratio, generator)
    patches = patchify(X, mae.encoder.patch_size)
    if mae.norm_pix_loss:
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(-1, keepdim=True)
    mask = mask[..., None]
    size, channels = mae.encoder.patch_size, mae.encoder.in_channels
    return (unpatchify(patches * (1 - mask), size, channels),
            unpatchify(patches * (1 - mask) + pred * mask, size, channels))


def encoder_flops(mae, X, mask_ratio):
    """FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` while ``mae``'s encoder runs on
    the visible patches of X at ``mask_ratio`` (0: every patch).

    Attention runs on PyTorch's math kernel here: the counter has no formula for the fused CPU kernel
    and would leave out the attention products (the part that grows with the square of the tokens).
    """
    mae.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        mae.encode(X, mask_ratio)
    return counter.get_total_flops()


def encoder_flop_ratio(mae, X, mask_ratio=None):
    """The encoder's FLOPs on the visible patches over its FLOPs on all patches, counted on the running
    model."""
    mask_ratio = mae.mask_ratio if mask_ratio is None else mask_ratio
    return encoder_flops(mae, X, mask_ratio) / encoder_flops(mae, X, 0.0)


def train_mae(mae, X, epochs=8, batch_size=128, lr=1e-3, device=None, seed=42, desc="MAE"):
    """Pretrain ``mae`` on images X (N, C, H, W) with ``homl16.train.train`` and AdamW one-cycle;
    a fresh random mask per image and step. Returns the history (per-epoch "loss", "seconds")."""
    check_images("X", X, mae.encoder.in_channels)
    device = device or get_device()
    mae.to(device)
    optimizer, scheduler = adamw_one_cycle(mae, lr, len(X), batch_size, epochs)
    history = train(mae, lambda batch: mae(X[batch].to(device))[0], len(X), optimizer, epochs=epochs,
                    batch_size=batch_size, scheduler=scheduler, seed=seed, desc=desc)
    return {k: v for k, v in history.items() if not k.startswith("step_")}


def save_encoder(mae, path):
    """Save the pretrained encoder's ``state_dict`` to ``path`` (a course ``ViT`` with the same sizes
    loads it with ``load_state_dict``); returns ``path``."""
    torch.save(mae.encoder.state_dict(), path)
    return path
