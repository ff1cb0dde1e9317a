"""``distillab bench SUITE``: a grid of ordinary runs and pipelines, resumable, aggregated into tables and a report."""

from __future__ import annotations

import json
import time
from pathlib import Path

from distillab.bench.aggregate import CELL_FIELDS, RUN_FIELDS, Cell, RunRow, aggregate, read_runs, write_csv
from distillab.bench.execute import DONE, FAILED, NEW, PARTIAL, Outcome, execute_grid, run_state
from distillab.bench.report import write_report
from distillab.bench.suite import PipelineRun, RunSpec, Suite, TeacherJob, available_suites, load_suite

__all__ = ["Suite", "RunSpec", "PipelineRun", "TeacherJob", "RunRow", "Cell", "load_suite", "available_suites",
           "collect", "execute_grid", "aggregate", "write_report", "run_state", "DONE", "PARTIAL", "FAILED", "NEW",
           "Outcome"]


def teacher_accuracy(suite: Suite, runs: list[RunSpec | PipelineRun], rows: list[RunRow],
                     teachers: dict[str, TeacherJob]) -> dict[str, float | None]:
    """Each pair's teacher test top-1: as its runs measured it, else from the store's record."""
    from distillab.store import TeacherStore

    out: dict[str, float | None] = {}
    for r in rows:
        if r.teacher_top1 is not None and out.get(r.pair) is None:
            out[r.pair] = r.teacher_top1
    for pair in suite.spec.pairs:
        if out.get(pair.name) is None and suite.teacher_key(pair) in teachers:
            try:
                cfg = teachers[suite.teacher_key(pair)].load()
                found = TeacherStore(cfg.store).find(cfg)
                if found is not None:
                    out[pair.name] = json.loads((found.parent / "summary.json").read_text()).get("test_top1")
            except Exception:  # noqa: BLE001 - a missing record only leaves the cell blank
                pass
    return out


def collect(suite: Suite, runs: list[RunSpec | PipelineRun], out: Path, teachers: dict[str, TeacherJob], *,
            command: str, wall_s: float | None = None) -> tuple[list[RunRow], list[Cell], dict[str, Path]]:
    """Read every run folder of the grid; write runs.csv, results.csv and the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for spec in runs for row in read_runs(spec)]
    reference = {(p.name, m): v for p in suite.spec.pairs for m, v in p.reference.items()}
    cells = aggregate(rows, reference)
    write_csv(out / "runs.csv", rows, RUN_FIELDS)
    write_csv(out / "results.csv", cells, CELL_FIELDS)
    paths = write_report(out, suite, cells, rows, teacher_accuracy(suite, runs, rows, teachers),
                         command=command, wall_s=wall_s)
    return rows, cells, {"runs": out / "runs.csv", "results": out / "results.csv", **paths}


def run_suite(suite: Suite, out: Path, *, seeds=None, methods=None, pairs=None, overrides=None, workers: int = 1,
              threads: int | None = None, report=print, on_outcome=None, command: str = "") -> dict:
    """Run (or resume) the grid, then aggregate and report; returns a dict of what happened."""
    runs, teachers = suite.grid(out, seeds=seeds, methods=methods, pairs=pairs, extra=overrides)
    tic = time.perf_counter()
    outcomes = execute_grid(runs, teachers, workers=workers, threads=threads, report=report, on_outcome=on_outcome)
    wall = time.perf_counter() - tic
    rows, cells, paths = collect(suite, runs, out, teachers, command=command, wall_s=wall)
    return {"runs": runs, "outcomes": outcomes, "rows": rows, "cells": cells, "paths": paths, "wall_s": wall}
