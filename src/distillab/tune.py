"""``distillab tune``: search a method's settings for your data on a validation split, with Optuna.

Every preset carries the weights its authors tuned for their data; on other data they can be far off. A study
searches a space of config keys (a term's weight, a temperature, the learning rate, any key) with Optuna's
TPE sampler. Each trial is an ordinary run folder (``<tune folder>/trials/trial_0007``) trained on the
training set minus a held-out validation part (``data.val_fraction``, 0.1 unless the config sets one) and
scored on it: ``val/top1`` of the last epoch (a language model: ``val/loss``, lowest). The test set is read
by no selection: a trial's test score stays in its run folder and nowhere in the study.

Trials report their validation score every epoch, and a pruner (median, or successive halving) stops the
ones behind the others early. The study lives in Optuna's storage: a SQLite file in the tune folder by
default, or any database URL Optuna accepts (``--storage``), so several processes (``--workers``) and several
machines pull trials from one study. Running the same command again continues it: finished trials are kept,
a trial interrupted by Ctrl-C (or a process that died: Optuna's heartbeat notices) is run again from its
folder's last checkpoint, and the budget counts what is already done.

After the search, the best settings and the preset's defaults are each trained over ``--final-seeds`` seeds
on the whole training set (as the config would be) and compared on the test set (mean ± std, Welch's p);
the best settings are written as a config ``best.yaml`` that ``distillab distill`` accepts, and a report
(``report.md`` with plots) says what was searched, what was found and what it cost.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from distillab.config import ConfigError, RunConfig, load_config, load_yaml
from distillab.core.errors import TrainingError, UserError
from distillab.core.files import write_json_atomic, write_text_atomic
from distillab.options import option_default

KINDS = ("float", "int", "categorical")
DEFAULT_VAL_FRACTION = 0.1
TUNE_RECORD = "tune.json"
STUDY_NAME = "distillab"


class TuneError(UserError):
    """A search space, tune folder or study that cannot be used as it is (the message names the fix)."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("distillab tune needs Optuna: pip install optuna") from None
    # errors only: a trial's end (pruned, interrupted, failed and why) is printed by the watcher, one line each
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry callback
    return optuna


# ----------------------------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Param:
    """One searched config key: ``float`` / ``int`` in ``[low, high]`` (``log``: log-uniform; ``step``: a grid)
    or ``categorical`` over ``choices``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def extremes(self) -> list:
        """The values a config must accept for the space to be usable: the bounds, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"one of {list(self.choices)}"
        return f"{self.kind} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")


