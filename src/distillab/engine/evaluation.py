"""Test-set evaluation of one or several models, and feature extraction over the training set.

Evaluation is one pass over the test set: every model reads its own input, the test split is shared
among ranks and the sums are all-reduced. With several models the *ensemble* (the mean of their
softmax probabilities) is scored in the same pass. Classifiers are scored per sample, language models
per real token (padding, labelled IGNORE_INDEX, counts nowhere).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from distillab.core import dist as comm
from distillab.core.contract import LABEL
from distillab.data.base import IGNORE_INDEX
from distillab.engine.batches import BatchPreparer
from distillab.engine.models import RunModel
from distillab.features import FeatureTaps, resolve_feature

ENSEMBLE = "ensemble"


def correct_and_count(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right top-1 predictions and predictions that count, as tensors (no host sync): one per sample for a
    classifier's (N, C) logits, one per real token for a language model's (N, L, V) (IGNORE_INDEX excluded)."""
    keep = labels != IGNORE_INDEX
    return ((logits.argmax(-1) == labels) & keep).sum(), keep.sum()


@torch.no_grad()
def evaluate_models(models: Sequence[RunModel], loader, batches: BatchPreparer, autocast: Callable,
                    device: torch.device, ensemble: bool = False,
                    token_bytes: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """name -> {"loss": mean cross-entropy, "top1": accuracy in %} on the test set (``ensemble``: also the
    mean of the models' probabilities, under the name "ensemble").

    Language models ((N, L, V) logits, labels IGNORE_INDEX at padding) are scored per real token: "loss" is
    nats per token, and with ``token_bytes`` (bytes each token id stands for) also "ppl" (perplexity) and
    "bpb" (bits per byte: the loss over the bytes the scored tokens stand for, comparable across tokenizers).
    """
    was_training = [m.module.training for m in models]
    for m in models:
        m.module.eval()
    names = [m.name for m in models] + ([ENSEMBLE] if ensemble else [])
    loss = {n: torch.zeros((), device=device) for n in names}
    correct = {n: torch.zeros((), device=device) for n in names}
    count = torch.zeros((), device=device)
    nbytes = torch.zeros((), device=device)
    table = token_bytes.to(device) if token_bytes is not None else None
    try:
        for raw in loader:
            fields = batches.test(raw)
            y = raw[LABEL].reshape(-1)
            probs = None
            for m in models:
                with autocast():
                    logits = m.module(fields[m.input]).float()
                logits = logits.reshape(-1, logits.shape[-1])
                loss[m.name] += F.cross_entropy(logits, y, reduction="sum", ignore_index=IGNORE_INDEX)
                correct[m.name] += correct_and_count(logits, y)[0]
                if ensemble:
                    p = logits.softmax(-1)
                    probs = p if probs is None else probs + p
            if ensemble:
                probs = probs / len(models)
                loss[ENSEMBLE] += F.nll_loss(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), y, reduction="sum",
                                             ignore_index=IGNORE_INDEX)
                correct[ENSEMBLE] += correct_and_count(probs, y)[0]
            keep = y != IGNORE_INDEX
            count += keep.sum()
            if table is not None:
                nbytes += (table[y.clamp_min(0)] * keep).sum()
    finally:
        for m, mode in zip(models, was_training):
            m.module.train(mode)
    flat = [t for name in names for t in (loss[name], correct[name].float())]
    totals = comm.all_reduce_(torch.stack([*flat, count.float(), nbytes.float()]))
    n = max(int(totals[-2].item()), 1)
    out = {name: {"loss": float(totals[2 * i]) / n, "top1": 100.0 * float(totals[2 * i + 1]) / n}
           for i, name in enumerate(names)}
    if table is not None:
        total_bytes = max(float(totals[-1]), 1.0)
        for i, name in enumerate(names):
            out[name]["ppl"] = math.exp(min(out[name]["loss"], 700.0))
            out[name]["bpb"] = float(totals[2 * i]) / (math.log(2) * total_bytes)
    return out


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
