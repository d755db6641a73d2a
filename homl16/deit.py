"""DeiT (data-efficient image transformers): a ViT with a distillation token, taught by a CNN teacher.

DeiT adds a second learnable token next to the class token. Both go through the encoder with the
patch tokens; a head on the class token learns from the true labels, and a second head on the
distillation token learns to reproduce a teacher's predictions (a CNN, whose inductive bias the
student picks up that way). At inference the two heads' logits are averaged (or one is used).

The course's ``DeiT`` computes exactly what transformers' ``DeiTForImageClassificationWithTeacher``
does (``copy_deit_weights_from_hf`` / ``to_hf_deit`` move weights between the two, through
``homl16.weights.copy_weights``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from homl16.checks import check_rank
from homl16.vit import ViT, hf_config_sizes
from homl16.vit import paired_parameters as vit_paired_parameters
from homl16.weights import copy_weights, linear_pairs

INFERENCE_HEADS = ("average", "class", "distillation")


class DeiT(ViT):
    """A ViT with a distillation token and two heads (the constructor is ``ViT``'s).

    ``forward_heads``: (B, in_channels, img_size, img_size) -> (class_logits, distillation_logits),
    each (B, num_classes), from the class token (position 0) and the distillation token (position 1).
    ``forward`` returns both in training mode (the loss needs both); in eval mode it returns
    (B, num_classes): the average of the two heads, or one of them if ``inference_head`` is
    "class" or "distillation".
    """

    def __init__(self, img_size=224, patch_size=16, in_channels=3, num_classes=1000, embed_dim=768,
                 depth=12, num_heads=12, ff_dim=3072, dropout=0.1, inference_head="average"):
        super().__init__(img_size, patch_size, in_channels, num_classes, embed_dim, depth, num_heads,
                         ff_dim, dropout)
        num_patches = (img_size // patch_size) ** 2
        self.dist_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 2, embed_dim) * 0.02)  # 2 extra tokens
        self.head_dist = nn.Linear(embed_dim, num_classes)
        self.inference_head = inference_head

    @property
    def inference_head(self):
        return self._inference_head

    @inference_head.setter
    def inference_head(self, value):
        if value not in INFERENCE_HEADS:
            raise ValueError(f"inference_head must be one of {INFERENCE_HEADS}, got {value!r}")
        self._inference_head = value

    def prefix_tokens(self, batch_size):
        """The class token and the distillation token, placed before the patch tokens: (B, 2, D)."""
        return torch.cat([self.cls_token, self.dist_token], dim=1).expand(batch_size, -1, -1)

    def forward_heads(self, X):
        Z = self.forward_features(X)
        return self.head(Z[:, 0]), self.head_dist(Z[:, 1])

    def forward(self, X):
        class_logits, distillation_logits = self.forward_heads(X)
        if self.training:
            return class_logits, distillation_logits
        if self.inference_head == "class":
            return class_logits
        if self.inference_head == "distillation":
            return distillation_logits
        return (class_logits + distillation_logits) / 2


def check_distillation_inputs(class_logits, distillation_logits, labels, teacher_logits):
    for name, logits in (("class_logits", class_logits), ("distillation_logits", distillation_logits),
                         ("teacher_logits", teacher_logits)):
        check_rank(name, logits, 2, "(batch, num_classes)")
        if logits.shape != class_logits.shape:
            raise ValueError(f"{name} has shape {tuple(logits.shape)}, "
                             f"class_logits {tuple(class_logits.shape)}")
    check_rank("labels", labels, 1, "(batch,)")
    if len(labels) != len(class_logits):
        raise ValueError(f"{len(labels)} labels for a batch of {len(class_logits)} logits")


def hard_distillation_loss(class_logits, distillation_logits, labels, teacher_logits):
    """DeiT's hard-label distillation loss, a scalar:

    ½ CE(class head, true labels) + ½ CE(distillation head, the teacher's predicted labels).
    All logits (B, num_classes), labels (B,). The teacher gets no gradient.
    """
    check_distillation_inputs(class_logits, distillation_logits, labels, teacher_logits)
    teacher_labels = teacher_logits.detach().argmax(dim=1)  # (B,): the teacher's hard decisions
    return (F.cross_entropy(class_logits, labels) + F.cross_entropy(distillation_logits, teacher_labels)) / 2


def soft_distillation_loss(class_logits, distillation_logits, labels, teacher_logits, temperature=3.0,
                           alpha=0.1):
    """Soft distillation (Hinton et al.) on the distillation head, a scalar:

    (1 - α) CE(class head, labels) + α T² KL(softmax(teacher / T) ‖ softmax(distillation head / T)),
    the KL summed over classes and averaged over the batch (T² keeps the gradient scale independent
    of T). Defaults: the DeiT paper's soft-distillation setting, T = 3 and α = 0.1.
    """
    check_distillation_inputs(class_logits, distillation_logits, labels, teacher_logits)
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    kl = F.kl_div(F.log_softmax(distillation_logits / temperature, dim=1),
                  F.log_softmax(teacher_logits.detach() / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * F.cross_entropy(class_logits, labels) + alpha * temperature**2 * kl


DISTILLATION_LOSSES = {"hard": hard_distillation_loss, "soft": soft_distillation_loss}


class Distiller(nn.Module):
    """A DeiT student and a frozen teacher, packaged so that ``homl16.train.fit`` trains the student.

    In training mode ``forward(X)`` (X: (B, C, H, W), already augmented by ``fit``) runs the teacher
    on the very same batch and returns the student's prediction (B, num_classes), the average of its
    two heads, so ``fit``'s accuracy is the one the student will have at inference; the tensor also
    carries, as attributes, what the loss needs: ``class_logits``, ``distillation_logits`` and
    ``teacher_logits``. ``loss_fn(logits, labels)`` (give it to ``fit``) computes the distillation loss
    from them, or plain cross-entropy on logits without them (the validation pass). In eval mode
    ``forward`` is the student's. The teacher stays in eval mode (frozen batch-norm statistics).
    """

    def __init__(self, student, teacher, loss="hard", **loss_kwargs):
        super().__init__()
        if loss not in DISTILLATION_LOSSES:
            raise ValueError(f"loss must be one of {sorted(DISTILLATION_LOSSES)}, got {loss!r}")
        self.student, self.teacher = student, teacher.eval().requires_grad_(False)
        self.loss, self.loss_kwargs = loss, loss_kwargs

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, X):
        if not self.training:
            return self.student(X)
        with torch.no_grad():
            teacher_logits = self.teacher(X)
        class_logits, distillation_logits = self.student(X)
        logits = (class_logits + distillation_logits) / 2
        logits.class_logits, logits.distillation_logits = class_logits, distillation_logits
        logits.teacher_logits = teacher_logits
        return logits

    def loss_fn(self, logits, labels):
        if not hasattr(logits, "teacher_logits"):
            return F.cross_entropy(logits, labels)
        return DISTILLATION_LOSSES[self.loss](logits.class_logits, logits.distillation_logits, labels,
                                              logits.teacher_logits, **self.loss_kwargs)


def paired_parameters(deit, hf_model):
    """(course, transformers) tensor pairs of ``deit`` and a transformers
    ``DeiTForImageClassificationWithTeacher``: the ViT's pairs (``homl16.vit.paired_parameters``)
    plus what DeiT adds, the distillation token and the two heads."""
    return [*vit_paired_parameters(deit, hf_model.deit),
            (deit.dist_token, hf_model.deit.embeddings.distillation_token),
            *linear_pairs(deit.head, hf_model.cls_classifier),
            *linear_pairs(deit.head_dist, hf_model.distillation_classifier)]


def copy_deit_weights_from_hf(deit, hf_model):
    """Copy a ``DeiTForImageClassificationWithTeacher``'s weights into the course's ``deit``.

    The two then compute the same function: ``deit.eval()(X)`` equals ``hf_model(X).logits`` (the
    average of the heads) and ``deit.forward_heads(X)`` its ``cls_logits`` and ``distillation_logits``.
    The LayerNorm eps is taken from the config. Returns ``deit``.
    """
    copy_weights(paired_parameters(deit, hf_model), to="course", model_name="DeiT")
    deit.set_layer_norm_eps(hf_model.config.layer_norm_eps)
    return deit


def hf_deit_config(deit, **kwargs):
    """A transformers ``DeiTConfig`` with the sizes of the course's ``deit`` (no dropout); ``kwargs``
    (e.g. ``id2label``) are passed on."""
    from transformers import DeiTConfig

    kwargs.setdefault("num_labels", deit.num_classes)
    return DeiTConfig(**hf_config_sizes(deit), **kwargs)


def to_hf_deit(deit, **config_kwargs):
    """A transformers ``DeiTForImageClassificationWithTeacher`` (eval mode) computing what ``deit`` does."""
    from transformers import DeiTForImageClassificationWithTeacher

    hf_model = DeiTForImageClassificationWithTeacher(hf_deit_config(deit, **config_kwargs)).eval()
    copy_weights(paired_parameters(deit, hf_model), to="transformers", model_name="DeiT")
    return hf_model


def small_hf_deit(image_size=32, patch_size=4, hidden_size=64, depth=4, num_heads=4, num_labels=10, seed=0):
    """A small, randomly initialised (from ``seed``) ``DeiTForImageClassificationWithTeacher`` and its
    image processor: the offline stand-in for ``facebook/deit-base-distilled-patch16-224`` (a 224-pixel,
    768-wide, 12-layer distilled DeiT with the same two heads)."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher, DeiTImageProcessorPil

    config = DeiTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                        num_hidden_layers=depth, num_attention_heads=num_heads,
                        intermediate_size=2 * hidden_size, num_labels=num_labels)
    size = {"height": image_size, "width": image_size}
    processor = DeiTImageProcessorPil(size=size, crop_size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    with torch.random.fork_rng():  # the same weights for a seed, without touching the global RNG
        torch.manual_seed(seed)
        model = DeiTForImageClassificationWithTeacher(config)
    return model, processor
