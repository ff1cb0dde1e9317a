"""Terms of other training set-ups: mutual learning (DML), several teachers (ensemble average, CA-MKD),
generalized distillation (soft cross-entropy), teacher-free KD (Tf-KD); their presets.

DML and the multi-teacher terms read several models: they choose them from the run's models in
:meth:`~distillab.losses.base.LossTerm.bind` (all trainable ones, all frozen ones, or a list given as an
option) and read ``batch.outputs[name]``. Every value is computed in fp32 (fp64 passes unchanged), from
log-softmaxes, whatever the logits' dtype.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

from distillab.core.contract import FROZEN, TRAINABLE
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.response import _at_least_fp32
from distillab.methods import register_method

Reduction = Literal["batchmean", "elementwise_mean"]


def _log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.log_softmax(_at_least_fp32(logits) / temperature, dim=1)


def _kl(log_target: torch.Tensor, log_model: torch.Tensor, reduction: Reduction | Literal["none"]) -> torch.Tensor:
    """KL(target || model) from two (B, C) log-distributions: summed over classes and averaged over the batch
    (``batchmean``), averaged over all B x C elements (``elementwise_mean``: ``nn.KLDivLoss()``'s old default,
    C times smaller), or one value per sample (``none``)."""
    per_element = F.kl_div(log_model, log_target, reduction="none", log_target=True)
    if reduction == "none":
        return per_element.sum(dim=1)
    if reduction == "elementwise_mean":
        return per_element.sum() / per_element.numel()
    return per_element.sum() / per_element.shape[0]


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _check_reduction(reduction: str | None) -> None:
    if reduction not in (None, "batchmean", "elementwise_mean"):
        raise ValueError(f"reduction must be 'batchmean' or 'elementwise_mean', got {reduction!r}")


def _distinct(option: str, names: Sequence[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if isinstance(names, str) or not names or len(set(names)) != len(names):
        raise ValueError(f"{option} must be a list of distinct model names, got {names!r}")
    return tuple(names)


def _check_listed(option: str, names: Sequence[str], models: Mapping[str, str], role: str, why: str) -> None:
    """Every model named in option ``option`` exists in the run and has ``role``; the error names the fix."""
    for name in names:
        if name not in models:
            raise ValueError(f"{option} names {name!r}, but the run has no model of that name (models: "
                             f"{', '.join(models)}): add it under `models:` with role: {role}, or remove it "
                             f"from the term's `{option}`")
        if models[name] != role:
            raise ValueError(f"{option} names {name!r}, which is {models[name]}: {why}; give it role: {role} "
                             f"under `models:`, or remove it from the term's `{option}`")


def _bound(term: LossTerm, names: tuple[str, ...] | None) -> tuple[str, ...]:
    if names is None:
        raise RuntimeError(f"{type(term).__name__} reads the models chosen in bind(): call bind() first")
    return names


# ---------------------------------------------------------------------------- Deep Mutual Learning


@LOSSES.register("dml", description="Deep Mutual Learning: KL from every other peer (detached) to each peer")
class DML(LossTerm):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu, CVPR 2018, arXiv 1706.00384).

    K peers (trainable models) learn together, each from the labels (the ``ce`` term with
    ``models: trainable``) and from the others' predictions. For peer k, with p^T = softmax(z / T):

        L_k = T^2 * c_K * sum_{l != k} KL(p_l^T || p_k^T),   batch mean,

    where p_l is detached (a constant target: peer k's gradient never reaches peer l) and
    c_K = 1 / (K - 1) (``reduce="mean"``, the paper's formula) or 1 (``reduce="sum"``, the official
    code, YingZhangDUT/Deep-Mutual-Learning ``train_models.py``); the two agree for K = 2. Each L_k is
    returned as a part named after peer k, so the term is the sum over peers.

    Reference defaults: T = 1 (neither paper nor code has a temperature; the T^2 factor is 1 there), the
    objective is CE + DML with weight 1 for each peer (preset ``dml``). The official code adds 1e-8 inside
    the log ratio; here the KL comes from two log-softmaxes (equal up to that 1e-8, and finite for any logits).

    peers: the trainable models that learn from each other (default: every trainable model of the run;
        at least two).

    Update order: the paper updates the peers one after the other (update peer 1, recompute its
    predictions, update peer 2, ...); most PyTorch ports update all peers at once from one forward pass,
    each against the others' detached predictions. The preset uses the engine's ``joint`` step (the
    ports); ``method.step=sequential`` gives the paper's order at K forward passes per batch.
    """

    needs_teacher = False

    def __init__(self, temperature: float = 1.0, reduce: Literal["mean", "sum"] = "mean",
                 peers: list[str] | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' (the paper: 1/(K-1) over the other peers) or 'sum' "
                             f"(the official code), got {reduce!r}")
        self.temperature, self.reduce = temperature, reduce
        self.peer_option = _distinct("peers", peers)
        self.peers: tuple[str, ...] | None = None  # chosen in bind

    def bind(self, models: Mapping[str, str]) -> None:
        if self.peer_option is not None:
            _check_listed("peers", self.peer_option, models, TRAINABLE, "DML peers are trained together")
            peers = self.peer_option
        else:
            peers = tuple(n for n, role in models.items() if role == TRAINABLE)
        if len(peers) < 2 and self.peer_option is not None:
            raise ValueError(f"peers lists {', '.join(peers)} only: list at least two trainable models")
        if len(peers) < 2:
            raise ValueError(f"dml needs at least two trainable models (peers), the run has {len(peers)} "
                             f"({', '.join(peers) or 'none'}): add a peer under `models:` with role: trainable")
        self.peers = peers

    def reads(self) -> dict[str, tuple[str, ...]]:
        return {name: () for name in _bound(self, self.peers)}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        peers = _bound(self, self.peers)
        log_p = {name: _log_probs(batch.output(name).logits, self.temperature) for name in peers}
        scale = self.temperature**2 / ((len(peers) - 1) if self.reduce == "mean" else 1)
        return {k: scale * sum(_kl(log_p[other].detach(), log_p[k], "batchmean") for other in peers if other != k)
                for k in peers}



