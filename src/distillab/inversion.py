"""Data-free synthesis by model inversion: DeepInversion (DI) and Adaptive DeepInversion (ADI).

Yin, Molchanov, Li, Alvarez, Mallya, Hoiem, Jha, Kautz, "Dreaming to Distill: Data-free Knowledge Transfer
via DeepInversion", CVPR 2020, arXiv 1912.08795. Reference code: NVlabs/DeepInversion (``deepinversion.py``,
``imagenet_inversion.py``, ``cifar10/deepinversion_cifar10.py``).

A batch of inputs x, initialised N(0, 1) and the only parameters, is optimised with Adam so that a frozen
teacher in eval mode classifies it as the target labels y while every BatchNorm layer sees the statistics it
stored during training::

    min_x  main·CE(y, f_T(x̃)) + bn·R_bn + tv_l2·R_tv,l2 + tv_l1·R_tv,l1 + l2·R_l2 + adi·R_adi,
    x̃ = flip(roll(x))   (a fresh random roll by up to ``jitter``, and a flip with p 0.5 if enabled, each step)

Inputs are images (N, C, H, W) or 1-D signals (N, C, L). :class:`Inverter` synthesises one batch and can be
stopped and resumed at any iteration; :func:`synthesise_batches` makes several; :func:`save_grid` draws them.

Where this module departs from the reference code, on purpose:

- **Best batch.** Both reference scripts mean to keep the lowest-loss batch but in effect return the last
  iterate: ``deepinversion.py`` never updates ``best_cost`` (so every iteration with loss < 1e4 overwrites the
  best), and the CIFAR script stores ``inputs.data``, which aliases the tensor Adam keeps updating. Here the
  best batch is the pixels whose (augmented) loss was the lowest, copied before that iteration's step.
- **Random numbers.** One ``torch.Generator`` drives the initial pixels, the rolls, the flips and random
  labels (the reference mixes ``torch`` and Python's ``random``), so a run resumes bit-identically.
- **BatchNorm1d/3d** layers are hooked as well as BatchNorm2d (the reference hooks BatchNorm2d only), so
  1-D CNNs and MLPs with BatchNorm can be inverted.
- **Gradients** are taken with respect to x only (``torch.autograd.grad``): the teacher's and the student's
  ``.grad`` are never touched. The ADI student is put in eval mode, as in the CIFAR script (the ImageNet
  script leaves its ResNet-18 in train mode unless fp16 is on, so its BatchNorm uses batch statistics).
- **Clipping.** ImageNet settings 0 and 1 clamp pixels to the valid ImageNet-normalised range after each
  step; the valid range depends on the data's normalisation, so here it is the option ``pixel_range``
  (off unless given).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from distillab.core.errors import TrainingError, UserError
from distillab.core.files import atomic_file
from distillab.features import FeatureTaps
from distillab.registry import close_matches

# --------------------------------------------------------------------------------------------- losses


def batch_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` over every dim but the channel dim (dim 1).

    (N, C) -> over N; (N, C, L) -> over (N, L); (N, C, H, W) -> over (N, H, W): what a BatchNorm layer
    normalises with in training mode.
    """
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, correction=0)


def bn_statistics_loss(inputs: Sequence[torch.Tensor], bns: Sequence[nn.Module],
                       first_bn_multiplier: float = 1.0) -> torch.Tensor:
    """DeepInversion's feature-distribution regulariser R_bn.

    For BatchNorm layer l with input a_l and batch statistics μ_l, σ²_l (:func:`batch_statistics`, biased)::

        R_bn = Σ_l  w_l · ( ‖σ²_l − running_var_l‖₂ + ‖μ_l − running_mean_l‖₂ ),   w_1 = first_bn_multiplier, else 1

    Non-squared L2 norms, variance (not std), as in the reference hook. ``inputs[i]`` is the input of ``bns[i]``;
    the first layer is the first in module order (ImageNet code: ``first_bn_multiplier`` 10; CIFAR code: 1).
    """
    if len(inputs) != len(bns) or not bns:
        raise ValueError(f"need one input per BatchNorm layer (and at least one), got {len(inputs)} and {len(bns)}")
    total = inputs[0].new_zeros(())
    for i, (a, bn) in enumerate(zip(inputs, bns)):
        mean, var = batch_statistics(a)
        term = (torch.linalg.vector_norm(var - bn.running_var.to(var.dtype))
                + torch.linalg.vector_norm(mean - bn.running_mean.to(mean.dtype)))
        total = total + (first_bn_multiplier if i == 0 else 1.0) * term
    return total


