"""The teacher store: what each entry records, what a miss says, listing, no silent overwrite, the demo's store."""

from __future__ import annotations

import io
import json
import shlex

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import distillab
from distillab.cli import _print_teachers, app
from distillab.config import ConfigError, load_config
from distillab.demo import TINY, demo_store
from distillab.runner import find_config, run
from distillab.store import Difference, TeacherStore

from conftest import tiny_overrides

TEACHER = "configs/mnist1d/teacher_cnn1d.yaml"
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def train_teacher(*overrides) -> None:
    code, out = invoke("train-teacher", TEACHER, *overrides)
    assert code == 0 and "stored teacher" in out, out


def test_entry_records_where_it_came_from(tmp_path):
    over = tiny_overrides(tmp_path / "runs")
    train_teacher(*over)
    [entry] = TeacherStore().entries()
    cfg = load_config(find_config(TEACHER), over)
    assert entry.error is None and entry.recorded and entry.folder == TeacherStore().folder(cfg)
    record = json.loads((entry.folder / "record.json").read_text())
    summary = json.loads((entry.folder / "summary.json").read_text())
    assert {k: record[k] for k in ("config", "overrides", "key", "data", "data_options", "arch", "options")} == {
        "config": TEACHER, "overrides": over, "key": entry.key, "data": "mnist1d",
        "data_options": {"num_samples": 300}, "arch": "cnn1d", "options": {"width": 32}}
    assert record["test_top1"] == summary["test_top1"]
    assert record["run"] == str(tmp_path / "runs" / "ce-cnn1d-mnist1d-s0") == summary["run"]
    assert record["trained_at"].endswith("+00:00") and record["trained_at"][:4].isdigit()
    assert record["versions"] == {"distillab": distillab.__version__, "torch": torch.__version__}
    assert sorted(p.name for p in entry.folder.iterdir()) == ["config.yaml", "model.pt", "record.json", "summary.json"]


def test_a_miss_by_overrides_names_the_stored_teachers_and_how_to_use_one(tmp_path):
    trained = tiny_overrides(tmp_path / "runs", epochs=1)
    train_teacher(*trained)
    train_teacher(*trained, "seed=1")
    store = TeacherStore()
    one = store.get(load_config(find_config(TEACHER), trained))
    seed1 = store.get(load_config(find_config(TEACHER), [*trained, "seed=1"]))

    asked = tiny_overrides(tmp_path / "runs", epochs=2)
    tcfg = load_config(find_config(TEACHER), asked)
    found = store.candidates(tcfg, TEACHER)
    assert [c.entry.key for c in found] == [one.key, seed1.key]  # the closest first
    assert found[0].differences == [Difference("train.epochs", 1, 2)]
    assert found[1].differences == [Difference("train.epochs", 1, 2), Difference("seed", 1, 0)]
    assert store.candidates(tcfg, "configs/mnist1d/teacher_other.yaml") == []  # recorded from another file

    cfg = load_config(find_config("configs/mnist1d/kd.yaml"), [*trained, f"teacher.overrides={json.dumps(asked)}"])
    with pytest.raises(ConfigError) as err:
        run(cfg)
    selecting = ["train.epochs=1", "data.options.num_samples=300"]  # the asked keyed overrides, epochs as stored
    assert str(err.value) == "\n".join([
        f"no teacher trained with {TEACHER} + {' '.join(asked)} in the store {tmp_path / 'home' / 'teachers'}",
        "stored cnn1d teachers on mnist1d differ in:",
        f"  {one.key}: train.epochs: 1 (asked 2)",
        f"  {seed1.key}: train.epochs: 1 (asked 2), seed: 1 (asked 0)",
        f"to use {one.key} add {shlex.quote('teacher.overrides=' + json.dumps(selecting))} or "
        f"teacher.checkpoint={one.path}; or train it: `distillab train-teacher {TEACHER} {' '.join(asked)}`",
    ])
    assert store.find(load_config(find_config(TEACHER), selecting)) == one.path  # they do select it
    assert not (tmp_path / "runs" / "kd-cnn1d_small-mnist1d-s0").exists()  # refused before any folder


