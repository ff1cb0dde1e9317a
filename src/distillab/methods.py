"""Methods: named presets of weighted loss terms. A new method is new terms plus one registration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distillab.registry import Registry

METHODS: Registry = Registry("method")


@dataclass(frozen=True)
class TermSpec:
    loss: str  # registered loss term
    weight: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    terms: dict[str, TermSpec]
    reference: str = ""  # paper and the code whose defaults the preset matches


def register_method(name: str, description: str, terms: dict[str, tuple], reference: str = "") -> MethodSpec:
    """Register a preset. ``terms`` maps a term name to ``(loss, weight)`` or ``(loss, weight, params)``."""
    specs = {t: TermSpec(*v) for t, v in terms.items()}
    spec = MethodSpec(name, description, specs, reference)
    METHODS.register(name, description=description)(spec)
    return spec


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
