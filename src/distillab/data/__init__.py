"""Data sets behind one small interface: ``build_dataset(name, root, download, **options)``.

Importing this package registers every data set in :data:`DATASETS`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from distillab.data import (arith, cifar, digits, imagefolder, mnist1d, synthetic,  # noqa: F401 (registration)
                            tabular, tensor_folder, text, token_folder)
from distillab.data.base import DATASETS, ArrayDataset, DataBundle, InputField, data_fields, default_data_root
from distillab.core.errors import DataError, DataMissingError, UserError
from distillab.registry import close_matches

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataBundle",
    "InputField",
    "build_dataset",
    "check_dataset_options",
    "data_fields",
    "dataset_options",
    "default_data_root",
]

_COMMON = ("root", "download")


def dataset_options(name: str) -> dict[str, object]:
    """The options of data set ``name`` (beyond root and download) with their defaults."""
    params = inspect.signature(DATASETS.get(name)).parameters
    return {
        p.name: p.default
        for p in params.values()
        if p.name not in _COMMON and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def check_dataset_options(name: str, options: dict) -> None:
    """Refuse an unknown data set or option (a RegistryError / ValueError naming the valid ones), reading nothing."""
    factory = DATASETS.get(name)  # unknown name: RegistryError with close matches
    valid = dataset_options(name)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    unknown = [k for k in options if k not in valid]
    if unknown and not takes_any:
        key = unknown[0]
        matches = close_matches(key, list(valid))
        hint = f"did you mean {', '.join(repr(m) for m in matches)}? " if matches else ""
        listed = ", ".join(valid) if valid else "(none)"
        raise DataError(f"data set {name!r} has no option {key!r}: {hint}valid options: {listed}")


def build_dataset(
    name: str, root: str | Path | None = None, download: bool = False, **options
) -> DataBundle:
    """Build registered data set ``name``. An unknown option is a ValueError naming the valid ones."""
    check_dataset_options(name, options)
    try:
        return DATASETS.get(name)(root=root, download=download, **options)
    except UserError:
        raise
    except FileNotFoundError as exc:  # an archive or folder that is not there: the message says where it looked
        raise DataMissingError(f"data set {name!r}: {exc}") from None
    except (ValueError, OSError) as exc:  # an option's value, a corrupt or unreadable file, a failed download
        raise DataError(f"data set {name!r}: {exc}") from None
