"""Shared fixtures: every test gets its own data cache, teacher store and run folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILLAB_DATA", str(tmp_path / "data"))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return tmp_path


def tiny_overrides(out_dir, epochs: int = 1, samples: int = 300) -> list[str]:
    """A seconds-long MNIST-1D run: few samples, no progress bar, no TensorBoard."""
    return [f"out_dir={out_dir}", f"train.epochs={epochs}", f"data.options.num_samples={samples}",
            "train.progress=false", "train.tensorboard=false", "train.device=cpu"]


@pytest.fixture
def teacher_file(tmp_path) -> Path:
    """An untrained narrow cnn1d as a model file (width 8): for tests of what runs do, not of what they learn."""
    from distillab.models import create_model

    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save({"model": create_model("cnn1d", num_classes=10, width=8).state_dict(), "arch": "cnn1d",
                "options": {"width": 8}}, path)
    return path
