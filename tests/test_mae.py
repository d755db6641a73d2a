import pytest
import torch

from homl16 import mae as M
from homl16.vit import ViT


def small_vit(depth=2):
    torch.manual_seed(0)
    return ViT(img_size=28, patch_size=4, in_channels=1, num_classes=0, embed_dim=32, depth=depth,
               num_heads=4, ff_dim=64, dropout=0.0)


@pytest.mark.parametrize("ratio, kept", [(0.75, 12), (0.5, 24), (0.0, 49)])
def test_masking_keeps_the_right_count_and_restore_inverts_the_shuffle(ratio, kept):
    keep, mask, restore = M.random_masking(5, 49, ratio, torch.Generator().manual_seed(0))
    assert keep.shape == (5, kept)
    assert (mask.sum(1) == 49 - kept).all()
    assert (mask.gather(1, keep) == 0).all()  # the kept patches are the visible ones
    shuffle = restore.argsort(dim=1)  # the patch order the encoder saw: visible first
    assert torch.equal(shuffle[:, :kept], keep)
    assert torch.equal(shuffle.gather(1, restore), torch.arange(49).expand(5, -1))


def test_masks_differ_between_images_and_follow_the_generator():
    a = M.random_masking(4, 49, 0.75, torch.Generator().manual_seed(1))[1]
    b = M.random_masking(4, 49, 0.75, torch.Generator().manual_seed(1))[1]
    assert torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) == 4


def test_encoder_on_every_patch_equals_the_vit():
    vit = small_vit()
    mae = M.MAE(vit).eval()
    X = torch.randn(3, 1, 28, 28)
    tokens, keep, mask, restore = mae.encode(X, mask_ratio=0.0)
    assert mask.sum() == 0
    patches = tokens[:, 1:].gather(1, restore[..., None].expand(-1, -1, tokens.shape[2]))
    expected = vit.forward_features(X)
    torch.testing.assert_close(tokens[:, 0], expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, expected[:, 1:], atol=1e-5, rtol=1e-5)


def test_encoder_sees_only_the_visible_patches():
    mae = M.MAE(small_vit()).eval()
    X = torch.randn(2, 1, 28, 28)
    tokens, keep, mask, _ = mae.encode(X, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 1 + 12, 32)
    changed = M.unpatchify(M.patchify(X, 4) + 5 * mask[..., None], 4, 1)  # only masked pixels change
    again = mae.encode(changed, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(again, tokens)


def test_patchify_round_trips_and_matches_the_patch_order():
    X = torch.randn(2, 3, 8, 12)
    patches = M.patchify(X, 4)
    assert patches.shape == (2, 6, 48)
    torch.testing.assert_close(patches[0, 1].view(4, 4, 3).permute(2, 0, 1), X[0, :, :4, 4:8])
    square = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(M.unpatchify(M.patchify(square, 4), 4, 3), square)


def test_loss_ignores_the_visible_patches():
    pred, target = torch.randn(2, 49, 16), torch.randn(2, 49, 16)
    mask = M.random_masking(2, 49, 0.75, torch.Generator().manual_seed(0))[1]
    loss = M.masked_patch_loss(pred, target, mask)
    moved = target + 3 * (1 - mask)[..., None]  # change only the visible patches' targets
    torch.testing.assert_close(M.masked_patch_loss(pred, moved, mask), loss)
    assert M.masked_patch_loss(pred, target + mask[..., None], mask) != loss
    dense = ((pred - target) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, dense)


def test_normalised_targets_have_zero_mean_and_unit_variance_per_patch():
    patches = M.normalise_patches(torch.randn(2, 5, 16) * 3 + 1)
    torch.testing.assert_close(patches.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(patches.var(-1), torch.ones(2, 5), atol=1e-4, rtol=0)


def test_forward_trains_and_reconstruction_pastes_the_visible_patches():
    mae = M.MAE(small_vit(depth=1), norm_pix_loss=True)
    X = torch.randn(4, 1, 28, 28)
    loss, pred, mask = mae(X)
    loss.backward()
    assert pred.shape == (4, 49, 16) and mae.encoder.patch_embed.conv2d.weight.grad is not None
    masked, rebuilt = M.reconstruct(mae, X, generator=torch.Generator().manual_seed(0))
    visible = (1 - M.random_masking(4, 49, 0.75, torch.Generator().manual_seed(0))[1])[..., None]
    torch.testing.assert_close(M.patchify(rebuilt, 4) * visible, M.patchify(X, 4) * visible)
    torch.testing.assert_close(M.patchify(masked, 4), M.patchify(X, 4) * visible)


def test_encoder_flop_ratio_is_well_below_the_full_encoder():
    mae = M.MAE(small_vit())
    ratio = M.encoder_flop_ratio(mae, torch.randn(2, 1, 28, 28))
    assert 0.15 < ratio < 0.35  # ~ the 13 of 50 tokens, less for the quadratic attention
    assert M.encoder_flops(mae, torch.randn(2, 1, 28, 28), 0.0) > 0


def test_save_encoder_round_trips(tmp_path):
    mae = M.MAE(small_vit())
    path = M.save_encoder(mae, tmp_path / "encoder.pt")
    vit = small_vit()
    torch.nn.init.zeros_(vit.pos_embed)
    vit.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(vit.pos_embed, mae.encoder.pos_embed)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="mask_ratio"):
        M.random_masking(2, 49, 1.0)
    with pytest.raises(ValueError, match="no visible patch"):
        M.random_masking(2, 3, 0.9)
    with pytest.raises(ValueError, match="num_classes=0"):
        M.MAE(ViT(img_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=32, depth=1,
                  num_heads=4, ff_dim=64))
    mae = M.MAE(small_vit(depth=1))
    with pytest.raises(ValueError, match="28x28"):
        mae(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        mae(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="no patch is masked"):
        mae(torch.randn(2, 1, 28, 28), mask_ratio=0.0)
    with pytest.raises(ValueError, match="do not match"):
        M.masked_patch_loss(torch.randn(2, 49, 16), torch.randn(2, 49, 8), torch.ones(2, 49))
    with pytest.raises(ValueError, match="divisible"):
        M.patchify(torch.randn(1, 1, 10, 10), 4)
