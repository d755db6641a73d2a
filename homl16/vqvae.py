"""A discrete image tokenizer: a small VQ-VAE (DALL·E's stage 1 in the course).

A 32x32 image becomes an 8x8 grid of codebook ids, and back. DALL·E's own tokenizer is a discrete
VAE trained with the Gumbel-softmax relaxation; the VQ-VAE's nearest-code lookup with a
straight-through gradient and a commitment loss does the same job with fewer knobs (no temperature
schedule, no KL weight), which suits a one-minute CPU run. Images are in [0, 1], as every
``homl16.data`` adapter returns them.

Shapes: B = batch, S = image size, G = grid size (S / 4), D = code size, K = codebook size.
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_ids, check_images, check_positive, check_rank, check_tensor
from homl16.runtime import get_device
from homl16.train import adamw_one_cycle, steps_per_epoch, train


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in a learned codebook of K vectors of size D.

    ``forward(z)``: z (B, D, G, G) -> (z_q (B, D, G, G), ids (B, G, G), loss). ``z_q`` equals the
    nearest codes in the forward pass, but its gradient flows straight through to ``z`` (the
    straight-through estimator); ``loss`` is the codebook loss ||sg[z] - e||^2 plus ``beta`` times
    the commitment loss ||z - sg[e]||^2, which keeps the encoder close to the codes it picks.
    """

    def __init__(self, num_codes=64, code_dim=16, beta=0.25, normalize=False):
        super().__init__()
        check_positive("num_codes", num_codes, integer=True)
        check_positive("code_dim", code_dim, integer=True)
        self.num_codes, self.code_dim, self.beta, self.normalize = num_codes, code_dim, beta, normalize
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.codebook.weight.data.uniform_(-1 / num_codes, 1 / num_codes)

    def lookup(self, ids):
        """The codes (..., D) of ids (...)."""
        codes = self.codebook(ids)
        return F.normalize(codes, dim=-1) if self.normalize else codes

    def nearest(self, z):
        """Ids (N,) of the nearest codes to vectors z (N, D)."""
        return torch.cdist(z, self.lookup(torch.arange(self.num_codes, device=z.device))).argmin(dim=1)

    def forward(self, z):
        check_rank("z", z, 4, "(batch, code_dim, grid, grid)")
        if z.shape[1] != self.code_dim:
            raise ValueError(f"z must have {self.code_dim} channels (the code size), got {z.shape[1]}")
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*G*G, D)
        if self.normalize:
            flat = F.normalize(flat, dim=1)
        ids = self.nearest(flat)
        quantized = self.lookup(ids)
        loss = F.mse_loss(quantized, flat.detach()) + self.beta * F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()  # straight-through: codes forward, identity backward
        z_q = quantized.view(B, H, W, D).permute(0, 3, 1, 2)
        return z_q, ids.view(B, H, W), loss

    @torch.no_grad()
    def restart_dead_codes(self, z, counts):
        """Move every code with ``counts == 0`` onto a random encoder output among z (N, D);
        returns how many codes were restarted. Keeps the whole codebook in use."""
        dead = (counts == 0).nonzero().flatten()
        if len(dead):
            picks = torch.randint(len(z), (len(dead),), device=z.device)
            self.codebook.weight.data[dead] = z[picks] + 0.01 * torch.randn_like(z[picks])
        return len(dead)


def residual_block(channels):
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(channels, channels, 1))


class Residual(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block = residual_block(channels)

    def forward(self, x):
        return x + self.block(x)


class VQVAE(nn.Module):
    """A small VQ-VAE: images (B, 3, S, S) in [0, 1] <-> code ids (B, S/4, S/4).

    Encoder: pixels centred to [-1, 1], two stride-2 convs and a residual block -> (B, D, G, G);
    ``VectorQuantizer``; decoder: a residual block and two stride-2 transposed convs back to
    (B, 3, S, S), mapped back to [0, 1].
    Each token sees a neighbourhood of its 4x4 patch, so its code also says what lies around it
    (a background tile next to an object gets its own codes): this makes the tokens more
    informative for the transformer than codes of isolated patches, which measured worse.
    ``forward(X)`` -> (reconstruction, ids, vq_loss); ``encode(X)`` -> ids; ``decode(ids)`` -> images.
    """

    def __init__(self, num_codes=64, code_dim=16, width=64, beta=0.25, normalize=False):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), Residual(width), nn.ReLU(),
            nn.Conv2d(width, code_dim, 1))
        self.quantizer = VectorQuantizer(num_codes, code_dim, beta, normalize)
        self.decoder = nn.Sequential(
            nn.Conv2d(code_dim, width, 3, padding=1), Residual(width), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1))

    @property
    def num_codes(self):
        return self.quantizer.num_codes

    def encode_latents(self, X):
        """Encoder outputs (B, D, G, G) of images X (B, 3, S, S) in [0, 1], centred to [-1, 1] first."""
        return self.encoder((X - 0.5) / 0.5)

    def decode_latents(self, z_q):
        """Images (B, 3, S, S), about [0, 1] (not clamped), of codes z_q (B, D, G, G)."""
        return self.decoder(z_q) * 0.5 + 0.5

    def forward(self, X):
        check_images("X", X, 3)
        z_q, ids, vq_loss = self.quantizer(self.encode_latents(X))
        return self.decode_latents(z_q), ids, vq_loss

    @torch.no_grad()
    def encode(self, X, batch_size=512):
        """Code ids (B, G, G) of images X (B, 3, S, S)."""
        check_images("X", X, 3)
        check_positive("batch_size", batch_size, integer=True)
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([self.quantizer(self.encode_latents(X[i:i + batch_size].to(device)))[1].cpu()
                          for i in range(0, len(X), batch_size)])

    @torch.no_grad()
    def decode(self, ids):
        """Images (B, 3, S, S), clamped to [0, 1], of code ids (B, G, G) or (B, G*G)."""
        check_tensor("ids", ids)
        if ids.dim() == 2:
            side = int(round(ids.shape[1] ** 0.5))
            if side * side != ids.shape[1]:
                raise ValueError(f"ids of shape {tuple(ids.shape)} is not a square grid of tokens")
            ids = ids.view(len(ids), side, side)
        check_rank("ids", ids, 3, "(batch, grid, grid)")
        if ids.min() < 0 or ids.max() >= self.num_codes:
            raise ValueError(f"ids must be in [0, {self.num_codes}), got [{ids.min()}, {ids.max()}]")
        self.eval()
        device = next(self.parameters()).device
        z_q = self.quantizer.lookup(ids.to(device)).permute(0, 3, 1, 2)
        return self.decode_latents(z_q).clamp(0, 1).cpu()


