"""Runs of several models end to end: mutual learning (joint and sequential steps), several teachers, a
privileged-view teacher. Each resumes to exactly the uninterrupted run; every trained model is evaluated,
logged and saved; frozen models run once per batch."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from distillab.cli import app
from distillab.config import load_config
from distillab.core.files import load_checkpoint
from distillab.engine.frozen import FrozenModels
from distillab.engine.trainer import Trainer
from distillab.models import create_model, load_model
from distillab.plots import read_metrics
from distillab.runner import find_config, run

from conftest import tiny_overrides

TIMING = ("time/epoch_s", "throughput/images_per_s")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Random-weight teacher checkpoints: two widths on the main input, one on the clean view."""
    root = tmp_path_factory.mktemp("teachers")
    out = {}
    for name, width, data_input in (("t32", 32, "input"), ("t16", 16, "input"), ("clean", 32, "clean")):
        torch.manual_seed(width + len(data_input))
        path = root / f"{name}.pt"
        torch.save({"model": create_model("cnn1d", num_classes=10, width=width).state_dict(), "arch": "cnn1d",
                    "options": {"width": width}, "input": data_input}, path)
        out[name] = str(path)
    return out


def _overrides(kind: str, teachers: dict) -> tuple[str, list[str]]:
    if kind in ("dml", "dml_sequential"):
        extra = ["method.step=sequential"] if kind == "dml_sequential" else []
        return "configs/mnist1d/dml.yaml", ["models.peer.options.width=4", *extra]
    if kind == "mtkd":
        return "configs/mnist1d/mtkd.yaml", [f"teacher.checkpoint={teachers['t32']}",
                                            f"models.teacher2.checkpoint={teachers['t16']}",
                                            f"models.teacher3.checkpoint={teachers['t16']}"]
    return "configs/mnist1d/lupi_kd.yaml", [f"teacher.checkpoint={teachers['clean']}"]


def _cfg(tmp_path, kind, teachers, *extra, epochs=3):
    path, over = _overrides(kind, teachers)
    return load_config(find_config(path), tiny_overrides(tmp_path / "runs", epochs=epochs) + over + list(extra))


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir / "metrics.csv")]


@pytest.mark.parametrize("kind", ["dml", "dml_sequential", "mtkd", "lupi_kd"])
def test_resume_equals_uninterrupted(tmp_path, teachers, kind, monkeypatch):
    full, full_dir = run(_cfg(tmp_path, kind, teachers, "name=full"))
    original = Trainer.train_epoch

    def crash_at_3(self, epoch, progress=None, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, kind, teachers, "name=cut"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut_dir = tmp_path / "runs" / "cut"
    assert load_checkpoint(cut_dir / "checkpoints" / "last.pt")["epoch"] == 2
    resumed, _ = run(_cfg(tmp_path, kind, teachers, "name=cut"), resume=cut_dir)
    files = ["model.pt"] + ([f"models/{n}.pt" for n in ("student", "peer")] if kind.startswith("dml") else [])
    for file in files:
        a, b = torch.load(full_dir / file)["model"], torch.load(cut_dir / file)["model"]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind}: {file} {key}"
    assert _rows(full_dir) == _rows(cut_dir)
    assert resumed["models"] == full["models"] and resumed.get("ensemble_top1") == full.get("ensemble_top1")


def test_mutual_learning_evaluates_logs_and_saves_every_model(tmp_path, teachers):
    summary, run_dir = run(_cfg(tmp_path, "dml", teachers, epochs=2))
    row = read_metrics(run_dir / "metrics.csv")[-1]
    for name in ("student", "peer", "ensemble"):
        assert 0 <= row[f"test/{name}/top1"] <= 100 and row[f"test/{name}/loss"] > 0
    assert row["test/top1"] == row["test/student/top1"] == summary["test_top1"]
    assert {"train/student/top1", "train/peer/top1", "train/dml.student", "train/dml.peer", "train/ce.peer"} <= set(row)
    assert summary["models"]["peer"] == {"role": "trainable", "arch": "cnn1d_small", "input": "input",
                                         "test_top1": row["test/peer/top1"],
                                         "params": summary["models"]["peer"]["params"]}
    assert summary["ensemble_top1"] == row["test/ensemble/top1"]
    peer = load_model(run_dir, name="peer")
    assert peer.options == {"width": 4} and peer.test_top1 == row["test/peer/top1"]
    assert (run_dir / "models" / "student.pt").samefile(run_dir / "model.pt")
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--model", "peer", "--device", "cpu"])
    assert result.exit_code == 0 and f"top-1 {row['test/peer/top1']:.2f}%" in result.output, result.output