def parse_space(raw: Any, source: str) -> dict[str, Param]:
    """``{key: {type, low, high, log, step} | {type: categorical, choices}}`` (a ``space:`` mapping, or the
    file's top level) as :class:`Param` s; a bad entry is a TuneError naming it."""
    if isinstance(raw, dict) and "space" in raw:
        raw = raw["space"]
    if not isinstance(raw, dict) or not raw:
        raise TuneError(f"search space {source}: expected a mapping of config keys to ranges, e.g. "
                        "{optim.lr: {type: float, low: 0.01, high: 0.1, log: true}}")
    space = {}
    for key, spec in raw.items():
        where = f"search space {source}, key {key!r}"
        if not isinstance(spec, dict):
            raise TuneError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise TuneError(f"{where}: unknown fields {sorted(unknown)} (known: type, low, high, log, step, choices)")
        kind = spec.get("type", "categorical" if "choices" in spec else "float")
        if kind not in KINDS:
            raise TuneError(f"{where}: type {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise TuneError(f"{where}: a categorical key needs a non-empty list of choices")
            space[key] = Param(key, kind, choices=tuple(choices))
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise TuneError(f"{where}: {kind} needs numbers low and high, got low={low!r}, high={high!r}")
        if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
            raise TuneError(f"{where}: an int range needs whole bounds, got [{low}, {high}]")
        if not low < high:
            raise TuneError(f"{where}: the range [{low}, {high}] is empty: low must be below high")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise TuneError(f"{where}: a log range needs low > 0, got {low}")
        space[key] = Param(key, kind, float(low), float(high), log, spec.get("step"))
    return space


def space_file_beside(config: Path) -> Path:
    """Where a config's own search space lives: ``at.yaml`` -> ``at.tune.yaml`` in the same folder."""
    return config.with_name(config.stem + ".tune.yaml")


def default_space(cfg: RunConfig) -> dict[str, Param]:
    """A space derived from the method's registered terms: each distillation term's weight log-uniform from a
    tenth to ten times the preset's, the temperature of every term that has one in [1, 8], and the learning
    rate from a third to three times the config's. Cross-entropy on labels keeps its weight."""
    from distillab.losses import LOSSES
    from distillab.methods import METHODS

    spec = METHODS.get(cfg.method.name)
    space: dict[str, Param] = {}
    for name, term in spec.terms.items():
        weight = cfg.method.weights.get(name, term.weight)
        if term.loss != "ce" and weight > 0:
            space[f"method.weights.{name}"] = Param(f"method.weights.{name}", "float", weight / 10, weight * 10, True)
        if option_default(LOSSES.get(term.loss), "temperature") is not None:
            space[f"method.params.{name}.temperature"] = Param(f"method.params.{name}.temperature", "float", 1.0, 8.0)
    lr = cfg.optim.lr
    if lr > 0:
        space["optim.lr"] = Param("optim.lr", "float", lr / 3, lr * 3, True)
    return space


def current_value(cfg: RunConfig, key: str) -> Any:
    """The value ``key`` has in ``cfg`` (a method term's weight or option: the preset's, else the term's
    default), or None where it has none yet."""
    from distillab.losses import LOSSES
    from distillab.methods import METHODS

    parts = key.split(".")
    if parts[:2] == ["method", "weights"] and len(parts) == 3:
        term = METHODS.get(cfg.method.name).terms.get(parts[2])
        return cfg.method.weights.get(parts[2], term.weight if term else None)
    if parts[:2] == ["method", "params"] and len(parts) == 4:
        term = METHODS.get(cfg.method.name).terms.get(parts[2])
        given = cfg.method.params.get(parts[2], {})
        if parts[3] in given:
            return given[parts[3]]
        if term is None:
            return None
        return term.params.get(parts[3], option_default(LOSSES.get(term.loss), parts[3]))
    node: Any = cfg.model_dump(mode="json")
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _type_name(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


def check_space(config: Path, overrides: list[str], space: dict[str, Param]) -> None:
    """Refuse, before any trial starts, a space naming a key the config does not have, a range of the wrong
    type for its key, or values the config (or the method's terms) would refuse."""
    from distillab.plan import check_plan

    cfg = load_config(config, overrides)
    for key, p in space.items():
        where = f"search space key {key!r}"
        value = current_value(cfg, key)
        if value is None and not key.startswith("method."):
            raise TuneError(f"{where}: the config has no such key (a typo? keys look like optim.lr, "
                            "method.weights.<term>, method.params.<term>.<option>)")
        if value is not None and p.kind in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TuneError(f"{where}: the config's value is {value!r} ({_type_name(value)}); a {p.kind} range "
                                "cannot set it: use type categorical with its choices")
            # typed sections (not a term's options, where a YAML 4 may stand for 4.0): an int stays an int
            if isinstance(value, int) and p.kind == "float" and key.split(".")[0] in ("train", "data", "optim"):
                raise TuneError(f"{where}: the config's value {value!r} is an int: use type int")
        if value is not None and p.kind == "categorical":
            wrong = [c for c in p.choices if _type_name(c) != _type_name(value) and not
                     (isinstance(value, (int, float)) and isinstance(c, (int, float)) and not isinstance(c, bool))]
            if wrong:
                raise TuneError(f"{where}: choices {wrong} are not of the key's type ({_type_name(value)}, "
                                f"the config has {value!r})")
        if key.startswith("method.weights.") and p.kind != "categorical" and p.low < 0:
            raise TuneError(f"{where}: a term's weight must be 0 or more (a negative one makes the run maximise the "
                            f"term), got low {p.low:g}")
        for v in p.extremes():
            try:
                check_plan(load_config(config, [*overrides, f"{key}={json.dumps(v)}"]))
            except (ConfigError, ValueError) as exc:
                raise TuneError(f"{where}: the config refuses {v!r}: {exc}") from None


def trial_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


# ----------------------------------------------------------------------------------------------- the study


@dataclass
class TuneSpec:
    """What a study is: the config and overrides, the space, what it maximises; recorded in ``tune.json``, so
    a tune folder is never reused for another question."""

    config: str
    overrides: list[str]
    space: dict[str, dict]
    metric: str
    direction: str
    val_fraction: float
    pruner: str
    storage: str
    epochs: int

    @property
    def digest(self) -> str:
        same = {k: v for k, v in asdict(self).items() if k not in ("storage", "pruner")}
        return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:12]

    def params(self) -> dict[str, Param]:
        return {k: Param(**{**v, "choices": tuple(v["choices"]) if v.get("choices") else None})
                for k, v in self.space.items()}


def make_spec(config: Path, overrides: list[str], space: dict[str, Param], folder: Path, *, storage: str | None,
              pruner: str, val_fraction: float | None) -> TuneSpec:
    cfg = load_config(config, overrides)
    data_tokens = _is_lm(cfg)
    fraction = val_fraction if val_fraction is not None else (cfg.data.val_fraction or DEFAULT_VAL_FRACTION)
    return TuneSpec(config=str(config), overrides=list(overrides),
                    space={k: {kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in asdict(p).items()}
                           for k, p in space.items()},
                    metric="val/loss" if data_tokens else "val/top1",
                    direction="minimize" if data_tokens else "maximize", val_fraction=fraction, pruner=pruner,
                    storage=storage or f"sqlite:///{(folder / 'study.db').resolve()}", epochs=cfg.train.epochs)


def _is_lm(cfg: RunConfig) -> bool:
    from distillab.data import DATASETS
    from distillab.registry import RegistryError

    try:
        return DATASETS.entry(cfg.data.name).meta.get("task") == "lm"
    except RegistryError:  # an unknown data set is refused by the plan check with its own message
        return False


def open_folder(folder: Path, spec: TuneSpec) -> TuneSpec:
    """Create the tune folder, or continue the study it holds if it asks the same question."""
    record = folder / TUNE_RECORD
    if record.is_file():
        old = TuneSpec(**json.loads(record.read_text()))
        if old.digest != spec.digest:
            changed = [k for k in asdict(spec) if k not in ("storage", "pruner") and asdict(spec)[k] != asdict(old)[k]]
            raise TuneError(f"tune folder {folder} holds a study of another question (it differs in "
                            f"{', '.join(changed)}): give another --out, or remove that folder to start over")
        return old if spec.storage == old.storage else spec
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, asdict(spec))
    return spec


