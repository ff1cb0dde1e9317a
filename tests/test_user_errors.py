"""What a user sees when something goes wrong: resume never damages or mixes a run, Ctrl-C says what was kept,
user mistakes are one line (exit 2) and nothing is created before every check has passed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distillab.cli import app
from distillab.models import create_model

from conftest import tiny_overrides

runner = CliRunner()
BASELINE = "configs/mnist1d/student_baseline.yaml"


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # unwrapped


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def kd_run(tmp_path, teacher_file) -> Path:
    """A finished 2-epoch KD run."""
    code, out = invoke("distill", "configs/mnist1d/kd.yaml", *tiny_overrides(tmp_path / "runs", epochs=2),
                       f"teacher.checkpoint={teacher_file}", "name=kd")
    assert code == 0, out
    return tmp_path / "runs" / "kd"


# ------------------------------------------------------------------ resume


def test_resume_with_an_override_that_cannot_apply_changes_nothing(kd_run):
    before = folder_digest(kd_run)
    code, out = invoke("distill", "--resume", str(kd_run), "student.options.width=16", "train.epochs=3")
    assert code == 2 and "Traceback" not in out
    assert "cannot resume" in out and "student.options: {'width': 8} -> {'width': 16}" in out and "new run" in out
    assert folder_digest(kd_run) == before
    code, out = invoke("distill", "--resume", str(kd_run), "train.epochs=3")  # the run is still resumable
    assert code == 0, out


def test_resume_with_another_config_is_refused_naming_the_keys(kd_run):
    before = folder_digest(kd_run)
    code, out = invoke("distill", BASELINE, "--resume", str(kd_run), "train.epochs=3")
    assert code == 2 and "method.name: 'kd' -> 'ce'" in out and "teacher" in out
    assert folder_digest(kd_run) == before


def test_resume_may_extend_the_run_and_change_where_it_runs(kd_run):
    code, out = invoke("distill", "--resume", str(kd_run), "train.epochs=3", "train.device=cpu", "train.threads=1",
                       "train.progress=false")
    assert code == 0 and "done" in out, out
    assert "epoch 3/3" in out


def test_resume_of_a_finished_run_does_nothing(kd_run):
    before = folder_digest(kd_run)
    code, out = invoke("distill", "--resume", str(kd_run))
    assert code == 0 and "is finished (2 of 2 epochs" in out and "nothing changed" in out, out
    assert folder_digest(kd_run) == before


def test_resume_of_a_folder_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = invoke("distill", "--resume", str(tmp_path / "empty"))
    assert code == 2 and ("no config.yaml" in out or "holds no checkpoints/last.pt" in out)


# ------------------------------------------------------------------ one line per mistake, nothing created


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr: Input should be greater than or equal to 0"),
    ("optim.weight_decay=-1", "optim.weight_decay: Input should be greater than or equal to 0"),
    ("optim.momentum=1.5", "optim.momentum: Input should be less than 1"),
    ("train.threads=0", "train.threads: Input should be greater than or equal to 1"),
    ("train.lr=0.1", "unknown key 'train.lr': did you mean 'optim.lr'?"),
    ("student.options.widht=4", "unknown option student.options.widht for model 'cnn1d_small': did you mean 'width'"),
    ("method.params.ce.label_smoothing=2", "method.params.ce: label_smoothing must be in [0, 1)"),
])
def test_bad_values_are_one_line_and_make_no_folder(tmp_path, override, message):
    code, out = invoke("distill", BASELINE, *tiny_overrides(tmp_path / "runs"), override)
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not (tmp_path / "runs").exists()


def test_a_feature_the_model_lacks_names_the_option_and_the_stages(tmp_path, teacher_file):
    code, out = invoke("distill", "configs/mnist1d/at.yaml", *tiny_overrides(tmp_path / "runs"),
                       f"teacher.checkpoint={teacher_file}", "method.params.at.stages=[stage1, stage5]")
    assert code == 2 and "Traceback" not in out
    assert "model 'student' has no feature 'stage5'" in out and "method.params.at.stages" in out
    assert "stage0 (stages.0), stage1 (stages.1)" in out
    assert not (tmp_path / "runs").exists()


def test_out_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    code, out = invoke("distill", BASELINE, *tiny_overrides(tmp_path / "runs"))
    assert code == 2 and "out_dir" in out and "cannot hold run folders" in out and "Traceback" not in out


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import urllib.request

    def offline(*_a, **_k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code, out = invoke("distill", "configs/cifar100/student_resnet8x4.yaml", f"data.root={tmp_path / 'data'}",
                       "data.download=true", "train.epochs=1", f"out_dir={tmp_path / 'runs'}")
    assert code == 2 and "could not download" in out and "Traceback" not in out, out
    assert not (tmp_path / "runs").exists()


def test_non_finite_loss_is_one_line_naming_the_checkpoint(tmp_path):
    code, out = invoke("distill", BASELINE, *tiny_overrides(tmp_path / "runs", epochs=2), "optim.lr=1e30", "name=nan")
    assert code == 2 and "Traceback" not in out
    assert "non-finite loss in epoch 1" in out and "keeps no checkpoint" in out


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    student = tmp_path / "student.pt"
    torch.save({"model": create_model("cnn1d_small", num_classes=10, width=8).state_dict(), "arch": "cnn1d_small",
                "options": {"width": 8}}, student)
    code, out = invoke("distill", "configs/mnist1d/kd.yaml", *tiny_overrides(tmp_path / "runs"),
                       f"teacher.checkpoint={student}")
    assert code == 2 and "was trained as 'cnn1d_small' but teacher.config" in out and "trains 'cnn1d'" in out
    code, out = invoke("distill", "configs/mnist1d/kd.yaml", *tiny_overrides(tmp_path / "runs"),
                       f"teacher.checkpoint={student}", "teacher.arch=mlp1d")
    assert code == 2 and "teacher.arch is 'mlp1d' but checkpoint" in out and "trained as 'cnn1d_small'" in out
    assert not (tmp_path / "runs").exists()


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    from distillab import runner as run_module

    def broken(*_a, **_k):
        raise ZeroDivisionError("an internal bug")

    monkeypatch.setattr(run_module, "build_data", broken)
    result = runner.invoke(app, ["distill", BASELINE, *tiny_overrides(tmp_path / "runs")])
    assert result.exit_code == 1 and "this is a bug" in result.output
    assert isinstance(result.exception, ZeroDivisionError)


# ------------------------------------------------------------------ Ctrl-C and logs


def test_ctrl_c_says_what_was_kept_and_how_to_continue(tmp_path):
    """A real process: one plain line per epoch on a pipe, then SIGINT after the second epoch's line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    cmd = [sys.executable, "-m", "distillab", "distill", BASELINE, *tiny_overrides(tmp_path / "runs", epochs=400),
           "name=cut", "train.progress=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "train epoch 2/400" in line or "distill epoch 2/400" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    text = " ".join(("".join(lines) + out).split())
    assert proc.returncode == 130, text
    run_dir = tmp_path / "runs" / "cut"
    assert "distill epoch 1/400" in text and "img/s" in text  # the per-epoch lines of a log
    assert "interrupted: stopped in epoch" in text and f"continue with: distillab distill --resume {run_dir}" in text
    assert "the last checkpoint holds epoch" in text and "Traceback" not in text
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "summary.json").exists()


