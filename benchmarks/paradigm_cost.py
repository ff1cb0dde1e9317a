"""What runs of several models cost per epoch, against one student, on the real engine.

Every row trains on the in-memory ``synthetic`` set (random CIFAR-shaped images, batched crop+flip) with the
same student architecture, built as a run builds it (``check_plan`` -> models -> ``Trainer``), and times
``Trainer.train_epoch``. Rows:

* ``ce``: one student on labels (the unit);
* ``dml``: two peers of that architecture, one forward of each per batch (``joint`` step). Target: at most
  2.1x ``ce`` (two models' forward and backward, plus the KL terms);
* ``dml_sequential``: the same peers updated one after the other (two forwards of each per batch);
* ``kd``: one frozen teacher, and ``mtkd``: three frozen teachers (each runs once per batch), and ``mtkd`` with
  the teacher-output cache warm (``data.augment_variants=1``: from the second epoch no teacher runs at all).

Epochs of the rows alternate (``--repeats`` rounds after one warm-up epoch each) so that drifting machine load
hits all of them; the median epoch time of each is reported with its ratio to ``ce``.

    python benchmarks/paradigm_cost.py                           # resnet8x4 peers/students, resnet32x4 teachers, CPU
    python benchmarks/paradigm_cost.py --device cuda --images 8192 --json docs/results/paradigm_cost_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from distillab.config import load_config
from distillab.engine.device import resolve_device, seed_everything
from distillab.engine.trainer import Trainer
from distillab.models import create_model
from distillab.plan import check_plan
from distillab.runner import build_data, build_models, cpu_name, versions
from distillab.store import TeacherStore

ROWS = ("ce", "dml", "dml_sequential", "kd", "mtkd", "mtkd_cached")
TARGET_DML = 2.1  # a 2-peer DML epoch costs at most this many single-student epochs


def teacher_file(folder: Path, arch: str, seed: int) -> str:
    torch.manual_seed(seed)
    path = folder / f"{arch}-{seed}.pt"
    torch.save({"model": create_model(arch, num_classes=100).state_dict(), "arch": arch}, path)
    return str(path)


def row_overrides(row: str, args: argparse.Namespace, teachers: list[str]) -> list[str]:
    base = ["data.name=synthetic", f"data.options={{n_train: {args.images}, n_test: 16, num_classes: 100}}",
            f"student.arch={args.student}", f"train.batch_size={args.batch}", f"train.device={args.device}",
            "train.progress=false", "train.tensorboard=false", "train.drop_last=true", "optim.schedule=constant",
            "out_dir=/nonexistent"]
    peer = [f"models.peer.arch={args.student}", "models.peer.role=trainable", "method.name=dml"]
    frozen = [f"teacher.checkpoint={teachers[0]}", f"teacher.arch={args.teacher}"]
    for i, path in enumerate(teachers[1:], start=2):
        frozen += [f"models.teacher{i}.checkpoint={path}", f"models.teacher{i}.arch={args.teacher}",
                   f"models.teacher{i}.role=frozen"]
    return base + {
        "ce": ["method.name=ce"],
        "dml": peer,
        "dml_sequential": peer + ["method.step=sequential"],
        "kd": ["method.name=kd", f"teacher.checkpoint={teachers[0]}", f"teacher.arch={args.teacher}"],
        "mtkd": ["method.name=mtkd"] + frozen,
        "mtkd_cached": ["method.name=mtkd", "train.teacher_cache=true", "data.augment_variants=1"] + frozen,
    }[row]


def build(row: str, args: argparse.Namespace, teachers: list[str]) -> Trainer:
    cfg = load_config(None, row_overrides(row, args, teachers))
    plan = check_plan(cfg)
    seed_everything(0)
    data = build_data(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(cfg, models=build_models(plan, data, TeacherStore()), objective=plan.objective, data=data,
                       device=resolve_device(args.device))


def epoch_seconds(trainer: Trainer, epoch: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    trainer.train_epoch(epoch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--images", type=int, default=512, help="training images per epoch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per row (alternating)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tmp", type=Path, default=Path("/tmp/distillab-paradigm-cost"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = args.rows.split(",")
    args.tmp.mkdir(parents=True, exist_ok=True)
    teachers = [teacher_file(args.tmp, args.teacher, seed) for seed in range(3)]
    device = resolve_device(args.device)
    trainers = {row: build(row, args, teachers) for row in rows}
    for row, trainer in trainers.items():  # warm-up epoch (fills the mtkd cache)
        epoch_seconds(trainer, 1, device)
    times: dict[str, list[float]] = {row: [] for row in rows}
    for rep in range(args.repeats):
        for row, trainer in trainers.items():
            times[row].append(epoch_seconds(trainer, 2 + rep, device))
            print(f"round {rep + 1}: {row:15s} {times[row][-1]:.2f} s", file=sys.stderr, flush=True)
    unit = statistics.median(times["ce"]) if "ce" in times else None
    result = {
        "command": " ".join(sys.argv), "device": str(device),
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "versions": versions(), "python": platform.python_version(),
        "student": args.student, "teacher": args.teacher, "images": args.images, "batch": args.batch,
        "repeats": args.repeats,
        "rows": {row: {"median_epoch_s": statistics.median(t), "epochs_s": t,
                       "vs_ce": statistics.median(t) / unit if unit else None} for row, t in times.items()},
        "target": {"dml_vs_ce_at_most": TARGET_DML},
    }
    print(f"{'row':16s} {'epoch s (median)':>17s} {'x ce':>6s}")
    for row, r in result["rows"].items():
        print(f"{row:16s} {r['median_epoch_s']:17.2f} {r['vs_ce'] or float('nan'):6.2f}")
    if unit and "dml" in times:
        ok = result["rows"]["dml"]["vs_ce"] <= TARGET_DML
        print(f"2-peer DML epoch: {result['rows']['dml']['vs_ce']:.2f}x a single student (target <= {TARGET_DML}): "
              f"{'met' if ok else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