def storage_of(url: str):
    optuna = _optuna()
    # a trial whose process died stops beating: after grace_period it fails and is queued again (its folder resumed)
    retry = _retry_callback()
    callback = ({"heartbeat_stale_trial_callback": retry(max_retry=2)} if retry.__name__.startswith("RetryHeartbeat")
                else {"failed_trial_callback": retry(max_retry=2)})  # Optuna before 4.9
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30, grace_period=90, **callback)


def _retry_callback():
    import optuna.storages as storages

    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


def pruner_of(name: str, epochs: int):
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"--pruner {name!r}: choose median, halving or none")


def load_study(spec: TuneSpec, seed: int = 0):
    optuna = _optuna()
    return optuna.create_study(study_name=STUDY_NAME, storage=storage_of(spec.storage), load_if_exists=True,
                               direction=spec.direction, sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=pruner_of(spec.pruner, spec.epochs))


def counted(study) -> int:
    """Trials that use up the budget: finished (complete or pruned) and failed by their settings; trials
    interrupted, or still running, do not."""
    states = _optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {_retry_callback().retried_trial_number(t) for t in trials}  # trials of dead processes, run again
    return sum(t.state in (states.COMPLETE, states.PRUNED) or
               (t.state == states.FAIL and not t.user_attrs.get("interrupted") and t.number not in retried)
               for t in trials)


def requeue_interrupted(study) -> int:
    """Queue again the settings of trials stopped by Ctrl-C (not yet queued again), each to resume its own run
    folder; the number queued."""
    states = _optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    resumed = {t.user_attrs.get("resume_from") for t in trials}
    n = 0
    for t in trials:
        run = t.user_attrs.get("run")
        if t.state == states.FAIL and t.user_attrs.get("interrupted") and run not in resumed:
            study.enqueue_trial(t.params, user_attrs={"resume_from": run}, skip_if_exists=False)
            n += 1
    return n


