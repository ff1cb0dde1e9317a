"""The one training loop: teacher training, every distillation method and every paradigm run through it.

A run is a set of named models (:mod:`distillab.engine.models`: trainable ones, the student first, and
frozen ones, e.g. teachers), an :class:`~distillab.objective.Objective` (weighted loss terms, which may
own parameters and state), a :class:`~distillab.data.base.DataBundle`, an optimiser and a schedule.
Methods extend the loop only through the objective's terms (``setup``, ``on_epoch_start``, ``forward``),
their stages and their training step (:mod:`distillab.engine.steps`); no method name appears here.

Per batch: prepare the named inputs (:mod:`distillab.engine.batches`), run the frozen models (or read
their cached outputs), then the method's step runs the trainable models and the objective and updates.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from distillab.config import RunConfig
from distillab.core import dist as comm
from distillab.core.contract import INDEX, LABEL, MAIN_INPUT, TRAINABLE
from distillab.core.dist import DistInfo
from distillab.core.files import load_checkpoint, save_atomic
from distillab.data.augment import AugmentPlan
from distillab.data.base import DataBundle
from distillab.engine.batches import BatchPreparer
from distillab.engine.device import autocast, resolve_device, rng_state, seed_everything, set_rng_state  # noqa: F401
from distillab.engine.evaluation import ENSEMBLE, evaluate_models, extract_features
from distillab.engine.loader import BatchLoader, epoch_generator
from distillab.engine.logger import MetricsLogger, read_metrics
from distillab.engine.models import ModelSet, RunModel, TrainableStep, frozen_batchnorm_stats
from distillab.engine.schedule import build_optimizer, build_scheduler
from distillab.engine.steps import STEPS, StepResult
from distillab.engine.teacher_cache import TeacherCache
from distillab.features import FeatureTaps
from distillab.losses import Batch, EpochContext, ModelOutputs, SetupContext
from distillab.methods import StageSpec
from distillab.objective import Objective

CHECKPOINT_FORMAT = "distillab-checkpoint-v1"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the terms and suggests fixes."""


