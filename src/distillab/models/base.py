"""What every model in the zoo describes about itself, and the one way to build one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distillab.core.files import CheckpointError, load_checkpoint
from distillab.registry import Registry, RegistryError

MODELS: Registry = Registry("model")


@dataclass(frozen=True)
class FeatureStage:
    """One feature stage of a model.

    name: the module path whose *output* is this stage's feature map (a tap address).
    channels: channels of that feature map.
    stride: total spatial (or temporal) reduction relative to the input.
    preact: tap address of the same feature before its final ReLU (``"path:input"`` reads the input
        of a parameter-free activation module), or None where the architecture has no such point.
    bn: module path of the BatchNorm applied right before that ReLU (mdistiller's ``get_bn_before_relu``;
        OFD reads its margins from it), or None where no single BatchNorm covers the stage's channels.
    """

    name: str
    channels: int
    stride: int
    preact: str | None = None
    bn: str | None = None


class ZooModel(nn.Module):
    """Base for models in the zoo: forward returns logits; features are read by taps, not returned.

    Subclasses set ``feature_info`` (stages, shallow to deep), ``embedding_dim`` and ``head`` (the
    module path of the classifier; the pooled embedding is the classifier's input, tap ``head:input``).
    """

    feature_info: list[FeatureStage]
    embedding_dim: int
    head: str
    num_classes: int
    input_shape: tuple[int, ...] = (3, 32, 32)  # one sample's shape, batch excluded (CIFAR by default)

    @property
    def embedding_tap(self) -> str:
        """Tap address of the pooled penultimate embedding (the classifier's input)."""
        return f"{self.head}:input"


def model_kind(name: str) -> str:
    """``classifier`` (the zoo's networks) or ``generator`` (noise in, inputs out: data-free distillation)."""
    return MODELS.entry(name).meta.get("kind", "classifier")


def create_model(name: str, num_classes: int | None = None, **kwargs) -> ZooModel:
    """Build a registered model by name. The one way in. Generators take no ``num_classes``."""
    factory = MODELS.get(name)
    if model_kind(name) == "generator":
        return factory(**kwargs)
    return factory(num_classes=num_classes, **kwargs)


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions, BN weight 1 / bias 0: the CIFAR zoo's initialisation."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _inner_state(state: dict) -> dict:
    """The parameter dict inside a checkpoint (under ``model``, ``state_dict`` or ``net``, else the dict
    itself), without a DataParallel/DDP ``module.`` prefix."""
    for key in ("model", "state_dict", "net"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict_compat(model: nn.Module, state: dict, strict: bool = True) -> None:
    """Load a state dict saved by distillab, RepDistiller or mdistiller.

    Accepts a bare state dict or a checkpoint dict holding it under ``model``, ``state_dict`` or
    ``net``; strips a DataParallel/DDP ``module.`` prefix.
    """
    model.load_state_dict(_inner_state(state), strict=strict)


def _head_rows(state: dict, model: nn.Module) -> int | None:
    """Rows (classes) of the classifier in ``state``, found through ``model``'s head path."""
    head = getattr(model, "head", None)
    for key in ((f"{head}.weight", f"{head}.0.weight") if head else ()):
        if key in state and getattr(state[key], "dim", lambda: 0)() >= 1:
            return int(state[key].shape[0])
    return None


@dataclass
class LoadedModel:
    """A model with its weights and what its file records about it."""

    model: nn.Module
    path: Path
    arch: str
    options: dict
    num_classes: int
    data: str | None = None  # the data set it was trained on (distillab files)
    data_options: dict = field(default_factory=dict)
    data_root: str | None = None  # where that data set was read from (its run's data.root)
    input: str = "input"  # the batch field it was trained to read
    test_top1: float | None = None
    tokenizer: dict | None = None  # a language model's: what turned its text into ids (name, vocab_size, hash)

    @property
    def label(self) -> str:
        """A short name: the run folder for a run's model file, else the file name without suffix."""
        run_file = self.path.name == "model.pt" or self.path.parent.name == "models"
        folder = self.path.parent.parent if self.path.parent.name == "models" else self.path.parent
        name = folder.name if run_file and folder.name else self.path.stem
        if self.path.parent.name == "models" and self.path.stem != "student":
            name = f"{name}-{self.path.stem}"
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "model"

    def describe(self, role: str) -> str:
        """'expert: run-name, test top-1 98.2%' for figure titles."""
        parts = [self.label] if self.label != role else []
        if self.test_top1 is not None:
            parts.append(f"test top-1 {self.test_top1:.1f}%")
        return f"{role}: {', '.join(parts)}" if parts else role


def model_file(source: str | Path, name: str | None = None) -> Path:
    """The file behind ``source``: a run folder stands for its ``model.pt`` (the student's), or for
    ``models/<name>.pt`` when ``name`` names another of its trained models."""
    path = Path(source)
    if not path.is_dir():
        return path
    if name in (None, "student"):
        return path / "model.pt"
    found = path / "models" / f"{name}.pt"
    if not found.is_file():
        saved = sorted(p.stem for p in (path / "models").glob("*.pt")) if (path / "models").is_dir() else []
        raise CheckpointError(f"run folder {str(path)!r} holds no model {name!r} (saved models: "
                              f"{', '.join(saved) or 'only model.pt'})")
    return found


def load_model(source: str | Path, *, name: str | None = None, arch: str | None = None,
               options: dict | None = None, num_classes: int | None = None, data: str | None = None,
               role: str = "model", map_location: str | torch.device = "cpu") -> LoadedModel:
    """The one way to load a trained model: from a run folder (``name`` picks one of its models), a
    distillab model file (records architecture, options, classes, data set) or a foreign state dict
    (RepDistiller, mdistiller, any with the zoo's key names; ``arch`` is then needed).

    arch / options: default to the recorded ones (options recorded for another architecture are not
    applied). num_classes: the classes the model must predict; a file whose classifier has another
    number is refused (a ConfigError naming ``role``, the data set ``data`` and the fix); None: the
    recorded number, else the classifier's. The weights are loaded strictly; a file that does not fit the architecture raises
    :class:`CheckpointError`.
    """
    from distillab.config import ConfigError

    path = model_file(source, name)
    meta = load_checkpoint(path, map_location=map_location)
    saved = meta.get("config") or {}
    if "arch" not in meta and isinstance(saved.get("student"), dict):  # a training checkpoint (checkpoints/last.pt)
        section = saved["student"] if name in (None, "student") else (saved.get("models") or {}).get(name, {})
        meta = {**meta, "arch": section.get("arch"), "options": section.get("options"), "input": section.get("input"),
                "data": (saved.get("data") or {}).get("name")}
        if name not in (None, "student"):
            meta["model"] = (meta.get("models") or {}).get(name, {})
    recorded = meta.get("arch")
    arch = arch or recorded
    if arch is None:
        raise ConfigError(f"{role} checkpoint {str(path)!r} does not record its architecture: give its arch")
    if options is None:
        options = dict(meta.get("options") or {}) if arch == recorded else {}
    state = _inner_state(meta)

    def build(classes: int) -> nn.Module:
        try:
            return create_model(arch, num_classes=classes, **options)
        except RegistryError as exc:
            raise ConfigError(f"{role}.arch: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{role}.options: {exc}") from None

    classes = num_classes if num_classes is not None else meta.get("num_classes")
    model = build(int(classes) if classes is not None else 2)
    got = _head_rows(state, model)
    if classes is None:
        if got is None:
            raise ConfigError(f"{role} checkpoint {str(path)!r} records no number of classes and its classifier "
                              "was not found: give the number of classes")
        classes, model = got, build(got)
    elif got is not None and got != int(classes):
        target = data if num_classes is not None else meta.get("data")
        where = f"data set {target!r}" if target else "the data set"
        raise ConfigError(f"{role} checkpoint {str(path)!r} has {got} output classes but {where} has {classes}: "
                          f"use a {role} trained on {target or 'the same classes'}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{role} checkpoint {str(path)!r} does not fit architecture {arch!r} "
                              f"(options {options}): {exc}") from None
    data_cfg = saved.get("data") or {}
    return LoadedModel(model=model, path=path, arch=arch, options=dict(options), num_classes=int(classes),
                       data=meta.get("data"), data_options=dict(data_cfg.get("options") or {}),
                       data_root=data_cfg.get("root"), input=meta.get("input") or "input",
                       test_top1=meta.get("test_top1"), tokenizer=meta.get("tokenizer"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dummy_input(input_shape: tuple[int, ...], batch: int = 2, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(batch, *input_shape, device=device)
