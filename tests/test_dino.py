import math

import pytest
import torch
import torch.nn.functional as F

from homl16 import dino
from homl16.augment import color_jitter, gaussian_blur, random_grayscale, random_resized_crop
from homl16.dino import DINOHead, DINOLoss, DINONetwork, MultiCrop, dino_loss, train_dino, update_center
from homl16.vit import ViT


def small_vit(img_size=16, patch_size=4):
    return ViT(img_size=img_size, patch_size=patch_size, in_channels=3, num_classes=1, embed_dim=16, depth=2,
               num_heads=2, ff_dim=32, dropout=0.0)


def test_dino_loss_equals_the_formula_computed_pair_by_pair():
    torch.manual_seed(0)
    student, teacher, center = torch.randn(4, 3, 5), torch.randn(2, 3, 5), torch.randn(5)
    terms = []
    for v in range(2):  # teacher views (the global crops)
        p_teacher = torch.exp((teacher[v] - center) / 0.04)
        p_teacher = p_teacher / p_teacher.sum(-1, keepdim=True)
        for w in range(4):  # student views
            if v == w:
                continue  # the same view on both sides is skipped
            log_p_student = student[w] / 0.1 - torch.logsumexp(student[w] / 0.1, dim=-1, keepdim=True)
            terms.append(-(p_teacher * log_p_student).sum(-1).mean())
    expected = torch.stack(terms).mean()
    assert len(terms) == 6
    torch.testing.assert_close(dino_loss(student, teacher, center, 0.1, 0.04), expected)


def test_dino_loss_gives_no_gradient_to_the_teacher_side():
    student = torch.randn(3, 2, 4, requires_grad=True)
    teacher = torch.randn(2, 2, 4, requires_grad=True)
    dino_loss(student, teacher, torch.zeros(4)).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_dino_loss_rejects_mismatched_views():
    with pytest.raises(ValueError, match="teacher_out"):
        dino_loss(torch.randn(2, 3, 4), torch.randn(3, 3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="student_out"):
        dino_loss(torch.randn(3, 4), torch.randn(2, 3, 4), torch.zeros(4))


def test_center_update_is_the_documented_ema_of_the_teacher_mean():
    center, teacher = torch.randn(6), torch.randn(2, 5, 6)
    expected = 0.9 * center + 0.1 * teacher.reshape(-1, 6).mean(0)
    torch.testing.assert_close(update_center(center, teacher, momentum=0.9), expected)
    torch.testing.assert_close(update_center(center, teacher, momentum=1.0), center)
    loss_fn = DINOLoss(6, center_momentum=0.8)
    loss_fn(torch.randn(4, 5, 6), teacher)
    assert torch.equal(loss_fn.center, torch.zeros(6))  # the loss itself leaves the centre alone
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, 0.2 * teacher.mean((0, 1)))
    frozen = DINOLoss(6, centering=False)
    frozen.update_center(teacher)
    assert torch.equal(frozen.center, torch.zeros(6))


def test_teacher_gets_no_gradient_and_is_the_ema_of_the_student_after_a_step():
    torch.manual_seed(0)
    student = DINONetwork(small_vit(), DINOHead(16, 8, hidden_dim=16, bottleneck_dim=8))
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    X = torch.rand(8, 3, 16, 16)
    teacher, history = train_dino(student, X, MultiCrop(16, 8, num_local=2), epochs=1,
                                  loss_fn=DINOLoss(8), momentum=(0.9, 1.0), batch_size=8,
                                  freeze_prototypes_epochs=0, device="cpu")
    assert len(history["step_loss"]) == 1 and history["step_momentum"] == [pytest.approx(0.9)]
    assert history["epoch"] == [1] and set(history) >= {"teacher_entropy", "batch_entropy", "center_spread"}
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    changed = 0
    for (name, s), t in zip(student.named_parameters(), teacher.parameters()):
        torch.testing.assert_close(t, 0.9 * before[name] + 0.1 * s.detach())
        changed += not torch.equal(s, before[name])
    assert changed > 10  # the student did take a step


def test_ema_update_and_make_teacher():
    student = torch.nn.Linear(3, 2)
    teacher = dino.make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    old = teacher.weight.clone()
    dino.ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.weight, 0.75 * old + 0.25 * student.weight)


def test_multi_crop_has_the_documented_sizes_and_stays_in_range():
    X = torch.rand(5, 3, 32, 32)
    multi_crop = MultiCrop(global_size=32, local_size=16, num_local=4)
    crops = multi_crop(X, generator=torch.Generator().manual_seed(0))
    assert len(crops) == 6
    assert [tuple(c.shape) for c in crops] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 4
    assert all(c.min() >= 0 and c.max() <= 1 for c in crops)
    assert not torch.allclose(crops[0], crops[1])
    with pytest.raises(ValueError, match="local_size"):
        MultiCrop(global_size=16, local_size=32)