register_method(
    "dml",
    "Deep Mutual Learning: every trainable model learns from the labels and from the others (KL, T = 1)",
    {"ce": ("ce", 1.0, {"models": "trainable"}), "dml": ("dml", 1.0)},
    reference="Zhang et al. 2018 (arXiv 1706.00384); YingZhangDUT/Deep-Mutual-Learning train_models.py",
    step="joint",
    paradigm="mutual",
)


# ---------------------------------------------------------------------------- several teachers


class _OverTeachers(LossTerm):
    """A student (the model in the student role) and N frozen teachers: ``teachers`` lists them (default:
    every frozen model of the run, in run order)."""

    def __init__(self, teachers: list[str] | None = None) -> None:
        super().__init__()
        self.teacher_option = _distinct("teachers", teachers)
        self.teachers: tuple[str, ...] | None = None  # chosen in bind

    def bind(self, models: Mapping[str, str]) -> None:
        self.check_student(models)
        if self.teacher_option is not None:
            _check_listed("teachers", self.teacher_option, models, FROZEN, "teachers are not trained")
            self.teachers = self.teacher_option
        else:
            self.teachers = tuple(n for n, role in models.items() if role == FROZEN)
            if not self.teachers:
                raise ValueError("needs at least one frozen teacher, the run has none: set `teacher` "
                                 "(teacher.checkpoint or teacher.config) or add teachers under `models:` "
                                 "with role: frozen")

    def reads(self) -> dict[str, tuple[str, ...]]:
        return {self.roles["student"]: (), **{name: () for name in _bound(self, self.teachers)}}

    def setup(self, ctx: SetupContext) -> None:
        for name in _bound(self, self.teachers):
            classes = getattr(ctx.models.get(name), "num_classes", None)
            if classes is not None and classes != ctx.num_classes:
                raise ValueError(f"teacher {name!r} predicts {classes} classes, the data set has "
                                 f"{ctx.num_classes}: every teacher must predict the data set's classes")


