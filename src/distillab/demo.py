"""``distillab demo``: teacher, labels-only student and KD student on MNIST-1D, side by side."""

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
from distillab.store import TeacherStore

TEACHER = "configs/mnist1d/teacher_cnn1d.yaml"
BASELINE = "configs/mnist1d/student_baseline.yaml"
KD = "configs/mnist1d/kd.yaml"
TINY = ["train.epochs=1", "data.options.num_samples=400"]  # a seconds-long check of the whole path


def run_demo(out_dir: str = "runs", overrides: list[str] | None = None, console: Console | None = None,
             store: str | None = None) -> dict:
    """Train (or reuse) the teacher, then the baseline and KD students; print and save the comparison."""
    console = console or Console()
    overrides = list(overrides or [])
    folder = create_run_dir(out_dir, "demo")
    common = overrides + [f"out_dir={folder}"] + ([f"store={store}"] if store else [])
    # the students look their teacher up in the store under the same overrides it was trained with
    teacher_overrides = [f"teacher.overrides={json.dumps(overrides)}"]
    rows: dict[str, dict] = {}

    tcfg = load_config(find_config(TEACHER), common)
    teacher_store = TeacherStore(tcfg.store)
    cached = teacher_store.find(tcfg)
    if cached is not None:
        summary = json.loads((cached.parent / "summary.json").read_text())
        console.print(f"[green]reusing the stored teacher[/] {cached}")
        rows["teacher"] = {**summary, "wall_s": 0.0, "note": "from store"}
    else:
        console.rule(f"teacher: {tcfg.student.arch} (labels only)")
        tic = time.perf_counter()
        summary, run_dir = run(tcfg, console=console, label="teacher")
        teacher_store.put(tcfg, run_dir / "model.pt", summary)
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
