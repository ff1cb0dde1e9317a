"""Benchmark suites: a grid of (teacher/student pair x method x seed), each cell an ordinary run or a pipeline.

A suite is a YAML file (the shipped ones live in ``configs/suites/``)::

    description: one line
    seeds: [0, 1, 2, 3, 4]
    overrides: [data.options.num_samples=10000]   # every run, the teachers' included
    run_overrides: [train.checkpoint_every=10]    # the students' runs only
    store: global                                 # teacher store: global (the user's) or grid (<out>/store)
    pairs:
      - name: cnn1d_w32-cnn1d_w6
        teacher: mnist1d/teacher_cnn1d.yaml       # trained once (its own seed), then found in the store
        teacher_overrides: [model.options.width=24]   # what the pair's teacher is trained with, besides the suite's
        student: {arch: cnn1d, options: {width: 6}}
        config: [mnist1d/{method}.yaml]           # templates tried in order; {method} {teacher} {student}
        configs: {ce: mnist1d/ce.yaml}            # per-method config, instead of the templates
        methods: all                              # every one-teacher method (not _private ones, not paradigms), or a list
        exclude: [fsp]
        variants: {rdd_adaptive: mnist1d/rdd_adaptive.yaml}   # extra rows: a label and its config
        tuned: {at: true, kd: runs/tune/kd}        # extra rows at_tuned, kd_tuned: the best.yaml of `distillab tune`
                                                  # (true: the folder `tune` writes by default for the row's config)
        overrides: [optim.lr=0.01]                # this pair's runs
        method_overrides: {at: ["method.params.at.stages=[0, 1]"]}   # one row's runs
        reference: {kd: 73.33}                    # published top-1 per method (and teacher/ce)
      - name: mnist1d-ban
        pipelines: {ban: mnist1d/ban.yaml}        # pipeline rows: a paradigm of several steps, one pipeline per seed

Every run gets the pair's student (``student.arch``/``student.options``), the pair's teacher config with
the overrides it was trained under (so the store finds exactly that teacher), the seed, and a fixed run
folder ``<out>/runs/<pair>/<label>/seed<k>`` that makes the grid resumable.

A pipeline row (``pipelines: {label: file}``, files found like run configs) runs the whole pipeline once per
seed, with ``--var seed=<k>`` (the pipeline must have a ``seed`` var and a ``result`` step) and the suite's,
the pair's and the row's overrides appended to its own, into ``<out>/runs/<pair>/<label>/seed<k>`` (its step
folders inside). It gives the row ``<label>`` (the result step's model), ``<label>:<ensemble>`` per ensemble and
``<label>:<step>`` per other run step, so the pipeline's own baselines stand in the same table. A pair of
pipeline rows alone needs no ``student``, ``config`` or ``methods`` (``methods`` is ``[]`` when ``pipelines``
is given and ``methods`` is not).

``store``: where the grid's teachers are trained into and looked up. ``global`` (the default) is the user's
teacher store, shared with ``distillab distill`` (a teacher trained once serves every later grid and run);
``grid`` is ``<out>/store``, private to the grid folder: for suites whose teachers are too small to be of use
elsewhere (``tiny``), so they never land where a later ``distill`` would find them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillab.config import ConfigError, RunConfig, load_config
from distillab.registry import close_matches, unknown_name_message

SUITES_DIR = Path(__file__).resolve().parent.parent / "configs" / "suites"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairSpec(_Strict):
    name: str
    teacher: str | None = None  # a train-teacher config; None for a labels-only pair
    teacher_overrides: list[str] = Field(default_factory=list)  # overrides the pair's teacher is trained with
    student: dict[str, Any] | None = None  # {arch: ..., options: {...}}; needed by method rows only
    config: list[str] = Field(default_factory=list)  # config path templates, first existing wins
    configs: dict[str, str] = Field(default_factory=dict)  # label -> config path template
    methods: list[str] | str = "all"  # [] when the pair gives `pipelines` and no `methods`
    exclude: list[str] = Field(default_factory=list)
    variants: dict[str, str] = Field(default_factory=dict)  # label -> config path template
    tuned: dict[str, bool | str] = Field(default_factory=dict)  # method -> true (default tune folder) or a folder
    pipelines: dict[str, str] = Field(default_factory=dict)  # label -> pipeline file, run once per seed
    overrides: list[str] = Field(default_factory=list)
    method_overrides: dict[str, list[str]] = Field(default_factory=dict)  # label -> overrides of that row only
    reference: dict[str, float] = Field(default_factory=dict)
    note: str = ""

    @field_validator("config", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _pipelines_alone(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("pipelines") and "methods" not in data:
            return {**data, "methods": []}
        return data

    @field_validator("student")
    @classmethod
    def _student(cls, v: dict | None) -> dict | None:
        if v is None:
            return None
        if "arch" not in v:
            raise ValueError("needs `arch`")
        unknown = set(v) - {"arch", "options"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (valid: arch, options)")
        return {"arch": v["arch"], "options": dict(v.get("options") or {})}

    @field_validator("pipelines")
    @classmethod
    def _pipeline_labels(cls, v: dict[str, str]) -> dict[str, str]:
        for label in v:  # a folder name, and the part before ':' in the rows of its steps
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", label):
                raise ValueError(f"row label {label!r}: letters, digits, _ . and - only")
        return v

    @model_validator(mode="after")
    def _student_for_methods(self) -> "PairSpec":
        if self.student is None and (self.methods or self.variants):
            raise ValueError("a pair with method rows needs `student` ({arch: ..., options: {...}}); "
                             "a pair of `pipelines` alone needs none")
        return self


class SuiteSpec(_Strict):
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    metric: str = "last"  # which accuracy the report ranks by: last (epoch) or best (epoch)
    overrides: list[str] = Field(default_factory=list)
    run_overrides: list[str] = Field(default_factory=list)
    pairs: list[PairSpec]
    command: str = ""  # how to run it, shown in the report
    hardware_note: str = ""
    store: Literal["global", "grid"] = "global"  # teacher store: the user's, or <out>/store (see above)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in ("last", "best"):
            raise ValueError("must be 'last' or 'best'")
        return v


@dataclass
class TeacherJob:
    """A teacher to have in the store before the pair's runs start."""

    config: str  # path as written in the suite (relative to the packaged configs)
    overrides: list[str]
    folder: Path  # run folder for its training

    @property
    def key(self) -> str:
        """What names this teacher in a grid: its config, and the overrides it is trained with."""
        return self.config if not self.overrides else f"{self.config} {json.dumps(self.overrides)}"

    def load(self) -> RunConfig:
        from distillab.runner import find_config

        return load_config(find_config(self.config), self.overrides)


