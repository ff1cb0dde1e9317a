"""The distillation objective: a weighted sum of named loss terms, built from a method preset."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import nn

from distillab.config import ConfigError, MethodConfig
from distillab.core.steps import STEPS
from distillab.losses import LOSSES, Batch, EpochContext, LossTerm, SetupContext
from distillab.losses.base import ROLES
from distillab.methods import METHODS, StageSpec
from distillab.options import construct, options_of
from distillab.registry import RegistryError, close_matches

DEFAULT_ROLES = {"student": "student", "teacher": "teacher"}


class Objective(nn.Module):
    """Weighted sum of terms. ``forward`` returns the total and every term (and part) for logging.

    ``stages`` are the method's pre-training stages (with config overrides applied); ``use_stage``
    switches which weights are active. Terms with a zero active weight are not evaluated.
    """

    def __init__(self, terms: dict[str, LossTerm], weights: dict[str, float],
                 stages: tuple[StageSpec, ...] = (), schedule: nn.Module | None = None, step: str = "joint") -> None:
        super().__init__()
        self.step = step  # the registered training step (distillab.engine.steps) the loop runs
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

    def bind(self, models: Mapping[str, str]) -> None:
        """Check every term against the run's models (name -> "trainable" / "frozen"); terms over several
        models choose theirs here. Called before any data is read or model built."""
        for name, term in self.terms.items():
            try:
                term.bind(models)
            except ValueError as exc:
                raise ConfigError(f"method term {name!r}: {exc}") from None
        if getattr(self.schedule, "needs_teacher", False) and "teacher" not in models:
            raise ConfigError("the data schedule of this method ranks samples with the teacher: set `teacher` "
                              "in the config (teacher.config or teacher.checkpoint)")

    def reads(self) -> dict[str, list[str]]:
        """Model name -> features read from it at every step, over all terms (logits are always read)."""
        out: dict[str, list[str]] = {}
        for term in self.terms.values():
            for model, features in term.reads().items():
                names = out.setdefault(model, [])
                names += [f for f in features if f not in names]
        return out

    @property
    def data_free_steps(self) -> int | None:
        """Steps per epoch of a method that makes its own training inputs (a term with ``data_free``), else None."""
        return next((int(t.iterations_per_epoch) for t in self.terms.values() if getattr(t, "data_free", False)), None)

    def fields(self) -> set[str]:
        """Batch fields the terms read themselves (besides the models' inputs)."""
        return {f for term in self.terms.values() for f in term.input_fields}

    def needs(self) -> set[str]:
        """The models this objective uses at all: those its terms read, and the teacher where the data
        schedule ranks samples with it."""
        return set(self.reads()) | ({"teacher"} if getattr(self.schedule, "needs_teacher", False) else set())

    @property
    def needs_teacher(self) -> bool:
        return "teacher" in self.needs()

    def feature_requests(self, model: str) -> list[str]:
        return self.reads().get(model, [])

    def setup(self, ctx: SetupContext) -> None:
        """Set every term up on the probed shapes; a term that cannot work with the run's models (shapes,
        classes, missing BatchNorms) raises a ConfigError naming the term."""
        for name, term in self.terms.items():
            try:
                term.setup(ctx.view(term.roles))
            except ConfigError:
                raise
            except ValueError as exc:
                raise ConfigError(f"method term {name!r}: {exc}") from None

    def feature_readers(self, model: str, feature: str) -> list[str]:
        """``method.params.<term>.<option>`` spellings of the options that chose ``feature`` of ``model``, for
        messages (the options of the terms that read it whose names speak of stages or features)."""
        out = []
        for name, term in self.terms.items():
            if feature in term.reads().get(model, ()):
                options = [o for o in (options_of(type(term)) or []) if "stage" in o or "feature" in o]
                out += [f"method.params.{name}.{o}" for o in options] or [f"method term {name!r}"]
        return out

    def on_epoch_start(self, ctx: EpochContext) -> None:
        for term in self.terms.values():
            term.on_epoch_start(ctx.view(term.roles) if term.roles != DEFAULT_ROLES else ctx)
        if self.schedule is not None:
            self.schedule.on_epoch_start(ctx)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        logs: dict[str, torch.Tensor] = {}
        for name, weight in self.weights.items():
            term = self.terms[name]
            out = term(batch.view(term.roles) if term.roles != DEFAULT_ROLES else batch)
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


def _build_term(term: str, loss: str, params: dict) -> LossTerm:
    try:
        cls = LOSSES.get(loss)
    except RegistryError as exc:
        raise ConfigError(f"method term {term!r}: {exc}") from None
    params = dict(params)
    # `student: name` / `teacher: name` pick the run models a pairwise term reads in those roles
    roles = {role: params.pop(role) for role in ROLES if isinstance(params.get(role), str)}
    module = construct(cls, params, f"method.params.{term}", f"loss {loss!r}")
    if roles:
        module.roles = {**DEFAULT_ROLES, **roles}
    return module


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
    step = cfg.step or spec.step
    try:
        STEPS.entry(step)
    except RegistryError as exc:
        raise ConfigError(f"method.step: {exc}") from None
    return Objective(terms, weights, stages, _build_schedule(spec.schedule, cfg.schedule), step)


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
    return construct(cls, options, "method.schedule", f"schedule {name!r}")


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
