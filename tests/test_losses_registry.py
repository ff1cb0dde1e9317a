"""Every registered loss term, with its defaults, on small CIFAR-shaped models: it binds to a run of named
models, declares what it reads, sets up from probed shapes, gives finite values, and its gradient reaches
trainable models and its own parameters only, never a frozen model."""

from __future__ import annotations

import warnings

import pytest
import torch

from distillab.core.contract import FROZEN, TRAINABLE, Batch, ModelOutputs, SetupContext
from distillab.features import FeatureTaps, probe_shapes, resolve_feature
from distillab.losses import LOSSES
from distillab.models import create_model

LOSS_NAMES = LOSSES.names()
# the terms that take a classifier's outputs; those for language models only are checked on (N, L, V) outputs in
# tests/test_lm_losses.py
CLASSIFICATION_LOSSES = [n for n in LOSS_NAMES if "classification" in LOSSES.get(n).tasks]
# a run with every kind of model a term may read: peers, several teachers, a generator (data-free terms)
ROLES = {"student": TRAINABLE, "peer": TRAINABLE, "generator": TRAINABLE, "teacher": FROZEN, "teacher2": FROZEN}
NUM_CLASSES, BATCH, NUM_TRAIN = 10, 8, 64


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    out = {name: create_model("resnet8", num_classes=NUM_CLASSES) for name in ROLES}
    for name, role in ROLES.items():
        if role == FROZEN:
            out[name].eval().requires_grad_(False)
    return out


def _outputs(term, models, x):
    reads = term.reads()
    outputs = {}
    for name, features in reads.items():
        model = models[name]
        taps = {f: resolve_feature(model, f) for f in features}
        with FeatureTaps(model, taps) as t, (torch.no_grad() if ROLES[name] == FROZEN else torch.enable_grad()):
            outputs[name] = ModelOutputs(model(x), t.pop())
    return outputs


@pytest.mark.parametrize("loss", CLASSIFICATION_LOSSES)
def test_every_loss_binds_sets_up_and_trains_only_what_it_should(loss, models):
    term = LOSSES.get(loss)()
    term.bind(ROLES)
    reads = term.reads()
    assert reads and set(reads) <= set(ROLES), f"{loss} reads {reads}"
    assert any(ROLES[name] == TRAINABLE for name in reads), f"{loss} reads no trainable model"
    if not term.needs_teacher:
        assert all(ROLES[name] == TRAINABLE for name in reads), f"{loss}: needs_teacher is False but reads {reads}"
    shapes = {name: probe_shapes(models[name], {f: resolve_feature(models[name], f) for f in feats}, (3, 32, 32))
              for name, feats in reads.items()}
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=g)
    roles = dict(term.roles)
    ctx = SetupContext(num_classes=NUM_CLASSES, num_train=NUM_TRAIN, student_shapes=shapes.get(roles["student"], {}),
                       teacher_shapes=shapes.get(roles["teacher"], {}), train_labels=labels,
                       student=models[roles["student"]], teacher=models[roles["teacher"]], shapes=shapes,
                       models=dict(models), roles=dict(ROLES))
    with warnings.catch_warnings():  # CRD warns that nce_k is clipped to the tiny training set
        warnings.simplefilter("ignore", UserWarning)
        term.setup(ctx)
    for model in models.values():
        model.zero_grad(set_to_none=True)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    index = torch.randperm(NUM_TRAIN, generator=g)[:BATCH]
    outputs = _outputs(term, models, x)
    fields = {"input": x, **{f: torch.softmax(torch.randn(BATCH, NUM_CLASSES, generator=g), 1)  # stored soft targets
                             for f in term.input_fields}}
    batch = Batch(x, labels[index], index, outputs.get(roles["student"]), outputs.get(roles["teacher"]), epoch=30,
                  outputs=outputs, fields=fields)
    term.train()
    out = term(batch)
    parts = out if isinstance(out, dict) else {"value": out}
    for name, value in parts.items():
        assert value.dim() == 0 and torch.isfinite(value), f"{loss}.{name} = {value}"
    total = sum(parts.values())
    if total.requires_grad:
        total.backward()
    trained = [p for name, role in ROLES.items() if role == TRAINABLE and name in reads
               for p in models[name].parameters()] + list(term.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained), f"{loss}: no gradient anywhere"
    for name, role in ROLES.items():
        if role == FROZEN:
            assert all(p.grad is None for p in models[name].parameters()), f"{loss}: gradient reached {name}"
    for p in trained:
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{loss}: non-finite gradient"


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_has_a_docstring_with_its_reference(loss):
    cls = LOSSES.get(loss)
    doc = cls.__doc__ or ""
    assert len(doc.split()) > 20, f"{loss}: the docstring should give the paper, formula and defaults"
    assert LOSSES.entry(loss).description