@LOSSES.register("mtkd", description="multi-teacher KD: KL to the (arithmetic or geometric) mean of the teachers")
class MultiTeacherKD(_OverTeachers):
    """Multi-teacher KD with an ensemble-average target (Hinton, Vinyals & Dean 2015, arXiv 1503.02531).

    With N teachers, weights w_m (normalised to sum to 1) and p^T = softmax(z / T):

        mean="arith":  q = sum_m w_m p_m^T                            (the paper's ensemble average)
        mean="geom":   q = softmax(sum_m w_m log p_m^T)               (average of log-probabilities,
                                                                       renormalised; = softmax(sum_m w_m z_m / T))
        L = T^2 * (1/B) * sum_i KL(q_i || p_s,i^T).

    Reference defaults: T = 4 and CE 0.1 + KD 0.9 (the project's Hinton-KD preset; the paper gives no single
    pair), equal weights. With one teacher this is ``kd``.

    teachers: the frozen models to average (default: every frozen model of the run).
    weights: one non-negative weight per teacher, in the order of ``teachers`` (default: equal).

    The baseline CA-MKD's code calls AVER-MKD (``--ensemble_method AVERAGE_LOSS``, Rorozhl/CA-MKD
    ``helper/loops.py``) averages the N KL *losses*, (1/N) sum_m KL(p_m^T || p_s^T), rather than taking the KL
    to the averaged target as here and in Hinton et al.; the two differ (by Jensen, the loss average is the
    larger) and have the same minimiser only when the teachers agree.
    """

    def __init__(self, temperature: float = 4.0, mean: Literal["arith", "geom"] = "arith",
                 weights: list[float] | None = None, teachers: list[str] | None = None) -> None:
        super().__init__(teachers)
        _check_temperature(temperature)
        if mean not in ("arith", "geom"):
            raise ValueError(f"mean must be 'arith' (average of probabilities) or 'geom' (of log-probabilities), "
                             f"got {mean!r}")
        if weights is not None and (not weights or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        self.temperature, self.mean, self.weights = temperature, mean, weights

    def bind(self, models: Mapping[str, str]) -> None:
        super().bind(models)
        if self.weights is not None and len(self.weights) != len(self.teachers):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.teachers)} teachers "
                             f"({', '.join(self.teachers)}): give one weight per teacher, in that order")

    def forward(self, batch: Batch) -> torch.Tensor:
        teachers = _bound(self, self.teachers)
        log_s = _log_probs(batch.student.logits, self.temperature)
        log_t = torch.stack([_log_probs(batch.output(n).logits, self.temperature) for n in teachers])  # (N, B, C)
        w = torch.tensor(self.weights or [1.0] * len(teachers), dtype=log_t.dtype, device=log_t.device)
        w = (w / w.sum())[:, None, None]
        if self.mean == "arith":
            target = torch.logsumexp(log_t + w.log(), dim=0)  # log sum_m w_m p_m; a zero weight drops its teacher
        else:
            target = F.log_softmax((w * log_t).sum(dim=0), dim=1)
        return self.temperature**2 * _kl(target, log_s, "batchmean")


register_method(
    "mtkd",
    "multi-teacher KD: 0.1 CE + 0.9 KL to the mean of the teachers' softened outputs at T = 4",
    {"ce": ("ce", 0.1), "mtkd": ("mtkd", 0.9, {"temperature": 4.0, "mean": "arith"})},
    reference="Hinton et al. 2015 (arXiv 1503.02531), ensemble average; weights and T of the project's kd preset",
    paradigm="multi_teacher",
)


