"""Every registered method, parametrised over the registry: presets and configs exist, one CPU training step
is finite, gradients reach only the student and the method's own parameters, state survives a checkpoint,
and the method distills one epoch from the command line on MNIST-1D and on a generated CIFAR-100 archive."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from distillab.cli import app
from distillab.config import load_config
from distillab.data import build_dataset
from distillab.data.cifar import write_fake_cifar_archive
from distillab.engine.trainer import Trainer
from distillab.methods import METHODS
from distillab.models import create_model
from distillab.objective import build_objective
from distillab.runner import PACKAGED_CONFIGS

METHOD_NAMES = [m for m in METHODS.names() if not m.startswith("_")]
MNIST1D_CONFIG = {"ce": "student_baseline"}
CIFAR_CONFIG = {"ce": "student_resnet8x4"}


def mnist1d_config(method: str):
    return PACKAGED_CONFIGS / "mnist1d" / f"{MNIST1D_CONFIG.get(method, method)}.yaml"


def cifar_config(method: str):
    name = CIFAR_CONFIG.get(method, f"{method}_resnet32x4_resnet8x4")
    return PACKAGED_CONFIGS / "cifar100" / f"{name}.yaml"


def short_stages(method: str) -> list[str]:
    return [f"method.stages.{s.name}.epochs=1" for s in METHODS.get(method).stages]


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_preset_has_description_and_configs(method):
    spec = METHODS.get(method)
    assert spec.description and len(spec.description) < 120
    for path in (mnist1d_config(method), cifar_config(method)):
        assert path.is_file(), f"{method}: missing config {path.relative_to(PACKAGED_CONFIGS)}"
        cfg = load_config(path)
        assert cfg.method.name == method


def _trainer(method: str, tmp_path) -> Trainer:
    cfg = load_config(mnist1d_config(method), [
        "train.device=cpu", "train.batch_size=32", "train.tensorboard=false", "data.options.num_samples=200",
        *short_stages(method)])
    data = build_dataset(cfg.data.name, **cfg.data.options)
    torch.manual_seed(0)
    objective = build_objective(cfg.method)
    teacher = None
    if objective.needs_teacher:
        tcfg = load_config(PACKAGED_CONFIGS / "mnist1d" / "teacher_cnn1d.yaml")
        arch = cfg.teacher.arch or tcfg.student.arch
        teacher = create_model(arch, num_classes=data.num_classes, **(cfg.teacher.options or tcfg.student.options))
    student = create_model(cfg.student.arch, num_classes=data.num_classes, **cfg.student.options)
    return Trainer(cfg, student=student, teacher=teacher, objective=objective, data=data, run_dir=None)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_one_step_gradients_reach_only_student_and_method(method, tmp_path):
    trainer = _trainer(method, tmp_path)
    for stage in [s.name for s in trainer.objective.stages] + [None]:
        trainer.objective.use_stage(stage)
        raw = next(iter(trainer.train_loader))
        x, y, idx = raw["input"], raw["label"], raw["index"]
        x = trainer.data.train_transform(x, torch.Generator().manual_seed(0))
        from distillab.features import FeatureTaps
        from distillab.losses import Batch, ModelOutputs

        trainer.student.train()
        for p in list(trainer.student.parameters()) + list(trainer.objective.parameters()):
            p.grad = None
        with FeatureTaps(trainer.student, trainer.student_taps) as s_taps:
            t_out = None
            if trainer.teacher is not None:
                with FeatureTaps(trainer.teacher, trainer.teacher_taps) as t_taps, torch.no_grad():
                    t_out = ModelOutputs(trainer.teacher(x), t_taps.pop())
            s_logits = trainer.student(x)
            batch = Batch(x, y, idx, ModelOutputs(s_logits, s_taps.pop()), t_out, epoch=25, stage=stage)
            total, logs = trainer.objective(batch)
        assert total.dim() == 0 and torch.isfinite(total), (method, stage, logs)
        assert all(torch.isfinite(v).all() for v in logs.values()), (method, stage, logs)
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.student.parameters()) or \
            any(p.grad is not None for p in trainer.objective.parameters()), f"{method}: no gradient anywhere"
        if trainer.teacher is not None:
            assert all(p.grad is None for p in trainer.teacher.parameters()), f"{method}: gradient reached the teacher"
        for name, p in list(trainer.student.named_parameters()) + list(trainer.objective.named_parameters()):
            assert p.grad is None or torch.isfinite(p.grad).all(), f"{method}: non-finite gradient in {name}"
    trainer.objective.use_stage(None)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_state_survives_checkpoint(method, tmp_path):
    trainer = _trainer(method, tmp_path)
    trainer.train_epoch(1)
    state = trainer.objective.state_dict()
    path = tmp_path / "objective.pt"
    torch.save(state, path)
    fresh = _trainer(method, tmp_path).objective
    fresh.load_state_dict(torch.load(path))
    for key, value in trainer.objective.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), f"{method}: {key} differs after reload"


runner = CliRunner()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cli_one_epoch_mnist1d(method, tmp_path):
    teacher = tmp_path / "teacher.pt"
    tcfg = load_config(PACKAGED_CONFIGS / "mnist1d" / "teacher_cnn1d.yaml")
    cfg = load_config(mnist1d_config(method))
    arch = (cfg.teacher.arch if cfg.teacher else None) or tcfg.student.arch
    options = (cfg.teacher.options if cfg.teacher and cfg.teacher.options else tcfg.student.options)
    torch.save({"model": create_model(arch, num_classes=10, **options).state_dict(), "arch": arch}, teacher)
    result = runner.invoke(app, ["distill", str(mnist1d_config(method)), "train.epochs=1",
                                 "data.options.num_samples=300", f"out_dir={tmp_path / 'runs'}",
                                 "train.progress=false", "train.tensorboard=false", "name=r",
                                 f"teacher.checkpoint={teacher}", *short_stages(method)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["epochs"] == 1


@pytest.fixture(scope="module")
def cifar_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar_archive(root, n_train=48, n_test=16, num_classes=100)
    teacher = root / "resnet32x4.pth"
    torch.manual_seed(0)
    torch.save({"model": create_model("resnet32x4", num_classes=100).state_dict()}, teacher)
    return root, teacher


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_cli_one_epoch_cifar100_archive(method, tmp_path, cifar_setup):
    root, teacher = cifar_setup
    extra = ["method.params.crd.nce_k=16"] if "crd" in METHODS.get(method).terms else []
    if method in ("fsp", "ft"):
        # an untrained resnet32x4 has feature RMS up to ~30; FSP (4th power) and FT's reconstruction (square)
        # diverge at the reference init lr on it. A trained teacher does not; the smoke only checks the path.
        extra.append("method.stages.init.lr=0.001")
    result = runner.invoke(app, ["distill", str(cifar_config(method)), f"data.root={root}", "train.epochs=1",
                                 "train.batch_size=16", f"out_dir={tmp_path / 'runs'}", "train.progress=false",
                                 "train.tensorboard=false", "name=r", f"teacher.checkpoint={teacher}",
                                 "teacher.arch=resnet32x4", *short_stages(method), *extra])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["epochs"] == 1
