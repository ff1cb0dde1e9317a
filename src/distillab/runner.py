"""From a validated config to a finished run folder: check the plan, build data and models; train."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import distillab
from distillab.config import ConfigError, RunConfig, flatten_settings, load_config, to_yaml
from distillab.core import dist as comm
from distillab.core.contract import TRAINABLE
from distillab.core.dist import DistInfo
from distillab.core.errors import TrainingError
from distillab.core.files import CheckpointError, copy_atomic, save_atomic, write_json_atomic, write_text_atomic
from distillab.data import DataBundle, build_dataset
from distillab.data.validation import split_validation
from distillab.engine.device import resolve_device, seed_everything
from distillab.engine.models import ModelSet, RunModel
from distillab.engine.progress import EpochLines, TrainingProgress
from distillab.engine.rundir import create_run_dir
from distillab.engine.trainer import Trainer
from distillab.models import MODELS, create_model, load_model, model_kind
from distillab.objective import build_objective
from distillab.plan import PACKAGED_CONFIGS, ModelPlan, RunPlan, check_plan, find_config  # noqa: F401
from distillab.registry import RegistryError
from distillab.store import TeacherStore, teacher_key


def build_data(cfg: RunConfig) -> DataBundle:
    """The run's data set, with its validation part held out when ``data.val_fraction`` asks for one."""
    d = cfg.data
    data = build_dataset(d.name, root=d.root, download=d.download, **d.options)
    if d.val_fraction is None:
        return data
    try:
        return split_validation(data, d.val_fraction, d.val_seed)
    except ValueError as exc:
        raise ConfigError(f"data.val_fraction: {exc}") from None


def build_model(plan: ModelPlan, data: DataBundle, store: TeacherStore) -> tuple[nn.Module, dict]:
    """The model of one plan entry for ``data`` and where it came from (``{"file": ..., "store_key": ...}`` for
    a loaded one): built new (from its checkpoint if it names one), or loaded from its checkpoint or from the
    teacher store."""
    if plan.source == "pretrained":  # its weights come with its options (a Hugging Face folder)
        try:
            model = create_model(plan.arch, num_classes=data.num_classes, **plan.options)
        except TypeError as exc:
            raise ConfigError(f"{plan.section}.options: {exc}") from None
        return model, {"pretrained": dict(plan.options)}
    if plan.source == "new" and plan.config.checkpoint is None:
        if model_kind(plan.arch) == "generator":  # it makes inputs shaped like the data set's (recorded with it)
            plan.options.setdefault("out_shape", list(data.input_shape))
        try:
            return create_model(plan.arch, num_classes=data.num_classes, **plan.options), {}
        except RegistryError as exc:
            raise ConfigError(f"{plan.section}.arch: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{plan.section}.options: {exc}") from None
    origin: dict = {}
    if plan.source == "store":
        found = store.find(plan.teacher_config)
        if found is None:  # the closest stored teachers, how to select one, or how to train it
            raise ConfigError(store.miss_message(plan.teacher_config, plan.config.config, plan.config.overrides,
                                                 section=plan.section))
        path = found
        origin = {"store_key": teacher_key(plan.teacher_config), "config": plan.config.config,
                  "overrides": list(plan.config.overrides)}
    else:
        path = plan.config.checkpoint
    role = plan.name if plan.name in ("student", "teacher") else plan.section
    if data.is_tokens:  # the vocabulary is checked as a tokenizer, with a message that names both
        loaded = load_model(path, arch=plan.arch, options=plan.options, role=role)
        check_tokenizer(loaded.tokenizer, loaded.num_classes, data, f"{role} checkpoint {str(path)!r}")
    else:
        loaded = load_model(path, arch=plan.arch, options=plan.options, num_classes=data.num_classes, data=data.name,
                            role=role)
    return loaded.model, {"file": str(Path(path).resolve()), **origin}


def _describe_tokenizer(tokenizer: dict | None, vocab: int) -> str:
    if not tokenizer:
        return f"an unrecorded tokenizer (vocabulary {vocab})"
    digest = str(tokenizer.get("hash", ""))[:12]
    return f"tokenizer {tokenizer.get('name')!r} (vocabulary {vocab}{', ' + digest if digest else ''})"


