"""Running a suite's grid: teachers first, then every run, skipping finished ones and resuming the rest.

A run's state is read from its folder alone, so an interrupted ``distillab bench`` picks up where it
stopped: ``summary.json`` means finished (skipped), ``checkpoints/last.pt`` means interrupted (resumed),
``error.txt`` without a checkpoint means failed (started again; the error stays on record until then).
Each run's resolved config is compared with the one its folder holds: a grid whose settings changed under
an existing folder is refused instead of mixing two settings in one table.

A pipeline cell is read the same way: ``pipeline.json`` means finished, a step begun (finished, or with a
checkpoint) means interrupted (``run_pipeline`` skips the finished steps and resumes the interrupted one), and
its settings are those of the ``pipeline.yaml`` that ``run_pipeline`` saved (the ``seed`` var resolved).

Ctrl-C is decided by this process alone: worker processes ignore SIGINT (a Ctrl-C in a terminal reaches the
whole process group, and a worker interrupted in the middle of an import would record a spurious failure).
On an interrupt the queued runs are cancelled, the workers are stopped, and each run that was in flight is
left resumable: its checkpoint, if it wrote one, is kept; otherwise its folder is emptied, so it counts as
new. No interrupted run is recorded as failed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import yaml
from pydantic import ValidationError

from distillab.bench.suite import PipelineRun, RunSpec, TeacherJob
from distillab.config import ConfigError, load_config
from distillab.pipeline import PipelineSpec, run_pipeline, step_state

DONE, PARTIAL, FAILED, NEW = "done", "partial", "failed", "new"


def run_state(folder: Path) -> str:
    """The state of a run folder, or of a pipeline cell's folder (see the module's docstring)."""
    if (folder / "summary.json").is_file() or (folder / "pipeline.json").is_file():
        return DONE
    if (folder / "checkpoints" / "last.pt").is_file() or _pipeline_begun(folder):
        return PARTIAL
    if (folder / "error.txt").is_file():
        return FAILED
    return NEW


def _pipeline_begun(folder: Path) -> bool:
    """A pipeline cell with a step finished or interrupted after its first checkpoint."""
    return (folder / "pipeline.yaml").is_file() and any(
        step_state(step) != NEW for step in folder.iterdir() if step.is_dir())


def _saved_config(path: Path) -> dict | None:
    """A run folder's config, validated (keys added to distillab since it was written take their defaults,
    so an older folder still compares equal to the same settings); None if it no longer validates."""
    try:
        return load_config(path).model_dump(mode="json")
    except ConfigError:
        return None


def _pipeline_settings(spec: PipelineSpec) -> dict:
    """What makes a pipeline's results: everything but its description."""
    return {k: v for k, v in spec.model_dump(mode="json").items() if k != "description"}


def _saved_pipeline(path: Path) -> dict | None:
    """A pipeline cell's saved settings, validated (as :func:`_saved_config`); None if they no longer validate."""
    try:
        return _pipeline_settings(PipelineSpec.model_validate(yaml.safe_load(path.read_text()) or {}))
    except (yaml.YAMLError, ValidationError):
        return None


def _is_stale(spec: RunSpec | PipelineRun) -> bool:
    if run_state(spec.folder) not in (DONE, PARTIAL):
        return False  # started afresh: nothing in its folder is kept
    if isinstance(spec, PipelineRun):
        saved = spec.folder / "pipeline.yaml"
        return saved.is_file() and _saved_pipeline(saved) != _pipeline_settings(spec.load().spec)
    saved = spec.folder / "config.yaml"
    return saved.is_file() and _saved_config(saved) != spec.load().model_dump(mode="json")


def check_stale(runs: list[RunSpec | PipelineRun]) -> list[str]:
    """Runs (and pipeline cells) whose folder holds settings other than the ones the grid would now use."""
    return [spec.key for spec in runs if _is_stale(spec)]


@dataclass
class Outcome:
    key: str
    status: str  # done | skipped | failed
    top1: float | None = None
    seconds: float = 0.0
    error: str = ""
    resumed: bool = False


