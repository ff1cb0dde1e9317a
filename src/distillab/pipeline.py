"""Pipelines: named steps run in order, each an ordinary run (or a data step), later steps reading earlier ones.

A pipeline file::

    description: Born-again networks on MNIST-1D
    overrides: [train.tensorboard=false]          # every run step
    steps:
      - name: gen0
        command: train-teacher                    # or distill, or a data step (distillab.pipeline_steps)
        config: configs/mnist1d/teacher_cnn1d.yaml
        overrides: [model.options.width=16]
      - name: gen1
        command: distill
        config: configs/mnist1d/ban.yaml
        overrides: ["teacher.checkpoint=${gen0.model}"]
    ensembles: {bane: [gen1, gen2, gen3]}        # mean probability of these steps' models, evaluated at the end

``${step.output}`` in a step's overrides or params stands for an output of another step: ``model`` (its
``model.pt``), ``run`` (its run folder), or what a data step makes (``data``: a data set folder, ``arch``,
``options``, ...). Steps run in dependency order (the order written where no reference decides); a reference
to a step that does not exist, to an output a step does not make, or a cycle is refused before anything runs.

``distillab pipeline FILE`` gives each step its own folder ``<out>/<step>``: a finished step is skipped, an
interrupted one resumes from its last checkpoint (ending with the weights of an uninterrupted pipeline), and a
step whose settings changed under an existing folder is refused rather than mixed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from distillab.config import ConfigError, RunConfig, load_config
from distillab.core.files import write_json_atomic, write_text_atomic
from distillab.registry import Registry, unknown_name_message

REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_.]*)\}")
RUN_COMMANDS = ("train-teacher", "distill")
VARS = "vars"  # ${vars.NAME}: a value of the pipeline's `vars`
RUN_OUTPUTS = ("model", "run")
DONE, PARTIAL, NEW = "done", "partial", "new"

# Data steps (synthesis, pseudo-labelling, model selection): name -> DataStep, registered in pipeline_steps.py
PIPELINE_STEPS: Registry = Registry("pipeline step")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepSpec(_Strict):
    name: str
    command: str  # train-teacher | distill | a registered data step
    config: str | None = None  # a run config (run steps)
    overrides: list[str] = Field(default_factory=list)  # dotted overrides of the run config; ${step.output} allowed
    params: dict[str, Any] = Field(default_factory=dict)  # a data step's options; ${step.output} allowed in values
    store: bool = False  # run steps: also put the trained model into the teacher store

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", v):
            raise ValueError("a step name is letters, digits, _ and - (starting with a letter or _)")
        if v == VARS:
            raise ValueError("'vars' names the pipeline's variables (${vars.NAME}), not a step")
        return v


class PipelineSpec(_Strict):
    description: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)  # ${vars.NAME} in steps; `--var NAME=VALUE` changes one
    result: str | None = None  # the step whose model is the pipeline's result (bench rows report it)
    overrides: list[str] = Field(default_factory=list)  # every run step's, before its own
    steps: list[StepSpec]
    ensembles: dict[str, list[str]] = Field(default_factory=dict)  # name -> steps whose models are averaged


@dataclass
class DataStep:
    """A step that is not an ordinary run. ``run(params, folder, ctx)`` does the work resumably inside
    ``folder`` (a checkpoint of its own, ``step.json`` last when done) and returns its outputs; ``outputs``
    names them, for checking references before anything runs."""

    run: Callable[[dict, Path, "StepContext"], dict[str, Any]]
    outputs: tuple[str, ...]
    description: str = ""


@dataclass
class StepContext:
    report: Callable[[str], None]
    console: Any = None
    overrides: list[str] = field(default_factory=list)  # the pipeline's run overrides (data steps may run runs)


@dataclass
class Pipeline:
    name: str
    spec: PipelineSpec
    path: Path
    order: list[str]  # steps in the order they run

    def step(self, name: str) -> StepSpec:
        return next(s for s in self.spec.steps if s.name == name)


def _refs(step: StepSpec) -> list[tuple[str, str]]:
    texts = list(step.overrides) + [json.dumps(step.params)] + ([step.config] if step.config else [])
    return [(m.group(1), m.group(2)) for text in texts for m in REF.finditer(text)]


def _outputs(step: StepSpec) -> tuple[str, ...]:
    if step.command in RUN_COMMANDS:
        return RUN_OUTPUTS
    return PIPELINE_STEPS.get(step.command).outputs


def _check(spec: PipelineSpec, source: str) -> list[str]:
    """Every step and reference checked; the order the steps run in."""
    from distillab.plan import find_config

    names = [s.name for s in spec.steps]
    if len(set(names)) != len(names):
        raise ConfigError(f"pipeline {source}: step names must be unique, got {names}")
    deps: dict[str, list[str]] = {}
    for step in spec.steps:
        where = f"pipeline {source}, step {step.name!r}"
        if step.command in RUN_COMMANDS:
            if step.config is None:
                raise ConfigError(f"{where}: a {step.command} step needs `config` (a run config file)")
            if step.params:
                raise ConfigError(f"{where}: `params` are for data steps; give a run step `overrides`")
        else:
            try:
                PIPELINE_STEPS.get(step.command)
            except KeyError:
                raise ConfigError(f"{where}: " + unknown_name_message(
                    "step command", step.command, [*RUN_COMMANDS, *PIPELINE_STEPS.names()])) from None
            if step.config is not None or step.overrides or step.store:
                raise ConfigError(f"{where}: a {step.command!r} step takes `params`, not config/overrides/store")
        deps[step.name] = []
        for ref_step, output in _refs(step):
            if ref_step == VARS:
                if output not in spec.vars:
                    raise ConfigError(f"{where} refers to ${{vars.{output}}}, but the pipeline's `vars` have "
                                      f"{', '.join(spec.vars) or 'none'}")
                continue
            if ref_step not in names:
                raise ConfigError(f"{where} refers to ${{{ref_step}.{output}}}, but there is no step {ref_step!r}: "
                                  + unknown_name_message("step", ref_step, names).split(": ", 1)[1])
            made = _outputs(spec.steps[names.index(ref_step)])
            if output.split(".")[0] not in made:
                raise ConfigError(f"{where} refers to ${{{ref_step}.{output}}}, but step {ref_step!r} makes "
                                  f"{', '.join(made)}")
            if ref_step == step.name:
                raise ConfigError(f"{where} refers to its own output ${{{ref_step}.{output}}}")
            deps[step.name].append(ref_step)
        if step.command in RUN_COMMANDS and not REF.search(step.config):
            find_config(step.config)  # the file exists (its contents are checked when the step starts)
    if spec.result is not None and spec.result not in names:
        raise ConfigError(f"pipeline {source}: result {spec.result!r} is not a step (steps: {', '.join(names)})")
    for name, members in spec.ensembles.items():
        unknown = [m for m in members if m not in names]
        if unknown or len(members) < 2:
            raise ConfigError(f"pipeline {source}: ensemble {name!r} needs two or more steps of this pipeline"
                              + (f" (no step {unknown[0]!r})" if unknown else ""))
    return _order(deps, names, source)


def _order(deps: dict[str, list[str]], names: list[str], source: str) -> list[str]:
    """Dependency order, the written order where none decides; a cycle is named."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise ConfigError(f"pipeline {source}: steps refer to each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in sorted(set(deps[name]), key=names.index):
            visit(dep, path + [name])
        state[name] = "done"
        order.append(name)

    for name in names:
        visit(name, [])
    return order