def _resume_folder(trial) -> Path | None:
    """The run folder a trial continues: an interrupted trial's, or that of a trial whose process died."""
    attrs = trial.user_attrs
    if attrs.get("resume_from"):
        return Path(attrs["resume_from"])
    trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
    number = _retry_callback().retried_trial_number(trials[trial.number])
    if number is not None and number in trials:
        run = trials[number].user_attrs.get("run")
        return Path(run) if run else None
    return None


def _seconds_before(trial, resume: Path | None) -> float:
    """The training seconds a resumed trial's folder already holds (those of the trials it continues)."""
    if resume is None:
        return 0.0
    return sum(float(t.user_attrs.get("seconds", 0.0)) for t in trial.study.get_trials(deepcopy=False)
               if t.number != trial.number and t.user_attrs.get("run") == str(resume))


def objective_for(spec: TuneSpec, folder: Path, threads: int):
    """The function a worker's trials run: one ordinary run per trial, scored on validation."""
    optuna = _optuna()
    from distillab.runner import RunInterrupted, run

    space = spec.params()

    def objective(trial) -> float:
        params = {k: p.suggest(trial) for k, p in space.items()}
        resume = _resume_folder(trial)
        if resume is not None and not (resume / "checkpoints" / "last.pt").is_file():
            resume = None
        run_dir = resume or folder / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        cfg = load_config(spec.config, [*spec.overrides, *trial_overrides(params),
                                        f"data.val_fraction={spec.val_fraction}", "train.progress=false",
                                        "train.tensorboard=false", f"train.threads={threads}"])

        def on_epoch(epoch: int, row: dict) -> None:
            value = row.get(spec.metric)
            if value is None:
                return
            trial.report(float(value), epoch)
            if trial.should_prune():
                trial.set_user_attr("epochs", epoch)
                raise optuna.TrialPruned(f"{spec.metric} {value:.4g} after epoch {epoch}")

        before = _seconds_before(trial, resume)
        tic = time.perf_counter()
        try:
            if resume is not None:
                summary, _ = run(cfg, resume=resume, progress=False, report=lambda _m: None, on_epoch=on_epoch)
            else:
                summary, _ = run(cfg, run_dir=run_dir, progress=False, report=lambda _m: None, on_epoch=on_epoch)
        except RunInterrupted:
            trial.set_user_attr("interrupted", True)
            raise
        except TrainingError as exc:  # settings that make the loss diverge: a failed trial, the study goes on
            trial.set_user_attr("error", str(exc).split(";")[0])
            raise
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - tic + before)
        trial.set_user_attr("epochs", summary["epochs"])
        key = "val_loss" if spec.metric == "val/loss" else "val_top1"
        return float(summary[key])

    return objective


def worker(spec_dict: dict, folder: str, trials: int, threads: int, seed: int) -> None:
    """One process's share of the trials (also the whole of a single-process study). It also stops once the
    study holds its whole budget (the trials of other processes and machines count)."""
    import torch

    spec = TuneSpec(**spec_dict)
    torch.set_num_threads(threads)
    # the sampler's seed moves on with the study, so a continued study does not propose its first points again
    study = load_study(spec, seed + len(load_study(spec, seed).get_trials(deepcopy=False)))
    total = int(study.user_attrs.get("trials", trials))

    def stop_at_budget(study, _trial) -> None:
        if counted(study) >= total:
            study.stop()

    study.optimize(objective_for(spec, Path(folder), threads), n_trials=trials, callbacks=[stop_at_budget],
                   catch=(TrainingError,), gc_after_trial=True)


# ----------------------------------------------------------------------------------------------- the command