@dataclass
class EpochState:
    """Running sums for one epoch, kept as tensors on the device (no host sync per step).

    ``correct`` holds each trainable model's correct predictions by name (the student's is train/top1)."""

    samples: int = 0
    correct: dict[str, torch.Tensor] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, n: int, correct: dict[str, torch.Tensor], total: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        self.samples += n
        for name, c in correct.items():
            self.correct[name] = c if name not in self.correct else self.correct[name] + c
        for key, value in (("loss", total.detach()), *logs.items()):
            v = value.float() * n
            self.sums[key] = v if key not in self.sums else self.sums[key] + v

    def means(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {f"train/{k}": float(v) / n for k, v in self.sums.items()}
        out["train/top1"] = 100.0 * float(self.correct.get("student", 0)) / n
        if len(self.correct) > 1:
            out.update({f"train/{name}/top1": 100.0 * float(c) / n for name, c in self.correct.items()})
        return out

    def non_finite(self) -> list[str]:
        return [k for k, v in self.sums.items() if not torch.isfinite(v).all()]

    def reduce(self) -> None:
        """Sum the counts and sums over ranks (one collective), so every rank holds the global epoch."""
        if not comm.is_distributed() or not self.correct:
            return
        names, keys = list(self.correct), sorted(self.sums)
        device = next(iter(self.correct.values())).device
        flat = torch.stack([torch.tensor(float(self.samples), device=device),
                            *(self.correct[n].float() for n in names), *(self.sums[k].float() for k in keys)])
        comm.all_reduce_(flat)
        self.samples = int(flat[0].item())
        self.correct = {n: flat[1 + i] for i, n in enumerate(names)}
        self.sums = {k: flat[1 + len(names) + i] for i, k in enumerate(keys)}


def _no_forward_buffer_sync() -> dict:
    """DDP keyword for "sync buffers once at construction, never in forward" across torch versions."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class Trainer:
    """Train the run's trainable models on ``objective`` for ``cfg.train.epochs`` epochs, logging into
    ``run_dir``. ``models`` holds the named models; ``student`` / ``teacher`` is the short form of the
    common pair."""

    def __init__(self, cfg: RunConfig, *, objective: Objective, data: DataBundle,
                 student: nn.Module | None = None, teacher: nn.Module | None = None,
                 models: ModelSet | None = None, run_dir: Path | None = None,
                 device: torch.device | None = None, dist: DistInfo = DistInfo(),
                 reporter: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.dist = dist
        self.run_dir = run_dir if dist.is_main else None
        self.device = device or resolve_device(cfg.train.device)
        self.report = reporter or (lambda _msg: None)
        t = cfg.train
        if models is None:
            if student is None:
                raise ValueError("give the run's models (models=...) or at least a student")
            models = ModelSet.pair(student, teacher)
        objective.bind(models.roles())
        missing = sorted(objective.needs() - set(models.names()))
        if missing:
            raise ValueError(f"method {cfg.method.name!r} needs model(s) {missing}: set `teacher` in the config")
        self.models = models.keep(objective.needs())
        self.objective = objective
        self.step_fn = STEPS.get(objective.step)
        if dist.enabled and t.sync_bn and self.device.type != "cuda":
            raise ValueError("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): set train.sync_bn=false on CPU")
        memory_format = torch.channels_last if t.channels_last and len(data.input_shape) == 3 else None
        self.models.prepare(self.device, memory_format, sync_bn=dist.enabled and t.sync_bn)
        self.models.resolve_taps(objective.reads())
        self.step_readers = [m for m in self.models if m.name in objective.reads()]  # run at every step
        shapes = self.models.probe(data.field_shape, self.device)
        objective.setup(SetupContext(
            num_classes=data.num_classes, num_train=len(data.train), student_shapes=shapes["student"],
            teacher_shapes=shapes.get("teacher", {}), data=data, train_labels=getattr(data.train, "labels", None),
            student=self.student, teacher=self.teacher, shapes=shapes,
            models={m.name: m.module for m in self.models}, roles=self.models.roles()))
        self.objective.to(self.device)
        if t.compile:  # in place: the modules (and the feature hooks on their submodules) stay the same
            for m in self.models:
                m.module.compile()

        # DDP: one wrapper over the trainable models and the objective's modules (frozen models are
        # replicated, not wrapped). Buffers are not broadcast: memory banks and queues are kept identical by
        # the terms themselves (gathering the global batch), BatchNorm statistics are averaged before
        # evaluations and checkpoints.
        self.step_module: nn.Module = TrainableStep({m.name: m.module for m in self.models.trainable}, self.objective)
        if dist.enabled:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # some modules get no gradient in some steps: pre-training stages train a part, a sequential step
                # one model at a time, and a term may own a head whose output only feeds a memory bank (RDD's
                # teacher head, as in its reference)
                find_unused_parameters=True, **_no_forward_buffer_sync())
        loader_args = dict(device=self.device, num_workers=cfg.data.num_workers, on_device=cfg.data.on_device, dist=dist)
        self.train_loader = BatchLoader(data.train, t.batch_size, shuffle=True, seed=cfg.seed, drop_last=t.drop_last,
                                        **loader_args)
        self.test_loader = BatchLoader(data.test, t.eval_batch_size, shuffle=False, shard="split", **loader_args)
        self.augment = AugmentPlan(data.augment if cfg.data.augment else None, len(data.train),
                                   variants=cfg.data.augment_variants, seed=cfg.seed, device=self.device)
        cached = [m for m in self.step_readers if not m.trainable] if t.teacher_cache else []
        self.batches = BatchPreparer(data, self.augment, {m.input for m in self.models}, keys=bool(cached),
                                     memory_format=memory_format)
        self.caches = {m.name: self._build_teacher_cache(m, shapes[m.name]) for m in cached}
        self.optimizer = build_optimizer(self.models.parameter_groups(list(self.objective.parameters())), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.epochs)
        self.epoch = 0  # completed epochs of the main stage
        self.stage_done: dict[str, int] = {}  # completed epochs of each pre-training stage
        self._stage_optimizer_state: dict | None = None  # for resuming inside a stage
        self.best = {"top1": -1.0, "epoch": 0}
        self.frozen_top1: dict[str, float] = {}  # test top-1 of each frozen model, measured once
        self.logger = MetricsLogger(self.run_dir, tensorboard=t.tensorboard, enabled=dist.is_main,
                                    wandb_project=t.wandb_project, config=cfg.model_dump(mode="json"))

    # ------------------------------------------------------------------ models by their common names

    @property
    def student(self) -> nn.Module:
        return self.models["student"].module

    @property
    def teacher(self) -> nn.Module | None:
        return self.models["teacher"].module if "teacher" in self.models else None

    @property
    def student_taps(self) -> dict[str, str]:
        return self.models["student"].taps

    @property
    def teacher_taps(self) -> dict[str, str]:
        return self.models["teacher"].taps if "teacher" in self.models else {}

    @property
    def teacher_top1(self) -> float | None:
        return self.frozen_top1.get("teacher")

    @property
    def teacher_cache(self) -> TeacherCache | None:
        return self.caches.get("teacher")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "stage_done": dict(self.stage_done),
            "stage_optimizer": self._stage_optimizer_state,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.student.state_dict(),
            "models": {m.name: m.module.state_dict() for m in self.models.trainable if m.name != "student"},
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
            "teacher_top1": self.teacher_top1,
            "frozen_top1": dict(self.frozen_top1),
            "history": self.logger.rows,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("this file is not a distillab training checkpoint (a bare model state dict cannot "
                             "resume a run; load it as student.checkpoint instead)")
        self.student.load_state_dict(state["model"])
        saved = state.get("models", {})
        for m in self.models.trainable:
            if m.name != "student":
                if m.name not in saved:
                    raise ValueError(f"the checkpoint holds no weights for trainable model {m.name!r}: it was written "
                                     "by a run with other models")
                m.module.load_state_dict(saved[m.name])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.stage_done = dict(state.get("stage_done", {}))
        self._stage_optimizer_state = state.get("stage_optimizer")
        self.best = dict(state["best"])
        self.frozen_top1 = dict(state.get("frozen_top1") or {})
        if state.get("teacher_top1") is not None:
            self.frozen_top1.setdefault("teacher", state["teacher_top1"])
        self.logger.restore(state.get("history", []))

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            save_atomic(self.state_dict(), self.run_dir / "checkpoints" / "last.pt")

    def resume(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        self.report(f"resumed from {path} after epoch {self.epoch}")

    # ------------------------------------------------------------------ one batch

    def autocast(self):
        return autocast(self.device, self.cfg.train.bf16)

    def _build_teacher_cache(self, model: RunModel, shapes: dict[str, torch.Size]) -> TeacherCache:
        """The teacher-output cache (``train.teacher_cache``) of one frozen model: logits and pooled
        features only. ``shapes``: its features' probed shapes; the logits have one column per class."""
        maps = sorted(n for n, shape in shapes.items() if len(shape) > 2)
        if maps:
            raise ValueError(
                f"train.teacher_cache stores teacher logits and pooled feature vectors, but method "
                f"{self.cfg.method.name!r} reads feature maps of {model.name!r} ({', '.join(maps)}): turn the "
                "cache off")
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        return TeacherCache(len(self.data.train), self.augment.key_space, self.data.num_classes,
                            {n: tuple(shape[1:]) for n, shape in shapes.items()},
                            dtype=dtypes[self.cfg.train.teacher_cache_dtype], device=self.device,
                            max_bytes=int(self.cfg.train.teacher_cache_max_gb * 2**30))

    def _frozen_outputs(self, fields: dict[str, torch.Tensor], idx: torch.Tensor, keys: torch.Tensor | None,
                        taps: dict[str, FeatureTaps]) -> dict[str, ModelOutputs]:
        """Outputs of the frozen models read at every step (from their caches where there are)."""
        out = {}
        for m in self.step_readers:
            if m.trainable:
                continue
            x = fields[m.input]

            def forward(rows: torch.Tensor | None = None, m: RunModel = m, x: torch.Tensor = x):
                logits = m.module(x if rows is None else x[rows])
                return logits, taps[m.name].pop()

            with torch.no_grad():
                cache = self.caches.get(m.name)
                if cache is None:
                    out[m.name] = ModelOutputs(*forward())
                    continue
                if keys is None:
                    raise ValueError("train.teacher_cache needs an augmentation with keyed parameters "
                                     "(RandomCropFlip, RandomShift1D) or data.augment=false")
                out[m.name] = ModelOutputs(*cache.fetch(cache.keys(idx, keys), forward))
        return out

    def _step_runner(self, fields: dict[str, torch.Tensor], raw: dict[str, torch.Tensor],
                     frozen: dict[str, ModelOutputs], taps: dict[str, FeatureTaps], epoch: int,
                     optimizer: torch.optim.Optimizer):
        """A :class:`~distillab.engine.steps.StepRunner` bound to one batch."""
        trainer = self

        class Runner:
            trainable = [m.name for m in trainer.models.trainable]

            def forward(self, grad: Sequence[str]) -> StepResult:
                with trainer.autocast():
                    targets = {}
                    for m in trainer.models.trainable:  # models without gradients this time: constant targets
                        if m.name not in grad:
                            with torch.no_grad(), frozen_batchnorm_stats(m.module):
                                targets[m.name] = ModelOutputs(m.module(fields[m.input]), taps[m.name].pop())

                    def finish(logits: dict[str, torch.Tensor]) -> tuple:
                        outputs = {**frozen, **targets,
                                   **{n: ModelOutputs(v, taps[n].pop()) for n, v in logits.items()}}
                        batch = Batch(fields[MAIN_INPUT], raw[LABEL], raw[INDEX], outputs["student"],
                                      outputs.get("teacher"), epoch, trainer.objective.stage, outputs, fields)
                        total, logs = trainer.objective(batch)
                        return total, logs, {n: o.logits for n, o in outputs.items() if n in Runner.trainable}

                    inputs = {m.name: fields[m.input] for m in trainer.models.trainable if m.name in grad}
                    return trainer.step_module(inputs, finish)

            def update(self, total: torch.Tensor) -> None:
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()

        return Runner()

    # ------------------------------------------------------------------ loop

    def train_epoch(self, epoch: int, progress: Callable[[int, EpochState], None] | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    student_mode: str = "train") -> EpochState:
        """One pass over the training set. A pre-training stage passes its own optimiser (and no schedule)."""
        if optimizer is None:
            optimizer, scheduler = self.optimizer, self.scheduler
        for m in self.models.trainable:
            m.module.train(student_mode == "train")
        self.objective.train()
        self.train_loader.set_epoch(epoch)
        aug_gen = epoch_generator(self.cfg.seed, epoch, 1, self.device)
        state = EpochState()
        steps = len(self.train_loader)
        with contextlib.ExitStack() as stack:
            taps = {m.name: stack.enter_context(FeatureTaps(m.module, m.taps)) for m in self.models}
            for step, raw in enumerate(self.train_loader, start=1):
                if scheduler is not None:
                    scheduler.set(epoch - 1 + (step - 1) / steps)
                fields, keys = self.batches.train(raw, aug_gen)
                with self.autocast():
                    frozen = self._frozen_outputs(fields, raw[INDEX], keys, taps)
                total, logs, logits = self.step_fn(self._step_runner(fields, raw, frozen, taps, epoch, optimizer))
                y = raw[LABEL]
                state.add(len(y), {n: (v.detach().argmax(1) == y).sum() for n, v in logits.items()}, total, logs)
                if progress is not None:
                    progress(step, state)
        state.reduce()
        self.models.sync_batchnorm_stats()
        bad = state.non_finite()
        if bad:
            stage = self.objective.stage
            where = f"stage {stage!r}, epoch {epoch}" if stage else f"epoch {epoch}"
            raise NonFiniteLossError(
                f"non-finite loss in {where} (terms: {', '.join(bad)}): lower optim.lr, check the loss "
                "weights, or turn off train.bf16; the last good checkpoint is kept in the run folder")
        return state

    def stage_parameters(self, stage: StageSpec) -> list[nn.Parameter]:
        """The parameters a stage trains (see :class:`~distillab.methods.StageSpec`): a trainable model by
        name, its body (``<name>_body``: all but its classifier head), a term, or ``term.submodule``."""
        params: list[nn.Parameter] = []
        for what in stage.train:
            name = what.removesuffix("_body")
            if name in self.models and self.models[name].trainable:
                module = self.models[name].module
                head = getattr(module, "head", None)
                params += [p for n, p in module.named_parameters()
                           if what == name or head is None or not (n == head or n.startswith(head + "."))]
                continue
            term, _, sub = what.partition(".")
            if term not in self.objective.terms:
                raise ValueError(f"stage {stage.name!r} trains {what!r}, which is neither a trainable model "
                                 f"({', '.join(m.name for m in self.models.trainable)}) nor a term of the objective")
            module = self.objective.terms[term]
            params += list(module.get_submodule(sub).parameters() if sub else module.parameters())
        unique = list({id(p): p for p in params}.values())
        if not unique:
            raise ValueError(f"stage {stage.name!r} has nothing to train ({stage.train})")
        return unique

    def run_stage(self, stage: StageSpec) -> None:
        """Run a pre-training stage to its end (resuming inside it if a checkpoint stopped there)."""
        done = self.stage_done.get(stage.name, 0)
        if done >= stage.epochs:
            return
        cfg = self.cfg.optim.model_copy(update={"lr": stage.lr if stage.lr is not None else self.cfg.optim.lr})
        optimizer = build_optimizer(self.stage_parameters(stage), cfg)
        if done and self._stage_optimizer_state is not None:
            optimizer.load_state_dict(self._stage_optimizer_state)
        logger = None
        if self.run_dir is not None:  # each stage logs into its own folder: stage_<name>/metrics.csv
            (self.run_dir / f"stage_{stage.name}").mkdir(exist_ok=True)
            logger = MetricsLogger(self.run_dir / f"stage_{stage.name}", tensorboard=False)
            if done and logger.path.is_file():
                logger.restore([r for r in read_metrics(logger.path) if r["epoch"] <= done])
        self.objective.use_stage(stage.name)
        try:
            for epoch in range(done + 1, stage.epochs + 1):
                tic = time.perf_counter()
                state = self.train_epoch(epoch, optimizer=optimizer, student_mode=stage.student_mode)
                row = {"epoch": epoch, **state.means(), "time/epoch_s": time.perf_counter() - tic}
                if logger is not None:
                    logger.log(row)
                self.report(f"stage {stage.name} epoch {epoch}/{stage.epochs}: loss {row['train/loss']:.4f}")
                self.stage_done[stage.name] = epoch
                self._stage_optimizer_state = optimizer.state_dict() if epoch < stage.epochs else None
                self.save_checkpoint()
        finally:
            self.objective.use_stage(None)

    def log_event(self, message: str) -> None:
        """An event worth keeping: reported, and appended to the run folder's events.log."""
        self.report(message)
        if self.run_dir is not None:
            with open(self.run_dir / "events.log", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {self.epoch + 1}: {message}\n")

    def extract_train_features(self, model: str, names: Sequence[str],
                               indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Features of the training set (or of the samples ``indices``, in that order) from the named
        model, eval mode, test-time transforms; rows follow sample index order."""
        if model not in self.models:
            raise ValueError(f"no {model} model in this run")
        # each rank extracts one contiguous share of the samples; the shares are gathered in order
        loader = BatchLoader(self.data.train, self.cfg.train.eval_batch_size, device=self.device, shuffle=False,
                             num_workers=self.cfg.data.num_workers, on_device=self.cfg.data.on_device,
                             dist=self.dist, shard="split")
        loader.set_subset(indices)
        return extract_features(self.models[model], names, loader, self.batches, self.autocast)

    def epoch_context(self, epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, num_train=len(self.data.train),
                            train_labels=getattr(self.data.train, "labels", None), device=self.device,
                            extract=self.extract_train_features, set_subset=self.train_loader.set_subset,
                            log=self.log_event)

    def evaluate(self, models: Sequence[RunModel] | None = None) -> dict[str, float]:
        """Test metrics of ``models`` (default: every trainable one): ``test/top1`` and ``test/loss`` are the
        student's; with several trainable models each has ``test/<name>/top1`` and ``/loss``, and their
        ensemble (mean probability) ``test/ensemble/...``."""
        models = list(models) if models is not None else self.models.trainable
        several = len(models) > 1
        scores = evaluate_models(models, self.test_loader, self.batches, self.autocast, self.device, ensemble=several)
        first = "student" if "student" in scores else models[0].name
        row = {"test/loss": scores[first]["loss"], "test/top1": scores[first]["top1"]}
        if several:
            for name, s in scores.items():
                row.update({f"test/{name}/loss": s["loss"], f"test/{name}/top1": s["top1"]})
        return row

    def fit(self, progress_factory: Callable | None = None) -> dict:
        """Train from ``self.epoch + 1`` to the last epoch; return the summary."""
        t = self.cfg.train
        for m in self.models.frozen:
            if m.name not in self.frozen_top1:
                self.frozen_top1[m.name] = evaluate_models([m], self.test_loader, self.batches, self.autocast,
                                                           self.device)[m.name]["top1"]
                self.report(f"{m.name} top-1 on the test set: {self.frozen_top1[m.name]:.2f}")
        steps = len(self.train_loader)
        start = time.perf_counter()
        for stage in self.objective.stages:
            self.run_stage(stage)
        with (progress_factory(t.epochs, steps) if progress_factory else contextlib.nullcontext()) as bar:
            if bar is not None:
                bar.advance_epochs(self.epoch)
            while self.epoch < t.epochs:
                epoch = self.epoch + 1
                self.objective.on_epoch_start(self.epoch_context(epoch))
                self.scheduler.set(epoch - 1)
                lr = self.optimizer.param_groups[0]["lr"]
                tic = time.perf_counter()
                state = self.train_epoch(epoch, bar.step_callback(epoch) if bar is not None else None)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - tic
                row = {"epoch": epoch, "lr": lr, **state.means(),
                       "time/epoch_s": elapsed, "throughput/images_per_s": state.samples / max(elapsed, 1e-9)}
                for name, cache in self.caches.items():  # this rank's share of outputs read from the cache
                    row["teacher_cache/hit_rate" if name == "teacher" else f"teacher_cache/{name}/hit_rate"] = \
                        cache.hit_rate
                    cache.reset_counters()
                if epoch % t.eval_every == 0 or epoch == t.epochs:
                    row.update(self.evaluate())
                    if row["test/top1"] > self.best["top1"]:
                        self.best = {"top1": row["test/top1"], "epoch": epoch}
                self.epoch = epoch
                self.logger.log(row)
                if bar is not None:
                    bar.end_epoch(epoch, row)
                if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
                    self.save_checkpoint()
        self.logger.close()
        return self.summary(time.perf_counter() - start)

    def summary(self, wall_s: float) -> dict:
        rows = self.logger.rows
        last = rows[-1] if rows else {}
        several = len(self.models.trainable) > 1
        models = {}
        for m in self.models:
            top1 = (last.get(f"test/{m.name}/top1") if several else last.get("test/top1")) if m.trainable \
                else self.frozen_top1.get(m.name)
            models[m.name] = {"role": m.role, "arch": m.arch, "input": m.input, "test_top1": top1,
                              "params": sum(p.numel() for p in m.module.parameters())}
        out = {
            "test_top1": last.get("test/top1"),
            "reported": "last epoch",
            "best_top1": self.best["top1"],
            "best_epoch": self.best["epoch"],
            "teacher_top1": self.teacher_top1,
            "models": models,
            "epochs": self.epoch,
            "wall_s_this_session": wall_s,
            "train_time_s": sum(r.get("time/epoch_s", 0.0) for r in rows),
            "images_per_s": (sum(r.get("throughput/images_per_s", 0.0) for r in rows) / len(rows)) if rows else None,
            "device": str(self.device),
        }
        if several:
            out["ensemble_top1"] = last.get(f"test/{ENSEMBLE}/top1")
        return out
