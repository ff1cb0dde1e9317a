"""The one small data interface: train and test sets yielding ``(input, label, index)``.

A data set factory, registered in :data:`DATASETS`, returns a :class:`DataBundle`. In-memory sets
(:class:`ArrayDataset`) are batched by tensor indexing and can live on the training device; any
other ``torch.utils.data.Dataset`` that yields ``(input, label, index)`` works through a DataLoader.
Inputs leave the data set *raw* (uint8 images or float signals); the bundle's ``train_transform`` /
``test_transform`` turn a whole batch into normalised floats on the training device, with batched
augmentation for training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset

from distillab.registry import Registry

DATASETS: Registry = Registry("data set")

# A batched augmentation: (float batch on device, generator on the same device) -> augmented batch.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class ArrayDataset(Dataset):
    """A data set held as two tensors; item ``i`` is ``(inputs[i], labels[i], i)``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs = inputs
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.inputs[i], self.labels[i], i

    def to(self, device: torch.device | str) -> "ArrayDataset":
        return ArrayDataset(self.inputs.to(device), self.labels.to(device))


@dataclass
class DataBundle:
    """Everything the engine needs to know about one data set.

    name: registered name. kind: "image" (N, C, H, W), "signal" (N, C, L) or "vector" (N, D).
    mean/std: per-channel normalisation applied after scaling (uint8 inputs are divided by 255).
    augment: batched training augmentation applied after normalisation, or None.
    class_names: optional, for plots.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    kind: Literal["image", "signal", "vector"]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    augment: Augment | None = None
    class_names: list[str] | None = field(default=None)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        else:
            x = x.float()
        if self.mean is not None and self.std is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype).view(shape)
            std = torch.as_tensor(self.std, device=x.device, dtype=x.dtype).view(shape)
            x = (x - mean) / std
        return x

    def test_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw batch -> normalised float batch (no augmentation)."""
        return self._normalise(x)

    def train_transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Raw batch -> normalised, augmented float batch."""
        x = self._normalise(x)
        if self.augment is not None:
            x = self.augment(x, generator)
        return x


def default_data_root() -> Path:
    """Where data sets live unless told otherwise: ``$DISTILLAB_DATA`` or ``~/.cache/distillab/data``."""
    env = os.environ.get("DISTILLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "distillab" / "data"


def resolve_root(root: str | Path | None) -> Path:
    """``root`` as a path, or :func:`default_data_root` when it is None."""
    return default_data_root() if root is None else Path(root).expanduser()
