"""The set of named models in a run: who is trained, who is frozen, what each reads and taps.

A run holds one or more *trainable* models (the student; mutual learning's peers) and any number of
*frozen* ones (teachers). Each reads one named input of the batch and has its own feature taps; each
trainable model is one parameter group of the optimiser unless it sets its own lr / weight decay.
Frozen models run in eval mode under no_grad; trainable ones in train mode with gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from distillab.config import ConfigError
from distillab.core import dist as comm
from distillab.core.contract import FROZEN, MAIN_INPUT, TRAINABLE
from distillab.features import parse_tap, probe_shapes, resolve_feature, resolve_module


@dataclass
class RunModel:
    """One named model of a run."""

    name: str
    module: nn.Module
    role: str = TRAINABLE  # "trainable" or "frozen"
    input: str = MAIN_INPUT  # the batch field it reads
    arch: str | None = None
    options: dict = field(default_factory=dict)
    lr: float | None = None  # its own learning rate (None: optim.lr)
    weight_decay: float | None = None  # its own weight decay (None: optim.weight_decay)
    taps: dict[str, str] = field(default_factory=dict)  # feature name -> tap address
    origin: dict = field(default_factory=dict)  # where a loaded model came from: file, store key, its config
    optim: Any = None  # its own optimiser settings (an OptimConfig), or None: the run's optimiser
    kind: str = "classifier"  # or "generator" (noise in, inputs out): trained, never evaluated

    @property
    def classifier(self) -> bool:
        return self.kind == "classifier"

    @property
    def trainable(self) -> bool:
        return self.role == TRAINABLE


class ModelSet:
    """Named models in run order (the student first). ``models["teacher"]`` is a :class:`RunModel`."""

    def __init__(self, models: list[RunModel]) -> None:
        self._models = {m.name: m for m in models}
        if len(self._models) != len(models):
            raise ValueError(f"model names must be unique, got {[m.name for m in models]}")
        if "student" not in self._models or not self._models["student"].trainable:
            raise ValueError("a run needs a trainable model named 'student'")

    @classmethod
    def pair(cls, student: nn.Module, teacher: nn.Module | None = None) -> "ModelSet":
        """The common case: a student and, optionally, a teacher, both reading the main input."""
        models = [RunModel("student", student, TRAINABLE)]
        if teacher is not None:
            models.append(RunModel("teacher", teacher, FROZEN))
        return cls(models)

    def __getitem__(self, name: str) -> RunModel:
        if name not in self._models:
            raise KeyError(f"no model named {name!r} in this run (models: {', '.join(self._models)})")
        return self._models[name]

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[RunModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def names(self) -> list[str]:
        return list(self._models)

    def roles(self) -> dict[str, str]:
        return {m.name: m.role for m in self}

    @property
    def trainable(self) -> list[RunModel]:
        return [m for m in self if m.trainable]

    @property
    def frozen(self) -> list[RunModel]:
        return [m for m in self if not m.trainable]

    @property
    def evaluated(self) -> list[RunModel]:
        """The trainable classifiers: evaluated every epoch, their ensemble scored (generators are not)."""
        return [m for m in self.trainable if m.classifier]

    def keep(self, names: set[str]) -> "ModelSet":
        """Every trainable model and the frozen models in ``names`` (the others are not used)."""
        return ModelSet([m for m in self if m.trainable or m.name in names])

    def prepare(self, device: torch.device, memory_format: torch.memory_format | None, sync_bn: bool) -> None:
        """Move every model to ``device``; frozen ones go to eval mode without gradients."""
        for m in self:
            module = m.module.to(device)
            if m.trainable and sync_bn:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            if memory_format is not None:
                module = module.to(memory_format=memory_format)
            if not m.trainable:
                module = module.eval().requires_grad_(False)
            m.module = module

    def resolve_taps(self, requests: Mapping[str, list[str]]) -> None:
        """Tap addresses of the features each model is asked for (``requests``: name -> feature names); a
        feature a model does not have raises :class:`FeatureError`."""
        for m in self:
            taps = {}
            for feature in requests.get(m.name, []):
                try:
                    taps[feature] = resolve_feature(m.module, feature)
                    resolve_module(m.module, parse_tap(taps[feature])[0])  # an address must name a module
                except (ValueError, KeyError) as exc:
                    why = str(exc.args[0]) if exc.args else str(exc)  # a KeyError's str() adds quotes
                    raise FeatureError(m.name, feature, describe_features(m.module), why) from None
            m.taps = taps

    def probe(self, field_shape: Callable[[str], tuple[int, ...]], device: torch.device,
              dtype: torch.dtype = torch.float32) -> dict[str, dict]:
        """Probed shapes of every model's taps: name -> {feature: shape} (generators read no batch field: none).
        ``dtype``: the inputs' (token ids: torch.long)."""
        return {m.name: probe_shapes(m.module, m.taps, field_shape(m.input), device, dtype) if m.classifier else {}
                for m in self}

    def parameter_groups(self, extra: list[nn.Parameter]) -> list[dict]:
        """The optimiser's groups: trainable models that share the default lr / weight decay form one group
        (followed by ``extra``, the objective's parameters); a model with its own settings gets its own."""
        groups: dict[tuple, list[nn.Parameter]] = {}
        for m in self.trainable:
            if m.optim is None:  # models with their own optimiser are left to it
                groups.setdefault((m.lr, m.weight_decay), []).extend(m.module.parameters())
        groups.setdefault((None, None), []).extend(extra)
        out = []
        for (lr, wd), params in groups.items():
            group: dict = {"params": params}
            if lr is not None:
                group["lr"] = lr
            if wd is not None:
                group["weight_decay"] = wd
            out.append(group)
        return out

    def sync_batchnorm_stats(self) -> None:
        """Average the trainable models' BatchNorm running statistics over ranks (each rank normalised its
        own slice of the batches), so that evaluation and checkpoints see one model. No-op for one process."""
        if not comm.is_distributed():
            return
        for m in self.trainable:
            for module in m.module.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                    for buf in (module.running_mean, module.running_var):
                        if buf is not None:
                            comm.all_reduce_(buf, "mean")


