"""What every ``distillab`` command shares: the console, which errors a user can fix, and how they are shown."""

from __future__ import annotations

import typer
from rich.console import Console

from distillab.config import ConfigError
from distillab.core.files import CheckpointError

console = Console()

# Errors a user can fix: shown as one message, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError, KeyError, RuntimeError)


def fail(exc: BaseException) -> None:
    """Print a user error as one line and leave with exit code 2."""
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)
