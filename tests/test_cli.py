"""The command line end to end on tiny settings: demo, list, train-teacher + distill, eval, CIFAR archives."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from distillab.cli import app
from distillab.data.cifar import write_fake_cifar_archive
from distillab.models import create_model

from conftest import tiny_overrides

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_demo_tiny(tmp_path):
    code, out = invoke("demo", "--tiny", "--out", tmp_path, "train.progress=false", "train.tensorboard=false")
    assert code == 0, out
    assert "distillab demo" in out and "teacher" in out and "kd" in out
    folder = tmp_path / "demo"
    result = json.loads((folder / "demo.json").read_text())
    assert set(result["rows"]) == {"teacher", "student", "kd"}
    top1 = {name: row["test_top1"] for name, row in result["rows"].items()}
    assert top1["teacher"] > 50 and top1["kd"] > 30 and top1["student"] > 20, top1  # far above chance (10 %)
    assert (folder / "learning_curves.png").stat().st_size > 1000
    # a second demo reuses the stored teacher
    code, out = invoke("demo", "--tiny", "--out", tmp_path, "train.progress=false", "train.tensorboard=false")
    assert code == 0 and "reusing the stored teacher" in out


def test_list_shows_registries():
    code, out = invoke("list")
    assert code == 0
    for name in ("resnet32x4", "mnist1d", "cifar100", "kd", "ce"):
        assert name in out
    code, out = invoke("list", "modles")
    assert code == 2 and "did you mean 'models'" in out


def test_train_teacher_then_distill_then_eval(tmp_path):
    over = tiny_overrides(tmp_path / "runs", epochs=1)
    code, out = invoke("train-teacher", "configs/mnist1d/teacher_cnn1d.yaml", *over)
    assert code == 0 and "stored teacher" in out, out
    code, out = invoke("distill", "configs/mnist1d/kd.yaml", *over, f"teacher.overrides={json.dumps(over)}")
    assert code == 0 and "done" in out, out
    run_dir = tmp_path / "runs" / "kd-cnn1d_small-mnist1d-s0"
    assert (run_dir / "model.pt").is_file()
    code, out = invoke("eval", run_dir)
    assert code == 0 and "top-1" in out, out
    code, out = invoke("distill", "--resume", run_dir, "train.epochs=2")
    assert code == 0, out
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2


def test_cli_errors_are_one_line(tmp_path):
    code, out = invoke("distill", "configs/mnist1d/kd.yaml", "optim.lrr=1")
    assert code == 2 and "did you mean 'optim.lr'" in out and "Traceback" not in out
    code, out = invoke("distill", "configs/nope.yaml")
    assert code == 2 and "does not exist" in out


def test_cifar100_kd_config_on_generated_archive(tmp_path):
    """The shipped CIFAR-100 KD config, one epoch, on a tiny archive in the official format,
    with a RepDistiller-format teacher checkpoint ({'model': state_dict})."""
    (tmp_path / "cifar").mkdir()
    write_fake_cifar_archive(tmp_path / "cifar", n_train=64, n_test=32, num_classes=100)
    teacher = create_model("resnet32x4", num_classes=100)
    torch.save({"model": teacher.state_dict(), "epoch": 240, "accuracy": 79.4}, tmp_path / "resnet32x4.pth")
    code, out = invoke("distill", "configs/cifar100/kd_resnet32x4_resnet8x4.yaml", f"data.root={tmp_path / 'cifar'}",
                       "train.epochs=1", f"teacher.checkpoint={tmp_path / 'resnet32x4.pth'}",
                       f"out_dir={tmp_path / 'runs'}", "train.progress=false", "train.tensorboard=false")
    assert code == 0, out
    summary = json.loads((tmp_path / "runs" / "kd-resnet8x4-cifar100-s0" / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["teacher"] == "resnet32x4"


def test_missing_cifar_archive_is_a_clear_error(tmp_path):
    code, out = invoke("distill", "configs/cifar100/student_resnet8x4.yaml", f"data.root={tmp_path}",
                       "train.epochs=1", f"out_dir={tmp_path / 'runs'}")
    assert code == 2 and "download" in out and "Traceback" not in out


def test_progress_bar_and_digits_config(tmp_path):
    code, out = invoke("train-teacher", "configs/digits/teacher_cnn_digits.yaml", "train.epochs=2",
                       f"out_dir={tmp_path / 'runs'}", "train.tensorboard=false", "--no-store")
    assert code == 0, out
    # not a terminal here: one plain line per epoch (a terminal gets the progress bar)
    assert "teacher epoch 1/2" in out and "teacher epoch 2/2" in out and "img/s" in out and "stored teacher" not in out
