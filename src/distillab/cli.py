"""The ``distillab`` command line: train-teacher, distill, eval, list, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from distillab.cli_common import console, fail, handled, route_warnings
from distillab.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Knowledge distillation: train teachers, distill students, compare methods.")

PLUGIN_GROUP = "distillab.plugins"  # entry points of installed packages that register models, data, losses, methods


def import_plugins(modules: List[str]) -> None:
    """Import every ``distillab.plugins`` entry point of the installed packages, then ``modules`` (``--import``;
    the current folder is searched first), so that what they register is known to every command."""
    import importlib
    import os
    from importlib.metadata import entry_points

    from distillab.core.errors import UsageError

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, with what went wrong
            raise UsageError(f"plugin {ep.name!r} ({ep.value}, entry point group {PLUGIN_GROUP}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name.split(".")[0] and exc.name != name:
                raise  # the module exists but imports something missing: its own traceback says what
            raise UsageError(f"--import {name}: no module {name!r} on the path (the current folder and "
                             "PYTHONPATH are searched): give its dotted name, e.g. --import mypkg.models") from None


def _version(value: bool) -> None:
    if value:
        import distillab

        console.print(f"distillab {distillab.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    imports: List[str] = typer.Option(None, "--import", envvar="DISTILLAB_IMPORT",
                                      help="import this module first: it registers your models, data sets, losses "
                                           "or methods (repeatable; also the DISTILLAB_IMPORT variable)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Knowledge distillation: train teachers, distill students, compare methods."""
    route_warnings()
    with handled():
        import_plugins(list(imports or []))


def _split(config: Optional[str], overrides: List[str], resume: Optional[Path]) -> tuple[Optional[str], List[str]]:
    """With --resume the config file is optional: a first positional with '=' is an override."""
    if config is not None and "=" in config and resume is not None:
        return None, [config, *overrides]
    return config, overrides


def _models_table(summary: dict) -> Table | None:
    """Every model of a run with its test top-1 (and the ensemble's), when there is more than the student."""
    models = summary.get("models") or {}
    if len(models) < 2:
        return None
    table = Table(box=None, pad_edge=False)
    for col in ("model", "role", "arch", "input", "test top-1"):
        table.add_column(col, justify="right" if col == "test top-1" else "left")

    def pct(v) -> str:
        return f"{v:.2f}" if v is not None else "-"

    for name, m in models.items():
        table.add_row(name, m["role"], str(m["arch"]), m["input"], pct(m["test_top1"]))
        if name == [n for n, x in models.items() if x["role"] == "trainable"][-1] and "ensemble_top1" in summary:
            table.add_row("ensemble", "mean prob.", "-", "-", pct(summary["ensemble_top1"]))
    return table


