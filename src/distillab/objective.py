"""The distillation objective: a weighted sum of named loss terms, built from a method preset."""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import nn

from distillab.config import ConfigError, MethodConfig
from distillab.losses import LOSSES, Batch, EpochContext, LossTerm, SetupContext
from distillab.methods import METHODS, StageSpec
from distillab.registry import RegistryError, close_matches


class Objective(nn.Module):
    """Weighted sum of terms. ``forward`` returns the total and every term (and part) for logging.

    ``stages`` are the method's pre-training stages (with config overrides applied); ``use_stage``
    switches which weights are active. Terms with a zero active weight are not evaluated.
    """

    def __init__(self, terms: dict[str, LossTerm], weights: dict[str, float],
                 stages: tuple[StageSpec, ...] = (), schedule: nn.Module | None = None) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.schedule = schedule  # a data schedule (distillab.schedules): which samples each epoch trains on
        self.main_weights = {t: w for t, w in weights.items() if w != 0}
        self.stages = tuple(stages)
        self.stage: str | None = None
        self.weights = self.main_weights

    def use_stage(self, name: str | None) -> None:
        """Activate a pre-training stage's weights (None: the main stage)."""
        if name is None:
            self.weights = self.main_weights
        else:
            stage = next((s for s in self.stages if s.name == name), None)
            if stage is None:
                raise KeyError(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")
            self.weights = {t: w for t, w in stage.weights.items() if w != 0}
        self.stage = name

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms.values()) or \
            bool(getattr(self.schedule, "needs_teacher", False))

    def feature_requests(self, side: str) -> list[str]:
        attr = "student_features" if side == "student" else "teacher_features"
        names: list[str] = []
        for term in self.terms.values():
            names += [n for n in getattr(term, attr) if n not in names]
        return names

    def setup(self, ctx: SetupContext) -> None:
        for term in self.terms.values():
            term.setup(ctx)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        for term in self.terms.values():
            term.on_epoch_start(ctx)
        if self.schedule is not None:
            self.schedule.on_epoch_start(ctx)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        logs: dict[str, torch.Tensor] = {}
        for name, weight in self.weights.items():
            out = self.terms[name](batch)
            if isinstance(out, dict):
                for part, value in out.items():
                    logs[f"{name}.{part}"] = value.detach()
                value = sum(out.values())
            else:
                value = out
            logs[name] = value.detach()
            weighted = weight * value
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("the objective has no term with a non-zero weight")
        return total, logs


def _options_of(cls: type) -> list[str]:
    """Keyword options of ``cls``; a ``**kwargs`` that is passed on to the base class adds the base's."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _construct(cls: type, options: dict, where: str, what: str):
    """``cls(**options)``, with an unknown option named (and its closest valid one) before construction."""
    valid = _options_of(cls)
    for key in options:
        if key not in valid:
            matches = close_matches(key, valid)
            hint = f"did you mean {matches[0]!r}?" if matches else f"valid options: {', '.join(valid) or 'none'}"
            raise ConfigError(f"unknown option {where}.{key} for {what}: {hint}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build_term(term: str, loss: str, params: dict) -> LossTerm:
    try:
        cls = LOSSES.get(loss)
    except RegistryError as exc:
        raise ConfigError(f"method term {term!r}: {exc}") from None
    return _construct(cls, params, f"method.params.{term}", f"loss {loss!r}")


def build_objective(cfg: MethodConfig) -> Objective:
    """Resolve ``cfg.name`` to its preset, apply weight/param overrides, drop zero-weight terms.

    A weight for a name that is not in the preset adds that loss term (``method.weights.kd=1`` turns
    a method into method+KD).
    """
    try:
        spec = METHODS.get(cfg.name)
    except RegistryError as exc:
        raise ConfigError(f"method.name: {exc}") from None
    plan = {t: (s.loss, s.weight, dict(s.params)) for t, s in spec.terms.items()}
    for term, weight in cfg.weights.items():
        if term in plan:
            loss, _, params = plan[term]
            plan[term] = (loss, weight, params)
        elif term in LOSSES:
            plan[term] = (term, weight, {})
        else:
            known = list(plan) + LOSSES.names()
            matches = close_matches(term, known)
            hint = f"did you mean {matches[0]!r}?" if matches else f"terms of {cfg.name!r}: {', '.join(plan)}"
            raise ConfigError(f"method.weights: unknown term {term!r}: {hint}")
    for term, params in cfg.params.items():
        if term not in plan:
            matches = close_matches(term, list(plan))
            hint = f"did you mean {matches[0]!r}?" if matches else f"terms of {cfg.name!r}: {', '.join(plan)}"
            raise ConfigError(f"method.params: {term!r} is not a term of this objective: {hint}")
        plan[term][2].update(params)
    stages = _apply_stage_overrides(spec.stages, cfg.stages, cfg.name)
    used = {t for t, (_, w, _) in plan.items() if w != 0} | {t for s in stages for t, w in s.weights.items() if w}
    terms = {t: _build_term(t, loss, params) for t, (loss, _, params) in plan.items() if t in used}
    weights = {t: w for t, (_, w, _) in plan.items() if w != 0}
    return Objective(terms, weights, stages, _build_schedule(spec.schedule, cfg.schedule))


def _build_schedule(preset: tuple[str, dict] | None, override: dict) -> nn.Module | None:
    """The preset's data schedule with ``method.schedule`` options applied (``name`` picks another)."""
    from distillab.schedules import SCHEDULES

    options = dict(override)
    name = options.pop("name", None)
    if name is None and preset is None:
        if options:
            raise ConfigError("method.schedule: this method has no data schedule; name one with method.schedule.name")
        return None
    if name is None or (preset is not None and name == preset[0]):
        name, options = preset[0], {**preset[1], **options}
    try:
        cls = SCHEDULES.get(name)
    except RegistryError as exc:
        raise ConfigError(f"method.schedule.name: {exc}") from None
    return _construct(cls, options, "method.schedule", f"schedule {name!r}")


def _apply_stage_overrides(stages: tuple[StageSpec, ...], overrides: dict[str, dict], method: str) -> tuple:
    """``method.stages.<name>.epochs`` / ``.lr`` replace a stage's defaults; epochs 0 skips the stage."""
    by_name = {s.name: s for s in stages}
    for name, fields in overrides.items():
        if name not in by_name:
            matches = close_matches(name, list(by_name))
            hint = f"did you mean {matches[0]!r}?" if matches else f"stages of {method!r}: {list(by_name) or 'none'}"
            raise ConfigError(f"method.stages: {name!r} is not a stage of this method: {hint}")
        bad = set(fields) - {"epochs", "lr"}
        if bad:
            raise ConfigError(f"method.stages.{name}: only 'epochs' and 'lr' can be set, not {sorted(bad)}")
        by_name[name] = dataclasses.replace(by_name[name], **fields)
    return tuple(s for s in by_name.values() if s.epochs > 0)