def tune(config: Path, overrides: list[str], *, trials: int, workers: int = 1, space_file: Path | None = None,
         out: Path | None = None, storage: str | None = None, pruner: str = "median",
         val_fraction: float | None = None, final_seeds: int = 5, seed: int = 0, console=None) -> dict:
    """Run (or continue) a study of ``trials`` trials, then the final comparison and the report; the report's
    figures as a dict."""
    optuna = _optuna()
    say = (lambda m: console.print(m, soft_wrap=True, highlight=False, markup=False)) if console else print
    if trials < 1 or workers < 1:
        raise TuneError(f"--trials ({trials}) and --workers ({workers}) must be at least 1")
    config = Path(config)
    cfg = load_config(config, overrides)
    if space_file is None and space_file_beside(config).is_file():
        space_file = space_file_beside(config)
    if space_file is not None:
        space = parse_space(load_yaml(space_file), str(space_file))
    else:
        space = default_space(cfg)
        if not space:
            raise TuneError(f"method {cfg.method.name!r} has nothing to search by default: write a search space "
                            f"in {space_file_beside(config)} (or give --space)")
    check_space(config, overrides, space)
    folder = Path(out) if out is not None else Path(cfg.out_dir) / "tune" / config.stem
    spec = open_folder(folder, make_spec(config, overrides, space, folder, storage=storage, pruner=pruner,
                                          val_fraction=val_fraction))
    from distillab.runner import train_missing_teachers

    for path in train_missing_teachers(cfg, console=console):  # as bench does, once
        say(f"stored teacher: {path}")
    study = load_study(spec, seed)
    study.set_user_attr("trials", trials)
    queued = requeue_interrupted(study)
    done = counted(study)
    say(f"tune {config} -> {folder}: {len(space)} keys, {spec.metric} "
        f"({spec.direction}) on {spec.val_fraction:g} of the training set held out, pruner {spec.pruner}; "
        f"storage {spec.storage}")
    for p in space.values():
        say(f"  {p.key}: {p.describe()}")
    if queued:
        say(f"  {queued} interrupted trial(s) queued again, to resume from their folders")
    left = max(0, trials - done)
    if done:
        say(f"  {done} of {trials} trials already done")
    tic = time.perf_counter()
    if left:
        _run_workers(spec, folder, left, workers, seed, say)
    study = load_study(spec, seed)
    if counted(study) < trials:  # stopped early (Ctrl-C, or trials that failed to start)
        say(f"the study holds {counted(study)} of {trials} trials: run the same command again to continue")
    searched_s = time.perf_counter() - tic
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneError(f"no trial of {folder} completed: see the trial folders under {folder / 'trials'}")
    best = study.best_trial
    best_overrides = trial_overrides(best.params)
    best_cfg = load_config(config, [*overrides, *best_overrides])
    write_text_atomic(folder / "best.yaml", _best_yaml(best_cfg, config, best, spec))
    say(f"best: trial {best.number}, {spec.metric} {best.value:.4f}: {' '.join(best_overrides)}; "
        f"config {folder / 'best.yaml'}")
    final = final_comparison(config, overrides, best_overrides, folder, final_seeds, workers, say,
                             lm=spec.metric == "val/loss") if final_seeds > 0 else None
    from distillab.tune_report import write_report

    figures = write_report(folder, study, spec, final, searched_s=searched_s)
    say(f"report: {folder / 'report.md'}")
    return figures


def _best_yaml(cfg: RunConfig, config: Path, best, spec: TuneSpec) -> str:
    d = cfg.model_dump(mode="json")
    d.pop("name", None)
    header = (f"# The best settings of `distillab tune {config}`: trial {best.number}, {spec.metric} "
              f"{best.value:.4f} on {spec.val_fraction:g} of the training set held out.\n"
              f"# Searched: {', '.join(spec.space)}. Trained here on the whole training set, as the config says.\n")
    import yaml

    return header + yaml.safe_dump(d, sort_keys=False)


