"""From run folders to tables: one row per run, then mean / standard deviation / count per cell.

Last-epoch and best-epoch accuracy are kept apart everywhere (the CRD protocol reports the last epoch;
mdistiller the best, which is biased upwards by picking the maximum of many noisy evaluations). The
standard deviation is the sample one (n - 1), blank for a single run. Each method is also compared with
the labels-only baseline of its pair by Welch's t-test on the last-epoch accuracies, so a reader can see
whether a difference of half a point is more than seed noise.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distillab.core.files import atomic_file
from distillab.bench.execute import DONE, PARTIAL, run_state
from distillab.bench.suite import PipelineRun, RunSpec
from distillab.pipeline import RUN_COMMANDS

BASELINE = "ce"


@dataclass
class RunRow:
    pair: str
    method: str  # the row label (a method, or a variant)
    seed: int
    status: str  # done | failed | partial | missing
    last_top1: float | None = None
    best_top1: float | None = None
    best_epoch: int | None = None
    teacher_top1: float | None = None
    train_time_s: float | None = None
    folder: str = ""
    error: str = ""
    column: str = "test/top1"  # the metrics.csv column behind last_top1 (another model's, in a run of several;
    # "" for an ensemble of a pipeline's steps, which has no curve)
    selected_by: str = ""  # which split chose the best epoch: "validation" (data.val_fraction) or "test"


@dataclass
class Cell:
    pair: str
    method: str
    n: int
    n_failed: int
    n_missing: int
    last_mean: float | None
    last_std: float | None
    best_mean: float | None
    best_std: float | None
    delta_vs_baseline: float | None = None
    p_vs_baseline: float | None = None
    published: float | None = None
    time_mean_s: float | None = None
    last_values: list[float] = field(default_factory=list)


def read_runs(spec: RunSpec | PipelineRun) -> list[RunRow]:
    """The rows of one run of the grid: its student's, and in a run of several trained models (mutual
    learning) one more per other model (``<label>:<model>``) and their ensemble (``<label>:ensemble``),
    all at the last epoch. A pipeline cell: see :func:`read_pipeline`."""
    if isinstance(spec, PipelineRun):
        return read_pipeline(spec)
    row = read_run(spec)
    if row.status != "done":
        return [row]
    s = json.loads((spec.folder / "summary.json").read_text())
    # models that are scored (a generator of data-free distillation is trained, never evaluated: no row)
    trained = [n for n, m in (s.get("models") or {}).items()
               if m["role"] == "trainable" and n != "student" and m.get("test_top1") is not None]
    if not trained:
        return [row]
    extra = [(n, s["models"][n]["test_top1"], f"test/{n}/top1") for n in trained]
    extra.append(("ensemble", s.get("ensemble_top1"), "test/ensemble/top1"))
    return [row] + [RunRow(spec.pair, f"{spec.label}:{name}", spec.seed, "done", last_top1=top1,
                           teacher_top1=row.teacher_top1, train_time_s=row.train_time_s, folder=row.folder,
                           column=column) for name, top1, column in extra]


def read_pipeline(spec: PipelineRun) -> list[RunRow]:
    """The rows of one pipeline cell: ``<label>``, its result step's model (the learning curve and best epoch
    from that step's folder); ``<label>:<step>`` for every other run step, so the pipeline's own baselines stand
    beside it; ``<label>:<ensemble>`` per ensemble of steps (no curve). Train time: the run steps' training time
    (their ``train_time_s``, which a resume adds to) and the data steps' seconds."""
    row = read_run(spec)
    if row.status != "done":
        return [row]
    summary = json.loads((spec.folder / "pipeline.json").read_text())
    result, steps = summary["result"], summary["steps"]
    runs = {name: json.loads((spec.folder / name / "summary.json").read_text()) for name in summary["order"]
            if steps[name]["command"] in RUN_COMMANDS}
    seconds = sum((runs[name].get("train_time_s") if name in runs else steps[name].get("seconds")) or 0.0
                  for name in summary["order"])

    def step_row(name: str, label: str, train_time_s: float | None) -> RunRow:
        s = runs[name]
        return RunRow(spec.pair, label, spec.seed, "done", last_top1=steps[name]["test_top1"],
                      best_top1=s.get("best_top1"), best_epoch=s.get("best_epoch"), train_time_s=train_time_s,
                      folder=str(spec.folder / name))

    rows = [step_row(result, spec.label, seconds)]
    rows += [step_row(name, f"{spec.label}:{name}", runs[name].get("train_time_s")) for name in runs if name != result]
    rows += [RunRow(spec.pair, f"{spec.label}:{name}", spec.seed, "done", last_top1=e["test_top1"],
                    folder=str(spec.folder), column="") for name, e in summary["ensembles"].items()]
    return rows


