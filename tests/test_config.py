"""Config validation, overrides, extends, objective building errors."""

from __future__ import annotations

import pytest
import yaml

from distillab.config import ConfigError, MethodConfig, load_config, parse_override
from distillab.objective import build_objective
from distillab.runner import find_config


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr': did you mean 'optim.lr'"):
        load_config(None, ["student.arch=cnn1d", "optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*'train.epochs'"):
        load_config(None, ["student.arch=cnn1d", "train.epoch=3"])


def test_wrong_type_and_missing():
    with pytest.raises(ConfigError, match=r"train.epochs"):
        load_config(None, ["student.arch=cnn1d", "train.epochs=many"])
    with pytest.raises(ConfigError, match=r"missing key 'student'"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(None, ["student.arch=cnn1d", "train.batch_size=0"])


def test_overrides_parse_yaml_values():
    assert parse_override("optim.milestones=[1, 2]") == (["optim", "milestones"], [1, 2])
    assert parse_override("seed=3") == (["seed"], 3)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("seed")
    cfg = load_config(None, ["model.arch=cnn1d", "seed=3", "optim.lr=0.01", "data.options.num_samples=500"])
    assert (cfg.seed, cfg.optim.lr, cfg.student.arch, cfg.data.options["num_samples"]) == (3, 0.01, "cnn1d", 500)


def test_extends_merges_and_detects_loops(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.05, momentum: 0.9}\ntrain: {epochs: 240}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nstudent: {arch: resnet8x4}\noptim: {lr: 0.01}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.01, 0.9, 240)
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_objective_errors_name_the_fix():
    with pytest.raises(ConfigError, match="did you mean 'kd'"):
        build_objective(MethodConfig(name="kdd"))
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        build_objective(MethodConfig(name="kd", params={"kd": {"temprature": 2}}))
    with pytest.raises(ConfigError, match="unknown term"):
        build_objective(MethodConfig(name="kd", weights={"zz": 1.0}))


def test_objective_weights_add_and_drop_terms():
    obj = build_objective(MethodConfig(name="ce", weights={"kd": 1.0}))
    assert set(obj.terms) == {"ce", "kd"} and obj.needs_teacher
    obj = build_objective(MethodConfig(name="kd", weights={"kd": 0.0}))
    assert set(obj.terms) == {"ce"} and not obj.needs_teacher
    obj = build_objective(MethodConfig(name="kd"))
    assert obj.weights == {"ce": 0.1, "kd": 0.9} and obj.terms["kd"].temperature == 4.0


@pytest.mark.parametrize("path", ["configs/mnist1d/kd.yaml", "mnist1d/teacher_cnn1d.yaml"])
def test_shipped_configs_found_and_valid(path):
    load_config(find_config(path))


def test_every_shipped_config_validates():
    from distillab.runner import PACKAGED_CONFIGS

    # run configs only: configs/suites/ holds benchmark suites (tests/test_bench.py loads those)
    files = [p for p in PACKAGED_CONFIGS.rglob("*.yaml") if not p.name.startswith("_")
             and p.parent.name != "suites" and not p.name.endswith(".tune.yaml")]
    assert files
    pipelines = [p for p in files if "steps" in (yaml.safe_load(p.read_text()) or {})]
    assert pipelines  # pipelines (a list of steps) are checked by loading them as pipelines
    from distillab.pipeline import load_pipeline

    for p in files:
        if p in pipelines:
            load_pipeline(p)
        else:
            load_config(p)
    # search spaces (<config>.tune.yaml beside their config): each fits its config, checked as `tune` would
    from distillab.tune import check_space, parse_space

    spaces = sorted(PACKAGED_CONFIGS.rglob("*.tune.yaml"))
    assert spaces
    for p in spaces:
        config = p.with_name(p.name.removesuffix(".tune.yaml") + ".yaml")
        check_space(config, [], parse_space(yaml.safe_load(p.read_text()), str(p)))
