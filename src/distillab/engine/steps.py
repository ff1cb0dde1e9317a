"""Training steps: what the one loop does with one batch, a named extension point of the loop.

A step receives a :class:`StepRunner` bound to the batch and returns ``(total, logs, logits)`` for
logging. ``runner.forward(grad)`` runs every model and the objective once, with gradients only for the
trainable models named in ``grad`` (the others give constant targets); ``runner.update(total)`` takes
one optimiser step on whatever received gradients. A method names its step in its preset
(``register_method(..., step=...)``) and a config can pick another (``method.step``).

* ``joint`` (default): one forward of every model, one update of every trainable model.
* ``sequential``: the trainable models are updated one after the other, each against the *current*
  outputs of the others (Deep Mutual Learning's order in its paper: update peer 1, recompute its
  predictions, update peer 2, ...). A model's own BatchNorm statistics move once per batch, in its own
  update; when it only provides targets its statistics are left alone. Costs K forward passes of each
  of the K models per batch.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import nn

from distillab.core.contract import MAIN_INPUT, Batch, ModelOutputs
from distillab.engine.models import ModelSet, frozen_batchnorm_stats
from distillab.registry import Registry

STEPS: Registry = Registry("training step")

StepResult = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]


class StepRunner(Protocol):
    trainable: Sequence[str]  # the run's trainable models, in run order

    def forward(self, grad: Sequence[str]) -> StepResult: ...

    def update(self, total: torch.Tensor) -> None: ...


@STEPS.register("joint", description="one forward of every model, one update of every trainable model")
def joint(run: StepRunner) -> StepResult:
    total, logs, logits = run.forward(run.trainable)
    run.update(total)
    return total, logs, logits


@STEPS.register("sequential", description="update the trainable models one after the other (DML's paper order)")
def sequential(run: StepRunner) -> StepResult:
    first: StepResult | None = None
    for name in run.trainable:
        # only `name` has gradients: the total's gradient is that of the terms on `name`'s outputs
        total, logs, logits = run.forward([name])
        run.update(total)
        first = first or (total, logs, logits)
    assert first is not None
    return first  # logged as seen before any update of this batch, like a joint step


Step = Callable[[StepRunner], StepResult]


class BatchRunner:
    """The :class:`StepRunner` of one batch. ``forward`` runs the trainable models (those without gradients
    this time first, under no_grad and without moving their BatchNorm statistics) through ``step_module``
    (the DDP-wrapped :class:`~distillab.engine.models.TrainableStep`) and the objective on the batch with
    every model's outputs (the frozen ones' given as ``frozen``); ``update`` steps ``optimizer``."""

    def __init__(self, *, models: ModelSet, objective: nn.Module, step_module: nn.Module, autocast: Callable,
                 optimizer: torch.optim.Optimizer, fields: dict[str, torch.Tensor], labels: torch.Tensor,
                 index: torch.Tensor, frozen: dict[str, ModelOutputs], taps: dict, epoch: int) -> None:
        self.models, self.objective, self.step_module = models, objective, step_module
        self.autocast, self.optimizer = autocast, optimizer
        self.fields, self.labels, self.index, self.frozen, self.taps, self.epoch = fields, labels, index, frozen, taps, epoch
        self.trainable = [m.name for m in models.trainable]

    def forward(self, grad: Sequence[str]) -> StepResult:
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

    def update(self, total: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
