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
from typing import TYPE_CHECKING, ClassVar

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

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every training epoch (1-based)."""

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
