"""The one training loop: teacher training and every distillation method run through it.

A run is: a student (trained), an optional teacher (frozen, eval mode, no_grad), an
:class:`~distillab.objective.Objective` (weighted loss terms, which may own parameters and state),
a :class:`~distillab.data.base.DataBundle`, an optimiser and a schedule. Methods extend the loop only
through the objective's terms (``setup``, ``on_epoch_start``, ``forward``); no method name appears here.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from distillab.config import RunConfig
from distillab.data.base import DataBundle
from distillab.data.augment import AugmentPlan, take_params
from distillab.engine.checkpoint import load_checkpoint, save_atomic
from distillab.engine import dist as comm
from distillab.engine.dist import DistInfo
from distillab.engine.loader import BatchLoader, epoch_generator
from distillab.engine.logger import MetricsLogger, read_metrics
from distillab.engine.schedule import build_optimizer, build_scheduler
from distillab.engine.teacher_cache import TeacherCache
from distillab.features import FeatureTaps, probe_shapes, resolve_feature
from distillab.losses import Batch, EpochContext, ModelOutputs, SetupContext
from distillab.methods import StageSpec
from distillab.objective import Objective

CHECKPOINT_FORMAT = "distillab-checkpoint-v1"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the terms and suggests fixes."""


@dataclass
class EpochState:
    """Running sums for one epoch, kept as tensors on the device (no host sync per step)."""

    samples: int = 0
    correct: torch.Tensor | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, n: int, correct: torch.Tensor, total: torch.Tensor, logs: dict[str, torch.Tensor]) -> None:
        self.samples += n
        self.correct = correct if self.correct is None else self.correct + correct
        for key, value in (("loss", total.detach()), *logs.items()):
            v = value.float() * n
            self.sums[key] = v if key not in self.sums else self.sums[key] + v

    def means(self) -> dict[str, float]:
        n = max(self.samples, 1)
        out = {f"train/{k}": float(v) / n for k, v in self.sums.items()}
        out["train/top1"] = 100.0 * float(self.correct if self.correct is not None else 0) / n
        return out

    def non_finite(self) -> list[str]:
        return [k for k, v in self.sums.items() if not torch.isfinite(v).all()]

    def reduce(self) -> None:
        """Sum the counts and sums over ranks (one collective), so every rank holds the global epoch."""
        if not comm.is_distributed() or self.correct is None:
            return
        keys = sorted(self.sums)
        flat = torch.stack([torch.tensor(float(self.samples), device=self.correct.device),
                            self.correct.float(), *(self.sums[k].float() for k in keys)])
        comm.all_reduce_(flat)
        self.samples, self.correct = int(flat[0].item()), flat[1]
        self.sums = {k: flat[2 + i] for i, k in enumerate(keys)}