def _train(config: Optional[str], overrides: List[str], resume: Optional[Path], teacher_mode: bool,
           store_result: bool = True, train_teachers: bool = False, replace: bool = False) -> None:
    from distillab.core.dist import DistInfo
    from distillab.runner import find_config, load_run_config, run, train_missing_teachers
    from distillab.store import TeacherStore

    with handled():
        config, overrides = _split(config, overrides, resume)
        if resume is not None and config is None:
            cfg = load_run_config(resume, overrides)
        elif config is None:
            raise ConfigError("give a config file (see configs/), or --resume RUN_DIR")
        else:
            cfg = load_config(find_config(config), overrides)
        if teacher_mode and (cfg.teacher is not None or cfg.models):
            raise ConfigError("train-teacher trains one model on labels alone: remove `teacher` and `models` from "
                              "the config (use `distillab distill` to train against a teacher or with peers)")
        if train_teachers:
            if DistInfo.from_env().enabled:
                raise ConfigError("--train-teachers works in one process: train the teachers first (`distillab "
                                  "train-teacher ...`, or `distillab distill CONFIG --train-teachers` without "
                                  "torchrun), then start the torchrun")
            for path in train_missing_teachers(cfg, console=console):
                console.print(f"stored teacher: {path}")
        store = TeacherStore(cfg.store) if teacher_mode and store_result else None
        if store is not None and not replace:
            store.refuse_stored(cfg)  # before training: an entry is never overwritten silently
        summary, run_dir = run(cfg, resume=resume, console=console, label="teacher" if teacher_mode else "distill")
        if not DistInfo.from_env().is_main:  # under torchrun, rank 0 stores and reports
            return
        if summary.get("nothing_to_do"):
            console.print(f"{run_dir} is finished ({summary['epochs']} of {cfg.train.epochs} epochs, test top-1 "
                          f"{summary['test_top1']:.2f}%): nothing to do, nothing changed; to train longer resume "
                          f"with train.epochs=N (N > {summary['epochs']})", soft_wrap=True)
            return
        if store is not None:
            aside = store.set_aside(cfg) if replace else None
            path = store.put(cfg, run_dir / "model.pt", summary, config=config, overrides=overrides)
            console.print(f"stored teacher: {path}" + (f" (the one it replaces: {aside})" if aside else ""),
                          soft_wrap=True)
    lm = f", {summary['test_bpb']:.4f} bits per byte, perplexity {summary['test_ppl']:.3f}" \
        if summary.get("test_bpb") is not None else ""
    if summary.get("selected_by") == "validation":
        best = f"the epoch best on validation: {summary['best_epoch']} (val top-1 {summary['best_val_top1']:.2f}%, " \
               f"test top-1 {summary['best_top1']:.2f}%)"
    else:
        best = f"best top-1 {summary['best_top1']:.2f}% (epoch {summary['best_epoch']}, chosen on the test set)"
    msg = f"[bold]done[/]: test top-1 {summary['test_top1']:.2f}%{lm} (last epoch), {best}; run folder {run_dir}"
    console.print(msg)
    table = _models_table(summary)
    if table is not None:
        console.print(table)


@app.command("train-teacher")
def train_teacher(
    config: Optional[str] = typer.Argument(None, help="YAML config (e.g. configs/mnist1d/teacher_cnn1d.yaml)"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides, e.g. optim.lr=0.01 seed=3"),
    resume: Optional[Path] = typer.Option(None, help="continue an interrupted run folder"),
    store: bool = typer.Option(True, help="put the trained teacher into the teacher store"),
    replace: bool = typer.Option(False, "--replace", help="if the store holds this config already, train again and "
                                 "replace it (the old entry is moved to <entry>/replaced-<UTC time>/)"),
) -> None:
    """Train a model on labels alone and put it in the teacher store (refused, before training, if the store
    holds this config already: see --replace)."""
    _train(config, overrides or [], resume, teacher_mode=True, store_result=store, replace=replace)


@app.command()
def distill(
    config: Optional[str] = typer.Argument(None, help="YAML config (e.g. configs/mnist1d/kd.yaml)"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides, e.g. method.weights.kd=1 seed=3"),
    resume: Optional[Path] = typer.Option(None, help="continue an interrupted run folder"),
    train_teachers: bool = typer.Option(False, "--train-teachers",
                                        help="first train (and store) every teacher the config finds by its training "
                                             "config that the store does not hold yet"),
) -> None:
    """Train a student with a distillation method (or labels only, method ce), or several models together.

    Several processes: `torchrun --nproc_per_node N -m distillab distill CONFIG ...` (docs/scale.md)."""
    _train(config, overrides or [], resume, teacher_mode=False, train_teachers=train_teachers)


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="model.pt of a run, a run folder, its checkpoints/last.pt, or a "
                                                "foreign state dict"),
    data: Optional[str] = typer.Option(None, help="data set (default: the one the model was trained on)"),
    arch: Optional[str] = typer.Option(None, help="architecture (default: read from the checkpoint)"),
    model: Optional[str] = typer.Option(None, help="in a run folder with several trained models, which one "
                                        "(default: the student)"),
    root: Optional[str] = typer.Option(None, help="data root (default: the one the run read)"),
    device: str = typer.Option("auto", help="cpu, cuda, mps or auto"),
) -> None:
    """Test top-1 of a trained model."""
    import torch

    from distillab.data import build_dataset
    from distillab.engine.device import resolve_device
    from distillab.engine.loader import BatchLoader
    from distillab.models import load_model

    with handled():
        loaded = load_model(checkpoint, name=model, arch=arch)
        data_name = data or loaded.data
        if data_name is None:
            raise ConfigError("this checkpoint does not record its data set: pass --data")
        same = data_name == loaded.data  # the model's own data set: read as its run read it, unless flags say
        bundle = build_dataset(data_name, root=root or (loaded.data_root if same else None),
                               **(loaded.data_options if same else {}))
        if bundle.num_classes != loaded.num_classes:
            raise ConfigError(f"{loaded.path} predicts {loaded.num_classes} classes but data set {data_name!r} has "
                              f"{bundle.num_classes}: evaluate it on the data set it was trained on")
        if loaded.input not in bundle.field_names():
            raise ConfigError(f"{loaded.path} reads input {loaded.input!r}, which data set {data_name!r} does not "
                              f"provide (fields: {', '.join(bundle.field_names())})")
        dev = resolve_device(device)
        net = loaded.model.to(dev).eval()
        correct = n = 0
        with torch.no_grad():
            for batch in BatchLoader(bundle.test, 256, device=dev, shuffle=False):
                x = bundle.prepare_field(loaded.input, batch[loaded.input])
                correct += int((net(x).argmax(1) == batch["label"]).sum())
                n += len(batch["label"])
    console.print(f"{loaded.arch} on {data_name} test ({n} samples): top-1 {100.0 * correct / n:.2f}%")