def check_tokenizer(recorded: dict | None, vocab: int, data: DataBundle, what: str) -> None:
    """Refuse a language model trained with another vocabulary or tokenizer than the data set's: its ids
    would mean other text (a ConfigError naming both tokenizers and the fix)."""
    ours = data.tokenizer or {}
    same_vocab = vocab == data.num_classes
    same_tokenizer = recorded is None or not ours or recorded.get("hash") == ours.get("hash")
    if same_vocab and same_tokenizer:
        return
    raise ConfigError(f"{what} was trained with {_describe_tokenizer(recorded, vocab)} but data set {data.name!r} uses "
                      f"{_describe_tokenizer(ours, data.num_classes)}: token ids would mean other text. Use the "
                      f"tokenizer it was trained with (data.options.tokenizer"
                      f"{'=' + str(recorded.get('name')) if recorded else ''}"
                      f"{', data.options.vocab_size=' + str(vocab) if recorded and recorded.get('name') == 'bpe' else ''}"
                      "), or train that model on this tokenizer")


def build_models(plan: RunPlan, data: DataBundle, store: TeacherStore) -> ModelSet:
    """The plan's models, frozen ones built first (their initialisation draws from the global generator
    before the trainable models', as it always has: a run's student starts from the same weights as before)."""
    order = sorted(plan.models, key=lambda m: m.role == TRAINABLE)
    built = {m.name: build_model(m, data, store) for m in order}
    return ModelSet([RunModel(m.name, built[m.name][0], m.role, m.input, m.arch, m.options, m.config.lr,
                              m.config.weight_decay, origin=built[m.name][1], optim=m.config.optim,
                              kind=model_kind(m.arch)) for m in plan.models])


def train_missing_teachers(cfg: RunConfig, console=None) -> list[Path]:
    """Train and store every frozen model the run finds in the store by its training config and the store
    does not hold yet (one ordinary teacher run each, in its own run folder); the stored paths."""
    plan = check_plan(cfg)
    store = TeacherStore(cfg.store)  # where this run will look them up
    stored = []
    for m in plan.models:
        if m.source != "store":
            continue
        if store.find(m.teacher_config) is not None:
            continue
        if console is not None:
            console.print(f"{m.section}: training {m.config.config} {' '.join(m.config.overrides)}".rstrip())
        summary, folder = run(m.teacher_config, console=console, label=m.name)
        stored.append(store.put(m.teacher_config, folder / "model.pt", summary, config=m.config.config,
                                overrides=m.config.overrides))
    return stored


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


# What may differ from a run's saved config when it is resumed: how long it trains, where and how it runs
# and reports. Anything else would continue one run as another (a KD run as a labels-only one).
RESUME_MAY_CHANGE = ("train.epochs", "train.device", "train.threads", "train.progress", "train.tensorboard",
                     "train.wandb_project", "train.eval_batch_size", "train.eval_every", "train.checkpoint_every",
                     "data.root", "data.download", "data.num_workers", "store", "out_dir", "name")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where it stopped, what was kept and how to continue."""


def check_resume(run_dir: Path, cfg: RunConfig) -> dict | None:
    """Refuse to resume ``run_dir`` with settings other than its own (except those of
    :data:`RESUME_MAY_CHANGE`), before anything is written; the run's summary if it is already finished
    (nothing to do), else None."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(f"cannot resume {run_dir}: it holds no checkpoints/last.pt (start a new run instead)")
    whole = ("options", "params", "weights", "stages", "schedule")  # shown as one value each
    saved = flatten_settings(load_run_config(run_dir, []).model_dump(mode="json"), whole=whole)
    asked = flatten_settings(cfg.model_dump(mode="json"), whole=whole)
    changed = [k for k in sorted(set(saved) | set(asked))
               if saved.get(k) != asked.get(k) and not k.startswith(RESUME_MAY_CHANGE)]
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {asked.get(k)!r}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise ConfigError(f"cannot resume {run_dir} with other settings ({shown}{more}): a resumed run keeps the "
                          f"settings it was started with, except {', '.join(RESUME_MAY_CHANGE[:10])}, ...; to train "
                          "with these settings start a new run")
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        import json

        summary = json.loads(summary_file.read_text())
        if int(summary.get("epochs") or 0) >= cfg.train.epochs:
            return summary
    return None


