"""Batching: in-memory data sets are indexed as tensors on the device; others go through a DataLoader.

Shuffling is seeded by ``(seed, epoch)``, so a resumed run sees the same order as an uninterrupted
one without saving generator state. A data schedule can restrict training to a subset of sample indices
with :meth:`BatchLoader.set_subset`.

With W ranks (``dist``) and a per-rank batch B, the shared order is padded to a multiple of W (with its
first samples, as ``DistributedSampler`` pads) and cut into *global* batches of W * B samples; rank r
takes the r-th contiguous slice of each. The global batch, gathered in rank order, is then exactly the
batch a single process with batch W * B would draw, which is what lets memory banks, samplers and
augmentation draws be made for the global batch and stay identical on every rank
(:mod:`distillab.core.dist`). ``shard="split"`` (evaluation, feature extraction) instead gives each
rank one contiguous share of the order, unpadded.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from distillab.core.contract import INDEX, LABEL, MAIN_INPUT
from distillab.data.base import ArrayDataset
from distillab.core.dist import DistInfo, share


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one (seed, epoch, stream): stream 0 shuffles, stream 1 augments."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 7_919 + stream) % (2**63 - 1))
    return gen


class BatchLoader:
    def __init__(self, dataset: Dataset, batch_size: int, *, device: torch.device, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 0, on_device: bool = True,
                 dist: DistInfo = DistInfo(), shard: str = "global_batches") -> None:
        if shard not in ("global_batches", "split"):
            raise ValueError(f"shard must be 'global_batches' or 'split', got {shard!r}")
        self.shard = shard
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.dist = dist
        self.epoch = 0
        self.subset: torch.Tensor | None = None
        self.in_memory = isinstance(dataset, ArrayDataset)
        if self.in_memory and on_device:
            dataset = dataset.to(device)
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_subset(self, indices: torch.Tensor | None) -> None:
        """Train on these sample indices only (None: the whole set)."""
        self.subset = None if indices is None else torch.as_tensor(indices, dtype=torch.long).cpu()

    def _order(self) -> torch.Tensor:
        base = self.subset if self.subset is not None else torch.arange(len(self.dataset))
        if self.shuffle:
            perm = torch.randperm(len(base), generator=epoch_generator(self.seed, self.epoch, 0))
            base = base[perm]
        w = self.dist.world_size
        if w > 1 and self.shard == "split":
            start, end = share(len(base), self.dist.rank, w)
            return base[start:end]
        if w > 1:
            pad = math.ceil(len(base) / w) * w - len(base)
            if pad:  # the first samples again (more than once when there are fewer samples than ranks)
                base = torch.cat([base, base.repeat(math.ceil(pad / len(base)))[:pad]])
            per_rank = []
            g = self.batch_size * w
            for start in range(0, len(base), g):
                chunk = base[start:start + g]
                if self.drop_last and len(chunk) < g:
                    break
                part = len(chunk) // w
                per_rank.append(chunk[self.dist.rank * part:(self.dist.rank + 1) * part])
            base = torch.cat(per_rank) if per_rank else base[:0]
        return base

    def __len__(self) -> int:
        n = len(self.subset) if self.subset is not None else len(self.dataset)
        w = self.dist.world_size
        if w > 1 and self.shard == "split":
            start, end = share(n, self.dist.rank, w)
            return math.ceil((end - start) / self.batch_size)
        n = math.ceil(n / w) * w
        g = self.batch_size * w
        return n // g if self.drop_last else math.ceil(n / g)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Batches as dicts: ``input``, ``label``, ``index`` and the data set's extra named inputs."""
        order = self._order()
        if self.in_memory:
            yield from self._iter_memory(order)
        else:
            yield from self._iter_dataloader(order)

    def _iter_memory(self, order: torch.Tensor):
        ds: ArrayDataset = self.dataset
        order = order.to(ds.inputs.device)
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = {MAIN_INPUT: ds.inputs[idx], LABEL: ds.labels[idx], INDEX: idx,
                     **{name: values[idx] for name, values in ds.fields.items()}}
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _iter_dataloader(self, order: torch.Tensor):
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order.tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for item in loader:
            x, y, idx = item[:3]
            batch = {MAIN_INPUT: x, LABEL: torch.as_tensor(y), INDEX: torch.as_tensor(idx),
                     **(item[3] if len(item) > 3 else {})}
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}


class SyntheticSteps:
    """The loader of a method that makes its own training inputs (data-free distillation): ``steps`` batches an
    epoch, each only ``batch_size`` sample indices and placeholder labels; the method's step draws the inputs."""

    def __init__(self, steps: int, batch_size: int, device: torch.device) -> None:
        self.steps, self.batch_size, self.device = int(steps), int(batch_size), device
        self.subset = None

    def set_epoch(self, epoch: int) -> None:
        """Nothing to reshuffle: the indices are placeholders and the step draws its inputs from the epoch's seed."""

    def set_subset(self, indices) -> None:
        if indices is not None:
            raise ValueError("a data-free method has no training samples to choose from")

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.steps):
            index = torch.arange(self.batch_size, device=self.device)
            yield {INDEX: index, LABEL: torch.zeros_like(index)}
