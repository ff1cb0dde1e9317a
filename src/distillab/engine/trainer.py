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
import functools
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from distillab.config import ConfigError, RunConfig
from distillab.core.contract import INDEX, LABEL
from distillab.core.dist import DistInfo
from distillab.core.errors import TrainingError
from distillab.core.files import CheckpointError, load_checkpoint, save_atomic
from distillab.data.augment import AugmentPlan
from distillab.data.base import DataBundle
from distillab.engine.batches import BatchPreparer
from distillab.engine.device import autocast, resolve_device, rng_state, set_rng_state
from distillab.engine.evaluation import ENSEMBLE, correct_and_count, evaluate_models, extract_features
from distillab.engine.loader import BatchLoader, SyntheticSteps, epoch_generator
from distillab.engine.logger import MetricsLogger, read_metrics
from distillab.engine.epoch_state import EpochState
from distillab.engine.frozen import FrozenModels, build_cache
from distillab.engine.models import FeatureError, ModelSet, RunModel, TrainableStep
from distillab.engine.schedule import build_optimizer, build_scheduler
from distillab.engine.stages import stage_parameters
from distillab.core.steps import STEPS
from distillab.engine.steps import BatchRunner
from distillab.engine.teacher_cache import TeacherCache
from distillab.features import FeatureTaps
from distillab.losses import EpochContext, SetupContext
from distillab.methods import StageSpec
from distillab.objective import Objective

