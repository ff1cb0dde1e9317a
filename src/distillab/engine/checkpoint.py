"""Atomic checkpoint writing and careful reading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not a distillab/RepDistiller/mdistiller file."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write with ``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file; a missing or unreadable file raises :class:`CheckpointError` saying why."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); the file is corrupt or "
            "not a PyTorch checkpoint: restore it or train again"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict of states")
    return obj
