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

Against a reference loop (``--reference``): images/s of a training loop written as RepDistiller's
``train_student.py`` writes it (:class:`ReferenceLoop`: a ``Dataset`` of uint8 HWC images augmented per
sample on the host, a ``DataLoader``, ``.to(device)`` of every batch, fp32 NCHW, CRD's contrast indices
drawn per sample with NumPy) and of distillab's engine (the ``--methods`` build: ``Trainer.train_epoch`` on
the device-held ``synthetic`` set with batched on-device augmentation, ``--bf16``, ``--channels-last`` and
``--compile`` passed to its train config), for each method (``--methods``, default kd,crd,rdd) and batch
size (``--batches``, default 64,256). Both train on the same ``--images`` images (default 2048; the memory
banks hold that many rows) and use the same models, objective and loss code; after warm-up steps of each,
``--repeats`` repeats of ``--steps`` steps alternate between the two loops. Reported per method and batch:
the median images/s of each and the ratio distillab / reference, with the target (CPU: ratio >= 1, no
slower than the reference loop; GPU: ratio >= 5).

    python benchmarks/throughput.py                      # overhead: resnet32x4 -> resnet8x4, batch 64, CPU
    python benchmarks/throughput.py --device cuda --steps 200 --repeats 5 --json out.json
    python benchmarks/throughput.py --methods all        # per-method step cost -> docs/results/method_cost_cpu.json
    python benchmarks/throughput.py --methods kd,crd,rdd --steps 2 --repeats 1 --warmup 1 --batch 8
    python benchmarks/throughput.py --reference --device cuda --json out.json   # reference loop vs engine
    python benchmarks/throughput.py --reference --device cuda --bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from distillab.config import ConfigError, RunConfig, TrainConfig, load_config
from distillab.data import DataBundle, build_dataset
from distillab.engine.loader import epoch_generator
from distillab.engine.device import resolve_device, seed_everything
from distillab.engine.trainer import Trainer
from distillab.features import FeatureTaps, probe_shapes, resolve_feature
from distillab.losses import Batch, LossTerm, ModelOutputs, SetupContext
from distillab.losses.contrastive import CRD
from distillab.losses.response import kd_loss
from distillab.methods import METHODS
from distillab.models import create_model
from distillab.objective import Objective, build_objective
from distillab.registry import RegistryError
from distillab.runner import build_data, cpu_name, find_config, versions

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


