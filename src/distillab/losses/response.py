"""Response-based terms on logits: cross-entropy, Hinton's KD, decoupled KD; the ce, kd, dkd and ls presets."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from distillab.core.contract import TRAINABLE
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.methods import register_method


@LOSSES.register("ce", description="cross-entropy on the labels (optionally label-smoothed), of one or several models")
class CrossEntropy(LossTerm):
    """Cross-entropy of the student's logits against the labels.

    label_smoothing: mass spread uniformly over the classes (Szegedy et al. 2016); 0 is plain CE.
    models: whose logits: ``"student"`` (the model in the student role; one value, no parts), a list of
        model names, or ``"trainable"`` (every trainable model of the run, chosen in :meth:`bind`: each
        peer of mutual learning). With a list or ``"trainable"`` the term is the sum of one CE per model,
        each returned as a part named after its model.
    """

    needs_teacher = False
    tasks = ("classification", "lm")  # a language model's (N, L, V) logits: per real token

    def __init__(self, label_smoothing: float = 0.0, models: str | list[str] = "student") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        if isinstance(models, str):
            if models not in ("student", "trainable"):
                raise ValueError(f"models must be 'student', 'trainable' or a list of model names, got {models!r} "
                                 f"(one named model: [{models}])")
            self.which = models
            self.names: tuple[str, ...] | None = None  # chosen in bind for "trainable"
        else:
            if not models or len(set(models)) != len(models):
                raise ValueError(f"models must list distinct model names, got {list(models)}")
            self.which = "named"
            self.names = tuple(models)

    def bind(self, models: Mapping[str, str]) -> None:
        if self.which == "student":
            return super().bind(models)
        if self.which == "trainable":
            self.names = tuple(n for n, role in models.items() if role == TRAINABLE)
            return
        for name in self.names:
            if name not in models:
                raise ValueError(f"models names {name!r}, but the run has no model of that name (models: "
                                 f"{', '.join(models)}): add it under `models:` or remove it from the term's `models`")
            if models[name] != TRAINABLE:
                raise ValueError(f"models names {name!r}, which is frozen: its cross-entropy would train nothing; "
                                 "remove it from the term's `models`")

    def reads(self) -> dict[str, tuple[str, ...]]:
        if self.which == "student":
            return super().reads()
        return {name: () for name in self._bound_names()}

    def _bound_names(self) -> tuple[str, ...]:
        if self.names is None:
            raise RuntimeError("ce with models='trainable' reads the models chosen in bind(): call bind() first")
        return self.names

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.which == "student":
            return ce_loss(batch.student.logits, batch.labels, self.label_smoothing)
        return {name: ce_loss(batch.output(name).logits, batch.labels, self.label_smoothing)
                for name in self._bound_names()}


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy in fp32: of a classifier's (N, C) logits per sample, of a language model's (N, L, V)
    per real token (labels -100, ``IGNORE_INDEX``, count nowhere: the mean is over real tokens)."""
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), label_smoothing=label_smoothing)


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