@app.command("list")
def list_cmd(what: str = typer.Argument("all", help="models, datasets, methods, losses, teachers or all")) -> None:
    """List registered models, data sets, methods, loss terms, or stored teachers."""
    from distillab.data import DATASETS
    from distillab.losses import LOSSES
    from distillab.methods import METHODS
    from distillab.models import MODELS
    from distillab.registry import unknown_name_message
    from distillab.store import TeacherStore

    registries = {"models": MODELS, "datasets": DATASETS, "methods": METHODS, "losses": LOSSES}
    if what not in (*registries, "teachers", "all"):
        fail(ValueError(unknown_name_message("list", what, [*registries, "teachers", "all"])))
    for name, reg in registries.items():
        if what in (name, "all"):
            table = Table(title=name)
            table.add_column("name", style="bold")
            table.add_column("description")
            for entry in reg.entries():
                table.add_row(entry.name, entry.description)
            console.print(table)
    if what in ("teachers", "all"):
        with handled():
            _print_teachers(TeacherStore())


def _print_teachers(store, out=console) -> None:
    """The store as a table (what was trained how, when, how well), then each entry's full path, or why it
    cannot be read."""
    from rich.markup import escape

    from distillab.store import keyed_overrides

    def options(d: dict | None) -> str:
        return escape(" ".join(f"{k}={v}" for k, v in (d or {}).items()))

    entries = store.entries()
    table = Table(title=f"teachers in {store.root}")
    for col in ("data", "arch", "options", "overrides", "trained", "top-1", "key"):  # only free text wraps
        table.add_column(col, overflow="fold", justify="right" if col == "top-1" else "left",
                         no_wrap=col in ("arch", "trained", "top-1", "key"))
    for e in (e for e in entries if e.error is None):
        r = e.record
        data = f"{e.data} ({options(r.get('data_options'))})" if r.get("data_options") else e.data
        over = "?" if r.get("overrides") is None else escape(" ".join(keyed_overrides(r["overrides"]))) or "-"
        top1 = r.get("test_top1")
        table.add_row(data, e.arch, options(r.get("options")) or "-", over, (e.trained() or "-")[:10],
                      f"{top1:.2f}" if isinstance(top1, (int, float)) else "-", e.key)
    out.print(table)
    for e in entries:
        if e.error is None:
            source = e.record.get("config") or "config file not recorded"
            out.print(f"{e.key}  {e.path}  ({source})", soft_wrap=True, highlight=False, markup=False)
        else:
            out.print(f"{e.key}  unreadable: {e.error}", soft_wrap=True, highlight=False, markup=False)