def load_pipeline(path: str | Path, variables: list[str] | None = None) -> Pipeline:
    """A pipeline file, every step and reference checked (nothing runs). ``variables``: ``NAME=VALUE`` changes of
    its ``vars`` (values parsed as YAML; a name the file does not define is refused)."""
    from distillab.plan import find_config

    path = find_config(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline file {str(path)!r} is not valid YAML: {exc}") from None
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid pipeline file {str(path)!r}:"]
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {loc}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
        raise ConfigError("\n".join(lines)) from None
    import distillab.pipeline_lm  # noqa: F401 - registers the language-model data steps
    import distillab.pipeline_steps  # noqa: F401 - registers the data steps

    for text in variables or []:
        name, sep, value = text.partition("=")
        if not sep or name not in spec.vars:
            raise ConfigError(f"--var {text!r}: give NAME=VALUE for a variable of the pipeline's `vars` "
                              f"({', '.join(spec.vars) or 'it has none'})")
        spec.vars[name] = yaml.safe_load(value)
    order = _check(spec, str(path))
    _check_run_configs(spec, str(path))
    return Pipeline(path.stem, spec, path, order)


STAND_INS = ("model", "run", "data")  # outputs that are paths: a stand-in path lets a config load before they exist


def _check_run_configs(spec: PipelineSpec, source: str) -> None:
    """Every run step's config loaded with its overrides before anything runs, so that a typo in the last step
    does not wait for the first ones to train. References to paths stand in as placeholders; a step that reads
    another kind of output (``${select.arch}``) is checked when it starts."""
    from distillab.plan import find_config

    stand_in: dict[str, dict[str, Any]] = {s.name: {k: f"/not-yet-made/{s.name}/{k}" for k in STAND_INS}
                                           for s in spec.steps}
    stand_in[VARS] = spec.vars
    for step in spec.steps:
        if step.command not in RUN_COMMANDS or any(
                ref != VARS and out.split(".")[0] not in STAND_INS for ref, out in _refs(step)):
            continue
        try:
            load_config(find_config(_substitute(step.config, stand_in)),
                        [_substitute(o, stand_in) for o in [*spec.overrides, *step.overrides]])
        except ConfigError as exc:
            raise ConfigError(f"pipeline {source}, step {step.name!r}: {exc}") from None


# ------------------------------------------------------------------ running


def step_state(folder: Path) -> str:
    if (folder / "summary.json").is_file() or (folder / "step.json").is_file():
        return DONE
    if (folder / "checkpoints" / "last.pt").is_file() or (folder / "checkpoint.pt").is_file():
        return PARTIAL
    return NEW


def _substitute(text: str, outputs: dict[str, dict[str, Any]]) -> str:
    def value(m: re.Match) -> str:
        step, key = m.group(1), m.group(2)
        found: Any = outputs[step]
        for part in key.split("."):
            found = found[part]
        return found if isinstance(found, str) else json.dumps(found)

    return REF.sub(value, text)


def _resolve(obj: Any, outputs: dict[str, dict[str, Any]]) -> Any:
    if isinstance(obj, str):
        return _substitute(obj, outputs)
    if isinstance(obj, list):
        return [_resolve(v, outputs) for v in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, outputs) for k, v in obj.items()}
    return obj


