"""Data schedules: which training samples each epoch sees (RDD sampling, RDX curricula).

A schedule is an ``nn.Module`` (its buffers, e.g. difficulty scores, are checkpointed with the
objective) registered in :data:`SCHEDULES`; before every epoch it receives the engine's
:class:`~distillab.losses.base.EpochContext` and may call ``ctx.set_subset``. Its subset must be a
function of its buffers and the epoch, so a resumed run trains on the same samples.
"""

from __future__ import annotations

import torch
from torch import nn

from distillab.losses.base import EpochContext
from distillab.registry import Registry

SCHEDULES: Registry = Registry("data schedule")


class DataSchedule(nn.Module):
    """Base class: override :meth:`on_epoch_start`. ``needs_teacher``: whether it reads the teacher."""

    needs_teacher: bool = False

    def on_epoch_start(self, ctx: EpochContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def rdx_difficulty(ctx: EpochContext, gamma: float | str, beta: float, kna_k: int, anchors: int | None,
                   seed: int) -> torch.Tensor:
    """Per-sample KNA difficulty (sum of the top-k teacher-unique affinities) over the training set.

    No negative pools are built. Under torchrun each rank mines its share of the rows (the features are
    the whole training set's on every rank) and the shares are gathered: every rank gets all N scores."""
    from distillab.core import dist as comm
    from distillab.rdx.mining import mine

    teacher = ctx.extract("teacher", ["embedding"])["embedding"].flatten(1)
    student = ctx.extract("student", ["embedding"])["embedding"].flatten(1)
    kna = mine(teacher, student, gamma=gamma, beta=beta, kna_k=kna_k, anchors=anchors, seed=seed,
               rows=comm.shard_range(len(teacher)), need_pool=False).kna
    return comm.gather_varsize(kna)


class _RDXRanked(DataSchedule):
    """Shared part of the RDX schedules: a ranking of the training set, easiest (lowest KNA) first,
    computed before ``start_epoch`` and again every ``refresh_every`` epochs (0: once)."""

    needs_teacher = True

    def __init__(self, gamma: float | str = 0.1, beta: float = 5.0, kna_k: int = 8, anchors: int | None = None,
                 start_epoch: int = 1, refresh_every: int = 0, seed: int = 42) -> None:
        super().__init__()
        if start_epoch < 1 or refresh_every < 0:
            raise ValueError("start_epoch must be >= 1 and refresh_every >= 0")
        self.gamma, self.beta, self.kna_k, self.anchors, self.seed = gamma, beta, kna_k, anchors, seed
        self.start_epoch, self.refresh_every = start_epoch, refresh_every
        self.register_buffer("order", torch.zeros(0, dtype=torch.long))  # sample indices, easiest first
        self.register_buffer("ranked_epoch", torch.tensor(0))

    def fraction(self, epoch: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the ranking's length is only known once computed: take the checkpoint's size before loading
        saved = state_dict.get(prefix + "order")
        if saved is not None:
            self.order = torch.empty_like(saved, device=self.ranked_epoch.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        epoch, ranked = ctx.epoch, int(self.ranked_epoch)
        if epoch < self.start_epoch:
            ctx.set_subset(None)
            return
        due = ranked == 0 or (self.refresh_every and epoch > ranked
                              and (epoch - self.start_epoch) % self.refresh_every == 0)
        if due:
            with torch.no_grad():
                kna = rdx_difficulty(ctx, self.gamma, self.beta, self.kna_k, self.anchors, self.seed)
            self.order = torch.sort(kna.cpu(), stable=True).indices.to(self.ranked_epoch.device)
            self.ranked_epoch.fill_(epoch)
            ctx.log(f"{type(self).__name__}: RDX ranking before epoch {epoch} "
                    f"({'first' if ranked == 0 else f'refresh every {self.refresh_every}'}), "
                    f"KNA from {float(kna.min()):.2f} (easiest) to {float(kna.max()):.2f}")
        keep = max(1, round(self.fraction(epoch) * len(self.order)))
        ctx.set_subset(None if keep >= len(self.order) else self.order[:keep].cpu())


@SCHEDULES.register("rdd_sampling", description="train only on the easiest fraction by RDX difficulty")
class RDDSampling(_RDXRanked):
    """The blog's first, failed variant (RDD sampling, 59.49 % on CIFAR-100 resnet32x4 -> resnet8x4): every
    epoch trains on the ``keep_fraction`` of samples with the lowest KNA difficulty only, re-ranked every
    ``refresh_every`` epochs. The blog gives neither the fraction nor R; defaults 0.5 and 20 (the R of
    the authors' README example)."""

    def __init__(self, keep_fraction: float = 0.5, refresh_every: int = 20, **kwargs) -> None:
        super().__init__(refresh_every=refresh_every, **kwargs)
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.keep_fraction = keep_fraction

    def fraction(self, epoch: int) -> float:
        return self.keep_fraction


@SCHEDULES.register("rdd_curriculum", description="easy-to-hard curriculum by RDX difficulty, linear pacing")
class RDDCurriculum(_RDXRanked):
    """The blog's second variant (RDD curriculum, 72.96 %): start with the easiest ``phi0`` = 0.3 of the
    data by KNA difficulty (ascending, the authors' code) and grow the fraction linearly to all of it over
    ``e_pace`` = 100 epochs: fraction(e) = min(1, phi0 + (1 - phi0) (e - start) / e_pace)."""

    def __init__(self, phi0: float = 0.3, e_pace: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < phi0 <= 1.0 or e_pace < 1:
            raise ValueError("phi0 must be in (0, 1] and e_pace >= 1")
        self.phi0, self.e_pace = phi0, e_pace

    def fraction(self, epoch: int) -> float:
        return min(1.0, self.phi0 + (1.0 - self.phi0) * (epoch - self.start_epoch) / self.e_pace)
