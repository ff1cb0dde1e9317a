"""What the engine hands to loss terms: the batch, model outputs, and the setup and epoch contexts.

A run holds *named models* (``student`` and ``teacher`` are the common case and the default names;
mutual learning has peers, multi-teacher distillation several teachers). Each model reads one named
input of the batch (``input`` unless it says otherwise; a data set may add fields such as a privileged
view) and has a role: ``trainable`` (gets gradients) or ``frozen`` (eval mode, no_grad).

A term reads models by name. Most terms compare one student with one teacher: they read
``batch.student`` / ``batch.teacher`` and ``ctx.student_shapes`` / ``ctx.teacher_shapes``, and the
objective hands each term a *view* in which those two shorthands point at the models the term was
configured with (``method.params.<term>.teacher: teacher2``). Terms over several models read
``batch.outputs[name]`` and ``ctx.shapes[name]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from distillab.data.base import DataBundle

TRAINABLE, FROZEN = "trainable", "frozen"
MAIN_INPUT, LABEL, INDEX = "input", "label", "index"  # the batch fields every data set provides


@dataclass
class ModelOutputs:
    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


def _missing(kind: str, name: str, known: Sequence[str]) -> KeyError:
    return KeyError(f"no {kind} named {name!r} in this run (models: {', '.join(known) or 'none'})")


@dataclass
class Batch:
    """What a term sees at one training step. ``epoch`` counts from 1.

    inputs / labels / index: the main input (as the student reads it), the labels, the sample indices.
    student / teacher: the outputs of the models the term reads in those roles (None where absent).
    outputs: every model's outputs by name. fields: every named input of the batch, prepared
    (normalised, augmented), ``"input"`` included.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    student: ModelOutputs | None
    teacher: ModelOutputs | None
    epoch: int
    stage: str | None = None  # name of the pre-training stage running, None in the main stage
    outputs: dict[str, ModelOutputs] = field(default_factory=dict)
    fields: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.outputs:  # built by hand (tests, scripts): the two shorthands are the only models
            self.outputs = {n: o for n, o in (("student", self.student), ("teacher", self.teacher)) if o is not None}
        if not self.fields:
            self.fields = {MAIN_INPUT: self.inputs}

    def output(self, name: str) -> ModelOutputs:
        if name not in self.outputs:
            raise _missing("model output", name, list(self.outputs))
        return self.outputs[name]

    def view(self, roles: Mapping[str, str]) -> "Batch":
        """This batch with ``student`` / ``teacher`` pointing at the models named in ``roles``."""
        return dataclasses.replace(self, student=self.outputs.get(roles.get("student", "student")),
                                   teacher=self.outputs.get(roles.get("teacher", "teacher")))


@dataclass
class SetupContext:
    """Handed to ``LossTerm.setup`` once, before training: sizes for connectors and banks.

    shapes: model name -> {feature name: probed shape (batch of 2 included)}; models: name -> module;
    roles: name -> "trainable" / "frozen". ``student_shapes`` / ``teacher_shapes`` / ``student`` /
    ``teacher`` are those of the models the term reads in these roles.
    """

    num_classes: int
    num_train: int
    student_shapes: dict[str, torch.Size]
    teacher_shapes: dict[str, torch.Size]
    data: "DataBundle | None" = None
    train_labels: torch.Tensor | None = None
    student: nn.Module | None = None  # the models themselves, for terms that read their layers (OFD's BN margins)
    teacher: nn.Module | None = None
    shapes: dict[str, dict[str, torch.Size]] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.shapes:
            self.shapes = {"student": dict(self.student_shapes)}
            if self.teacher is not None or self.teacher_shapes:
                self.shapes["teacher"] = dict(self.teacher_shapes)
        if not self.models:
            self.models = {n: m for n, m in (("student", self.student), ("teacher", self.teacher)) if m is not None}
        if not self.roles:
            self.roles = {"student": TRAINABLE, **({"teacher": FROZEN} if "teacher" in self.shapes else {})}

    def names(self, role: str) -> list[str]:
        """The models with ``role`` ("trainable" or "frozen"), in run order."""
        return [n for n, r in self.roles.items() if r == role]

    def view(self, roles: Mapping[str, str]) -> "SetupContext":
        s, t = roles.get("student", "student"), roles.get("teacher", "teacher")
        return dataclasses.replace(self, student_shapes=self.shapes.get(s, {}), teacher_shapes=self.shapes.get(t, {}),
                                   student=self.models.get(s), teacher=self.models.get(t))


@dataclass
class EpochContext:
    """Handed to ``on_epoch_start`` of every term and data schedule before each main-stage epoch.

    extract(model, names, indices=None): features ``names`` of a model ("student", "teacher" or any
        model name) over the training set (or the samples ``indices``, in that order), eval mode,
        test-time transforms, the model's own input: {name: (N, ...)}.
    set_subset(indices): train this epoch (and later ones, until changed) on these sample indices only
        (None: all); the learning-rate schedule follows epochs, not steps, so it is unaffected.
    log(message): an event worth keeping (printed and appended to the run folder's events.log).
    """

    epoch: int
    num_train: int
    train_labels: torch.Tensor | None
    device: torch.device
    extract: Callable[..., dict[str, torch.Tensor]]
    set_subset: Callable[[torch.Tensor | None], None]
    log: Callable[[str], None]

    def view(self, roles: Mapping[str, str]) -> "EpochContext":
        """This context with ``extract("student"/"teacher", ...)`` reading the models named in ``roles``."""
        if not roles:
            return self
        extract = self.extract

        def remapped(model: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            return extract(roles.get(model, model), *args, **kwargs)

        return dataclasses.replace(self, extract=remapped)
