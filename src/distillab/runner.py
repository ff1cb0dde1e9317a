"""From a validated config to a finished run folder: build data, models, teacher and objective; train."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import distillab
from distillab.config import ConfigError, ModelConfig, RunConfig, load_config, to_yaml
from distillab.data import DataBundle, build_dataset
from distillab.engine.checkpoint import CheckpointError, load_checkpoint, save_atomic
from distillab.engine import dist as comm
from distillab.engine.dist import DistInfo
from distillab.engine.progress import TrainingProgress
from distillab.engine.rundir import create_run_dir, write_json_atomic
from distillab.engine.trainer import Trainer, resolve_device, seed_everything
from distillab.models import MODELS, create_model, load_state_dict_compat
from distillab.objective import build_objective
from distillab.registry import RegistryError
from distillab.store import TeacherStore

PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def find_config(path: str | Path) -> Path:
    """A config path as given, or else relative to the configs shipped with distillab."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (PACKAGED_CONFIGS / p, PACKAGED_CONFIGS / Path(*p.parts[1:]) if p.parts[:1] == ("configs",) else None):
        if candidate is not None and candidate.is_file():
            return candidate
    raise ConfigError(f"config file {str(path)!r} does not exist (also looked in {PACKAGED_CONFIGS})")


def build_data(cfg: RunConfig) -> DataBundle:
    d = cfg.data
    return build_dataset(d.name, root=d.root, download=d.download, **d.options)


def _head_rows(state: dict, model: nn.Module) -> tuple[int, int] | None:
    """(rows in the checkpoint's classifier, rows in the model's) when they differ."""
    head = getattr(model, "head", None)
    if head is None:
        return None
    for key in (f"{head}.weight", f"{head}.0.weight"):
        if key in state and key in model.state_dict():
            got, want = state[key].shape[0], model.state_dict()[key].shape[0]
            return (got, want) if got != want else None
    return None