def test_threads_setting(tmp_path):
    threads = torch.get_num_threads()
    try:
        code, out = invoke("distill", BASELINE, *tiny_overrides(tmp_path / "runs"), "train.threads=1")
        assert code == 0, out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ tools follow the run


def test_eval_and_rdx_read_the_runs_data_root_and_checkpoints(tmp_path):
    """A run trained with its own data.root: eval (of the run, of its training checkpoint) and rdx need no flags."""
    root = tmp_path / "my-data"
    code, out = invoke("distill", BASELINE, *tiny_overrides(tmp_path / "runs"), f"data.root={root}", "name=r",
                       "train.checkpoint_every=1")
    assert code == 0, out
    run_dir = tmp_path / "runs" / "r"
    top1 = __import__("json").loads((run_dir / "summary.json").read_text())["test_top1"]
    for target in (run_dir, run_dir / "checkpoints" / "last.pt"):
        code, out = invoke("eval", str(target), "--device", "cpu")
        assert code == 0 and f"top-1 {top1:.2f}%" in out, out
    code, out = invoke("rdx", str(run_dir), str(run_dir), "--n", "30", "--k", "1", "--out", str(tmp_path / "rdx"),
                       "--device", "cpu")
    assert code == 0, out
    assert list(root.glob("mnist1d-*.npz"))  # generated once, in the run's root ...
    assert not list((tmp_path / "data").glob("mnist1d-*.npz"))  # ... and never in the default cache


def test_atomic_files_get_ordinary_permissions(tmp_path):
    from distillab.core.files import write_text_atomic
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "new.txt", "a")
        (tmp_path / "kept.txt").write_text("a")
        os.chmod(tmp_path / "kept.txt", 0o640)
        write_text_atomic(tmp_path / "kept.txt", "b")
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kept.txt").read_text() == "b"
