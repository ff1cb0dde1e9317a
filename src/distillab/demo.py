"""``distillab demo``: teacher, labels-only student and KD student on MNIST-1D, side by side.

The teacher comes from the global teacher store when it is trained as the shipped config says; a demo
whose overrides change the teacher (``--tiny`` among them) keeps its teacher in a store inside its output
folder (``<out>/demo-teachers``), so near-chance teachers never reach the global store."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distillab.config import load_config
from distillab.core.files import write_json_atomic
from distillab.engine.rundir import create_run_dir
from distillab.plots import plot_learning_curves
from distillab.runner import find_config, run
from distillab.store import StoreError, TeacherStore, differences

TEACHER = "configs/mnist1d/teacher_cnn1d.yaml"
BASELINE = "configs/mnist1d/student_baseline.yaml"
KD = "configs/mnist1d/kd.yaml"
# a seconds-long run of the whole path that still shows something real (idle 2-core CPU: about 5 s; teacher
# about 75 %, KD well above the labels-only student)
TINY = ["train.epochs=6", "data.options.num_samples=2000", "optim.lr=0.1", "train.batch_size=64"]
LOCAL_STORE = "demo-teachers"  # inside the output folder: teachers trained otherwise than the shipped config


def demo_store(out_dir: str | Path, overrides: list[str]) -> tuple[str | None, str]:
    """The demo's teacher store and why: None (the ``store`` setting, else the global store) for a teacher
    trained as the shipped config says, else ``<out_dir>/demo-teachers``. Validates the overrides."""
    asked = load_config(find_config(TEACHER), overrides)
    changed = differences(load_config(find_config(TEACHER)), asked)
    if asked.store is not None or not changed:
        return None, "the teacher is trained as the shipped config says"
    why = f"this teacher differs from {TEACHER} in {', '.join(d.key for d in changed)}"
    return str(Path(out_dir) / LOCAL_STORE), why


def run_demo(out_dir: str = "runs", overrides: list[str] | None = None, console: Console | None = None,
             store: str | None = None) -> dict:
    """Train (or reuse) the teacher, then the baseline and KD students; print and save the comparison.
    ``store``: the teacher store (default: the global one, or ``<out_dir>/demo-teachers`` when the overrides
    change the teacher)."""
    console = console or Console()
    overrides = list(overrides or [])
    if store is None:
        store, why = demo_store(out_dir, overrides)
        if store is not None:
            console.print(f"teacher store: {store} (not the global one: {why})", soft_wrap=True, highlight=False)
    folder = create_run_dir(out_dir, "demo")
    common = overrides + [f"out_dir={folder}"] + ([f"store={store}"] if store else [])
    # the students look their teacher up in the store under the same overrides it was trained with
    teacher_overrides = [f"teacher.overrides={json.dumps(overrides)}"]
    rows: dict[str, dict] = {}

    tcfg = load_config(find_config(TEACHER), common)
    teacher_store = TeacherStore(tcfg.store)
    cached = teacher_store.get(tcfg)
    if cached is not None:
        if cached.error is not None:
            raise StoreError(cached.error)
        console.print(f"[green]reusing the stored teacher[/] {cached.path}")
        rows["teacher"] = {**cached.summary, "test_top1": cached.record.get("test_top1"), "wall_s": 0.0,
                           "note": "from store"}
    else:
        console.rule(f"teacher: {tcfg.student.arch} (labels only)")
        tic = time.perf_counter()
        summary, run_dir = run(tcfg, console=console, label="teacher")
        teacher_store.put(tcfg, run_dir / "model.pt", summary, config=TEACHER, overrides=overrides)
        rows["teacher"] = {**summary, "wall_s": time.perf_counter() - tic, "note": "trained"}

    for label, path in (("student", BASELINE), ("kd", KD)):
        cfg = load_config(find_config(path), common + (teacher_overrides if label == "kd" else []))
        console.rule(f"{label}: {cfg.student.arch}, method {cfg.method.name}")
        tic = time.perf_counter()
        summary, run_dir = run(cfg, console=console, label=label)
        rows[label] = {**summary, "wall_s": time.perf_counter() - tic, "note": ""}

    table = Table(title="distillab demo: MNIST-1D")
    for col in ("model", "architecture", "method", "test top-1 (%)", "wall time (s)", "note"):
        table.add_column(col)
    for label, r in rows.items():
        method = r.get("method", "ce")
        table.add_row(label, str(r.get("student")), str(method), f"{r['test_top1']:.2f}", f"{r['wall_s']:.1f}",
                      r.get("note", ""))
    console.print(table)

    curves = {label: Path(r["run"]) / "metrics.csv" for label, r in rows.items()
              if r.get("run") and (Path(r["run"]) / "metrics.csv").is_file()}
    plot = plot_learning_curves(curves, folder / "learning_curves.png", title="MNIST-1D: teacher, student, KD")
    result = {"folder": str(folder), "plot": str(plot), "rows": rows}
    write_json_atomic(folder / "demo.json", result)
    console.print(f"results: {folder}  (plot: {plot.name})")
    return result
