"""The data steps of pipelines: a MUNGE transfer set labelled by an ensemble trains a small model (method
compress), and DeepInversion synthesises a data set from a teacher alone that a student then learns from;
an interrupted synthesis resumes to the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distillab.config import ConfigError
from distillab.data import build_dataset
from distillab.inversion import InversionError
from distillab.pipeline import load_pipeline, run_pipeline

TINY = ["train.progress=false", "train.tensorboard=false", "train.device=cpu"]


def write(tmp_path: Path, spec: dict, name: str = "p") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_munge_compression_pipeline(tmp_path):
    members = [{"name": f"m{k}", "command": "train-teacher", "config": "configs/tabular/ensemble_member.yaml",
                "overrides": [f"seed={k}", "train.epochs=5", "data.name=wine", "model.options.input_features=13"]}
               for k in range(2)]
    spec = {"overrides": TINY, "steps": [
        *members,
        {"name": "munge", "command": "munge",
         "params": {"ensemble": ["${m0.run}", "${m1.run}"], "multiplier": 2, "seed": 0}},
        {"name": "small", "command": "distill", "config": "configs/tabular/compress.yaml",
         "overrides": ["data.options={path: ${munge.data}}", "train.epochs=5", "student.options.input_features=13"]},
        {"name": "originals", "command": "munge", "params": {"ensemble": ["${m0.run}", "${m1.run}"], "multiplier": 0}},
    ], "ensembles": {"ensemble": ["m0", "m1"]}}
    summary = run_pipeline(load_pipeline(write(tmp_path, spec)), tmp_path / "out", report=lambda _m: None)
    made = summary["steps"]["munge"]
    wine = build_dataset("wine")
    assert made["size"] == len(wine.train) * (1 + 2 * 2)  # the originals, then 2 passes of 2N MUNGE points
    data = build_dataset("tensors", path=json.loads((tmp_path / "out" / "munge" / "step.json").read_text())["data"])
    assert "soft" in data.fields and data.train.fields["soft"].shape == (made["size"], 3)
    assert torch.allclose(data.train.fields["soft"].sum(1), torch.ones(made["size"]), atol=1e-5)
    assert len(data.test) == len(wine.test)  # the real test set, for evaluation
    small = json.loads((tmp_path / "out" / "small" / "summary.json").read_text())
    assert small["method"] == "compress" and small["test_top1"] > 50  # 3 classes: chance is 33 %
    assert summary["ensembles"]["ensemble"]["test_top1"] > 80
    originals = build_dataset("tensors", path=summary["steps"]["originals"]["data"])
    assert torch.equal(originals.train.inputs, data.train.inputs[:len(wine.train)])  # the training set alone
    assert torch.equal(originals.train.fields["soft"], data.train.fields["soft"][:len(wine.train)])


def test_munge_refuses_images(tmp_path):
    spec = {"overrides": TINY, "steps": [
        {"name": "m0", "command": "train-teacher", "config": "configs/mnist1d/student_baseline.yaml",
         "overrides": ["train.epochs=1", "data.options.num_samples=300"]},
        {"name": "munge", "command": "munge", "params": {"ensemble": ["${m0.run}"]}}]}
    with pytest.raises(ConfigError, match="MUNGE works on feature vectors"):
        run_pipeline(load_pipeline(write(tmp_path, spec)), tmp_path / "out", report=lambda _m: None)


def inversion_spec(iterations: int = 6) -> dict:
    return {"overrides": TINY, "steps": [
        {"name": "teacher", "command": "train-teacher", "config": "configs/mnist1d/teacher_cnn1d.yaml",
         "overrides": ["train.epochs=2", "data.options.num_samples=300", "model.options={width: 8}"]},
        {"name": "invert", "command": "invert",
         "params": {"teacher": "${teacher.run}", "batches": 2, "batch_size": 32, "iterations": iterations,
                    "checkpoint_every": 2, "seed": 1}},
        {"name": "student", "command": "distill", "config": "configs/mnist1d/kd.yaml",
         "overrides": ["data.name=tensors", "data.options={path: ${invert.data}}", "teacher.config=null",
                       "teacher.checkpoint=${teacher.model}", "train.epochs=2"]}]}


def test_deepinversion_pipeline_and_its_resume(tmp_path, monkeypatch):
    pipe = load_pipeline(write(tmp_path, inversion_spec()))
    summary = run_pipeline(pipe, tmp_path / "full", report=lambda _m: None)
    assert summary["steps"]["invert"]["size"] == 64 and summary["steps"]["invert"]["seconds_per_sample"] > 0
    assert (tmp_path / "full" / "invert" / "samples.png").stat().st_size > 1000
    student = json.loads((tmp_path / "full" / "student" / "summary.json").read_text())
    assert student["data"] == "tensors" and student["epochs"] == 2
    real_test = build_dataset("mnist1d", num_samples=300).test
    assert len(build_dataset("tensors", path=str(tmp_path / "full" / "invert" / "data")).test) == len(real_test)

    from distillab import inversion

    original = inversion.Inverter.run
    calls = {"n": 0}

    def crash(self, steps=None, progress=None):  # stop inside the second batch
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, steps, progress)

    monkeypatch.setattr(inversion.Inverter, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipe, tmp_path / "cut", report=lambda _m: None)
    monkeypatch.setattr(inversion.Inverter, "run", original)
    assert (tmp_path / "cut" / "invert" / "checkpoint.pt").is_file()
    run_pipeline(pipe, tmp_path / "cut", report=lambda _m: None)
    a = build_dataset("tensors", path=str(tmp_path / "full" / "invert" / "data"))
    b = build_dataset("tensors", path=str(tmp_path / "cut" / "invert" / "data"))
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.train.labels, b.train.labels)
    s_a = torch.load(tmp_path / "full" / "student" / "model.pt")["model"]
    s_b = torch.load(tmp_path / "cut" / "student" / "model.pt")["model"]
    assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)


def test_adaptive_deepinversion_step_competes_with_a_student(tmp_path):
    spec = inversion_spec(iterations=3)
    spec["steps"] = spec["steps"][:2]
    spec["steps"].insert(1, {"name": "small", "command": "train-teacher", "config": "configs/mnist1d/student_baseline.yaml",
                             "overrides": ["train.epochs=1", "data.options.num_samples=300"]})
    spec["steps"][2]["params"].update(adi=0.2, student="${small.run}", batches=1)
    summary = run_pipeline(load_pipeline(write(tmp_path, spec)), tmp_path / "adi", report=lambda _m: None)
    assert summary["steps"]["invert"]["size"] == 32
    plain = inversion_spec(iterations=3)
    plain["steps"][1]["params"].update(adi=0.2, batches=1)
    plain["steps"] = plain["steps"][:2]
    with pytest.raises(InversionError, match="adi=0.2 needs a student"):
        run_pipeline(load_pipeline(write(tmp_path, plain, "plain")), tmp_path / "plain", report=lambda _m: None)
