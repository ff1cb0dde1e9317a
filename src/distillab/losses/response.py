"""Response-based terms: cross-entropy on labels and Hinton's KD on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillab.losses.base import LOSSES, Batch, LossTerm
from distillab.methods import register_method


@LOSSES.register("ce", description="cross-entropy on the labels (optionally label-smoothed)")
class CrossEntropy(LossTerm):
    """Cross-entropy of the student's logits against the labels.

    label_smoothing: mass spread uniformly over the classes (Szegedy et al. 2016); 0 is plain CE.
    """

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(batch.student.logits.float(), batch.labels, label_smoothing=self.label_smoothing)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) at temperature T, times T^2, averaged over the batch; computed in log space, fp32."""
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2


@LOSSES.register("kd", description="Hinton KD: KL between softened teacher and student outputs, x T^2")
class KD(LossTerm):
    """Vanilla knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531).

    L = T^2 * (1/B) * sum_i KL(softmax(z_t,i / T) || softmax(z_s,i / T)).

    Reference defaults (RepDistiller ``DistillKL``, mdistiller ``KD``): T = 4; on CIFAR-100 the
    objective is 0.1 CE + 0.9 KD (RepDistiller's ``-r 0.1 -a 0.9``). Both references compute the same
    value as here; we take the KL from two log-softmaxes (``log_target``) in fp32, so it stays finite
    under bf16 autocast and for large logits.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        return kd_loss(batch.student.logits, batch.teacher.logits, self.temperature)


register_method(
    "ce",
    "labels only: cross-entropy training of a teacher or of the student baseline",
    {"ce": ("ce", 1.0)},
)
register_method(
    "kd",
    "Hinton KD: 0.1 CE + 0.9 KL at T = 4 (RepDistiller's CIFAR-100 preset)",
    {"ce": ("ce", 0.1), "kd": ("kd", 0.9, {"temperature": 4.0})},
    reference="Hinton et al. 2015; RepDistiller train_student.py -r 0.1 -a 0.9 --kd_T 4",
)