def train_flags(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The config overrides of --bf16, --channels-last and --compile, and a note for each flag this version
    of the config has no key for (that flag is then not passed)."""
    overrides, notes = [], []
    for flag, key in (("bf16", "bf16"), ("channels_last", "channels_last"), ("compile", "compile")):
        if getattr(args, flag, False):
            if key in TrainConfig.model_fields:
                overrides.append(f"train.{key}=true")
            else:
                notes.append(f"--{flag.replace('_', '-')} ignored: train.{key} is not a config key of this version")
    return overrides, notes


def method_config(method: str, args: argparse.Namespace) -> tuple[RunConfig, str | None]:
    """The method's shipped config for the pair (or its preset's defaults, where none is shipped) with the
    data set swapped for the in-memory synthetic one; also the config's path, None when there is none."""
    overrides = [
        "data.name=synthetic", "data.root=null", "data.download=false",
        f"data.options={{n_train: {args.images}, n_test: {args.batch}, num_classes: {CIFAR_CLASSES}}}",
        f"train.batch_size={args.batch}", f"train.device={args.device}", "train.progress=false",
        "train.tensorboard=false", "train.drop_last=true",  # every timed step is a full batch
        *train_flags(args)[0], *args.set,
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


class EngineRun(NamedTuple):
    """One method's run built as the runner builds it, its epoch-start hook done (timed)."""

    cfg: RunConfig
    source: str | None
    data: DataBundle
    objective: Objective
    trainer: Trainer
    teacher: torch.nn.Module | None
    events: list[str]
    warnings: list[str]
    epoch_start_ms: float | None
    pool: torch.Tensor  # the sample indices the engine trains on (a data schedule's pick, else all)
    initial: tuple | None = None  # (student, teacher) copies as built, before the engine moved them


def build_engine(method: str, args: argparse.Namespace, device: torch.device, keep_initial: bool = False) -> EngineRun:
    """Build one method's run as the runner does and run its epoch-start hook once (timed)."""
    cfg, source = method_config(method, args)
    seed_everything(cfg.seed)
    data = build_data(cfg)
    objective = build_objective(cfg.method)
    teacher = create_model(args.teacher, num_classes=data.num_classes) if objective.needs_teacher else None
    student = create_model(cfg.student.arch, num_classes=data.num_classes, **cfg.student.options)
    initial = (copy.deepcopy(student), copy.deepcopy(teacher)) if keep_initial else None
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
    loader = trainer.train_loader
    pool = loader.subset if loader.subset is not None else torch.arange(len(data.train))  # the schedule's pick
    if len(loader) == 0:
        raise SystemExit(f"{method}: an epoch has no full batch of {args.batch} (the method trains on a subset of "
                         f"the {args.images} images): raise --images")
    return EngineRun(cfg, source, data, objective, trainer, teacher, events, [str(w.message) for w in caught],
                     epoch_start_ms, pool, initial)


def run_notes(run: EngineRun) -> list[str]:
    notes = []
    if run.source is None:
        notes.append("no shipped config for this pair: the preset's defaults")
    if run.teacher is None:
        notes.append("labels only: no teacher forward")
    if run.objective.stages:
        notes.append("main stage timed; not timed: " +
                     ", ".join(f"{s.name} stage ({s.epochs} epochs)" for s in run.objective.stages))
    if run.objective.schedule is not None:
        notes.append(f"data schedule {type(run.objective.schedule).__name__}: trains on the subset it picks")
    return notes


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_method(method: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Build one method's run as the runner does, run its epoch-start hook once (timed), then time steps."""
    run = build_engine(method, args, device)
    trainer, steps_per_epoch = run.trainer, len(run.trainer.train_loader)
    clock = StepClock(device, args.warmup, args.steps, args.repeats)
    loader = trainer.train_loader
    epoch = 1
    while not clock.finished:
        if clock.remaining < steps_per_epoch:  # the last epoch runs only the steps still to be timed
            loader.set_subset(run.pool[:clock.remaining * args.batch])
        trainer.train_epoch(epoch, clock)
        epoch += 1
    times = clock.ms_per_step()

    result = {
        "method": method, "config": run.source, "needs_teacher": run.teacher is not None,
        "ms_per_step": statistics.median(times), "ms_per_step_mean": statistics.mean(times),
        "ms_per_step_std": statistics.stdev(times) if len(times) > 1 else 0.0, "repeats_ms_per_step": times,
        "steps_run": clock.done, "epoch_start_ms": run.epoch_start_ms, "steps_per_epoch": steps_per_epoch,
        "stages_not_timed": [{"name": s.name, "epochs": s.epochs} for s in run.objective.stages],
        "notes": run_notes(run), "warnings": run.warnings, "events": run.events,
    }
    del run, trainer, loader
    release(device)
    return result


def parse_methods(text: str, with_reference: bool = True) -> list[str]:
    """``all`` or a comma list of registered methods; the reference method comes first unless told not to."""
    # all: every method of classifiers (language-model methods, paradigm "lm", run on text: not this benchmark's)
    names = [n for n in METHODS.names() if METHODS.get(n).paradigm != "lm"] if text == "all" else \
        [m.strip() for m in text.split(",") if m.strip()]
    for name in names:
        try:
            METHODS.get(name)
        except RegistryError as exc:
            raise SystemExit(f"--methods: {exc}") from None
    if not with_reference:
        return list(dict.fromkeys(names))
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
        "overrides": [*train_flags(args)[0], *args.set], "versions": versions(), "wall_s": wall_s, "methods": results,
        "reference_at_end": again,
    }
    out = Path(args.out or REPO / "docs" / "results" / f"method_cost_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


# ---------------------------------------------------------------- against a reference training loop


class InstanceSample(Dataset):
    """RepDistiller's CIFAR-100 training set (``CIFAR100Instance``; with ``k``, ``CIFAR100InstanceSample``).

    Holds uint8 HWC images as NumPy arrays; ``__getitem__`` augments one sample on the host as torchvision's
    ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` do
    (black padding, crop corner and flip drawn with torch's global generator as torchvision draws them) and
    returns ``(image, label, index)``. With ``k``, also the contrast indices drawn as ``CIFAR100InstanceSample``
    draws them in its "exact" mode: the sample's own index, then ``k`` indices of other classes from
    ``np.random.choice``, with replacement only where the pool is smaller than ``k``.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, k: int | None = None) -> None:
        self.images, self.labels, self.k = images, labels, k
        self.pad = images.shape[1] // 8
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        if k is not None:
            self.cls_negative = [np.flatnonzero(labels != c) for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def transform(self, img: np.ndarray) -> torch.Tensor:
        h, w, p = img.shape[0], img.shape[1], self.pad
        img = np.pad(img, ((p, p), (p, p), (0, 0)))  # RandomCrop(32, padding=4): black padding, then a crop
        i = int(torch.randint(0, 2 * p + 1, (1,)))
        j = int(torch.randint(0, 2 * p + 1, (1,)))
        img = img[i:i + h, j:j + w]
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip()
            img = img[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor()
        return (x - self.mean) / self.std  # Normalize(mean, std)

    def __getitem__(self, index: int):
        target = int(self.labels[index])
        x = self.transform(self.images[index])
        if self.k is None:
            return x, target, index
        pool = self.cls_negative[target]
        negatives = np.random.choice(pool, self.k, replace=self.k > len(pool))
        return x, target, index, np.hstack((np.asarray([index]), negatives))


class GivenContrast(torch.nn.Module):
    """Stands in for a CRD term's sampler: hands over the contrast indices the data set drew."""

    def __init__(self) -> None:
        super().__init__()
        self.index: torch.Tensor | None = None

    def forward(self, anchors: torch.Tensor) -> torch.Tensor:
        return self.index


class ReferenceLoop:
    """A training loop as RepDistiller's ``train_student.py`` (``train_distill``) writes it.

    Reproduced: the data path (a ``Dataset`` of uint8 HWC images augmented per sample on the host, see
    :class:`InstanceSample`, a shuffling ``DataLoader`` with ``num_workers`` workers and pinned memory on
    CUDA, ``.to(device)`` of every batch), fp32 NCHW throughout, the student forward, the teacher forward
    under ``no_grad`` in eval mode, the loss, RepDistiller's per-step bookkeeping (``loss.item()`` and top-1/5
    accuracy into meters), ``zero_grad``, backward and an SGD step over the student and the loss's own
    parameters. For CRD terms the contrast indices come from the data set, as in ``CIFAR100InstanceSample``.

    Shared with distillab: the models, the images and labels (the ``synthetic`` set, copied to NumPy), the
    features (read with distillab's forward hooks; RepDistiller's models return them with ``is_feat=True``)
    and the loss, an objective built from the same method config and started from the engine's state
    after its epoch-start hook (so RDD draws from the same mined table and with its own sampling; CRD
    scores the data set's contrast indices with distillab's banks and NCE). Workers are kept between
    epochs (``persistent_workers``), which only spares the reference loop the worker start-up that short
    epochs would otherwise weigh too much.
    """

    def __init__(self, run: EngineRun, batch: int, num_workers: int, device: torch.device) -> None:
        data, cfg = run.data, run.cfg
        self.device = device
        self.student = run.initial[0].to(device)
        self.teacher = run.initial[1].to(device).eval() if run.initial[1] is not None else None
        self.objective = build_objective(cfg.method)
        self.s_taps = {n: resolve_feature(self.student, n) for n in self.objective.feature_requests("student")}
        self.t_taps = ({n: resolve_feature(self.teacher, n) for n in self.objective.feature_requests("teacher")}
                       if self.teacher is not None else {})
        labels = data.train.labels.cpu()
        with warnings.catch_warnings():  # the engine's build has already reported these
            warnings.simplefilter("ignore")
            self.objective.setup(SetupContext(
                num_classes=data.num_classes, num_train=len(data.train),
                student_shapes=probe_shapes(self.student, self.s_taps, data.input_shape, device),
                teacher_shapes=(probe_shapes(self.teacher, self.t_taps, data.input_shape, device)
                                if self.teacher is not None else {}),
                data=data, train_labels=labels, student=self.student, teacher=self.teacher))
        self.objective.to(device).load_state_dict(run.objective.state_dict())
        self.contrast_k, self.feeds = None, []
        for term in self.objective.terms.values():
            if isinstance(term, CRD):  # the data set draws its contrast indices, as CIFAR100InstanceSample
                self.contrast_k = term.sampler.num_negatives
                term.sampler = GivenContrast()
                self.feeds.append(term.sampler)
        images = data.train.inputs.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # uint8 HWC, as CIFAR's arrays
        self.dataset = InstanceSample(images, labels.numpy(), data.mean, data.std, self.contrast_k)
        self.loader = DataLoader(self.dataset, batch_size=batch, shuffle=True, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", drop_last=True,
                                 persistent_workers=num_workers > 0)
        self.batches = iter(self.loader)
        params = list(self.student.parameters()) + list(self.objective.parameters())
        o = cfg.optim
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.meters: dict[str, list] = {"loss": [], "top1": [], "top5": []}

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:  # the next epoch
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        device = self.device
        self.student.train()
        self.objective.train()
        sync(device)
        tic = time.perf_counter()
        teacher_taps = FeatureTaps(self.teacher, self.t_taps) if self.teacher is not None else contextlib.nullcontext()
        with FeatureTaps(self.student, self.s_taps) as s_taps, teacher_taps as t_taps:
            for _ in range(steps):
                x, y, index, *contrast = self.next_batch()
                x, y, index = x.float().to(device), y.to(device), index.to(device)
                for feed in self.feeds:
                    feed.index = contrast[0].to(device)
                s_logits = self.student(x)
                teacher_out = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_out = ModelOutputs(self.teacher(x), t_taps.pop())
                batch = Batch(x, y, index, ModelOutputs(s_logits, s_taps.pop()), teacher_out, 1)
                loss, _ = self.objective(batch)
                hits = s_logits.topk(min(5, s_logits.shape[1]), 1).indices == y[:, None]  # accuracy(topk=(1, 5))
                self.meters["loss"].append(loss.item())  # RepDistiller's AverageMeter: a host sync per step
                self.meters["top1"].append(hits[:, 0].float().mean() * 100.0)
                self.meters["top5"].append(hits.any(1).float().mean() * 100.0)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        sync(device)
        return time.perf_counter() - tic


class EngineSteps:
    """Runs ``steps`` steps of the real engine at a time: ``Trainer.train_epoch`` over a random pick of
    ``steps * batch`` of the samples it trains on (several epochs where that is more than it holds)."""

    def __init__(self, run: EngineRun, batch: int) -> None:
        self.run_, self.batch = run, batch
        self.epoch = 0
        self.gen = torch.Generator().manual_seed(0)

    def run(self, steps: int) -> float:
        trainer, pool = self.run_.trainer, self.run_.pool
        per_epoch = len(pool) // self.batch
        sync(trainer.device)
        tic = time.perf_counter()
        while steps > 0:
            n = min(steps, per_epoch)
            trainer.train_loader.set_subset(pool[torch.randperm(len(pool), generator=self.gen)[:n * self.batch]])
            self.epoch += 1
            trainer.train_epoch(self.epoch)
            steps -= n
        sync(trainer.device)
        return time.perf_counter() - tic


TARGETS = {"cpu": (1.0, "no slower than the reference loop"), "cuda": (5.0, "at least 5x the reference loop")}


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--batches: a comma list of batch sizes, got {text!r}") from None
    if not batches or min(batches) < 1:
        raise SystemExit(f"--batches: positive batch sizes, got {text!r}")
    return batches


def measure_reference(args: argparse.Namespace, argv: list[str]) -> dict:
    """images/s of a RepDistiller-style loop and of distillab's engine (``--reference``), repeats alternating."""
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--steps and --repeats must be at least 1, --warmup at least 0")
    torch.set_num_threads(args.threads or available_cores())
    device = resolve_device(args.device)
    methods = parse_methods(args.methods or "kd,crd,rdd", with_reference=False)
    batches = parse_batches(args.batches or "64,256")
    workers = args.num_workers if args.num_workers is not None else (8 if device.type == "cuda" else 0)
    flags, flag_notes = train_flags(args)
    target, target_text = TARGETS.get(device.type, (None, "none set for this device"))
    name = device_name(device) if device.type == "cuda" else cpu_name()
    print(f"{args.teacher} -> {args.student}, {args.images} CIFAR-shaped images (32x32x3, {CIFAR_CLASSES} classes; "
          f"memory banks sized to them), {device} ({name}, torch threads: {torch.get_num_threads()}), torch "
          f"{torch.__version__}; per method and batch: {args.warmup} warm-up steps of each loop, then {args.repeats} "
          f"repeats of {args.steps} steps, reference and distillab alternating\nreference: DataLoader, "
          f"{workers} workers, per-sample host augmentation, fp32 NCHW; distillab: engine on the device-held "
          f"synthetic set, train flags: {', '.join(flags) or 'none'}", flush=True)
    for note in flag_notes:
        print(note)
    widths = [8, 5, 15, 15, 8, 0]
    print(row(["method", "batch", "reference img/s", "distillab img/s", "ratio", "target"], widths), flush=True)
    results = []
    tic = time.perf_counter()
    for method in methods:
        for batch in batches:
            bargs = argparse.Namespace(**{**vars(args), "batch": batch})
            run = build_engine(method, bargs, device, keep_initial=True)
            ref = ReferenceLoop(run, batch, workers, device)
            engine = EngineSteps(run, batch)
            if args.warmup:
                ref.run(args.warmup)
                engine.run(args.warmup)
            ref_s, engine_s = [], []
            for _ in range(args.repeats):
                ref_s.append(ref.run(args.steps))
                engine_s.append(engine.run(args.steps))
            n = args.steps * batch
            ref_ips, engine_ips = n / statistics.median(ref_s), n / statistics.median(engine_s)
            ratio = engine_ips / ref_ips
            met = None if target is None else ratio >= target
            results.append({
                "method": method, "batch": batch, "config": run.source, "reference_images_per_s": ref_ips,
                "distillab_images_per_s": engine_ips, "ratio": ratio, "target_met": met,
                "reference_s": ref_s, "distillab_s": engine_s, "images_per_repeat": n,
                "contrast_k": ref.contrast_k, "epoch_start_ms": run.epoch_start_ms, "notes": run_notes(run),
                "warnings": run.warnings,
            })
            print(row([method, str(batch), f"{ref_ips:.1f}", f"{engine_ips:.1f}", f"{ratio:.2f}",
                       "-" if met is None else ("met" if met else "not met")], widths), flush=True)
            del run, ref, engine
            release(device)
    wall_s = time.perf_counter() - tic
    for r in results:
        for text in r["warnings"]:
            print(f"warning ({r['method']}, batch {r['batch']}): {text}")
    done = [r["target_met"] for r in results if r["target_met"] is not None]
    print(f"ratio: distillab img/s / reference img/s (medians over repeats). Target on {device.type}: ratio >= "
          f"{target} ({target_text}): met in {sum(done)} of {len(done)}." if target is not None else
          f"ratio: distillab img/s / reference img/s (medians over repeats); no target for {device.type}.")
    print(f"Both loops train on the same {args.images} images; memory banks (CRD, RDD) hold {args.images} rows "
          f"(CIFAR-100: {CIFAR_TRAIN_SIZE}). Wall time {wall_s:.0f} s.")

    report = {
        "benchmark": "images/s of a RepDistiller-style reference training loop and of distillab's engine",
        "command": " ".join(["python", "benchmarks/throughput.py", *argv]),
        "pair": f"{args.teacher} -> {args.student}",
        "data": f"synthetic, {args.images} CIFAR-shaped images (32x32x3, {CIFAR_CLASSES} classes); memory banks "
                f"hold {args.images} rows",
        "images": args.images, "methods": methods, "batches": batches, "warmup_steps": args.warmup,
        "steps": args.steps, "repeats": args.repeats,
        "reference_loop": {"num_workers": workers, "pin_memory": device.type == "cuda", "precision": "fp32",
                           "memory_format": "NCHW", "augmentation": "per sample on the host"},
        "distillab": {"train_flags": flags, "flag_notes": flag_notes,
                      "data": "synthetic set held on the device, batched on-device augmentation"},
        "reported": "images/s = steps * batch / median over repeats of a repeat's seconds; ratio = distillab / "
                    "reference; repeats alternate (reference, then distillab)",
        "target": {"ratio_at_least": target, "meaning": target_text},
        "device": str(device), "device_name": name, "cpu_name": cpu_name(), "threads": torch.get_num_threads(),
        "versions": versions(), "wall_s": wall_s, "results": results,
    }
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20,
                        help="training steps per timed epoch (--methods, --reference: per repeat)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed epochs of each loop, after one warm-up (--methods: timed repeats per method; "
                             "--reference: timed repeats of each loop per method and batch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; with --methods or --reference: all cores)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    parser.add_argument("--methods", default=None,
                        help="per-method step cost instead of engine overhead: 'all' or a comma list of methods "
                             "(--reference: the methods compared, default kd,crd,rdd)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="--methods, --reference: untimed steps (of each loop) before timing")
    parser.add_argument("--images", type=int, default=None,
                        help="--methods, --reference: synthetic training images, also the memory banks' size "
                             "(default 512; --reference: 2048)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--methods, --reference: a config override of every method's run, e.g. "
                             "optim.lr=0.1 (repeatable; the reference loop takes its method and optim too)")
    parser.add_argument("--out", default=None,
                        help="--methods: the JSON file (default: docs/results/method_cost_<device>.json)")
    parser.add_argument("--reference", action="store_true",
                        help="images/s of a RepDistiller-style reference loop against the engine, per method and "
                             "batch size (see the module's description)")
    parser.add_argument("--batches", default=None, help="--reference: comma list of batch sizes (default 64,256)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="--reference: DataLoader workers of the reference loop (default 0; 8 with --device cuda)")
    parser.add_argument("--bf16", action="store_true", help="--methods, --reference: the engine trains with train.bf16")
    parser.add_argument("--channels-last", action="store_true",
                        help="--methods, --reference: the engine trains with train.channels_last")
    parser.add_argument("--compile", action="store_true",
                        help="--methods, --reference: the engine trains with train.compile (where the config has it)")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 2048 if args.reference else 512
    argv = sys.argv[1:] if argv is None else argv
    if args.reference:
        return measure_reference(args, argv)
    if args.methods:
        return measure_methods(args, argv)
    return measure_overhead(args)


if __name__ == "__main__":
    main()
