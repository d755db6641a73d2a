"""The benchmarks keep running: each compared pair builds, and both sides compute outputs of one shape."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import blocks  # noqa: E402


@pytest.mark.parametrize("pair", [blocks.vit_pair, blocks.swin_pair, blocks.pvt_pair, blocks.clip_loss_pair,
                                  blocks.perceiver_pair, blocks.qformer_pair])
def test_compared_blocks_compute_outputs_of_the_same_shape(pair):
    name, x, ours, theirs = pair("cpu")
    with torch.no_grad():
        assert ours(x[:2]).shape == theirs(x[:2]).shape, name


def test_qformer_pair_runs_the_same_computation_both_ways_and_theirs_trains():
    from homl16.qformer import QFormer

    torch.manual_seed(0)
    qformer = QFormer(3, dim=32, num_layers=2, num_heads=4, ff_dim=64, image_dim=6, vocab_size=50,
                      max_positions=20)
    description, x, ours, theirs = blocks.qformer_pair("cpu", qformer, batch_size=2, num_text=4,
                                                       num_image_tokens=5)
    assert "3 queries + 4 text tokens" in description
    out = theirs(x)
    torch.testing.assert_close(ours(x), out, atol=1e-5, rtol=1e-5)
    assert out.requires_grad  # their copy trains too: the benchmark times forward + backward


def test_gpu_benchmark_compares_vits_of_the_same_size():
    import gpu_vit_throughput

    course = gpu_vit_throughput.course_vit()
    forward, library = gpu_vit_throughput.transformers_vit("sdpa")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(course) == count(library) == 86_567_656  # ViT-B/16 with a 1,000-class head
    with torch.no_grad():
        assert course(torch.randn(1, 3, 224, 224)).shape == forward(torch.randn(1, 3, 224, 224)).shape
