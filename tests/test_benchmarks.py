"""The benchmarks keep running: each compared pair builds, and both sides compute outputs of one shape."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import blocks  # noqa: E402


@pytest.mark.parametrize("pair", [blocks.vit_pair, blocks.swin_pair, blocks.pvt_pair, blocks.clip_loss_pair])
def test_compared_blocks_compute_outputs_of_the_same_shape(pair):
    name, x, ours, theirs = pair("cpu")
    with torch.no_grad():
        assert ours(x[:2]).shape == theirs(x[:2]).shape, name
