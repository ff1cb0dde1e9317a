"""The whole plan of a run, checked before any data set is read or model built.

:func:`check_plan` turns a validated :class:`~distillab.config.RunConfig` into a :class:`RunPlan`: the
objective (every method option checked), the named models with their roles, architectures, options and
inputs (teachers found by their training config are looked up in the store), and the data set's
options and named inputs. Everything a user can get wrong in a config is refused here, as one
:class:`~distillab.config.ConfigError` naming the key and the fix: unknown options of the method, the
models or the data set, a term reading a model the run does not have, a frozen model given optimiser
settings, a model reading an input the data set does not provide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillab.config import ConfigError, ModelConfig, RunConfig, TeacherConfig, load_config
from distillab.core.contract import FROZEN, MAIN_INPUT, TRAINABLE
from distillab.core.files import load_checkpoint
from distillab.objective import Objective, build_objective
from distillab.options import check_options, option_default
from distillab.registry import RegistryError

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


@dataclass
class ModelPlan:
    """One named model of the run, as far as it is known before anything is built.

    section: where it is configured (``student``, ``teacher``, ``models.<name>``), for messages.
    arch / options: as built. source: ``"new"`` (built from
    arch + options, possibly starting from ``checkpoint``), ``"checkpoint"``, ``"store"`` (found by
    the training config ``teacher_config``) or ``"pretrained"`` (a frozen model whose options hold its weights: a
    Hugging Face folder). input: the batch field it reads.
    """

    name: str
    role: str
    section: str
    config: ModelConfig
    arch: str
    options: dict
    input: str
    source: str
    teacher_config: RunConfig | None = None


@dataclass
class RunPlan:
    cfg: RunConfig
    objective: Objective
    models: list[ModelPlan]  # the models the run builds: every trainable one and the frozen ones it uses
    fields: tuple[str, ...]  # the named inputs the data set provides

    def model(self, name: str) -> ModelPlan:
        return next(m for m in self.models if m.name == name)


def _derived(data: str) -> bool:
    """A data set made from another by a pipeline step (a teacher's generations): a teacher trained on the
    source is at home on it (the tokenizer check, when the models are loaded, still applies)."""
    from distillab.data import DATASETS

    try:
        return bool(DATASETS.entry(data).meta.get("derived"))
    except RegistryError:  # an unknown data set is refused by check_data, with its own message
        return False


def _frozen_plan(name: str, section: str, t: TeacherConfig, cfg: RunConfig) -> ModelPlan:
    """A frozen model: by checkpoint (arch from the config, the file or its training config) or by its
    training config in the store."""
    if t.lr is not None or t.weight_decay is not None or t.optim is not None:
        key = "lr" if t.lr is not None else "weight_decay" if t.weight_decay is not None else "optim"
        raise ConfigError(f"{section}.{key}: {name!r} is frozen, so it has no optimiser settings: remove {key}, "
                          "or make it trainable (an entry of `models` with role: trainable)")
    if t.checkpoint is None and t.config is None:
        if t.arch is not None and _holds_weights(t.arch, t.options or {}):  # e.g. a Hugging Face model's folder
            return ModelPlan(name, FROZEN, section, t, t.arch, dict(t.options or {}), t.input or MAIN_INPUT,
                             "pretrained")
        raise ConfigError(f"{section}: give `checkpoint` (a file) or `config` (a train-teacher YAML found in the store)"
                          " (or, for a Hugging Face model, arch: hf_causal_lm with options.path: its local folder)")
    tcfg = load_config(find_config(t.config), t.overrides) if t.config is not None else None
    if tcfg is not None and tcfg.data.name != cfg.data.name and not _derived(cfg.data.name):
        raise ConfigError(f"{section}.config {t.config!r} trains on {tcfg.data.name!r} but this run uses "
                          f"{cfg.data.name!r}")
    if t.checkpoint is not None:  # architecture and options: the config's, else the file's record, else its config's
        meta = load_checkpoint(t.checkpoint)
        recorded = meta.get("arch")
        if recorded is not None and t.arch is not None and t.arch != recorded:
            raise ConfigError(f"{section}.arch is {t.arch!r} but checkpoint {t.checkpoint!r} was trained as "
                              f"{recorded!r} (options {meta.get('options') or {}}): drop {section}.arch, or give a "
                              f"checkpoint of {t.arch!r}")
        if recorded is not None and t.arch is None and tcfg is not None and tcfg.student.arch != recorded:
            raise ConfigError(f"checkpoint {t.checkpoint!r} was trained as {recorded!r} but {section}.config "
                              f"{t.config!r} trains {tcfg.student.arch!r}: drop {section}.config (the file says what "
                              f"it is), or give the checkpoint that config trained")
        arch = t.arch or recorded or (tcfg.student.arch if tcfg is not None else None)
        if arch is None:
            raise ConfigError(f"{section}.arch is not set and checkpoint {t.checkpoint!r} does not name its "
                              f"architecture: set {section}.arch")
        options = dict(t.options or (meta.get("options") if arch == recorded else None)
                       or (tcfg.student.options if tcfg is not None and tcfg.student.arch == arch else {}))
        data_input = t.input or meta.get("input") or (tcfg.student.input if tcfg is not None else MAIN_INPUT)
        return ModelPlan(name, FROZEN, section, t, arch, options, data_input, "checkpoint", tcfg)
    return ModelPlan(name, FROZEN, section, t, tcfg.student.arch, dict(tcfg.student.options),
                     t.input or tcfg.student.input, "store", tcfg)


def _holds_weights(arch: str, options: dict) -> bool:
    """Whether a model built from ``arch`` and ``options`` comes with trained weights (registered as
    ``pretrained``: a Hugging Face folder), so a frozen one needs no checkpoint."""
    from distillab.models import MODELS

    try:
        pretrained = MODELS.entry(arch).meta.get("pretrained")
    except RegistryError:
        return False
    return bool(pretrained is not None and pretrained(dict(options)))


def _trainable_plan(name: str, section: str, m: ModelConfig) -> ModelPlan:
    if isinstance(m, TeacherConfig) and (m.config is not None or m.overrides):
        raise ConfigError(f"{section}: a trainable model is built from `arch` (and `checkpoint` to start from), "
                          "not found by `config` in the teacher store: remove config/overrides or set role: frozen")
    if m.arch is None:
        raise ConfigError(f"{section}.arch: a trainable model needs its architecture (`distillab list models`)")
    return ModelPlan(name, TRAINABLE, section, m, m.arch, dict(m.options), m.input or MAIN_INPUT, "new")


def _configured_models(cfg: RunConfig) -> list[ModelPlan]:
    plans = [_trainable_plan("student", "student", cfg.student)]
    if cfg.teacher is not None:
        plans.append(_frozen_plan("teacher", "teacher", cfg.teacher, cfg))
    for name, m in cfg.models.items():
        section = f"models.{name}"
        plans.append(_trainable_plan(name, section, m) if m.role == TRAINABLE else _frozen_plan(name, section, m, cfg))
    return plans


def _check_model_options(plan: ModelPlan) -> None:
    from distillab.models import MODELS

    try:
        factory = MODELS.get(plan.arch)
    except RegistryError as exc:
        raise ConfigError(f"{plan.section}.arch: {exc}") from None
    check_options(factory, plan.options, f"{plan.section}.options", f"model {plan.arch!r}",
                  skip=("num_classes", "out_shape"))  # given by the data set


def check_data(cfg: RunConfig) -> tuple[str, ...]:
    """The data set's named inputs for its options; unknown data sets and options are refused."""
    from distillab.data import check_dataset_options, data_fields

    try:
        check_dataset_options(cfg.data.name, cfg.data.options)
        return data_fields(cfg.data.name, cfg.data.options)
    except RegistryError as exc:
        raise ConfigError(f"data.name: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"data.options: {exc}") from None


def _field_hint(data: str, field: str) -> str:
    from distillab.data import DATASETS

    hints = DATASETS.entry(data).meta.get("field_hints", {})
    return f"; {hints[field]}" if field in hints else ""


def _check_task(cfg: RunConfig, objective: Objective, models: list[ModelPlan]) -> None:
    """Language modelling and classification do not mix: models, terms and options must fit the data set's
    task (a language model's context must hold the data's blocks)."""
    from distillab.data import DATASETS
    from distillab.models import MODELS

    entry = DATASETS.entry(cfg.data.name)
    task = entry.meta.get("task", "classification")
    lm = task == "lm"
    for m in models:
        model_task = MODELS.entry(m.arch).meta.get("task", "classification")
        if model_kind_is_generator(m.arch):
            if lm:
                raise ConfigError(f"{m.section}.arch: {m.arch!r} makes classifier inputs; data set {cfg.data.name!r} "
                                  "is language modelling (token ids), which no generator here produces")
            continue
        if lm and model_task != "lm":
            raise ConfigError(f"{m.section}.arch: {m.arch!r} is a classifier, but data set {cfg.data.name!r} is "
                              "language modelling: choose a language model (gpt_nano ... gpt_medium, or hf_causal_lm; "
                              "`distillab list models`)")
        if not lm and model_task == "lm":
            raise ConfigError(f"{m.section}.arch: {m.arch!r} is a language model, but data set {cfg.data.name!r} is "
                              "classification: use a language-modelling data set (stdlib, textfiles)")
    for name, term in objective.terms.items():
        if task not in term.tasks:
            hint = ("use a token-level term (token_kl, token_rkl, token_jsd, token_tvd; methods lm_fkl, lm_rkl, "
                    "lm_jsd, lm_tvd) or ce") if lm else "use a classification method"
            raise ConfigError(f"method term {name!r} ({type(term).__name__}) works on "
                              f"{' and '.join(term.tasks)} outputs, not on {'language models' if lm else task}: {hint}")
    if not lm:
        return
    block_of = entry.meta.get("block")  # a data set whose block length is not an option (a folder's) says it
    block = block_of(dict(cfg.data.options)) if block_of is not None else \
        cfg.data.options.get("block", option_default(DATASETS.get(cfg.data.name), "block"))
    for name, term in objective.terms.items():
        check = getattr(term, "check_block", None)  # terms that cut blocks (an on-policy prompt)
        if block is not None and check is not None:
            try:
                check(int(block))
            except ValueError as exc:
                raise ConfigError(f"method term {name!r}: {exc}") from None
    for m in models:
        context_of = MODELS.entry(m.arch).meta.get("context")  # a model whose context is in a file says it
        context = context_of(dict(m.options)) if context_of is not None else \
            m.options.get("context", option_default(MODELS.get(m.arch), "context"))
        if block is not None and context is not None and int(block) > int(context):
            raise ConfigError(f"data.options.block is {block} tokens but {m.section} ({m.arch}) has a context of "
                              f"{context}: use a shorter block (data.options.block={context}) or a model with a "
                              f"longer context ({m.section}.options.context={block}, for a model built new)")


def model_kind_is_generator(arch: str) -> bool:
    from distillab.models import model_kind

    return model_kind(arch) == "generator"


def check_plan(cfg: RunConfig) -> RunPlan:
    """Check everything a config says before any data set is read or model built; return the plan."""
    fields = check_data(cfg)
    objective = build_objective(cfg.method)
    configured = _configured_models(cfg)
    objective.bind({m.name: m.role for m in configured})
    needed = objective.needs()
    models = [m for m in configured if m.role == TRAINABLE or m.name in needed]
    for m in models:
        _check_model_options(m)
    from distillab.models import model_kind

    for m in models:
        if model_kind(m.arch) == "generator":
            if m.name == "student":
                raise ConfigError(f"student.arch: {m.arch!r} is a generator, not a classifier: the student is the "
                                  "classifier being distilled (put generators under `models:`)")
            if m.role != TRAINABLE:
                raise ConfigError(f"{m.section}: {m.arch!r} is a generator; generators are trained with the student "
                                  "(role: trainable)")
            continue  # a generator reads noise its method draws, not a batch field
        if m.input not in fields:
            raise ConfigError(f"{m.section}.input: data set {cfg.data.name!r} does not provide input {m.input!r} "
                              f"(it provides: {', '.join(fields)}){_field_hint(cfg.data.name, m.input)}")
    for name, term in objective.terms.items():
        for f in term.input_fields:
            if f not in fields:
                raise ConfigError(f"method term {name!r} reads the batch field {f!r}, which data set "
                                  f"{cfg.data.name!r} does not provide (it provides: {', '.join(fields)})"
                                  f"{_field_hint(cfg.data.name, f)}")
    _check_task(cfg, objective, models)
    trainable = {m.name for m in models if m.role == TRAINABLE}
    terms = set(objective.terms)
    for stage in objective.stages:
        for what in stage.train:
            if what.removesuffix("_body") not in trainable and what.partition(".")[0] not in terms:
                raise ConfigError(f"stage {stage.name!r} trains {what!r}, which is neither a trainable model "
                                  f"({', '.join(sorted(trainable))}) nor a term of the objective")
    if cfg.train.wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("train.wandb_project is set but wandb is not installed: pip install 'distillab[wandb]' "
                              "(or drop train.wandb_project)") from None
    return RunPlan(cfg, objective, models, fields)
