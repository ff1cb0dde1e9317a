"""Pipelines: steps checked before anything runs, run in dependency order, skipped when finished, resumed when
interrupted (to the weights of an uninterrupted pipeline), refused when their settings changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from distillab.cli import app
from distillab.config import ConfigError
from distillab.engine.trainer import Trainer
from distillab.pipeline import load_pipeline, run_pipeline

TINY = ["train.epochs=2", "data.options.num_samples=300", "train.progress=false", "train.tensorboard=false",
        "train.device=cpu"]


def write(tmp_path: Path, spec: dict, name: str = "p") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def ban(generations: int = 2) -> dict:
    steps = [{"name": "gen0", "command": "train-teacher", "config": "configs/mnist1d/student_baseline.yaml",
              "overrides": ["student.arch=cnn1d", "student.options={width: 4}"]}]
    for k in range(1, generations + 1):
        steps.append({"name": f"gen{k}", "command": "distill", "config": "configs/mnist1d/ban_generation.yaml",
                      "overrides": ["student.options={width: 4}", f"teacher.checkpoint=${{gen{k - 1}.model}}"]})
    ensembles = {"bane": [f"gen{k}" for k in range(1, generations + 1)]} if generations > 1 else {}
    return {"description": "tiny ban", "overrides": TINY, "steps": steps, "ensembles": ensembles}


@pytest.mark.parametrize("change, message", [
    (lambda s: s["steps"][1].update(overrides=["teacher.checkpoint=${gen9.model}"]),
     r"step 'gen1' refers to \$\{gen9.model\}, but there is no step 'gen9'"),
    (lambda s: s["steps"][1].update(overrides=["teacher.checkpoint=${gen0.weights}"]),
     r"step 'gen0' makes model, run"),
    (lambda s: s["steps"][0].update(overrides=["teacher.checkpoint=${gen2.model}"]),
     r"steps refer to each other in a cycle: gen0 -> gen2 -> gen1 -> gen0"),
    (lambda s: s["ensembles"].update(bane=["gen1", "gen7"]), r"ensemble 'bane' needs two or more steps.*no step 'gen7'"),
    (lambda s: s["steps"][1].pop("config"), r"a distill step needs `config`"),
    (lambda s: s["steps"][1].update(command="distil"), r"unknown step command 'distil': did you mean 'distill'"),
    (lambda s: s["steps"][1].update(name="gen0"), r"step names must be unique"),
    (lambda s: s["steps"][2]["overrides"].append("optim.lrr=0.1"),  # the last step, checked before the first runs
     r"(?s)step 'gen2': invalid config .*unknown key 'optim.lrr': did you mean 'optim.lr'"),
])
def test_bad_pipelines_are_refused_before_anything_runs(tmp_path, change, message):
    spec = ban()
    change(spec)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, spec))
    result = CliRunner().invoke(app, ["pipeline", str(write(tmp_path, spec)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()


def test_steps_run_in_dependency_order(tmp_path):
    spec = ban()
    spec["steps"] = [spec["steps"][2], spec["steps"][0], spec["steps"][1]]  # written out of order
    assert load_pipeline(write(tmp_path, spec)).order == ["gen0", "gen1", "gen2"]


def test_born_again_pipeline_runs_skips_and_reports(tmp_path):
    spec = ban()
    spec["overrides"] = [*spec["overrides"], f"store={tmp_path / 'store'}"]
    spec["steps"][0]["store"] = True  # generation 0 also goes into the teacher store
    pipe = load_pipeline(write(tmp_path, spec))
    summary = run_pipeline(pipe, tmp_path / "out", report=lambda _m: None)
    assert list(summary["steps"]) == ["gen0", "gen1", "gen2"]
    gen2 = json.loads((tmp_path / "out" / "gen2" / "summary.json").read_text())
    assert gen2["models"]["teacher"]["from"]["file"] == str((tmp_path / "out" / "gen1" / "model.pt").resolve())
    assert 0 <= summary["ensembles"]["bane"]["test_top1"] <= 100
    assert (tmp_path / "out" / "pipeline.json").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("model.pt")}
    said: list[str] = []
    run_pipeline(pipe, tmp_path / "out", report=said.append)  # everything finished: nothing trains again
    assert all("done before" in line for line in said), said
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("model.pt")}
    from distillab.config import load_config
    from distillab.plan import find_config
    from distillab.store import TeacherStore
    gen0 = load_config(find_config("configs/mnist1d/student_baseline.yaml"),
                       [*spec["overrides"], *spec["steps"][0]["overrides"]])
    stored = TeacherStore(tmp_path / "store").find(gen0)  # another run finds generation 0 by its config
    assert stored is not None and stored.read_bytes() == (tmp_path / "out" / "gen0" / "model.pt").read_bytes()


def test_interrupted_pipeline_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    pipe = load_pipeline(write(tmp_path, ban()))
    run_pipeline(pipe, tmp_path / "full", report=lambda _m: None)
    original = Trainer.train_epoch
    calls = {"n": 0}

    def crash(self, epoch, progress=None, **kwargs):  # gen0: epochs 1-2, gen1: epoch 1, then stop in epoch 2
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt, match="pipeline stopped in step 'gen1'.*resumes from its last checkpoint"):
        run_pipeline(pipe, tmp_path / "cut", report=lambda _m: None)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert (tmp_path / "cut" / "gen1" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "cut" / "gen1" / "summary.json").exists()
    said: list[str] = []
    run_pipeline(pipe, tmp_path / "cut", report=said.append)
    assert any("gen1: resuming" in line for line in said)
    for step in ("gen0", "gen1", "gen2"):
        a = torch.load(tmp_path / "full" / step / "model.pt")["model"]
        b = torch.load(tmp_path / "cut" / step / "model.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), step


def test_changed_settings_under_an_existing_folder_are_refused(tmp_path):
    run_pipeline(load_pipeline(write(tmp_path, ban(1))), tmp_path / "out", report=lambda _m: None)
    spec = ban(1)
    spec["steps"][1]["overrides"].append("seed=3")
    with pytest.raises(ConfigError, match=r"step 'gen1' .* was run with other settings \(seed: 0 -> 3\)"):
        run_pipeline(load_pipeline(write(tmp_path, spec, "q")), tmp_path / "out", report=lambda _m: None)


def test_teacher_assistant_pipeline_selects_and_chains(tmp_path):
    spec = {"overrides": TINY, "steps": [
        {"name": "teacher", "command": "train-teacher", "config": "configs/mnist1d/teacher_cnn1d.yaml",
         "overrides": ["model.options={width: 8}"]},
        {"name": "select", "command": "select_ta", "params": {
            "teacher": "${teacher.run}", "config": "configs/mnist1d/student_baseline.yaml",
            "student": {"arch": "cnn1d_small", "options": {"width": 2}},
            "candidates": [{"arch": "cnn1d", "options": {"width": 2}}, {"arch": "cnn1d", "options": {"width": 4}}]}},
        {"name": "assistant", "command": "distill", "config": "configs/mnist1d/kd.yaml",
         "overrides": ["student.arch=${select.arch}", "student.options=${select.options}", "teacher.config=null",
                       "teacher.checkpoint=${teacher.model}"]},
        {"name": "student", "command": "distill", "config": "configs/mnist1d/kd.yaml",
         "overrides": ["student.options={width: 2}", "teacher.config=null", "teacher.checkpoint=${assistant.model}"]},
    ]}
    summary = run_pipeline(load_pipeline(write(tmp_path, spec)), tmp_path / "out", report=lambda _m: None)
    selection = json.loads((tmp_path / "out" / "select" / "selection.json").read_text())
    assert selection["chosen"] in ("cnn1d-width2", "cnn1d-width4") and "midpoint" in selection["why"]
    chosen = next(c for c in selection["candidates"] if c["name"] == selection["chosen"])
    assert summary["steps"]["select"]["arch"] == "cnn1d"
    assistant = json.loads((tmp_path / "out" / "assistant" / "summary.json").read_text())
    assert assistant["models"]["student"]["arch"] == "cnn1d" and chosen["candidate"]["options"] == \
        torch.load(tmp_path / "out" / "assistant" / "model.pt")["options"]
    student = json.loads((tmp_path / "out" / "student" / "summary.json").read_text())
    assert student["models"]["teacher"]["arch"] == "cnn1d"  # the assistant taught the student


def test_shipped_pipelines_load():
    for name in ("mnist1d/ban.yaml", "mnist1d/takd.yaml", "cifar100/ban_resnet8x4.yaml",
                 "cifar100/takd_resnet110_resnet56_resnet20.yaml"):
        pipe = load_pipeline(f"configs/{name}")
        assert pipe.order


def test_assistant_candidates_from_the_zoo():
    from distillab.pipeline_steps import ta_candidates

    found = ta_candidates({"arch": "resnet110"}, {"arch": "resnet20"})
    assert [c["arch"] for c in found] == ["resnet32", "resnet44", "resnet56"]
    assert all(a["params"] < b["params"] for a, b in zip(found, found[1:]))
    result = CliRunner().invoke(app, ["assistants", "resnet110", "resnet20"])
    assert result.exit_code == 0 and "resnet44" in result.output and "geometric mean" in result.output
