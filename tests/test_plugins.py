"""Your own code from the command line: the README's model, data set and method, imported with --import (or
found as an installed package's distillab.plugins entry point), train a teacher and distill end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

README = Path(__file__).resolve().parents[1] / "README.md"


def cli(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "distillab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def write_plugin(folder: Path) -> None:
    """The README's python blocks, as they are, in one module."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (folder / "my_plugin.py").write_text("\n\n".join(blocks))


def test_readme_snippets_through_the_cli(tmp_path):
    write_plugin(tmp_path)
    common = {"data": {"name": "my_data"}, "optim": {"schedule": "constant"},
              "train": {"epochs": 2, "batch_size": 100, "progress": False, "tensorboard": False, "device": "cpu"},
              "out_dir": str(tmp_path / "runs")}
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump({**common, "model": {"arch": "my_net"}, "name": "teacher"}))
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({
        **common, "student": {"arch": "my_net"}, "teacher": {"config": str(tmp_path / "teacher.yaml")},
        "method": {"name": "emb_mse"}, "name": "student"}))
    done = cli("--import", "my_plugin", "train-teacher", "teacher.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    done = cli("--import", "my_plugin", "distill", "student.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())
    assert summary["method"] == "emb_mse" and summary["epochs"] == 2
    assert "train/emb_mse" in (tmp_path / "runs" / "student" / "metrics.csv").read_text().splitlines()[0]
    # the environment variable does what --import does
    done = cli("list", "models", cwd=tmp_path, env_extra={"DISTILLAB_IMPORT": "my_plugin"})
    assert done.returncode == 0 and "my_net" in done.stdout


def test_installed_plugin_entry_point(tmp_path):
    """A package that declares a `distillab.plugins` entry point is imported by every command."""
    write_plugin(tmp_path)
    info = tmp_path / "my_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[distillab.plugins]\nmine = my_plugin\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    done = cli("list", "methods", cwd=other, env_extra={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0 and "emb_mse" in done.stdout, done.stdout + done.stderr


def test_unknown_import_is_one_line(tmp_path):
    done = cli("--import", "no_such_module", "list", "models", cwd=tmp_path)
    out = " ".join(done.stdout.split())
    assert done.returncode == 2 and "--import no_such_module: no module 'no_such_module'" in out
    assert "Traceback" not in done.stdout + done.stderr


def test_version_and_quick_help(tmp_path):
    done = cli("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("distillab ")
    done = subprocess.run([sys.executable, "-c", "import sys, distillab.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"  # --help does not pay for importing torch
