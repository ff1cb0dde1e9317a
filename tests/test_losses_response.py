"""CE and KD against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distillab.losses import Batch, ModelOutputs
from distillab.losses.response import KD, CrossEntropy


def _batch(s_logits, t_logits=None, labels=None):
    s = torch.as_tensor(s_logits, dtype=torch.float32)
    labels = torch.zeros(len(s), dtype=torch.long) if labels is None else torch.as_tensor(labels)
    teacher = None if t_logits is None else ModelOutputs(torch.as_tensor(t_logits, dtype=torch.float32))
    return Batch(s, labels, torch.arange(len(s)), ModelOutputs(s), teacher, epoch=1)


def _softmax(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def _kd_by_hand(s_rows, t_rows, T):
    """KL(p_t || p_s) * T^2 averaged over rows, in plain Python."""
    total = 0.0
    for s, t in zip(s_rows, t_rows):
        ps, pt = _softmax(s, T), _softmax(t, T)
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s_rows) * T * T


def test_kd_hand_worked_single_row():
    # p_t = softmax([3,2,1]) = (0.6652, 0.2447, 0.0900); log p_t - log p_s = (2, 0, -2)
    # KL = 0.6652*2 - 0.0900*2 = 1.1504 at T = 1
    loss = KD(temperature=1.0)(_batch([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]))
    assert loss.item() == pytest.approx(2 * (0.665240955 - 0.090030573), abs=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0, 0.5])
def test_kd_matches_python_formula(T):
    s = [[0.3, -1.2, 2.0, 0.1], [1.5, 0.2, -0.3, 0.0]]
    t = [[1.0, 0.0, 3.0, -2.0], [0.1, 0.1, 0.1, 2.5]]
    assert KD(temperature=T)(_batch(s, t)).item() == pytest.approx(_kd_by_hand(s, t, T), rel=1e-5)


def test_kd_zero_when_equal_and_gradient_only_to_student():
    t = torch.randn(5, 7)
    s = t.clone().requires_grad_(True)
    batch = Batch(s, torch.zeros(5, dtype=torch.long), torch.arange(5), ModelOutputs(s), ModelOutputs(t), 1)
    loss = KD()(batch)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    s2 = torch.randn(5, 7, requires_grad=True)
    loss = KD()(Batch(s2, batch.labels, batch.index, ModelOutputs(s2), ModelOutputs(t), 1))
    loss.backward()
    # d/dz_s of T^2 KL / B = T (p_s - p_t) / B
    expected = 4.0 * (F.softmax(s2.detach() / 4, 1) - F.softmax(t / 4, 1)) / 5
    torch.testing.assert_close(s2.grad, expected, rtol=1e-4, atol=1e-6)


def test_kd_finite_for_huge_logits_and_bf16():
    s = torch.tensor([[1e4, -1e4, 0.0]])
    t = torch.tensor([[-1e4, 1e4, 0.0]])
    assert torch.isfinite(KD()(_batch(s, t)))
    assert torch.isfinite(KD()(_batch(s.bfloat16(), t.bfloat16())))


def test_ce_plain_and_smoothed():
    z = [[2.0, 0.5, -1.0]]
    p = _softmax(z[0], 1.0)
    assert CrossEntropy()(_batch(z, labels=[0])).item() == pytest.approx(-math.log(p[0]), rel=1e-6)
    eps = 0.3
    smoothed = -(1 - eps) * math.log(p[1]) - eps / 3 * sum(math.log(q) for q in p)
    assert CrossEntropy(label_smoothing=eps)(_batch(z, labels=[1])).item() == pytest.approx(smoothed, rel=1e-6)


def test_bad_parameters_rejected():
    with pytest.raises(ValueError, match="temperature"):
        KD(temperature=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropy(label_smoothing=1.5)
