import pytest
import torch
import torch.nn.functional as F
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

from homl16.cnn import SmallCNN
from homl16.deit import (
    DeiT,
    Distiller,
    copy_deit_weights_from_hf,
    hard_distillation_loss,
    soft_distillation_loss,
    to_hf_deit,
)
from homl16.train import fit


def small_deit(**kwargs):
    sizes = dict(img_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=32, depth=2, num_heads=4,
                 ff_dim=64, dropout=0.0)
    return DeiT(**{**sizes, **kwargs})


def random_logits(seed=0, batch=6, classes=5):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, classes, generator=generator) * 2 for _ in range(3)]


def test_deit_has_a_distillation_token_and_position_embeddings_for_n_plus_2_tokens():
    deit = small_deit()
    assert deit.dist_token.shape == deit.cls_token.shape == (1, 1, 32)
    assert deit.pos_embed.shape == (1, 16 + 2, 32)
    tokens, maps = deit.forward_features(torch.randn(2, 3, 16, 16), return_attention=True)
    assert tokens.shape == (2, 18, 32) and maps[0].shape == (2, 4, 18, 18)


def test_deit_returns_two_logits_in_training_and_their_average_at_inference():
    torch.manual_seed(0)
    deit = small_deit()
    X = torch.randn(3, 3, 16, 16)
    class_logits, distillation_logits = deit.train()(X)
    assert class_logits.shape == distillation_logits.shape == (3, 5)
    tokens = deit.forward_features(X)
    torch.testing.assert_close(class_logits, deit.head(tokens[:, 0]))  # class head on the class token
    torch.testing.assert_close(distillation_logits, deit.head_dist(tokens[:, 1]))  # on the distillation token
    assert not torch.allclose(class_logits, distillation_logits)
    deit.eval()
    torch.testing.assert_close(deit(X), (class_logits + distillation_logits) / 2)
    deit.inference_head = "class"
    torch.testing.assert_close(deit(X), class_logits)
    deit.inference_head = "distillation"
    torch.testing.assert_close(deit(X), distillation_logits)
    with pytest.raises(ValueError, match="inference_head"):
        deit.inference_head = "both"


def test_hard_distillation_loss_is_the_average_of_the_two_cross_entropies():
    class_logits, distillation_logits, teacher_logits = random_logits()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    teacher_labels = teacher_logits.argmax(dim=1)
    rows = torch.arange(6)
    ce_labels = -(class_logits.softmax(1)[rows, labels]).log().mean()
    ce_teacher = -(distillation_logits.softmax(1)[rows, teacher_labels]).log().mean()
    loss = hard_distillation_loss(class_logits, distillation_logits, labels, teacher_logits)
    torch.testing.assert_close(loss, (ce_labels + ce_teacher) / 2)
    # the teacher's labels, not the true ones, drive the distillation head
    assert not torch.equal(teacher_labels, labels)
    assert not torch.isclose(loss, hard_distillation_loss(class_logits, distillation_logits, labels,
                                                          F.one_hot(labels, 5).float()))