def run_config(pipe: Pipeline, step: StepSpec, folder: Path, outputs: dict[str, dict[str, Any]]) -> RunConfig:
    """A run step's config: its file with the pipeline's and its own overrides, references resolved."""
    from distillab.plan import find_config

    overrides = [_substitute(o, outputs) for o in [*pipe.spec.overrides, *step.overrides]]
    cfg = load_config(find_config(_substitute(step.config, outputs)), overrides)
    return cfg.model_copy(update={"out_dir": str(folder.parent), "name": folder.name})


def _run_outputs(folder: Path) -> dict[str, Any]:
    return {"model": str((folder / "model.pt").resolve()), "run": str(folder.resolve())}


def _check_unchanged(step: StepSpec, folder: Path, cfg: RunConfig | None, params: dict | None) -> None:
    """Refuse a finished or interrupted step whose settings changed since it ran (a new --out, or delete it)."""
    if cfg is not None and (folder / "config.yaml").is_file():
        saved = load_config(folder / "config.yaml").model_dump(mode="json")
        now = cfg.model_dump(mode="json")
        if saved != now:
            from distillab.config import flatten_settings

            a, b = flatten_settings(saved, whole=("options", "params")), flatten_settings(now, whole=("options", "params"))
            diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise ConfigError(f"step {step.name!r} in {folder} was run with other settings ({'; '.join(diff[:4])}): "
                              "write this pipeline into another folder (--out), or delete that step's folder")
    if params is not None and (folder / "params.json").is_file():
        if json.loads((folder / "params.json").read_text()) != json.loads(json.dumps(params)):
            raise ConfigError(f"step {step.name!r} in {folder} was run with other params: write this pipeline into "
                              "another folder (--out), or delete that step's folder")


class PipelineInterrupted(KeyboardInterrupt):
    """Ctrl-C during a pipeline; the message says which step stopped and the command that continues."""


def run_pipeline(pipe: Pipeline, out: Path, *, console=None, report: Callable[[str], None] = print,
                 command: str | None = None) -> dict:
    """Run every step not finished yet (resuming an interrupted one); the pipeline's summary. ``command``: the
    command line that continues it, for the message after a Ctrl-C."""
    current = [""]
    try:
        return _run_steps(pipe, Path(out), console, report, current)
    except KeyboardInterrupt as exc:
        again = command or f"distillab pipeline {pipe.path} --out {out}"
        raise PipelineInterrupted(f"pipeline stopped in step {current[0]!r} ({exc}); every finished step is kept "
                                  f"and the interrupted one resumes from its last checkpoint: {again}") from None


