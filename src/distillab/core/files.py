"""Files that are never half-written, and checkpoints read carefully.

Every file distillab writes for keeps (checkpoints, model files, summaries, metrics, caches, downloads,
stored teachers) goes through :func:`atomic_file`: written to a temporary file in the destination's
folder, flushed and fsynced, then renamed over the destination. A crash mid-write leaves the previous
file (or none) in place, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from distillab.core.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, truncated or not a distillab/RepDistiller/mdistiller file."""


class CheckpointMissing(CheckpointError, FileNotFoundError):
    """A checkpoint path where there is no file."""


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it replaces ``path``.

    An exception inside the block removes the temporary file and leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _file_mode(path: Path) -> int:
    """The mode an ordinary ``open(path, "w")`` would give: the replaced file's, else 0o666 less the umask
    (``mkstemp`` makes its files private, which would hide results from the rest of a shared group)."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        torch.save(obj, fh)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def copy_atomic(source: str | Path, path: str | Path) -> None:
    """Copy the file ``source`` to ``path`` atomically."""
    with open(source, "rb") as src, atomic_file(path) as dst:
        shutil.copyfileobj(src, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file; a missing or unreadable file raises :class:`CheckpointError` saying why."""
    path = Path(path)
    if not path.is_file():
        hint = ": give a run's model.pt (or its run folder)" if path.suffix in (".pt", ".pth", "") else ""
        raise CheckpointMissing(f"checkpoint {str(path)!r} does not exist{hint}")
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
