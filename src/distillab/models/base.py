"""What every model in the zoo describes about itself, and the one way to build one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distillab.registry import Registry

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


def create_model(name: str, num_classes: int, **kwargs) -> ZooModel:
    """Build a registered model by name. The one way in."""
    factory = MODELS.get(name)
    model = factory(num_classes=num_classes, **kwargs)
    return model


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


def load_state_dict_compat(model: nn.Module, state: dict, strict: bool = True) -> None:
    """Load a state dict saved by distillab, RepDistiller or mdistiller.

    Accepts a bare state dict or a checkpoint dict holding it under ``model``, ``state_dict`` or
    ``net``; strips a DataParallel/DDP ``module.`` prefix.
    """
    for key in ("model", "state_dict", "net"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model.load_state_dict(state, strict=strict)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dummy_input(input_shape: tuple[int, ...], batch: int = 2, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.zeros(batch, *input_shape, device=device)