def _run_steps(pipe: Pipeline, out: Path, console, report: Callable[[str], None], current: list[str]) -> dict:
    from distillab.runner import run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "pipeline.yaml", yaml.safe_dump(pipe.spec.model_dump(mode="json"), sort_keys=False))
    outputs: dict[str, dict[str, Any]] = {VARS: dict(pipe.spec.vars)}
    results: dict[str, dict[str, Any]] = {}
    ctx = StepContext(report=report, console=console, overrides=list(pipe.spec.overrides))
    for name in pipe.order:
        current[0] = name
        step, folder = pipe.step(name), out / name
        state = step_state(folder)
        tic = time.perf_counter()
        if step.command in RUN_COMMANDS:
            cfg = run_config(pipe, step, folder, outputs)
            if state == DONE:
                _check_unchanged(step, folder, cfg, None)
                summary = json.loads((folder / "summary.json").read_text())
                report(f"{name}: done before (test top-1 {summary['test_top1']:.2f}%)")
            else:
                if state == PARTIAL:
                    _check_unchanged(step, folder, cfg, None)
                    report(f"{name}: resuming {step.command} in {folder}")
                else:
                    _clear(folder)
                    report(f"{name}: {step.command} {step.config} {' '.join(step.overrides)}".rstrip())
                label = "teacher" if step.command == "train-teacher" else "distill"
                summary, _ = run(cfg, resume=folder if state == PARTIAL else None, console=console, label=label,
                                 run_dir=None if state == PARTIAL else folder)
            if step.store:  # also a step finished before (stopped between its last epoch and the store)
                _store(cfg, step, folder, summary, report)
            outputs[name] = _run_outputs(folder)
            results[name] = {"command": step.command, "test_top1": summary.get("test_top1"),
                             "models": summary.get("models"), "folder": str(folder),
                             "seconds": round(time.perf_counter() - tic, 1)}
        else:
            params = _resolve(step.params, outputs)
            _check_unchanged(step, folder, None, params)
            if state == DONE:
                made = json.loads((folder / "step.json").read_text())
                report(f"{name}: done before")
            else:
                if state == NEW:
                    _clear(folder)
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(folder / "params.json", params)
                report(f"{name}: {step.command}" + (" (resuming)" if state == PARTIAL else ""))
                made = PIPELINE_STEPS.get(step.command).run(params, folder, ctx)
                write_json_atomic(folder / "step.json", made)
            outputs[name] = made
            results[name] = {"command": step.command, **{k: v for k, v in made.items() if k != "outputs"},
                             "folder": str(folder), "seconds": round(time.perf_counter() - tic, 1)}
    ensembles = {name: evaluate_ensemble([out / m for m in members]) for name, members in pipe.spec.ensembles.items()}
    summary = {"pipeline": str(pipe.path), "description": pipe.spec.description, "vars": dict(pipe.spec.vars),
               "order": pipe.order, "result": pipe.spec.result, "steps": results, "ensembles": ensembles}
    write_json_atomic(out / "pipeline.json", summary)
    return summary


def _clear(folder: Path) -> None:
    import shutil

    if folder.exists():
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _store(cfg: RunConfig, step: StepSpec, folder: Path, summary: dict, report: Callable[[str], None]) -> None:
    from distillab.store import TeacherStore

    store = TeacherStore(cfg.store)
    held = store.find(cfg)
    if held is not None:
        import filecmp

        if not filecmp.cmp(held, folder / "model.pt", shallow=False):  # another run's model: say so, keep it
            report(f"{step.name}: the store already holds a model of this config ({held}); kept as it is")
        return
    path = store.put(cfg, folder / "model.pt", summary, config=step.config, overrides=list(step.overrides))
    report(f"{step.name}: stored {path}")


def evaluate_ensemble(run_dirs: list[Path]) -> dict[str, Any]:
    """Test top-1 of the mean softmax probability of the runs' models (each reads its own input field), on the
    data set (and root, options) the first run was trained with."""
    import torch

    from distillab.data import build_dataset
    from distillab.engine.loader import BatchLoader
    from distillab.models import load_model

    loaded = [load_model(d) for d in run_dirs]
    first = loaded[0]
    bundle = build_dataset(first.data, root=first.data_root, **first.data_options)
    for m in loaded:
        if m.num_classes != bundle.num_classes:
            raise ConfigError(f"ensemble: {m.path} predicts {m.num_classes} classes, the data set {bundle.num_classes}")
    correct = n = 0
    with torch.no_grad():
        for batch in BatchLoader(bundle.test, 256, device=torch.device("cpu"), shuffle=False):
            probs = sum(m.model.eval()(bundle.prepare_field(m.input, batch[m.input])).softmax(1) for m in loaded)
            correct += int((probs.argmax(1) == batch["label"]).sum())
            n += len(batch["label"])
    return {"members": [str(d) for d in run_dirs], "test_top1": 100.0 * correct / max(n, 1),
            "member_top1": [m.test_top1 for m in loaded]}