def neighbour_differences(x: torch.Tensor) -> list[torch.Tensor]:
    """x minus its neighbours: for (N, C, H, W) the four of the reference (horizontal, vertical and the two
    diagonals); for 1-D signals (N, C, L) the one along L."""
    if x.dim() == 4:
        return [x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
                x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:]]
    if x.dim() == 3:
        return [x[..., :-1] - x[..., 1:]]
    raise ValueError(f"total variation needs images (N, C, H, W) or signals (N, C, L), got shape {tuple(x.shape)}")


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """R_tv,l2 = Σ_d ‖D_d x‖₂: the Frobenius norm (not squared) of each neighbour difference
    (:func:`neighbour_differences`) over the whole batch, summed over the differences."""
    return sum(torch.linalg.vector_norm(d) for d in neighbour_differences(x))


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    """R_tv,l1 = Σ_d mean |D_d x|: the mean absolute value of each neighbour difference, summed over them.

    (The reference divides by 255 before the mean and multiplies by 255 after: the same value.)"""
    return sum(d.abs().mean() for d in neighbour_differences(x))


def image_l2_prior(x: torch.Tensor, whole_batch: bool = False) -> torch.Tensor:
    """R_l2 = (1/N) Σ_i ‖x_i‖₂ (``deepinversion.py``, ImageNet), or with ``whole_batch`` ‖x‖₂ of the whole batch
    tensor (``cifar10/deepinversion_cifar10.py``, where its weight is 0 by default)."""
    if whole_batch:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def adi_competition_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 3.0,
                         clamp: tuple[float, float] = (0.01, 0.99),
                         order: Literal["code", "paper"] = "code") -> torch.Tensor:
    """Adaptive DeepInversion's competition term R_adi = 1 − clamp(JS', 0, 1).

    P = softmax(z_s / T), Q = softmax(z_t / T), M = (P + Q) / 2, then P, Q, M each clamped to [0.01, 0.99]
    (after M is formed), and with batch-mean KL (sum over classes, mean over samples)::

        code  (default, as the reference computes it):  JS' = ½·KL(M‖P) + ½·KL(M‖Q)
        paper (the textbook Jensen-Shannon it writes):  JS' = ½·KL(P‖M) + ½·KL(Q‖M)

    The reference calls ``KLDivLoss(reduction='batchmean')(log P, M)``, whose target M is the *first* argument
    of the KL, hence the reversed order. Minimising R_adi maximises teacher-student disagreement. T = 3 in both
    reference scripts; the ADI weight is 0 by default (ImageNet README examples: 0.2; CIFAR function default
    0.01, script default 0).
    """
    low, high = clamp
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = 0.5 * (p + q)
    p, q, m = p.clamp(low, high), q.clamp(low, high), m.clamp(low, high)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # KL(a‖b), batch mean
        return (a * (a.log() - b.log())).sum(1).mean()

    js = 0.5 * kl(m, p) + 0.5 * kl(m, q) if order == "code" else 0.5 * kl(p, m) + 0.5 * kl(q, m)
    return 1.0 - js.clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------- settings


class InversionError(UserError, ValueError):
    """Inversion options or a saved inversion state that cannot be used; the message names the option."""


