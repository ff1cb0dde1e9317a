"""The speed options of the engine: the teacher-output cache, fixed augmentation variants, torch.compile."""

from __future__ import annotations

import pytest
import torch

from distillab.config import load_config
from distillab.engine.frozen import FrozenModels
from distillab.models import create_model
from distillab.plots import read_metrics
from distillab.runner import run


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(0)
    model = create_model("cnn1d", num_classes=10, width=8)
    path = tmp_path / "teacher.pt"
    torch.save({"model": model.state_dict(), "arch": "cnn1d", "options": {"width": 8}}, path)
    return path


def _cfg(tmp_path, teacher, *overrides, method="kd", epochs=3):
    base = {
        "seed": 0, "out_dir": str(tmp_path / "runs"),
        "data": {"name": "mnist1d", "options": {"num_samples": 400}},
        "student": {"arch": "cnn1d_small", "options": {"width": 4}},
        "teacher": {"arch": "cnn1d", "options": {"width": 8}, "checkpoint": str(teacher)},
        "method": {"name": method},
        "optim": {"name": "sgd", "lr": 0.05, "schedule": "constant"},
        "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "progress": False, "tensorboard": False},
    }
    return load_config(None, list(overrides), base=base)


def _count_teacher_rows(monkeypatch) -> list[int]:
    """Patch Trainer so every teacher forward in training records its batch size."""
    rows: list[int] = []
    original = FrozenModels.outputs

    def counting(self, fields, idx, keys, taps):
        handle = self.models[0].module.register_forward_hook(lambda _m, inp, _o: rows.append(len(inp[0])))
        try:
            return original(self, fields, idx, keys, taps)
        finally:
            handle.remove()

    monkeypatch.setattr(FrozenModels, "outputs", counting)
    return rows


def test_teacher_cache_gives_the_same_run_with_fewer_teacher_rows(tmp_path, teacher_ckpt, monkeypatch):
    plain, plain_dir = run(_cfg(tmp_path, teacher_ckpt, "name=plain"))
    rows = _count_teacher_rows(monkeypatch)
    cached, cached_dir = run(_cfg(tmp_path, teacher_ckpt, "name=cached", "train.teacher_cache=true"))
    a, b = torch.load(plain_dir / "model.pt")["model"], torch.load(cached_dir / "model.pt")["model"]
    for key in a:  # the cached logits are the teacher's own (float32): only kernel batch shapes differ
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    hit = [r["teacher_cache/hit_rate"] for r in read_metrics(cached_dir / "metrics.csv")]
    assert hit[0] == 0.0  # every sample is new in epoch 1
    assert 0.0 < hit[1] <= hit[2] < 1.0  # 5 possible shifts per sample: repeats become more frequent
    seen = 320 * 3  # 320 training samples, 3 epochs
    assert sum(rows) == round(seen * (1 - sum(hit) / 3))  # the teacher ran on the misses only


def test_augment_variants_make_every_later_epoch_a_cache_hit(tmp_path, teacher_ckpt):
    _, folder = run(_cfg(tmp_path, teacher_ckpt, "train.teacher_cache=true", "data.augment_variants=2"))
    hit = [r["teacher_cache/hit_rate"] for r in read_metrics(folder / "metrics.csv")]
    assert hit[0] < 0.5 and hit[2] > hit[1] > 0.0
    _, folder = run(_cfg(tmp_path, teacher_ckpt, "name=one", "train.teacher_cache=true",
                         "data.augment_variants=1"))
    hit = [r["teacher_cache/hit_rate"] for r in read_metrics(folder / "metrics.csv")]
    assert hit == [0.0, 1.0, 1.0]  # one fixed augmentation per sample: the teacher runs in epoch 1 only


def test_teacher_cache_refuses_feature_map_methods(tmp_path, teacher_ckpt):
    with pytest.raises(ValueError, match="feature maps"):
        run(_cfg(tmp_path, teacher_ckpt, "train.teacher_cache=true", "student.arch=cnn1d", method="fitnet"))


def test_teacher_cache_too_large_names_the_fix(tmp_path, teacher_ckpt):
    with pytest.raises(ValueError, match="augment_variants"):
        run(_cfg(tmp_path, teacher_ckpt, "train.teacher_cache=true", "train.teacher_cache_max_gb=0.00001"))


@pytest.mark.slow
def test_compiled_run_matches_eager(tmp_path, teacher_ckpt):
    """train.compile=true (inductor on CPU, tens of seconds to compile) trains to the same weights."""
    _, eager_dir = run(_cfg(tmp_path, teacher_ckpt, "name=eager", epochs=1))
    _, comp_dir = run(_cfg(tmp_path, teacher_ckpt, "name=compiled", "train.compile=true", epochs=1))
    a, b = torch.load(eager_dir / "model.pt")["model"], torch.load(comp_dir / "model.pt")["model"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), key
