"""A rich progress bar over epochs and steps, showing loss, accuracy and throughput."""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    """Context manager handed to :meth:`Trainer.fit` as ``progress_factory(epochs, steps)``."""

    def __init__(self, epochs: int, steps: int, label: str = "train", console: Console | None = None,
                 updates_per_epoch: int = 20) -> None:
        self.epochs, self.steps, self.label = epochs, steps, label
        self.every = max(1, steps // updates_per_epoch)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, refresh_per_second=4,
        )
        self._epoch_task = None
        self._step_task = None
        self._tic = 0.0

    def __enter__(self) -> "TrainingProgress":
        self.progress.__enter__()
        self._epoch_task = self.progress.add_task(f"{self.label} epochs", total=self.epochs, info="")
        self._step_task = self.progress.add_task("  steps", total=self.steps, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def advance_epochs(self, done: int) -> None:
        self.progress.update(self._epoch_task, completed=done)

    def step_callback(self, epoch: int) -> Callable:
        self.progress.reset(self._step_task, total=self.steps, description=f"  epoch {epoch}", info="")
        self._tic = time.perf_counter()

        def update(step: int, state) -> None:
            if step % self.every and step != self.steps:
                return
            means = state.means()
            elapsed = max(time.perf_counter() - self._tic, 1e-9)
            if int(state.counted) != state.samples:  # a language model: accuracy and rate per token
                rate = f"{int(state.counted) / elapsed:,.0f} tok/s"
            else:
                rate = f"{state.samples / elapsed:,.0f} img/s"
            info = f"loss {means['train/loss']:.3f}  acc {means['train/top1']:.1f}%  {rate}"
            self.progress.update(self._step_task, completed=step, info=info)

        return update

    def end_epoch(self, epoch: int, row: dict) -> None:
        self.progress.update(self._epoch_task, completed=epoch, info=_test_summary(row, short=True))


def _test_summary(row: dict, short: bool) -> str:
    """Train, validation (where held out) and test accuracy of an epoch's row; a language model's test
    perplexity and bits per byte too."""
    test, val = row.get("test/top1"), row.get("val/top1")
    if short:
        text = f"train {row['train/top1']:.1f}%" + (f"  val {val:.2f}%" if val is not None else "") + \
            (f"  test {test:.2f}%" if test is not None else "")
    else:
        text = f"train top-1 {row['train/top1']:.2f}" + (f"  val top-1 {val:.2f}" if val is not None else "") + \
            (f"  test top-1 {test:.2f}" if test is not None else "")
    if row.get("test/ppl") is not None:
        text += f"  ppl {row['test/ppl']:.3f}  bpb {row['test/bpb']:.4f}"
    return text


def _rate(row: dict) -> str:
    if "throughput/tokens_per_s" in row:
        return f"{row['throughput/tokens_per_s']:,.0f} tok/s"
    return f"{row.get('throughput/images_per_s', 0):,.0f} img/s"


class EpochLines:
    """One plain line per epoch, flushed, for logs that are not a terminal (nohup, sbatch, ``| tee``) or when
    the bar is off: the same interface as :class:`TrainingProgress`, handed to :meth:`Trainer.fit`."""

    def __init__(self, epochs: int, label: str = "train", console: Console | None = None) -> None:
        self.epochs, self.label, self.console = epochs, label, console

    def __enter__(self) -> "EpochLines":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def advance_epochs(self, done: int) -> None:
        if done:
            self._print(f"{self.label}: continuing after epoch {done} of {self.epochs}")

    def step_callback(self, epoch: int) -> None:
        return None

    def end_epoch(self, epoch: int, row: dict) -> None:
        losses = "  ".join(f"{k.removeprefix('train/')} {v:.4f}" for k, v in row.items()
                           if k.startswith("train/") and "top1" not in k and "/" not in k.removeprefix("train/"))
        parts = [f"{self.label} epoch {epoch}/{self.epochs}", losses, _test_summary(row, short=False),
                 _rate(row), f"{row.get('time/epoch_s', 0):.1f} s"]
        self._print("  ".join(p for p in parts if p))

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, soft_wrap=True, highlight=False, markup=False)
            self.console.file.flush()
        else:
            print(text, flush=True)


class WorkProgress:
    """A long loop outside training (embedding a data set, fitting a probe): a bar on a terminal, otherwise a
    plain line at most every ``every_s`` seconds and one at the end. ``console`` None: silent."""

    def __init__(self, total: int, description: str, console: Console | None = None, every_s: float = 10.0) -> None:
        self.total, self.description, self.console, self.every_s = total, description, console, every_s
        self.done = 0
        self._bar: Progress | None = None
        self._task = None
        self._tic = self._last = 0.0

    def __enter__(self) -> "WorkProgress":
        self._tic = self._last = time.perf_counter()
        if self.console is not None and self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.console is not None and time.perf_counter() - self._last >= self.every_s:
            self._last = time.perf_counter()
            self._line(f"{self.description}: {self.done}/{self.total}")

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self.console is not None and exc[0] is None:
            self._line(f"{self.description}: {self.done}/{self.total} in {time.perf_counter() - self._tic:.1f} s")

    def _line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False, markup=False)
        self.console.file.flush()