def read_run(spec: RunSpec | PipelineRun) -> RunRow:
    """The state and numbers of one run of the grid (its student's), read from its folder; of a pipeline cell,
    the state alone."""
    row = RunRow(spec.pair, spec.label, spec.seed, "missing", folder=str(spec.folder))
    state = run_state(spec.folder)
    error_file = spec.folder / "error.txt"
    if state == DONE and isinstance(spec, PipelineRun):
        row.status = "done"
    elif state == DONE:
        s = json.loads((spec.folder / "summary.json").read_text())
        row.status = "done"
        row.last_top1, row.best_top1, row.best_epoch = s.get("test_top1"), s.get("best_top1"), s.get("best_epoch")
        row.teacher_top1, row.train_time_s = s.get("teacher_top1"), s.get("train_time_s")
        row.selected_by = s.get("selected_by", "test")
    elif error_file.is_file():
        row.status = "failed"
        row.error = next(iter(error_file.read_text().strip().splitlines()), "") or "failed"
    elif state == PARTIAL:
        row.status = "partial"
    return row


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (None with fewer than two values on a side or no spread)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a), statistics.variance(b)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return None if statistics.fmean(a) == statistics.fmean(b) else 0.0
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(se2)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    return _student_t_sf(abs(t), df) * 2


def _student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (regularised incomplete beta)."""
    try:
        from scipy.stats import t as student_t

        return float(student_t.sf(t, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        x = df / (df + t * t)
        return 0.5 * _betainc(df / 2, 0.5, x)


def _betainc(a: float, b: float, x: float) -> float:  # pragma: no cover - fallback only
    """Regularised incomplete beta by continued fraction (Numerical Recipes' betacf)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1.0 + num / c
            c = c if abs(c) > 1e-300 else 1e-300
            h *= d * c
    return math.exp(lbeta) * h / a


def aggregate(rows: list[RunRow], reference: dict[tuple[str, str], float] | None = None) -> list[Cell]:
    """One cell per (pair, method), in the order the rows first name them."""
    reference = reference or {}
    order: list[tuple[str, str]] = []
    groups: dict[tuple[str, str], list[RunRow]] = {}
    for r in rows:
        key = (r.pair, r.method)
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(r)
    cells = []
    for key in order:
        group = groups[key]
        done = [r for r in group if r.status == "done" and r.last_top1 is not None]
        last = [r.last_top1 for r in done]
        best = [r.best_top1 for r in done if r.best_top1 is not None]
        times = [r.train_time_s for r in done if r.train_time_s is not None]
        lm, ls = mean_std(last)
        bm, bs = mean_std(best)
        cells.append(Cell(key[0], key[1], len(done), sum(r.status == "failed" for r in group),
                          sum(r.status in ("missing", "partial") for r in group), lm, ls, bm, bs,
                          published=reference.get(key), time_mean_s=statistics.fmean(times) if times else None,
                          last_values=last))
    by_key = {(c.pair, c.method): c for c in cells}
    for c in cells:
        base = by_key.get((c.pair, BASELINE))
        if base is not None and c.method != BASELINE and c.last_mean is not None and base.last_mean is not None:
            c.delta_vs_baseline = c.last_mean - base.last_mean
            c.p_vs_baseline = welch_p(c.last_values, base.last_values)
    return cells


RUN_FIELDS = [f for f in RunRow.__dataclass_fields__]
CELL_FIELDS = [f for f in Cell.__dataclass_fields__ if f != "last_values"]


def write_csv(path: Path, rows: list, fields: list[str]) -> Path:
    path = Path(path)
    with atomic_file(path, "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            d = asdict(r)
            writer.writerow({k: ("" if d[k] is None else (round(d[k], 4) if isinstance(d[k], float) else d[k]))
                             for k in fields})
    return path


def read_cells(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def mean_curve(folders: list[str | Path], key: str = "test/top1") -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over runs of one metric column of ``metrics.csv`` (epochs all runs have)."""
    from distillab.engine.logger import read_metrics

    per_epoch: dict[int, list[float]] = {}
    n = 0
    for folder in folders:
        path = Path(folder) / "metrics.csv"
        if not path.is_file():
            continue
        n += 1
        for r in read_metrics(path):
            if key in r and r[key] is not None and r[key] == r[key]:
                per_epoch.setdefault(int(r["epoch"]), []).append(float(r[key]))
    epochs = sorted(e for e, v in per_epoch.items() if len(v) == n)
    means = [statistics.fmean(per_epoch[e]) for e in epochs]
    stds = [statistics.stdev(per_epoch[e]) if n > 1 else 0.0 for e in epochs]
    return epochs, means, stds
