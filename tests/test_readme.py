"""The README's code examples run, and a method, model and data set written as it shows train end to end."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from distillab.config import load_config
from distillab.runner import run

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_register_and_train(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    cfg = load_config(None, [
        "data.name=my_data", "student.arch=my_net", "teacher.arch=my_net", "method.name=emb_mse",
        f"teacher.checkpoint={_teacher(tmp_path)}", f"out_dir={tmp_path}", "train.epochs=2",
        "train.batch_size=100", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
        "optim.schedule=constant",
    ])
    summary, run_dir = run(cfg)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/emb_mse" in header and "train/ce" in header
    assert summary["epochs"] == 2


def _teacher(tmp_path) -> Path:
    from distillab.models import create_model

    path = tmp_path / "teacher.pt"
    torch.save({"model": create_model("my_net", num_classes=10).state_dict()}, path)
    return path
