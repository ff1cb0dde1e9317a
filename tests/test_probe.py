"""`distillab probe`: linear transfer probe of a frozen embedding on another data set."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from distillab.config import load_config
from distillab.models import create_model
from distillab.cli_tools import probe_command
from distillab.probe import parse_options, run_probe
from distillab.runner import run

from conftest import tiny_overrides


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and a shared CPU cannot slow it down by oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def keep_one_thread(isolated_home):
    torch.set_num_threads(1)  # after conftest's per-test setting


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory, one_thread):
    """A cnn1d trained for 10 epochs on 1000 MNIST-1D samples (generator seed 42): a few seconds."""
    tmp = tmp_path_factory.mktemp("mnist1d_run")
    cfg = load_config(None, tiny_overrides(tmp / "runs", epochs=10, samples=1000) + [
        f"data.root={tmp / 'data'}", "student.arch=cnn1d", "student.options.width=16", "method.name=ce",
        "name=trained"])
    summary, run_dir = run(cfg, progress=False)
    return run_dir, summary


def _save_checkpoint(path, arch, options, num_classes, data):
    model = create_model(arch, num_classes=num_classes, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "arch": arch, "options": options, "num_classes": num_classes,
                "data": data, "config": {"data": {"name": data, "options": {}}}}, path)
    return path


def _cli():
    app = typer.Typer()
    app.command("probe")(probe_command)
    app.command("other")(lambda: None)  # a second command keeps "probe" a subcommand, as in distillab's CLI
    return app


def _text(result) -> str:
    return " ".join(result.output.split())  # the console wraps long lines


TARGET = {"seed": 7, "num_samples": 600}  # MNIST-1D drawn by another generator seed: 480 train / 120 test


def test_trained_embedding_transfers_better_than_random(mnist1d_run, tmp_path):
    run_dir, _ = mnist1d_run
    trained = run_probe(run_dir / "model.pt", "mnist1d", data_options=TARGET, out=tmp_path / "trained",
                        device="cpu", report=None)
    torch.manual_seed(0)
    random_ckpt = _save_checkpoint(tmp_path / "random.pt", "cnn1d", {"width": 16}, 10, "mnist1d")
    random = run_probe(random_ckpt, "mnist1d", data_options=TARGET, out=tmp_path / "random", device="cpu",
                       report=None)
    assert trained["chance_top1"] == pytest.approx(10.0)
    assert trained["data"]["n_train"] == 480 and trained["data"]["n_test"] == 120
    assert trained["features"]["dim"] == create_model("cnn1d", num_classes=10, width=16).embedding_dim
    assert trained["features"]["tap"] == "fc:input"
    assert trained["test_top1"] > 4 * trained["chance_top1"]
    assert 0.0 <= random["test_top1"] < trained["test_top1"]
    assert set(trained["seconds"]) == {"load", "embed", "probe"}
    assert json.loads((tmp_path / "trained" / "probe.json").read_text()) == trained
    # same seed, same features: the same probe
    again = run_probe(run_dir, "mnist1d", data_options=TARGET, out=tmp_path / "again", device="cpu", report=None)
    assert again["test_top1"] == trained["test_top1"] and again["train_top1"] == trained["train_top1"]


def test_digits_embedding_probed_on_held_out_digits(tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path / 'runs'}", "train.epochs=3", "train.progress=false",
                             "train.tensorboard=false", "train.device=cpu", "data.name=digits",
                             "data.options.classes=[0, 1, 2, 4, 6, 7, 9]", "student.arch=cnn_digits",
                             "student.options.width=8", "method.name=ce", "name=digits"])
    _, run_dir = run(cfg, progress=False)
    result = run_probe(run_dir, "digits", data_options={"classes": [3, 5, 8]}, out=tmp_path / "probe",
                       epochs=50, device="cpu", report=None)
    assert result["data"]["num_classes"] == 3 and result["data"]["class_names"] == ["3", "5", "8"]
    assert result["data"]["n_train"] + result["data"]["n_test"] == 183 + 182 + 174  # the 3s, 5s and 8s
    assert result["chance_top1"] == pytest.approx(100 / 3, abs=1e-3)
    assert result["test_top1"] > 2 * result["chance_top1"]
    assert result["model"]["data_options"] == {"classes": [0, 1, 2, 4, 6, 7, 9]}


def test_shape_mismatch_is_a_clear_error(tmp_path):
    signal = _save_checkpoint(tmp_path / "signal.pt", "cnn1d", {"width": 4}, 10, "mnist1d")
    with pytest.raises(ValueError, match=r"\(1, 40\) but data set 'digits' gives \(1, 8, 8\): use a target data "
                                         r"set with the same input shape$"):
        run_probe(signal, "digits", out=tmp_path / "p", device="cpu", report=None)
    assert not (tmp_path / "p").exists()

    rgb = _save_checkpoint(tmp_path / "rgb.pt", "cnn_digits", {"in_channels": 3, "size": 32, "width": 4}, 10,
                           "synthetic")
    small = {"image_size": 16, "n_train": 64, "n_test": 32, "num_classes": 4}
    with pytest.raises(ValueError, match=r"\(3, 32, 32\) but data set 'synthetic' gives \(3, 16, 16\).*--resize"
                                         r".*--option image_size=32"):
        run_probe(rgb, "synthetic", data_options=small, out=tmp_path / "p", device="cpu", report=None)
    notes = []
    resized = run_probe(rgb, "synthetic", data_options=small, resize=True, epochs=2, out=tmp_path / "p",
                        device="cpu", report=notes.append)
    assert resized["data"]["resized_to"] == [32, 32] and resized["features"]["dim"] == 16
    assert notes and "resized" in notes[0]


def test_option_parsing():
    assert parse_options(["classes=[3, 5, 8]", "seed=7", "name=abc"]) == {"classes": [3, 5, 8], "seed": 7,
                                                                          "name": "abc"}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["seed"])


def test_command_end_to_end_never_overwrites(mnist1d_run, tmp_path, monkeypatch):
    run_dir, _ = mnist1d_run
    monkeypatch.chdir(tmp_path)
    args = ["probe", str(run_dir), "--data", "mnist1d", "--option", "seed=7", "--option", "num_samples=600",
            "--epochs", "20", "--device", "cpu"]
    first = CliRunner().invoke(_cli(), args)
    assert first.exit_code == 0, first.output
    assert "test top-1" in _text(first) and "chance 10.00%" in _text(first)
    folder = tmp_path / "runs" / "probe-trained-on-mnist1d"
    summary = json.loads((folder / "probe.json").read_text())
    assert summary["probe"]["epochs"] == 20 and summary["data"]["options"] == {"seed": 7, "num_samples": 600}

    (folder / "keep.txt").write_text("earlier result")
    second = CliRunner().invoke(_cli(), args)
    assert second.exit_code == 0, second.output
    assert (folder / "keep.txt").read_text() == "earlier result"
    assert json.loads((folder / "probe.json").read_text()) == summary
    assert (tmp_path / "runs" / "probe-trained-on-mnist1d-2" / "probe.json").is_file()

    bad = CliRunner().invoke(_cli(), ["probe", str(run_dir), "--data", "digits", "--device", "cpu"])
    assert bad.exit_code == 2 and "same input shape" in _text(bad) and "Traceback" not in bad.output
    missing = CliRunner().invoke(_cli(), ["probe", str(tmp_path / "nope"), "--data", "digits"])
    assert missing.exit_code == 2 and "does not exist" in _text(missing)
