# %%
import random
import time

import matplotlib.pyplot as plt
import torch

import homl16
from homl16.data.digits import mnist_tensors
from homl16.plot import show_images
from homl16.probe import probe_accuracy
from homl16.vit import ViT

device = homl16.setup_notebook(seed=42)
X_train, y_train, X_test, y_test = mnist_tensors()


def small_vit():
    """The encoder every method of this notebook pretrains, and the random-init baseline."""
    return ViT(img_size=28, patch_size=4, in_channels=1, num_classes=0, embed_dim=64, depth=4,
               num_heads=4, ff_dim=128, dropout=0.0)


torch.manual_seed(0)
random_init_probe = probe_accuracy(small_vit(), X_train, y_train, X_test, y_test)
print(f"random-init ViT, linear probe: {random_init_probe:.3f}")

# %% [markdown]
# ## MAE: hide most of the image, rebuild it
#
# Masked autoencoders (He et al., 2021) also learn by filling in hidden patches, but they predict the
# raw pixels, with no tokenizer. The design is asymmetric: the encoder (our ViT) sees only the
# *visible* patches, 25% of them, and a light decoder gets the encoded visible tokens back in their
# places, a shared learned *mask token* in every other place, and predicts the pixels of every patch.
# The loss counts only the masked patches: the visible ones would just be copied. Since three patches
# in four never enter the encoder, pretraining costs a fraction of a full forward pass, which is what
# let MAE pretrain large ViTs on large datasets.
#
# Masking is a random permutation per image: keep its first 12 of the 49 patches, and keep the
# inverse permutation to put the tokens back in order for the decoder.

# %%
from homl16 import mae as M

homl16.show_source(M.random_masking, M.MAE.encode, M.MAE.decode)

# %%
keep, mask, restore = M.random_masking(8, 49, 0.75, torch.Generator().manual_seed(0))
masked_digits = M.unpatchify(M.patchify(X_test[:8], 4) * (1 - mask[..., None]), 4, 1)
show_images(masked_digits, titles=[f"{len(k)} of 49 kept" for k in keep]);

# %% [markdown]
# How much does the encoder save? We count the floating-point operations of the running encoder with
# `torch.utils.flop_counter.FlopCounterMode`, once on the visible patches and once on all of them.
# The linear layers scale with the number of tokens (13 of 50 with the class token: 0.26), attention's
# score and mixing products with its square (0.07), and the patch embedding runs on every patch
# either way; the ratio lands a little below a quarter.

# %%
torch.manual_seed(0)
mae = M.MAE(small_vit(), decoder_dim=32, decoder_depth=1, mask_ratio=0.75)
flop_ratio = M.encoder_flop_ratio(mae, X_test[:8])
print(f"encoder FLOPs, visible patches / all patches: {flop_ratio:.3f}")

# %% [markdown]
# Pretraining: 8 epochs in batches of 128, a fresh mask for each image at each step. The paper
# predicts per-patch normalised pixels; on these digits the raw pixels gave the better probe, so we use
# them (`norm_pix_loss=False`), with a peak learning rate of 3e-3.

# %%
start = time.perf_counter()
mae_history = M.train_mae(mae, X_train, epochs=8, batch_size=128, lr=3e-3, device=device)
mae_seconds = time.perf_counter() - start
print(f"MAE pretraining: {mae_seconds:.1f} s, masked-patch MSE {mae_history['loss'][0]:.3f} -> "
      f"{mae_history['loss'][-1]:.3f}")

# %%
masked, rebuilt = M.reconstruct(mae.cpu(), X_test[:8], generator=torch.Generator().manual_seed(1))
show_images([*X_test[:8], *masked, *rebuilt], ncols=8,
            titles=["original"] * 8 + ["masked"] * 8 + ["MAE"] * 8);

# %% [markdown]
# The squared error rewards the average of the plausible strokes, so the filled-in patches come out
# blurry: compare them with the originals above. We keep the pretrained encoder on disk: the next
# notebook fine-tunes copies of it.

# %%
mae_encoder_path = M.save_encoder(mae, homl16.cache_dir() / "08a_mae_encoder.pt")
mae_probe = probe_accuracy(mae.encoder, X_train, y_train, X_test, y_test)
print(f"MAE linear probe: {mae_probe:.3f} (random init: {random_init_probe:.3f})")

