"""What a method's pre-training stage trains (see :class:`~distillab.methods.StageSpec`)."""

from __future__ import annotations

from torch import nn

from distillab.config import ConfigError
from distillab.engine.models import ModelSet
from distillab.methods import StageSpec


def stage_parameters(models: ModelSet, objective: nn.Module, stage: StageSpec) -> list[nn.Parameter]:
    """The parameters ``stage`` trains: a trainable model by name, its body (``<name>_body``: all but its
    classifier head, RepDistiller's ``get_feat_modules``), a term of the objective, or ``term.submodule``."""
    params: list[nn.Parameter] = []
    for what in stage.train:
        name = what.removesuffix("_body")
        if name in models and models[name].trainable:
            module = models[name].module
            head = getattr(module, "head", None)
            params += [p for n, p in module.named_parameters()
                       if what == name or head is None or not (n == head or n.startswith(head + "."))]
            continue
        term, _, sub = what.partition(".")
        if term not in objective.terms:
            raise ConfigError(f"stage {stage.name!r} trains {what!r}, which is neither a trainable model "
                             f"({', '.join(m.name for m in models.trainable)}) nor a term of the objective")
        module = objective.terms[term]
        params += list(module.get_submodule(sub).parameters() if sub else module.parameters())
    unique = list({id(p): p for p in params}.values())
    if not unique:
        raise ConfigError(f"stage {stage.name!r} has nothing to train ({stage.train})")
    return unique
