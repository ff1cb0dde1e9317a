"""``distillab tune``: the search space and its refusals, a study end to end (validation only, never test),
resuming after an interruption, pruning, two processes sharing one SQLite study, and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from distillab.config import load_config  # noqa: E402
from distillab.engine.trainer import Trainer  # noqa: E402
from distillab.plots import read_metrics  # noqa: E402
from distillab.runner import find_config  # noqa: E402
from distillab.tune import (TuneError, check_space, default_space, load_study, parse_space,  # noqa: E402
                            space_file_beside, tune)

# seconds-long trials: 300 MNIST-1D samples, the small student, 2 epochs
TINY = ["data.options.num_samples=300", "student.arch=cnn1d_small", "train.epochs=2", "train.device=cpu"]
SPACE = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
         "method.params.kd.temperature": {"type": "float", "low": 1, "high": 8}}
KD = Path(find_config("configs/mnist1d/kd.yaml"))


@pytest.fixture
def kd_setup(tmp_path, teacher_file):
    """The kd config with a tiny teacher from the test session's store and a space file."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": SPACE}))
    return [*TINY, f"out_dir={tmp_path / 'runs'}", "teacher.config=null", f"teacher.checkpoint={teacher_file}"], space


def _tune(tmp_path, overrides, space, **kwargs):
    kwargs = {"trials": 3, "final_seeds": 0, "out": tmp_path / "tune", "space_file": space, **kwargs}
    return tune(KD, overrides, **kwargs)


def _study(tmp_path):
    spec = json.loads((tmp_path / "tune" / "tune.json").read_text())
    return optuna.load_study(study_name="distillab", storage=spec["storage"])


# ------------------------------------------------------------------------------------------------ the space


