"""The engine's side of training steps (:mod:`distillab.core.steps`): the runner a step gets for one batch."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from distillab.core.contract import MAIN_INPUT, Batch, ModelOutputs
from distillab.core.steps import StepResult
from distillab.engine.models import ModelSet, frozen_batchnorm_stats


class BatchRunner:
    """The :class:`StepRunner` of one batch. ``forward`` runs the trainable models (those without gradients
    this time first, under no_grad and without moving their BatchNorm statistics) through ``step_module``
    (the DDP-wrapped :class:`~distillab.engine.models.TrainableStep`) and the objective on the batch with
    every model's outputs (the frozen ones' given as ``frozen``); ``update`` takes an optimiser step.

    For steps of their own: ``models`` (the run's models by name), ``rng`` (a generator seeded by the run's seed
    and the epoch: what a step draws, e.g. a generator's noise, is the same on a resumed run), ``batch_size``,
    ``labels`` (what ``train/top1`` is measured against: a step without data may set it, e.g. to the teacher's
    predictions), ``optimizers`` ("" is the run's optimiser; models with their own are under their names),
    ``replace_batch`` (train this step on other inputs: an on-policy step's generated sequences).
    """

    def __init__(self, *, models: ModelSet, objective: nn.Module, step_module: nn.Module, autocast: Callable,
                 optimizers: dict[str, torch.optim.Optimizer], fields: dict[str, torch.Tensor],
                 labels: torch.Tensor, index: torch.Tensor,
                 frozen: dict[str, ModelOutputs] | Callable[[], dict[str, ModelOutputs]], taps: dict, epoch: int,
                 rng: torch.Generator | None = None,
                 run_frozen: Callable[[dict[str, torch.Tensor]], dict[str, ModelOutputs]] | None = None) -> None:
        self.models, self.objective, self.step_module = models, objective, step_module
        self.autocast, self.optimizers = autocast, optimizers
        self.fields, self.labels, self.index, self.taps, self.epoch = fields, labels, index, taps, epoch
        self._frozen = frozen
        self.rng = rng
        self.run_frozen = run_frozen
        self.batch_size = len(index)
        self.trainable = [m.name for m in models.trainable if m.classifier]

    @property
    def frozen(self) -> dict[str, ModelOutputs]:
        """The frozen models' outputs for this step's batch, computed when first read (``frozen`` may be given
        as a function: a step that replaces its batch first never runs them on the loader's)."""
        if callable(self._frozen):
            self._frozen = self._frozen()
        return self._frozen

    @frozen.setter
    def frozen(self, value: dict[str, ModelOutputs]) -> None:
        self._frozen = value

    def forward(self, grad: Sequence[str]) -> StepResult:
        _ = self.frozen  # the frozen models run first, as they always have, outside the trainable models' forward
        with self.autocast():
            targets = {}
            for m in self.models.trainable:
                if m.name not in grad:
                    with torch.no_grad(), frozen_batchnorm_stats(m.module):
                        targets[m.name] = ModelOutputs(m.module(self.fields[m.input]), self.taps[m.name].pop())
            inputs = {m.name: self.fields[m.input] for m in self.models.trainable if m.name in grad}
            return self.step_module(inputs, lambda logits: self._objective(targets, logits))

    def _objective(self, targets: dict[str, ModelOutputs], logits: dict[str, torch.Tensor]) -> StepResult:
        outputs = {**self.frozen, **targets, **{n: ModelOutputs(v, self.taps[n].pop()) for n, v in logits.items()}}
        batch = Batch(self.fields[MAIN_INPUT], self.labels, self.index, outputs["student"], outputs.get("teacher"),
                      self.epoch, self.objective.stage, outputs, self.fields)
        total, logs = self.objective(batch)
        return total, logs, {n: outputs[n].logits for n in self.trainable}

    def replace_batch(self, fields: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Train this step on ``fields`` / ``labels`` instead of the loader's batch; the frozen models run on
        them anew (under the step's autocast)."""
        self.fields, self.labels = fields, labels
        if self.run_frozen is not None:
            with self.autocast():
                self.frozen = self.run_frozen(fields)

    def update(self, total: torch.Tensor, models: Sequence[str] | None = None) -> None:
        """Backpropagate ``total`` and step the optimisers: all of them, or only those that own ``models`` (a
        generator's step must not move the student, which its loss also reaches)."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        keys = set(self.optimizers) if models is None else {m if m in self.optimizers else "" for m in models}
        for key in keys:
            self.optimizers[key].step()