def build_model(mcfg: ModelConfig, data: DataBundle, role: str) -> nn.Module:
    """Create a registered model for ``data`` and load its checkpoint, if any, strictly."""
    try:
        model = create_model(mcfg.arch, num_classes=data.num_classes, **mcfg.options)
    except RegistryError as exc:
        raise ConfigError(f"{role}.arch: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{role}.options: {exc}") from None
    if mcfg.checkpoint:
        state = load_checkpoint(mcfg.checkpoint)
        inner = state.get("model", state.get("state_dict", state.get("net", state)))
        inner = {k.removeprefix("module."): v for k, v in inner.items()} if isinstance(inner, dict) else inner
        mismatch = _head_rows(inner, model) if isinstance(inner, dict) else None
        if mismatch:
            raise ConfigError(
                f"{role} checkpoint {mcfg.checkpoint!r} has {mismatch[0]} output classes but data set "
                f"{data.name!r} has {mismatch[1]}: use a {role} trained on {data.name}")
        try:
            load_state_dict_compat(model, state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{role} checkpoint {mcfg.checkpoint!r} does not fit architecture {mcfg.arch!r}: {exc}") from None
    return model


def resolve_teacher(cfg: RunConfig, data: DataBundle, store: TeacherStore) -> nn.Module | None:
    """The teacher by checkpoint path, or by its training config in the store."""
    t = cfg.teacher
    if t is None:
        return None
    if t.checkpoint is None and t.config is None:
        raise ConfigError("teacher: give `checkpoint` (a file) or `config` (a train-teacher YAML found in the store)")
    if t.checkpoint is not None:
        # architecture and options: the config's, else the checkpoint's record, else the teacher config's
        meta = load_checkpoint(t.checkpoint)
        tcfg = load_config(find_config(t.config), t.overrides) if t.config is not None else None
        arch = t.arch or meta.get("arch") or (tcfg.student.arch if tcfg else None)
        if arch is None:
            raise ConfigError(f"teacher.arch is not set and checkpoint {t.checkpoint!r} does not name its "
                              "architecture: set teacher.arch")
        options = t.options or meta.get("options") or (tcfg.student.options if tcfg and tcfg.student.arch == arch
                                                       else {})
        return build_model(ModelConfig(arch=arch, options=options, checkpoint=t.checkpoint), data, "teacher")
    tcfg = load_config(find_config(t.config), t.overrides)
    if tcfg.data.name != cfg.data.name:
        raise ConfigError(f"teacher config {t.config!r} trains on {tcfg.data.name!r} but this run uses "
                          f"{cfg.data.name!r}")
    found = store.find(tcfg)
    if found is None:
        command = " ".join(["distillab train-teacher", t.config, *t.overrides])
        raise ConfigError(f"no teacher trained with {t.config!r} in the store {store.root}: run "
                          f"`{command}` first, or set teacher.checkpoint")
    return build_model(ModelConfig(arch=tcfg.student.arch, options=tcfg.student.options, checkpoint=str(found)),
                       data, "teacher")


def default_name(cfg: RunConfig) -> str:
    return f"{cfg.method.name}-{cfg.student.arch}-{cfg.data.name}-s{cfg.seed}"


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {"distillab": distillab.__version__, "torch": torch.__version__, "python": platform.python_version()}


def run(cfg: RunConfig, *, resume: Path | None = None, console=None, progress: bool | None = None,
        report: Callable[[str], None] | None = None, label: str = "train",
        run_dir: Path | None = None) -> tuple[dict, Path | None]:
    """Train one run to the end; return (summary, run folder). ``resume`` is an existing run folder;
    ``run_dir`` names the new run's folder exactly (it must not exist yet, or be empty).

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this: the process group is joined here, rank 0
    alone creates the folder, reports, logs and writes checkpoints, and the other ranks return the same
    summary with the same folder."""
    dist = DistInfo.from_env()
    device = resolve_device(cfg.train.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    comm.init_process_group(dist, device)
    try:
        return _run(cfg, dist, device, resume=resume, console=console, progress=progress,
                    report=report if dist.is_main else (lambda _msg: None), label=label, run_dir=run_dir)
    finally:
        comm.destroy_process_group()


def _prepare_run_dir(cfg: RunConfig, dist: DistInfo, resume: Path | None, run_dir: Path | None) -> Path:
    """The run folder: rank 0 checks or creates it, and every rank learns the outcome (path or error)."""
    outcome: tuple[str, str]
    if dist.is_main:
        try:
            if resume is not None:
                folder = Path(resume)
                if not (folder / "checkpoints" / "last.pt").is_file():
                    raise CheckpointError(f"cannot resume {folder}: it holds no checkpoints/last.pt")
            elif run_dir is not None:
                folder = Path(run_dir)
                if folder.exists() and any(folder.iterdir()):
                    raise ConfigError(f"run folder {folder} already holds files: resume it, or pick another folder")
                folder.mkdir(parents=True, exist_ok=True)
            else:
                folder = create_run_dir(cfg.out_dir, cfg.name or default_name(cfg))
            outcome = ("ok", str(folder))
        except (ConfigError, CheckpointError) as exc:
            outcome = (type(exc).__name__, str(exc))
    outcome = comm.broadcast_object(outcome if dist.is_main else None)
    if outcome[0] != "ok":
        raise (CheckpointError if outcome[0] == "CheckpointError" else ConfigError)(outcome[1])
    return Path(outcome[1])


def _run(cfg: RunConfig, dist: DistInfo, device: torch.device, *, resume: Path | None, console,
         progress: bool | None, report: Callable[[str], None] | None, label: str,
         run_dir: Path | None) -> tuple[dict, Path]:
    report = report or (lambda msg: console.print(msg) if console is not None else None)
    seed_everything(cfg.seed)  # the same seed on every rank: identical initial weights, banks and queues
    if cfg.train.deterministic:
        # process-wide switches: deterministic kernels (and cuBLAS workspace) for bit-reproducible GPU runs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    data = build_data(cfg)
    objective = build_objective(cfg.method)
    # a labels-only objective never loads a teacher, even when the config names one
    teacher = resolve_teacher(cfg, data, TeacherStore(cfg.store)) if objective.needs_teacher else None
    if objective.needs_teacher and teacher is None:
        raise ConfigError(f"method {cfg.method.name!r} needs a teacher: set teacher.checkpoint or teacher.config")
    student = build_model(cfg.student, data, "student")

    run_dir = _prepare_run_dir(cfg, dist, resume, run_dir)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        report(f"run folder: {run_dir}" + (f" ({dist.world_size} processes)" if dist.enabled else ""))

    trainer = Trainer(cfg, student=student, objective=objective, data=data, teacher=teacher, run_dir=run_dir,
                      device=device, dist=dist, reporter=report)
    if resume is not None:
        trainer.resume(run_dir / "checkpoints" / "last.pt")
    show = cfg.train.progress if progress is None else progress
    factory = (lambda e, s: TrainingProgress(e, s, label=label, console=console)) if show and dist.is_main else None
    summary = trainer.fit(factory)
    summary.update({"run": str(run_dir), "method": cfg.method.name, "student": cfg.student.arch,
                    "teacher": _teacher_name(cfg), "data": cfg.data.name, "seed": cfg.seed,
                    "student_params": sum(p.numel() for p in student.parameters()), "versions": versions(),
                    "world_size": dist.world_size})
    if dist.is_main:
        save_atomic({"model": trainer.student.state_dict(), "arch": cfg.student.arch, "options": cfg.student.options,
                     "num_classes": data.num_classes, "data": cfg.data.name, "test_top1": summary["test_top1"],
                     "config": cfg.model_dump(mode="json")}, run_dir / "model.pt")
        write_json_atomic(run_dir / "summary.json", summary)
    comm.barrier()  # the other ranks return once the folder is complete
    return summary, run_dir


def _teacher_name(cfg: RunConfig) -> str | None:
    if cfg.teacher is None:
        return None
    if cfg.teacher.arch:
        return cfg.teacher.arch
    if cfg.teacher.config:
        try:
            return load_config(find_config(cfg.teacher.config)).student.arch
        except ConfigError:
            return None
    return None


def load_run_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_config(path, overrides)


def known_models() -> list[str]:
    return MODELS.names()
