"""The one small data interface: train and test sets yielding ``(input, label, index)``.

A data set factory, registered in :data:`DATASETS`, returns a :class:`DataBundle`. In-memory sets
(:class:`ArrayDataset`) are batched by tensor indexing and can live on the training device; any
other ``torch.utils.data.Dataset`` that yields ``(input, label, index)`` works through a DataLoader.
Inputs leave the data set *raw* (uint8 images or float signals); the bundle's ``train_transform`` /
``test_transform`` turn a whole batch into normalised floats on the training device, with batched
augmentation for training.

A data set may give each sample more named inputs (:class:`InputField`: a privileged view the teacher
reads, a degraded view the student reads): items are then ``(input, label, index, {name: tensor})``
and batches carry them by name. The factory declares them at registration
(``DATASETS.register(..., fields=lambda options: (...))``), so a config whose model reads a field the
data set does not provide is refused before any data is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset

from distillab.core.contract import INDEX, LABEL, MAIN_INPUT
from distillab.core.errors import DataError, DataMissingError
from distillab.registry import Registry

DATASETS: Registry = Registry("data set")

# A batched augmentation: (float batch on device, generator on the same device) -> augmented batch.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class ArrayDataset(Dataset):
    """A data set held as tensors; item ``i`` is ``(inputs[i], labels[i], i)``, followed by
    ``{name: fields[name][i]}`` when the set has extra named inputs."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor,
                 fields: dict[str, torch.Tensor] | None = None) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        for name, values in (fields or {}).items():
            if len(values) != len(labels):
                raise ValueError(f"field {name!r} has {len(values)} rows for {len(labels)} samples")
        self.inputs = inputs
        self.labels = labels.long()
        self.fields = dict(fields or {})

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.fields:
            return self.inputs[i], self.labels[i], i, {n: v[i] for n, v in self.fields.items()}
        return self.inputs[i], self.labels[i], i

    def to(self, device: torch.device | str) -> "ArrayDataset":
        return ArrayDataset(self.inputs.to(device), self.labels.to(device),
                            {n: v.to(device) for n, v in self.fields.items()})


@dataclass(frozen=True)
class InputField:
    """An extra named input of every sample, besides the main one.

    shape: one sample's shape. mean/std: its per-channel normalisation (uint8 is divided by 255 first).
    augment: "shared" applies the main input's augmentation with the *same* drawn parameters (the same
    crop, flip or shift: the views stay aligned; shapes must allow it), "none" leaves it unaugmented.
    fill: where the field is normalised otherwise than the main input, the value padding takes in it
    (e.g. ``normalised_black(mean, std)`` of the field for a crop), else the main input's padding is used.
    """

    shape: tuple[int, ...]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    augment: Literal["shared", "none"] = "shared"
    fill: Sequence[float] | None = None  # padding value of the shared augmentation here (None: the main input's)


