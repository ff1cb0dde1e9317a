"""The loss-term interface: what a distillation method is made of.

A method's objective is a weighted sum of named terms. A term is an ``nn.Module`` that declares what
it reads (which models, which of their features) and may own trainable parameters (heads, connectors)
and state (memory banks); those join the optimiser and the checkpoint because the term is a submodule
of the :class:`~distillab.objective.Objective`.

Models are read by name. A term comparing a student with a teacher declares ``student_features`` /
``teacher_features`` (and ``needs_teacher``) and reads ``batch.student`` / ``batch.teacher``; which run
models play those two roles is set per term (``method.params.<term>.teacher: teacher2``; default: the
models called ``student`` and ``teacher``). A term over several models (mutual learning, several
teachers) overrides :meth:`LossTerm.bind` to choose them from the run's models and :meth:`LossTerm.reads`
to declare what it reads, and reads ``batch.outputs[name]``.

Feature requests are names: ``"embedding"`` (the pooled penultimate features), ``"stage<i>"`` and
``"preact<i>"`` (entry ``i`` of the model's ``feature_info``, negative ``i`` counts from the end), or
any tap address (``"layer2"``, ``"fc:input"``). They are resolved once per model, shapes are probed
on a dummy batch, and :meth:`LossTerm.setup` receives them to size connectors.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn

from distillab.core.contract import FROZEN, TRAINABLE, Batch, EpochContext, ModelOutputs, SetupContext
from distillab.registry import Registry

LOSSES: Registry = Registry("loss term")
ROLES = ("student", "teacher")  # the two roles a pairwise term's models play

__all__ = ["LOSSES", "ROLES", "Batch", "EpochContext", "LossTerm", "ModelOutputs", "SetupContext"]


class LossTerm(nn.Module):
    """Base class of every loss term.

    Subclasses set ``needs_teacher`` and, where they read features, ``student_features`` /
    ``teacher_features`` (lists of feature names); they implement :meth:`forward` returning a scalar
    tensor, or a dict of named scalar parts whose sum is the term (each part is logged).
    """

    needs_teacher: ClassVar[bool] = True
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()
    input_fields: tuple[str, ...] = ()  # batch fields the term reads itself (``batch.fields[name]``), e.g. soft targets
    # the outputs it understands: "classification" ((N, C) logits per sample), "lm" ((N, L, V) per token)
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    roles: Mapping[str, str] = {"student": "student", "teacher": "teacher"}  # role -> model name

    def bind(self, models: Mapping[str, str]) -> None:
        """Called once with the run's models (name -> "trainable" / "frozen") before anything is built.

        The default checks that the models this term reads in its roles exist: the student must be
        trainable, the teacher (if the term needs one) may be either. A ValueError names the fix.
        """
        self.check_student(models)
        if self.needs_teacher and self.roles["teacher"] not in models:
            teacher = self.roles["teacher"]
            frozen = [n for n, r in models.items() if r == FROZEN]
            hint = f"frozen models in this run: {', '.join(frozen)}" if frozen else \
                "set `teacher` in the config (teacher.config or teacher.checkpoint)"
            raise ValueError(f"reads model {teacher!r} as its teacher, but the run has no model of that name: {hint}")

    def check_student(self, models: Mapping[str, str]) -> None:
        """The model in the student role exists and is trainable (a ValueError naming the fix otherwise)."""
        student = self.roles["student"]
        if student not in models:
            raise ValueError(f"reads model {student!r} as its student, but the run has no model of that name "
                             f"(models: {', '.join(models)})")
        if models[student] != TRAINABLE:
            raise ValueError(f"reads model {student!r} as its student, but {student!r} is frozen: name a "
                             "trainable model")

    def reads(self) -> dict[str, tuple[str, ...]]:
        """Model name -> the features this term reads from it (an empty tuple: its logits only)."""
        out = {self.roles["student"]: tuple(self.student_features)}
        if self.needs_teacher:
            teacher = self.roles["teacher"]
            out[teacher] = out.get(teacher, ()) + tuple(f for f in self.teacher_features if f not in out.get(teacher, ()))
        return out

    def setup(self, ctx: SetupContext) -> None:
        """Build parameters that depend on feature shapes. Called once before training."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Called before every main-stage training epoch (``ctx.epoch`` counts from 1)."""

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