class InversionSettings(BaseModel):
    """Everything that decides the optimisation. Defaults: the reference CIFAR-10 script
    (``cifar10/deepinversion_cifar10.py``: its argparse defaults and the constants in ``get_images``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(256, ge=1)  # samples per batch (--bs)
    iterations: int = Field(2000, ge=1)  # Adam steps per batch, all resolution stages together (--iters_mi)
    lr: float = Field(0.1, gt=0)  # Adam learning rate (--di_lr)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas (torch defaults in the CIFAR script)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: ImageNet's lr_cosine_policy, per stage
    warmup: int = Field(0, ge=0)  # linear warm-up steps of the cosine schedule (ImageNet: 100)
    half_res_iterations: int = Field(0, ge=0)  # first steps on 2x average-pooled inputs (ImageNet setting 0: 2000)
    bn: float = Field(100.0, ge=0)  # weight of R_bn (--r_feature_weight)
    first_bn_multiplier: float = Field(1.0, ge=0)  # extra factor on the first BatchNorm's term (ImageNet: 10)
    tv_l2: float = Field(2.5e-5, ge=0)  # weight of R_tv,l2 (--di_var_scale)
    tv_l1: float = Field(0.0, ge=0)  # weight of R_tv,l1 (ImageNet --tv_l1, 0)
    l2: float = Field(0.0, ge=0)  # weight of R_l2 (--di_l2_scale)
    l2_whole_batch: bool = True  # R_l2 as the norm of the whole batch (CIFAR) or the mean per-sample norm (ImageNet)
    main: float = Field(1.0, ge=0)  # weight of the teacher's cross-entropy to the labels (main_loss_multiplier)
    adi: float = Field(0.0, ge=0)  # weight of R_adi, needs a student (--cig_scale; ImageNet README examples 0.2)
    adi_temperature: float = Field(3.0, gt=0)  # softmax temperature of R_adi (T = 3.0 hard-coded)
    js_order: Literal["code", "paper"] = "code"  # R_adi's KL order, see adi_competition_loss
    detach_student: bool = False  # ADI gradient through the teacher only (reference parameter, default False)
    jitter: int = Field(2, ge=0)  # random roll by up to this many pixels/steps per spatial dim (lim_0, lim_1 = 2)
    flip: bool = False  # flip the last dim with probability 0.5 each step (ImageNet --do_flip)
    pixel_range: tuple[float, float] | None = None  # clamp pixels to [low, high] after each step (None: never)
    random_labels: bool = False  # labels drawn uniformly instead of 0..C-1 repeated (--random_label)

    @model_validator(mode="after")
    def _stages(self) -> "InversionSettings":
        if self.half_res_iterations >= self.iterations:
            raise ValueError(f"half_res_iterations ({self.half_res_iterations}) must be below iterations "
                             f"({self.iterations}) so that the last stage runs at full resolution")
        stages = [n for n in (self.half_res_iterations, self.iterations - self.half_res_iterations) if n]
        if self.lr_schedule == "cosine" and any(self.warmup >= n for n in stages):
            raise ValueError(f"warmup ({self.warmup}) must be shorter than every resolution stage {stages}")
        if not any((self.main, self.bn, self.tv_l2, self.tv_l1, self.l2, self.adi)):
            raise ValueError("every term weight is 0: nothing to optimise")
        if self.pixel_range is not None and self.pixel_range[0] >= self.pixel_range[1]:
            raise ValueError(f"pixel_range {self.pixel_range} must be (low, high) with low < high")
        return self


# The reference ImageNet script (imagenet_inversion.py argparse and deepinversion.py). bs 64 per GPU; flip is
# the DeepInversionClass default and used in the README examples (the CLI flag --do_flip is off by default).
IMAGENET = dict(batch_size=64, lr=0.2, lr_schedule="cosine", warmup=100, bn=0.05, first_bn_multiplier=10.0,
                tv_l2=1e-4, tv_l1=0.0, l2=1e-5, l2_whole_batch=False, jitter=30, flip=True)
# deepinversion.py's setting_id: 0 = 2k steps at half resolution + 1k at full (the default); 1 = 2k at full;
# 2 = 20k at full ("closest to the paper"). Settings 0 and 1 also clip pixels (give pixel_range).
IMAGENET_SETTINGS = {
    0: dict(iterations=3000, half_res_iterations=2000, betas=(0.5, 0.9)),
    1: dict(iterations=2000, half_res_iterations=0, betas=(0.5, 0.9)),
    2: dict(iterations=20000, half_res_iterations=0, betas=(0.9, 0.999)),
}
PRESETS = {"cifar": {}, "imagenet": IMAGENET}


def inversion_settings(preset: str = "cifar", setting: int | None = None, **options: Any) -> InversionSettings:
    """The settings of a preset (``"cifar"``, or ``"imagenet"`` with ImageNet ``setting`` 0, 1 or 2; default 0),
    then ``options`` on top. An unknown option or a wrong type raises :class:`InversionError` naming it."""
    if preset not in PRESETS:
        raise InversionError(f"unknown inversion preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if setting is not None and preset != "imagenet":
        raise InversionError(f"setting={setting} selects an ImageNet setting: use it with preset='imagenet'")
    if preset == "imagenet" and (setting or 0) not in IMAGENET_SETTINGS:
        raise InversionError(f"unknown ImageNet setting {setting!r}: choose 0, 1 or 2")
    staged = IMAGENET_SETTINGS[setting or 0] if preset == "imagenet" else {}
    try:
        return InversionSettings(**{**PRESETS[preset], **staged, **options})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                matches = close_matches(key, list(InversionSettings.model_fields))
                hint = f"did you mean {matches[0]!r}?" if matches else "see InversionSettings for the options"
                lines.append(f"unknown inversion option {key!r}: {hint}")
            else:
                lines.append(f"inversion option {key + ': ' if key else ''}{e['msg']}")
        raise InversionError("; ".join(lines)) from None


def lr_at(settings: InversionSettings, iteration: int) -> float:
    """The learning rate of 0-based step ``iteration``: constant, or the reference's ``lr_cosine_policy``
    (linear warm-up lr·(e+1)/w, then lr·½(1 + cos(π(e−w)/(n−w)))) restarted at each resolution stage."""
    s = settings
    if s.lr_schedule == "constant":
        return s.lr
    start, length = (0, s.half_res_iterations) if iteration < s.half_res_iterations else (
        s.half_res_iterations, s.iterations - s.half_res_iterations)
    e = iteration - start
    if e < s.warmup:
        return s.lr * (e + 1) / s.warmup
    return 0.5 * (1 + math.cos(math.pi * (e - s.warmup) / (length - s.warmup))) * s.lr


def batch_seed(seed: int, batch_index: int) -> int:
    """Independent generator seeds for the batches of one run (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Every given model in eval mode inside the block; each module's own mode restored after."""
    modes = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for model in models:
        if model is not None:
            model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_paths(model: nn.Module) -> list[str]:
    """Module paths of the BatchNorm layers with running statistics, in module order."""
    return [name for name, m in model.named_modules()
            if isinstance(m, BATCHNORMS) and m.running_mean is not None and m.running_var is not None]


# ---------------------------------------------------------------------------------------- synthesiser


ProgressFn = Callable[[int, dict[str, float]], None]


class Inverter:
    """Synthesise one batch by DeepInversion (ADI with a ``student`` and ``adi > 0``), resumably.

    ``teacher``: the model to invert; it is put in eval mode while :meth:`run` runs, and never changed.
    ``input_shape`` / ``num_classes``: one sample's shape and the number of classes (default: the zoo model's
    ``input_shape`` and ``num_classes``). ``preset`` / ``setting`` / ``options``: see :func:`inversion_settings`
    and :class:`InversionSettings` (e.g. ``batch_size=64, iterations=500, bn=10.0, adi=0.2``).
    ``labels``: the target of every sample (default: 0..C-1 repeated, or random with ``random_labels``),
    shifted by ``batch_index * batch_size`` so successive batches continue the cycle. ``seed`` and
    ``batch_index`` seed the generator (:func:`batch_seed`).

    ``run(steps)`` takes up to ``steps`` steps (all remaining by default); :meth:`state_dict` holds everything
    needed to continue, so an Inverter built with the same arguments and given that state continues exactly.
    """

    def __init__(self, teacher: nn.Module, *, input_shape: Sequence[int] | None = None,
                 num_classes: int | None = None, preset: str = "cifar", setting: int | None = None,
                 student: nn.Module | None = None, labels: torch.Tensor | None = None, seed: int = 0,
                 batch_index: int = 0, **options: Any) -> None:
        self.settings = s = inversion_settings(preset, setting, **options)
        self.teacher, self.student = teacher, student
        self.input_shape = tuple(input_shape if input_shape is not None else _model_attr(teacher, "input_shape"))
        self.num_classes = int(num_classes if num_classes is not None else _model_attr(teacher, "num_classes"))
        if len(self.input_shape) not in (2, 3):
            raise InversionError(f"input_shape {self.input_shape}: give one sample's (C, L) or (C, H, W)")
        if s.adi > 0 and student is None:
            raise InversionError(f"adi={s.adi} needs a student to compete with: pass student=... or adi=0")
        self.bn_paths = batchnorm_paths(teacher)
        self.bns = [teacher.get_submodule(p) for p in self.bn_paths]
        if s.bn > 0 and not self.bn_paths:
            raise InversionError(f"{type(teacher).__name__} has no BatchNorm layer with running statistics, which "
                                 "R_bn needs: invert a model with BatchNorm, or pass bn=0")
        self.seed, self.batch_index = seed, batch_index
        self.device = next(teacher.parameters()).device
        self.generator = torch.Generator().manual_seed(batch_seed(seed, batch_index))

        if labels is None and s.random_labels:
            labels = torch.randint(self.num_classes, (s.batch_size,), generator=self.generator)
        elif labels is None:
            labels = (torch.arange(s.batch_size) + batch_index * s.batch_size) % self.num_classes
        if labels.shape != (s.batch_size,):
            raise InversionError(f"labels have shape {tuple(labels.shape)}, expected ({s.batch_size},)")
        self.labels = labels.to(self.device, torch.long)
        init = torch.randn((s.batch_size, *self.input_shape), generator=self.generator)
        self.pixels = init.to(self.device).requires_grad_(True)
        self.optimizer = self._new_optimizer()
        self.iteration = 0  # steps taken
        self.best: torch.Tensor | None = None  # the pixels with the lowest loss so far
        self.best_loss = math.inf

    def _new_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam([self.pixels], lr=self.settings.lr, betas=self.settings.betas, eps=1e-8)

    @property
    def done(self) -> bool:
        return self.iteration >= self.settings.iterations

    def run(self, steps: int | None = None, progress: ProgressFn | None = None) -> dict[str, float]:
        """Take ``steps`` more steps (default: up to ``iterations``); ``progress(iteration, terms)`` after each.
        Returns the last step's unweighted terms, ``total`` and ``lr`` (empty if no step was left)."""
        end = self.settings.iterations if steps is None else min(self.settings.iterations, self.iteration + steps)
        terms: dict[str, float] = {}
        taps = {path: f"{path}:input" for path in self.bn_paths} if self.settings.bn > 0 else {}
        with eval_mode(self.teacher, self.student), FeatureTaps(self.teacher, taps) as hooks:
            while self.iteration < end:
                terms = self._step(hooks)
                if progress is not None:
                    progress(self.iteration, terms)
        return terms

    def _augment(self) -> torch.Tensor:
        """The batch the teacher sees this step: pooled in the half-resolution stage, rolled, maybe flipped."""
        s, x = self.settings, self.pixels
        spatial = x.dim() - 2
        jitter = s.jitter
        if self.iteration < s.half_res_iterations:
            x = (F.avg_pool1d if spatial == 1 else F.avg_pool2d)(x, 2)
            jitter //= 2  # the reference rolls by jitter // 2 at half resolution
        shifts = torch.randint(-jitter, jitter + 1, (spatial,), generator=self.generator).tolist()
        x = torch.roll(x, shifts=shifts, dims=tuple(range(2, 2 + spatial)))
        if s.flip and torch.rand((), generator=self.generator).item() < 0.5:
            x = torch.flip(x, dims=(-1,))
        return x

    def losses(self, x: torch.Tensor, logits: torch.Tensor,
               bn_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms of the objective on the augmented batch ``x``, and their weighted ``total``."""
        s = self.settings
        terms = {"main": F.cross_entropy(logits, self.labels), "tv_l2": total_variation_l2(x),
                 "tv_l1": total_variation_l1(x), "l2": image_l2_prior(x, s.l2_whole_batch)}
        if s.bn > 0:
            missing = [p for p in self.bn_paths if p not in bn_inputs]
            if missing:
                raise RuntimeError(f"BatchNorm layers {missing} were not reached by the teacher's forward pass")
            terms["bn"] = bn_statistics_loss([bn_inputs[p] for p in self.bn_paths], self.bns, s.first_bn_multiplier)
        if s.adi > 0:
            student_logits = self.student(x)
            if s.detach_student:
                student_logits = student_logits.detach()
            terms["adi"] = adi_competition_loss(student_logits, logits, s.adi_temperature, order=s.js_order)
        weights = {"main": s.main, "bn": s.bn, "tv_l2": s.tv_l2, "tv_l1": s.tv_l1, "l2": s.l2, "adi": s.adi}
        terms["total"] = sum(weights[k] * v for k, v in terms.items() if weights[k] != 0)
        return terms

    def _step(self, hooks: FeatureTaps) -> dict[str, float]:
        s = self.settings
        if s.half_res_iterations and self.iteration == s.half_res_iterations:
            self.optimizer = self._new_optimizer()  # the reference starts a fresh Adam at each resolution stage
        lr = lr_at(s, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self._augment()
        logits = self.teacher(x)
        terms = self.losses(x, logits, hooks.pop())
        total = terms["total"]
        (grad,) = torch.autograd.grad(total, self.pixels)
        values = dict(zip(terms, torch.stack([t.detach() for t in terms.values()]).tolist()))
        if not math.isfinite(values["total"]):
            raise TrainingError(f"inversion loss is {values['total']} at step {self.iteration + 1} "
                                f"(terms {values}): lower lr or the term weights")
        if values["total"] < self.best_loss:  # kept before the step: these pixels gave this loss
            self.best_loss, self.best = values["total"], self.pixels.detach().clone()
        self.pixels.grad = grad
        self.optimizer.step()
        if s.pixel_range is not None:
            with torch.no_grad():
                self.pixels.clamp_(*s.pixel_range)
        self.iteration += 1
        return {**values, "lr": lr}

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The best batch so far and its labels (detached, on the teacher's device)."""
        if self.best is None:
            raise RuntimeError("Inverter.result() before any step: call run() first")
        return self.best.clone(), self.labels.clone()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: pixels, Adam, step, best batch and loss, generator, labels, settings."""
        return {"settings": self.settings.model_dump(), "seed": self.seed, "batch_index": self.batch_index,
                "labels": self.labels.cpu(), "pixels": self.pixels.detach().cpu(),
                "optimizer": self.optimizer.state_dict(), "iteration": self.iteration,
                "best": None if self.best is None else self.best.cpu(), "best_loss": self.best_loss,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; the state must come from an Inverter with the same settings."""
        ours = self.settings.model_dump()
        theirs = InversionSettings(**state["settings"]).model_dump()
        differ = [f"{k} (saved {theirs[k]!r}, here {ours[k]!r})" for k in ours if ours[k] != theirs[k]]
        if differ:
            raise InversionError(f"the saved inversion state was made with other settings: {', '.join(differ)}; "
                                 "build the Inverter with the saved settings to resume")
        if tuple(state["pixels"].shape[1:]) != self.input_shape:
            raise InversionError(f"the saved batch has samples of shape {tuple(state['pixels'].shape[1:])}, "
                                 f"this Inverter makes {self.input_shape}")
        self.seed, self.batch_index = state["seed"], state["batch_index"]
        self.labels = state["labels"].to(self.device)
        self.iteration = state["iteration"]
        with torch.no_grad():
            self.pixels.copy_(state["pixels"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = None if state["best"] is None else state["best"].to(self.device)
        self.best_loss = state["best_loss"]
        self.generator.set_state(state["generator"])


def _model_attr(model: nn.Module, name: str) -> Any:
    if not hasattr(model, name):
        raise InversionError(f"{type(model).__name__} does not declare {name}: pass {name}=... to the Inverter")
    return getattr(model, name)


def synthesise_batches(teacher: nn.Module, n_batches: int, *,
                       progress: Callable[[int, int, dict[str, float]], None] | None = None,
                       **inverter_args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_batches`` batches, each by its own :class:`Inverter` (``batch_index`` 0..n-1: its own generator
    seed, and labels continuing the 0..C-1 cycle); ``progress(batch_index, iteration, terms)`` after every
    step. Returns the best batch of each, concatenated, and their labels, on the CPU."""
    images, labels = [], []
    for b in range(n_batches):
        inverter = Inverter(teacher, batch_index=b, **inverter_args)
        step_progress = None if progress is None else (lambda it, terms, b=b: progress(b, it, terms))
        inverter.run(progress=step_progress)
        x, y = inverter.result()
        images.append(x.cpu())
        labels.append(y.cpu())
    return torch.cat(images), torch.cat(labels)


# --------------------------------------------------------------------------------------------- figure


def save_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path,
              class_names: Sequence[str] | None = None, per_class: int = 8, dpi: int = 110) -> Path:
    """One row per class present in ``labels``, up to ``per_class`` samples each: images (N, C, H, W) drawn as
    images (each min-max scaled; RGB for 3 channels, else grey, channel-mean beyond 3), signals (N, C, L) as
    small line plots (one line per channel). Written atomically; the format follows the suffix (PNG default)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    images, labels = images.detach().cpu().float(), labels.detach().cpu()
    if images.dim() not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"need (N, C, L) or (N, C, H, W) samples with one label each, got {tuple(images.shape)} "
                         f"and {len(labels)} labels")
    classes = sorted(labels.unique().tolist())
    is_image = images.dim() == 4
    cell = (1.1, 1.1) if is_image else (1.6, 0.9)
    fig = Figure(figsize=(cell[0] * per_class + 0.8, cell[1] * len(classes) + 0.2), layout="constrained")
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, c in zip(axes, classes):
        picked = (labels == c).nonzero().flatten()[:per_class]
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(picked):
                ax.set_axis_off()
                continue
            sample = images[picked[k]]
            if is_image:
                shown = sample if sample.shape[0] == 3 else sample.mean(0, keepdim=True)
                shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-12)
                if shown.shape[0] == 3:
                    ax.imshow(shown.permute(1, 2, 0).numpy())
                else:
                    ax.imshow(shown[0].numpy(), cmap="gray")
            else:
                for channel in sample:
                    ax.plot(channel.numpy(), lw=0.8)
        name = class_names[int(c)] if class_names is not None else str(int(c))
        row[0].set_ylabel(name, rotation=0, ha="right", va="center")
    path = Path(path)
    with atomic_file(path) as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path
