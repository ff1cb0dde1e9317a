"""Process-group facts and the few collectives the engine and the loss terms need.

Single-process runs are rank 0 of 1, and every helper here is then the identity (no process group is
needed). Under ``torchrun`` the engine calls :func:`init_process_group` once; the helpers then work on
the default group. They move no gradient: a loss term gathers what it needs to keep shared state
(memory banks, queues, mined tables) identical on every rank, and DDP averages the gradients.

Global batches: with W ranks and a per-rank batch B, the loader cuts the shuffled order into global
batches of W * B samples and rank r takes the r-th contiguous slice (:mod:`distillab.engine.loader`),
so ``gather_cat(x)`` of per-rank batch tensors is the global batch in the order a single process with
batch W * B would see it, and :func:`local_slice` picks this rank's rows back out of a global tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def is_distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); a no-op for a single process."""
    if not info.enabled or (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    if not torch_dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed: run with one process")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={info.world_size} but {var} is not set: launch with torchrun "
                               "(e.g. `torchrun --nproc_per_node 2 -m distillab distill ...`)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                                  timeout=timedelta(seconds=timeout_s))


def destroy_process_group() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


@torch.no_grad()
def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """All ranks' ``t`` concatenated along dim 0 in rank order (every rank must pass the same shape).
    No gradient flows through the result. Identity for a single process."""
    if not is_distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def gather_varsize(t: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather_cat`, but the ranks' dim-0 sizes may differ (padded, gathered, trimmed)."""
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = gather_cat(n).tolist()
    top = max(sizes)
    padded = torch.zeros((top, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = gather_cat(padded).split(top)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def local_slice(global_n: int) -> slice:
    """This rank's rows of a global tensor made by :func:`gather_cat` of equal per-rank parts."""
    w = world_size()
    if global_n % w:
        raise ValueError(f"a global batch of {global_n} rows does not split evenly over {w} ranks")
    per = global_n // w
    r = rank()
    return slice(r * per, (r + 1) * per)


@torch.no_grad()
def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` (``op``: sum, mean, max, min); returns ``t``. Identity for one process."""
    if not is_distributed():
        return t
    ops = {"sum": torch_dist.ReduceOp.SUM, "mean": torch_dist.ReduceOp.SUM,
           "max": torch_dist.ReduceOp.MAX, "min": torch_dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    torch_dist.all_reduce(t, ops[op])
    if op == "mean":
        t.div_(torch_dist.get_world_size())
    return t


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (any picklable object)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def share(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Rank ``rank_``'s contiguous share [start, end) of ``n`` rows over ``world`` ranks (the first
    ranks take one more)."""
    per, extra = divmod(n, world)
    start = rank_ * per + min(rank_, extra)
    return start, start + per + (1 if rank_ < extra else 0)


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous share [start, end) of ``n`` rows in the running process group."""
    return share(n, rank(), world_size())