def _normalise(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if mean is not None and std is not None:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(shape)
        s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(shape)
        x = (x - m) / s
    return x


def scalar_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """One mean and standard deviation over a whole (training) tensor: a one-channel set's normalisation."""
    return [float(x.double().mean())], [float(x.double().std())]


def data_fields(name: str, options: dict[str, Any]) -> tuple[str, ...]:
    """The named inputs registered data set ``name`` provides with ``options`` (the main input included),
    known without reading any data."""
    declared: Callable[[dict], Sequence[str]] | None = DATASETS.entry(name).meta.get("fields")
    return (MAIN_INPUT, *(declared(dict(options)) if declared is not None else ()))


IGNORE_INDEX = -100  # a label that counts nowhere (padding of a token sequence), as in F.cross_entropy
RESERVED_FIELDS = (MAIN_INPUT, LABEL, INDEX)  # batch keys every batch has; no extra field may take them


@dataclass
class DataBundle:
    """Everything the engine needs to know about one data set.

    name: registered name. kind: "image" (N, C, H, W), "signal" (N, C, L), "vector" (N, D) or "tokens"
    (language modelling: inputs are token ids (N, L), labels the next token at every position (N, L),
    IGNORE_INDEX where a position is padding and counts nowhere; ``num_classes`` is the vocabulary size).
    mean/std: per-channel normalisation applied after scaling (uint8 inputs are divided by 255).
    augment: batched training augmentation applied after normalisation, or None.
    class_names: optional, for plots. fields: extra named inputs (the train and test sets hold them all).
    tokenizer: for "tokens": what turned text into ids ({"name": ..., "vocab_size": ..., "hash": ...}),
        recorded in checkpoints so a model is never read with another vocabulary.
    token_bytes: for "tokens": (vocab_size,) the number of UTF-8 bytes each token stands for, so
        held-out loss converts to bits per byte (comparable across tokenizers).
    val: a validation part held out of the training split (``data.val_fraction``; see
        :mod:`distillab.data.validation`), or None. validation: how it was drawn (fraction, seed, sizes).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    kind: Literal["image", "signal", "vector", "tokens"]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    augment: Augment | None = None
    class_names: list[str] | None = field(default=None)
    fields: dict[str, InputField] = field(default_factory=dict)  # extra named inputs of every sample
    tokenizer: dict[str, Any] | None = None
    token_bytes: torch.Tensor | None = None
    val: Dataset | None = None
    validation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        clash = set(self.fields) & set(RESERVED_FIELDS)
        if clash:
            raise ValueError(f"data set {self.name!r}: fields may not be called {sorted(clash)} (reserved)")

    @property
    def is_tokens(self) -> bool:
        return self.kind == "tokens"

    def test_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw batch -> normalised float batch (no augmentation); token ids stay integer ids."""
        if self.is_tokens:
            return x.long()
        return _normalise(x, self.mean, self.std)

    def train_transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Raw batch -> normalised, augmented float batch."""
        x = self.test_transform(x)
        if self.augment is not None:
            x = self.augment(x, generator)
        return x

    def field_names(self) -> tuple[str, ...]:
        """Every named input a batch carries: the main one and the extra fields."""
        return (MAIN_INPUT, *self.fields)

    def field_shape(self, name: str) -> tuple[int, ...]:
        """One sample's shape of the named input ``name``."""
        return tuple(self.input_shape) if name == MAIN_INPUT else tuple(self._field(name).shape)

    def prepare_field(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Raw batch of the named input ``name`` -> normalised float batch (no augmentation)."""
        if name == MAIN_INPUT:
            return self.test_transform(x)
        spec = self._field(name)
        if self.is_tokens:  # per-token fields (token ids, stored log-probabilities) keep their values
            return x
        return _normalise(x, spec.mean, spec.std)

    def _field(self, name: str) -> InputField:
        if name not in self.fields:
            raise KeyError(f"data set {self.name!r} has no input field {name!r} (fields: "
                           f"{', '.join(self.field_names())})")
        return self.fields[name]


def read_json_file(file: Path, prefix: str, missing: str, unreadable: str) -> Any:
    """The parsed JSON of a data set's description file. A missing file is a DataMissingError, an unreadable
    one a DataError: ``{prefix}'{file}' does not exist: {missing}`` / ``... cannot be read (why): {unreadable}``."""
    if not file.is_file():
        raise DataMissingError(f"{prefix}{str(file)!r} does not exist: {missing}")
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{prefix}{str(file)!r} cannot be read ({exc}): {unreadable}") from None


def default_data_root() -> Path:
    """Where data sets live unless told otherwise: ``$DISTILLAB_DATA`` or ``~/.cache/distillab/data``."""
    env = os.environ.get("DISTILLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "distillab" / "data"


def resolve_root(root: str | Path | None) -> Path:
    """``root`` as a path, or :func:`default_data_root` when it is None."""
    return default_data_root() if root is None else Path(root).expanduser()
