"""Test-set evaluation of one or several models, and feature extraction over the training set.

Evaluation is one pass over the test set: every model reads its own input, the test split is shared
among ranks and the sums are all-reduced. With several models the *ensemble* (the mean of their
softmax probabilities) is scored in the same pass.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from distillab.core import dist as comm
from distillab.core.contract import LABEL
from distillab.engine.batches import BatchPreparer
from distillab.engine.models import RunModel
from distillab.features import FeatureTaps, resolve_feature

ENSEMBLE = "ensemble"


@torch.no_grad()
def evaluate_models(models: Sequence[RunModel], loader, batches: BatchPreparer, autocast: Callable,
                    device: torch.device, ensemble: bool = False) -> dict[str, dict[str, float]]:
    """name -> {"loss": mean cross-entropy, "top1": accuracy in %} on the test set (``ensemble``: also the
    mean of the models' probabilities, under the name "ensemble")."""
    was_training = [m.module.training for m in models]
    for m in models:
        m.module.eval()
    names = [m.name for m in models] + ([ENSEMBLE] if ensemble else [])
    loss = {n: torch.zeros((), device=device) for n in names}
    correct = {n: torch.zeros((), device=device) for n in names}
    n = 0
    try:
        for raw in loader:
            fields = batches.test(raw)
            y = raw[LABEL]
            probs = None
            for m in models:
                with autocast():
                    logits = m.module(fields[m.input]).float()
                loss[m.name] += F.cross_entropy(logits, y, reduction="sum")
                correct[m.name] += (logits.argmax(1) == y).sum()
                if ensemble:
                    p = logits.softmax(1)
                    probs = p if probs is None else probs + p
            if ensemble:
                probs = probs / len(models)
                loss[ENSEMBLE] += F.nll_loss(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), y, reduction="sum")
                correct[ENSEMBLE] += (probs.argmax(1) == y).sum()
            n += len(y)
    finally:
        for m, mode in zip(models, was_training):
            m.module.train(mode)
    flat = [t for name in names for t in (loss[name], correct[name].float())]
    totals = comm.all_reduce_(torch.stack([*flat, torch.tensor(float(n), device=device)]))
    count = max(int(totals[-1].item()), 1)
    return {name: {"loss": float(totals[2 * i]) / count, "top1": 100.0 * float(totals[2 * i + 1]) / count}
            for i, name in enumerate(names)}


@torch.no_grad()
def extract_features(model: RunModel, names: Sequence[str], loader, batches: BatchPreparer,
                     autocast: Callable) -> dict[str, torch.Tensor]:
    """Features ``names`` of ``model`` over ``loader`` (eval mode, test-time transforms, the model's own
    input), gathered over ranks in sample order: {name: (N, ...)} in float32."""
    taps = {n: resolve_feature(model.module, n) for n in names}
    was_training = model.module.training
    model.module.eval()
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    try:
        with FeatureTaps(model.module, taps) as t:
            for raw in loader:
                with autocast():
                    model.module(batches.test(raw)[model.input])
                for n, f in t.pop().items():
                    out[n].append(f.float())
    finally:
        model.module.train(was_training)
    return {n: comm.gather_varsize(torch.cat(v)) for n, v in out.items()}