def train_vqvae(model, X, epochs, batch_size=64, lr=2e-3, restart_every=20, device=None, seed=42,
                desc="VQ-VAE"):
    """Train a ``VQVAE`` on images X (N, 3, S, S) in [0, 1]: MSE reconstruction (on the network's
    [-1, 1] range) + codebook and commitment losses, with ``homl16.train.train``.

    Adam (AdamW without weight decay) with a one-cycle schedule; every ``restart_every`` steps, the
    codes no batch used in that window are restarted on random encoder outputs
    (``VectorQuantizer.restart_dead_codes``), during the first 80% of training, as VQ-VAEs otherwise
    tend to use only a few of their codes. Returns a history dict: per epoch ``epoch``, ``loss``,
    ``reconstruction_mse`` (pixels in [0, 1]), ``codebook_usage`` (share of codes the epoch's batches
    used), ``seconds``; ``restarted`` (codes restarted in total).
    """
    check_positive("epochs", epochs, integer=True)
    check_images("X", X, 3)
    device = device or get_device()
    model.to(device)
    optimizer, scheduler = adamw_one_cycle(model, lr, len(X), batch_size, epochs, weight_decay=0.0)
    total_steps = epochs * steps_per_epoch(len(X), batch_size)
    counts = torch.zeros(model.num_codes, device=device)  # code uses since the last restart
    used = torch.zeros(model.num_codes, dtype=torch.bool, device=device)  # code used this epoch
    state = {"restarted": 0}

    def batch_loss(batch):
        X_batch = X[batch].to(device)
        z = model.encode_latents(X_batch)
        z_q, ids, vq_loss = model.quantizer(z)
        mse = F.mse_loss(model.decode_latents(z_q), X_batch)
        counts.add_(torch.bincount(ids.flatten(), minlength=model.num_codes))
        used.logical_or_(counts > 0)
        state["z"] = z.detach().permute(0, 2, 3, 1).flatten(0, 2)  # (B*G*G, D), for restarts
        # 4 * mse is the error on the [-1, 1] range the network works in, the scale beta is set for
        return {"loss": 4 * mse + vq_loss, "reconstruction_mse": mse}

    def restart_dead_codes(step):
        if restart_every and step % restart_every == 0 and step < 0.8 * total_steps:
            state["restarted"] += model.quantizer.restart_dead_codes(state["z"], counts)
            counts.zero_()

    def epoch_usage():
        share = used.float().mean().item()
        used.zero_()
        return {"codebook_usage": share}

    history = train(model, batch_loss, len(X), optimizer, epochs=epochs, batch_size=batch_size,
                    scheduler=scheduler, after_step=restart_dead_codes, evaluate=epoch_usage, seed=seed,
                    desc=desc)
    history = {k: v for k, v in history.items() if not k.startswith("step_")}
    return {**history, "restarted": state["restarted"]}


def codebook_usage(ids, num_codes):
    """(share of the ``num_codes`` codes that occur in ``ids``, perplexity of the code distribution).

    The perplexity exp(entropy) is the number of equally used codes with the same entropy: it is
    ``num_codes`` when every code is used equally often, and 1 when a single code is."""
    check_tensor("ids", ids)
    if ids.numel() == 0:
        raise ValueError("ids is empty")
    check_ids("ids", ids, num_codes)
    counts = torch.bincount(ids.flatten(), minlength=num_codes).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return (counts > 0).float().mean().item(), entropy.exp().item()
