"""What every ``distillab`` command shares: the console, which errors a user can fix, and how they are shown."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from distillab.core.errors import UserError

console = Console()

# Errors a user can fix: shown as one message, no traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError,)


def route_warnings() -> None:
    """Show Python warnings (a clipped option, a deprecation) as one console line each, without their source line."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
        console.print(f"[yellow]warning[/]: {escape(str(message))}", soft_wrap=True)

    warnings.showwarning = show


def fail(exc: BaseException) -> None:
    """Print a user error as one line and leave with exit code 2."""
    console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """How a command ends when something goes wrong: a user error as one line (exit 2); Ctrl-C as one line
    saying what was kept and how to continue, when the run could tell (exit 130); anything else, a bug,
    with a line asking for a report above its traceback."""
    try:
        yield
    except UserError as exc:
        fail(exc)
    except KeyboardInterrupt as exc:
        console.print(f"[bold yellow]interrupted[/]: {escape(str(exc)) or 'nothing was running yet'}", soft_wrap=True)
        raise typer.Exit(code=130) from None
    except Exception:
        console.print("[bold red]unexpected error[/]: this is a bug in distillab or a library it uses; please "
                      "report it with the traceback below and the command that led to it", soft_wrap=True)
        raise
