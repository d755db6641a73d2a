import pytest
import torch

from homl16.ijepa import IJEPA, Predictor, encode, multiblock_masks, prediction_loss, train_ijepa
from homl16.vit import ViT


def small_vit(seed=0):
    torch.manual_seed(seed)
    return ViT(img_size=16, patch_size=4, in_channels=1, num_classes=0, embed_dim=16, depth=2, num_heads=2,
               ff_dim=32, dropout=0.0)


def small_ijepa(ema=True):
    return IJEPA(small_vit(), Predictor(16, 16, width=8, depth=1, num_heads=2, ff_dim=16), ema=ema)


def masks(batch_size=8, grid_size=7, seed=0, **kwargs):
    return multiblock_masks(batch_size, grid_size, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("seed", range(5))
def test_masks_have_equal_counts_disjoint_targets_and_context_and_blocks_inside_the_grid(seed):
    context, targets = masks(batch_size=16, seed=seed)
    B, M, T = targets.shape
    assert (B, M) == (16, 4) and context.shape[0] == 16 and context.shape[1] >= 4
    assert 0.15 * 49 - 3 <= T <= 0.2 * 49 + 3  # the scale, give or take the rounding to a whole block
    for image_context, image_targets in zip(context, targets):
        assert len(set(image_context.tolist())) == len(image_context)
        assert not set(image_context.tolist()) & set(image_targets.flatten().tolist())
        for block in image_targets:
            rows, cols = block // 7, block % 7
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert height * width == T  # a full rectangle of the grid (indices in [0, 49) by construction)
            assert block.min() >= 0 and block.max() < 49
            assert 0.75 * 0.5 <= height / width <= 1.5 * 2  # the aspect, up to the rounding on 7x7


def test_masks_trim_every_context_to_the_batch_minimum_and_are_reproducible():
    context, targets = masks(batch_size=32, seed=3)
    again = masks(batch_size=32, seed=3)
    assert torch.equal(context, again[0]) and torch.equal(targets, again[1])
    alone = [masks(batch_size=1, seed=s)[0].shape[1] for s in range(20)]
    assert min(alone) < max(alone)  # images differ in context size, so the batch must trim


def test_masks_reject_bad_arguments():
    with pytest.raises(ValueError, match="target_scale"):
        masks(target_scale=(0.3, 0.2))
    with pytest.raises(ValueError, match="context_scale"):
        masks(context_scale=(0.9, 1.2))
    with pytest.raises(ValueError, match="no context"):
        masks(grid_size=3, num_targets=4, target_scale=(0.9, 1.0), min_context=4)
    with pytest.raises(ValueError, match="num_targets"):
        masks(num_targets=0)


def test_encoder_on_every_patch_equals_the_vit_patch_tokens():
    vit, X = small_vit(), torch.randn(3, 1, 16, 16)
    every = torch.arange(16).expand(3, -1)
    expected = vit.forward_features(X)[:, 1:]
    torch.testing.assert_close(encode(vit, X, every), expected)
    torch.testing.assert_close(encode(vit, X), expected)


def test_encoder_on_some_patches_equals_the_full_vit_with_attention_kept_to_them():
    vit, X = small_vit(), torch.randn(2, 1, 16, 16)
    keep = torch.tensor([[0, 3, 5, 9, 12], [1, 2, 7, 8, 15]])
    allowed = torch.zeros(2, 17, dtype=torch.bool)
    allowed[:, 0] = True  # the class token
    allowed.scatter_(1, keep + 1, True)
    Z = torch.cat([vit.prefix_tokens(2), vit.patch_embed(X)], 1) + vit.pos_embed
    for block in vit.blocks:
        Z = block(Z, attn_mask=allowed[:, None, None, :])  # every token attends to the kept ones only
    expected = vit.norm(Z)[torch.arange(2)[:, None], keep + 1]
    torch.testing.assert_close(encode(vit, X, keep), expected)


def test_encoder_rejects_bad_inputs():
    vit = small_vit()
    with pytest.raises(ValueError, match="keep must index"):
        encode(vit, torch.randn(2, 1, 16, 16), torch.tensor([[0, 16], [1, 2]]))
    with pytest.raises(ValueError, match="rows"):
        encode(vit, torch.randn(2, 1, 16, 16), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="channels"):
        encode(vit, torch.randn(2, 3, 16, 16), torch.tensor([[0], [1]]))


def test_loss_depends_only_on_the_target_positions():
    targets = torch.tensor([[[0, 1], [4, 5]], [[10, 11], [14, 15]]])
    predictions, tokens = torch.randn(2, 2, 2, 6), torch.randn(2, 16, 6)
    loss = prediction_loss(predictions, tokens, targets)
    changed = tokens.clone()
    changed[0, 2] += 5.0  # not a target of image 0 (a target of nothing)
    changed[1, 0] += 5.0  # a target of image 0, not of image 1
    torch.testing.assert_close(prediction_loss(predictions, changed, targets), loss)
    changed[1, 14] += 1.0
    assert prediction_loss(predictions, changed, targets) != loss
    expected = torch.stack([(predictions[b, m, t] - tokens[b, targets[b, m, t]]).pow(2).mean()
                            for b in range(2) for m in range(2) for t in range(2)]).mean()
    torch.testing.assert_close(loss, expected)


def test_predictor_keeps_each_target_block_to_itself():
    torch.manual_seed(0)
    predictor = Predictor(16, 16, width=8, depth=2, num_heads=2, ff_dim=16)
    tokens, context = torch.randn(1, 3, 16), torch.tensor([[0, 1, 2]])
    first = predictor(tokens, context, torch.tensor([[[5, 6], [9, 10]]]))
    second = predictor(tokens, context, torch.tensor([[[5, 6], [13, 14]]]))
    assert first.shape == (1, 2, 2, 16)
    torch.testing.assert_close(first[:, 0], second[:, 0])  # block 0 never sees where block 1 lies
    assert not torch.allclose(first[:, 1], second[:, 1])


def test_target_encoder_gets_no_gradient_and_moves_only_by_the_moving_average():
    model = small_ijepa()
    X = torch.randn(6, 1, 16, 16)
    context, targets = masks(batch_size=6, grid_size=4, num_targets=2, target_scale=(0.1, 0.2), min_context=2)
    model(X, context, targets)["loss"].backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.patch_embed.conv2d.weight.grad.abs().sum() > 0
    start = [p.clone() for p in model.target_encoder.parameters()]
    history = train_ijepa(model, X, epochs=2, batch_size=3, lr=1e-2, momentum=(0.5, 0.9), device="cpu",
                          num_targets=2, target_scale=(0.1, 0.2), min_context=2)
    assert len(history["loss"]) == 2 and len(history["target_spread"]) == 2
    assert all(not torch.equal(s, p) for s, p in zip(start, model.target_encoder.parameters()))
    copied = small_ijepa()  # momentum 0: after every step the target is the encoder's copy
    train_ijepa(copied, X, epochs=1, batch_size=3, momentum=(0.0, 0.0), device="cpu", num_targets=2,
                target_scale=(0.1, 0.2), min_context=2)
    pairs = zip(copied.target_encoder.parameters(), copied.encoder.parameters())
    assert all(torch.equal(target, encoder) for target, encoder in pairs)
    frozen = small_ijepa()
    before = [p.clone() for p in frozen.target_encoder.parameters()]
    train_ijepa(frozen, X, epochs=1, batch_size=3, momentum=(1.0, 1.0), device="cpu", num_targets=2,
                target_scale=(0.1, 0.2), min_context=2)
    assert all(torch.equal(b, p) for b, p in zip(before, frozen.target_encoder.parameters()))
    assert not torch.equal(frozen.encoder.pos_embed, before[1])  # the encoder did learn meanwhile


def test_without_ema_the_target_is_the_encoder_itself():
    model = small_ijepa(ema=False)
    assert model.target_encoder is None
    X = torch.randn(4, 1, 16, 16)
    context, targets = masks(batch_size=4, grid_size=4, num_targets=2, target_scale=(0.1, 0.2), min_context=2)
    out = model(X, context, targets)
    assert out["loss"].requires_grad and out["target_spread"] > 0


def test_training_rejects_bad_inputs():
    with pytest.raises(ValueError, match="X must have shape"):
        train_ijepa(small_ijepa(), torch.randn(4, 16, 16), device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        train_ijepa(small_ijepa(), torch.randn(4, 1, 16, 16), epochs=0, device="cpu")