@dataclass
class RunSpec:
    pair: str
    label: str  # method name, or a variant's label
    method: str  # the registered method the config uses
    seed: int
    config: str  # resolved path of the run's config file
    overrides: list[str]
    folder: Path
    teacher: TeacherJob | None = None  # the pair's teacher, when the run reads it
    extra_teachers: list[TeacherJob] = field(default_factory=list)  # more frozen models found by their config
    extra: dict = field(default_factory=dict)

    @property
    def teachers(self) -> list[TeacherJob]:
        """Every teacher that must be in the store before this run starts."""
        return ([self.teacher] if self.teacher is not None else []) + list(self.extra_teachers)

    @property
    def key(self) -> str:
        return f"{self.pair}/{self.label}/seed{self.seed}"

    def load(self) -> RunConfig:
        return load_config(self.config, self.overrides)

    def command(self) -> str:
        return " ".join(["distillab distill", _display(self.config), *(_quote(o) for o in self.overrides)])


@dataclass
class PipelineRun:
    """One seed of a pipeline row: the whole pipeline, run with ``--var seed=<seed>`` in ``folder`` (each step in
    its own folder inside), ``overrides`` appended to the pipeline's own (every run step's)."""

    pair: str
    label: str
    seed: int
    config: str  # resolved path of the pipeline file
    overrides: list[str]
    folder: Path

    @property
    def teachers(self) -> list[TeacherJob]:
        return []  # a pipeline trains (or finds) its teachers in its own steps

    @property
    def key(self) -> str:
        return f"{self.pair}/{self.label}/seed{self.seed}"

    @property
    def variables(self) -> list[str]:
        return [f"seed={self.seed}"]

    def load(self):
        """The pipeline as this cell runs it (a :class:`distillab.pipeline.Pipeline`)."""
        from distillab.pipeline import load_pipeline

        pipe = load_pipeline(self.config, self.variables)
        pipe.spec.overrides = [*pipe.spec.overrides, *self.overrides]
        return pipe

    def command(self) -> str:
        return " ".join(["distillab pipeline", _display(self.config), *(_quote(o) for o in self.overrides),
                         "--var", self.variables[0], "--out", str(self.folder)])