def test_ensemble_is_the_mean_of_the_peers_probabilities(tmp_path, teachers):
    _, run_dir = run(_cfg(tmp_path, "dml", teachers, epochs=1))
    from distillab.data import build_dataset

    cfg = load_config(run_dir / "config.yaml")
    data = build_dataset(cfg.data.name, **cfg.data.options)
    nets = [load_model(run_dir, name=n).model.eval() for n in ("student", "peer")]
    x, y = data.test_transform(data.test.inputs), data.test.labels
    with torch.no_grad():
        probs = sum(net(x).softmax(1) for net in nets) / 2
    expected = 100.0 * float((probs.argmax(1) == y).float().mean())
    assert read_metrics(run_dir / "metrics.csv")[-1]["test/ensemble/top1"] == pytest.approx(expected, abs=1e-6)


def test_sequential_step_moves_each_peers_batchnorm_once_per_batch(tmp_path, teachers):
    joint, joint_dir = run(_cfg(tmp_path, "dml", teachers, "name=joint", epochs=1))
    seq, seq_dir = run(_cfg(tmp_path, "dml_sequential", teachers, "name=seq", epochs=1))
    steps = -(-240 // 128)  # 300 samples: 240 train, batch 128
    for file in ("model.pt", "models/peer.pt"):
        state = torch.load(seq_dir / file)["model"]
        tracked = [int(v) for k, v in state.items() if k.endswith("num_batches_tracked")]
        assert tracked and set(tracked) == {steps}, f"{file}: {tracked}"
    a, b = torch.load(joint_dir / "models/peer.pt")["model"], torch.load(seq_dir / "models/peer.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # the second peer saw the update


def test_every_teacher_runs_once_per_batch(tmp_path, teachers, monkeypatch):
    calls: dict[int, list[int]] = {}
    original = FrozenModels.outputs

    def counting(self, fields, idx, keys, taps):
        handles = [m.module.register_forward_hook(lambda mod, inp, _o: calls.setdefault(id(mod), []).append(len(inp[0])))
                   for m in self.models]
        try:
            return original(self, fields, idx, keys, taps)
        finally:
            for h in handles:
                h.remove()

    monkeypatch.setattr(FrozenModels, "outputs", counting)
    run(_cfg(tmp_path, "mtkd", teachers, "name=plain", epochs=2))
    assert len(calls) == 3 and all(sum(v) == 2 * 240 for v in calls.values())  # each teacher: every sample, once
    calls.clear()
    run(_cfg(tmp_path, "mtkd", teachers, "name=cached", "train.teacher_cache=true", "data.augment_variants=1",
             epochs=2))
    assert len(calls) == 3 and all(sum(v) == 240 for v in calls.values())  # cached: once per sample and augmentation
    row = read_metrics(tmp_path / "runs" / "cached" / "metrics.csv")[-1]
    assert row["teacher_cache/hit_rate"] == row["teacher_cache/teacher2/hit_rate"] == 1.0


def test_privileged_teacher_reads_its_view_and_is_evaluated_on_it(tmp_path, teachers):
    summary, run_dir = run(_cfg(tmp_path, "lupi_kd", teachers, epochs=1))
    assert summary["models"]["teacher"]["input"] == "clean"
    from distillab.data import build_dataset

    data = build_dataset("mnist1d", num_samples=300, privileged=True)
    teacher = load_model(teachers["clean"]).model.eval()
    with torch.no_grad():
        logits = teacher(data.prepare_field("clean", data.test.fields["clean"]))
    assert summary["teacher_top1"] == pytest.approx(100.0 * float((logits.argmax(1) == data.test.labels).float().mean()))
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["models"]["student"]["input"] == "input"


def test_checkpoint_of_the_one_student_engine_still_resumes(tmp_path, teachers):
    """A checkpoint written before runs held several models (no `models`, no `frozen_top1`) resumes to the
    same weights as an uninterrupted run."""
    extra = ["optim.schedule=constant", "method.name=kd", f"teacher.checkpoint={teachers['t32']}"]
    full_cfg = load_config(find_config("configs/mnist1d/kd.yaml"), tiny_overrides(tmp_path / "runs", epochs=3) + extra)
    _, full_dir = run(full_cfg.model_copy(update={"name": "full"}))
    _, cut_dir = run(load_config(find_config("configs/mnist1d/kd.yaml"),
                                 tiny_overrides(tmp_path / "runs", epochs=2) + extra + ["name=old"]))
    path = cut_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    for key in ("models", "frozen_top1"):
        state.pop(key)
    torch.save(state, path)
    run(load_config(cut_dir / "config.yaml", ["train.epochs=3"]), resume=cut_dir)
    a, b = torch.load(full_dir / "model.pt")["model"], torch.load(cut_dir / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
