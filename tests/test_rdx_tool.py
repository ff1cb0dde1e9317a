"""RDX as a tool: cluster relabelling, representative samples, figures, and `distillab rdx` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from distillab.models import create_model
from distillab.rdx.affinity import rdx_affinities
from distillab.rdx.explain import (FigureData, explain_direction, order_clusters_by_affinity, pca_2d,
                                   representative_neighbourhood, save_direction_figure, spectral_clusters)
from distillab.cli_tools import rdx_command
from distillab.rdx.tool import embed, parse_classes, run_rdx


def block_affinity(sizes, within, between=0.05, seed=0):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    aff = np.full((n, n), between)
    start = 0
    for size, value in zip(sizes, within):
        aff[start:start + size, start:start + size] = value
        start += size
    return aff * rng.uniform(0.95, 1.05, size=(n, n))  # asymmetric noise, as RDX affinities are


def test_order_clusters_by_affinity_puts_lowest_mean_first():
    labels = np.array([7, 7, 3, 3, 3, 5, 5])
    aff = block_affinity([2, 3, 2], within=[4.0, 0.5, 2.0], between=0.1)
    new, means = order_clusters_by_affinity(labels, aff)
    assert new.tolist() == [2, 2, 0, 0, 0, 1, 1]
    assert np.all(np.diff(means) > 0)
    assert means[0] == pytest.approx(aff[2:5, 2:5].mean())


def test_spectral_clusters_on_block_affinity():
    sizes, within = [12, 10, 8], [3.0, 1.5, 6.0]
    aff = block_affinity(sizes, within)
    labels, means = spectral_clusters(aff, k=2, seed=0)
    blocks = np.repeat([0, 1, 2], sizes)
    # block 1 (affinity 1.5) is the null cluster 0, block 0 (3.0) cluster 1, block 2 (6.0) cluster 2
    assert labels.tolist() == np.array([1, 0, 2])[blocks].tolist()
    assert means == pytest.approx([1.5, 3.0, 6.0], rel=0.1)


def test_representative_neighbourhood_hand_checked():
    # members 1, 2, 4, 5, 6 lie at 0, 1, 2, 3, 4 on a line; samples 0 and 3 are not in the cluster
    position = np.array([50.0, 0.0, 1.0, -50.0, 2.0, 3.0, 4.0])[:, None]
    members = np.array([1, 2, 4, 5, 6])
    aff = np.ones((7, 7))
    aff[5, 6] = aff[6, 5] = 10.0  # the members at 3 and 4 share the most structure
    aff[0, 3] = aff[3, 0] = 1e6  # non-members never count
    # neighbourhoods of 3 by size: {0,1,2}, {1,0,2}, {2,1,3}, {3,2,4}, {4,3,2}; the last two hold the pair
    # (3, 4); the first of them wins: anchor at 3 (sample 5), then 2 and 4 (tie, lower index first)
    assert representative_neighbourhood(aff, position, members, size=3).tolist() == [5, 4, 6]
    assert representative_neighbourhood(aff, position, members, size=9).tolist() == [1, 2, 4, 5, 6]
    assert representative_neighbourhood(aff, position, np.array([3]), size=9).tolist() == [3]


def test_student_unique_direction_finds_what_the_student_merges():
    """Expert: three separate blobs. Student: blobs 0 and 1 merged. Student-unique clusters must mix 0 and 1."""
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1, 2], 30)
    centres_expert = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    centres_student = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
    noise = rng.normal(size=(90, 2))
    x_e = torch.tensor(centres_expert[classes] + noise)
    x_s = torch.tensor(centres_student[classes] + noise[::-1].copy())
    a01, a10 = rdx_affinities(x_e, x_s, gamma=0.1, beta=5.0, mode="local")
    expl = explain_direction(a10.double().numpy(), x_s.numpy(), k=1, direction="10")
    merged = classes[expl.labels == 1]
    assert set(merged.tolist()) == {0, 1}


def _random_inputs(kind: str, n: int):
    torch.manual_seed(0)
    if kind == "image":
        return create_model("cnn_digits", num_classes=3, width=2), create_model("cnn_digits", num_classes=3, width=4), \
            torch.rand(n, 1, 8, 8)
    return create_model("cnn1d_small", num_classes=3, width=4), create_model("cnn1d", num_classes=3, width=4), \
        torch.randn(n, 1, 40)


@pytest.mark.parametrize("kind, null_threshold", [("image", float("inf")), ("signal", 0.0)])
def test_direction_figure_is_written(tmp_path, kind, null_threshold):
    expert, student, x = _random_inputs(kind, 60)
    emb = [embed(m, x, lambda batch: batch, torch.device("cpu"), role) for m, role in ((expert, "a"), (student, "b"))]
    a01, a10 = rdx_affinities(emb[0], emb[1], gamma=0.1, beta=5.0, mode="local")
    expl = explain_direction(a10.double().numpy(), emb[1].double().numpy(), k=2, direction="10",
                             null_threshold=null_threshold)
    assert expl.num_clusters == 3 and set(expl.representatives) == {0, 1, 2}
    assert expl.shown == ([1, 2] if null_threshold == float("inf") else [0, 1, 2])  # grids: all but a null cluster
    data = FigureData(pcs=(pca_2d(emb[0].numpy()), pca_2d(emb[1].numpy())), samples=x.numpy(), kind=kind,
                      classes=np.arange(60) % 3, class_names=["a", "b", "c"])
    path = save_direction_figure(tmp_path / f"{kind}.png", expl, a10.double().numpy(), data)
    assert path.stat().st_size > 0


def _save_run_checkpoint(path, arch, width, data="digits", data_options=None, num_classes=3):
    model = create_model(arch, num_classes=num_classes, width=width)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "arch": arch, "options": {"width": width}, "num_classes": num_classes,
                "data": data, "config": {"data": {"name": data, "options": data_options or {}}}}, path)
    return path


def _cli():
    app = typer.Typer()
    app.command("rdx")(rdx_command)
    app.command("other")(lambda: None)  # a second command keeps "rdx" a subcommand, as in distillab's CLI
    return app


def test_rdx_command_end_to_end_never_overwrites(tmp_path):
    torch.manual_seed(0)
    expert = _save_run_checkpoint(tmp_path / "runs" / "expert" / "model.pt", "cnn_digits", 8,
                                  data_options={"classes": [3, 5, 8]})
    student = _save_run_checkpoint(tmp_path / "runs" / "student" / "model.pt", "cnn_digits", 2,
                                   data_options={"classes": [3, 5, 8]})
    out = tmp_path / "rdx"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    result = CliRunner().invoke(_cli(), ["rdx", str(expert.parent), str(student), "--n", "60", "--k", "2",
                                         "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "keep.txt").read_text() == "earlier result" and not (out / "rdx.json").exists()
    folder = tmp_path / "rdx-2"
    for name in ("rdx_10_student_unique.png", "rdx_01_expert_unique.png", "rdx_overview.png"):
        assert (folder / name).stat().st_size > 0
    summary = json.loads((folder / "rdx.json").read_text())
    assert summary["data"]["n"] == 60 and summary["data"]["options"] == {"classes": [3, 5, 8]}
    assert summary["data"]["class_names"] == ["3", "5", "8"]
    assert summary["model_a"]["arch"] == "cnn_digits" and summary["model_a"]["options"] == {"width": 8}
    for key in ("10", "01"):
        rec = summary["directions"][key]
        labels = np.array(rec["cluster_labels"])
        assert len(labels) == 60 and set(labels.tolist()) == {0, 1, 2}
        clusters = rec["clusters"]
        assert [c["mean_affinity"] for c in clusters] == sorted(c["mean_affinity"] for c in clusters)
        for c in clusters:
            assert c["null"] == (c["cluster"] == 0 and c["mean_affinity"] < summary["rdx"]["null_threshold"])
            assert sum(c["counts"].values()) == c["size"] == int((labels == c["cluster"]).sum())
            assert sum(c["fractions"].values()) == pytest.approx(1.0, abs=1e-3)
            reps = c["representatives"]
            assert len(reps) == min(9, c["size"]) and all(labels[i] == c["cluster"] for i in reps)
            assert c["representatives_data_index"] == [summary["data"]["indices"][i] for i in reps]
    assert "RDX(student, expert)" in result.output and "cluster 1" in result.output


def test_rdx_on_signals_with_gamma_auto(tmp_path):
    expert = _save_run_checkpoint(tmp_path / "e.pt", "cnn1d", 4, data="mnist1d", num_classes=10,
                                  data_options={"num_samples": 200})
    student = _save_run_checkpoint(tmp_path / "s.pt", "cnn1d_small", 4, data="mnist1d", num_classes=10)
    folder = run_rdx(expert, student, split="test", n=500, k=2, gamma="auto", out=tmp_path / "out", device="cpu")
    summary = json.loads((folder / "rdx.json").read_text())
    assert folder == tmp_path / "out"
    assert summary["data"]["n"] == 40 and summary["data"]["n_requested"] == 500  # the whole 40-sample test split
    assert summary["rdx"]["gamma"] == pytest.approx(80 / 40)
    assert (folder / "rdx_overview.png").stat().st_size > 0


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_rdx(tmp_path / "missing.pt", tmp_path / "missing.pt")
    result = CliRunner().invoke(_cli(), ["rdx", str(tmp_path / "nope" / "model.pt"), str(tmp_path / "b.pt")])
    flat = " ".join(result.output.split())  # the console wraps long paths at 80 columns
    assert result.exit_code == 2 and "does not exist" in flat and "Traceback" not in result.output
    ckpt = _save_run_checkpoint(tmp_path / "a.pt", "cnn_digits", 2)
    with pytest.raises(ValueError, match="comma list"):
        parse_classes("3;5")
    with pytest.raises(ValueError, match="'auto'"):
        run_rdx(ckpt, ckpt, gamma="big")
    with pytest.raises(ValueError, match="data set 'digits': classes must be at least two distinct digits"):
        run_rdx(ckpt, ckpt, classes=[42, 43])  # digits keeps the classes itself and checks them


def test_classes_on_a_data_set_without_a_classes_option(tmp_path):
    """MNIST-1D has no `classes` option: the samples of those labels are drawn from the whole split."""
    ckpt = _save_run_checkpoint(tmp_path / "m.pt", "cnn1d_small", 4, data="mnist1d",
                                data_options={"num_samples": 300}, num_classes=10)
    folder = run_rdx(ckpt, ckpt, classes=[1, 2], n=40, k=1, out=tmp_path / "out")
    summary = json.loads((folder / "rdx.json").read_text())
    assert summary["data"]["n"] == 40 and set(summary["data"]["labels"]) == {1, 2}


def test_digits_figure_script_quick(tmp_path):
    """benchmarks/rdx_digits_figure.py end to end in its seconds-long mode (1 epoch each, N = 60)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rdx_digits_figure.py"
    spec = importlib.util.spec_from_file_location("rdx_digits_figure", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.main(["--quick", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    assert (tmp_path / "rdx_digits_358.png").stat().st_size > 0
    assert json.loads((tmp_path / "rdx_digits_358.json").read_text())["data"]["n"] == result["data"]["n"] == 60
    assert [c["cluster"] for c in result["clusters"]["10"]["clusters"]] == [0, 1, 2]
