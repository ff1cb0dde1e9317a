"""FSP, AB and FT: values against plain loops, the AB margin cases by hand, gradients, the init-stage
declarations, setup errors, and a tiny end-to-end run of each MNIST-1D preset through its init stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distillab.config import MethodConfig, load_config
from distillab.engine.logger import read_metrics
from distillab.losses import Batch, ModelOutputs, SetupContext
from distillab.losses.feature_staged import (FSP, ActivationBoundary, FactorTransfer, alternative_l2,
                                             make_connector)
from distillab.methods import METHODS
from distillab.objective import build_objective
from distillab.runner import PACKAGED_CONFIGS, run

from conftest import tiny_overrides


def _batch(s_feats: dict, t_feats: dict, stage: str | None = None) -> Batch:
    b = next(iter(s_feats.values())).shape[0]
    return Batch(torch.zeros(b, 1), torch.zeros(b, dtype=torch.long), torch.arange(b),
                 ModelOutputs(torch.zeros(b, 3), s_feats), ModelOutputs(torch.zeros(b, 3), t_feats), 1, stage)


def _ctx(s_feats: dict, t_feats: dict) -> SetupContext:
    return SetupContext(num_classes=3, num_train=10, student_shapes={k: v.shape for k, v in s_feats.items()},
                        teacher_shapes={k: v.shape for k, v in t_feats.items()})


def _pool_np(x: np.ndarray, size: int) -> np.ndarray:
    """Average-pool the last axis (1-D) or the last two (square 2-D) by an integer factor."""
    if x.ndim == 3:
        f = x.shape[2] // size
        return x.reshape(x.shape[0], x.shape[1], size, f).mean(-1)
    f = x.shape[2] // size
    return x.reshape(x.shape[0], x.shape[1], size, f, size, f).mean((3, 5))


# ------------------------------------------------------------------------------------------------ FSP


def _fsp_by_loops(feats: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for a, b in zip(feats[:-1], feats[1:]):
        size = min(a.shape[2], b.shape[2])
        a, b = _pool_np(a, size), _pool_np(b, size)
        a, b = a.reshape(a.shape[0], a.shape[1], -1), b.reshape(b.shape[0], b.shape[1], -1)
        g = np.zeros((a.shape[0], a.shape[1], b.shape[1]))
        for n in range(a.shape[0]):
            for i in range(a.shape[1]):
                for j in range(b.shape[1]):
                    g[n, i, j] = sum(a[n, i, s] * b[n, j, s] for s in range(a.shape[2])) / a.shape[2]
        out.append(g)
    return out


@pytest.mark.parametrize("spatial", [(8, 4, 4), ((4, 4), (4, 4), (2, 2))])
def test_fsp_value_matches_loops(spatial):
    torch.manual_seed(0)
    channels = (2, 3, 2)
    names = ("stage0", "stage1", "stage2")
    shape = lambda c, s: (2, c, *(s if isinstance(s, tuple) else (s,)))  # noqa: E731
    s = {n: torch.randn(shape(c, sp)) for n, c, sp in zip(names, channels, spatial)}
    t = {n: torch.randn(shape(c, sp)) for n, c, sp in zip(names, channels, spatial)}
    term = FSP(stages=names)
    term.setup(_ctx(s, t))
    parts = term(_batch(s, t))
    g_s = _fsp_by_loops([s[n].numpy().astype(np.float64) for n in names])
    g_t = _fsp_by_loops([t[n].numpy().astype(np.float64) for n in names])
    expected = [((a - b) ** 2).mean() for a, b in zip(g_s, g_t)]
    assert list(parts) == ["pair0", "pair1"]
    for value, e in zip(parts.values(), expected):
        assert value.item() == pytest.approx(e, rel=1e-5)


def test_fsp_zero_for_identical_maps_and_gradient():
    torch.manual_seed(1)
    t = {"stage0": torch.randn(2, 2, 6, dtype=torch.float64), "stage1": torch.randn(2, 3, 3, dtype=torch.float64)}
    term = FSP(stages=("stage0", "stage1"))
    term.setup(_ctx(t, t))
    assert sum(term(_batch(t, t)).values()).item() == pytest.approx(0.0, abs=1e-12)
    s0 = torch.randn(2, 2, 6, dtype=torch.float64, requires_grad=True)
    s1 = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: sum(term(_batch({"stage0": a, "stage1": b}, t)).values()), (s0, s1))


def test_fsp_rejects_unequal_channels():
    s = {"stage0": torch.zeros(2, 4, 8), "stage1": torch.zeros(2, 8, 4)}
    t = {"stage0": torch.zeros(2, 4, 8), "stage1": torch.zeros(2, 16, 4)}
    with pytest.raises(ValueError, match="same channel count.*stage1.*8.*16"):
        FSP(stages=("stage0", "stage1")).setup(_ctx(s, t))
    with pytest.raises(ValueError, match="at least two stages"):
        FSP(stages=("stage0",))


# ------------------------------------------------------------------------------------------------- AB

# (source, target, by hand): t <= 0 is penalised while s > -1 by (s + 1)^2; t > 0 while s <= 1 by (s - 1)^2
AB_CASES = [(-2.0, -1.0, 0.0), (-1.0, -1.0, 0.0), (-0.5, -1.0, 0.25), (0.5, 0.0, 2.25), (2.0, 0.0, 9.0),
            (-2.0, 1.0, 9.0), (-0.5, 0.5, 2.25), (0.5, 3.0, 0.25), (1.0, 3.0, 0.0), (2.0, 0.1, 0.0)]


@pytest.mark.parametrize("s, t, expected", AB_CASES)
def test_ab_margin_cases_by_hand(s, t, expected):
    assert alternative_l2(torch.tensor([s]), torch.tensor([t]), margin=1.0).item() == pytest.approx(expected)


def test_ab_value_matches_loops_with_stage_weights():
    torch.manual_seed(0)
    names = ("preact0", "preact1", "preact2")
    shapes = [(3, 2, 5), (3, 3, 4), (3, 4, 2)]
    s = {n: 2 * torch.randn(sh) for n, sh in zip(names, shapes)}
    t = {n: torch.randn(sh) for n, sh in zip(names, shapes)}
    term = ActivationBoundary(stages=names, margin=0.7)
    term.setup(_ctx(s, t))
    assert all(isinstance(c, nn.Identity) for c in term.connectors)  # equal shapes: no connector, as RepDistiller
    forced = ActivationBoundary(stages=names, always_connect=True)
    forced.setup(_ctx(s, t))
    assert all(c.conv.kernel_size == (1,) for c in forced.connectors)
    parts = term(_batch(s, t))
    for k, n in enumerate(names):
        total = 0.0
        for sv, tv in zip(s[n].flatten().tolist(), t[n].flatten().tolist()):
            if sv > -0.7 and tv <= 0:
                total += (sv + 0.7) ** 2
            if sv <= 0.7 and tv > 0:
                total += (sv - 0.7) ** 2
        expected = total / 3 * 2.0 ** (k - 2) * 3 / 1000
        assert parts[f"stage{k}"].item() == pytest.approx(expected, rel=1e-5)


def test_ab_gradient_by_hand_and_connector_trains():
    s = torch.tensor([[[-0.5, 0.5, 2.0]]], requires_grad=True)
    t = torch.tensor([[[-1.0, 1.0, -1.0]]])
    term = ActivationBoundary(stages=("preact0",), scale=1.0)
    term.setup(_ctx({"preact0": s}, {"preact0": t}))
    sum(term(_batch({"preact0": s}, {"preact0": t})).values()).backward()
    # d/ds (s + 1)^2 = 2 (s + 1) where t <= 0; d/ds (s - 1)^2 = 2 (s - 1) where t > 0
    torch.testing.assert_close(s.grad, torch.tensor([[[1.0, -1.0, 6.0]]]))

    s2 = torch.randn(4, 3, 5, requires_grad=True)
    t2 = torch.randn(4, 6, 5)
    term = ActivationBoundary(stages=("preact0",))
    term.setup(_ctx({"preact0": s2}, {"preact0": t2}))
    conv, bn = term.connectors[0].conv, term.connectors[0].bn
    assert isinstance(conv, nn.Conv1d) and conv.kernel_size == (1,) and isinstance(bn, nn.BatchNorm1d)
    sum(term(_batch({"preact0": s2}, {"preact0": t2})).values()).backward()
    assert s2.grad.abs().sum() > 0 and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("s_size, t_size, kind, kernel", [
    ((8, 8), (8, 8), nn.Conv2d, (1, 1)), ((8, 8), (4, 4), nn.Conv2d, (3, 3)),
    ((4, 4), (8, 8), nn.ConvTranspose2d, (4, 4)), ((7,), (5,), nn.Conv1d, (3,))])
def test_ab_connector_shapes(s_size, t_size, kind, kernel):
    connector = make_connector((2, 3, *s_size), (2, 5, *t_size))
    assert isinstance(connector.conv, kind) and connector.conv.kernel_size == kernel
    assert isinstance(connector.relu, nn.Identity)  # RepDistiller's Connector: ConvReg without the ReLU
    assert connector(torch.randn(2, 3, *s_size)).shape == (2, 5, *t_size)


def test_ab_setup_errors():
    with pytest.raises(ValueError, match="cannot map"):
        make_connector((2, 3, 3), (2, 5, 7))
    term = ActivationBoundary(stages=("preact0",))
    with pytest.raises(ValueError, match=r"ab: student preact0 \(2, 3, 3\) -> .*cannot map"):
        term.setup(_ctx({"preact0": torch.zeros(2, 3, 3)}, {"preact0": torch.zeros(2, 5, 7)}))
    with pytest.raises(ValueError, match=r"ab: .*all \(B, C, L\) or all \(B, C, H, W\)"):
        term.setup(_ctx({"preact0": torch.zeros(2, 3, 5)}, {"preact0": torch.zeros(2, 3, 5, 5)}))
    with pytest.raises(ValueError, match="pooled vectors"):
        term.setup(_ctx({"preact0": torch.zeros(2, 3)}, {"preact0": torch.zeros(2, 3)}))
    with pytest.raises(ValueError, match="as many teacher stages"):
        ActivationBoundary(stages=("preact0", "preact1"), teacher_stages=("preact0",))


# ------------------------------------------------------------------------------------------------- FT


def _factor_np(f: np.ndarray, mode: str) -> np.ndarray:
    v = (f ** 2).mean(1) if mode == "attention" else f
    v = v.reshape(v.shape[0], -1)
    return v / np.sqrt((v ** 2).sum(1, keepdims=True))


@pytest.mark.parametrize("mode", ["attention", "flat"])
def test_ft_value_matches_numpy(mode):
    torch.manual_seed(0)
    s = {"stage-1": torch.randn(2, 4, 6)}
    t = {"stage-1": torch.randn(2, 6, 3)}
    term = FactorTransfer(factor=mode)
    term.setup(_ctx(s, t))
    assert term.paraphraser.encoder(t["stage-1"]).shape == (2, 3, 3)  # factor channels: rate 0.5 x 6
    assert term.translator(s["stage-1"]).shape == (2, 3, 6)
    term.translator.encoder = nn.Identity()
    term.paraphraser.encoder = nn.Identity()
    if mode == "flat":  # the flat factor needs equal channel counts
        s = {"stage-1": torch.randn(2, 6, 6)}
    loss = term(_batch(s, t)).item()
    f_s = _pool_np(s["stage-1"].numpy().astype(np.float64), 3)  # the larger map is pooled to the smaller
    expected = np.abs(_factor_np(f_s, mode) - _factor_np(t["stage-1"].numpy().astype(np.float64), mode)).mean()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_ft_stage_reconstruction_and_who_gets_gradients():
    torch.manual_seed(0)
    s = {"stage-1": torch.randn(4, 3, 5, requires_grad=True)}
    t = {"stage-1": torch.relu(torch.randn(4, 8, 5))}
    term = FactorTransfer(paraphraser_bn=True)
    term.setup(_ctx(s, t))
    term.train()

    parts = term(_batch(s, t, stage="init"))
    rec = term.paraphraser.decoder(term.paraphraser.encoder(t["stage-1"]))
    assert rec.shape == t["stage-1"].shape
    assert parts["reconstruction"].item() == pytest.approx(((rec - t["stage-1"]) ** 2).mean().item(), rel=1e-5)
    parts["reconstruction"].backward()
    assert all(p.grad is not None for p in term.paraphraser.parameters())
    assert all(p.grad is None for p in term.translator.parameters()) and s["stage-1"].grad is None

    term.zero_grad(set_to_none=True)
    bn = term.paraphraser.encoder[1]
    stats = bn.running_mean.clone()
    term(_batch(s, t)).backward()  # the main stage
    assert all(p.grad is None for p in term.paraphraser.parameters())  # frozen: no gradient at all
    assert torch.equal(bn.running_mean, stats) and term.paraphraser.training  # eval inside, mode restored
    assert all(p.grad is not None for p in term.translator.parameters()) and s["stage-1"].grad.abs().sum() > 0


def test_ft_setup_errors():
    with pytest.raises(ValueError, match="ft: .*pooled vectors"):
        FactorTransfer().setup(_ctx({"stage-1": torch.zeros(2, 4)}, {"stage-1": torch.zeros(2, 4)}))
    with pytest.raises(ValueError, match="no factor channels"):
        FactorTransfer(rate=0.1).setup(_ctx({"stage-1": torch.zeros(2, 4, 3)}, {"stage-1": torch.zeros(2, 4, 3)}))
    with pytest.raises(ValueError, match=r"ft: .*all \(B, C, L\) or all \(B, C, H, W\)"):
        FactorTransfer().setup(_ctx({"stage-1": torch.zeros(2, 4, 3)}, {"stage-1": torch.zeros(2, 4, 3, 3)}))


# ------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("method, term, train, lr, main, mode", [
    # RepDistiller's init: model_s.eval(), then init_modules.train(); FSP's and AB's init modules hold the
    # student's feature modules (train mode), FT's only the paraphraser (the student stays in eval mode)
    ("fsp", "fsp", ("student_body",), None, {"ce": 1.0}, "train"),
    ("ab", "ab", ("ab", "student_body"), None, {"ce": 1.0}, "train"),
    ("ft", "ft", ("ft.paraphraser",), 0.01, {"ce": 1.0, "ft": 200.0}, "eval")])
def test_presets_declare_the_init_stage(method, term, train, lr, main, mode):
    (stage,) = METHODS.get(method).stages
    assert (stage.name, stage.epochs, stage.weights, stage.train, stage.lr, stage.student_mode) == \
        ("init", 30, {term: 1.0}, train, lr, mode)
    objective = build_objective(MethodConfig(name=method))
    assert objective.weights == main and term in objective.terms  # FSP / AB: CE only in the main stage
    objective.use_stage("init")
    assert objective.weights == {term: 1.0}


def _teacher_checkpoint(tmp_path) -> str:
    from distillab.models import create_model

    torch.manual_seed(1)
    path = tmp_path / "teacher.pt"
    torch.save({"model": create_model("cnn1d", num_classes=10, width=32).state_dict()}, path)
    return f"teacher.checkpoint={path}"


@pytest.mark.parametrize("method, term", [("fsp", "fsp"), ("ab", "ab"), ("ft", "ft")])
def test_end_to_end_mnist1d_through_the_init_stage(method, term, tmp_path):
    overrides = tiny_overrides(tmp_path / "runs", samples=200) + [
        _teacher_checkpoint(tmp_path), "method.stages.init.epochs=1", "train.batch_size=50"]
    cfg = load_config(PACKAGED_CONFIGS / "mnist1d" / f"{method}.yaml", overrides)
    summary, run_dir = run(cfg)
    stage_rows = read_metrics(run_dir / "stage_init" / "metrics.csv")
    assert len(stage_rows) == 1 and math.isfinite(stage_rows[0][f"train/{term}"])
    main_rows = read_metrics(run_dir / "metrics.csv")
    assert len(main_rows) == 1 and summary["epochs"] == 1
    assert (f"train/{term}" in main_rows[0]) == (method == "ft")
