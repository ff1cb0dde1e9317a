"""distillab bench: aggregation, resume of a partly finished grid, failed runs, a tiny suite end to end."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distillab.bench import PipelineRun, collect, load_suite, run_state, run_suite
from distillab.bench.aggregate import Cell, RunRow, _betainc, aggregate, mean_curve, welch_p
from distillab.bench.cli import _print_cells
from distillab.bench.report import TABLE_HEAD_LINES, _inline_html, bars_figure, curves_figure
from distillab.cli import app
from distillab.config import ConfigError
from distillab.engine.trainer import Trainer

TINY = {
    "description": "test suite",
    "seeds": [0, 1],
    "overrides": ["data.options.num_samples=300", "train.epochs=2"],
    "run_overrides": ["train.tensorboard=false"],
    "pairs": [{
        "name": "p",
        "teacher": "mnist1d/teacher_cnn1d.yaml",
        "student": {"arch": "cnn1d_small", "options": {"width": 4}},
        "config": ["mnist1d/{method}.yaml"],
        "configs": {"ce": "mnist1d/student_baseline.yaml"},
        "methods": ["ce", "kd"],
        "reference": {"kd": 50.0},
    }],
}


def _suite(tmp_path: Path, spec: dict = TINY, name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ------------------------------------------------------------------ aggregation on synthetic results


def _rows() -> list[RunRow]:
    ce = [70.0, 71.0, 72.5]
    kd = [74.0, 75.5, 73.0, 76.0]
    rows = [RunRow("p", "ce", i, "done", v, v + 1, 10, 90.0, 2.0) for i, v in enumerate(ce)]
    rows += [RunRow("p", "kd", i, "done", v, v + 0.5, 9, 90.0, 3.0) for i, v in enumerate(kd)]
    rows += [RunRow("p", "kd", 9, "failed", error="RuntimeError: boom"),
             RunRow("p", "crd", 0, "missing"), RunRow("q", "ce", 0, "done", 60.0, 61.0, 3)]
    return rows


def test_aggregate_mean_std_count_and_baseline_comparison():
    cells = {(c.pair, c.method): c for c in aggregate(_rows(), {("p", "kd"): 73.33})}
    ce, kd, crd, q = cells["p", "ce"], cells["p", "kd"], cells["p", "crd"], cells["q", "ce"]
    assert (ce.n, ce.n_failed) == (3, 0)
    assert ce.last_mean == pytest.approx(71.1666667)
    # sample std (n - 1) by hand: deviations -1.1667, -0.1667, 1.3333
    assert ce.last_std == pytest.approx(math.sqrt((1.1666667**2 + 0.1666667**2 + 1.3333333**2) / 2))
    assert ce.best_mean == pytest.approx(72.1666667)  # best and last are kept apart
    assert (kd.n, kd.n_failed, kd.n_missing) == (4, 1, 0)
    assert kd.last_mean == pytest.approx(74.625) and kd.best_mean == pytest.approx(75.125)
    assert kd.delta_vs_baseline == pytest.approx(74.625 - 71.1666667)
    assert kd.published == 73.33 and ce.published is None
    assert kd.time_mean_s == pytest.approx(3.0)
    assert (crd.n, crd.n_missing, crd.last_mean, crd.last_std) == (0, 1, None, None)
    assert q.n == 1 and q.last_std is None  # one run: no spread claimed
    assert q.delta_vs_baseline is None


def test_welch_p_matches_scipy_and_the_fallback():
    stats = pytest.importorskip("scipy.stats")
    a, b = [74.0, 75.5, 73.0, 76.0], [70.0, 71.0, 72.5]
    want = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(want, rel=1e-9)
    # the incomplete-beta fallback used without scipy agrees too
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(statistics.variance(a) / 4 + statistics.variance(b) / 3)
    df = stats.ttest_ind(a, b, equal_var=False).df
    assert _betainc(df / 2, 0.5, df / (df + t * t)) == pytest.approx(want, rel=1e-7)
    assert welch_p([1.0], b) is None
    assert welch_p([1.0, 1.0], [1.0, 1.0]) is None


def test_mean_curve_averages_epochs_all_runs_have(tmp_path):
    for i, accs in enumerate(([10.0, 20.0, 30.0], [20.0, 40.0])):
        d = tmp_path / f"r{i}"
        d.mkdir()
        lines = ["epoch,train/loss,test/top1"] + [f"{e + 1},1.0,{a}" for e, a in enumerate(accs)]
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    epochs, mean, std = mean_curve([tmp_path / "r0", tmp_path / "r1"])
    assert epochs == [1, 2] and mean == [15.0, 30.0]
    assert std == pytest.approx([statistics.stdev([10, 20]), statistics.stdev([20, 40])])


# ------------------------------------------------------------------ suites


def test_shipped_suites_load_and_expand():
    mnist = load_suite("mnist1d")
    runs, teachers = mnist.grid("/tmp/unused")
    from distillab.methods import METHODS

    labels = {r.label for r in runs}
    # tests may register _private methods; paradigms (several models) have their own suite
    public = {m for m in METHODS.names() if not m.startswith("_") and METHODS.get(m).paradigm is None}
    assert public <= labels and not any(label.startswith("_") for label in labels)  # every method is a row
    assert all(len([r for r in runs if (r.pair, r.label) == key]) == 5
               for key in {(r.pair, r.label) for r in runs})
    assert list(teachers) == ["mnist1d/teacher_cnn1d.yaml"]
    for spec in runs[:3]:
        cfg = spec.load()
        assert cfg.student.arch == "cnn1d_small" and cfg.seed == spec.seed
    with pytest.raises(ConfigError, match="unknown suite 'mnist1'.*did you mean 'mnist1d'"):
        load_suite("mnist1")
    from distillab.bench import available_suites

    assert {"mnist1d", "digits", "cifar100-crd", "tiny"} <= set(available_suites())
    for name in available_suites():  # every shipped suite expands, and every row's config (or pipeline) loads
        grid, _ = load_suite(name).grid("/tmp/unused")
        assert grid and all(_seed_of(spec) == spec.seed for spec in grid[::5])


def _seed_of(spec) -> int:
    """The seed a run's config, or a pipeline cell's `seed` var, says."""
    loaded = spec.load()
    return loaded.spec.vars["seed"] if isinstance(spec, PipelineRun) else loaded.seed


def test_bad_suite_files_get_clear_errors(tmp_path):
    bad = dict(TINY, pairs=[dict(TINY["pairs"][0], methods=["kdd"])])
    with pytest.raises(ConfigError, match="kdd.*did you mean 'kd'"):
        load_suite(_suite(tmp_path, bad)).grid(tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_suite(_suite(tmp_path, dict(TINY, seedz=[1])))
    missing = dict(TINY, pairs=[dict(TINY["pairs"][0], config=["nowhere/{method}.yaml"], configs={})])
    with pytest.raises(ConfigError, match="no config found.*nowhere/ce.yaml"):
        load_suite(_suite(tmp_path, missing)).grid(tmp_path)
    with pytest.raises(ConfigError, match="unknown method of suite"):
        load_suite(_suite(tmp_path)).grid(tmp_path, methods=["crd"])


# ------------------------------------------------------------------ running grids


def test_interrupted_grid_resumes_and_skips_finished_runs(tmp_path, monkeypatch):
    suite = load_suite(_suite(tmp_path))
    out = tmp_path / "grid"
    original = Trainer.train_epoch

    def interrupt(self, epoch, *args, **kwargs):
        if self.cfg.method.name == "kd" and self.cfg.seed == 1 and epoch == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of this run
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, report=lambda m: None)
    runs, _ = suite.grid(out)
    states = {r.key: run_state(r.folder) for r in runs}
    assert states == {"p/ce/seed0": "done", "p/ce/seed1": "done", "p/kd/seed0": "done", "p/kd/seed1": "partial"}
    finished = (out / "runs/p/ce/seed0/summary.json").stat().st_mtime_ns

    monkeypatch.setattr(Trainer, "train_epoch", original)
    result = run_suite(suite, out, report=lambda m: None)
    by_key = {o.key: o for o in result["outcomes"]}
    assert by_key["p/ce/seed0"].status == "skipped" and by_key["p/kd/seed0"].status == "skipped"
    assert by_key["p/kd/seed1"].status == "done" and by_key["p/kd/seed1"].resumed
    assert (out / "runs/p/ce/seed0/summary.json").stat().st_mtime_ns == finished  # not trained again
    resumed = json.loads((out / "runs/p/kd/seed1/summary.json").read_text())
    assert resumed["epochs"] == 2
    rows = list(csv.DictReader(open(out / "runs/p/kd/seed1/metrics.csv")))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]  # epoch 1 kept, epoch 2 trained after the resume
    cells = {c["method"]: c for c in csv.DictReader(open(out / "results.csv"))}
    assert cells["kd"]["n"] == "2" and cells["ce"]["n"] == "2"
    assert cells["kd"]["published"] == "50.0"

    # a third invocation trains nothing
    again = run_suite(suite, out, report=lambda m: None)
    assert {o.status for o in again["outcomes"]} == {"skipped"}


def test_run_interrupted_before_its_first_checkpoint_is_left_new_not_failed(tmp_path, monkeypatch):
    suite = load_suite(_suite(tmp_path, dict(TINY, seeds=[0])))
    out = tmp_path / "grid"
    original = Trainer.train_epoch

    def interrupt(self, epoch, *args, **kwargs):
        if self.cfg.method.name == "kd":
            raise KeyboardInterrupt  # Ctrl-C in kd's first epoch: its folder holds a config, no checkpoint
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, report=lambda m: None)
    kd = out / "runs/p/kd/seed0"
    assert run_state(out / "runs/p/ce/seed0") == "done"
    assert run_state(kd) == "new" and not list(kd.rglob("*")) and not list(out.rglob("error.txt"))


def test_failed_run_is_reported_not_dropped_and_retried(tmp_path):
    spec = dict(TINY, seeds=[0], pairs=[dict(TINY["pairs"][0], methods=["ce", "kd"],
                                              method_overrides={"kd": ["method.params.kd.temprature=4"]})])
    suite = load_suite(_suite(tmp_path, spec))
    out = tmp_path / "grid"
    result = run_suite(suite, out, report=lambda m: None)
    status = {o.key: o.status for o in result["outcomes"]}
    assert status == {"p/ce/seed0": "done", "p/kd/seed0": "failed"}
    error = (out / "runs/p/kd/seed0/error.txt").read_text()
    assert "temprature" in error and "Traceback" in error
    runs_csv = {r["method"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert runs_csv["kd"]["status"] == "failed" and "temprature" in runs_csv["kd"]["error"]
    cells = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert cells["kd"]["n"] == "0" and cells["kd"]["n_failed"] == "1"
    report = (out / "report/report.md").read_text()
    failed_section = report.split("## Failed runs", 1)[1]
    assert "kd" in failed_section and "temprature" in failed_section
    # the next invocation tries the failed run again (and it fails again, still reported)
    again = run_suite(suite, out, report=lambda m: None)
    assert {o.key: o.status for o in again["outcomes"]} == {"p/ce/seed0": "skipped", "p/kd/seed0": "failed"}


def test_changed_settings_under_an_existing_grid_are_refused(tmp_path):
    suite = load_suite(_suite(tmp_path, dict(TINY, seeds=[0], pairs=[dict(TINY["pairs"][0], methods=["ce"])])))
    out = tmp_path / "grid"
    run_suite(suite, out, report=lambda m: None)
    with pytest.raises(ConfigError, match="other settings.*another --out"):
        run_suite(suite, out, overrides=["optim.lr=0.01"], report=lambda m: None)


def test_suite_store_option_keeps_teachers_inside_the_grid(tmp_path):
    out = tmp_path / "g"
    runs, teachers = load_suite(_suite(tmp_path, dict(TINY, store="grid"))).grid(out)
    assert all(spec.load().store == str(out / "store") for spec in runs)
    assert all(job.load().store == str(out / "store") for job in teachers.values())
    runs, teachers = load_suite(_suite(tmp_path)).grid(out)  # default: the user's store
    assert all(spec.load().store is None for spec in runs) and all(j.load().store is None for j in teachers.values())
    with pytest.raises(ConfigError, match="store"):
        load_suite(_suite(tmp_path, dict(TINY, store="elsewhere")))
    assert load_suite("tiny").spec.store == "grid"


def test_tiny_suite_end_to_end_through_the_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "tiny"
    dry = runner.invoke(app, ["bench", "tiny", "--out", str(out), "--dry-run", "--commands"])
    assert dry.exit_code == 0, dry.output
    assert "6 runs" in dry.output and "configs/mnist1d/crd.yaml" in dry.output
    assert "distillab distill configs/mnist1d/kd.yaml" in dry.output
    assert not out.exists()  # a dry run trains nothing

    res = runner.invoke(app, ["bench", "tiny", "--out", str(out), "--workers", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    cells = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert set(cells) == {"ce", "kd", "crd"}
    assert all(c["n"] == "2" and c["n_failed"] == "0" for c in cells.values())
    assert all(0.0 <= float(c["last_mean"]) <= 100.0 and c["last_std"] != "" for c in cells.values())
    # its numbers say something: a teacher far above chance (10 %), and KD above the labels-only student
    teacher = {float(r["teacher_top1"]) for r in csv.DictReader(open(out / "runs.csv")) if r["teacher_top1"]}
    assert len(teacher) == 1 and teacher.pop() > 75.0
    assert all(float(c["last_mean"]) > 40.0 for c in cells.values())
    assert float(cells["kd"]["last_mean"]) > float(cells["ce"]["last_mean"]) + 5.0
    # the tiny teacher stays in the grid's own store, never in the user's
    assert list((out / "store").rglob("model.pt")) and not (tmp_path / "home" / "teachers").exists()
    # one plain line per finished run, whole
    assert len(re.findall(r"^  cnn1d_w32-cnn1d_small_w10/\w+/seed\d: \d+\.\d\d% \(\d+ s\)$", res.output, re.M)) == 6
    html = (out / "report/report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # bar chart and curves, embedded
    assert "`" not in html and "<code>distillab bench tiny" in html  # Markdown code spans become <code>
    md = (out / "report/report.md").read_text()
    assert "| kd |" in md and "## Failed runs\n\nNone." in md
    assert (out / "report/bars_cnn1d_w32-cnn1d_small_w10.png").stat().st_size > 1000

    again = runner.invoke(app, ["bench", "tiny", "--out", str(out), "--report-only"])
    assert again.exit_code == 0 and "report:" in again.output
    unknown = runner.invoke(app, ["bench", "tiny", "--out", str(out), "--seeds", "a"])
    assert unknown.exit_code == 2 and "comma-separated integers" in unknown.output


def test_collect_lists_unfinished_runs(tmp_path):
    suite = load_suite(_suite(tmp_path, dict(TINY, seeds=[0], pairs=[dict(TINY["pairs"][0], methods=["ce"])])))
    runs, teachers = suite.grid(tmp_path / "g")
    rows, cells, paths = collect(suite, runs, tmp_path / "g", teachers, command="x")
    assert rows[0].status == "missing" and cells[0].n_missing == 1
    assert "not finished yet" in paths["md"].read_text()


# ------------------------------------------------------------------ report


def _cells() -> list[Cell]:
    return aggregate(_rows(), {("p", "kd"): 73.33})


def test_bar_chart_accuracy_axis_starts_at_zero():
    import matplotlib.pyplot as plt

    fig = bars_figure([c for c in _cells() if c.pair == "p"], "p", teacher=90.0)
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    assert left == 0.0 and 90.0 <= right <= 100.0  # the teacher line is inside, the axis stops at 100 %
    assert {t.get_text() for t in ax.texts} >= {"71.2", "74.6"}  # each bar's mean is written on it
    plt.close(fig)


def test_learning_curves_use_whole_epochs(tmp_path):
    import matplotlib.pyplot as plt

    folders = {}
    for method in ("ce", "kd"):
        for seed in (0, 1):
            d = tmp_path / method / str(seed)
            d.mkdir(parents=True)
            (d / "metrics.csv").write_text("epoch,test/top1\n1,40.0\n2,55.0\n")
            folders.setdefault(method, []).append(str(d))
    cells = [c for c in _cells() if c.pair == "p" and c.method in folders]
    fig = curves_figure(cells, folders, "p")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2
    for ax in visible:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plt.close(fig)


def test_markdown_code_spans_become_html_code():
    assert _inline_html("command: `distillab bench <x>`") == "command: <code>distillab bench &lt;x&gt;</code>"
    assert _inline_html("no code") == "no code"
    assert _inline_html("an odd ` tick") == "an odd ` tick"  # unpaired: left as it is


@pytest.mark.parametrize("terminal", [True, False])
def test_results_table_cuts_no_header_on_a_narrow_console(terminal):
    from io import StringIO

    from rich.console import Console

    cells = _cells()
    for c in cells:
        c.method = {"kd": "dml:ensemble"}.get(c.method, c.method)  # a long row label, as a paradigm suite has
    buf = StringIO()
    _print_cells(load_suite("tiny"), cells, Console(file=buf, width=60, force_terminal=terminal, color_system=None))
    text = buf.getvalue()
    assert "…" not in text
    if terminal:  # folded onto more lines, within the terminal's width
        assert max(len(line) for line in text.splitlines()) <= 60
    else:  # a file or a pipe: at its natural width, every header line whole, one line per row
        assert all(line in text for lines in TABLE_HEAD_LINES for line in lines)
        assert re.search(r"^dml:ensemble +\d+\.\d\d ± \d+\.\d\d +\d+\.\d\d ± \d+\.\d\d +4 ", text, re.M), text


def test_a_tuned_row_runs_the_best_config_of_its_tune_folder(tmp_path):
    """``tuned: {kd: <folder>}`` adds the row kd_tuned, whose runs read the folder's best.yaml (with the pair's
    student, teacher and seed, like every row); a folder without one names the command that writes it."""
    from distillab.config import load_config, to_yaml
    from distillab.runner import find_config

    folder = tmp_path / "tune" / "kd"
    folder.mkdir(parents=True)
    (folder / "best.yaml").write_text(to_yaml(load_config(find_config("mnist1d/kd.yaml"), ["optim.lr=0.0123"])))
    spec = dict(TINY, pairs=[dict(TINY["pairs"][0], tuned={"kd": str(folder)})])
    runs, _ = load_suite(_suite(tmp_path, spec)).grid(tmp_path / "grid")
    tuned = [r for r in runs if r.label == "kd_tuned"]
    assert [r.seed for r in tuned] == [0, 1] and tuned[0].method == "kd"
    cfg = tuned[0].load()
    assert cfg.optim.lr == 0.0123 and cfg.student.options == {"width": 4} and cfg.seed == 0
    missing = dict(TINY, pairs=[dict(TINY["pairs"][0], tuned={"kd": str(tmp_path / "nowhere")})])
    with pytest.raises(ConfigError, match="best.yaml does not exist: run `distillab tune configs/mnist1d/kd.yaml"):
        load_suite(_suite(tmp_path, missing)).grid(tmp_path / "grid")


def test_the_report_says_which_split_chose_the_best_epoch():
    from distillab.bench.report import _selection

    val = [RunRow("p", "kd", i, "done", 80.0, 81.0, 3, selected_by="validation") for i in range(2)]
    test = [RunRow("p", "ce", 0, "done", 70.0, 71.0, 2, selected_by="test")]
    assert "never on test" in _selection(val)
    assert "in 2 of 3 runs" in _selection(val + test)
    assert "optimistic" in _selection(test)
