"""The engine: resume equals an uninterrupted run, run folders, checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import torch

from distillab.config import ConfigError, load_config
from distillab.core.files import CheckpointError, load_checkpoint, save_atomic
from distillab.engine.rundir import create_run_dir
from distillab.engine.schedule import lr_factor
from distillab.engine.trainer import NonFiniteLossError, Trainer
from distillab.plots import read_metrics
from distillab.runner import find_config, run

from conftest import tiny_overrides

TEACHER = "configs/mnist1d/teacher_cnn1d.yaml"


def _cfg(tmp_path, *extra, epochs=3, path="configs/mnist1d/student_baseline.yaml"):
    return load_config(find_config(path), tiny_overrides(tmp_path / "runs", epochs=epochs) + list(extra))


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    extra = ["student.arch=cnn1d_small", "optim.name=sgd", "optim.lr=0.05", "optim.milestones=[2]"]
    full, full_dir = run(_cfg(tmp_path, *extra, "name=full"))

    original = Trainer.train_epoch

    def crash_at_3(self, epoch, progress=None):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, progress)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, *extra, "name=cut"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut_dir = tmp_path / "runs" / "cut"
    assert load_checkpoint(cut_dir / "checkpoints" / "last.pt")["epoch"] == 2
    resumed, _ = run(_cfg(tmp_path, *extra, "name=cut"), resume=cut_dir)

    a = torch.load(full_dir / "model.pt")["model"]
    b = torch.load(cut_dir / "model.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["test_top1"] == full["test_top1"]
    rows_a, rows_b = read_metrics(full_dir / "metrics.csv"), read_metrics(cut_dir / "metrics.csv")
    assert len(rows_a) == len(rows_b) == 3
    timing = ("time/epoch_s", "throughput/images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows_b]


def test_run_folders_never_overwritten(tmp_path):
    first = create_run_dir(tmp_path, "x")
    (first / "keep.txt").write_text("mine")
    second = create_run_dir(tmp_path, "x")
    assert second.name == "x-2" and (first / "keep.txt").read_text() == "mine"
    _, d1 = run(_cfg(tmp_path, "name=same", epochs=1))
    _, d2 = run(_cfg(tmp_path, "name=same", epochs=1))
    assert d1 != d2 and (d1 / "summary.json").is_file() and (d2 / "summary.json").is_file()


def test_run_folder_contents(tmp_path):
    summary, d = run(_cfg(tmp_path, epochs=2))
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "metrics.csv", "checkpoints", "summary.json", "model.pt"}
    saved = json.loads((d / "summary.json").read_text())
    assert saved["epochs"] == 2 and saved["reported"] == "last epoch"
    assert 0 <= saved["test_top1"] <= 100
    assert load_config(d / "config.yaml").train.epochs == 2


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, path)
    assert load_checkpoint(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_corrupt_and_missing_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="cannot resume"):
        run(_cfg(tmp_path, epochs=1), resume=tmp_path)


def test_non_finite_loss_is_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="non-finite loss in epoch 1.*lower optim.lr"):
        run(_cfg(tmp_path, "optim.lr=1e30", "optim.name=sgd", epochs=1))


def test_teacher_with_other_class_count_is_rejected(tmp_path):
    _, tdir = run(load_config(find_config(TEACHER), tiny_overrides(tmp_path / "runs") + ["model.options.width=4"]))
    ckpt = torch.load(tdir / "model.pt")
    ckpt["model"]["fc.weight"] = ckpt["model"]["fc.weight"][:5]
    ckpt["model"]["fc.bias"] = ckpt["model"]["fc.bias"][:5]
    torch.save(ckpt, tmp_path / "five.pt")
    cfg = _cfg(tmp_path, f"teacher.checkpoint={tmp_path / 'five.pt'}", "teacher.options.width=4", epochs=1,
               path="configs/mnist1d/kd.yaml")
    with pytest.raises(ConfigError, match="5 output classes but data set 'mnist1d' has 10"):
        run(cfg)


def test_missing_teacher_in_store_names_the_command(tmp_path):
    with pytest.raises(ConfigError, match="distillab train-teacher configs/mnist1d/teacher_cnn1d.yaml"):
        run(_cfg(tmp_path, epochs=1, path="configs/mnist1d/kd.yaml"))


def test_lr_schedules():
    cfg = load_config(None, ["student.arch=x"]).optim
    assert lr_factor(cfg, 149.9, 240) == 1.0
    assert lr_factor(cfg, 150.0, 240) == pytest.approx(0.1)
    assert lr_factor(cfg, 239.0, 240) == pytest.approx(0.001)
    cos = cfg.model_copy(update={"schedule": "cosine"})
    assert lr_factor(cos, 0, 10) == 1.0 and lr_factor(cos, 5, 10) == pytest.approx(0.5)
    warm = cfg.model_copy(update={"warmup_epochs": 2})
    assert lr_factor(warm, 0, 240) == pytest.approx(0.01) and lr_factor(warm, 1, 240) == pytest.approx(0.505)


def test_wandb_without_package_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed")
    except ImportError:
        pass
    from distillab.plan import check_plan

    with pytest.raises(ConfigError, match=r"pip install 'distillab\[wandb\]'"):  # before any folder or data
        check_plan(_cfg(tmp_path, "train.wandb_project=p"))


def test_teacher_is_frozen_and_loss_parameters_train(tmp_path):
    from distillab.config import MethodConfig
    from distillab.data import build_dataset
    from distillab.models import create_model
    from distillab.objective import build_objective

    cfg = load_config(None, ["student.arch=cnn1d_small", "teacher.arch=cnn1d", "method.name=kd",
                             "train.device=cpu", "train.batch_size=50", "train.tensorboard=false"])
    data = build_dataset("mnist1d", num_samples=200)
    teacher = create_model("cnn1d", num_classes=10)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = build_objective(MethodConfig(name="kd"))
    trainer = Trainer(cfg, student=create_model("cnn1d_small", num_classes=10), teacher=teacher,
                      objective=objective, data=data)
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.train_epoch(1)
    assert not trainer.teacher.training
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN running statistics untouched
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.student.state_dict().items())
