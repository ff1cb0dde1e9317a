"""The frozen models a run reads at every step, and their optional output caches.

A frozen model runs under no_grad in eval mode on its own input field. With ``train.teacher_cache`` each
keeps a :class:`~distillab.engine.teacher_cache.TeacherCache` of its logits and pooled features, keyed by
sample and exact augmentation, and runs only on the rows the cache misses. Inputs a step makes itself (an
on-policy step's samples) are never cached.
"""

from __future__ import annotations

import torch

from distillab.config import ConfigError
from distillab.engine.models import RunModel
from distillab.engine.teacher_cache import TeacherCache
from distillab.features import FeatureTaps
from distillab.losses import ModelOutputs

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FrozenModels:
    """``models``: the frozen models read at every step. ``caches``: name -> cache, for those cached."""

    def __init__(self, models: list[RunModel], caches: dict[str, TeacherCache] | None = None) -> None:
        self.models = models
        self.caches = dict(caches or {})

    def outputs(self, fields: dict[str, torch.Tensor], idx: torch.Tensor, keys: torch.Tensor | None,
                taps: dict[str, FeatureTaps], *, cached: bool = True) -> dict[str, ModelOutputs]:
        """Each model's logits and tapped features for the batch (from its cache where it has one, unless
        ``cached`` is false: inputs that are not the data set's samples)."""
        out = {}
        for m in self.models:
            x = fields[m.input]

            def forward(rows: torch.Tensor | None = None, m: RunModel = m, x: torch.Tensor = x):
                logits = m.module(x if rows is None else x[rows])
                return logits, taps[m.name].pop()

            with torch.no_grad():
                cache = self.caches.get(m.name) if cached else None
                if cache is None:
                    out[m.name] = ModelOutputs(*forward())
                    continue
                if keys is None:
                    raise ConfigError("train.teacher_cache needs an augmentation with keyed parameters "
                                     "(RandomCropFlip, RandomShift1D) or data.augment=false")
                out[m.name] = ModelOutputs(*cache.fetch(cache.keys(idx, keys), forward))
        return out


def build_cache(model: RunModel, shapes: dict[str, torch.Size], *, num_samples: int, key_space: int,
                logits_shape: tuple[int, ...], dtype: str, device: torch.device, max_gb: float,
                method: str) -> TeacherCache:
    """The output cache (``train.teacher_cache``) of one frozen model: logits and pooled features only.
    ``shapes``: its features' probed shapes; ``logits_shape``: one sample's logits (``(classes,)``, or
    ``(block, vocabulary)`` for a language model)."""
    maps = sorted(n for n, shape in shapes.items() if len(shape) > 2)
    if maps:
        raise ConfigError(f"train.teacher_cache stores teacher logits and pooled feature vectors, but method {method!r} "
                         f"reads feature maps of {model.name!r} ({', '.join(maps)}): turn the cache off")
    try:
        return TeacherCache(num_samples, key_space, logits_shape, {n: tuple(shape[1:]) for n, shape in shapes.items()},
                            dtype=CACHE_DTYPES[dtype], device=device, max_bytes=int(max_gb * 2**30))
    except ValueError as exc:  # too large for train.teacher_cache_max_gb: the message names the fixes
        raise ConfigError(f"train.teacher_cache ({model.name}): {exc}") from None