# ---------------------------------------------------------------------------- DKD


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to fp32; fp32 and fp64 pass unchanged (so gradcheck can run in fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _dkd_log_probs(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log of the binary pair [p_gt, 1 - p_gt], shape (B, 2), and log-softmax over the non-target classes,
    shape (B, C - 1). Everything comes from logsumexps of logits, never from logs of probabilities."""
    b, c = logits.shape
    lse_all = logits.logsumexp(dim=1)
    gt = logits.gather(1, target[:, None]).squeeze(1)
    cols = torch.arange(c - 1, device=logits.device).expand(b, c - 1)
    others = logits.gather(1, cols + (cols >= target[:, None]))  # every column but the target, in order
    lse_others = others.logsumexp(dim=1)
    binary = torch.stack([gt - lse_all, lse_others - lse_all], dim=1)
    return binary, others - lse_others[:, None]


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (TCKD, NCKD) at temperature T, each times T^2 and summed over the batch / B."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"dkd: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: both models must predict the same classes")
    if student_logits.shape[1] < 2:
        raise ValueError("dkd needs at least two classes")
    b = student_logits.shape[0]
    bin_s, non_s = _dkd_log_probs(_at_least_fp32(student_logits) / temperature, target)
    bin_t, non_t = _dkd_log_probs(_at_least_fp32(teacher_logits) / temperature, target)
    scale = temperature**2 / b
    tckd = F.kl_div(bin_s, bin_t, reduction="sum", log_target=True) * scale
    nckd = F.kl_div(non_s, non_t, reduction="sum", log_target=True) * scale
    return tckd, nckd


@LOSSES.register("dkd", description="Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL, x T^2")
class DKD(LossTerm):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang 2022, arXiv 2203.08679).

    With p = softmax(z / T), b = [p_gt, 1 - p_gt] and p~ the softmax over the non-target classes only:

        TCKD = KL(b_t || b_s),   NCKD = KL(p~_t || p~_s)
        L = min(epoch / warmup, 1) * T^2 * (alpha * TCKD + beta * NCKD),  averaged over the batch,

    with ``epoch`` counted from 1. The parts ``tckd`` and ``nckd`` are returned already weighted and
    warmed up, so they sum to the term.

    Reference defaults (mdistiller ``mdistiller/distillers/DKD.py`` and ``engine/cfg.py``): alpha 1,
    beta 8, T 4, warmup 20 epochs, CE weight 1; the CIFAR-100 preset is CE 1 + DKD 1. mdistiller's
    ``configs/cifar100/dkd/*.yaml`` keep CE 1 and warmup 20 and change only beta: 6 for wrn_40_2 ->
    wrn_16_2 / wrn_40_1 and vgg13 -> vgg8 / MobileNetV2, 2 for resnet56 -> resnet20 and resnet110 ->
    resnet32, 8 elsewhere (``method.params.dkd.beta`` in our per-pair configs); their lr is the CRD
    protocol's (0.01 for MobileNetV2 / ShuffleNet students, 0.05 otherwise).

    Numerics: mdistiller takes ``log`` of summed, masked probabilities for TCKD (``-inf`` once p_gt
    underflows or reaches 1) and pushes the target logit away with ``- 1000`` for NCKD (wrong when logits
    / T exceed about 1000). Here both parts are computed in log space from logsumexps (log p_gt =
    z_gt - lse(z), log(1 - p_gt) = lse(z without gt) - lse(z); NCKD's softmax runs over the gathered
    non-target logits), in fp32 even for bf16 inputs. The value equals mdistiller's wherever theirs is
    finite, and stays finite for logits of 1e4 and for two classes (NCKD over one class is 0).
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got alpha={alpha}, beta={beta}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 epochs (0: no warm-up), got {warmup}")
        self.alpha, self.beta, self.temperature, self.warmup = alpha, beta, temperature, warmup

    def setup(self, ctx: SetupContext) -> None:
        if ctx.num_classes < 2:
            raise ValueError(f"dkd needs at least two classes, the data set has {ctx.num_classes}")
        t_classes = getattr(ctx.teacher, "num_classes", None)
        if t_classes is not None and t_classes != ctx.num_classes:
            raise ValueError(f"dkd compares logits class by class: the teacher predicts {t_classes} classes, "
                             f"the data set has {ctx.num_classes}; use a teacher trained on the same classes")

    def warmup_factor(self, epoch: int) -> float:
        return min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        tckd, nckd = dkd_parts(batch.student.logits, batch.teacher.logits, batch.labels, self.temperature)
        w = self.warmup_factor(batch.epoch)
        return {"tckd": w * self.alpha * tckd, "nckd": w * self.beta * nckd}


register_method(
    "dkd",
    "Decoupled KD: CE + (TCKD + 8 NCKD) x T^2 at T = 4 with a 20-epoch warm-up (mdistiller's CIFAR-100 preset)",
    {"ce": ("ce", 1.0), "dkd": ("dkd", 1.0, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20})},
    reference="Zhao et al. 2022 (arXiv 2203.08679); mdistiller mdistiller/distillers/DKD.py, "
              "configs/cifar100/dkd/res32x4_res8x4.yaml",
)

# ---------------------------------------------------------------------------- label smoothing

# The labels-only baseline that KD is most often confused with: smoothing tells the model not to be
# overconfident but treats every wrong class alike (dog->wolf costs what dog->car costs), where KD's
# targets carry the teacher's class similarities; label smoothing helps mostly when capacity fits the
# task (Mueller et al. 2019). No teacher is loaded.

register_method(
    "ls",
    "labels only, CE with label smoothing 0.1: wrong classes get uniform mass, not KD's similarity-shaped mass",
    {"ce": ("ce", 1.0, {"label_smoothing": 0.1})},
    reference="Szegedy et al. 2016 (arXiv 1512.00567); Mueller, Kornblith & Hinton 2019 (arXiv 1906.02629)",
)
