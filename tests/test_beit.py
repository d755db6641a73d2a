import random

import pytest
import torch
import torch.nn.functional as F

from homl16 import beit as B
from homl16.vit import ViT
from homl16.vqvae import VQVAE


def small_beit(vocab_size=16):
    torch.manual_seed(0)
    vit = ViT(img_size=28, patch_size=4, in_channels=1, num_classes=0, embed_dim=32, depth=2, num_heads=4,
              ff_dim=64, dropout=0.0)
    return B.BEiT(vit, vocab_size).eval()


@pytest.mark.parametrize("grid, count", [(7, 20), (7, 30), (14, 75)])
def test_block_masks_mask_the_asked_count_in_blocks(grid, count):
    masks = B.block_masks(200, grid, count, random.Random(0))
    assert masks.shape == (200, grid * grid) and masks.dtype == torch.bool
    counts = masks.sum(1)
    assert counts.max() <= count and counts.float().mean() > count - 0.5
    # blocks, not scattered patches: most masked patches have a masked neighbour
    grids = masks.view(-1, grid, grid).float()
    neighbours = F.conv2d(grids[:, None], torch.tensor([[[[0., 1, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1)
    assert ((neighbours[:, 0] > 0) & (grids > 0)).sum() > 0.9 * grids.sum()


def test_block_masks_follow_the_rng():
    a = B.block_masks(8, 7, 20, random.Random(3))
    assert torch.equal(a, B.block_masks(8, 7, 20, random.Random(3)))
    assert len({tuple(m.tolist()) for m in a}) > 1


def test_mask_token_replaces_only_the_masked_embeddings():
    beit = small_beit()
    X = torch.randn(2, 1, 28, 28)
    none = torch.zeros(2, 49, dtype=torch.bool)
    torch.testing.assert_close(beit.encode(X, none), beit.encoder.forward_features(X))
    mask = B.block_masks(2, 7, 20, random.Random(0))
    changed = X.clone()
    grid_mask = mask.view(2, 7, 7).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    changed[grid_mask] += 3.0  # the masked patches' pixels cannot matter
    torch.testing.assert_close(beit.encode(changed, mask), beit.encode(X, mask))


def test_targets_are_the_tokenizers_ids_laid_out_like_the_patches():
    torch.manual_seed(0)
    tokenizer = VQVAE(num_codes=16, width=8)
    X = torch.rand(3, 1, 28, 28)
    ids = B.visual_tokens(tokenizer, X)
    assert ids.shape == (3, 49)
    assert torch.equal(ids.view(3, 7, 7), tokenizer.encode(X.repeat(1, 3, 1, 1)))


def test_loss_is_the_cross_entropy_on_masked_positions_only():
    logits, ids = torch.randn(2, 49, 16), torch.randint(16, (2, 49))
    mask = B.block_masks(2, 7, 20, random.Random(0))
    loss = B.masked_token_loss(logits, ids, mask)
    torch.testing.assert_close(loss, F.cross_entropy(logits[mask], ids[mask]))
    other = torch.where(mask, ids, (ids + 1) % 16)  # change every visible target
    torch.testing.assert_close(B.masked_token_loss(logits, other, mask), loss)
    assert B.masked_token_loss(logits, torch.where(mask, (ids + 1) % 16, ids), mask) != loss


def test_training_step_and_accuracy_run():
    beit = small_beit()
    X, ids = torch.randn(16, 1, 28, 28), torch.zeros(16, 49, dtype=torch.long)
    history = B.train_beit(beit, X, ids, epochs=2, batch_size=8, lr=1e-2, device="cpu")
    assert history["accuracy"][-1] > 0.9  # one constant token is easy to learn
    accuracy, majority = B.masked_token_accuracy(beit, X, ids)
    assert majority == 1.0 and accuracy > 0.9


def test_bad_inputs_raise_clear_errors():
    beit = small_beit()
    X = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="bool"):
        beit(X, torch.zeros(2, 49))
    with pytest.raises(ValueError, match=r"\(2, 49\)"):
        beit(X, torch.zeros(2, 36, dtype=torch.bool))
    with pytest.raises(ValueError, match="no patch is masked"):
        B.masked_token_loss(torch.randn(2, 49, 16), torch.zeros(2, 49, dtype=torch.long),
                            torch.zeros(2, 49, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_masked"):
        B.block_mask(7, 49, random.Random(0))
    with pytest.raises(ValueError, match="mask_ratio"):
        B.num_masked(49, 1.0)
    with pytest.raises(ValueError, match="one id per patch"):
        B.train_beit(beit, X, torch.zeros(2, 36, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        B.train_beit(beit, X, torch.full((2, 49), 16))
    with pytest.raises(ValueError, match="num_classes=0"):
        B.BEiT(ViT(img_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=32, depth=1,
                   num_heads=4, ff_dim=64), 16)