def test_random_resized_crop_of_the_whole_image_is_the_image():
    X = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(random_resized_crop(X, 8, scale=(1.0, 1.0), ratio=(1.0, 1.0)), X)
    small = random_resized_crop(X, 4, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert small.shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop(X, 4, scale=(0.5, 2.0))


def test_colour_augmentations_keep_shapes_and_do_what_they_say():
    X = torch.rand(6, 3, 8, 8)
    grey = random_grayscale(X, p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    assert torch.equal(random_grayscale(X, p=0.0), X)
    jittered = color_jitter(X, p=1.0, generator=torch.Generator().manual_seed(0))
    assert jittered.shape == X.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, X)
    assert torch.equal(color_jitter(X, p=0.0), X)
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, p=1.0), flat)  # blurring a flat image changes nothing
    blurred = gaussian_blur(X, sigma=(1.5, 1.5), p=1.0)
    assert blurred.shape == X.shape and blurred.std() < X.std()


def test_dino_network_runs_crops_of_different_sizes():
    network = DINONetwork(small_vit(), DINOHead(16, 10, hidden_dim=16, bottleneck_dim=8, batch_norm=True))
    crops = [torch.rand(4, 3, 16, 16)] * 2 + [torch.rand(4, 3, 8, 8)] * 3
    assert network(crops).shape == (5, 4, 10)


def test_vit_interpolated_positions_match_transformers():
    from homl16.vit import to_hf_vit

    torch.manual_seed(0)
    vit = small_vit().eval()
    hf = to_hf_vit(vit)
    with torch.no_grad():
        for size in [(16, 16), (8, 8), (8, 12), (24, 24)]:
            X = torch.randn(2, 3, *size)
            expected = hf(pixel_values=X, interpolate_pos_encoding=True).last_hidden_state
            torch.testing.assert_close(vit.forward_features(X, interpolate_pos_encoding=True), expected,
                                       rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="16x16"):
        vit(torch.randn(1, 3, 8, 8))


def test_attention_maps_sum_to_one_over_keys_and_cls_attention_is_a_distribution():
    torch.manual_seed(0)
    maps = dino.attention_maps(small_vit(), torch.rand(3, 3, 16, 16), device="cpu")
    assert maps.shape == (3, 2, 2, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 2, 17))
    for direction in ("cls_to_patch", "patch_to_cls"):
        attention = dino.class_token_attention(maps, direction)
        assert attention.shape == (3, 2, 2, 4, 4)
        torch.testing.assert_close(attention.sum((-2, -1)), torch.ones(3, 2, 2))
    cls_row = maps[..., 0, 1:]
    torch.testing.assert_close(dino.class_token_attention(maps)[..., 0, 1], cls_row[..., 1] / cls_row.sum(-1))
    with pytest.raises(ValueError, match="direction"):
        dino.class_token_attention(maps, "sideways")


def test_attention_on_object_measures_mass_and_area():
    attention = torch.zeros(2, 2, 2)
    attention[:, 0, 0] = 1.0  # all the attention on the top-left patch
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # image 0: the object fills the top-left patch
    masks[1, 2:, 2:] = True  # image 1: the object is elsewhere
    mass, area = dino.attention_on_object(attention, masks)
    torch.testing.assert_close(mass, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(area, torch.tensor([0.25, 0.25]))
    with pytest.raises(ValueError, match="masks"):
        dino.attention_on_object(attention, torch.zeros(2, 5, 4))


def test_nearest_class_mean_and_knn_classify_separable_features():
    torch.manual_seed(0)
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    labels = torch.arange(3).repeat(20)
    features = centers[labels] + 0.1 * torch.randn(60, 2)
    assert dino.nearest_class_mean_accuracy(features[:30], labels[:30], features[30:], labels[30:]) == 1.0
    assert dino.knn_accuracy(features[:30], labels[:30], features[30:], labels[30:], k=5) == 1.0
    shuffled = labels[torch.randperm(60)]
    assert dino.nearest_class_mean_accuracy(features[:30], shuffled[:30], features[30:], shuffled[30:]) < 0.8
    with pytest.raises(ValueError, match="one label per row"):
        dino.knn_accuracy(features, labels[:5], features, labels)


def test_cosine_schedule_and_collapse_diagnostics():
    schedule = dino.cosine_schedule(1.0, 0.0, 11, warmup_steps=2)
    assert schedule.shape == (11,) and schedule[0] == 0.0 and schedule[2] == 1.0
    torch.testing.assert_close(schedule[-1], torch.tensor(0.0))
    assert torch.all(schedule[2:].diff() <= 0)
    uniform = dino.collapse_diagnostics(torch.zeros(2, 4, 8), torch.zeros(8), 0.04)
    assert uniform["teacher_entropy"] == pytest.approx(math.log(8))
    one_hot = F.one_hot(torch.zeros(2, 4, dtype=torch.long), 8).float()
    one_hot = dino.collapse_diagnostics(one_hot, torch.zeros(8), 0.01)
    assert one_hot["teacher_entropy"] < 0.01 and one_hot["batch_entropy"] < 0.01


def test_attention_explorer_displays_widgets_with_a_static_png_fallback():
    import matplotlib

    from homl16.widgets import attention_explorer

    matplotlib.use("Agg")
    images = [torch.rand(3, 16, 16) for _ in range(2)]
    maps = torch.rand(2, 3, 2, 4, 4)
    bundle = attention_explorer(images, maps, titles=["a", "b"])._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/png"].startswith("iVBOR")  # base64 of a PNG header
    with pytest.raises(ValueError, match="maps"):
        attention_explorer(images, torch.rand(3, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="titles"):
        attention_explorer(images, maps, titles=["a"])