@app.command()
def demo(
    out: str = typer.Option("runs", help="folder for the demo's run folder"),
    tiny: bool = typer.Option(False, help="a seconds-long run of the whole path (1 epoch, 400 samples)"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides applied to all three runs"),
) -> None:
    """MNIST-1D: train a teacher (or reuse it), a labels-only student and a KD student; compare."""
    from distillab.demo import TINY, run_demo

    with handled():
        run_demo(out, (TINY if tiny else []) + list(overrides or []), console=console)


@app.command()
def assistants(
    teacher: str = typer.Argument(..., help="the teacher's architecture, e.g. resnet110"),
    student: str = typer.Argument(..., help="the student's architecture, e.g. resnet20"),
    classes: int = typer.Option(100, help="number of classes the models predict (sizes their classifiers)"),
) -> None:
    """Teacher-assistant candidates (TAKD) between a teacher and a student: the zoo's models of the teacher's
    family in between, with their parameter counts and the one the parameter-midpoint rule picks."""
    with handled():
        from distillab.models import count_parameters, create_model
        from distillab.pipeline_steps import ta_candidates

        found = ta_candidates({"arch": teacher}, {"arch": student}, classes)
        if not found:
            console.print(f"no {teacher}-family model of the zoo lies between {student} and {teacher}")
            return
        t_size = count_parameters(create_model(teacher, num_classes=classes))
        s_size = count_parameters(create_model(student, num_classes=classes))
        target = (t_size * s_size) ** 0.5
        pick = min(found, key=lambda c: abs(c["params"] - target))
        table = Table(title=f"assistants between {student} ({s_size:,}) and {teacher} ({t_size:,} parameters)")
        for col in ("arch", "parameters", "note"):
            table.add_column(col)
        for c in found:
            note = f"closest to the geometric mean ({target:,.0f})" if c is pick else ""
            table.add_row(c["arch"], f"{c['params']:,}", note)
        console.print(table)
        console.print("the paper's best single assistant sat about halfway; configs/mnist1d/takd.yaml picks one by "
                      "accuracy instead (select_ta, rule accuracy_midpoint)", soft_wrap=True)


@app.command()
def pipeline(
    file: str = typer.Argument(..., help="a pipeline YAML (e.g. configs/mnist1d/ban.yaml)"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides for every run step (e.g. train.device=cuda)"),
    out: Optional[Path] = typer.Option(None, help="pipeline folder (default runs/pipelines/<name>); rerun to resume"),
    var: List[str] = typer.Option(None, "--var", help="NAME=VALUE: change one of the pipeline's `vars` (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the pipeline and list its steps in order; run nothing"),
) -> None:
    """Run a pipeline of steps (born-again generations, teacher-assistant chains, data steps), each in its own
    folder: finished steps are skipped, an interrupted one resumes, changed settings are refused."""
    import shlex

    from distillab.pipeline import load_pipeline, run_pipeline, step_state

    with handled():
        pipe = load_pipeline(file, list(var or []))
        if overrides:
            pipe.spec.overrides = [*pipe.spec.overrides, *overrides]
        folder = out or Path("runs") / "pipelines" / pipe.name
        table = Table(title=f"pipeline {pipe.name}: {pipe.spec.description}".rstrip(": "), box=None)
        for col in ("step", "command", "state", "what"):
            table.add_column(col)
        for name in pipe.order:
            step = pipe.step(name)
            what = step.config or json.dumps(step.params)[:60]
            table.add_row(name, step.command, step_state(folder / name), what)
        console.print(table)
        if dry_run:
            return
        command = shlex.join(["distillab", "pipeline", file, *(overrides or []), *(["--out", str(out)] if out else []),
                              *(w for v in var or [] for w in ("--var", v))])
        summary = run_pipeline(pipe, folder, console=console, report=lambda m: console.print(m, soft_wrap=True,
                                                                                            highlight=False),
                               command=command)
    result = Table(title=f"pipeline {pipe.name}: results ({folder})", box=None)
    for col in ("step", "command", "test top-1", "time (s)"):
        result.add_column(col)
    for name, r in summary["steps"].items():
        top1 = r.get("test_top1")
        result.add_row(name, r["command"], f"{top1:.2f}" if isinstance(top1, (int, float)) else str(r.get("arch", "-")),
                       f"{r['seconds']:.0f}")
    for name, e in summary["ensembles"].items():
        result.add_row(name, "ensemble", f"{e['test_top1']:.2f}", "-")
    console.print(result)


@app.command()
def bench(
    suite: str = typer.Argument(..., help="a shipped suite (mnist1d, digits, cifar100-crd, tiny) or a suite YAML"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides for every run, teachers included "
                                                     "(e.g. data.root=/data train.epochs=1)"),
    out: Optional[Path] = typer.Option(None, help="grid folder (default bench/<suite>); rerun to resume"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default: the suite's)"),
    methods: Optional[str] = typer.Option(None, help="comma-separated methods/rows to run (default: all)"),
    pairs: Optional[str] = typer.Option(None, help="comma-separated teacher/student pairs (default: all)"),
    workers: int = typer.Option(1, help="runs trained at once, each in its own process"),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker (default: cores / workers)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the grid (configs, seeds, state) and stop"),
    commands: bool = typer.Option(False, "--commands", help="with --dry-run: print each run's command line"),
    report_only: bool = typer.Option(False, "--report-only", help="aggregate what is there; train nothing"),
) -> None:
    """Run a benchmark grid (pairs x methods x seeds); skip finished runs, resume interrupted ones, report."""
    from distillab.bench.cli import bench_command

    with handled():
        bench_command(suite, list(overrides or []), out=out, seeds=seeds, methods=methods, pairs=pairs,
                      workers=workers, threads=threads, dry_run=dry_run, commands=commands,
                      report_only=report_only, console=console)


@app.command()
def tune(
    config: str = typer.Argument(..., help="YAML config to tune (e.g. configs/mnist1d/at.yaml)"),
    overrides: List[str] = typer.Argument(None, help="dotted overrides applied to every trial, e.g. train.epochs=20"),
    trials: int = typer.Option(20, help="trials in the study (those already done count: rerun to continue)"),
    workers: int = typer.Option(1, help="trials trained at once, each in its own process"),
    space: Optional[Path] = typer.Option(None, help="search space YAML (default: CONFIG's <name>.tune.yaml beside "
                                                    "it, else a space derived from the method's terms)"),
    out: Optional[Path] = typer.Option(None, help="tune folder (default <out_dir>/tune/<config name>)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL shared by several machines (default: a "
                                                     "SQLite file in the tune folder)"),
    pruner: str = typer.Option("median", help="stop weak trials early: median, halving (successive halving) or none"),
    val_fraction: Optional[float] = typer.Option(None, help="share of the training set held out to score trials "
                                                            "(default: the config's data.val_fraction, else 0.1)"),
    final_seeds: int = typer.Option(5, help="seeds of the final test-set comparison of the best settings against "
                                            "the config's (0: none)"),
    seed: int = typer.Option(0, help="seed of the TPE sampler"),
) -> None:
    """Search a method's weights, temperatures or any config key on a validation split (Optuna TPE, pruning),
    then compare the best settings with the config's own on the test set; write best.yaml and a report."""
    from distillab.runner import find_config
    from distillab.tune import tune as run_tune

    with handled():
        try:
            run_tune(find_config(config), list(overrides or []), trials=trials, workers=workers, space_file=space,
                     out=out, storage=storage, pruner=pruner, val_fraction=val_fraction, final_seeds=final_seeds,
                     seed=seed, console=console)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("the study keeps every finished trial, and an interrupted trial resumes from its "
                                    "last checkpoint: run the same command again to continue") from None


def _register_tools() -> None:
    from distillab.cli_tools import probe_command, rdx_command

    app.command("rdx")(rdx_command)
    app.command("probe")(probe_command)


_register_tools()


def main() -> None:
    app(prog_name="distillab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
