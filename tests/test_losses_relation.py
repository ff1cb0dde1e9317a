"""RKD, SP, PKT and CC against independent computations (plain loops, numpy), gradients, extreme inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from distillab.losses import Batch, ModelOutputs, SetupContext
from distillab.losses.relation import CC, PKT, RKD, SP, cc_loss, pkt_loss, rkd_parts, sp_loss
from distillab.methods import METHODS


def _batch(fs, ft, name, labels=None):
    b = fs.shape[0]
    labels = torch.zeros(b, dtype=torch.long) if labels is None else labels
    logits = torch.zeros(b, 3)
    return Batch(fs, labels, torch.arange(b), ModelOutputs(logits, {name: fs}), ModelOutputs(logits, {name: ft}), 1)


def _smooth_l1(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


# ---------------------------------------------------------------------------- RKD


def _rkd_by_loops(s, t):
    """RKD distance and angle losses with Python loops over pairs and triplets."""
    s, t = s.tolist(), t.tolist()
    b = len(s)

    def dist(x):
        d = [[0.0 if i == j else max(sum((p - q) ** 2 for p, q in zip(x[i], x[j])), 1e-12) ** 0.5
              for j in range(b)] for i in range(b)]
        nz = [v for row in d for v in row if v > 0]
        mean = sum(nz) / len(nz)
        return [[v / mean for v in row] for row in d]

    def unit(x, i, j):
        v = [q - p for p, q in zip(x[i], x[j])]
        n = max(math.sqrt(sum(c * c for c in v)), 1e-12)
        return [c / n for c in v]

    def angle(x, i, j, k):
        return sum(p * q for p, q in zip(unit(x, i, j), unit(x, i, k)))

    ds, dt = dist(s), dist(t)
    loss_d = sum(_smooth_l1(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / b**2
    loss_a = sum(_smooth_l1(angle(s, i, j, k), angle(t, i, j, k))
                 for i, j, k in itertools.product(range(b), repeat=3)) / b**3
    return loss_d, loss_a


def test_rkd_matches_loops_on_b4():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 3, generator=g) * 2
    loss_d, loss_a = rkd_parts(s, t)
    ref_d, ref_a = _rkd_by_loops(s, t)
    assert loss_d.item() == pytest.approx(ref_d, rel=1e-5)
    assert loss_a.item() == pytest.approx(ref_a, rel=1e-5)
    out = RKD()(_batch(s, t, "embedding"))
    assert out["distance"].item() == pytest.approx(25 * ref_d, rel=1e-5)
    assert out["angle"].item() == pytest.approx(50 * ref_a, rel=1e-5)


def test_rkd_zero_for_scaled_copy_and_flattens_maps():
    # student: the corners of a unit square; teacher: the same points scaled by 3 -> identical relations
    sq = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    loss_d, loss_a = rkd_parts(sq, 3 * sq)
    assert loss_d.item() == pytest.approx(0.0, abs=1e-7) and loss_a.item() == pytest.approx(0.0, abs=1e-7)
    # 1-D feature maps are flattened: the same value as the flattened vectors
    s, t = torch.randn(4, 2, 3), torch.randn(4, 3, 2)
    a, b = rkd_parts(s, t), rkd_parts(s.flatten(1), t.flatten(1))
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_rkd_gradcheck_and_teacher_untouched():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sum(rkd_parts(x, t.detach())), (s,))
    loss = sum(rkd_parts(s, t))
    loss.backward()
    assert t.grad is None  # the teacher side runs without a graph


def test_rkd_finite_for_duplicates_single_sample_and_huge_values():
    same = torch.ones(4, 6, requires_grad=True)  # all distances clamp to 1e-6, all directions zero
    loss = sum(rkd_parts(same, torch.randn(4, 6)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
    one = torch.randn(1, 6, requires_grad=True)  # a batch of one: no pairs
    loss = sum(rkd_parts(one, torch.randn(1, 6)))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(one.grad).all()
    big = (torch.randn(8, 16) * 1e4).requires_grad_(True)
    loss = sum(rkd_parts(big, torch.randn(8, 16) * 1e-4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d, a = rkd_parts(torch.randn(6, 8).bfloat16(), torch.randn(6, 8).bfloat16())
    assert d.dtype == torch.float32 and torch.isfinite(d + a)


# ---------------------------------------------------------------------------- SP


def _sp_numpy(s, t):
    s, t = s.reshape(len(s), -1).astype(np.float64), t.reshape(len(t), -1).astype(np.float64)
    gs, gt = s @ s.T, t @ t.T
    gs = gs / np.linalg.norm(gs, axis=1, keepdims=True)
    gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
    return ((gt - gs) ** 2).sum() / len(s) ** 2


@pytest.mark.parametrize("shapes", [((5, 4, 3, 3), (5, 8, 2, 2)), ((5, 6, 10), (5, 12, 5)), ((5, 7), (5, 3))])
def test_sp_matches_numpy_for_2d_1d_and_vector_features(shapes):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(*shapes[0], generator=g), torch.randn(*shapes[1], generator=g)
    assert sp_loss(s, t).item() == pytest.approx(_sp_numpy(s.numpy(), t.numpy()), rel=1e-5)
    term = SP()
    assert term.student_features == term.teacher_features == ("stage-1",)
    assert term(_batch(s, t, "stage-1")).item() == pytest.approx(_sp_numpy(s.numpy(), t.numpy()), rel=1e-5)


def test_sp_gradcheck_and_extremes():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: sp_loss(x, t), (s,))
    big = (torch.randn(6, 64, 4, 4) * 1e4).requires_grad_(True)
    loss = sp_loss(big, torch.rand(6, 32, 4, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()
    zeros = torch.zeros(3, 4, requires_grad=True)  # a zero Gram matrix normalises to zero
    loss = sp_loss(zeros, torch.randn(3, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()


# ---------------------------------------------------------------------------- PKT


def _pkt_numpy(s, t, eps=1e-7):
    def probs(x):
        x = x.astype(np.float64)
        x = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = probs(s), probs(t)
    return (pt * np.log((pt + eps) / (ps + eps))).mean()


def test_pkt_matches_numpy():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(6, 9, generator=g), torch.randn(6, 4, generator=g)
    assert pkt_loss(s, t).item() == pytest.approx(_pkt_numpy(s.numpy(), t.numpy()), rel=1e-5)
    assert PKT()(_batch(s, t, "embedding")).item() == pytest.approx(_pkt_numpy(s.numpy(), t.numpy()), rel=1e-5)
    assert pkt_loss(t * 3, t).item() == pytest.approx(0.0, abs=1e-7)  # scale-free: only directions count


def test_pkt_gradcheck_and_extremes():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, t), (s,))
    # a zero embedding (dead ReLUs): the reference's sqrt would give a NaN gradient here
    s = torch.randn(5, 4)
    s[2] = 0.0
    s.requires_grad_(True)
    loss = pkt_loss(s, torch.randn(5, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    big = (torch.randn(5, 4) * 1e4).requires_grad_(True)
    loss = pkt_loss(big, -big.detach())  # antipodal: student probabilities of 0 against teacher ones
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(big.grad).all()


# ---------------------------------------------------------------------------- CC


def test_cc_matches_loop_and_depends_on_batch_order():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    delta = (s - t).abs().tolist()
    ref = sum(sum(a * b for a, b in zip(delta[i], delta[i + 1])) for i in range(4)) / 4
    assert cc_loss(s, t).item() == pytest.approx(ref, rel=1e-6)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert cc_loss(s[perm], t[perm]).item() != pytest.approx(ref, rel=1e-3)
    one = torch.randn(1, 4, requires_grad=True)
    loss = cc_loss(one, torch.randn(1, 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(one.grad).all()


def test_cc_heads_from_probed_shapes_and_gradients():
    term = CC(feat_dim=8)
    ctx = SetupContext(num_classes=3, num_train=10, student_shapes={"embedding": torch.Size([2, 6])},
                       teacher_shapes={"embedding": torch.Size([2, 5, 2])})
    term.setup(ctx)
    assert term.embed_s.linear.in_features == 6 and term.embed_t.linear.in_features == 10
    assert term.embed_s.linear.out_features == term.embed_t.linear.out_features == 8
    assert not term.embed_s.normalize and not term.embed_t.normalize  # RepDistiller's LinearEmbed
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 5, 2)
    loss = term(_batch(s, t, "embedding"))
    hs, ht = term.embed_s(s).detach(), term.embed_t(t).detach()
    assert loss.item() == pytest.approx(cc_loss(hs, ht).item(), rel=1e-6)
    loss.backward()
    assert s.grad is not None and all(p.grad is not None for p in term.parameters())  # both heads train
    with pytest.raises(RuntimeError, match="setup"):
        CC()(_batch(s, t, "embedding"))


# ---------------------------------------------------------------------------- options and presets


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="w_dist"):
        RKD(w_dist=-1)
    with pytest.raises(ValueError, match="eps"):
        PKT(eps=0)
    with pytest.raises(ValueError, match="feat_dim"):
        CC(feat_dim=0)
    with pytest.raises(ValueError, match="batch"):
        sp_loss(torch.randn(3, 4), torch.randn(4, 4))


def test_feature_option_and_zero_angle_weight():
    term = RKD(w_angle=0, feature="stage-1")
    assert term.student_features == term.teacher_features == ("stage-1",)
    s, t = torch.randn(4, 3, 5), torch.randn(4, 2, 5)
    out = term(_batch(s, t, "stage-1"))
    assert out["angle"].item() == 0.0
    assert out["distance"].item() == pytest.approx(25 * rkd_parts(s, t)[0].item(), rel=1e-6)


@pytest.mark.parametrize("method,loss,weight", [("rkd", "rkd", 1.0), ("sp", "sp", 3000.0),
                                                ("pkt", "pkt", 30000.0), ("cc", "cc", 0.02)])
def test_presets(method, loss, weight):
    spec = METHODS.get(method)
    assert spec.terms["ce"].weight == 1.0
    assert spec.terms[method].loss == loss and spec.terms[method].weight == weight
