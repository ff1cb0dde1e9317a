"""The ``distillab bench`` command: dry run, progress while the grid trains, and the summary table."""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from distillab.bench import collect, load_suite, run_state, run_suite
from distillab.bench.report import TABLE_HEAD, table_rows
from distillab.config import ConfigError


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


def bench_command(suite_name: str, overrides: list[str], *, out: Path | None, seeds: str | None,
                  methods: str | None, pairs: str | None, workers: int, threads: int | None, dry_run: bool,
                  commands: bool, report_only: bool, console: Console) -> None:
    suite = load_suite(suite_name)
    out = Path(out) if out is not None else Path("bench") / suite.name
    kwargs = dict(seeds=_seeds(seeds), methods=_split(methods), pairs=_split(pairs), overrides=overrides)
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    runs, teachers = suite.grid(out, seeds=kwargs["seeds"], methods=kwargs["methods"], pairs=kwargs["pairs"],
                                extra=overrides)
    command = "distillab bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
        else f"distillab bench {suite_name}"

    if dry_run:
        _print_grid(suite, runs, teachers, out, console, commands)
        return
    if report_only:
        rows, cells, paths = collect(suite, runs, out, teachers, command=command)
        _print_cells(suite, cells, console)
        console.print(f"report: {paths['md']}  {paths['html']}")
        return

    console.print(f"suite [bold]{suite.name}[/]: {len(runs)} runs "
                  f"({Counter(run_state(r.folder) for r in runs).get('done', 0)} already finished) into {out}, "
                  f"{workers} worker(s)")
    progress = Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)
    with progress:
        task = progress.add_task("runs", total=len(runs))

        def on_outcome(outcome, spec) -> None:
            progress.advance(task)
            if outcome.status == "done":
                how = "resumed, " if outcome.resumed else ""
                progress.console.print(f"  {spec.key}: {outcome.top1:.2f}% ({how}{outcome.seconds:.0f} s)")
            elif outcome.status == "failed":
                progress.console.print(f"  [red]{spec.key} failed[/]: {outcome.error[:200]}")

        result = run_suite(suite, out, workers=workers, threads=threads, report=progress.console.print,
                           on_outcome=on_outcome, command=command, **kwargs)
    _print_cells(suite, result["cells"], console)
    failed = [o for o in result["outcomes"] if o.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed[/] (listed in the report; errors in each run's error.txt)")
    paths = result["paths"]
    console.print(f"results: {paths['results']}  report: {paths['md']}  {paths['html']}")


def _print_grid(suite, runs, teachers, out: Path, console: Console, commands: bool) -> None:
    from distillab.bench.suite import _display

    console.print(f"suite [bold]{suite.name}[/]: {len(runs)} runs into {out}")
    cells: dict[tuple[str, str], list] = {}
    for spec in runs:
        cells.setdefault((spec.pair, spec.label), []).append(spec)
    for pair in dict.fromkeys(p for p, _ in cells):
        p = suite.pair(pair)
        table = Table(title=f"{pair}: teacher {p.teacher or '-'} -> student {p.student['arch']} "
                            f"{p.student['options'] or ''}")
        for col in ("method", "config", "seeds", "state"):
            table.add_column(col, overflow="fold")
        for (cell_pair, label), specs in cells.items():
            if cell_pair != pair:
                continue
            states = Counter(run_state(s.folder) for s in specs)
            table.add_row(label, _display(specs[0].config), ",".join(str(s.seed) for s in specs),
                          " ".join(f"{k} {v}" for k, v in sorted(states.items())))
        console.print(table)
    for job in teachers.values():
        console.print(f"teacher: distillab train-teacher {job.config} {' '.join(shlex.quote(o) for o in job.overrides)}",
                      soft_wrap=True, markup=False, highlight=False)
    if commands:
        for spec in runs:
            console.print(spec.command(), soft_wrap=True, markup=False, highlight=False)


def _print_cells(suite, cells, console: Console) -> None:
    for pair in dict.fromkeys(c.pair for c in cells):
        table = Table(title=f"{suite.name}: {pair}")
        for col in TABLE_HEAD:
            table.add_column(col)
        for row in table_rows([c for c in cells if c.pair == pair], suite.spec.metric):
            table.add_row(*row)
        console.print(table)
