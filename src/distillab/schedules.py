"""Data schedules: which training samples each epoch sees (RDD sampling, RDX curricula).

A schedule is an ``nn.Module`` (its buffers, e.g. difficulty scores, are checkpointed with the
objective) registered in :data:`SCHEDULES`; before every epoch it receives the engine's
:class:`~distillab.losses.base.EpochContext` and may call ``ctx.set_subset``. Its subset must be a
function of its buffers and the epoch, so a resumed run trains on the same samples.
"""

from __future__ import annotations

from torch import nn

from distillab.losses.base import EpochContext
from distillab.registry import Registry

SCHEDULES: Registry = Registry("data schedule")


class DataSchedule(nn.Module):
    """Base class: override :meth:`on_epoch_start`. ``needs_teacher``: whether it reads the teacher."""

    needs_teacher: bool = False

    def on_epoch_start(self, ctx: EpochContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError
