"""DKD against a hand computation, mdistiller's formula, gradients and extreme inputs; the label-smoothing preset."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillab.config import MethodConfig
from distillab.losses import Batch, ModelOutputs, SetupContext
from distillab.losses.response import DKD, CrossEntropy, dkd_parts
from distillab.methods import METHODS
from distillab.objective import build_objective


def _batch(s_logits, t_logits, labels, epoch=30):
    s = torch.as_tensor(s_logits, dtype=torch.float32) if not torch.is_tensor(s_logits) else s_logits
    t = torch.as_tensor(t_logits, dtype=torch.float32) if not torch.is_tensor(t_logits) else t_logits
    y = torch.as_tensor(labels)
    return Batch(s, y, torch.arange(len(s)), ModelOutputs(s), ModelOutputs(t), epoch=epoch)


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _dkd_by_hand(s_rows, t_rows, labels, T):
    """(TCKD, NCKD) * T^2 averaged over rows, in plain Python from the definitions."""
    tckd = nckd = 0.0
    for s, t, y in zip(s_rows, t_rows, labels):
        ps, pt = _softmax([v / T for v in s]), _softmax([v / T for v in t])
        tckd += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        qs = _softmax([v / T for i, v in enumerate(s) if i != y])
        qt = _softmax([v / T for i, v in enumerate(t) if i != y])
        nckd += _kl(qt, qs)
    n = len(labels)
    return tckd / n * T * T, nckd / n * T * T


def _mdistiller_formula(zs, zt, y, alpha, beta, T):
    """mdistiller's DKD.py written out independently: logs of masked probability sums, target logit - 1000."""
    gt = F.one_hot(y, zs.shape[1]).float()
    ps, pt = F.softmax(zs / T, 1), F.softmax(zt / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum() / len(y)
    qt = F.softmax(zt / T - 1000.0 * gt, 1)
    log_qs = F.log_softmax(zs / T - 1000.0 * gt, 1)
    nckd = torch.where(qt > 0, qt * (qt.log() - log_qs), torch.zeros_like(qt)).sum() / len(y)
    return (alpha * tckd + beta * nckd) * T * T


def test_dkd_hand_worked_three_classes():
    # T = 1, one row, target 0. Student logits (0, 0, 0): p_s = (1/3, 1/3, 1/3), b_s = (1/3, 2/3),
    # non-target softmax (1/2, 1/2). Teacher logits (ln 2, 0, ln 3): p_t = (2/6, 1/6, 3/6), b_t = (1/3, 2/3),
    # non-target softmax (1/4, 3/4). TCKD = 0; NCKD = 1/4 ln(1/2) + 3/4 ln(3/2).
    term = DKD(alpha=1.0, beta=1.0, temperature=1.0, warmup=0)
    out = term(_batch([[0.0, 0.0, 0.0]], [[math.log(2), 0.0, math.log(3)]], [0]))
    assert out["tckd"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["nckd"].item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    # another target: label 2. b_s = (1/3, 2/3), b_t = (1/2, 1/2); non-target: s (1/2, 1/2), t (2/3, 1/3)
    out = term(_batch([[0.0, 0.0, 0.0]], [[math.log(2), 0.0, math.log(3)]], [2]))
    tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    nckd = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-6)
    assert out["nckd"].item() == pytest.approx(nckd, rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_parts_match_python_definition(T):
    s = [[0.3, -1.2, 2.0, 0.1, 0.7], [1.5, 0.2, -0.3, 0.0, -2.0], [0.0, 0.5, 0.5, 3.0, 1.0]]
    t = [[1.0, 0.0, 3.0, -2.0, 0.2], [0.1, 0.1, 0.1, 2.5, 0.3], [2.0, -1.0, 0.0, 1.0, 1.5]]
    y = [2, 0, 4]
    tckd, nckd = dkd_parts(torch.tensor(s), torch.tensor(t), torch.tensor(y), T)
    ref_t, ref_n = _dkd_by_hand(s, t, y, T)
    assert tckd.item() == pytest.approx(ref_t, rel=1e-5)
    assert nckd.item() == pytest.approx(ref_n, rel=1e-5)


def test_dkd_equals_mdistiller_formula_on_moderate_logits():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(16, 100, generator=g) * 3, torch.randn(16, 100, generator=g) * 5
    y = torch.randint(0, 100, (16,), generator=g)
    out = DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup=20)(_batch(zs, zt, y, epoch=40))
    ref = _mdistiller_formula(zs.double(), zt.double(), y, 1.0, 8.0, 4.0)
    assert sum(out.values()).item() == pytest.approx(ref.item(), rel=1e-5)


def test_dkd_warmup_counts_epochs_from_one():
    zs, zt, y = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    term = DKD(warmup=20)
    full = sum(term(_batch(zs, zt, y, epoch=20)).values())
    assert sum(term(_batch(zs, zt, y, epoch=1)).values()).item() == pytest.approx(full.item() / 20, rel=1e-6)
    assert sum(term(_batch(zs, zt, y, epoch=5)).values()).item() == pytest.approx(full.item() * 5 / 20, rel=1e-6)
    assert sum(term(_batch(zs, zt, y, epoch=200)).values()).item() == pytest.approx(full.item(), rel=1e-6)
    parts = term(_batch(zs, zt, y, epoch=20))
    tckd, nckd = dkd_parts(zs, zt, y, 4.0)
    assert parts["tckd"].item() == pytest.approx(tckd.item(), rel=1e-6)  # alpha 1
    assert parts["nckd"].item() == pytest.approx(8 * nckd.item(), rel=1e-6)  # beta 8


def test_dkd_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])

    def f(z):
        tckd, nckd = dkd_parts(z, zt, y, 2.0)
        return tckd + 3.0 * nckd

    assert torch.autograd.gradcheck(f, (zs,))


def test_dkd_zero_when_student_equals_teacher_and_no_gradient_to_teacher():
    zt = torch.randn(5, 7)
    zs = zt.clone().requires_grad_(True)
    out = DKD()(_batch(zs, zt, torch.arange(5)))
    total = sum(out.values())
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    total.backward()
    assert zt.grad is None and torch.allclose(zs.grad, torch.zeros_like(zs), atol=1e-6)


def test_dkd_finite_for_two_classes_huge_logits_and_bf16():
    # two classes: the non-target softmax is over one class, NCKD is exactly 0
    out = DKD(warmup=0)(_batch([[1.0, -2.0], [0.5, 0.5]], [[-1.0, 3.0], [2.0, 0.0]], [0, 1]))
    assert out["nckd"].item() == 0.0 and math.isfinite(out["tckd"].item())
    # logits of 1e4 (mdistiller's log(p) gives -inf / NaN here)
    zs = torch.tensor([[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 1e4, 0.0]], requires_grad=True)
    zt = torch.tensor([[-1e4, 1e4, 0.0, 1.0], [1e4, -1e4, 0.0, 0.0]])
    out = DKD(warmup=0)(_batch(zs, zt, [0, 1]))
    total = sum(out.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert torch.isfinite(zs.grad).all()
    # bf16 logits, also under autocast: fp32 result, close to the fp32 value
    s16, t16 = torch.randn(8, 10).bfloat16(), torch.randn(8, 10).bfloat16()
    y = torch.randint(0, 10, (8,))
    ref = sum(DKD(warmup=0)(_batch(s16.float(), t16.float(), y)).values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DKD(warmup=0)(_batch(s16, t16, y))
    assert all(v.dtype == torch.float32 for v in out.values())
    assert sum(out.values()).item() == pytest.approx(ref.item(), rel=1e-5)


def test_dkd_errors():
    with pytest.raises(ValueError, match="temperature"):
        DKD(temperature=0)
    with pytest.raises(ValueError, match="alpha and beta"):
        DKD(beta=-1)
    with pytest.raises(ValueError, match="warmup"):
        DKD(warmup=-5)
    with pytest.raises(ValueError, match="same classes"):
        dkd_parts(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 4.0)
    with pytest.raises(ValueError, match="two classes"):
        dkd_parts(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 4.0)
    teacher = torch.nn.Module()
    teacher.num_classes = 10
    with pytest.raises(ValueError, match="teacher predicts 10 classes"):
        DKD().setup(SetupContext(num_classes=100, num_train=10, student_shapes={}, teacher_shapes={}, teacher=teacher))


def test_dkd_preset_and_per_pair_beta_override():
    spec = METHODS.get("dkd")
    assert spec.terms["ce"].weight == 1.0 and spec.terms["dkd"].weight == 1.0
    obj = build_objective(MethodConfig(name="dkd", params={"dkd": {"beta": 2.0}}))
    term = obj.terms["dkd"]
    assert (term.alpha, term.beta, term.temperature, term.warmup) == (1.0, 2.0, 4.0, 20)


def test_label_smoothing_preset():
    spec = METHODS.get("ls")
    assert list(spec.terms) == ["ce"] and spec.terms["ce"].params == {"label_smoothing": 0.1}
    obj = build_objective(MethodConfig(name="ls"))
    assert not obj.needs_teacher
    z = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    p = _softmax(z[0].tolist())
    expected = -(0.9 * math.log(p[1]) + 0.1 / 4 * sum(math.log(q) for q in p))
    batch = Batch(z, torch.tensor([1]), torch.arange(1), ModelOutputs(z), None, epoch=1)
    total, logs = obj(batch)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert isinstance(obj.terms["ce"], CrossEntropy)