@pytest.mark.parametrize("temperature, alpha", [(3.0, 0.1), (1.0, 0.5), (4.0, 1.0)])
def test_soft_distillation_loss_is_ce_plus_t_squared_kl_by_hand(temperature, alpha):
    class_logits, distillation_logits, teacher_logits = random_logits(seed=1)
    labels = torch.tensor([4, 3, 2, 1, 0, 0])
    p_teacher = (teacher_logits / temperature).softmax(1)
    p_student = (distillation_logits / temperature).softmax(1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(1).mean()  # per image, then batch mean
    ce = -(class_logits.softmax(1)[torch.arange(6), labels]).log().mean()
    expected = (1 - alpha) * ce + alpha * temperature**2 * kl
    loss = soft_distillation_loss(class_logits, distillation_logits, labels, teacher_logits,
                                  temperature, alpha)
    torch.testing.assert_close(loss, expected)


def test_distillation_losses_reject_mismatched_inputs():
    class_logits, distillation_logits, teacher_logits = random_logits()
    with pytest.raises(ValueError, match="teacher_logits"):
        hard_distillation_loss(class_logits, distillation_logits, torch.zeros(6, dtype=torch.long),
                               teacher_logits[:, :4])
    with pytest.raises(ValueError, match="labels"):
        soft_distillation_loss(class_logits, distillation_logits, torch.zeros(5, dtype=torch.long),
                               teacher_logits)
    with pytest.raises(ValueError, match="temperature"):
        soft_distillation_loss(class_logits, distillation_logits, torch.zeros(6, dtype=torch.long),
                               teacher_logits, temperature=0.0)


def random_hf_deit(seed=0):
    torch.manual_seed(seed)
    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, num_labels=5)
    hf_model = DeiTForImageClassificationWithTeacher(config).eval()
    with torch.no_grad():  # transformers initialises the tokens to zeros: make every weight count
        for parameter in hf_model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    return hf_model


def test_deit_matches_transformers_deit_with_teacher_with_copied_weights():
    hf_model = random_hf_deit()
    deit = copy_deit_weights_from_hf(small_deit(), hf_model).eval()
    X = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = hf_model(pixel_values=X)
        torch.testing.assert_close(deit.forward_features(X), hf_model.deit(pixel_values=X).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
        class_logits, distillation_logits = deit.forward_heads(X)
        torch.testing.assert_close(class_logits, expected.cls_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(distillation_logits, expected.distillation_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(deit(X), expected.logits, rtol=1e-5, atol=1e-5)  # both average the heads


def test_to_hf_deit_computes_what_the_course_deit_computes():
    torch.manual_seed(1)
    deit = small_deit().eval()
    X = torch.randn(2, 3, 16, 16)
    hf_model = to_hf_deit(deit)
    assert isinstance(hf_model, DeiTForImageClassificationWithTeacher)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixel_values=X).logits, deit(X), rtol=1e-5, atol=1e-5)


def test_copy_weights_rejects_a_different_architecture():
    with pytest.raises(ValueError, match="sizes differ"):
        copy_deit_weights_from_hf(small_deit(num_classes=3), random_hf_deit())


def test_distiller_feeds_the_teacher_the_same_batch_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = SmallCNN(in_channels=3, num_classes=5, width=4)
    student = small_deit()
    distiller = Distiller(student, teacher)
    distiller.train()
    assert student.training and not teacher.training  # the teacher's batch norm stays frozen
    X, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    logits = distiller(X)
    torch.testing.assert_close(logits.teacher_logits, teacher(X))
    torch.testing.assert_close(logits, (logits.class_logits + logits.distillation_logits) / 2)
    loss = distiller.loss_fn(logits, labels)
    torch.testing.assert_close(loss, hard_distillation_loss(logits.class_logits, logits.distillation_logits,
                                                            labels, logits.teacher_logits))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.dist_token.grad is not None
    eval_logits = distiller.eval()(X)  # the validation pass: the student's averaged heads, plain CE
    torch.testing.assert_close(distiller.loss_fn(eval_logits, labels), F.cross_entropy(eval_logits, labels))


def test_fit_trains_a_distilled_student():
    torch.manual_seed(0)
    teacher = SmallCNN(in_channels=3, num_classes=5, width=4)
    student = small_deit()
    distiller = Distiller(student, teacher, loss="soft", temperature=2.0, alpha=0.5)
    X, y = torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))
    before = student.head_dist.weight.clone()
    history = fit(distiller, (X, y), 1, torch.optim.AdamW(student.parameters(), lr=1e-3),
                  loss_fn=distiller.loss_fn, valid_data=(X, y), batch_size=8, device="cpu")
    assert len(history["valid_accuracy"]) == 1
    assert not torch.equal(before, student.head_dist.weight)
    with pytest.raises(ValueError, match="loss"):
        Distiller(student, teacher, loss="medium")
