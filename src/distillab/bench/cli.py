"""The ``distillab bench`` command: dry run, progress while the grid trains, and the summary table.

Every finished run prints one plain line as it ends (flushed, so a ``nohup`` or batch-job log shows the grid's
progress); a Ctrl-C ends with one line saying what is finished, what is left and the command that continues.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from distillab.bench import DONE, PARTIAL, collect, load_suite, run_state, run_suite
from distillab.bench.report import TABLE_HEAD_LINES, table_rows
from distillab.config import ConfigError, parse_override


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _seeds(text: str | None) -> list[int] | None:
    items = _split(text)
    if items is None:
        return None
    try:
        return [int(t) for t in items]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C during a grid; the message says how many runs are finished, how many are left and how to go on."""


def interrupted_message(runs, command: str) -> str:
    """One line after a Ctrl-C, from the run folders as the interrupt left them."""
    states = Counter(run_state(spec.folder) for spec in runs)
    left = len(runs) - states[DONE]
    resumable = f" ({states[PARTIAL]} resumable from a checkpoint)" if states[PARTIAL] else ""
    return (f"{states[DONE]} of {len(runs)} runs finished, {left} left{resumable}; "
            f"continue with: {command}")


def bench_invocation(suite_name: str, overrides: list[str], *, out: Path | None, seeds: str | None,
                     methods: str | None, pairs: str | None, workers: int, threads: int | None) -> str:
    """The ``distillab bench`` command line that runs (or continues) this grid: the options given, no others."""
    words = ["distillab", "bench", suite_name, *overrides]
    for flag, value in (("--out", out), ("--seeds", seeds), ("--methods", methods), ("--pairs", pairs),
                        ("--workers", workers if workers != 1 else None), ("--threads", threads)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def bench_command(suite_name: str, overrides: list[str], *, out: Path | None, seeds: str | None,
                  methods: str | None, pairs: str | None, workers: int, threads: int | None, dry_run: bool,
                  commands: bool, report_only: bool, console: Console) -> None:
    suite = load_suite(suite_name)
    for text in overrides:  # before any run: a pipeline row would only read them in its worker
        if "=" not in text and text in {p.name for p in suite.spec.pairs}:
            raise ConfigError(f"{text!r} is a pair of the suite, not an override: give several pairs "
                              f"comma-separated, e.g. --pairs {pairs or 'PAIR'},{text}")
        parse_override(text)
    out_given = out is not None
    out = Path(out) if out is not None else Path("bench") / suite.name
    kwargs = dict(seeds=_seeds(seeds), methods=_split(methods), pairs=_split(pairs), overrides=overrides)
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    runs, teachers = suite.grid(out, seeds=kwargs["seeds"], methods=kwargs["methods"], pairs=kwargs["pairs"],
                                extra=overrides)
    command = bench_invocation(suite_name, overrides, out=out if out_given else None, seeds=seeds, methods=methods,
                               pairs=pairs, workers=workers, threads=threads)

    if dry_run:
        _print_grid(suite, runs, teachers, out, console, commands)
        return
    if report_only:
        rows, cells, paths = collect(suite, runs, out, teachers, command=command)
        _print_cells(suite, cells, console)
        console.print(f"report: {paths['md']}  {paths['html']}", soft_wrap=True, markup=False, highlight=False)
        return

    console.print(f"suite [bold]{suite.name}[/]: {len(runs)} runs "
                  f"({Counter(run_state(r.folder) for r in runs).get('done', 0)} already finished) into {out}, "
                  f"{workers} worker(s)")
    progress = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)

    def say(text: str) -> None:  # a plain line, never folded at the console's width (logs are read whole)
        progress.console.print(text, soft_wrap=True, markup=False, highlight=False)

    def on_outcome(outcome, spec) -> None:
        progress.advance(task)
        if outcome.status == "done":
            how = "resumed, " if outcome.resumed else ""
            say(f"  {spec.key}: {outcome.top1:.2f}% ({how}{outcome.seconds:.0f} s)")
        elif outcome.status == "failed":
            progress.console.print(f"  [red]{escape(spec.key)} failed[/]: {escape(outcome.error[:200])}",
                                   soft_wrap=True, highlight=False)

    try:
        with progress:
            task = progress.add_task("runs", total=len(runs))
            result = run_suite(suite, out, workers=workers, threads=threads, report=say, on_outcome=on_outcome,
                               command=command, **kwargs)
    except KeyboardInterrupt:
        raise GridInterrupted(interrupted_message(runs, command)) from None
    _print_cells(suite, result["cells"], console)
    failed = [o for o in result["outcomes"] if o.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed[/] (listed in the report; errors in each run's error.txt)")
    paths = result["paths"]
    console.print(f"results: {paths['results']}  report: {paths['md']}  {paths['html']}", soft_wrap=True,
                  markup=False, highlight=False)


def _print_grid(suite, runs, teachers, out: Path, console: Console, commands: bool) -> None:
    from distillab.bench.suite import _display

    console.print(f"suite [bold]{suite.name}[/]: {len(runs)} runs into {out}")
    cells: dict[tuple[str, str], list] = {}
    for spec in runs:
        cells.setdefault((spec.pair, spec.label), []).append(spec)
    for pair in dict.fromkeys(p for p, _ in cells):
        p = suite.pair(pair)
        table = Table(title=f"{pair}: teacher {p.teacher or '-'} -> student {p.student['arch']} "
                            f"{p.student['options'] or ''}" if p.student else f"{pair}: pipelines")
        for col in ("method", "config", "seeds", "state"):
            table.add_column(col, overflow="fold")
        for (cell_pair, label), specs in cells.items():
            if cell_pair != pair:
                continue
            states = Counter(run_state(s.folder) for s in specs)
            table.add_row(label, _display(specs[0].config), ",".join(str(s.seed) for s in specs),
                          " ".join(f"{k} {v}" for k, v in sorted(states.items())))
        console.print(table)
    needed = {job.key for spec in runs for job in spec.teachers}
    for job in teachers.values():
        if job.key not in needed:  # a pair left out by --pairs, or rows left out by --methods
            continue
        console.print(f"teacher: distillab train-teacher {job.config} {' '.join(shlex.quote(o) for o in job.overrides)}",
                      soft_wrap=True, markup=False, highlight=False)
    if commands:
        for spec in runs:
            console.print(spec.command(), soft_wrap=True, markup=False, highlight=False)


def _print_cells(suite, cells, console: Console) -> None:
    """The results table of each pair. Nothing is cut: on a narrow terminal a cell folds onto more lines; into
    a file or a pipe (no width to respect) the table is printed at its natural width."""
    for pair in dict.fromkeys(c.pair for c in cells):
        table = Table(title=f"{suite.name}: {pair}", box=box.SIMPLE_HEAD, collapse_padding=True,
                      show_edge=False, pad_edge=False)
        for lines in TABLE_HEAD_LINES:
            table.add_column("\n".join(lines), overflow="fold")
        for row in table_rows([c for c in cells if c.pair == pair], suite.spec.metric):
            table.add_row(*row)
        if console.is_terminal:
            console.print(table)
            continue
        saved = console.width
        console.width = max(saved, Measurement.get(console, console.options.update_width(1_000), table).maximum)
        try:
            console.print(table)
        finally:
            console.width = saved
