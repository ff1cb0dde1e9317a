"""A data set kept as tensors in a folder: synthesised or pseudo-labelled sets, read back by any run.

:func:`save_tensor_dataset` writes a folder; the registered data set ``tensors`` reads it
(``data.name=tensors data.options.path=<folder>``). The folder holds two files, each written atomically:

- ``data.pt``: a dict of tensors ``train_x``, ``train_y``, ``test_x``, ``test_y`` and, with soft targets,
  ``train_soft``, ``test_soft`` ((N, C) probabilities);
- ``meta.json``: format and version, classes, kind, input shape, normalisation, sizes, the SHA-256 of
  ``data.pt`` (so a folder whose two files come from different writes is refused) and the caller's ``meta``.

Soft targets (e.g. a teacher's probabilities on a MUNGE transfer set) become the named field ``soft`` of
every sample, for a loss to read; ``labels`` stay hard labels (by default the argmax of the soft targets).
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from distillab.core.errors import DataError, DataMissingError
from distillab.core.files import atomic_file, write_json_atomic
from distillab.data.base import DATASETS, ArrayDataset, DataBundle, InputField, read_json_file

SOFT = "soft"  # the field holding the soft targets (N, C)
DATA_FILE = "data.pt"
META_FILE = "meta.json"
FORMAT = "distillab.tensors"
VERSION = 1
INPUT_DIMS = {"image": 3, "signal": 2, "vector": 1}  # one sample's dimensions for each kind
SOFT_SUM_TOLERANCE = 1e-3  # how far a row of soft targets may sum from 1 (float16 teachers, rounding)


def _check_labels(name: str, labels: torch.Tensor, n: int, num_classes: int) -> None:
    if labels.dim() != 1 or len(labels) != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got {labels.dtype}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")


def _check_soft(name: str, soft: torch.Tensor, n: int, num_classes: int) -> None:
    if tuple(soft.shape) != (n, num_classes) or not soft.dtype.is_floating_point:
        raise ValueError(f"{name} must be float probabilities of shape ({n}, {num_classes}), got "
                         f"{soft.dtype} {tuple(soft.shape)}")
    if n and (not torch.isfinite(soft).all() or float(soft.min()) < 0
              or float((soft.double().sum(1) - 1).abs().max()) > SOFT_SUM_TOLERANCE):
        raise ValueError(f"{name} must be probabilities: finite, non-negative, each row summing to 1 "
                         "(apply softmax to logits first)")


def check_tensor_dataset(tensors: dict[str, torch.Tensor], num_classes: int, kind: str,
                         mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
    """Refuse tensors that do not make a data set (a ValueError naming the tensor): the one check behind
    writing and reading a folder."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if kind not in INPUT_DIMS:
        raise ValueError(f"kind must be one of {', '.join(INPUT_DIMS)}, got {kind!r}")
    train_x, test_x = tensors["train_x"], tensors["test_x"]
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if x.dim() != INPUT_DIMS[kind] + 1:
            raise ValueError(f"{name} of a {kind!r} data set must have {INPUT_DIMS[kind] + 1} dimensions "
                             f"(samples first), got shape {tuple(x.shape)}")
        if len(x) == 0:
            raise ValueError(f"{name} holds no samples")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train_x and test_x samples differ in shape: {tuple(train_x.shape[1:])} vs "
                         f"{tuple(test_x.shape[1:])}")
    for split in ("train", "test"):
        n = len(tensors[f"{split}_x"])
        _check_labels(f"{split}_y", tensors[f"{split}_y"], n, num_classes)
        if f"{split}_soft" in tensors:
            _check_soft(f"{split}_soft", tensors[f"{split}_soft"], n, num_classes)
    if (mean is None) != (std is None):
        raise ValueError("give mean and std together, or neither")
    channels = int(train_x.shape[1])
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, channels):
            raise ValueError(f"{name} must hold 1 or {channels} values (one per channel or feature), got {len(values)}")
    if std is not None and min(float(s) for s in std) <= 0:
        raise ValueError("std must be positive")