def run(cfg: RunConfig, *, resume: Path | None = None, console=None, progress: bool | None = None,
        report: Callable[[str], None] | None = None, label: str = "train",
        run_dir: Path | None = None, on_epoch: Callable[[int, dict], None] | None = None) -> tuple[dict, Path | None]:
    """Train one run to the end; return (summary, run folder). ``resume`` is an existing run folder;
    ``run_dir`` names the new run's folder exactly (it must not exist yet, or be empty).

    ``on_epoch(epoch, row)``: called after each epoch (its metrics row), on rank 0; it may stop the run by
    raising (a tuning study's pruner).

    ``progress``: True, a progress bar (on a terminal; one plain line per epoch otherwise); False, nothing per
    epoch; None, ``train.progress`` decides (False: plain lines). A resumed run that has no epochs left changes
    nothing and returns its summary with ``nothing_to_do`` set. Ctrl-C raises :class:`RunInterrupted`, saying
    what the last checkpoint holds and the command that continues.

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this: the process group is joined here, rank 0
    alone creates the folder, reports, logs and writes checkpoints, and the other ranks return the same
    summary with the same folder."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    if resume is not None:
        finished = check_resume(resume, cfg)
        if finished is not None:
            return {**finished, "nothing_to_do": True}, Path(resume)
    dist = DistInfo.from_env()
    device = resolve_device(cfg.train.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    comm.init_process_group(dist, device)
    try:
        result = _run(cfg, dist, device, resume=resume, console=console, progress=progress,
                      report=report if dist.is_main else (lambda _msg: None), label=label, run_dir=run_dir,
                      on_epoch=on_epoch if dist.is_main else None)
        # every rank reaches this point before any tears the group down: a rank that closes its gloo
        # connections while a peer still finishes its last collective aborts that peer (SIGABRT)
        comm.barrier()
        return result
    finally:
        comm.destroy_process_group()


def _prepare_run_dir(cfg: RunConfig, dist: DistInfo, resume: Path | None, run_dir: Path | None) -> Path:
    """The run folder: rank 0 checks or creates it, and every rank learns the outcome (path or error)."""
    outcome: tuple[str, str]
    if dist.is_main:
        try:
            if resume is not None:
                folder = Path(resume)
            elif run_dir is not None:
                folder = Path(run_dir)
                if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                    raise ConfigError(f"run folder {folder} already holds files: resume it, or pick another folder")
                folder.mkdir(parents=True, exist_ok=True)
            else:
                folder = create_run_dir(cfg.out_dir, cfg.name or default_name(cfg))
            outcome = ("ok", str(folder))
        except (FileExistsError, NotADirectoryError, PermissionError) as exc:
            outcome = ("ConfigError", f"out_dir {cfg.out_dir!r} cannot hold run folders ({exc.strerror}: "
                                      f"{exc.filename}): choose another out_dir (out_dir=...)")
        except (ConfigError, CheckpointError) as exc:
            outcome = (type(exc).__name__, str(exc))
    outcome = comm.broadcast_object(outcome if dist.is_main else None)
    if outcome[0] != "ok":
        raise (CheckpointError if outcome[0] == "CheckpointError" else ConfigError)(outcome[1])
    return Path(outcome[1])


def _progress(cfg: RunConfig, progress: bool | None, console, label: str, dist: DistInfo):
    """The per-epoch display: a bar on a terminal, plain flushed lines otherwise (logs of nohup, sbatch,
    tee), nothing when the caller asked for none or on other ranks."""
    if progress is False or not dist.is_main:
        return None
    bar = (cfg.train.progress if progress is None else progress) and console is not None and console.is_terminal
    if bar:
        return lambda e, s: TrainingProgress(e, s, label=label, console=console)
    return lambda e, s: EpochLines(e, label=label, console=console)


def _run(cfg: RunConfig, dist: DistInfo, device: torch.device, *, resume: Path | None, console,
         progress: bool | None, report: Callable[[str], None] | None, label: str,
         run_dir: Path | None, on_epoch: Callable[[int, dict], None] | None = None) -> tuple[dict, Path]:
    report = report or (lambda msg: console.print(msg) if console is not None else None)
    plan = check_plan(cfg)  # every option, model name and input checked before anything is read or built
    seed_everything(cfg.seed)  # the same seed on every rank: identical initial weights, banks and queues
    if cfg.train.deterministic:
        # process-wide switches: deterministic kernels (and cuBLAS workspace) for bit-reproducible GPU runs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    data = build_data(cfg)
    # built again from the seed: terms that draw random numbers when constructed draw them here, as always
    objective = build_objective(cfg.method)
    models = build_models(plan, data, TeacherStore(cfg.store))
    # the whole run is built (features probed, terms set up, caches sized) before a folder exists
    trainer = Trainer(cfg, models=models, objective=objective, data=data, device=device, dist=dist, reporter=report)

    run_dir = _prepare_run_dir(cfg, dist, resume, run_dir)
    trainer.attach(run_dir)
    if resume is not None:
        trainer.resume(run_dir / "checkpoints" / "last.pt")  # a failure here leaves the folder as it was
    if dist.is_main:
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
        report(f"run folder: {run_dir}" + (f" ({dist.world_size} processes)" if dist.enabled else ""))
    try:
        bar = _progress(cfg, progress, console, label, dist)
        # the hook only when there is one: a Trainer subclass written for fit(progress_factory) keeps working
        summary = trainer.fit(bar) if on_epoch is None else trainer.fit(bar, on_epoch=on_epoch)
    except KeyboardInterrupt:
        command = "train-teacher" if label == "teacher" else "distill"
        kept = f"the last checkpoint holds {trainer.saved}" if trainer.saved else "no checkpoint was written yet"
        raise RunInterrupted(f"stopped in epoch {trainer.epoch + 1} of {cfg.train.epochs}; {kept} in {run_dir}; "
                             f"continue with: distillab {command} --resume {run_dir}") from None
    except TrainingError as exc:
        kept = f"its last good checkpoint ({trainer.saved})" if trainer.saved else "no checkpoint (none was written yet)"
        raise type(exc)(f"{exc}; {run_dir} keeps {kept}") from None
    summary.update({"run": str(run_dir), "method": cfg.method.name, "student": cfg.student.arch,
                    "teacher": _teacher_name(plan), "data": cfg.data.name, "seed": cfg.seed,
                    "student_params": sum(p.numel() for p in trainer.student.parameters()), "versions": versions(),
                    "world_size": dist.world_size})
    if dist.is_main:
        save_models(trainer, cfg, data, run_dir, summary)
        write_json_atomic(run_dir / "summary.json", summary)
    comm.barrier()  # the other ranks return once the folder is complete
    return summary, run_dir


def save_models(trainer: Trainer, cfg: RunConfig, data: DataBundle, run_dir: Path, summary: dict) -> None:
    """Every trainable model's final weights, each recording its architecture, options, input, classes and
    data set: ``model.pt`` (the student's) and, with several, ``models/<name>.pt`` for each of them."""
    several = len(trainer.models.trainable) > 1
    for m in trainer.models.trainable:
        record = {"model": m.module.state_dict(), "arch": m.arch, "options": m.options, "input": m.input,
                  "num_classes": data.num_classes, "data": cfg.data.name,
                  "test_top1": summary["models"][m.name]["test_top1"], "config": cfg.model_dump(mode="json")}
        if data.tokenizer is not None:
            record["tokenizer"] = data.tokenizer
        if m.name != "student":
            record["name"] = m.name
        save_atomic(record, run_dir / "model.pt" if m.name == "student" else run_dir / "models" / f"{m.name}.pt")
    if several:  # models/ then holds them all: the student's is model.pt, linked
        link = run_dir / "models" / "student.pt"
        link.unlink(missing_ok=True)
        try:
            os.link(run_dir / "model.pt", link)
        except OSError:  # a file system without hard links: a copy
            copy_atomic(run_dir / "model.pt", link)


def _teacher_name(plan: RunPlan) -> str | None:
    frozen = [m for m in plan.models if m.role != TRAINABLE]
    teacher = next((m for m in frozen if m.name == "teacher"), frozen[0] if frozen else None)
    return teacher.arch if teacher is not None else None


def load_run_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_config(path, overrides)


def known_models() -> list[str]:
    return MODELS.names()
