"""Methods: named presets of weighted loss terms. A new method is new terms plus one registration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distillab.registry import Registry

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class TermSpec:
    loss: str  # registered loss term
    weight: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """A training stage run before the main one (RepDistiller's ``init`` stage: FSP, AB, FT, FitNet's hint stage).

    weights: term -> weight during the stage (terms not named are off).
    train: what the stage's optimiser updates: a trainable model by name (``"student"``: all of it),
        ``"<model>_body"`` (all but its classifier head, RepDistiller's ``get_feat_modules``), a term name,
        or ``"term.submodule"``.
    lr: constant learning rate of the stage (None: ``optim.lr``); same optimiser type as the main stage.
    student_mode: ``"eval"`` keeps the student's BatchNorm statistics frozen (RepDistiller's init for FT,
        whose stage does not train the student); ``"train"`` where the stage trains the student body (its
        init for FSP and AB puts the body's modules back in train mode).
    """

    name: str
    epochs: int
    weights: dict[str, float]
    train: tuple[str, ...] = ("student",)
    lr: float | None = None
    student_mode: Literal["train", "eval"] = "train"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    terms: dict[str, TermSpec]
    reference: str = ""  # paper and the code whose defaults the preset matches
    stages: tuple[StageSpec, ...] = ()
    schedule: tuple[str, dict[str, Any]] | None = None  # (registered data schedule, its options)
    step: str = "joint"  # registered training step (distillab.engine.steps): what the loop does with a batch
    paradigm: str | None = None  # None: one trained student, at most one teacher; else e.g. "mutual", "multi_teacher"


def register_method(name: str, description: str, terms: dict[str, tuple], reference: str = "",
                    stages: tuple[StageSpec, ...] = (),
                    schedule: tuple[str, dict[str, Any]] | None = None, step: str = "joint",
                    paradigm: str | None = None) -> MethodSpec:
    """Register a preset. ``terms`` maps a term name to ``(loss, weight)`` or ``(loss, weight, params)``;
    a term used only in a stage has weight 0 here. ``step`` names the training step (default ``joint``).
    ``paradigm`` marks methods that are not one student distilled from one teacher (mutual learning, several
    teachers, privileged inputs, no teacher network): benchmark suites list them by name, ``all`` leaves
    them out."""
    specs = {t: TermSpec(*v) for t, v in terms.items()}
    for stage in stages:
        unknown = set(stage.weights) - set(specs)
        if unknown:
            raise ValueError(f"method {name!r}, stage {stage.name!r}: weights for unknown terms {sorted(unknown)}")
    spec = MethodSpec(name, description, specs, reference, tuple(stages), schedule, step, paradigm)
    METHODS.register(name, description=description)(spec)
    return spec


# Presets live beside their loss terms (losses/<family>.py); importing the loss package registers them all.
import distillab.losses  # noqa: E402,F401