CHECKPOINT_FORMAT = "distillab-checkpoint-v1"


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the message names the terms and suggests fixes."""


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
        self.run_dir: Path | None = None
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
            raise ConfigError(f"method {cfg.method.name!r} needs model(s) {missing}: set `teacher` in the config")
        self.models = models.keep(objective.needs())
        self.objective = objective
        self.step_fn = STEPS.get(objective.step)
        if dist.enabled and t.sync_bn and self.device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): set train.sync_bn=false on CPU")
        memory_format = torch.channels_last if t.channels_last and len(data.input_shape) == 3 else None
        self.models.prepare(self.device, memory_format, sync_bn=dist.enabled and t.sync_bn)
        try:
            self.models.resolve_taps(objective.reads())
        except FeatureError as exc:
            readers = objective.feature_readers(exc.model, exc.feature)
            raise ConfigError(f"{exc}; choose others with {' or '.join(readers)}") from None
        shapes = self.models.probe(data.field_shape, self.device, torch.long if data.is_tokens else torch.float32)
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
        self.data_free = objective.data_free_steps is not None  # the method makes its own training inputs
        if self.data_free and dist.enabled:
            raise ConfigError(f"method {cfg.method.name!r} makes its training inputs itself and runs in one process: "
                              "start it without torchrun")
        self.train_loader = (SyntheticSteps(objective.data_free_steps, t.batch_size, self.device) if self.data_free else
                             BatchLoader(data.train, t.batch_size, shuffle=True, seed=cfg.seed, drop_last=t.drop_last,
                                         **loader_args))
        self.test_loader = BatchLoader(data.test, t.eval_batch_size, shuffle=False, shard="split", **loader_args)
        self.val_loader = (BatchLoader(data.val, t.eval_batch_size, shuffle=False, shard="split", **loader_args)
                           if data.val is not None else None)
        try:
            self.augment = AugmentPlan(data.augment if cfg.data.augment else None, len(data.train),
                                       variants=cfg.data.augment_variants, seed=cfg.seed, device=self.device)
        except ValueError as exc:  # fixed variants asked of an augmentation that cannot replay its draws
            raise ConfigError(f"data.augment_variants: {exc}") from None
        readers = [m for m in self.models.frozen if m.name in objective.reads()]  # run at every step
        cached = readers if t.teacher_cache else []
        self.batches = BatchPreparer(data, self.augment, {m.input for m in self.models} | objective.fields(),
                                     keys=bool(cached), memory_format=memory_format)
        self.frozen = FrozenModels(readers, {m.name: build_cache(
            m, shapes[m.name], num_samples=len(data.train), key_space=self.augment.key_space,
            logits_shape=(*data.field_shape(m.input), data.num_classes) if data.is_tokens else (data.num_classes,),
            dtype=t.teacher_cache_dtype, device=self.device,
            max_gb=t.teacher_cache_max_gb, method=cfg.method.name) for m in cached})
        self.optimizer = build_optimizer(self.models.parameter_groups(list(self.objective.parameters())), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.epochs)
        # models with their own optimiser (a generator's Adam beside the student's SGD), each with its schedule
        self.own_optimizers = {m.name: build_optimizer(m.module.parameters(), m.optim)
                               for m in self.models.trainable if m.optim is not None}
        self.own_schedulers = {n: build_scheduler(o, self.models[n].optim, t.epochs)
                               for n, o in self.own_optimizers.items()}
        self.epoch = 0  # completed epochs of the main stage
        self.stage_done: dict[str, int] = {}  # completed epochs of each pre-training stage
        self._stage_optimizer_state: dict | None = None  # for resuming inside a stage
        # the selected epoch: by validation where the data set holds one out (never by test), else by test top-1
        self.best = {"top1": -1.0, "epoch": 0}
        self.frozen_top1: dict[str, float] = {}  # test top-1 of each frozen model, measured once
        self.saved: str | None = None  # what the last checkpoint holds ("epoch 3", "stage init, epoch 1")
        self.attach(run_dir)

    def attach(self, run_dir: Path | None) -> None:
        """Write into ``run_dir`` from now on (process 0 only): checkpoints, metrics, events. A run is built
        without a folder, so every check that can fail on a user's input runs before one is made."""
        self.run_dir = run_dir if self.dist.is_main else None
        t = self.cfg.train
        self.logger = MetricsLogger(self.run_dir, tensorboard=t.tensorboard, enabled=self.dist.is_main,
                                    wandb_project=t.wandb_project, config=self.cfg.model_dump(mode="json"))

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
    def caches(self) -> dict[str, TeacherCache]:
        return self.frozen.caches

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
            "own_optimizers": {n: o.state_dict() for n, o in self.own_optimizers.items()},
            "own_schedulers": {n: sc.state_dict() for n, sc in self.own_schedulers.items()},
            "rng": rng_state(),
            "best": dict(self.best),
            "teacher_top1": self.teacher_top1,
            "frozen_top1": dict(self.frozen_top1),
            "history": self.logger.rows,
            **({"tokenizer": self.data.tokenizer} if self.data.tokenizer is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError("this file is not a distillab training checkpoint (a bare model state dict cannot "
                             "resume a run; load it as student.checkpoint instead)")
        ours, theirs = self.data.tokenizer, state.get("tokenizer")
        if ours is not None and theirs is not None and ours.get("hash") != theirs.get("hash"):
            raise CheckpointError(f"this checkpoint was trained with tokenizer {theirs.get('name')!r} (vocabulary "
                                  f"{theirs.get('vocab_size')}, {str(theirs.get('hash'))[:12]}) but the data set now "
                                  f"gives {ours.get('name')!r} (vocabulary {ours.get('vocab_size')}, "
                                  f"{str(ours.get('hash'))[:12]}): resume with the data options it was trained with")
        self.student.load_state_dict(state["model"])
        saved = state.get("models", {})
        for m in self.models.trainable:
            if m.name != "student":
                if m.name not in saved:
                    raise CheckpointError(f"the checkpoint holds no weights for trainable model {m.name!r}: it was written "
                                     "by a run with other models")
                m.module.load_state_dict(saved[m.name])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for name, opt in self.own_optimizers.items():
            opt.load_state_dict(state["own_optimizers"][name])
            self.own_schedulers[name].load_state_dict(state["own_schedulers"][name])
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
        stage = list(self.stage_done)[-1] if self.epoch == 0 and self.stage_done else None
        self.saved = f"stage {stage!r}, epoch {self.stage_done[stage]}" if stage else f"epoch {self.epoch}"

    def resume(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        self.report(f"resumed from {path} after epoch {self.epoch}")

    def autocast(self):
        return autocast(self.device, self.cfg.train.bf16)

    # ------------------------------------------------------------------ loop

    def train_epoch(self, epoch: int, progress: Callable[[int, EpochState], None] | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    student_mode: str = "train") -> EpochState:
        """One pass over the training set. A pre-training stage passes its own optimiser (and no schedule)."""
        in_stage = optimizer is not None
        if optimizer is None:
            optimizer, scheduler = self.optimizer, self.scheduler
        optimizers = {"": optimizer, **({} if in_stage else self.own_optimizers)}  # "": the run's optimiser
        schedulers = ([scheduler] if scheduler is not None else []) + ([] if in_stage else
                                                                        list(self.own_schedulers.values()))
        for m in self.models.trainable:
            m.module.train(student_mode == "train")
        self.objective.train()
        self.train_loader.set_epoch(epoch)
        aug_gen = epoch_generator(self.cfg.seed, epoch, 1, self.device)
        step_gen = epoch_generator(self.cfg.seed, epoch, 2, self.device)  # what a step draws (a generator's noise)
        state = EpochState()
        steps = len(self.train_loader)
        with contextlib.ExitStack() as stack:
            taps = {m.name: stack.enter_context(FeatureTaps(m.module, m.taps)) for m in self.models}
            for step, raw in enumerate(self.train_loader, start=1):
                for sched in schedulers:
                    sched.set(epoch - 1 + (step - 1) / steps)
                if self.data_free:
                    fields, frozen = {}, {}
                else:
                    fields, keys = self.batches.train(raw, aug_gen)
                    frozen = functools.partial(self._frozen_outputs, fields, raw[INDEX], keys, taps)
                runner = BatchRunner(
                    models=self.models, objective=self.objective, step_module=self.step_module, autocast=self.autocast,
                    optimizers=optimizers, fields=fields, labels=raw[LABEL], index=raw[INDEX], frozen=frozen, taps=taps,
                    epoch=epoch, rng=step_gen,
                    run_frozen=lambda new, idx=raw[INDEX]: self.frozen.outputs(new, idx, None, taps, cached=False))
                total, logs, logits = self.step_fn(runner)
                y = runner.labels
                scored = {n: correct_and_count(v.detach(), y) for n, v in logits.items()}
                counted = next(iter(scored.values()))[1] if scored else None
                state.add(len(y), {n: c for n, (c, _) in scored.items()}, total, logs, counted)
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
                "weights, or turn off train.bf16")
        return state

    def _frozen_outputs(self, fields, index, keys, taps) -> dict:
        """The frozen models' outputs for a loader batch (run when a step first reads them: an on-policy
        step that replaces its batch never runs them on the one it was given)."""
        with self.autocast():
            return self.frozen.outputs(fields, index, keys, taps)

    def run_stage(self, stage: StageSpec) -> None:
        """Run a pre-training stage to its end (resuming inside it if a checkpoint stopped there)."""
        done = self.stage_done.get(stage.name, 0)
        if done >= stage.epochs:
            return
        cfg = self.cfg.optim.model_copy(update={"lr": stage.lr if stage.lr is not None else self.cfg.optim.lr})
        optimizer = build_optimizer(stage_parameters(self.models, self.objective, stage), cfg)
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
        tic = time.perf_counter()
        count = len(indices) if indices is not None else len(self.data.train)
        self.report(f"extracting {', '.join(names)} of {model!r} over {count} training samples ...")
        out = extract_features(self.models[model], names, loader, self.batches, self.autocast)
        self.report(f"extracted {', '.join(names)} of {model!r} in {time.perf_counter() - tic:.1f} s")
        return out

    def epoch_context(self, epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, num_train=len(self.data.train),
                            train_labels=getattr(self.data.train, "labels", None), device=self.device,
                            extract=self.extract_train_features, set_subset=self.train_loader.set_subset,
                            log=self.log_event)

    def evaluate(self, models: Sequence[RunModel] | None = None, split: str = "test") -> dict[str, float]:
        """Held-out metrics of ``models`` (default: every trainable one) on ``split`` ("test", or "val": the
        part held out of the training set): ``<split>/top1`` and ``<split>/loss`` are the student's; with
        several trainable models each has ``<split>/<name>/top1`` and ``/loss``, and their ensemble (mean
        probability) ``<split>/ensemble/...``."""
        models = list(models) if models is not None else self.models.evaluated
        several = len(models) > 1
        loader = self.val_loader if split == "val" else self.test_loader
        scores = evaluate_models(models, loader, self.batches, self.autocast, self.device, ensemble=several,
                                 token_bytes=self.data.token_bytes)
        first = "student" if "student" in scores else models[0].name
        row = {f"{split}/{k}": v for k, v in scores[first].items()}  # loss, top1 (+ ppl, bpb of a language model)
        if several:
            for name, s in scores.items():
                row.update({f"{split}/{name}/{k}": v for k, v in s.items()})
        return row

    def select(self, epoch: int, row: dict[str, float]) -> None:
        """Keep ``epoch`` as the best so far if it is: by validation where there is a validation part (top-1,
        or the lowest loss of a language model), else by test top-1 (the reference codebases' "best", an
        optimistic number). ``best["top1"]`` is the test top-1 of the selected epoch either way."""
        if self.val_loader is None:
            if row["test/top1"] > self.best["top1"]:
                self.best = {"top1": row["test/top1"], "epoch": epoch}
            return
        score = -row["val/loss"] if self.data.is_tokens else row["val/top1"]
        if self.best["epoch"] == 0 or score > self.best.get("val_score", -math.inf):
            self.best = {"top1": row["test/top1"], "epoch": epoch, "val_score": score, "val_top1": row["val/top1"]}

    def fit(self, progress_factory: Callable | None = None,
            on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Train from ``self.epoch + 1`` to the last epoch; return the summary. ``on_epoch(epoch, row)`` is
        called after each epoch is logged and checkpointed (a tuning study's pruner reads ``val/*`` there and
        may stop the run by raising: the folder is left as a resumable run)."""
        t = self.cfg.train
        for m in self.models.frozen:
            if m.name not in self.frozen_top1:
                scores = evaluate_models([m], self.test_loader, self.batches, self.autocast, self.device,
                                         token_bytes=self.data.token_bytes)[m.name]
                self.frozen_top1[m.name] = scores["top1"]
                extra = f", {scores['bpb']:.4f} bits per byte" if "bpb" in scores else ""
                self.report(f"{m.name} top-1 on the test set: {self.frozen_top1[m.name]:.2f}{extra}")
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
                for sched in self.own_schedulers.values():
                    sched.set(epoch - 1)
                lr = self.optimizer.param_groups[0]["lr"]
                tic = time.perf_counter()
                state = self.train_epoch(epoch, bar.step_callback(epoch) if bar is not None else None)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - tic
                row = {"epoch": epoch, "lr": lr, **state.means(),
                       "time/epoch_s": elapsed, "throughput/images_per_s": state.samples / max(elapsed, 1e-9)}
                if self.data.is_tokens:  # a language model's samples are sequences: its rate is in tokens
                    row["throughput/tokens_per_s"] = int(state.counted) / max(elapsed, 1e-9)
                for name, cache in self.caches.items():  # this rank's share of outputs read from the cache
                    row["teacher_cache/hit_rate" if name == "teacher" else f"teacher_cache/{name}/hit_rate"] = \
                        cache.hit_rate
                    cache.reset_counters()
                if epoch % t.eval_every == 0 or epoch == t.epochs:
                    if self.val_loader is not None:
                        row.update(self.evaluate(split="val"))
                    row.update(self.evaluate())
                    self.select(epoch, row)
                self.epoch = epoch
                self.logger.log(row)
                if bar is not None:
                    bar.end_epoch(epoch, row)
                if epoch % t.checkpoint_every == 0 or epoch == t.epochs:
                    self.save_checkpoint()
                if on_epoch is not None:
                    on_epoch(epoch, row)
        self.logger.close()
        return self.summary(time.perf_counter() - start)

    def summary(self, wall_s: float) -> dict:
        rows = self.logger.rows
        last = rows[-1] if rows else {}
        evaluated = [m.name for m in self.models.evaluated]
        several = len(evaluated) > 1
        models = {}
        for m in self.models:
            top1 = (last.get(f"test/{m.name}/top1") if several else last.get("test/top1")) if m.name in evaluated \
                else self.frozen_top1.get(m.name)
            models[m.name] = {"role": m.role, "arch": m.arch, "input": m.input, "test_top1": top1,
                              "params": sum(p.numel() for p in m.module.parameters()),
                              **({"from": dict(m.origin)} if m.origin else {})}
        out = {
            "test_top1": last.get("test/top1"),
            "reported": "last epoch",
            "best_top1": self.best["top1"],
            "best_epoch": self.best["epoch"],
            "selected_by": "validation" if self.val_loader is not None else "test",
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
        if self.val_loader is not None:  # the held-out part of the training set, and how it was drawn
            out.update({"val_top1": last.get("val/top1"), "val_loss": last.get("val/loss"),
                        "best_val_top1": self.best.get("val_top1"), "validation": self.data.validation})
        if self.data.is_tokens:  # a language model: held-out loss per token, perplexity, bits per byte
            out.update({"test_loss": last.get("test/loss"), "test_ppl": last.get("test/ppl"),
                        "test_bpb": last.get("test/bpb"), "tokenizer": self.data.tokenizer,
                        "tokens_per_s": (sum(r.get("throughput/tokens_per_s", 0.0) for r in rows) / len(rows))
                        if rows else None})
        return out
