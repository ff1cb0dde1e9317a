"""Feature taps: capture any module's output (or input) by dotted path with forward hooks.

A tap address is ``"layer2"`` (the output of module ``layer2``) or ``"layer2.0.relu:input"`` (the
first positional input of that module, e.g. a pre-activation or a classifier's pooled input). The
model itself is never modified; hooks are removed on :meth:`FeatureTaps.remove` or on leaving the
``with`` block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from distillab.registry import unknown_name_message

if TYPE_CHECKING:
    from distillab.models.base import FeatureStage


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted ``path``; a clear error naming close matches if there is none."""
    names = dict(model.named_modules())
    if path not in names:
        raise KeyError(unknown_name_message(f"module path in {type(model).__name__}", path, [n for n in names if n]))
    return names[path]


def parse_tap(address: str) -> tuple[str, str]:
    path, _, where = address.partition(":")
    where = where or "output"
    if where not in ("output", "input"):
        raise ValueError(f"tap {address!r}: the part after ':' must be 'input' or 'output', got {where!r}")
    return path, where


class FeatureTaps:
    """Forward hooks on named modules; after a forward pass, ``taps.features[name]`` holds each tensor."""

    def __init__(self, model: nn.Module, taps: Mapping[str, str]) -> None:
        self.model = model
        self.taps = dict(taps)
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for name, address in self.taps.items():
            path, where = parse_tap(address)
            module = resolve_module(model, path)
            if where == "output":
                self._handles.append(module.register_forward_hook(self._save_output(name)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._save_input(name)))

    def _save_output(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output) -> None:
            self.features[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def _save_input(self, name: str):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            self.features[name] = inputs[0]

        return hook

    def pop(self) -> dict[str, torch.Tensor]:
        """The features captured by the last forward pass; the store is emptied for the next one."""
        feats, self.features = self.features, {}
        return feats

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def probe_shapes(model: nn.Module, taps: Mapping[str, str], input_shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, torch.Size]:
    """Run one dummy batch of 2 through ``model`` in eval mode and return each tap's shape (batch included).
    ``dtype``: the input's (token ids of a language model: torch.long)."""
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, taps) as t:
            model(torch.zeros(2, *input_shape, device=device, dtype=dtype))
            missing = [n for n in taps if n not in t.features]
            if missing:
                raise RuntimeError(f"taps {missing} were never reached by a forward pass of {type(model).__name__}")
            return {name: feat.shape for name, feat in t.features.items()}
    finally:
        model.train(was_training)


def resolve_feature(model: nn.Module, name: str) -> str:
    """Turn a feature name into a tap address.

    ``"embedding"``: the model's pooled embedding (``embedding_tap``); ``"stage<i>"`` / ``"preact<i>"``:
    entry ``i`` of ``feature_info`` (negative counts from the end); anything else is taken as an address.
    """
    info = getattr(model, "feature_info", None)
    if name == "embedding":
        tap = getattr(model, "embedding_tap", None)
        if tap is None:
            raise ValueError(f"{type(model).__name__} does not describe its embedding: set `head` (classifier path) "
                             "or request the feature by address, e.g. 'fc:input'")
        return tap
    for prefix in ("stage", "preact"):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.lstrip("-").isdigit():
            if info is None:
                raise ValueError(f"{type(model).__name__} has no feature_info; request {name!r} by module path instead")
            i = int(rest)
            if not -len(info) <= i < len(info):
                raise ValueError(f"{name!r}: {type(model).__name__} has {len(info)} feature stages")
            stage = info[i]
            if prefix == "stage":
                return stage.name
            if stage.preact is None:
                raise ValueError(f"{name!r}: stage {stage.name!r} of {type(model).__name__} has no pre-activation output")
            return stage.preact
    return name


@torch.no_grad()
def embed_batches(model: nn.Module, batches, name: str = "the model") -> torch.Tensor:
    """Pooled embeddings (the ``embedding`` feature) of prepared input batches, eval mode, CPU float32.

    ``batches`` yields input tensors ready for the model; a model that cannot read their shape raises a
    ValueError naming ``name`` and the shape.
    """
    model.eval()
    out = []
    with FeatureTaps(model, {"embedding": resolve_feature(model, "embedding")}) as taps:
        for x in batches:
            try:
                model(x)
            except RuntimeError as exc:
                raise ValueError(f"{name} ({type(model).__name__}) cannot read inputs of shape "
                                 f"{tuple(x.shape[1:])}: {exc}") from None
            out.append(taps.pop()["embedding"].flatten(1).float().cpu())
    return torch.cat(out)


def feature_name(term: str, value, kind: str = "stage", option: str = "feature") -> str:
    """One feature option as a name: an int ``i`` (the older spelling) becomes ``f"{kind}{i}"``, a
    non-empty string is kept; anything else is a ValueError naming ``term`` and ``option``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ValueError(f"{term}: {option} takes feature names such as '{kind}1' (or feature_info indices), "
                         f"got {value!r}")
    return f"{kind}{value}" if isinstance(value, int) else value


def feature_names(term: str, values, kind: str = "stage", option: str = "stages") -> tuple[str, ...]:
    """A list option of features as names (see :func:`feature_name`): non-empty, without repeats."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{term}: {option} must be a list of feature names, got {values!r}")
    names = tuple(feature_name(term, v, kind, option) for v in values)
    if not names:
        raise ValueError(f"{term}: {option} must name at least one feature, got an empty list")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{term}: {option} names {repeated} more than once ({list(values)})")
    return names


def stage_reference(name: str) -> tuple[str, int] | None:
    """``("stage", i)`` / ``("preact", i)`` for a name ``"stage<i>"`` / ``"preact<i>"``, else None."""
    for prefix in ("stage", "preact"):
        rest = name[len(prefix):]
        if name.startswith(prefix) and rest.lstrip("-").isdigit():
            return prefix, int(rest)
    return None


def feature_stage(model: nn.Module, name: str) -> FeatureStage:
    """The ``feature_info`` entry (a :class:`~distillab.models.FeatureStage`) that feature ``name`` reads:
    ``"stage<i>"`` / ``"preact<i>"`` (negative ``i`` counts from the end) or a module path equal to a
    stage's ``name`` or ``preact``. Any other name is a ValueError."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError(f"{name!r}: {type(model).__name__} has no feature_info, so no feature stage to read")
    ref = stage_reference(name)
    if ref is not None:
        i = ref[1]
        if not -len(info) <= i < len(info):
            raise ValueError(f"{name!r}: {type(model).__name__} has {len(info)} feature stages")
        return info[i]
    for stage in info:
        if name in (stage.name, stage.preact):
            return stage
    raise ValueError(f"{name!r} is not a feature stage of {type(model).__name__}: use 'stage<i>' or "
                     f"'preact<i>' (i < {len(info)}) or one of {[s.name for s in info]}")
