"""The run plan: every config mistake is refused before any data set is read or model built; load_model;
the contract types' views."""

from __future__ import annotations

import pytest
import torch

from distillab import runner
from distillab.config import ConfigError, load_config
from distillab.core.contract import Batch, EpochContext, ModelOutputs, SetupContext
from distillab.core.files import CheckpointError, save_atomic
from distillab.models import create_model, load_model
from distillab.plan import check_plan, find_config

from conftest import tiny_overrides

KD = "configs/mnist1d/kd.yaml"


@pytest.fixture
def no_io(monkeypatch):
    """Fail loudly if a data set is read or a model built."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the plan should have been refused before reading data or building models")

    monkeypatch.setattr(runner, "build_data", refuse)
    monkeypatch.setattr(runner, "build_models", refuse)


def _cfg(tmp_path, *extra, path=KD):
    return load_config(find_config(path), tiny_overrides(tmp_path / "runs") + list(extra))


@pytest.mark.parametrize("overrides, message", [
    (["method.params.kd.teacher=teacher2"], r"method term 'kd': reads model 'teacher2' as its teacher.*frozen models "
                                            r"in this run: teacher"),
    (["method.params.kd.student=peer"], r"reads model 'peer' as its student, but the run has no model"),
    (["teacher.lr=0.1"], r"teacher\.lr: 'teacher' is frozen, so it has no optimiser settings: remove lr"),
    (["models.t2.config=configs/mnist1d/teacher_cnn1d.yaml", "models.t2.role=frozen", "models.t2.weight_decay=0"],
     r"models\.t2\.weight_decay: 't2' is frozen"),
    (["student.input=clean"], r"student\.input: data set 'mnist1d' does not provide input 'clean' \(it provides: input\)"),
    (["teacher.input=clean"], r"teacher\.input: data set 'mnist1d' does not provide input 'clean'"),
    (["student.options.widht=3"], r"unknown option student\.options\.widht for model 'cnn1d_small': did you mean 'width'"),
    (["data.options.num_sample=30"], r"data\.options: .*'num_sample'.*did you mean 'num_samples'"),
    (["data.name=mnist1e"], r"data\.name: unknown data set 'mnist1e'"),
    (["method.params.kd.temprature=2"], r"unknown option method\.params\.kd\.temprature.*did you mean 'temperature'"),
    (["method.step=sequentail"], r"method\.step: unknown training step 'sequentail'"),
    (["models.peer.arch=cnn1d_small", "models.peer.role=trainable", "models.peer.config=x.yaml"],
     r"models\.peer: a trainable model is built from `arch`"),
    (["models.peer.role=trainable"], r"models\.peer\.arch: a trainable model needs its architecture"),
    (["models.ensemble.arch=cnn1d_small", "models.ensemble.role=trainable"], r"'ensemble' cannot name an entry"),
    (["models.t2.role=frozen"], r"models\.t2: give `checkpoint`"),
    (["models.t2.role=frozen", "models.t2.config=configs/digits/teacher_cnn_digits.yaml"],
     r"models\.t2\.config .* trains on 'digits' but this run uses 'mnist1d'"),
])
def test_plan_refuses_before_any_data_or_model(tmp_path, no_io, overrides, message):
    with pytest.raises(ConfigError, match=message):
        runner.run(_cfg(tmp_path, *overrides))
    assert not (tmp_path / "runs").exists()  # no run folder either


def test_plan_of_a_pair(tmp_path):
    plan = check_plan(_cfg(tmp_path))
    assert [(m.name, m.role, m.arch, m.input, m.source) for m in plan.models] == [
        ("student", "trainable", "cnn1d_small", "input", "new"), ("teacher", "frozen", "cnn1d", "input", "store")]
    assert plan.fields == ("input",)


def test_labels_only_plan_leaves_a_configured_teacher_out(tmp_path):
    plan = check_plan(_cfg(tmp_path, "method.name=ce"))
    assert [m.name for m in plan.models] == ["student"]


def test_a_term_can_read_another_teacher(tmp_path):
    plan = check_plan(_cfg(tmp_path, "models.t2.config=configs/mnist1d/teacher_cnn1d.yaml", "models.t2.role=frozen",
                           "models.t2.overrides=[model.options.width=16]", "method.params.kd.teacher=t2"))
    assert [m.name for m in plan.models] == ["student", "t2"]  # the unread teacher is not loaded
    assert plan.objective.terms["kd"].reads() == {"student": (), "t2": ()}
    assert plan.model("t2").options == {"width": 16}


def test_missing_teacher_config_names_the_command(tmp_path):
    with pytest.raises(ConfigError, match="train it: `distillab train-teacher configs/mnist1d/teacher_cnn1d.yaml`"):
        runner.run(_cfg(tmp_path))


# ------------------------------------------------------------------ load_model


def _saved(tmp_path, **extra) -> tuple:
    model = create_model("cnn1d_small", num_classes=10, width=4)
    path = tmp_path / "m.pt"
    save_atomic({"model": model.state_dict(), "arch": "cnn1d_small", "options": {"width": 4}, "num_classes": 10,
                 "data": "mnist1d", **extra}, path)
    return model, path


def test_load_model_reads_the_record(tmp_path):
    model, path = _saved(tmp_path, input="clean", test_top1=50.0)
    loaded = load_model(path)
    assert (loaded.arch, loaded.options, loaded.num_classes, loaded.input, loaded.test_top1) == \
        ("cnn1d_small", {"width": 4}, 10, "clean", 50.0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_load_model_foreign_state_dict_with_ddp_prefix(tmp_path):
    model = create_model("cnn1d_small", num_classes=7, width=4)
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(ConfigError, match="does not record its architecture"):
        load_model(path)
    loaded = load_model(path, arch="cnn1d_small", options={"width": 4})
    assert loaded.num_classes == 7  # read from the classifier


def test_load_model_refuses_other_classes_and_other_architectures(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ConfigError, match=r"has 10 output classes but data set 'digits' has 3: use a teacher trained on digits"):
        load_model(path, num_classes=3, data="digits", role="teacher")
    with pytest.raises(CheckpointError, match="does not fit architecture 'cnn1d'"):
        load_model(path, arch="cnn1d")


def test_load_model_from_a_run_folder_names_its_models(tmp_path):
    _, path = _saved(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path.rename(run_dir / "model.pt")
    assert load_model(run_dir).path == run_dir / "model.pt"
    with pytest.raises(CheckpointError, match=r"holds no model 'peer' \(saved models: only model.pt\)"):
        load_model(run_dir, name="peer")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing.pt")


# ------------------------------------------------------------------ contract views


def test_batch_view_points_the_shorthands_at_named_models():
    out = {n: ModelOutputs(torch.full((2, 3), float(i))) for i, n in enumerate(["student", "teacher", "t2"])}
    batch = Batch(torch.zeros(2, 1), torch.zeros(2).long(), torch.arange(2), out["student"], out["teacher"], 1,
                  outputs=out)
    view = batch.view({"student": "student", "teacher": "t2"})
    assert view.teacher is out["t2"] and view.student is out["student"] and view.outputs is out
    assert Batch(torch.zeros(1), torch.zeros(1), torch.zeros(1), out["student"], None, 1).outputs == \
        {"student": out["student"]}
    with pytest.raises(KeyError, match="no model output named 'peer'"):
        batch.output("peer")


def test_setup_and_epoch_context_views():
    ctx = SetupContext(num_classes=3, num_train=4, student_shapes={"embedding": torch.Size([2, 5])},
                       teacher_shapes={}, shapes={"student": {"e": 1}, "t2": {"e": 2}},
                       models={"student": torch.nn.Linear(1, 1)}, roles={"student": "trainable", "t2": "frozen"})
    assert ctx.view({"teacher": "t2"}).teacher_shapes == {"e": 2}
    assert ctx.names("frozen") == ["t2"]
    seen = []
    epoch = EpochContext(1, 4, None, torch.device("cpu"), lambda model, names: seen.append(model) or {},
                         lambda _i: None, lambda _m: None)
    epoch.view({"teacher": "t2"}).extract("teacher", ["embedding"])
    assert seen == ["t2"]
