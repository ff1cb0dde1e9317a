"""The validation part held out of the training set (``data.val_fraction``): how it is drawn, that runs log it,
and that selection reads it and never the test set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distillab.config import ConfigError, load_config
from distillab.data import build_dataset
from distillab.data.base import ArrayDataset
from distillab.data.validation import IndexedSubset, split_indices, split_validation
from distillab.engine.trainer import Trainer
from distillab.plots import read_metrics
from distillab.runner import find_config, run
from distillab.store import _material

from conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, *extra, epochs=3):
    return load_config(find_config("configs/mnist1d/student_baseline.yaml"),
                       tiny_overrides(tmp_path / "runs", epochs=epochs) + ["student.arch=cnn1d_small", *extra])


def test_the_split_is_stratified_disjoint_and_fixed_by_its_own_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = split_indices(len(labels), 0.2, seed=3, labels=labels)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))  # disjoint, nothing lost
    assert torch.bincount(labels[val]).tolist() == [10, 6, 4]  # every class at the same share
    again, other = split_indices(len(labels), 0.2, seed=3, labels=labels), split_indices(len(labels), 0.2, 4, labels)
    assert torch.equal(again[1], val) and not torch.equal(other[1], val)


def test_small_classes_keep_a_training_sample_and_an_empty_part_is_refused():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # class 2 has one sample: it stays in training
    train, val = split_indices(6, 0.5, seed=0, labels=labels)
    assert torch.bincount(labels[val], minlength=3).tolist() == [1, 2, 0]
    assert set(labels[train].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="leaves no validation"):
        split_indices(3, 0.1, seed=0, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_indices(10, 1.0, seed=0)


def test_blocks_of_tokens_are_split_without_classes():
    data = build_dataset("stdlib", None, False, max_bytes=20000, block=32)
    held = split_validation(data, 0.25, seed=1)
    assert held.validation == {"fraction": 0.25, "seed": 1, "train": len(held.train), "val": len(held.val),
                               "stratified": False}
    assert len(held.val) == round(0.25 * len(data.train)) and len(held.train) + len(held.val) == len(data.train)
    rows = {tuple(r.tolist()) for r in held.val.inputs}
    assert not rows & {tuple(r.tolist()) for r in held.train.inputs}
    assert held.test is data.test


def test_a_lazy_data_set_is_renumbered():
    base = ArrayDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2)

    class Lazy(torch.utils.data.Dataset):  # not held as tensors: items are read one by one
        def __len__(self):
            return len(base)

        def __getitem__(self, i):
            return base[i]

    part = IndexedSubset(Lazy(), torch.tensor([7, 2]))
    assert [(float(x), int(y), i) for x, y, i in (part[0], part[1])] == [(7.0, 1, 0), (2.0, 0, 1)]


def test_a_run_logs_validation_and_records_the_split(tmp_path):
    summary, folder = run(_cfg(tmp_path, "data.val_fraction=0.2", "name=val"))
    rows = read_metrics(folder / "metrics.csv")
    assert all("val/top1" in r and "val/loss" in r and "test/top1" in r for r in rows)
    split = summary["validation"]  # 300 samples: 240 for training, of which a fifth per class is held out
    assert (split["fraction"], split["seed"], split["stratified"]) == (0.2, 0, True)
    assert split["train"] + split["val"] == 240 and abs(split["val"] - 48) <= 5
    assert summary["selected_by"] == "validation" and summary["val_top1"] == rows[-1]["val/top1"]
    plain, plain_folder = run(_cfg(tmp_path, "name=plain"))
    assert plain["selected_by"] == "test" and "val/top1" not in read_metrics(plain_folder / "metrics.csv")[0]


def test_the_best_epoch_is_chosen_on_validation_never_on_test(tmp_path, monkeypatch):
    """Scripted scores: the test set peaks at epoch 1, validation at epoch 2. With a validation part the
    selected epoch is 2 (and its reported top-1 the test score of epoch 2); without one, the old behaviour."""
    test_scores, val_scores = iter([90.0, 50.0, 40.0]), iter([10.0, 70.0, 60.0])

    def scripted(self, models=None, split="test"):
        value = next(val_scores if split == "val" else test_scores)
        return {f"{split}/top1": value, f"{split}/loss": 1.0}

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    summary, _ = run(_cfg(tmp_path, "data.val_fraction=0.2", "name=scripted"))
    assert (summary["best_epoch"], summary["best_top1"], summary["best_val_top1"]) == (2, 50.0, 70.0)
    test_scores = iter([90.0, 50.0, 40.0])
    summary, _ = run(_cfg(tmp_path, "name=no_val"))
    assert (summary["best_epoch"], summary["best_top1"], summary["selected_by"]) == (1, 90.0, "test")


def test_an_impossible_fraction_is_a_config_error_and_defaults_leave_teacher_keys_alone(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(find_config("configs/mnist1d/student_baseline.yaml"), ["data.val_fraction=1.5"])
    cfg = load_config(find_config("configs/mnist1d/teacher_cnn1d.yaml"))
    assert "val_fraction" not in _material(cfg)["data"] and "val_seed" not in _material(cfg)["data"]
    held = load_config(find_config("configs/mnist1d/teacher_cnn1d.yaml"), ["data.val_fraction=0.1"])
    assert _material(held)["data"]["val_fraction"] == 0.1


def test_the_crd_protocol_configs_keep_no_validation_part():
    """The CIFAR-100 configs reproduce the published protocol: train on all 50,000 images, report the last
    epoch."""
    configs = sorted((ROOT / "configs" / "cifar100").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("_") or "steps" in yaml.safe_load(path.read_text()):  # a pipeline's own steps
            continue
        assert load_config(path).data.val_fraction is None, path.name