def test_list_teachers_shows_how_each_was_trained_and_survives_a_truncated_entry(tmp_path):
    over = tiny_overrides(tmp_path / "runs")
    train_teacher(*over)
    train_teacher(*over, "seed=1")
    store = TeacherStore()
    cfg = load_config(find_config(TEACHER), over)
    old, bad = store.get(cfg), store.get(load_config(find_config(TEACHER), [*over, "seed=1"]))
    (old.folder / "record.json").unlink()  # stored before record.json existed: still listed and found
    text = (bad.folder / "summary.json").read_text()
    (bad.folder / "summary.json").write_text(text[: len(text) // 2])  # truncated
    (bad.folder / "record.json").unlink()

    assert store.find(cfg) == old.path and not store.get(cfg).recorded
    code, out = invoke("list", "teachers")
    assert code == 0 and "Traceback" not in out, out
    lines = out.splitlines()
    assert f"{old.key}  {old.path}  (config file not recorded)" in lines  # the full path, never cut
    assert any(line.startswith(f"{bad.key}  unreadable: {bad.folder / 'summary.json'} is not valid JSON")
               for line in lines), out

    train_teacher(*over, "seed=2")
    new = store.get(load_config(find_config(TEACHER), [*over, "seed=2"]))
    wide = Console(width=160, file=io.StringIO())  # a terminal wide enough for every cell on one line
    _print_teachers(store, wide)
    rows = {line.split("│")[-2].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in wide.file.getvalue().splitlines() if line.startswith("│")}
    assert set(rows) == {old.key, new.key}  # the unreadable entry is listed below the table, not in it
    assert rows[old.key][:4] == ["mnist1d (num_samples=300)", "cnn1d", "width=32", "?"]  # overrides unknown
    assert rows[new.key][:4] == ["mnist1d (num_samples=300)", "cnn1d", "width=32",
                                 "train.epochs=1 data.options.num_samples=300 seed=2"]  # keyed overrides only
    assert rows[new.key][4] == new.record["trained_at"][:10] and rows[new.key][5] == f"{new.record['test_top1']:.2f}"
    assert f"{new.key}  {new.path}  ({TEACHER})" in wide.file.getvalue().splitlines()


def test_train_teacher_refuses_a_stored_config_before_training_and_replace_keeps_the_old(tmp_path):
    over = tiny_overrides(tmp_path / "runs")
    train_teacher(*over)
    runs = sorted((tmp_path / "runs").iterdir())
    entry = TeacherStore().get(load_config(find_config(TEACHER), over))
    old_record = json.loads((entry.folder / "record.json").read_text())

    code, out = invoke("train-teacher", TEACHER, *over)
    assert code == 2 and "already holds this config" in out and "--replace" in out and "--no-store" in out, out
    assert str(entry.path) in out.replace("\n", "")
    assert sorted((tmp_path / "runs").iterdir()) == runs  # refused before a run folder was made

    code, out = invoke("train-teacher", TEACHER, *over, "--replace")
    assert code == 0 and "the one it replaces" in out, out
    [aside] = entry.folder.glob("replaced-*")
    assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "model.pt", "record.json", "summary.json"]
    assert json.loads((aside / "record.json").read_text()) == old_record
    new_record = json.loads((entry.folder / "record.json").read_text())
    assert new_record["run"] != old_record["run"] and entry.path.is_file()
    assert [e.key for e in TeacherStore().entries()] == [entry.key]  # the set-aside copy is not an entry


def test_store_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "teachers").write_text("")
    code, out = invoke("list", "teachers")
    assert code == 2 and "teachers is a file" in out and "store=" in out and "Traceback" not in out, out


def test_tiny_demo_keeps_its_teacher_out_of_the_global_store(tmp_path):
    code, out = invoke("demo", "--tiny", "--out", tmp_path / "out", "train.progress=false", "train.tensorboard=false")
    assert code == 0, out
    assert not list((tmp_path / "home").glob("teachers/*/*/*/model.pt"))
    assert len(TeacherStore(tmp_path / "out" / "demo-teachers").entries()) == 1
    # the full demo (settings that do not change the teacher) keeps the global store
    assert demo_store(tmp_path / "out", ["train.progress=false", "train.device=cpu"])[0] is None
    assert demo_store(tmp_path / "out", TINY)[0] == str(tmp_path / "out" / "demo-teachers")
