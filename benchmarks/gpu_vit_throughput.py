"""Training throughput of a ViT-B/16 step on one GPU: the course's ViT vs timm vs transformers.

    python benchmarks/gpu_vit_throughput.py                 # every row below
    python benchmarks/gpu_vit_throughput.py --steps 5       # a quick look

One step = bf16 autocast forward, cross-entropy, backward, AdamW step, on random 224x224 images
(1,000 classes, no dropout). Rows: each model in eager mode at batch 128 (AdamW's default
implementation), then the course's GPU recipe at batch 256: bf16 autocast + fused AdamW +
``torch.compile``. Prints a Markdown table of images per second and peak memory; models that are not
installed (timm) are skipped.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from homl16.vit import ViT


def course_vit():
    return ViT(img_size=224, patch_size=16, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
               ff_dim=3072, dropout=0.0)


def timm_vit():
    import timm

    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)


def transformers_vit(attn_implementation):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=224, patch_size=16, num_labels=1000, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, attn_implementation=attn_implementation)
    model = ViTForImageClassification(config)
    return lambda X: model(pixel_values=X).logits, model


def plain(model):
    """(forward, model) for a model that is called on the images directly."""
    return model, model


def images_per_second(build, batch_size, steps, warmup, fused=False, compile=False):
    """(images/s, peak GiB) of ``steps`` timed training steps after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    forward, model = build()
    model = model.cuda().train()
    if compile:
        forward = torch.compile(forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    X = torch.randn(batch_size, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch_size,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(X), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch_size * steps / seconds, torch.cuda.max_memory_allocated() / 2**30


def rows():
    """(name, build, batch size, fused AdamW, compile)."""
    eager = [("course ViT", lambda: plain(course_vit()), 128, False, False),
             ("timm vit_base_patch16_224", lambda: plain(timm_vit()), 128, False, False),
             ("transformers ViT (SDPA)", lambda: transformers_vit("sdpa"), 128, False, False),
             ("transformers ViT (eager attention)", lambda: transformers_vit("eager"), 128, False, False)]
    recipe = [("course ViT, GPU recipe", lambda: plain(course_vit()), 256, True, True),
              ("timm, GPU recipe", lambda: plain(timm_vit()), 256, True, True)]
    return eager + recipe


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.steps} timed steps\n")
    print("| model | batch | fused AdamW | compiled | images/s | peak GiB |\n|---|---:|---|---|---:|---:|")
    for name, build, batch_size, fused, compile in rows():
        try:
            speed, peak = images_per_second(build, batch_size, args.steps, args.warmup, fused, compile)
            torch.cuda.empty_cache()  # the model and its optimizer are gone with the call
        except ImportError as error:
            print(f"| {name} | skipped: {error} |||||")
            continue
        print(f"| {name} | {batch_size} | {'yes' if fused else 'no'} | {'yes' if compile else 'no'} "
              f"| {speed:,.0f} | {peak:.1f} |", flush=True)


if __name__ == "__main__":
    main()