class FeatureError(ConfigError):
    """A feature a model of the run does not have; the engine adds which term asked for it."""

    def __init__(self, model: str, feature: str, available: str, why: str) -> None:
        super().__init__(f"model {model!r} has no feature {feature!r} ({why}); its features: {available}")
        self.model, self.feature, self.available, self.why = model, feature, available, why


def describe_features(module: nn.Module) -> str:
    """The feature names a model offers, for messages: its stages (with module paths), pre-activations, embedding."""
    info = getattr(module, "feature_info", None) or []
    names = [f"stage{i} ({st.name})" for i, st in enumerate(info)]
    names += [f"preact{i}" for i, st in enumerate(info) if st.preact is not None]
    if getattr(module, "head", None):
        names.append("embedding")
    return ", ".join(names) if names else f"none described ({type(module).__name__} has no feature_info): request " \
                                           "features by module path, e.g. 'layer2'"


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Run a module in train mode without moving its BatchNorm running statistics (momentum 0 for the
    duration): for a second forward pass of the same batch through a model that must not count it twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class TrainableStep(nn.Module):
    """The trainable models and the objective's modules as one module, so that one DistributedDataParallel
    wrapper averages all their gradients. ``forward(inputs, finish)`` runs each model named in ``inputs``
    on its tensor and hands the logits (name -> tensor) to ``finish``, which builds the batch and
    evaluates the objective."""

    def __init__(self, models: Mapping[str, nn.Module], objective: nn.Module) -> None:
        super().__init__()
        self.models = nn.ModuleDict(dict(models))
        self.objective = objective

    def forward(self, inputs: dict[str, torch.Tensor], finish: Callable[[dict[str, torch.Tensor]], tuple]) -> tuple:
        return finish({name: self.models[name](x) for name, x in inputs.items()})
