"""Pre-training stages run by the engine: what they train, what they log, resume inside a stage."""

from __future__ import annotations

import pytest
import torch

from distillab.config import ConfigError, MethodConfig, load_config
from distillab.engine.logger import read_metrics
from distillab.engine.trainer import Trainer
from distillab.methods import METHODS, StageSpec, register_method
from distillab.objective import build_objective
from distillab.runner import run

from conftest import tiny_overrides

if "_staged_test" not in METHODS:
    register_method("_staged_test", "test only: a KD hint stage on the student body, then CE",
                    {"ce": ("ce", 1.0), "kd": ("kd", 0.0)},
                    stages=(StageSpec("init", 2, {"kd": 1.0}, train=("student_body",), student_mode="eval"),))


def _cfg(tmp_path, *extra):
    return load_config(None, tiny_overrides(tmp_path / "runs", epochs=2) + [
        "data.name=mnist1d", "student.arch=cnn1d_small", "teacher.arch=cnn1d", "method.name=_staged_test",
        "optim.schedule=constant", "optim.name=sgd", "optim.lr=0.05", *extra])


def _teacher(tmp_path):
    from distillab.models import create_model

    torch.manual_seed(1)
    path = tmp_path / "t.pt"
    torch.save({"model": create_model("cnn1d", num_classes=10).state_dict()}, path)
    return f"teacher.checkpoint={path}"


def test_stage_trains_only_the_body_in_eval_mode(tmp_path):
    from distillab.data import build_dataset
    from distillab.models import create_model

    cfg = _cfg(tmp_path)
    objective = build_objective(cfg.method)
    assert set(objective.terms) == {"ce", "kd"} and objective.weights == {"ce": 1.0}
    trainer = Trainer(cfg, student=create_model("cnn1d_small", num_classes=10),
                      teacher=create_model("cnn1d", num_classes=10), objective=objective,
                      data=build_dataset("mnist1d", num_samples=200))
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.run_stage(objective.stages[0])
    after = trainer.student.state_dict()
    assert torch.equal(after["fc.weight"], before["fc.weight"])  # the head is not in student_body
    assert not torch.equal(after["stages.0.conv.weight"], before["stages.0.conv.weight"])
    assert torch.equal(after["stages.0.bn.running_mean"], before["stages.0.bn.running_mean"])  # eval mode
    assert trainer.stage_done == {"init": 2} and objective.stage is None


def test_stage_logged_separately_and_skippable(tmp_path):
    _, d = run(_cfg(tmp_path, _teacher(tmp_path)))
    stage_rows = read_metrics(d / "stage_init" / "metrics.csv")
    assert [r["epoch"] for r in stage_rows] == [1, 2] and "train/kd" in stage_rows[0]
    main = read_metrics(d / "metrics.csv")
    assert len(main) == 2 and "train/kd" not in main[0]
    _, d2 = run(_cfg(tmp_path, _teacher(tmp_path), "method.stages.init.epochs=0"))
    assert not (d2 / "stage_init").exists()


def test_stage_override_errors():
    with pytest.raises(ConfigError, match="did you mean 'init'"):
        build_objective(MethodConfig(name="_staged_test", stages={"inti": {"epochs": 1}}))
    with pytest.raises(ConfigError, match="only 'epochs' and 'lr'"):
        build_objective(MethodConfig(name="_staged_test", stages={"init": {"train": "student"}}))


def test_resume_inside_a_stage_equals_uninterrupted(tmp_path, monkeypatch):
    teacher = _teacher(tmp_path)
    _, full = run(_cfg(tmp_path, teacher, "name=full", "method.stages.init.epochs=3"))
    original = Trainer.train_epoch

    def crash(self, epoch, progress=None, **kw):
        if self.objective.stage == "init" and epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kw)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, teacher, "name=cut", "method.stages.init.epochs=3"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut = tmp_path / "runs" / "cut"
    run(_cfg(tmp_path, teacher, "name=cut", "method.stages.init.epochs=3"), resume=cut)
    a, b = torch.load(full / "model.pt")["model"], torch.load(cut / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(read_metrics(cut / "stage_init" / "metrics.csv")) == 3
