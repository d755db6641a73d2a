"""The course's from-scratch blocks against the transformers implementations, side by side.

    python benchmarks/blocks.py            # prints a Markdown table and writes benchmarks/blocks.md

Each pair gets the same configuration, batch and weight sizes; the time is the median over forward +
backward passes on the current device, the two implementations taking turns so that both see the same
machine (run it on a quiet one). A ratio above 1 means the course's block is slower than the library's.
"""

import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from homl16.cost import time_block
from homl16.runtime import get_device

BATCH = 8
REPEATS = 15


def forward_backward(output_of):
    """A ``time_block`` call that runs ``output_of(x)`` and back-propagates its sum."""
    def call(_, x):
        with torch.enable_grad():
            output_of(x).sum().backward()
    return call


def vit_pair(device):
    from transformers import ViTModel

    from homl16.vit import ViT, hf_vit_config

    ours = ViT(img_size=64, patch_size=8, embed_dim=192, depth=4, num_heads=3, ff_dim=768, dropout=0.0)
    config = hf_vit_config(ours)
    config._attn_implementation = "sdpa"
    theirs = ViTModel(config, add_pooling_layer=False).to(device)
    ours.to(device)
    return ("ViT encoder (64 tokens, 192 wide, 4 layers)", torch.rand(BATCH, 3, 64, 64),
            ours.forward_features, lambda x: theirs(pixel_values=x).last_hidden_state)


def swin_pair(device):
    from transformers import SwinConfig, SwinModel

    from homl16.swin import Swin

    ours = Swin(patch_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6), window_size=7)
    config = SwinConfig(image_size=112, patch_size=4, embed_dim=48, depths=[2, 2], num_heads=[3, 6],
                        window_size=7, drop_path_rate=0.0)
    theirs = SwinModel(config, add_pooling_layer=False).to(device)
    ours.to(device)
    return ("Swin, 2 stages (28x28 then 14x14 tokens, 7x7 windows)", torch.rand(BATCH, 3, 112, 112),
            lambda x: ours(x)[-1].flatten(2).transpose(1, 2),  # (B, C, h, w) -> tokens (B, h * w, C)
            lambda x: theirs(pixel_values=x).last_hidden_state)


def pvt_pair(device):
    from transformers import PvtV2Model

    from homl16.pvt import PyramidVisionTransformer, pvt_options_from_hf_config, small_pvt_v2_config

    config = small_pvt_v2_config(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                                 mlp_ratios=(8, 8, 4, 4), image_size=128)
    ours = PyramidVisionTransformer(**pvt_options_from_hf_config(config))
    theirs = PvtV2Model(config).to(device)
    ours.to(device)
    return ("PVT-v2-b0 pyramid (128x128 image)", torch.rand(BATCH, 3, 128, 128),
            lambda x: ours(x)[-1], lambda x: theirs(pixel_values=x).last_hidden_state)


def clip_loss_pair(device):
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    from homl16.clip import clip_loss

    scale = torch.nn.Parameter(torch.tensor(2.659, device=device))

    def theirs(embeds):
        image, text = F.normalize(embeds[0], dim=-1), F.normalize(embeds[1], dim=-1)
        return image_text_contrastive_loss(scale.exp() * text @ image.T)

    return ("CLIP loss (256 pairs, 512 dims)", torch.randn(2, 256, 512, requires_grad=True),
            lambda x: clip_loss(x[0], x[1], scale), theirs)


def perceiver_pair(device):
    from homl16.perceiver import PerceiverClassifier, hf_perceiver_latents, to_hf_perceiver

    model = PerceiverClassifier(image_size=32, in_channels=3, num_latents=64, latent_dim=128, num_blocks=2,
                                self_attends_per_block=2, num_self_attention_heads=4)
    theirs = to_hf_perceiver(model).train().to(device)
    model.to(device)
    return ("Perceiver encoder (1,024 pixel tokens, 64 latents, 128 wide, 2 x 2 layers)",
            torch.rand(BATCH, 3, 32, 32), lambda x: model.encoder(model.encode_pixels(x)),
            lambda x: hf_perceiver_latents(theirs, x))


def qformer_pair(device, qformer=None, batch_size=BATCH, num_text=16, num_image_tokens=64, seed=0):
    """Ours runs ``qformer`` (default: 32 queries on the first 4 BERT layers), theirs transformers'
    ``Blip2QFormerModel`` with the same weights (SDPA attention, training mode), both on the queries
    plus ``num_text`` random text tokens, all seeing all (the ITM mask): image tokens (B, N, C) ->
    (B, Q + T, D)."""
    from homl16.bert import load_bert
    from homl16.qformer import qformer_from_bert, to_hf_qformer

    if qformer is None:
        qformer = qformer_from_bert(load_bert(), num_queries=32, num_layers=4, image_dim=112)
    generator = torch.Generator().manual_seed(seed)
    theirs_model = to_hf_qformer(copy.deepcopy(qformer).cpu()).train().to(device)
    qformer = qformer.to(device).train()
    ids = torch.randint(1, qformer.vocab_size, (batch_size, num_text), generator=generator).to(device)
    x = torch.randn(batch_size, num_image_tokens, qformer.image_dim, generator=generator)
    Q = qformer.num_queries

    def theirs(image):
        return theirs_model(query_embeds=qformer.embed(len(image), ids[:len(image)]), query_length=Q,
                            encoder_hidden_states=image).last_hidden_state

    description = (f"Q-Former ({Q} queries + {num_text} text tokens, {num_image_tokens} image tokens, "
                   f"{qformer.dim} wide, {len(qformer.layers)} layers)")
    return description, x, lambda image: qformer(image, ids[:len(image)]), theirs


def main():
    device = get_device()
    torch.manual_seed(0)
    machine = f"{device} ({platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"Forward + backward, batch {BATCH}, median of {REPEATS} interleaved runs after 2 warm-up runs, "
             f"on {machine}, {time.strftime('%Y-%m-%d')}.", "",
             "| block | course (ms) | transformers (ms) | ratio |", "|---|---:|---:|---:|"]
    for pair in (vit_pair, swin_pair, pvt_pair, clip_loss_pair, perceiver_pair, qformer_pair):
        name, x, ours, theirs = pair(device)
        x = x.to(device)
        calls = [forward_backward(ours), forward_backward(theirs)]
        for call in calls:  # warm up both
            time_block(None, x, repeats=1, warmup=2, call=call)
        runs = [[time_block(None, x, repeats=1, warmup=0, call=call) for call in calls]  # interleaved
                for _ in range(REPEATS)]
        seconds = [statistics.median(column) for column in zip(*runs)]
        lines.append(f"| {name} | {1000 * seconds[0]:.1f} | {1000 * seconds[1]:.1f} | "
                     f"{seconds[0] / seconds[1]:.2f} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    (Path(__file__).parent / "blocks.md").write_text(table)


if __name__ == "__main__":
    main()