def save_tensor_dataset(folder: str | Path, train_x: torch.Tensor, train_y: torch.Tensor | None,
                        test_x: torch.Tensor, test_y: torch.Tensor, *, num_classes: int,
                        kind: str, mean: Sequence[float] | None, std: Sequence[float] | None,
                        soft_targets: torch.Tensor | None = None, test_soft_targets: torch.Tensor | None = None,
                        class_names: Sequence[str] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write a data set to ``folder`` (created if needed) for the data set ``tensors``; return the folder.

    train_x / test_x: raw inputs (N, ...) of ``kind`` "image" (C, H, W), "signal" (C, L) or "vector" (D,);
    uint8 inputs are divided by 255 when read, then normalised with ``mean`` / ``std`` (one value per
    channel or feature, or one for all; None both: no normalisation). train_y / test_y: class indices.
    soft_targets: the training samples' probabilities (N, num_classes), exposed as the field ``soft``;
    train_y may then be None and becomes their argmax. test_soft_targets: the test samples' (default:
    the one-hot of test_y, so every sample has the field). meta: anything JSON can hold, stored with it
    (:func:`read_tensor_meta`). Inputs keep their dtype; everything is stored on the CPU.
    """
    if train_y is None:
        if soft_targets is None:
            raise ValueError("train_y may only be None when soft_targets are given (labels are then their argmax)")
        train_y = soft_targets.argmax(dim=1)
    if test_soft_targets is not None and soft_targets is None:
        raise ValueError("test_soft_targets need soft_targets for the training samples too")
    given = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
             "train_soft": soft_targets, "test_soft": test_soft_targets}
    tensors = {k: v.detach().cpu().contiguous() for k, v in given.items() if v is not None}
    check_tensor_dataset(tensors, num_classes, kind, mean, std)
    tensors["train_y"], tensors["test_y"] = tensors["train_y"].long(), tensors["test_y"].long()
    if soft_targets is not None:
        if test_soft_targets is None:  # every sample must carry the field; the test set's are its labels
            tensors["test_soft"] = F.one_hot(tensors["test_y"], num_classes).float()
        tensors["train_soft"], tensors["test_soft"] = tensors["train_soft"].float(), tensors["test_soft"].float()
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names must hold {num_classes} names, got {len(class_names)}")

    folder = Path(folder)
    payload = write_payload(folder, tensors)
    write_json_atomic(folder / META_FILE, {
        "format": FORMAT, "version": VERSION,
        "num_classes": int(num_classes), "kind": kind, "input_shape": list(tensors["train_x"].shape[1:]),
        "mean": None if mean is None else [float(v) for v in mean],
        "std": None if std is None else [float(v) for v in std],
        "n_train": len(tensors["train_x"]), "n_test": len(tensors["test_x"]),
        "soft_targets": soft_targets is not None,
        "test_soft": None if soft_targets is None else ("given" if test_soft_targets is not None else "one-hot labels"),
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "sha256": hashlib.sha256(payload).hexdigest(),
        "meta": dict(meta or {}),
    })
    return folder


def _folder(path: str | Path | None) -> Path:
    if path is None:
        raise ValueError("option path is required: set data.options.path=<a folder written by save_tensor_dataset>")
    return Path(path).expanduser()


def read_tensor_meta(path: str | Path | None) -> dict[str, Any]:
    """The ``meta.json`` of a folder written by :func:`save_tensor_dataset` (the caller's ``meta`` under
    key "meta"); reads no tensors. A missing folder or file is a DataMissingError, an unreadable or foreign
    one a DataError, each naming the path."""
    folder = _folder(path)
    meta_file = folder / META_FILE
    if not folder.is_dir():
        raise DataMissingError(f"data set 'tensors': folder {str(folder)!r} (data.options.path) does not exist: "
                               "write it with save_tensor_dataset or fix the path")
    meta = read_json_file(meta_file, "data set 'tensors': ",
                          f"{str(folder)!r} is not a folder written by save_tensor_dataset", "write the folder again")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"data set 'tensors': {str(meta_file)!r} is not a {FORMAT} description: "
                        "write the folder with save_tensor_dataset")
    if meta.get("version") != VERSION:
        raise DataError(f"data set 'tensors': {str(meta_file)!r} has format version {meta.get('version')!r}; "
                        f"this distillab reads version {VERSION}")
    return meta


def write_payload(folder: Path, tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` saved atomically as ``folder/data.pt``; the bytes written (for the meta file's SHA-256)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    payload = buffer.getvalue()
    with atomic_file(Path(folder) / DATA_FILE) as fh:
        fh.write(payload)
    return payload


def load_payload(folder: Path, meta: dict[str, Any], data_set: str) -> Any:
    """``folder/data.pt``, refused unless it is the file ``meta`` (its SHA-256) describes: a DataMissingError or
    DataError naming the data set and the file."""
    data_file = folder / DATA_FILE
    if not data_file.is_file():
        raise DataMissingError(f"data set {data_set!r}: {str(data_file)!r} does not exist: write the folder again")
    try:
        payload = data_file.read_bytes()
    except OSError as exc:
        raise DataError(f"data set {data_set!r}: {str(data_file)!r} cannot be read ({exc})") from None
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise DataError(f"data set {data_set!r}: {str(data_file)!r} does not match {META_FILE} beside it (a write was "
                        "interrupted, or a file was changed or copied from another folder): write the folder again")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as exc:  # what torch.load raises on bad bytes
        raise DataError(f"data set {data_set!r}: {str(data_file)!r} cannot be loaded "
                        f"({type(exc).__name__}: {exc})") from None


def _read_tensors(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    data_file = folder / DATA_FILE
    tensors = load_payload(folder, meta, "tensors")
    keys = ("train_x", "train_y", "test_x", "test_y")
    if meta.get("soft_targets"):
        keys += ("train_soft", "test_soft")
    if not isinstance(tensors, dict) or any(not isinstance(tensors.get(k), torch.Tensor) for k in keys):
        raise DataError(f"data set 'tensors': {str(data_file)!r} does not hold the tensors {', '.join(keys)}")
    return {k: tensors[k] for k in keys}


def _declared_fields(options: dict[str, Any]) -> tuple[str, ...]:
    return (SOFT,) if read_tensor_meta(options.get("path")).get("soft_targets") else ()


@DATASETS.register(
    "tensors",
    description="a folder of tensors written by save_tensor_dataset (synthesised or pseudo-labelled sets)",
    fields=_declared_fields,
    field_hints={SOFT: "write the folder with save_tensor_dataset(..., soft_targets=...)"},
)
def tensors(root: str | Path | None = None, download: bool = False, path: str | None = None) -> DataBundle:
    """The data set in folder ``path`` (required; relative to the working directory), as written by
    :func:`save_tensor_dataset`. With soft targets, every sample also has the field ``soft`` (N, C),
    unnormalised and unaugmented. No augmentation. root/download are unused."""
    del root, download
    folder = _folder(path)
    meta = read_tensor_meta(folder)
    data = _read_tensors(folder, meta)
    num_classes, kind, mean, std = int(meta["num_classes"]), meta["kind"], meta["mean"], meta["std"]
    try:
        check_tensor_dataset(data, num_classes, kind, mean, std)
    except ValueError as exc:
        raise DataError(f"data set 'tensors': {str(folder / DATA_FILE)!r}: {exc}") from None
    train_fields, test_fields, fields = {}, {}, {}
    if meta["soft_targets"]:
        train_fields[SOFT], test_fields[SOFT] = data["train_soft"], data["test_soft"]
        fields[SOFT] = InputField((num_classes,), augment="none")
    return DataBundle(
        name="tensors",
        train=ArrayDataset(data["train_x"], data["train_y"], train_fields),
        test=ArrayDataset(data["test_x"], data["test_y"], test_fields),
        num_classes=num_classes,
        input_shape=tuple(data["train_x"].shape[1:]),
        kind=kind,
        mean=mean,
        std=std,
        augment=None,
        class_names=meta.get("class_names") or [str(i) for i in range(num_classes)],
        fields=fields,
    )