# %% [markdown]
# ## BEiT: predict the visual tokens of masked patches
#
# BEiT (Bao et al., 2021) carries BERT's masked language modelling over to images. A tokenizer turns
# the image into a grid of discrete ids from a fixed vocabulary, one per patch; the ViT gets the image
# with about 40% of its patch embeddings replaced by a learned mask token and predicts, at each masked
# position, the tokenizer's id. Predicting ids rather than pixels keeps the model from spending its
# capacity on pixel detail. BEiT masks *blocks* of neighbouring patches (rectangles of random size and
# aspect ratio, until enough patches are covered), since a lone masked patch is easy to interpolate
# from its neighbours.
#
# BEiT used the discrete VAE (dVAE) of DALL·E as its tokenizer. We use the course's VQ-VAE instead, the
# tokenizer the DALL·E notebook uses too: a nearest-code lookup with a straight-through gradient does
# the same job without a Gumbel-softmax temperature. Its encoder halves the image size twice, so a
# 28x28 digit becomes a 7x7 grid of ids, one per 4x4 patch of the ViT. It trains in seconds.

# %%
from homl16 import beit as B
from homl16.vqvae import VQVAE, codebook_usage, train_vqvae

X01_train, _, X01_test, _ = mnist_tensors(channels=3, standardise=False)  # the VQ-VAE's RGB in [0, 1]
torch.manual_seed(0)
tokenizer = VQVAE(num_codes=64, width=16)
start = time.perf_counter()
vq_history = train_vqvae(tokenizer, X01_train, epochs=4, batch_size=32, device=device)
tokenizer_seconds = time.perf_counter() - start
ids_train, ids_test = B.visual_tokens(tokenizer, X01_train), B.visual_tokens(tokenizer, X01_test)
usage, perplexity = codebook_usage(ids_train, tokenizer.num_codes)
print(f"VQ-VAE: {tokenizer_seconds:.1f} s, reconstruction MSE {vq_history['reconstruction_mse'][-1]:.4f}, "
      f"codes used {usage:.0%}, perplexity {perplexity:.1f} of {tokenizer.num_codes}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.4))
axes[0].imshow(X01_test[0, 0], cmap="gray")
axes[0].set_title("digit")
axes[1].imshow(ids_test[0].view(7, 7), cmap="tab20")
for (row, col), code in zip(torch.cartesian_prod(torch.arange(7), torch.arange(7)), ids_test[0]):
    axes[1].text(col, row, int(code), ha="center", va="center", fontsize=6)
axes[1].set_title("its 7x7 token ids")
axes[2].imshow(tokenizer.decode(ids_test[:1])[0].permute(1, 2, 0))
axes[2].set_title("decoded ids")
for ax in axes:
    ax.axis("off")

# %%
homl16.show_source(B.block_mask, B.BEiT.encode)
show_images(B.block_masks(8, 7, 20, random.Random(0)).view(8, 1, 7, 7).float(),
            titles=["masked 20 of 49"] * 8);

# %%
torch.manual_seed(0)
beit = B.BEiT(small_vit(), vocab_size=tokenizer.num_codes)
start = time.perf_counter()
beit_history = B.train_beit(beit, X_train, ids_train, epochs=8, batch_size=128, lr=1e-3, mask_ratio=0.4,
                            device=device)
beit_seconds = time.perf_counter() - start
token_accuracy, majority = B.masked_token_accuracy(beit, X_test, ids_test)
beit_probe = probe_accuracy(beit.encoder, X_train, y_train, X_test, y_test)
print(f"BEiT pretraining: {beit_seconds:.1f} s; masked tokens predicted: {token_accuracy:.3f} "
      f"(the most frequent id: {majority:.3f})")
print(f"BEiT linear probe: {beit_probe:.3f} (random init: {random_init_probe:.3f})")

# %% [markdown]
# The ViT learned to name the hidden patches' tokens several times more often than the most frequent
# id would, yet on this budget its mean-pooled final features probe *worse* than a random ViT's:
# predicting the exact code of a 4x4 patch is mostly a local task, and the last layer specialises in
# it. MAE's probe gain is small too, a few points. Masked image modelling pays off in fine-tuning more
# than in linear probes, and with far longer pretraining.

# %%
homl16.report({"random_init_probe_accuracy": random_init_probe, "mae_probe_accuracy": mae_probe,
               "beit_probe_accuracy": beit_probe, "mae_encoder_flop_ratio": flop_ratio})