def _display(path: str) -> str:
    from distillab.runner import PACKAGED_CONFIGS

    try:
        return str(Path("configs") / Path(path).resolve().relative_to(PACKAGED_CONFIGS.resolve()))
    except ValueError:
        return path


def _quote(text: str) -> str:
    return f"'{text}'" if any(c in text for c in " {}[]\"") else text


@dataclass
class Suite:
    name: str
    spec: SuiteSpec
    path: Path

    @staticmethod
    def teacher_key(pair: PairSpec) -> str | None:
        """The key of a pair's teacher among the grid's teacher jobs: its config (and its own overrides)."""
        if not pair.teacher:
            return None
        return pair.teacher if not pair.teacher_overrides else f"{pair.teacher} {json.dumps(pair.teacher_overrides)}"

    def every_run(self, out: Path) -> list[str]:
        """The overrides of every run of the grid, the teachers' included: the suite's, after the store's."""
        store = [f"store={Path(out) / 'store'}"] if self.spec.store == "grid" else []
        return [*store, *self.spec.overrides]

    def teacher_jobs(self, out: Path, extra: list[str]) -> dict[str, TeacherJob]:
        """One job per distinct teacher (several pairs may share a teacher)."""
        jobs: dict[str, TeacherJob] = {}
        for pair in self.spec.pairs:
            key = self.teacher_key(pair)
            if key and key not in jobs:
                digest = hashlib.sha1(key.encode()).hexdigest()[:8] if pair.teacher_overrides else ""
                jobs[key] = TeacherJob(pair.teacher, [*self.every_run(out), *extra, *pair.teacher_overrides],
                                       out / "teachers" / "-".join(filter(None, [Path(pair.teacher).stem, digest])))
        return jobs

    def methods_of(self, pair: PairSpec) -> list[tuple[str, str | None]]:
        """(label, config template or None) for every row of a pair, in the registry's order."""
        from distillab.methods import METHODS

        # "all": every registered one-teacher-one-student method but private ones (a leading underscore, e.g.
        # registered by a test); paradigms (mutual learning, several teachers, ...) are listed by name
        names = ([n for n in METHODS.names() if not n.startswith("_") and METHODS.get(n).paradigm is None]
                 if pair.methods == "all" else list(pair.methods))
        for name in [*names, *pair.exclude]:
            if name not in METHODS:
                raise ConfigError(f"suite {self.name!r}, pair {pair.name!r}: "
                                  + unknown_name_message("method", name, METHODS.names()))
        rows = [(n, pair.configs.get(n)) for n in _ordered(names) if n not in pair.exclude]
        rows += [(label, tmpl) for label, tmpl in pair.variants.items()]
        return rows

    def grid(self, out: str | Path, *, seeds: list[int] | None = None, methods: list[str] | None = None,
             pairs: list[str] | None = None, extra: list[str] | None = None
             ) -> tuple[list[RunSpec | PipelineRun], dict[str, TeacherJob]]:
        """Every run of the suite (filtered by ``seeds``/``methods``/``pairs``) with its config and folder: the
        method rows' runs, then the pipeline rows' cells."""
        from distillab.runner import find_config

        out = Path(out)
        extra = list(extra or [])
        teachers = self.teacher_jobs(out, extra)
        known_pairs = [p.name for p in self.spec.pairs]
        for p in pairs or []:
            if p not in known_pairs:
                raise ConfigError(unknown_name_message(f"pair of suite {self.name!r}", p, known_pairs))
        runs: list[RunSpec | PipelineRun] = []
        seen_labels: set[str] = set()
        for pair in self.spec.pairs:
            if pairs and pair.name not in pairs:
                continue
            teacher = teachers.get(self.teacher_key(pair)) if pair.teacher else None
            fields = {"teacher": Path(pair.teacher).stem.removeprefix("teacher_") if pair.teacher else "",
                      "student": pair.student["arch"] if pair.student else ""}
            method_rows = self.methods_of(pair)
            both = sorted(set(pair.pipelines) & {label for label, _ in method_rows})
            if both:
                raise ConfigError(f"suite {self.name!r}, pair {pair.name!r}: {both[0]!r} names a method row and a "
                                  "pipeline row; give the pipeline another label")
            for label, where in pair.tuned.items():  # a tuned row: the best config its study wrote
                method_rows.append((f"{label}_tuned", str(self._tuned_config(pair, label, where, fields,
                                                                               find_config))))
            for label, template in method_rows:
                seen_labels.add(label)
                if methods and label not in methods:
                    continue
                path = self._resolve(pair, label, template, fields, find_config)
                row_overrides = pair.method_overrides.get(label, [])
                base = [f"student.arch={pair.student['arch']}",
                        f"student.options={json.dumps(pair.student['options'])}"]
                tail = [*self.every_run(out), *pair.overrides, *row_overrides, *self.spec.run_overrides, *extra]
                base_cfg = load_config(path, row_overrides)
                method, has_teacher = base_cfg.method.name, base_cfg.teacher is not None
                tov = ([f"teacher.config={pair.teacher}", f"teacher.overrides={json.dumps(teacher.overrides)}"]
                       if has_teacher and teacher is not None else [])
                extra_jobs, mov = self._config_teachers(base_cfg, pair, out, extra, teachers)
                for seed in seeds if seeds is not None else self.spec.seeds:
                    folder = out / "runs" / pair.name / label / f"seed{seed}"
                    ov = [*base, *tail, *tov, *mov, f"seed={seed}", f"out_dir={folder.parent}",
                          f"name={folder.name}", "train.progress=false"]
                    runs.append(RunSpec(pair.name, label, method, seed, str(path), ov, folder,
                                        teacher if has_teacher and teacher is not None else None, extra_jobs))
            for label, file in pair.pipelines.items():
                seen_labels.add(label)
                if methods and label not in methods:
                    continue
                path = self._pipeline_file(pair, label, file)
                tail = [*self.every_run(out), *pair.overrides, *pair.method_overrides.get(label, []),
                        *self.spec.run_overrides, *extra]
                for seed in seeds if seeds is not None else self.spec.seeds:
                    folder = out / "runs" / pair.name / label / f"seed{seed}"
                    runs.append(PipelineRun(pair.name, label, seed, str(path), tail, folder))
        unknown_rows = {label for p in self.spec.pairs for label in p.method_overrides} - seen_labels
        if unknown_rows and not pairs:
            raise ConfigError(f"suite {self.name!r}: method_overrides name rows no pair has: {sorted(unknown_rows)}")
        for m in methods or []:
            if m not in seen_labels:
                raise ConfigError(unknown_name_message(f"method of suite {self.name!r}", m, sorted(seen_labels)))
        return runs, teachers

    def _tuned_config(self, pair: PairSpec, label: str, where: bool | str, fields: dict, find_config) -> Path:
        """The ``best.yaml`` of row ``label``'s tune folder (``true``: where ``distillab tune`` puts it for the
        row's config by default); a missing one names the command that writes it."""
        config = self._resolve(pair, label, pair.configs.get(label), fields, find_config)
        if where is False:
            raise ConfigError(f"suite {self.name!r}, pair {pair.name!r}: tuned.{label} is false: drop it, or give "
                              "true or a tune folder")
        folder = Path(where) if isinstance(where, str) else Path(load_config(config).out_dir) / "tune" / config.stem
        best = folder / "best.yaml"
        if not best.is_file():
            raise ConfigError(f"suite {self.name!r}, pair {pair.name!r}, row {label}_tuned: {best} does not exist: "
                              f"run `distillab tune {_display(str(config))} --out {folder}` first")
        return best

    def _config_teachers(self, cfg: RunConfig, pair: PairSpec, out: Path, extra: list[str],
                         teachers: dict[str, TeacherJob]) -> tuple[list[TeacherJob], list[str]]:
        """Teachers a row's config finds in the store by their training config, besides the pair's (the
        teachers of a multi-teacher row, a row's own teacher in a pair without one): a job for each (added to
        ``teachers``), and the overrides that make the run look up exactly what the job trains (the suite's
        overrides come first, as for the pair's teacher)."""
        found = [(f"models.{name}", m) for name, m in cfg.models.items() if m.role == "frozen"]
        if pair.teacher is None and cfg.teacher is not None:
            found.insert(0, ("teacher", cfg.teacher))
        jobs, overrides = [], []
        for section, m in found:
            if m.config is None or m.checkpoint is not None:
                continue
            job = TeacherJob(m.config, [*self.every_run(out), *extra, *m.overrides], out / "teachers")
            job = teachers.setdefault(job.key, job)
            if job.folder == out / "teachers":  # a new job: a folder named after its config and overrides
                digest = hashlib.sha1(job.key.encode()).hexdigest()[:8] if m.overrides else ""
                job.folder = out / "teachers" / "-".join(filter(None, [Path(m.config).stem, digest]))
            jobs.append(job)
            overrides.append(f"{section}.overrides={json.dumps(job.overrides)}")
        return jobs, overrides

    def _pipeline_file(self, pair: PairSpec, label: str, file: str) -> Path:
        """A pipeline row's file, checked as the grid will run it: loadable, a ``seed`` var, a run step as result."""
        from distillab.pipeline import RUN_COMMANDS, load_pipeline

        where = f"suite {self.name!r}, pair {pair.name!r}, pipeline {label!r} ({file})"
        try:
            pipe = load_pipeline(file)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if "seed" not in pipe.spec.vars:
            raise ConfigError(f"{where}: the pipeline has no `seed` in its `vars` "
                              f"({', '.join(pipe.spec.vars) or 'it has none'}); the grid runs it once per seed with "
                              "--var seed=<k>: add `vars: {seed: 0}` and `seed=${vars.seed}` to its steps' overrides")
        if pipe.spec.result is None:
            raise ConfigError(f"{where}: the pipeline names no `result` (the step whose model the row reports): "
                              f"add `result: <step>` (steps: {', '.join(pipe.order)})")
        command = pipe.step(pipe.spec.result).command
        if command not in RUN_COMMANDS:
            raise ConfigError(f"{where}: its result {pipe.spec.result!r} is a {command} step, which trains no "
                              f"model; name a {' or '.join(RUN_COMMANDS)} step")
        return pipe.path

    def _resolve(self, pair: PairSpec, label: str, template: str | None, fields: dict, find_config) -> Path:
        candidates = [template] if template else list(pair.config)
        tried = []
        for tmpl in candidates:
            text = tmpl.format(method=label, **fields)
            tried.append(text)
            try:
                return find_config(text)
            except ConfigError:
                continue
        raise ConfigError(f"suite {self.name!r}, pair {pair.name!r}, method {label!r}: no config found "
                          f"(tried {', '.join(tried) or 'nothing: the pair has no `config` templates'})")

    def reference(self, pair: str, label: str) -> float | None:
        for p in self.spec.pairs:
            if p.name == pair:
                return p.reference.get(label)
        return None

    def pair(self, name: str) -> PairSpec:
        return next(p for p in self.spec.pairs if p.name == name)


def _ordered(names: list[str]) -> list[str]:
    """Labels-only baseline first, then KD, then the rest in the given order."""
    first = [n for n in ("ce", "kd") if n in names]
    return first + [n for n in names if n not in first]


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (``mnist1d``) or a suite YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            names = available_suites()
            hint = close_matches(str(name_or_path), names)
            raise ConfigError(f"unknown suite {str(name_or_path)!r}" + (f": did you mean {hint[0]!r}?" if hint else "")
                              + f" (shipped suites: {', '.join(names)}; or give a suite YAML file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite file {str(path)!r} is not valid YAML: {exc}") from None
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid suite file {str(path)!r}:"]
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {loc}: {'unknown key' if e['type'] == 'extra_forbidden' else e['msg']}")
        raise ConfigError("\n".join(lines)) from None
    names = [p.name for p in spec.pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"suite file {str(path)!r}: pair names must be unique (got {names})")
    return Suite(path.stem, spec, path)