def _clear(folder: Path) -> None:
    """Empty a run folder that holds no checkpoint and no result (a failed or never-started run)."""
    if folder.exists():
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _train_in(folder: Path, cfg) -> tuple[dict, bool]:
    """Train ``cfg`` in ``folder``: resume it when it holds a checkpoint, else start afresh in the emptied
    folder (a previous failure's error.txt goes too; a new failure writes its own). (summary, resumed)."""
    from distillab.runner import run

    if run_state(folder) == PARTIAL:
        return run(cfg, resume=folder, progress=False)[0], True
    _clear(folder)
    return run(cfg, progress=False, run_dir=folder)[0], False


def _run_pipeline_in(folder: Path, pipe) -> tuple[dict, bool]:
    """Run ``pipe`` in ``folder``: on from where it stopped when a step was begun (an earlier error.txt goes; a new
    failure writes its own), else afresh in the emptied folder; its step lines and epoch lines are not shown (the
    grid prints one line per cell). (the pipeline's summary, resumed)."""
    from rich.console import Console

    resumed = run_state(folder) == PARTIAL
    if resumed:
        (folder / "error.txt").unlink(missing_ok=True)
    else:
        _clear(folder)
    quiet = Console(file=io.StringIO(), quiet=True)
    return run_pipeline(pipe, folder, console=quiet, report=lambda _msg: None), resumed


def _train_cell(spec: RunSpec | PipelineRun) -> tuple[float | None, bool]:
    """Train (or resume) a run or a pipeline cell; (its test top-1, resumed)."""
    if isinstance(spec, PipelineRun):
        pipe = spec.load()
        summary, resumed = _run_pipeline_in(spec.folder, pipe)
        return summary["steps"][pipe.spec.result]["test_top1"], resumed
    summary, resumed = _train_in(spec.folder, spec.load())
    return summary.get("test_top1"), resumed


def _record_failure(folder: Path, exc: BaseException) -> str:
    """Write the error and its traceback to ``folder/error.txt``; return the one-line error."""
    folder.mkdir(parents=True, exist_ok=True)
    line = f"{type(exc).__name__}: {exc}"
    (folder / "error.txt").write_text(f"{line}\n\n{traceback.format_exc()}")
    return line


