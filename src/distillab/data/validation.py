"""A validation part held out of a data set's training split (``data.val_fraction``).

Selection (the best epoch, a tuning study's objective, early stopping) must never read the test set: the
number it picks would be an optimistic estimate of itself. With ``data.val_fraction`` set, a fixed part of
the training samples is held out, the run trains on the rest and logs ``val/*`` metrics every evaluated
epoch, and every selection reads them; the test set stays the reported number.

The split is a function of the training set and ``data.val_seed`` only (not of the run's seed), so every
seed and every trial of a study holds out the same samples. Classification sets are split per class
(stratified): class ``c`` with ``n_c`` samples gives ``round(fraction * n_c)`` of them, at least one where
it has two or more and never all of them, so the class proportions of both parts follow the training set's.
Language-model blocks have no class: a plain random share of the blocks.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.data import Dataset

from distillab.data.base import ArrayDataset, DataBundle


class IndexedSubset(Dataset):
    """Items ``indices[i]`` of ``dataset``, re-numbered ``0 .. len - 1`` (the engine keys samples by that
    number: the teacher cache, augmentation draws)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        item = self.dataset[self.indices[i]]
        return (item[0], item[1], i, *item[3:])


def subset(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The samples ``indices`` of ``dataset`` as a data set of their own (tensors stay tensors)."""
    if isinstance(dataset, ArrayDataset):
        return ArrayDataset(dataset.inputs[indices], dataset.labels[indices],
                            {n: v[indices] for n, v in dataset.fields.items()})
    return IndexedSubset(dataset, indices)


def class_labels(dataset: Dataset) -> torch.Tensor | None:
    """One class label per sample where the data set has them ((N,) labels, or an image folder's targets);
    None for language-model blocks (a label per token)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and getattr(dataset, "targets", None) is not None:
        labels = torch.as_tensor(dataset.targets)
    if labels is None:
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return labels.cpu().long() if labels.dim() == 1 else None


def split_indices(n: int, fraction: float, seed: int, labels: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` sorted indices of ``0 .. n - 1``: ``fraction`` held out, per class when ``labels``
    are given. A ValueError where a part would be empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    generator = torch.Generator().manual_seed(int(seed))
    # without classes the whole set is one group: the same draws as a plain random share
    groups = [torch.arange(n)] if labels is None else \
        [(labels == c).nonzero().squeeze(1) for c in torch.unique(labels).tolist()]  # ascending: same on every machine
    parts = []
    for members in groups:
        members = members[torch.randperm(len(members), generator=generator)]
        k = min(max(math.floor(fraction * len(members) + 0.5), 1), len(members) - 1) if len(members) >= 2 else 0
        parts.append(members[:k])
    val = torch.cat(parts)
    if len(val) == 0 or len(val) == n:
        raise ValueError(f"val_fraction {fraction} of {n} training samples leaves "
                         f"{'no validation' if len(val) == 0 else 'no training'} samples: choose another fraction")
    held = torch.zeros(n, dtype=torch.bool)
    held[val] = True
    return (~held).nonzero().squeeze(1), held.nonzero().squeeze(1)


def split_validation(data: DataBundle, fraction: float, seed: int = 0) -> DataBundle:
    """``data`` with ``fraction`` of its training samples moved to ``val`` (stratified by class where the
    samples have one), recorded in ``data.validation``."""
    labels = class_labels(data.train)
    train, val = split_indices(len(data.train), fraction, seed, labels)
    record = {"fraction": fraction, "seed": int(seed), "train": len(train), "val": len(val),
              "stratified": labels is not None}
    return dataclasses.replace(data, train=subset(data.train, train), val=subset(data.train, val), validation=record)