def _run_workers(spec: TuneSpec, folder: Path, trials: int, workers: int, seed: int, say) -> None:
    """``trials`` more trials over ``workers`` processes, a line printed as each ends."""
    import multiprocessing as mp
    import threading

    cores = os.cpu_count() or 1
    states = _optuna().trial.TrialState
    ended = {t.number for t in load_study(spec, seed).get_trials(deepcopy=False)
             if t.state not in (states.RUNNING, states.WAITING)}
    if workers == 1:  # in this process: simpler to interrupt, and tracebacks read as they are
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(spec, say, done.is_set, ended), daemon=True)
        watcher.start()
        try:
            worker(asdict(spec), str(folder), trials, cores, seed)
        finally:
            done.set()
            watcher.join()
        return
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch state or open database handles inherited
    procs = [ctx.Process(target=_worker_process, args=(asdict(spec), str(folder), n, max(1, cores // workers),
                                                        seed + 1000 * i)) for i, n in enumerate(shares) if n > 0]
    for p in procs:
        p.start()
    try:
        _watch(spec, say, lambda: not any(p.is_alive() for p in procs), ended)
    finally:  # Ctrl-C reaches the workers too: each marks its trial interrupted and ends
        for p in procs:
            p.join()


def _worker_process(*args) -> None:
    try:
        worker(*args)
    except KeyboardInterrupt:  # the trial is recorded as interrupted; the main process says how to continue
        return


def _watch(spec: TuneSpec, say, finished: Callable[[], bool], seen: set[int]) -> None:
    """Print each trial as it ends (polling the study), until ``finished()``; ``seen``: trials not to print (those
    that ended before this session)."""
    optuna = _optuna()
    states = optuna.trial.TrialState
    study = None
    while True:
        stop = finished()
        try:
            study = study or optuna.load_study(study_name=STUDY_NAME, storage=storage_of(spec.storage))
            trials = study.get_trials(deepcopy=False)
        except Exception:  # the storage busy or not yet written: look again
            trials = []
        best = None
        for t in trials:
            if t.state == states.COMPLETE and (best is None or (t.value > best.value) == (spec.direction == "maximize")):
                best = t
        for t in trials:
            if t.number in seen or t.state in (states.RUNNING, states.WAITING):
                continue
            seen.add(t.number)
            what = {states.COMPLETE: f"{spec.metric} {t.value:.4f}" if t.value is not None else "complete",
                    states.PRUNED: f"pruned after epoch {t.last_step}",
                    states.FAIL: "interrupted" if t.user_attrs.get("interrupted") else
                    f"failed ({t.user_attrs.get('error', 'see the trial folder')})"}.get(t.state, t.state.name)
            params = " ".join(f"{k}={_short(v)}" for k, v in t.params.items())
            lead = f" (best {best.value:.4f}, trial {best.number})" if best is not None else ""
            say(f"trial {t.number:3d} {what}{lead}  {t.user_attrs.get('seconds', 0):.0f} s  {params}")
        if stop:
            return
        time.sleep(2.0)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------- the final runs


def final_comparison(config: Path, overrides: list[str], best_overrides: list[str], folder: Path, seeds: int,
                     workers: int, say, lm: bool = False) -> dict:
    """The best settings and the config's own, each over ``seeds`` seeds, on the whole training set, scored on
    the test set (top-1; a language model: bits per byte): mean ± std and Welch's p. Finished runs are
    reused."""
    from distillab.bench.aggregate import welch_p
    from distillab.bench.execute import execute_grid
    from distillab.bench.suite import RunSpec

    say(f"final: the best settings and the config's defaults, {seeds} seeds each, on the test set")
    method = load_config(config, overrides).method.name
    specs = {}
    for arm in ("tuned", "default"):
        for s in range(seeds):
            run_folder = folder / "final" / arm / f"seed{s}"
            ov = [*overrides, *(best_overrides if arm == "tuned" else []), f"seed={s}", "train.progress=false",
                  "train.tensorboard=false"]
            specs[(arm, s)] = RunSpec("final", arm, method, s, str(config), ov, run_folder)
    # the grid runner of `bench`: finished runs skipped, interrupted ones resumed, Ctrl-C stops every worker
    outcomes = execute_grid(list(specs.values()), {}, workers=max(1, workers), report=lambda _m: None)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise TuneError(f"final run {failed[0].key} failed: {failed[0].error} (see its error.txt); run the same "
                        "command again to retry")
    results: dict[str, list[float]] = {"tuned": [], "default": []}
    key, name = ("test_bpb", "test bits per byte") if lm else ("test_top1", "test top-1")
    for (arm, s), spec in specs.items():
        summary = json.loads((spec.folder / "summary.json").read_text())
        results[arm].append(float(summary[key]))
        say(f"  {arm} seed {s}: {name} {summary[key]:.4g}")

    def stats(v: list[float]) -> dict:
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}

    out = {"metric": key, "tuned": stats(results["tuned"]), "default": stats(results["default"]), "seeds": seeds,
           "p": welch_p(results["tuned"], results["default"]), "overrides": best_overrides}
    p = out["p"]
    say(f"  tuned {out['tuned']['mean']:.2f} ± {out['tuned']['std']:.2f} vs default {out['default']['mean']:.2f} ± "
        f"{out['default']['std']:.2f} (Welch p {'-' if p is None else f'{p:.3g}'})")
    write_json_atomic(folder / "final.json", out)
    return out