def execute_run(spec: RunSpec | PipelineRun, threads: int | None = None) -> Outcome:
    """Train (or resume) one run (or pipeline cell) in this process; an exception becomes a failed outcome and
    ``error.txt``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    if run_state(spec.folder) == DONE:
        return Outcome(spec.key, "skipped")
    tic = time.perf_counter()
    try:
        top1, resumed = _train_cell(spec)
        return Outcome(spec.key, "done", top1, time.perf_counter() - tic, resumed=resumed)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, none is dropped
        return Outcome(spec.key, "failed", None, time.perf_counter() - tic, error=_record_failure(spec.folder, exc))


def ensure_teacher(job: TeacherJob, report: Callable[[str], None]) -> tuple[bool, str]:
    """Train the teacher unless the store has it; (ok, message)."""
    from distillab.store import TeacherStore

    try:
        cfg = job.load()
        store = TeacherStore(cfg.store)
        found = store.find(cfg)
        if found is not None:
            return True, f"teacher {job.config}: in the store ({found})"
        tic = time.perf_counter()
        if run_state(job.folder) == DONE:
            summary = json.loads((job.folder / "summary.json").read_text())
        else:
            report(f"training teacher {job.config} ...")
            summary, _ = _train_in(job.folder, cfg)
        path = store.put(cfg, job.folder / "model.pt", summary, config=job.config, overrides=job.overrides)
        return True, (f"teacher {job.config}: trained, test top-1 {summary['test_top1']:.2f} "
                      f"({time.perf_counter() - tic:.0f} s), stored at {path}")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        return False, f"teacher {job.config} failed: {_record_failure(job.folder, exc)}"


def _init_worker(threads: int) -> None:
    import torch

    # only the parent decides what a Ctrl-C does (it stops this process itself); SIGINT came blocked from the
    # parent (see _sigint_blocked), so no interrupt reached this process while it was starting either
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Hold back SIGINT while worker processes are started: a started process inherits the blocked signal (and
    ignores it once its initializer runs); a Ctrl-C in the meantime is delivered here when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks (and no process groups to reach)
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued runs and end the worker processes now (SIGTERM: a checkpoint is written atomically,
    so a run stopped mid-write keeps its previous one). The executor has no public way to stop its workers
    before Python 3.14 (``terminate_workers``): its process table is read before shutdown() drops it."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():  # stuck where SIGTERM cannot reach it
            p.kill()
            p.join()
    if manager is not None:  # it sees the workers gone, fails what they held and ends
        manager.join(timeout=30)


def _leave_resumable(folders: list[Path]) -> None:
    """After an interrupt: a run that was in flight keeps its checkpoint (or its result, had it just finished);
    one without either is emptied, so it is new to the next invocation, never failed."""
    for folder in folders:
        if run_state(folder) == NEW:
            _clear(folder)


def execute_grid(runs: list[RunSpec | PipelineRun], teachers: dict[str, TeacherJob], *, workers: int = 1,
                 threads: int | None = None, report: Callable[[str], None] = print,
                 on_outcome: Callable[[Outcome, RunSpec | PipelineRun], None] | None = None) -> list[Outcome]:
    """Teachers (in this process), then the runs on ``workers`` processes; every outcome is returned."""
    stale = check_stale(runs)
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise ConfigError(f"{len(stale)} run folder(s) hold results made with other settings ({shown}): "
                          "write this grid into another --out folder, or delete those folders")
    failed_teachers: dict[str, str] = {}
    needed = {job.key for spec in runs if run_state(spec.folder) != DONE for job in spec.teachers}
    for job in teachers.values():
        if job.key not in needed:
            continue
        try:
            ok, msg = ensure_teacher(job, report)
        except KeyboardInterrupt:
            _leave_resumable([job.folder])
            raise
        report(msg)
        if not ok:
            failed_teachers[job.key] = msg

    outcomes: list[Outcome] = []
    todo: list[RunSpec | PipelineRun] = []
    for spec in runs:
        if run_state(spec.folder) == DONE:
            outcomes.append(Outcome(spec.key, "skipped"))
            if on_outcome:
                on_outcome(outcomes[-1], spec)
        elif any(job.key in failed_teachers for job in spec.teachers):
            msg = f"not run: {next(failed_teachers[job.key] for job in spec.teachers if job.key in failed_teachers)}"
            spec.folder.mkdir(parents=True, exist_ok=True)
            if run_state(spec.folder) != PARTIAL:
                (spec.folder / "error.txt").write_text(msg + "\n")
            outcomes.append(Outcome(spec.key, "failed", error=msg))
            if on_outcome:
                on_outcome(outcomes[-1], spec)
        else:
            todo.append(spec)

    if workers <= 1:
        for spec in todo:
            try:
                out = execute_run(spec, threads)
            except KeyboardInterrupt:
                _leave_resumable([spec.folder])
                raise
            outcomes.append(out)
            if on_outcome:
                on_outcome(out, spec)
        return outcomes

    per_worker = threads or max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(per_worker,))
    futures: dict[Future, RunSpec | PipelineRun] = {}
    try:
        with _sigint_blocked():  # the workers are started by submit()
            for spec in todo:
                futures[pool.submit(execute_run, spec)] = spec
        for fut in as_completed(futures):
            spec = futures[fut]
            try:
                out = fut.result()
            except BrokenProcessPool:
                out = Outcome(spec.key, "failed", error="the worker process died (out of memory, or killed); "
                                                        "run the suite again to resume")
                if run_state(spec.folder) != PARTIAL:
                    spec.folder.mkdir(parents=True, exist_ok=True)
                    (spec.folder / "error.txt").write_text(out.error + "\n")
            outcomes.append(out)
            if on_outcome:
                on_outcome(out, spec)
    except KeyboardInterrupt:
        # runs handed to a worker (running, or next in its queue) cannot be cancelled: they are stopped
        in_flight = [spec for fut, spec in futures.items() if not fut.done()]
        _stop_pool(pool)
        _leave_resumable([spec.folder for spec in in_flight])
        raise
    pool.shutdown(wait=True)
    return outcomes
