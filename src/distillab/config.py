"""Typed run configuration: YAML files plus ``key=value`` overrides, validated by pydantic.

An unknown key or a wrong type is rejected with a message that names the key and the closest valid
one. The resolved config is saved with every run and checkpoint.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from distillab.core.errors import UserError
from distillab.registry import close_matches


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message says which key and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = "mnist1d"  # registered data set (`distillab list datasets`)
    root: str | None = None  # where archives/caches live; None: $DISTILLAB_DATA or ~/.cache/distillab/data
    download: bool = False  # fetch missing archives from their official address (MD5-checked)
    augment: bool = True  # batched training augmentation of the data set (crop+flip, 1-D shift)
    on_device: bool = True  # keep in-memory data sets on the training device (no host->device copies)
    augment_variants: int | None = None  # FKD style: R fixed augmentation draws per sample, one picked per epoch
    num_workers: int = Field(0, ge=0)  # DataLoader workers for data sets that are not held in memory
    val_fraction: float | None = Field(None, gt=0, lt=1)  # hold out this share of the training set (stratified);
    #                            selection (best epoch, tuning) then reads it, never the test set. None: no split
    val_seed: int = 0  # the held-out samples are drawn by this seed alone: the same for every run seed and trial
    options: dict[str, Any] = Field(default_factory=dict)  # data-set-specific keyword options

    @field_validator("augment_variants")
    @classmethod
    def _variants(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be at least 1 (or null: a fresh draw every epoch)")
        return v


class OptimConfig(Section):
    name: Literal["sgd", "adamw", "adam"] = "sgd"  # adam: L2-coupled weight decay, as torch.optim.Adam
    lr: float = Field(0.05, ge=0)  # CRD protocol: 0.05 (0.01 for MobileNetV2 / ShuffleNet students)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW only
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])  # epochs where lr *= gamma
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)  # linear warm-up from lr/100 (cosine and multistep alike)
    min_lr: float = Field(0.0, ge=0)  # cosine floor

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("both must lie in [0, 1)")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(m < 0 for m in v):
            raise ValueError("epochs must be >= 0")
        return v



MODEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_MODEL_NAMES = ("student", "teacher", "ensemble")  # the two sections, and the ensemble's metrics line


class ModelConfig(Section):
    arch: str  # registered model (`distillab list models`)
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments of the model factory
    checkpoint: str | None = None  # state dict or checkpoint to load (distillab, RepDistiller, mdistiller)
    input: str = "input"  # the batch field this model reads (a data set may provide more, e.g. a privileged view)
    lr: float | None = Field(None, ge=0)  # this model's learning rate (None: optim.lr); trainable models only
    weight_decay: float | None = Field(None, ge=0)  # this model's weight decay (None: optim.weight_decay); trainable only
    optim: OptimConfig | None = None  # this model's own optimiser and schedule (a GAN-style generator's Adam)


class TeacherConfig(ModelConfig):
    arch: str | None = None  # None: taken from the checkpoint or the teacher config
    config: str | None = None  # a train-teacher YAML: the teacher is looked up in the store by it
    overrides: list[str] = Field(default_factory=list)  # overrides the teacher was trained with (store lookup)
    input: str | None = None  # None: the input the teacher was trained on (its config's), else "input"


class NamedModelConfig(TeacherConfig):
    """An entry of ``models``: a peer (trainable) or another teacher (frozen), found like ``student``
    (arch + options, optionally a checkpoint to start from) or like ``teacher`` (checkpoint or store)."""

    role: Literal["trainable", "frozen"]  # trainable: trained with the student; frozen: eval mode, no gradients


class MethodConfig(Section):
    name: str = "ce"  # registered method (`distillab list methods`)
    weights: dict[str, float] = Field(default_factory=dict)  # override a term's weight, e.g. {kd: 0.9}
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-term options, e.g. {kd: {temperature: 4}}
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-stage epochs/lr, e.g. {init: {epochs: 5}}
    schedule: dict[str, Any] = Field(default_factory=dict)  # data schedule options; {name: ...} picks another
    step: str | None = None  # the training step (`joint`: one update of every trainable model; `sequential`:
    #                          one model after the other, DML's paper order); None: the method's own


class TrainConfig(Section):
    epochs: int = 240
    batch_size: int = 64
    eval_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    bf16: bool = False  # bf16 autocast on cuda/cpu
    channels_last: bool = False  # memory format for 4-D image inputs
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    eval_every: int = 1  # epochs between test evaluations (the last epoch is always evaluated)
    progress: bool = True  # rich progress bar
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    wandb_project: str | None = None  # also log to this Weights & Biases project (needs the wandb extra)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    drop_last: bool = False  # drop the last partial batch (static shapes: one compiled graph instead of two)
    compile: bool = False  # torch.compile the student and the teacher (opt-in: minutes of compilation first)
    sync_bn: bool = False  # under DDP on CUDA: SyncBatchNorm in the student (BN statistics over the global batch)
    teacher_cache: bool = False  # FKD-style cache of teacher outputs keyed by sample and augmentation
    teacher_cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage type of cached outputs
    teacher_cache_max_gb: float = Field(4.0, gt=0)  # refuse a cache larger than this (bound it with data.augment_variants)
    threads: int | None = Field(None, ge=1)  # torch CPU threads of this process (None: torch's default, one per core);
    #   1 is often fastest when other work shares the cores (e.g. several runs at once)

    @field_validator("epochs", "batch_size", "eval_batch_size", "checkpoint_every", "eval_every")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v


class RunConfig(Section):
    name: str | None = None  # run folder name; None: <method>-<student>-<data>-s<seed>
    seed: int = 0
    out_dir: str = "runs"  # run folders are created inside
    store: str | None = None  # teacher store; None: $DISTILLAB_HOME/teachers or ~/.distillab/teachers
    data: DataConfig = Field(default_factory=DataConfig)
    student: ModelConfig = Field(validation_alias=AliasChoices("student", "model"))  # the trained network ("model" in teacher configs)
    teacher: TeacherConfig | None = None
    models: dict[str, NamedModelConfig] = Field(default_factory=dict)  # more named models: peers, teachers
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict) -> dict:
        for name in v:
            if name in RESERVED_MODEL_NAMES:
                raise ValueError(f"{name!r} cannot name an entry of `models` ('student' and 'teacher' have their "
                                 "own sections, 'ensemble' names the mean of the trainable models)")
            if not MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must be a Python identifier (letters, digits, _)")
        return v


# ---------------------------------------------------------------- loading and overrides


def _section_fields(model: type[BaseModel], path: list[str]) -> list[str] | None:
    """The valid keys at ``path`` inside ``model``, or None where the level is free-form (a dict)."""
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return list(model.model_fields)


def _other_sections(key: str, section: list[str]) -> list[str]:
    """``section.key`` spellings of ``key`` (or a close match) in the other top-level sections: ``train.lr``
    -> ``optim.lr``."""
    out = []
    order = [*SHORTHAND_SECTIONS, "method", *(n for n in RunConfig.model_fields if n not in (*SHORTHAND_SECTIONS, "method"))]
    for name in order:
        fields = _section_fields(RunConfig, [name])
        if not fields or [name] == section:
            continue
        out += [f"{name}.{m}" for m in close_matches(key, fields)]
    exact = [o for o in out if o.endswith(f".{key}")]
    return exact + [o for o in out if o not in exact]


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            valid = _section_fields(RunConfig, loc[:-1]) or []
            matches = close_matches(loc[-1], valid)
            elsewhere = _other_sections(loc[-1], loc[:-1])
            exact = [o for o in elsewhere if o.endswith(f".{loc[-1]}")]
            if exact or (elsewhere and not matches):  # `train.lr`: the key lives in another section
                hint = f"did you mean {(exact or elsewhere)[0]!r}?"
            elif matches:
                hint = f"did you mean {'.'.join(loc[:-1] + [matches[0]])!r}?"
            else:
                hint = f"valid keys here: {', '.join(valid)}"
            lines.append(f"  unknown key {key!r}: {hint}")
        elif e["type"] == "missing":
            lines.append(f"  missing key {key!r}: it is required")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=0.01`` -> (["optim", "lr"], 0.01); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.01)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from None
    return key.split("."), value


SHORTHAND_SECTIONS = ("train", "optim", "data")  # `device=cpu` means `train.device=cpu`


def expand_shorthand(path: list[str]) -> list[str]:
    """A one-word key that is not a top-level field but names a field of exactly one section
    (``device``, ``epochs``, ``lr``, ...) stands for that field; anything else is returned unchanged."""
    if len(path) != 1 or path[0] in RunConfig.model_fields:
        return path
    owners = [sec for sec in SHORTHAND_SECTIONS if path[0] in _section_fields(RunConfig, [sec])]
    return [owners[0], path[0]] if len(owners) == 1 else path


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        path = expand_shorthand(path)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file. A top-level ``extends: other.yaml`` (relative to this file) is read first and
    this file's keys are merged over it, so a protocol is written once and shared by many configs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    parent = raw.pop("extends", None)
    if parent is not None:
        base_path = (path.parent / parent).resolve()
        if base_path in _seen:
            raise ConfigError(f"config file {str(path)!r}: `extends` loops back to {str(base_path)!r}")
        raw = deep_merge(load_yaml(base_path, _seen + (path.resolve(),)), raw)
    return raw


def validate(raw: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Read a YAML file (or start from ``base``), apply dotted overrides, validate."""
    raw = load_yaml(path) if path is not None else copy.deepcopy(base or {})
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, str(path) if path is not None else "config")


def flatten_settings(d: dict, prefix: str = "", whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """Nested settings as dotted keys (``train.epochs``); mappings under a key in ``whole`` (e.g. a model's
    ``options``) stay one value; an empty mapping adds nothing."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in whole:
            out.update(flatten_settings(value, f"{prefix}{key}.", whole))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