def test_the_space_is_parsed_and_bad_entries_are_named():
    space = parse_space({"space": SPACE}, "s.yaml")
    assert space["optim.lr"].log and space["method.params.kd.temperature"].high == 8
    for bad, message in [({"optim.lr": {"type": "float", "low": 0.2, "high": 0.1}}, "is empty"),
                         ({"optim.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
                         ({"optim.lr": {"type": "normal", "low": 0, "high": 1}}, "type 'normal'"),
                         ({"optim.lr": {"type": "categorical", "choices": []}}, "non-empty list"),
                         ({"train.epochs": {"type": "int", "low": 1.5, "high": 4}}, "whole bounds"),
                         ({"optim.lr": {"low": 0.1, "hihg": 1}}, "unknown fields"),
                         ({}, "expected a mapping")]:
        with pytest.raises(TuneError, match=message):
            parse_space(bad, "s.yaml")


def test_keys_the_config_does_not_have_or_of_another_type_are_refused(kd_setup):
    overrides, _ = kd_setup
    cases = [({"optim.lrr": {"type": "float", "low": 0.01, "high": 0.1}}, "no such key"),
             ({"train.batch_size": {"type": "float", "low": 16, "high": 64}}, "is an int: use type int"),
             ({"optim.lr": {"type": "categorical", "choices": ["fast", "slow"]}}, "not of the key's type"),
             ({"optim.name": {"type": "float", "low": 0.1, "high": 1}}, "use type categorical"),
             ({"optim.name": {"type": "categorical", "choices": ["sgd", "lion"]}}, "refuses 'lion'"),
             ({"method.params.kd.temprature": {"type": "float", "low": 1, "high": 4}}, "refuses"),
             ({"method.weights.kd": {"type": "float", "low": -1, "high": 4}}, "must be 0 or more"),
             ({"method.weights.kdd": {"type": "float", "low": 1, "high": 4}}, "refuses")]
    for raw, message in cases:
        with pytest.raises(TuneError, match=message):
            check_space(KD, overrides, parse_space(raw, "s.yaml"))


def test_a_refused_space_starts_no_trial_and_makes_no_folder(tmp_path, kd_setup):
    overrides, space = kd_setup
    space.write_text(yaml.safe_dump({"space": {"optim.lr": {"type": "float", "low": 0.3, "high": 0.1}}}))
    with pytest.raises(TuneError, match="is empty"):
        _tune(tmp_path, overrides, space)
    assert not (tmp_path / "tune").exists() and not (tmp_path / "runs").exists()


def test_the_default_space_comes_from_the_methods_terms():
    at = default_space(load_config(find_config("configs/mnist1d/at.yaml")))
    assert set(at) == {"method.weights.at", "optim.lr"}
    weight = at["method.weights.at"]
    assert (weight.low, weight.high, weight.log) == (100.0, 10000.0, True)  # the preset's 1000 / 10 and x 10
    kd = default_space(load_config(KD))
    assert {"method.weights.kd", "method.params.kd.temperature", "optim.lr"} == set(kd)
    assert space_file_beside(Path("configs/mnist1d/at.yaml")) == Path("configs/mnist1d/at.tune.yaml")


# ------------------------------------------------------------------------------------------------ a study


def test_a_study_scores_trials_on_validation_and_writes_a_usable_best_config(tmp_path, kd_setup):
    overrides, space = kd_setup
    figures = _tune(tmp_path, overrides, space, final_seeds=2)
    folder = tmp_path / "tune"
    study = _study(tmp_path)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:  # each trial's value is its run's last validation top-1, and nothing of the test set
        summary = json.loads((Path(t.user_attrs["run"]) / "summary.json").read_text())
        assert t.value == summary["val_top1"] and summary["selected_by"] == "validation"
        assert summary["validation"]["fraction"] == 0.1
        assert not any("test" in k for k in t.user_attrs)
    best = max(complete, key=lambda t: t.value)
    assert figures["best"]["number"] == best.number
    cfg = load_config(folder / "best.yaml")  # a config distill accepts, with the best settings in it
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.method.params["kd"]["temperature"] == pytest.approx(best.params["method.params.kd.temperature"])
    assert cfg.data.val_fraction is None  # trained on the whole training set, as the config says
    final = json.loads((folder / "final.json").read_text())
    assert len(final["tuned"]["values"]) == len(final["default"]["values"]) == 2
    for name in ("report.md", "history.png", "slice.png"):
        assert (folder / name).is_file(), name
    report = (folder / "report.md").read_text()
    assert "val/top1" in report and "## On the test set" in report and "Welch" in report


def test_rerunning_continues_the_study_and_a_changed_question_is_refused(tmp_path, kd_setup):
    overrides, space = kd_setup
    _tune(tmp_path, overrides, space, trials=2)
    _tune(tmp_path, overrides, space, trials=3)  # one more trial, the first two kept
    assert len(_study(tmp_path).trials) == 3
    with pytest.raises(TuneError, match="another question .*overrides"):
        _tune(tmp_path, [*overrides, "train.epochs=3"], space, trials=3)


def test_an_interrupted_trial_resumes_from_its_folder(tmp_path, kd_setup, monkeypatch):
    overrides, space = kd_setup
    original = Trainer.train_epoch
    calls = {"n": 0}

    def interrupt_second_trial(self, epoch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # trial 1, epoch 2 (each trial has 2 epochs)
            raise KeyboardInterrupt
        return original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_second_trial)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path, overrides, space, trials=3)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut = _study(tmp_path).trials[1]
    assert cut.state.name == "FAIL" and cut.user_attrs["interrupted"]
    _tune(tmp_path, overrides, space, trials=3)
    trials = _study(tmp_path).trials
    resumed = [t for t in trials if t.user_attrs.get("resume_from") == cut.user_attrs["run"]]
    assert len(resumed) == 1 and resumed[0].state.name == "COMPLETE"
    assert resumed[0].params == cut.params and resumed[0].user_attrs["run"] == cut.user_attrs["run"]
    rows = read_metrics(Path(cut.user_attrs["run"]) / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]  # epoch 1 kept from before the interruption
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3  # the budget counts finished trials only


def test_pruned_trials_stop_early_and_the_report_counts_them(tmp_path, kd_setup, monkeypatch):
    import distillab.tune as tune_module

    class AfterFirstEpoch(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number > 0 and trial.last_step is not None and trial.last_step >= 1

    monkeypatch.setattr(tune_module, "pruner_of", lambda name, epochs: AfterFirstEpoch())
    overrides, space = kd_setup
    figures = _tune(tmp_path, overrides, space, trials=3)
    states = [t.state.name for t in _study(tmp_path).trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]
    assert figures["pruning"]["pruned"] == 2 and figures["pruning"]["epochs_pruned"] == [1, 1]
    pruned = _study(tmp_path).trials[1]
    assert len(read_metrics(Path(pruned.user_attrs["run"]) / "metrics.csv")) == 1
    assert math.isfinite(figures["pruning"]["seconds_saved"])


def test_two_processes_share_one_sqlite_study(tmp_path, kd_setup):
    """--workers 2: two spawned processes pull trials from the same SQLite file (as two machines would from
    one database URL), and together run exactly the budget."""
    overrides, space = kd_setup
    _tune(tmp_path, [*overrides, "train.epochs=1"], space, trials=4, workers=2)
    study = _study(tmp_path)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
    assert len({t.user_attrs["run"] for t in study.trials}) == 4
    spec = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert spec["storage"].startswith("sqlite:///") and (tmp_path / "tune" / "study.db").is_file()
    assert load_study  # the study is Optuna's own: optuna.load_study reads it (above)