def _no_forward_buffer_sync() -> dict:
    """DDP keyword for "sync buffers once at construction, never in forward" across torch versions."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class StudentStep(nn.Module):
    """The student and the objective's trainable modules as one module, so that one
    DistributedDataParallel wrapper averages all their gradients. ``forward(x, finish)`` runs the student
    and hands its logits to ``finish`` (which builds the batch and evaluates the objective)."""

    def __init__(self, student: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, x: torch.Tensor, finish: Callable[[torch.Tensor], tuple]) -> tuple:
        return finish(self.student(x))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available: use train.device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} was asked for but MPS is not available: use train.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train ``student`` on ``objective`` for ``cfg.train.epochs`` epochs, logging into ``run_dir``."""

    def __init__(self, cfg: RunConfig, *, student: nn.Module, objective: Objective, data: DataBundle,
                 teacher: nn.Module | None = None, run_dir: Path | None = None,
                 device: torch.device | None = None, dist: DistInfo = DistInfo(),
                 reporter: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.dist = dist
        self.run_dir = run_dir if dist.is_main else None
        self.device = device or resolve_device(cfg.train.device)
        self.report = reporter or (lambda _msg: None)
        self.memory_format = torch.channels_last if cfg.train.channels_last and len(data.input_shape) == 3 else None
        if objective.needs_teacher and teacher is None:
            raise ValueError(f"method {cfg.method.name!r} needs a teacher: set `teacher` in the config")

        self.student = student.to(self.device)
        if dist.enabled and cfg.train.sync_bn:
            if self.device.type != "cuda":
                raise ValueError("train.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): set "
                                 "train.sync_bn=false on CPU")
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        if self.memory_format is not None:
            self.student = self.student.to(memory_format=self.memory_format)
        self.teacher = None
        if teacher is not None and objective.needs_teacher:
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
            if self.memory_format is not None:
                self.teacher = self.teacher.to(memory_format=self.memory_format)

        self.objective = objective
        self.student_taps = {n: resolve_feature(self.student, n) for n in objective.feature_requests("student")}
        self.teacher_taps = ({n: resolve_feature(self.teacher, n) for n in objective.feature_requests("teacher")}
                             if self.teacher is not None else {})
        train_labels = getattr(data.train, "labels", None)
        teacher_shapes = (probe_shapes(self.teacher, self.teacher_taps, data.input_shape, self.device)
                          if self.teacher is not None else {})
        objective.setup(SetupContext(
            num_classes=data.num_classes, num_train=len(data.train),
            student_shapes=probe_shapes(self.student, self.student_taps, data.input_shape, self.device),
            teacher_shapes=teacher_shapes, data=data, train_labels=train_labels, student=self.student, teacher=self.teacher))
        self.objective.to(self.device)
        if cfg.train.compile:  # in place: the modules (and the feature hooks on their submodules) stay the same
            self.student.compile()
            if self.teacher is not None:
                self.teacher.compile()

        t = cfg.train
        # DDP: one wrapper over the student and the objective's modules (the teacher is replicated, not wrapped).
        # Buffers are not broadcast: memory banks and queues are kept identical by the terms themselves
        # (gathering the global batch), BatchNorm statistics are averaged before evaluations and checkpoints.
        self.step_module: nn.Module = StudentStep(self.student, self.objective)
        if dist.enabled:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # some modules get no gradient in some steps: pre-training stages train a part, and a term may
                # own a head whose output only feeds a memory bank (RDD's teacher head, as in its reference)
                find_unused_parameters=True, **_no_forward_buffer_sync())
        self.train_loader = BatchLoader(data.train, t.batch_size, device=self.device, shuffle=True, seed=cfg.seed,
                                        drop_last=t.drop_last, num_workers=cfg.data.num_workers,
                                        on_device=cfg.data.on_device, dist=dist)
        self.test_loader = BatchLoader(data.test, t.eval_batch_size, device=self.device, shuffle=False,
                                       num_workers=cfg.data.num_workers, on_device=cfg.data.on_device, dist=dist,
                                       shard="split")
        self.augment = AugmentPlan(data.augment if cfg.data.augment else None, len(data.train),
                                   variants=cfg.data.augment_variants, seed=cfg.seed, device=self.device)
        self.teacher_cache = (self._build_teacher_cache(teacher_shapes)
                              if t.teacher_cache and self.teacher is not None else None)
        self.optimizer = build_optimizer(list(self.student.parameters()) + list(self.objective.parameters()),
                                         cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.epochs)
        self.epoch = 0  # completed epochs of the main stage
        self.stage_done: dict[str, int] = {}  # completed epochs of each pre-training stage
        self._stage_optimizer_state: dict | None = None  # for resuming inside a stage
        self.best = {"top1": -1.0, "epoch": 0}
        self.teacher_top1: float | None = None
        self.logger = MetricsLogger(self.run_dir, tensorboard=t.tensorboard, enabled=dist.is_main,
                                    wandb_project=t.wandb_project, config=cfg.model_dump(mode="json"))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "stage_done": dict(self.stage_done),
            "stage_optimizer": self._stage_optimizer_state,
            "config": self.cfg.model_dump(mode="json"),
            "model": self.student.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "best": dict(self.best),
            "teacher_top1": self.teacher_top1,
            "history": self.logger.rows,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("this file is not a distillab training checkpoint (a bare model state dict cannot "
                             "resume a run; load it as student.checkpoint instead)")
        self.student.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.stage_done = dict(state.get("stage_done", {}))
        self._stage_optimizer_state = state.get("stage_optimizer")
        self.best = dict(state["best"])
        self.teacher_top1 = state.get("teacher_top1")
        self.logger.restore(state.get("history", []))

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            save_atomic(self.state_dict(), self.run_dir / "checkpoints" / "last.pt")

    def resume(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        self.report(f"resumed from {path} after epoch {self.epoch}")

    # ------------------------------------------------------------------ loop

    def _autocast(self):
        if not self.cfg.train.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def _build_teacher_cache(self, shapes: dict[str, torch.Size]) -> TeacherCache:
        """The teacher-output cache (``train.teacher_cache``): logits and pooled teacher features only.
        ``shapes``: the teacher features' probed shapes; the logits have one column per class."""
        maps = sorted(n for n, shape in shapes.items() if len(shape) > 2)
        if maps:
            raise ValueError(
                f"train.teacher_cache stores teacher logits and pooled feature vectors, but method "
                f"{self.cfg.method.name!r} reads teacher feature maps ({', '.join(maps)}): turn the cache off")
        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        return TeacherCache(len(self.data.train), self.augment.key_space, self.data.num_classes,
                            {n: tuple(shape[1:]) for n, shape in shapes.items()},
                            dtype=dtypes[self.cfg.train.teacher_cache_dtype], device=self.device,
                            max_bytes=int(self.cfg.train.teacher_cache_max_gb * 2**30))

    def _augmented_batch(self, x: torch.Tensor, idx: torch.Tensor,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised, augmented batch and the augmentation keys of its samples (None if not keyed).

        The parameters are drawn for the global batch (all ranks' indices, in rank order) from the epoch's
        shared generator, and this rank's rows taken: every rank draws what one process would."""
        x = self.data.test_transform(x)
        if not self.augment.active:
            return x, (torch.zeros_like(idx) if self.teacher_cache is not None else None)
        if not self.augment.keyed:
            return self.augment.augment_plain(x, generator), None
        global_idx = comm.gather_cat(idx)
        params, keys = self.augment.draw(global_idx, generator)
        if comm.is_distributed():
            rows = comm.local_slice(len(global_idx))
            params, keys = take_params(params, rows), keys[rows]
        return self.augment.apply(x, params), keys

    def _teacher_outputs(self, x: torch.Tensor, idx: torch.Tensor, keys: torch.Tensor | None,
                         taps: FeatureTaps) -> ModelOutputs:
        def forward(rows: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logits = self.teacher(x if rows is None else x[rows])
            return logits, taps.pop()

        with torch.no_grad():
            if self.teacher_cache is None:
                return ModelOutputs(*forward())
            if keys is None:
                raise ValueError("train.teacher_cache needs an augmentation with keyed parameters "
                                 "(RandomCropFlip, RandomShift1D) or data.augment=false")
            logits, feats = self.teacher_cache.fetch(self.teacher_cache.keys(idx, keys), forward)
            return ModelOutputs(logits, feats)

    def train_epoch(self, epoch: int, progress: Callable[[int, EpochState], None] | None = None, *,
                    optimizer: torch.optim.Optimizer | None = None, scheduler=None,
                    student_mode: str = "train") -> EpochState:
        """One pass over the training set. A pre-training stage passes its own optimiser (and no schedule)."""
        if optimizer is None:
            optimizer, scheduler = self.optimizer, self.scheduler
        stage = self.objective.stage
        self.student.train(student_mode == "train")
        self.objective.train()
        self.train_loader.set_epoch(epoch)
        aug_gen = epoch_generator(self.cfg.seed, epoch, 1, self.device)
        state = EpochState()
        with FeatureTaps(self.student, self.student_taps) as s_taps, \
                FeatureTaps(self.teacher, self.teacher_taps) if self.teacher is not None else contextlib.nullcontext() as t_taps:
            steps = len(self.train_loader)
            for step, (x, y, idx) in enumerate(self.train_loader, start=1):
                if scheduler is not None:
                    scheduler.set(epoch - 1 + (step - 1) / steps)
                x, keys = self._augmented_batch(x, idx, aug_gen)
                x = self._prepare(x)
                with self._autocast():
                    teacher_out = (self._teacher_outputs(x, idx, keys, t_taps)
                                   if self.teacher is not None else None)

                    def finish(s_logits: torch.Tensor) -> tuple:
                        batch = Batch(x, y, idx, ModelOutputs(s_logits, s_taps.pop()), teacher_out, epoch, stage)
                        return (*self.objective(batch), s_logits)

                    total, logs, s_logits = self.step_module(x, finish)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                state.add(len(y), (s_logits.detach().argmax(1) == y).sum(), total, logs)
                if progress is not None:
                    progress(step, state)
        state.reduce()
        self.sync_batchnorm_stats()
        bad = state.non_finite()
        if bad:
            where = f"stage {stage!r}, epoch {epoch}" if stage else f"epoch {epoch}"
            raise NonFiniteLossError(
                f"non-finite loss in {where} (terms: {', '.join(bad)}): lower optim.lr, check the loss "
                "weights, or turn off train.bf16; the last good checkpoint is kept in the run folder")
        return state

    def sync_batchnorm_stats(self) -> None:
        """Average the student's BatchNorm running statistics over ranks (each rank normalised its own
        slice of the batches), so that evaluation and checkpoints see one model. No-op for one process."""
        if not comm.is_distributed():
            return
        for module in self.student.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for buf in (module.running_mean, module.running_var):
                    if buf is not None:
                        comm.all_reduce_(buf, "mean")

    def stage_parameters(self, stage: StageSpec) -> list[nn.Parameter]:
        """The parameters a stage trains (see :class:`~distillab.methods.StageSpec`)."""
        params: list[nn.Parameter] = []
        head = getattr(self.student, "head", None)
        for what in stage.train:
            if what == "student":
                params += list(self.student.parameters())
            elif what == "student_body":
                params += [p for n, p in self.student.named_parameters()
                           if head is None or not (n == head or n.startswith(head + "."))]
            else:
                term, _, sub = what.partition(".")
                if term not in self.objective.terms:
                    raise ValueError(f"stage {stage.name!r} trains {what!r}, which is not a term of the objective")
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

    @torch.no_grad()
    def extract_train_features(self, side: str, names: Sequence[str],
                               indices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Features of the training set (or of the samples ``indices``, in that order), eval mode,
        test-time transforms; rows follow sample index order."""
        model = self.student if side == "student" else self.teacher
        if model is None:
            raise ValueError(f"no {side} model in this run")
        taps = {n: resolve_feature(model, n) for n in names}
        # each rank extracts one contiguous share of the samples; the shares are gathered in order
        loader = BatchLoader(self.data.train, self.cfg.train.eval_batch_size, device=self.device, shuffle=False,
                             num_workers=self.cfg.data.num_workers, on_device=self.cfg.data.on_device,
                             dist=self.dist, shard="split")
        loader.set_subset(indices)
        was_training = model.training
        model.eval()
        out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        try:
            with FeatureTaps(model, taps) as t:
                for x, _, _ in loader:
                    with self._autocast():
                        model(self._prepare(self.data.test_transform(x)))
                    for n, f in t.pop().items():
                        out[n].append(f.float())
        finally:
            model.train(was_training)
        return {n: comm.gather_varsize(torch.cat(v)) for n, v in out.items()}

    def epoch_context(self, epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, num_train=len(self.data.train),
                            train_labels=getattr(self.data.train, "labels", None), device=self.device,
                            extract=self.extract_train_features, set_subset=self.train_loader.set_subset,
                            log=self.log_event)

    @torch.no_grad()
    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        model = model or self.student
        was_training = model.training
        model.eval()
        correct = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        n = 0
        for x, y, _ in self.test_loader:
            x = self._prepare(self.data.test_transform(x))
            with self._autocast():
                logits = model(x).float()
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
        model.train(was_training)
        totals = comm.all_reduce_(torch.stack([loss, correct.float(), torch.tensor(float(n), device=self.device)]))
        loss, correct, n = float(totals[0]), float(totals[1]), int(totals[2].item())
        return {"test/loss": loss / max(n, 1), "test/top1": 100.0 * correct / max(n, 1)}

    def fit(self, progress_factory: Callable | None = None) -> dict:
        """Train from ``self.epoch + 1`` to the last epoch; return the summary."""
        t = self.cfg.train
        if self.teacher is not None and self.teacher_top1 is None:
            self.teacher_top1 = self.evaluate(self.teacher)["test/top1"]
            self.report(f"teacher top-1 on the test set: {self.teacher_top1:.2f}")
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
                if self.teacher_cache is not None:  # this rank's share of teacher outputs read from the cache
                    row["teacher_cache/hit_rate"] = self.teacher_cache.hit_rate
                    self.teacher_cache.reset_counters()
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
        return {
            "test_top1": last.get("test/top1"),
            "reported": "last epoch",
            "best_top1": self.best["top1"],
            "best_epoch": self.best["epoch"],
            "teacher_top1": self.teacher_top1,
            "epochs": self.epoch,
            "wall_s_this_session": wall_s,
            "train_time_s": sum(r.get("time/epoch_s", 0.0) for r in rows),
            "images_per_s": (sum(r.get("throughput/images_per_s", 0.0) for r in rows) / len(rows)) if rows else None,
            "device": str(self.device),
        }
