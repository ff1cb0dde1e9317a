"""benchmarks/throughput.py on seconds-long settings: each mode runs and writes what it says (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from distillab.losses import LOSSES
from distillab.methods import METHODS

# a pair with a small teacher (resnet56, about a tenth of resnet32x4's compute): kd has a shipped config for it,
# the other methods run from their presets' defaults; the slow test below runs every method on the real pair
QUICK = ["--steps", "1", "--repeats", "2", "--warmup", "1", "--batch", "4", "--images", "64", "--threads", "1",
         "--teacher", "resnet56", "--student", "resnet20"]


@pytest.fixture(autouse=True)
def keep_threads():
    """The script sets torch's thread count for the whole process: give the next test back its own."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_clock_marks_warmup_and_repeats(bench):
    import torch

    clock = bench.StepClock(torch.device("cpu"), warmup=2, steps=3, repeats=2)
    for step in range(1, 9):
        assert not clock.finished
        clock(step, None)
    assert clock.finished and clock.remaining == 0 and len(clock.marks) == 3
    assert len(clock.ms_per_step()) == 2


def test_method_cost_quick(bench, tmp_path):
    out = tmp_path / "cost.json"
    # a memory bank, a data schedule, a pre-training stage, and a method without a teacher (ce)
    report = bench.main(["--methods", "crd,rdd_sampling,fitnet2,ce", *QUICK, "--out", str(out)])
    assert json.loads(out.read_text()) == report
    methods = report["methods"]
    assert list(methods) == ["kd", "crd", "rdd_sampling", "fitnet2", "ce"]  # the reference is measured first
    assert methods["kd"]["relative_to_kd"] == 1.0
    for r in methods.values():
        assert r["steps_run"] == 1 + 1 * 2
        assert len(r["repeats_ms_per_step"]) == 2 and r["ms_per_step"] > 0
    assert methods["kd"]["epoch_start_ms"] is None
    assert methods["rdd_sampling"]["epoch_start_ms"] > 0
    assert methods["rdd_sampling"]["steps_per_epoch"] == 64 // 2 // 4  # keep_fraction 0.5 of 64 images
    assert [s["name"] for s in methods["fitnet2"]["stages_not_timed"]] == ["hint"]
    assert methods["kd"]["config"] == "configs/cifar100/kd_resnet56_resnet20.yaml"
    assert methods["crd"]["config"] is None and not methods["ce"]["needs_teacher"]
    assert report["reference_at_end"]["method"] == "kd"  # more than two methods: the drift check ran
    assert any("nce_k" in w for w in methods["crd"]["warnings"])  # 64 images cannot give 16384 negatives
    assert report["batch"] == 4 and report["versions"]["torch"]


def test_unknown_method_is_named(bench, tmp_path):
    with pytest.raises(SystemExit, match="crdd|crd"):
        bench.main(["--methods", "crdd", *QUICK, "--out", str(tmp_path / "x.json")])


def test_overhead_mode_quick(bench, tmp_path):
    out = tmp_path / "overhead.json"
    result = bench.main(["--steps", "1", "--repeats", "1", "--batch", "4", "--threads", "1", "--teacher", "resnet56",
                         "--student", "resnet20", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["engine_images_per_s"] > 0 and result["plain_images_per_s"] > 0


def test_reference_mode_quick(bench, tmp_path):
    out = tmp_path / "reference.json"
    report = bench.main(["--reference", "--methods", "kd,crd", "--batches", "8", "--steps", "1", "--repeats", "1",
                         "--warmup", "0", "--images", "64", "--threads", "1", "--teacher", "resnet56",
                         "--student", "resnet20", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert [(r["method"], r["batch"]) for r in report["results"]] == [("kd", 8), ("crd", 8)]
    for r in report["results"]:
        assert len(r["reference_s"]) == 1 and len(r["distillab_s"]) == 1
        assert r["reference_images_per_s"] > 0 and r["distillab_images_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["distillab_images_per_s"] / r["reference_images_per_s"])
        assert isinstance(r["target_met"], bool)
    kd, crd = report["results"]
    assert kd["contrast_k"] is None and 0 < crd["contrast_k"] < 64  # the CRD term's K, clipped to the small set
    assert report["images"] == 64 and report["reference_loop"]["num_workers"] == 0
    assert report["target"]["ratio_at_least"] == 1.0 and report["device"] == "cpu"
    assert report["cpu_name"] and report["versions"]["torch"] and "--reference" in report["command"]


def test_reference_augmentation_is_a_crop_and_flip(bench):
    """The reference data set's per-sample augmentation gives one of the crops+flips of the batched one."""
    import torch

    from distillab.data import build_dataset

    data = build_dataset("synthetic", n_train=8, n_test=2, num_classes=4)
    images = data.train.inputs.permute(0, 2, 3, 1).contiguous().numpy()
    dataset = bench.InstanceSample(images, data.train.labels.numpy(), data.mean, data.std, k=5)
    norm = data.test_transform(data.train.inputs[3:4])
    every = [data.augment.apply(norm, {"offsets": torch.tensor([[i, j]]), "flips": torch.tensor([f])})[0]
             for i in range(9) for j in range(9) for f in (False, True)]
    for _ in range(5):
        x, label, index, contrast = dataset[3]
        assert any(torch.allclose(x, c, atol=1e-5) for c in every)
        assert index == 3 and contrast[0] == 3 and len(contrast) == 6
        assert all(data.train.labels[j] != label for j in contrast[1:])


@pytest.mark.slow
# language-model presets (lm_fkl, ...) have no CIFAR-100 config; tests/test_lm_losses.py checks them
@pytest.mark.parametrize("method", [m for m in METHODS.names() if all("classification" in LOSSES.get(t.loss).tasks
                                                                      for t in METHODS.get(m).terms.values())])
def test_method_cost_every_method(bench, tmp_path, method):
    """Every method through its shipped resnet32x4 -> resnet8x4 config (the pair the benchmark reports)."""
    report = bench.main(["--methods", method, "--steps", "1", "--repeats", "1", "--warmup", "1", "--batch", "4",
                         "--images", "64", "--threads", "1", "--out", str(tmp_path / "cost.json")])
    assert report["methods"][method]["ms_per_step"] > 0
