"""Training-step cost on CIFAR-shaped data: engine overhead against plain PyTorch, and the cost of each method.

Both modes train on the ``synthetic`` data set (random CIFAR-shaped images held in memory, so nothing is
downloaded) with the batched crop+flip augmentation, and report medians over timed repeats.

Engine overhead (the default): distillab's engine and a minimal plain-PyTorch loop train the same student
against the same frozen teacher with the same objective (0.1 CE + 0.9 KD at T = 4) and SGD, in the same
process. Epochs of the two alternate, so drift in machine load hits both; the median epoch time of each is
reported.

Method cost (``--methods``): for each registered method, the mean time of one training step of the real
engine (``Trainer.train_epoch``: loader, augmentation, teacher forward, student forward, every loss term,
backward, SGD step, metric sums), built as a run builds it from the method's shipped config
``configs/cifar100/<method>_<teacher>_<student>.yaml`` (its method section, optimiser and train settings;
the data set swapped for ``synthetic``). Per method: warm-up steps, then ``--repeats`` timed runs of
``--steps`` steps; the median of their ms/step is reported, with the cost relative to KD (always measured
first and, in a run of more than two methods, again at the end as a check on drifting machine load).
Methods with pre-training stages are timed in their main stage. The objective's epoch-start hook (RDD's RDX
mining, the RDD data schedules' ranking) runs once before the timed steps, as before epoch 1 of a run, and is
timed on its own: it happens once per refresh, not per step, and is not in ms/step. Memory banks (CRD, RDD)
are sized to the synthetic set (``--images``), not to CIFAR-100's 50,000 images.

    python benchmarks/throughput.py                      # overhead: resnet32x4 -> resnet8x4, batch 64, CPU
    python benchmarks/throughput.py --device cuda --steps 200 --repeats 5 --json out.json
    python benchmarks/throughput.py --methods all        # per-method step cost -> docs/results/method_cost_cpu.json
    python benchmarks/throughput.py --methods kd,crd,rdd --steps 2 --repeats 1 --warmup 1 --batch 8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from distillab.config import ConfigError, ModelConfig, RunConfig, load_config
from distillab.data import build_dataset
from distillab.engine.loader import epoch_generator
from distillab.engine.trainer import Trainer, resolve_device, seed_everything
from distillab.losses import LossTerm
from distillab.losses.response import kd_loss
from distillab.methods import METHODS
from distillab.models import create_model
from distillab.objective import Objective, build_objective
from distillab.registry import RegistryError
from distillab.runner import build_data, build_model, find_config, versions

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "kd"  # every method's cost is given relative to this one's
CIFAR_CLASSES = 100
CIFAR_TRAIN_SIZE = 50_000  # CIFAR-100's training set: the bank size a real run has


def make_config(args: argparse.Namespace):
    return load_config(None, [
        f"student.arch={args.student}", f"teacher.arch={args.teacher}", "method.name=kd",
        "data.name=synthetic", f"train.batch_size={args.batch}", "train.epochs=1000", f"train.device={args.device}",
        "train.progress=false", "train.tensorboard=false", "optim.lr=0.05", "optim.schedule=constant",
        "train.drop_last=true",
    ])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_epoch(trainer: Trainer, epoch: int) -> float:
    sync(trainer.device)
    tic = time.perf_counter()
    trainer.train_epoch(epoch)
    sync(trainer.device)
    return time.perf_counter() - tic


def plain_epoch(student, teacher, data, x_all, y_all, optimizer, batch: int, seed: int, epoch: int,
                device: torch.device) -> float:
    """The loop a user would write by hand: index, augment, forward both, KD + CE, step."""
    sync(device)
    tic = time.perf_counter()
    student.train()
    order = torch.randperm(len(y_all), generator=epoch_generator(seed, epoch, 0)).to(device)
    gen = epoch_generator(seed, epoch, 1, device)
    for start in range(0, len(order) - batch + 1, batch):
        idx = order[start:start + batch]
        x = data.train_transform(x_all[idx], gen)
        y = y_all[idx]
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        loss = 0.1 * F.cross_entropy(s_logits, y) + 0.9 * kd_loss(s_logits, t_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - tic


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def measure_overhead(args: argparse.Namespace) -> dict:
    """The engine against the plain loop, epochs alternating (the default mode)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = make_config(args)
    seed_everything(0)
    n = args.steps * args.batch
    data = build_dataset("synthetic", n_train=n, n_test=args.batch, num_classes=100)

    teacher = create_model(args.teacher, num_classes=100)
    student_e = create_model(args.student, num_classes=100)
    student_p = create_model(args.student, num_classes=100)
    student_p.load_state_dict(student_e.state_dict())
    trainer = Trainer(cfg, student=student_e, teacher=teacher, objective=build_objective(cfg.method), data=data,
                      run_dir=None, device=device)

    teacher_p = trainer.teacher  # the same frozen, eval-mode teacher
    student_p = student_p.to(device)
    optimizer = torch.optim.SGD(student_p.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.train.inputs.to(device), data.train.labels.to(device)

    engine_times, plain_times = [], []
    for rep in range(args.repeats + 1):  # repeat 0 warms both up and is not counted
        te = engine_epoch(trainer, rep + 1)
        tp = plain_epoch(student_p, teacher_p, data, x_all, y_all, optimizer, args.batch, cfg.seed, rep + 1, device)
        if rep:
            engine_times.append(te)
            plain_times.append(tp)
        print(f"repeat {rep}{' (warm-up)' if rep == 0 else ''}: engine {n / te:8.1f} img/s   plain {n / tp:8.1f} img/s",
              flush=True)

    engine_ips = n / statistics.median(engine_times)
    plain_ips = n / statistics.median(plain_times)
    result = {
        "pair": f"{args.teacher} -> {args.student}", "batch": args.batch, "steps_per_epoch": args.steps,
        "repeats": args.repeats, "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "engine_images_per_s": engine_ips, "plain_images_per_s": plain_ips,
        "engine_overhead_pct": 100.0 * (plain_ips / engine_ips - 1.0), "versions": versions(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


# ---------------------------------------------------------------- per-method step cost


class StepClock:
    """The engine's per-step progress callback: marks the end of the warm-up and of every timed repeat.

    Marks are taken after a step's optimiser update (the device synchronised first), so a repeat spans
    exactly ``steps`` whole engine steps, epoch boundaries included.
    """

    def __init__(self, device: torch.device, warmup: int, steps: int, repeats: int) -> None:
        self.device, self.warmup, self.steps, self.repeats = device, warmup, steps, repeats
        self.done = 0
        self.marks: list[float] = []
        if warmup == 0:
            self._mark()

    def _mark(self) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())

    def __call__(self, step: int, state) -> None:
        self.done += 1
        timed = self.done - self.warmup
        if timed >= 0 and timed % self.steps == 0 and not self.finished:
            self._mark()

    @property
    def remaining(self) -> int:
        return self.warmup + self.steps * self.repeats - self.done

    @property
    def finished(self) -> bool:
        return len(self.marks) == self.repeats + 1

    def ms_per_step(self) -> list[float]:
        return [1000.0 * (b - a) / self.steps for a, b in zip(self.marks, self.marks[1:])]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def method_config(method: str, args: argparse.Namespace) -> tuple[RunConfig, str | None]:
    """The method's shipped config for the pair (or its preset's defaults, where none is shipped) with the
    data set swapped for the in-memory synthetic one; also the config's path, None when there is none."""
    overrides = [
        "data.name=synthetic", "data.root=null", "data.download=false",
        f"data.options={{n_train: {args.images}, n_test: {args.batch}, num_classes: {CIFAR_CLASSES}}}",
        f"train.batch_size={args.batch}", f"train.device={args.device}", "train.progress=false",
        "train.tensorboard=false", "train.drop_last=true",  # every timed step is a full batch
        *args.set,
    ]
    name = f"configs/cifar100/{method}_{args.teacher}_{args.student}.yaml"
    try:
        path = find_config(name)
    except ConfigError:
        return load_config(None, [f"student.arch={args.student}", f"method.name={method}", *overrides]), None
    cfg = load_config(path, overrides)
    if cfg.method.name != method or cfg.student.arch != args.student:
        raise ConfigError(f"{name} trains {cfg.method.name!r} on {cfg.student.arch!r}, not {method!r} on "
                          f"{args.student!r}")
    return cfg, name


def has_epoch_hook(objective: Objective) -> bool:
    """Whether anything in the objective does work before an epoch (mining, ranking, subsets)."""
    return objective.schedule is not None or any(
        type(term).on_epoch_start is not LossTerm.on_epoch_start for term in objective.terms.values())


def measure_method(method: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Build one method's run as the runner does, run its epoch-start hook once (timed), then time steps."""
    cfg, source = method_config(method, args)
    seed_everything(cfg.seed)
    data = build_data(cfg)
    objective = build_objective(cfg.method)
    teacher = build_model(ModelConfig(arch=args.teacher), data, "teacher") if objective.needs_teacher else None
    student = build_model(cfg.student, data, "student")
    events: list[str] = []
    with warnings.catch_warnings(record=True) as caught:  # e.g. CRD clipping nce_k to a small data set
        warnings.simplefilter("always")
        trainer = Trainer(cfg, student=student, objective=objective, data=data, teacher=teacher, run_dir=None,
                          device=device, reporter=events.append)

    epoch_start_ms = None
    sync(device)
    tic = time.perf_counter()
    objective.on_epoch_start(trainer.epoch_context(1))
    sync(device)
    if has_epoch_hook(objective):
        epoch_start_ms = 1000.0 * (time.perf_counter() - tic)
    steps_per_epoch = len(trainer.train_loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"{method}: an epoch has no full batch of {args.batch} (the method trains on a subset of "
                         f"the {args.images} images): raise --images")

    clock = StepClock(device, args.warmup, args.steps, args.repeats)
    loader = trainer.train_loader
    pool = loader.subset if loader.subset is not None else torch.arange(len(data.train))  # the schedule's pick
    epoch = 1
    while not clock.finished:
        if clock.remaining < steps_per_epoch:  # the last epoch runs only the steps still to be timed
            loader.set_subset(pool[:clock.remaining * args.batch])
        trainer.train_epoch(epoch, clock)
        epoch += 1
    times = clock.ms_per_step()

    notes = []
    if source is None:
        notes.append("no shipped config for this pair: the preset's defaults")
    if teacher is None:
        notes.append("labels only: no teacher forward")
    if objective.stages:
        notes.append("main stage timed; not timed: " +
                     ", ".join(f"{s.name} stage ({s.epochs} epochs)" for s in objective.stages))
    if objective.schedule is not None:
        notes.append(f"data schedule {type(objective.schedule).__name__}: trains on the subset it picks")
    result = {
        "method": method, "config": source, "needs_teacher": teacher is not None,
        "ms_per_step": statistics.median(times), "ms_per_step_mean": statistics.mean(times),
        "ms_per_step_std": statistics.stdev(times) if len(times) > 1 else 0.0, "repeats_ms_per_step": times,
        "steps_run": clock.done, "epoch_start_ms": epoch_start_ms, "steps_per_epoch": steps_per_epoch,
        "stages_not_timed": [{"name": s.name, "epochs": s.epochs} for s in objective.stages],
        "notes": notes, "warnings": [str(w.message) for w in caught], "events": events,
    }
    del trainer, objective, student, teacher, data
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def parse_methods(text: str) -> list[str]:
    """``all`` or a comma list of registered methods; the reference method always comes first."""
    names = METHODS.names() if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        try:
            METHODS.get(name)
        except RegistryError as exc:
            raise SystemExit(f"--methods: {exc}") from None
    return [REFERENCE, *dict.fromkeys(n for n in names if n != REFERENCE)]


def row(cells: list[str], widths: list[int]) -> str:
    """One table line: the first and last cells left-aligned, numbers right-aligned."""
    last = len(cells) - 1
    return "  ".join(c.ljust(w) if i in (0, last) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def measure_methods(args: argparse.Namespace, argv: list[str]) -> dict:
    """Per-method step cost (``--methods``): a table on stdout, everything in the ``--out`` JSON file."""
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--steps and --repeats must be at least 1, --warmup at least 0")
    torch.set_num_threads(args.threads or available_cores())
    device = resolve_device(args.device)
    methods = parse_methods(args.methods)
    widths = [15, 9, 7, 6, 15, 0]
    print(f"{args.teacher} -> {args.student}, batch {args.batch}, {args.images} synthetic images, {device} "
          f"({device_name(device)}, torch threads: {torch.get_num_threads()}), torch {torch.__version__}; per method: "
          f"{args.warmup} warm-up steps, then the median of {args.repeats} x {args.steps} steps", flush=True)
    print(row(["method", "ms/step", "+-std", "vs KD", "epoch-start ms", "notes"], widths), flush=True)
    results: dict[str, dict] = {}
    tic = time.perf_counter()
    for method in methods:
        try:
            r = measure_method(method, args, device)
        except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others' figures
            results[method] = {"method": method, "error": f"{type(exc).__name__}: {exc}"}
            print(row([method, "-", "-", "-", "-", f"failed: {type(exc).__name__}: {str(exc)[:120]}"], widths),
                  flush=True)
            if method == REFERENCE:
                raise
            continue
        r["relative_to_kd"] = r["ms_per_step"] / results.get(REFERENCE, r)["ms_per_step"]
        results[method] = r
        hook = "-" if r["epoch_start_ms"] is None else f"{r['epoch_start_ms']:.0f}"
        notes = "; ".join(r["notes"] + (["warnings below"] if r["warnings"] else []))
        print(row([method, f"{r['ms_per_step']:.1f}", f"{r['ms_per_step_std']:.1f}", f"{r['relative_to_kd']:.2f}",
                   hook, notes], widths), flush=True)
    again = None
    if len(methods) > 2:  # a long sequential run: the reference once more at the end shows any drift in load
        again = measure_method(REFERENCE, args, device)
        print(row([f"{REFERENCE} (at end)", f"{again['ms_per_step']:.1f}", f"{again['ms_per_step_std']:.1f}",
                   f"{again['ms_per_step'] / results[REFERENCE]['ms_per_step']:.2f}", "-", "drift check"], widths))
    wall_s = time.perf_counter() - tic
    for method, r in results.items():
        for text in r.get("warnings", []):
            print(f"warning ({method}): {text}")
    print(f"ms/step: engine step (loader, augmentation, teacher forward, student forward, loss terms, backward, "
          f"SGD step, metric sums).\nepoch-start ms: one on_epoch_start before epoch 1 (RDX mining or ranking of "
          f"the {args.images}-image set), once per refresh in training, not per step, not in ms/step; it grows "
          f"with the set size (feature extraction linearly, RDX ranks about as its square).\nMemory banks hold "
          f"{args.images} rows (CIFAR-100: {CIFAR_TRAIN_SIZE}). Wall time {wall_s:.0f} s.")

    report = {
        "benchmark": "per-method training-step cost through distillab's engine",
        "command": " ".join(["python", "benchmarks/throughput.py", *argv]),
        "pair": f"{args.teacher} -> {args.student}", "data": f"synthetic, {args.images} CIFAR-shaped images",
        "batch": args.batch, "warmup_steps": args.warmup, "steps": args.steps, "repeats": args.repeats,
        "reported": "median over repeats of ms/step; relative_to_kd = ms_per_step / kd's",
        "epoch_start_ms": "one on_epoch_start before epoch 1 (mining/ranking over the synthetic set), not in "
                          "ms_per_step; null where the objective has no epoch-start work",
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "overrides": args.set, "versions": versions(), "wall_s": wall_s, "methods": results,
        "reference_at_end": again,
    }
    out = Path(args.out or REPO / "docs" / "results" / f"method_cost_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed epoch (--methods: per repeat)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed epochs of each loop, after one warm-up (--methods: timed repeats per method)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; with --methods: all cores)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    parser.add_argument("--methods", default=None,
                        help="per-method step cost instead of engine overhead: 'all' or a comma list of methods")
    parser.add_argument("--warmup", type=int, default=3, help="--methods: untimed steps per method before timing")
    parser.add_argument("--images", type=int, default=512,
                        help="--methods: synthetic training images (also the memory banks' size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--methods: a config override for every method, e.g. train.bf16=true (repeatable)")
    parser.add_argument("--out", default=None,
                        help="--methods: the JSON file (default: docs/results/method_cost_<device>.json)")
    args = parser.parse_args(argv)
    if args.methods:
        return measure_methods(args, sys.argv[1:] if argv is None else argv)
    return measure_overhead(args)


if __name__ == "__main__":
    main()
