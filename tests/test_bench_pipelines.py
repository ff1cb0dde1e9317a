"""distillab bench with pipeline rows: a paradigm of several steps run once per seed, its result step, other run
steps and ensembles as rows; resumable, stale settings refused, pipelines without a seed var refused."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distillab.bench import PipelineRun, load_suite, run_state, run_suite
from distillab.cli import app
from distillab.config import ConfigError
from distillab.engine.trainer import Trainer

TINY = ["train.epochs=2", "data.options.num_samples=300", "train.progress=false", "train.tensorboard=false",
        "train.device=cpu"]

PIPELINE = {  # a teacher, and KD from it; both with the cell's seed
    "description": "tiny teacher -> student",
    "vars": {"seed": 0},
    "result": "student",
    "overrides": TINY,
    "steps": [
        {"name": "teacher", "command": "train-teacher", "config": "configs/mnist1d/teacher_cnn1d.yaml",
         "overrides": ["model.options={width: 8}", "seed=${vars.seed}"]},
        {"name": "student", "command": "distill", "config": "configs/mnist1d/kd.yaml",
         "overrides": ["student.options={width: 4}", "teacher.config=null", "teacher.checkpoint=${teacher.model}",
                       "seed=${vars.seed}"]},
    ],
    "ensembles": {"both": ["teacher", "student"]},
}


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _suite(tmp_path: Path, pipeline: dict = PIPELINE, **pair) -> Path:
    file = _write(tmp_path / "tiny_pipeline.yaml", pipeline)
    return _write(tmp_path / "suite.yaml", {"seeds": [0, 1], "run_overrides": ["train.checkpoint_every=1"],
                                            "pairs": [{"name": "p", "pipelines": {"tk": str(file)}, **pair}]})


def test_pipeline_rows_run_resume_skip_and_report(tmp_path, monkeypatch):
    suite = load_suite(_suite(tmp_path))
    out = tmp_path / "grid"
    runs, _ = suite.grid(out)
    assert [(type(r), r.key) for r in runs] == [(PipelineRun, "p/tk/seed0"), (PipelineRun, "p/tk/seed1")]
    original = Trainer.train_epoch

    def interrupt(self, epoch, *args, **kwargs):  # Ctrl-C in seed 1's student step, after its first epoch
        if self.cfg.seed == 1 and self.cfg.method.name == "kd" and epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, report=lambda _m: None)
    assert [run_state(r.folder) for r in runs] == ["done", "partial"]
    assert not list(out.rglob("error.txt"))  # an interrupt is no failure
    teacher1 = (out / "runs/p/tk/seed1/teacher/model.pt").stat().st_mtime_ns

    monkeypatch.setattr(Trainer, "train_epoch", original)
    result = run_suite(suite, out, report=lambda _m: None)
    by_key = {o.key: o for o in result["outcomes"]}
    assert by_key["p/tk/seed0"].status == "skipped"
    assert by_key["p/tk/seed1"].status == "done" and by_key["p/tk/seed1"].resumed
    assert (out / "runs/p/tk/seed1/teacher/model.pt").stat().st_mtime_ns == teacher1  # its finished step kept
    metrics = list(csv.DictReader(open(out / "runs/p/tk/seed1/student/metrics.csv")))
    assert [int(float(r["epoch"])) for r in metrics] == [1, 2]  # epoch 1 kept, epoch 2 trained after the resume

    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for s in "01" for m in ("tk", "tk:teacher", "tk:both")]
    for seed in (0, 1):
        cell = out / f"runs/p/tk/seed{seed}"
        got = {r["method"]: r for r in rows if r["seed"] == str(seed)}
        student = json.loads((cell / "student/summary.json").read_text())
        teacher = json.loads((cell / "teacher/summary.json").read_text())
        assert student["seed"] == seed and teacher["seed"] == seed  # --var seed reached both steps
        assert float(got["tk"]["last_top1"]) == pytest.approx(student["test_top1"], abs=1e-4)
        assert float(got["tk"]["best_top1"]) == pytest.approx(student["best_top1"], abs=1e-4)
        assert got["tk"]["folder"] == str(cell / "student")  # its learning curve
        assert float(got["tk"]["train_time_s"]) == pytest.approx(student["train_time_s"] + teacher["train_time_s"],
                                                                 abs=1e-3)
        assert float(got["tk:teacher"]["last_top1"]) == pytest.approx(teacher["test_top1"], abs=1e-4)
        ensemble = json.loads((cell / "pipeline.json").read_text())["ensembles"]["both"]["test_top1"]
        assert float(got["tk:both"]["last_top1"]) == pytest.approx(ensemble, abs=1e-4)
        assert got["tk:both"]["column"] == ""  # an ensemble has no learning curve
    cells = {c["method"]: c for c in csv.DictReader(open(out / "results.csv"))}
    assert set(cells) == {"tk", "tk:teacher", "tk:both"} and all(c["n"] == "2" for c in cells.values())
    tk = [json.loads((r.folder / "student/summary.json").read_text())["test_top1"] for r in runs]
    assert float(cells["tk"]["last_mean"]) == pytest.approx(statistics.fmean(tk), abs=1e-3)
    report = (out / "report/report.md").read_text()
    assert "| tk |" in report and "| tk:teacher |" in report and "Pipelines: tk" in report
    assert "## Failed runs\n\nNone." in report

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    again = run_suite(suite, out, report=lambda _m: None)  # everything finished: nothing trains again
    assert {o.status for o in again["outcomes"]} == {"skipped"}
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}

    # changed settings under the finished cells are refused before anything runs: in the pipeline file, or
    # given to the command
    with pytest.raises(ConfigError, match=r"2 run folder\(s\) hold results made with other settings.*another --out"):
        run_suite(suite, out, overrides=["optim.lr=0.01"], report=lambda _m: None)
    changed = json.loads(json.dumps(PIPELINE))
    changed["steps"][1]["overrides"].append("method.params.kd.temperature=2")
    with pytest.raises(ConfigError, match="other settings"):
        run_suite(load_suite(_suite(tmp_path, changed)), out, report=lambda _m: None)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}


def test_failed_pipeline_cell_is_recorded_with_its_traceback(tmp_path):
    suite = load_suite(_suite(tmp_path, method_overrides={"tk": ["optim.lrr=0.1"]}))
    out = tmp_path / "grid"
    result = run_suite(suite, out, seeds=[0], report=lambda _m: None)
    assert [(o.key, o.status) for o in result["outcomes"]] == [("p/tk/seed0", "failed")]
    error = (out / "runs/p/tk/seed0/error.txt").read_text()
    assert "lrr" in error and "Traceback" in error
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["method"], r["status"]) for r in rows] == [("tk", "failed")]
    assert rows[0]["error"].startswith("ConfigError: invalid config")  # the error's first line
    assert "invalid config" in (out / "report/report.md").read_text().split("## Failed runs", 1)[1]


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("vars"), r"pipeline 'tk' \(.*\): the pipeline has no `seed` in its `vars` \(it has none\)"),
    (lambda p: p.pop("result"), r"pipeline 'tk' \(.*\): the pipeline names no `result`.*steps: teacher, student"),
    (lambda p: p["steps"][1].update(config="configs/mnist1d/nowhere.yaml"), r"pipeline 'tk'.*nowhere.yaml"),
])
def test_pipelines_the_grid_cannot_run_are_refused(tmp_path, change, message):
    spec = json.loads(json.dumps(PIPELINE))
    change(spec)
    for step in spec["steps"]:  # no ${vars.seed} left without vars
        step["overrides"] = [o for o in step["overrides"] if "vars" in spec or "${vars." not in o]
    suite_file = _suite(tmp_path, spec)
    with pytest.raises(ConfigError, match=message):
        load_suite(suite_file).grid(tmp_path / "grid")
    result = CliRunner().invoke(app, ["bench", str(suite_file), "--out", str(tmp_path / "grid"), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "grid").exists()


def test_pair_schema_for_pipeline_rows(tmp_path):
    suite = load_suite(_suite(tmp_path))
    assert suite.pair("p").methods == [] and suite.pair("p").student is None  # pipeline rows alone
    with pytest.raises(ConfigError, match="needs `student`"):
        load_suite(_suite(tmp_path, methods=["ce"], config=["mnist1d/{method}.yaml"]))
    with pytest.raises(ConfigError, match="names a method row and a pipeline row"):
        load_suite(_suite(tmp_path, methods=["ce"], configs={"ce": "mnist1d/student_baseline.yaml"},
                          student={"arch": "cnn1d_small"}, pipelines={"ce": str(tmp_path / "tiny_pipeline.yaml")})
                   ).grid(tmp_path / "g")
    with pytest.raises(ConfigError, match="row label 'a:b'"):
        load_suite(_suite(tmp_path, pipelines={"a:b": "mnist1d/ban.yaml"}))


def test_paradigm_suite_pipeline_pairs_expand(tmp_path):
    names = ["mnist1d-ban", "mnist1d-takd", "digits-munge", "mnist1d-deepinversion", "digits-deepinversion"]
    suite = load_suite("paradigms")
    out = tmp_path / "grid"
    runs, _ = suite.grid(out, pairs=names)
    assert len(runs) == 25 and all(isinstance(r, PipelineRun) for r in runs)
    assert sorted({(r.pair, r.label) for r in runs}) == sorted(
        [("mnist1d-ban", "ban"), ("mnist1d-takd", "takd"), ("digits-munge", "munge"),
         ("mnist1d-deepinversion", "deepinversion"), ("digits-deepinversion", "deepinversion")])
    for spec in runs[::5]:
        pipe = spec.load()
        assert pipe.spec.vars["seed"] == spec.seed and pipe.spec.result
        assert pipe.spec.overrides[-len(suite.spec.run_overrides):] == suite.spec.run_overrides
    dry = CliRunner().invoke(app, ["bench", "paradigms", "--pairs", ",".join(names), "--out", str(out),
                                   "--dry-run", "--commands"])
    assert dry.exit_code == 0, dry.output
    assert "25 runs" in dry.output and "new 5" in dry.output
    assert (f"distillab pipeline configs/mnist1d/ban.yaml train.checkpoint_every=10 train.tensorboard=false "
            f"--var seed=3 --out {out / 'runs/mnist1d-ban/ban/seed3'}") in dry.output
    assert "teacher: distillab train-teacher" not in dry.output  # these pairs need no teacher of the grid's
    assert not out.exists()  # a dry run runs nothing


def test_a_second_pair_given_as_an_override_is_refused_before_any_run(tmp_path):
    out = tmp_path / "grid"
    result = CliRunner().invoke(app, ["bench", "paradigms", "--pairs", "mnist1d-ban", "digits-munge", "--out", str(out)])
    assert result.exit_code == 2
    assert "'digits-munge' is a pair of the suite, not an override" in result.output
    assert "--pairs mnist1d-ban,digits-munge" in result.output
    result = CliRunner().invoke(app, ["bench", "paradigms", "--pairs", "mnist1d-ban", "epochs", "--out", str(out)])
    assert "override 'epochs' is not of the form key=value" in result.output
    assert not out.exists()
