"""The loss-term interface: what a distillation method is made of.

A method's objective is a weighted sum of named terms. A term is an ``nn.Module`` that declares what
it needs (teacher or not, which features of either model) and may own trainable parameters
(heads, connectors) and state (memory banks); those join the optimiser and the checkpoint because
the term is a submodule of the :class:`~distillab.objective.Objective`.

Feature requests are names: ``"embedding"`` (the pooled penultimate features), ``"stage<i>"`` and
``"preact<i>"`` (entry ``i`` of the model's ``feature_info``, negative ``i`` counts from the end), or
any tap address (``"layer2"``, ``"fc:input"``). They are resolved once per model, shapes are probed
on a dummy batch, and :meth:`LossTerm.setup` receives them to size connectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import torch
from torch import nn

from distillab.registry import Registry

if TYPE_CHECKING:
    from distillab.data.base import DataBundle

LOSSES: Registry = Registry("loss term")


@dataclass
class ModelOutputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Batch:
    """What a term sees at one training step. ``epoch`` counts from 1."""

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    student: ModelOutputs
    teacher: ModelOutputs | None
    epoch: int
    stage: str | None = None  # name of the pre-training stage running, None in the main stage


@dataclass
class SetupContext:
    """Handed to :meth:`LossTerm.setup` once, before training: sizes for connectors and banks."""

    num_classes: int
    num_train: int
    student_shapes: dict[str, torch.Size]
    teacher_shapes: dict[str, torch.Size]
    data: "DataBundle | None" = None
    train_labels: torch.Tensor | None = None
    student: nn.Module | None = None  # the models themselves, for terms that read their layers (OFD's BN margins)
    teacher: nn.Module | None = None


@dataclass
class EpochContext:
    """Handed to ``on_epoch_start`` of every term and data schedule before each main-stage epoch.

    extract(side, names, indices=None): features ``names`` of the "student" or "teacher" over the training
        set (or the samples ``indices``, in that order), eval mode, test-time transforms: {name: (N, ...)}.
    set_subset(indices): train this epoch (and later ones, until changed) on these sample indices only
        (None: all); the learning-rate schedule follows epochs, not steps, so it is unaffected.
    log(message): an event worth keeping (printed and appended to the run folder's events.log).
    """

    epoch: int
    num_train: int
    train_labels: torch.Tensor | None
    device: torch.device
    extract: Callable[[str, Sequence[str]], dict[str, torch.Tensor]]
    set_subset: Callable[[torch.Tensor | None], None]
    log: Callable[[str], None]


class LossTerm(nn.Module):
    """Base class of every loss term.

    Subclasses set ``needs_teacher`` and, where they read features, ``student_features`` /
    ``teacher_features`` (lists of feature names); they implement :meth:`forward` returning a scalar
    tensor, or a dict of named scalar parts whose sum is the term (each part is logged).
    """

    needs_teacher: ClassVar[bool] = True
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()

    def setup(self, ctx: SetupContext) -> None:
        """Build parameters that depend on feature shapes. Called once before training."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Called before every main-stage training epoch (``ctx.epoch`` counts from 1)."""

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
