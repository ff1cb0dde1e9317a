"""Generator-based data-free distillation (DFAD): the loss, the alternating step with two optimisers, and a
run that reads no training data and resumes bit-identically."""

from __future__ import annotations

import pytest
import torch

from distillab.config import ConfigError, load_config
from distillab.core.contract import FROZEN, TRAINABLE
from distillab.core.files import load_checkpoint
from distillab.engine.trainer import Trainer
from distillab.losses.datafree import DFAD, logit_l1
from distillab.models import create_model
from distillab.plots import read_metrics
from distillab.runner import find_config, run

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("t") / "teacher.pt"
    torch.save({"model": create_model("cnn1d", num_classes=10, width=8).state_dict(), "arch": "cnn1d",
                "options": {"width": 8}}, path)
    return path


def _cfg(tmp_path, teacher_file, *extra, epochs=3):
    return load_config(find_config("configs/mnist1d/dfad.yaml"), tiny_overrides(tmp_path / "runs", epochs=epochs) + [
        f"teacher.checkpoint={teacher_file}", "teacher.config=null", "train.batch_size=16",
        "models.generator.options={nz: 8, ngf: 8}", "method.params.dfad.iterations_per_epoch=3",
        "method.params.dfad.student_steps=2", *extra])


def test_logit_l1_by_hand():
    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.5, 3.0]])
    assert float(logit_l1(s, t)) == pytest.approx((1 + 2 + 0 + 3) / 4)


def test_dfad_needs_a_trainable_generator():
    term = DFAD()
    with pytest.raises(ValueError, match="needs a trainable generator named 'generator'"):
        term.bind({"student": TRAINABLE, "teacher": FROZEN})
    term.bind({"student": TRAINABLE, "teacher": FROZEN, "generator": TRAINABLE})
    assert term.reads() == {"student": (), "teacher": (), "generator": ()}


def test_a_generator_is_not_a_student(tmp_path, teacher_file):
    with pytest.raises(ConfigError, match="'dfad_generator' is a generator, not a classifier"):
        run(_cfg(tmp_path, teacher_file, "student.arch=dfad_generator", "student.options={}"))
    assert not (tmp_path / "runs").exists()


def test_dfad_reads_no_data_and_resumes_bit_identically(tmp_path, teacher_file, monkeypatch):
    from distillab.data import ArrayDataset

    def no_training_data(self, i):  # the loader never indexes the training set
        raise AssertionError("a data-free run read a training sample")

    full, full_dir = run(_cfg(tmp_path, teacher_file, "name=full"))
    row = read_metrics(full_dir / "metrics.csv")[-1]
    assert {"train/dfad", "train/dfad.generator"} <= set(row) and row["train/dfad.generator"] <= 0
    assert full["models"]["generator"]["test_top1"] is None and (full_dir / "models" / "generator.pt").is_file()
    from distillab.models import load_model
    generator = load_model(full_dir, name="generator").model.eval()  # the saved record rebuilds it
    assert generator(torch.randn(4, 8)).shape == (4, 1, 40)
    original = Trainer.train_epoch

    def crash_at_3(self, epoch, progress=None, **kwargs):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tmp_path, teacher_file, "name=cut"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    cut = tmp_path / "runs" / "cut"
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(ArrayDataset, "__getitem__", no_training_data)
    run(_cfg(tmp_path, teacher_file, "name=cut"), resume=cut)
    for file in ("model.pt", "models/generator.pt"):
        a, b = torch.load(full_dir / file)["model"], torch.load(cut / file)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), file


def test_the_generator_step_moves_only_the_generator(tmp_path, teacher_file):
    """One engine step: the student moves in its own steps, the generator only in its step (two optimisers)."""
    from distillab.objective import build_objective
    from distillab.plan import check_plan
    from distillab.runner import build_data, build_models
    from distillab.store import TeacherStore

    cfg = _cfg(tmp_path, teacher_file, "method.params.dfad.student_steps=1")
    plan = check_plan(cfg)
    data = build_data(cfg)
    trainer = Trainer(cfg, models=build_models(plan, data, TeacherStore(tmp_path)), objective=build_objective(cfg.method),
                      data=data)
    assert set(trainer.own_optimizers) == {"generator"}
    assert isinstance(trainer.own_optimizers["generator"], torch.optim.Adam)
    assert all(id(p) not in {id(q) for g in trainer.optimizer.param_groups for q in g["params"]}
               for p in trainer.models["generator"].module.parameters())  # the generator is not in the SGD groups
    before = {n: [p.detach().clone() for p in trainer.models[n].module.parameters()] for n in ("student", "generator")}
    trainer.train_epoch(1)
    for n in ("student", "generator"):
        assert any(not torch.equal(a, b) for a, b in zip(before[n], trainer.models[n].module.parameters())), n