@LOSSES.register("ca_mkd", description="CA-MKD: per-sample teacher weights from the teachers' CE on the label")
class CAMKD(_OverTeachers):
    """Confidence-Aware Multi-teacher KD (Zhang, Chen & Wang, ICASSP 2022, arXiv 2201.00007).

    For sample i and teacher k (of K), with the teacher's cross-entropy on the label at T = 1
    CE^{k,i} = -log softmax(z_t^{k,i})[y_i]:

        w^{k,i} = (1 / (K - 1)) * (1 - softmax_k(CE^{k,i}))        (sums to 1 over the teachers;
                                                                     the more confident teacher weighs more)
        L = sum_k sum_i w^{k,i} * KL(p_t^{k,i,T} || p_s^{i,T}) * T^2 / (B * K).

    The weights are constants (the teachers are frozen). With K = 1 the weight is 1 (the code's formula
    divides 0 by 0 there). Each teacher's weighted share is returned as a part named after it.

    Reference (Rorozhl/CA-MKD ``helper/loops.py`` ``--ensemble_method CAMKD``, ``distiller_zoo/KD.py``,
    ``train_student.py``): T = 4 (``--kd_T``), CE weight 1 (``-r``), KD weight 1 (``-a``); these are the
    preset ``ca_mkd``. The division by K on top of weights that already sum to 1 is the code's choice, kept
    for reproduction: the term is K times smaller than the weighted KL average.

    Not built: the code's intermediate-feature term (``--distill inter``: per-teacher regressors from the
    student's penultimate feature, MSE weighted the same way), whose weight ``-b`` defaults to 0 in the code.
    """

    def __init__(self, temperature: float = 4.0, teachers: list[str] | None = None) -> None:
        super().__init__(teachers)
        _check_temperature(temperature)
        self.temperature = temperature

    def teacher_weights(self, batch: Batch) -> torch.Tensor:
        """(K, B) per-sample weights, summing to 1 over the teachers."""
        teachers = _bound(self, self.teachers)
        ce = torch.stack([F.cross_entropy(_at_least_fp32(batch.output(n).logits), batch.labels, reduction="none")
                          for n in teachers]).detach()
        if len(teachers) == 1:
            return torch.ones_like(ce)
        return (1.0 - F.softmax(ce, dim=0)) / (len(teachers) - 1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        teachers = _bound(self, self.teachers)
        log_s = _log_probs(batch.student.logits, self.temperature)
        weights = self.teacher_weights(batch)
        scale = self.temperature**2 / (log_s.shape[0] * len(teachers))
        return {name: scale * (w * _kl(_log_probs(batch.output(name).logits, self.temperature), log_s, "none")).sum()
                for name, w in zip(teachers, weights)}


register_method(
    "ca_mkd",
    "CA-MKD: CE + per-sample confidence-weighted KL to each teacher at T = 4 (the code's -r 1 -a 1)",
    {"ce": ("ce", 1.0), "ca_mkd": ("ca_mkd", 1.0, {"temperature": 4.0})},
    reference="Zhang, Chen & Wang 2022 (arXiv 2201.00007); Rorozhl/CA-MKD train_student.py "
              "--ensemble_method CAMKD -r 1 -a 1 --kd_T 4",
    paradigm="multi_teacher",
)


# ---------------------------------------------------------------------------- generalized distillation


@LOSSES.register("soft_ce", description="generalized distillation: CE of the student on the teacher's soft labels")
class SoftCE(LossTerm):
    """Generalized distillation (Lopez-Paz, Bottou, Schölkopf & Vapnik, ICLR 2016, arXiv 1511.03643).

    Soft labels s = softmax(z_t / T); the student is *not* softened and there is no T^2:

        L = (1/B) * sum_i -sum_c s_{i,c} log softmax(z_s,i)_c.

    The objective is (1 - lambda) CE + lambda L, lambda the imitation parameter. This differs from Hinton's KD
    (student softened too, x T^2); as a cross-entropy it is KL(s || p_s) plus the entropy of s, which does not
    depend on the student. In learning using privileged information the teacher reads a privileged input
    (its own ``input`` field); the term does not care which.

    Defaults: the paper sweeps lambda and T and has no single default and no official code; the preset
    ``gd`` uses lambda = 0.5, T = 1, labelled as the project's choice.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, batch: Batch) -> torch.Tensor:
        soft = _log_probs(batch.teacher.logits, self.temperature).exp()
        return -(soft * _log_probs(batch.student.logits)).sum(dim=1).mean()


register_method(
    "gd",
    "generalized distillation: 0.5 CE + 0.5 CE on the teacher's soft labels at T = 1 (project's lambda, T)",
    {"ce": ("ce", 0.5), "soft_ce": ("soft_ce", 0.5, {"temperature": 1.0})},
    reference="Lopez-Paz et al. 2016 (arXiv 1511.03643); lambda = 0.5, T = 1 are the project's choice "
              "(the paper sweeps both)",
    paradigm="privileged",
)


# ---------------------------------------------------------------------------- born-again networks

register_method(
    "ban",
    "born-again networks: CE to the previous generation's softmax at T = 1, no labels (the paper's main variant)",
    {"soft_ce": ("soft_ce", 1.0, {"temperature": 1.0})},
    reference="Furlanello et al. 2018 (arXiv 1805.04770): generation k minimises CE(f_{k-1}(x), f_k(x)); "
              "pipelines chain the generations (distillab pipeline configs/mnist1d/ban.yaml)",
    paradigm="born_again",
)


# ---------------------------------------------------------------------------- teacher-free KD

TFKD_REFERENCE = ("Yuan et al. 2020 (arXiv 1909.11723); yuanli2333/Teacher-free-Knowledge-Distillation "
                  "my_loss_function.py")


@LOSSES.register("tfkd_virtual", description="Tf-KD_reg: KL to a hand-made virtual teacher (no teacher model)")
class TfKDVirtual(LossTerm):
    """Teacher-free KD with a virtual teacher, Tf-KD_reg (Yuan, Tay, Li, Wang & Feng, CVPR 2020, arXiv 1909.11723).

    The virtual teacher puts ``correct_prob`` = a on the true class and (1 - a) / (C - 1) on every other:
    p_d. Two readings of the loss:

        mode="code" (default; yuanli2333/Teacher-free-Knowledge-Distillation ``my_loss_function.py``
        ``loss_kd_regularization``, which produced the reported numbers):
            L = m * KL(softmax(p_d / T) || softmax(z_s)),
            a softmax of the *probability vector* over T (nearly uniform for a = 0.99, T = 20: strong label
            smoothing), the student not softened, no T^2; KL averaged over all B x C elements
            (``nn.KLDivLoss()``'s old default), m = ``multiplier``.
        mode="paper": L = m * KL(soften(p_d, T) || softmax(z_s / T)),  batch mean, m = 1 by default.
            The paper's loss is alpha * KL(p^d_tau || p^tau): the student softened, no tau^2, no multiplier.
            It does not say how a probability vector is softened; we read it as softening a teacher whose
            logits are log p_d: soften(p_d, T) = softmax(log p_d / T), proportional to p_d^(1/T).

    The objective is (1 - alpha) CE + alpha L. Reference defaults (code, CIFAR-100 ResNet18,
    ``experiments/base_experiments/base_resnet18/params.json``): a = 0.99 (hard-coded), T = 20, alpha = 0.1,
    m = 100 (preset ``tfkd_reg``); MobileNetV2 uses T = 40, alpha = 0.95, m = 1. The paper asks for a >= 0.9.

    multiplier, reduction: None takes the mode's own: 100 and ``elementwise_mean`` in code mode, 1 and
        ``batchmean`` in paper mode. ``batchmean`` is C times ``elementwise_mean`` (C classes).
    """

    needs_teacher = False

    def __init__(self, correct_prob: float = 0.99, temperature: float = 20.0, multiplier: float | None = None,
                 mode: Literal["code", "paper"] = "code", reduction: Reduction | None = None) -> None:
        super().__init__()
        _check_temperature(temperature)
        _check_reduction(reduction)
        if not 0.0 < correct_prob < 1.0:
            raise ValueError(f"correct_prob must be in (0, 1), got {correct_prob}")
        if mode not in ("code", "paper"):
            raise ValueError(f"mode must be 'code' (the authors' code) or 'paper', got {mode!r}")
        self.correct_prob, self.temperature, self.mode = correct_prob, temperature, mode
        self.multiplier = multiplier if multiplier is not None else (100.0 if mode == "code" else 1.0)
        self.reduction: Reduction = reduction or ("elementwise_mean" if mode == "code" else "batchmean")

    def virtual_teacher(self, labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
        """p_d, shape (B, C): ``correct_prob`` on the label, the rest spread evenly."""
        if num_classes < 2:
            raise ValueError("tfkd_virtual needs at least two classes")
        p = torch.full((len(labels), num_classes), (1.0 - self.correct_prob) / (num_classes - 1),
                       dtype=dtype, device=labels.device)
        return p.scatter(1, labels[:, None], self.correct_prob)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = _at_least_fp32(batch.student.logits)
        p_d = self.virtual_teacher(batch.labels, logits.shape[1], logits.dtype)
        if self.mode == "code":
            log_t, log_s = F.log_softmax(p_d / self.temperature, dim=1), _log_probs(logits)
        else:
            log_t, log_s = F.log_softmax(p_d.log() / self.temperature, dim=1), _log_probs(logits, self.temperature)
        return self.multiplier * _kl(log_t, log_s, self.reduction)


register_method(
    "tfkd_reg",
    "Tf-KD_reg: 0.9 CE + 0.1 KL to a virtual teacher (a = 0.99, T = 20, x100; the code's ResNet18 CIFAR-100)",
    {"ce": ("ce", 0.9),
     "tfkd_virtual": ("tfkd_virtual", 0.1, {"correct_prob": 0.99, "temperature": 20.0, "multiplier": 100.0,
                                             "mode": "code"})},
    reference=TFKD_REFERENCE + ", experiments/base_experiments/base_resnet18/params.json",
    paradigm="teacher_free",
)


@LOSSES.register("tfkd_self", description="Tf-KD_self: KD from the student's own trained copy, x T^2 x multiplier")
class TfKDSelf(LossTerm):
    """Teacher-free KD by self-training, Tf-KD_self (Yuan et al., CVPR 2020, arXiv 1909.11723).

    The teacher is the same architecture trained normally first (give its run as ``teacher.checkpoint``);
    the student is trained again with (1 - alpha) CE + alpha L, L this term:

        L = T^2 * m * KL(softmax(z_t / T) || softmax(z_s / T)),

    with m = ``multiplier`` (code only; "1 in most cases, some cases 10 or 50") and the KL averaged over all
    B x C elements (``reduction="elementwise_mean"``, the code's ``nn.KLDivLoss()``; ``batchmean`` is C times
    larger, so m / C with ``batchmean`` gives the code's value). The paper's formula has neither m nor T^2.

    Reference defaults (``my_loss_function.py`` ``loss_kd_self``; CIFAR-100 ResNet18 self-teacher,
    ``experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json``): alpha = 0.95, T = 6,
    m = 50, i.e. CE 0.05 + tfkd_self 0.95 (preset ``tfkd_self``).
    """

    def __init__(self, temperature: float = 6.0, multiplier: float = 50.0,
                 reduction: Reduction = "elementwise_mean") -> None:
        super().__init__()
        _check_temperature(temperature)
        _check_reduction(reduction)
        self.temperature, self.multiplier, self.reduction = temperature, multiplier, reduction

    def forward(self, batch: Batch) -> torch.Tensor:
        log_t = _log_probs(batch.teacher.logits, self.temperature)
        log_s = _log_probs(batch.student.logits, self.temperature)
        return self.temperature**2 * self.multiplier * _kl(log_t, log_s, self.reduction)


register_method(
    "tfkd_self",
    "Tf-KD_self: 0.05 CE + 0.95 KD from the student's own trained copy (T = 6, x50; the code's ResNet18)",
    {"ce": ("ce", 0.05), "tfkd_self": ("tfkd_self", 0.95, {"temperature": 6.0, "multiplier": 50.0})},
    reference=TFKD_REFERENCE + ", experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json",
    paradigm="teacher_free",
)


# ---------------------------------------------------------------------------- model compression


@LOSSES.register("soft_target", description="CE to soft targets stored with the data (model compression, offline KD)")
class SoftTarget(LossTerm):
    """Model compression (Buciluǎ, Caruana & Niculescu-Mizil, "Model Compression", KDD 2006): a small model
    learns from a large ensemble's predictions on a transfer set (MUNGE pseudo-data plus the training set),
    labelled once, offline. The targets q (probabilities, shape (B, C)) come with the data, as the batch field
    ``field`` (the ``tensors`` data set's ``soft``):

        L = -(1/B) * sum_i sum_c q_{i,c} log softmax(z_s,i / T)_c,    T = 1 by default.

    No teacher network runs during training. The paper trains its mimic network on the ensemble's labels of
    the transfer set; the exact loss it used is not checked here (cross-entropy to the probabilities is this
    project's choice, the usual one since Hinton et al. 2015).
    """

    needs_teacher = False

    def __init__(self, temperature: float = 1.0, field: str = "soft") -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.field = temperature, field
        self.input_fields = (field,)

    def forward(self, batch: Batch) -> torch.Tensor:
        targets = batch.fields[self.field].float()
        return -(targets * _log_probs(batch.student.logits, self.temperature)).sum(dim=1).mean()


register_method(
    "compress",
    "model compression: CE to an ensemble's probabilities stored with a (MUNGE) transfer set, no teacher at run time",
    {"soft_target": ("soft_target", 1.0)},
    reference="Bucilua, Caruana & Niculescu-Mizil 2006 (KDD); the transfer set by the munge pipeline step",
    paradigm="compression",
)
