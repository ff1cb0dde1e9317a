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

from distillab.registry import Registry

STEPS: Registry = Registry("training step")

StepResult = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]


class StepRunner(Protocol):
    """What the engine hands a step for one batch (:class:`distillab.engine.steps.BatchRunner`)."""

    trainable: Sequence[str]  # the run's trainable classifiers, in run order

    def forward(self, grad: Sequence[str]) -> StepResult: ...

    def update(self, total: torch.Tensor, models: Sequence[str] | None = None) -> None: ...


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
