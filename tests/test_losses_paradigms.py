"""DML, multi-teacher KD (ensemble average, CA-MKD), generalized distillation, Tf-KD and CE over several
models, against computations written out here in numpy / plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillab.config import ConfigError, MethodConfig
from distillab.losses import Batch, ModelOutputs
from distillab.losses.paradigms import CAMKD, DML, MultiTeacherKD, SoftCE, TfKDSelf, TfKDVirtual
from distillab.losses.response import CrossEntropy
from distillab.methods import METHODS
from distillab.objective import build_objective

T_, F_ = "trainable", "frozen"
RNG = np.random.default_rng(0)
LOGITS = {name: RNG.normal(0.0, 2.0, size=(4, 5)) for name in ("student", "peer1", "peer2", "teacher", "t2", "t3")}
LABELS = [0, 3, 1, 4]


def _batch(names, labels=LABELS, dtype=torch.float32, grad=()):
    outs = {}
    for n in names:
        z = torch.tensor(LOGITS[n], dtype=dtype)
        outs[n] = ModelOutputs(z.requires_grad_(True) if n in grad else z)
    s = outs.get("student")
    return Batch(s.logits if s is not None else torch.zeros(4, 5), torch.tensor(labels), torch.arange(4), s,
                 outs.get("teacher"), 1, outputs=outs)


def _bound(term, models):
    term.bind(models)
    return term


def softmax(z, T=1.0):
    e = np.exp((z - z.max(axis=1, keepdims=True)) / T)
    return e / e.sum(axis=1, keepdims=True)


def kl_rows(p, q):
    """KL(p_i || q_i) per row, with explicit loops."""
    return np.array([sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)])


def ce_rows(z, labels):
    return np.array([-math.log(softmax(z[i:i + 1])[0, y]) for i, y in enumerate(labels)])


# ---------------------------------------------------------------------------- ce


def test_ce_default_is_bit_identical_and_reads_the_student():
    batch = _batch(["student"])
    term = CrossEntropy()
    term.bind({"student": T_})
    out = term(batch)
    assert isinstance(out, torch.Tensor)
    assert torch.equal(out, F.cross_entropy(batch.student.logits, batch.labels))
    bf = _batch(["student"], dtype=torch.bfloat16)
    assert torch.equal(CrossEntropy()(bf), F.cross_entropy(bf.student.logits.float(), bf.labels))
    assert term.reads() == {"student": ()}
    with pytest.raises(ValueError, match="no model of that name"):  # the default bind still runs
        CrossEntropy().bind({"teacher": F_})


@pytest.mark.parametrize("option", [["student", "peer1"], "trainable"])
def test_ce_over_several_models_returns_one_part_per_model(option):
    term = _bound(CrossEntropy(models=option), {"student": T_, "peer1": T_, "teacher": F_})
    assert term.reads() == {"student": (), "peer1": ()}
    parts = term(_batch(["student", "peer1", "teacher"]))
    assert set(parts) == {"student", "peer1"}
    for name, value in parts.items():
        assert value.item() == pytest.approx(ce_rows(LOGITS[name], LABELS).mean(), rel=1e-5)


def test_ce_models_errors():
    with pytest.raises(ValueError, match="'student', 'trainable' or a list"):
        CrossEntropy(models="peer1")
    with pytest.raises(ValueError, match="peer2.*add it under `models:`"):
        CrossEntropy(models=["student", "peer2"]).bind({"student": T_, "peer1": T_})
    with pytest.raises(ValueError, match="'teacher', which is frozen"):
        CrossEntropy(models=["student", "teacher"]).bind({"student": T_, "teacher": F_})
    with pytest.raises(RuntimeError, match="bind"):
        CrossEntropy(models="trainable").reads()


# ---------------------------------------------------------------------------- DML


def _dml_by_hand(peers, T, reduce):
    p = {n: softmax(LOGITS[n], T) for n in peers}
    c = 1.0 / (len(peers) - 1) if reduce == "mean" else 1.0
    return {k: T * T * c * sum(kl_rows(p[l], p[k]).mean() for l in peers if l != k) for k in peers}


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("peers", [("student", "peer1"), ("student", "peer1", "peer2")])
def test_dml_matches_hand_computation(peers, T, reduce):
    term = _bound(DML(temperature=T, reduce=reduce), {n: T_ for n in peers} | {"teacher": F_})
    assert term.peers == peers and term.reads() == {n: () for n in peers}
    parts = term(_batch(peers + ("teacher",)))
    expected = _dml_by_hand(peers, T, reduce)
    assert set(parts) == set(peers)
    for k in peers:
        assert parts[k].item() == pytest.approx(expected[k], rel=1e-5)


def test_dml_mean_and_sum_agree_for_two_peers_and_differ_for_three():
    two = {"student": T_, "peer1": T_}
    a = _bound(DML(reduce="mean"), two)(_batch(["student", "peer1"]))
    b = _bound(DML(reduce="sum"), two)(_batch(["student", "peer1"]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    three = two | {"peer2": T_}
    a = _bound(DML(reduce="mean"), three)(_batch(["student", "peer1", "peer2"]))
    b = _bound(DML(reduce="sum"), three)(_batch(["student", "peer1", "peer2"]))
    torch.testing.assert_close(2 * a["student"], b["student"])


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_dml_gradient_is_analytic_and_never_reaches_the_target_peer(T):
    term = _bound(DML(temperature=T), {"student": T_, "peer1": T_})
    batch = _batch(["student", "peer1"], grad=("student", "peer1"))
    parts = term(batch)
    parts["student"].backward()
    z1, z2 = batch.outputs["student"].logits, batch.outputs["peer1"].logits
    assert z2.grad is None  # peer1 is the constant target of the student's part
    # d/dz_1 of T^2 KL(p_2^T || p_1^T) / B = T (p_1^T - p_2^T) / B
    expected = T * (softmax(LOGITS["student"], T) - softmax(LOGITS["peer1"], T)) / 4
    np.testing.assert_allclose(z1.grad.numpy(), expected, rtol=1e-4, atol=1e-7)
    z1.grad = None
    parts["peer1"].backward()
    assert z1.grad is None and z2.grad is not None


def test_dml_bind_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least two trainable.*add a peer under `models:` with role: trainable"):
        DML().bind({"student": T_, "teacher": F_})
    with pytest.raises(ValueError, match="'peer9'.*add it under `models:` with role: trainable"):
        DML(peers=["student", "peer9"]).bind({"student": T_, "peer1": T_})
    with pytest.raises(ValueError, match="'teacher', which is frozen"):
        DML(peers=["student", "teacher"]).bind({"student": T_, "teacher": F_})
    with pytest.raises(ValueError, match="peers lists student only"):
        DML(peers=["student"]).bind({"student": T_, "peer1": T_})
    with pytest.raises(ValueError, match="distinct"):
        DML(peers=["student", "student"])
    with pytest.raises(RuntimeError, match="bind"):
        DML()(_batch(["student", "peer1"]))


def test_dml_preset_through_the_objective():
    objective = build_objective(MethodConfig(name="dml"))
    objective.bind({"student": T_, "peer1": T_})
    assert objective.reads() == {"student": [], "peer1": []} and not objective.needs_teacher
    total, logs = objective(_batch(["student", "peer1"]))
    assert {"ce", "ce.student", "ce.peer1", "dml", "dml.student", "dml.peer1"} <= set(logs)
    expected = ce_rows(LOGITS["student"], LABELS).mean() + ce_rows(LOGITS["peer1"], LABELS).mean() + \
        sum(_dml_by_hand(("student", "peer1"), 1.0, "mean").values())
    assert total.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="method term 'dml'.*add a peer"):
        build_objective(MethodConfig(name="dml")).bind({"student": T_})


# ---------------------------------------------------------------------------- mtkd


def _mtkd_by_hand(teachers, T, mean, weights=None):
    w = np.ones(len(teachers)) if weights is None else np.asarray(weights, dtype=float)
    w = w / w.sum()
    if mean == "arith":
        target = sum(wm * softmax(LOGITS[n], T) for wm, n in zip(w, teachers))
    else:
        logq = sum(wm * np.log(softmax(LOGITS[n], T)) for wm, n in zip(w, teachers))
        target = np.exp(logq) / np.exp(logq).sum(axis=1, keepdims=True)
    return T * T * kl_rows(target, softmax(LOGITS["student"], T)).mean()


RUN3 = {"student": T_, "teacher": F_, "t2": F_, "t3": F_}


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("mean", ["arith", "geom"])
def test_mtkd_matches_hand_computation(mean, T):
    term = _bound(MultiTeacherKD(temperature=T, mean=mean), RUN3)
    assert term.teachers == ("teacher", "t2", "t3")
    assert term.reads() == {"student": (), "teacher": (), "t2": (), "t3": ()}
    value = term(_batch(["student", "teacher", "t2", "t3"]))
    assert value.item() == pytest.approx(_mtkd_by_hand(("teacher", "t2", "t3"), T, mean), rel=1e-5)


def test_mtkd_weights_normalised_equal_is_plain_average_geom_differs_one_teacher_is_kd():
    batch = _batch(["student", "teacher", "t2", "t3"])
    plain = _bound(MultiTeacherKD(), RUN3)(batch)
    assert _bound(MultiTeacherKD(weights=[2.0, 2.0, 2.0]), RUN3)(batch).item() == pytest.approx(plain.item(), rel=1e-6)
    weighted = _bound(MultiTeacherKD(weights=[3.0, 1.0, 0.0]), RUN3)(batch)
    assert weighted.item() == pytest.approx(_mtkd_by_hand(("teacher", "t2", "t3"), 4.0, "arith", [3, 1, 0]), rel=1e-5)
    assert torch.isfinite(weighted)
    geom = _bound(MultiTeacherKD(mean="geom"), RUN3)(batch)
    assert abs(geom.item() - plain.item()) > 1e-3
    one = _bound(MultiTeacherKD(teachers=["t2"]), RUN3)(batch)
    kd = 16 * kl_rows(softmax(LOGITS["t2"], 4), softmax(LOGITS["student"], 4)).mean()
    assert one.item() == pytest.approx(kd, rel=1e-5)
    assert _bound(MultiTeacherKD(teachers=["t2"], mean="geom"), RUN3)(batch).item() == pytest.approx(kd, rel=1e-5)


def test_mtkd_gradient_reaches_only_the_student():
    batch = _batch(["student", "teacher", "t2"], grad=("student",))
    term = _bound(MultiTeacherKD(temperature=2.0), {"student": T_, "teacher": F_, "t2": F_})
    term(batch).backward()
    target = (softmax(LOGITS["teacher"], 2) + softmax(LOGITS["t2"], 2)) / 2
    expected = 2.0 * (softmax(LOGITS["student"], 2) - target) / 4
    np.testing.assert_allclose(batch.student.logits.grad.numpy(), expected, rtol=1e-4, atol=1e-7)


def test_mtkd_bind_errors_name_the_fix():
    with pytest.raises(ValueError, match="at least one frozen teacher.*role: frozen"):
        MultiTeacherKD().bind({"student": T_, "peer1": T_})
    with pytest.raises(ValueError, match="'t9'.*add it under `models:` with role: frozen"):
        MultiTeacherKD(teachers=["teacher", "t9"]).bind(RUN3)
    with pytest.raises(ValueError, match="'peer1', which is trainable"):
        MultiTeacherKD(teachers=["peer1"]).bind({"student": T_, "peer1": T_})
    with pytest.raises(ValueError, match="2 entries for 3 teachers"):
        MultiTeacherKD(weights=[1.0, 1.0]).bind(RUN3)
    with pytest.raises(ValueError, match="non-negative"):
        MultiTeacherKD(weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="mean must be"):
        MultiTeacherKD(mean="median")


# ---------------------------------------------------------------------------- CA-MKD


def _camkd_by_hand(teachers, T):
    K, B = len(teachers), len(LABELS)
    ps = softmax(LOGITS["student"], T)
    total, parts = 0.0, {n: 0.0 for n in teachers}
    for i, y in enumerate(LABELS):
        ce = [-math.log(softmax(LOGITS[n][i:i + 1])[0, y]) for n in teachers]
        e = [math.exp(c) for c in ce]
        for k, n in enumerate(teachers):
            w = 1.0 if K == 1 else (1.0 - e[k] / sum(e)) / (K - 1)
            pt = softmax(LOGITS[n][i:i + 1], T)[0]
            kl = sum(a * math.log(a / b) for a, b in zip(pt, ps[i]))
            parts[n] += w * kl * T * T / (B * K)
    return parts


@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("teachers", [("teacher",), ("teacher", "t2"), ("teacher", "t2", "t3")])
def test_ca_mkd_matches_hand_computation(teachers, T):
    term = _bound(CAMKD(temperature=T, teachers=list(teachers)), RUN3)
    parts = term(_batch(["student", "teacher", "t2", "t3"]))
    expected = _camkd_by_hand(teachers, T)
    assert set(parts) == set(teachers)
    for n in teachers:
        assert parts[n].item() == pytest.approx(expected[n], rel=1e-5)


def test_ca_mkd_weights_sum_to_one_favour_the_confident_teacher_and_one_teacher_is_kd():
    batch = _batch(["student", "teacher", "t2", "t3"])
    w = _bound(CAMKD(), RUN3).teacher_weights(batch)
    torch.testing.assert_close(w.sum(0), torch.ones(4))
    ce = torch.stack([F.cross_entropy(batch.output(n).logits, batch.labels, reduction="none")
                      for n in ("teacher", "t2", "t3")])
    assert torch.equal(w.argmax(0), ce.argmin(0))
    one = _bound(CAMKD(teachers=["t2"]), RUN3)
    assert torch.equal(one.teacher_weights(batch), torch.ones(1, 4))
    kd = 16 * kl_rows(softmax(LOGITS["t2"], 4), softmax(LOGITS["student"], 4)).mean()
    assert sum(one(batch).values()).item() == pytest.approx(kd, rel=1e-5)


def test_ca_mkd_bind_errors():
    with pytest.raises(ValueError, match="at least one frozen teacher"):
        CAMKD().bind({"student": T_})
    with pytest.raises(ValueError, match="'t9'.*role: frozen"):
        CAMKD(teachers=["t9"]).bind(RUN3)
    with pytest.raises(ValueError, match="'student' as its student.*no model"):
        CAMKD().bind({"peer1": T_, "teacher": F_})


# ---------------------------------------------------------------------------- generalized distillation


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_ce_matches_hand_computation_and_gradient(T):
    batch = _batch(["student", "teacher"], grad=("student",))
    value = SoftCE(temperature=T)(batch)
    s, ps = softmax(LOGITS["teacher"], T), softmax(LOGITS["student"])  # student at T = 1, no T^2
    expected = np.mean([-sum(a * math.log(b) for a, b in zip(sr, qr)) for sr, qr in zip(s, ps)])
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    np.testing.assert_allclose(batch.student.logits.grad.numpy(), (ps - s) / 4, rtol=1e-4, atol=1e-7)


def test_soft_ce_temperatures_differ():
    batch = _batch(["student", "teacher"])
    assert abs(SoftCE(1.0)(batch).item() - SoftCE(4.0)(batch).item()) > 1e-3


# ---------------------------------------------------------------------------- Tf-KD


def _virtual_teacher(a, C):
    p = np.full((len(LABELS), C), (1 - a) / (C - 1))
    for i, y in enumerate(LABELS):
        p[i, y] = a
    return p


@pytest.mark.parametrize("T", [1.0, 20.0])
def test_tfkd_virtual_code_mode(T):
    term = TfKDVirtual(temperature=T)
    assert term.multiplier == 100.0 and term.reduction == "elementwise_mean" and not term.needs_teacher
    assert _bound(term, {"student": T_}).reads() == {"student": ()}
    target = softmax(_virtual_teacher(0.99, 5), T)  # a softmax of the probability vector
    ps = softmax(LOGITS["student"])  # the student is not softened
    expected = 100.0 * kl_rows(target, ps).sum() / (4 * 5)
    assert term(_batch(["student"])).item() == pytest.approx(expected, rel=1e-5)
    batchmean = TfKDVirtual(temperature=T, reduction="batchmean")(_batch(["student"]))
    assert batchmean.item() == pytest.approx(5 * expected, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_tfkd_virtual_paper_mode(T):
    term = TfKDVirtual(correct_prob=0.9, temperature=T, mode="paper")
    assert term.multiplier == 1.0 and term.reduction == "batchmean"
    a, b = 0.9 ** (1 / T), (0.1 / 4) ** (1 / T)  # soften(p_d, T) is proportional to p_d^(1/T)
    target = np.where(_virtual_teacher(0.9, 5) == 0.9, a, b) / (a + 4 * b)
    expected = kl_rows(target, softmax(LOGITS["student"], T)).mean()
    assert term(_batch(["student"])).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reduction,divisor", [("elementwise_mean", 4 * 5), ("batchmean", 4)])
def test_tfkd_self_matches_hand_computation(reduction, divisor):
    term = TfKDSelf(reduction=reduction)
    assert (term.temperature, term.multiplier) == (6.0, 50.0)
    kl = kl_rows(softmax(LOGITS["teacher"], 6), softmax(LOGITS["student"], 6)).sum()
    assert term(_batch(["student", "teacher"])).item() == pytest.approx(36 * 50 * kl / divisor, rel=1e-5)


def test_tfkd_options_rejected():
    with pytest.raises(ValueError, match="correct_prob"):
        TfKDVirtual(correct_prob=1.0)
    with pytest.raises(ValueError, match="mode"):
        TfKDVirtual(mode="both")
    with pytest.raises(ValueError, match="reduction"):
        TfKDSelf(reduction="mean")


# ---------------------------------------------------------------------------- every term


RUN = {"student": T_, "peer1": T_, "teacher": F_, "t2": F_}
TERMS = [CrossEntropy, lambda: CrossEntropy(models="trainable"), DML, MultiTeacherKD,
         lambda: MultiTeacherKD(mean="geom"), CAMKD, SoftCE, TfKDVirtual, lambda: TfKDVirtual(mode="paper"), TfKDSelf]


def _total(out):
    return sum(out.values()) if isinstance(out, dict) else out


@pytest.mark.parametrize("make", TERMS)
def test_fp32_from_bf16_and_finite_for_huge_logits(make):
    term = _bound(make(), RUN)
    value = _total(term(_batch(list(RUN), dtype=torch.bfloat16)))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    huge = _batch(list(RUN))
    for n, o in huge.outputs.items():
        o.logits.mul_(1e4 if n != "peer1" else -1e4)
    assert torch.isfinite(_total(term(huge)))


def test_needs_teacher_flags():
    assert not DML.needs_teacher and not TfKDVirtual.needs_teacher and not CrossEntropy.needs_teacher
    assert MultiTeacherKD.needs_teacher and CAMKD.needs_teacher and SoftCE.needs_teacher and TfKDSelf.needs_teacher


@pytest.mark.parametrize("method,terms", [
    ("dml", {"ce": ("ce", 1.0, {"models": "trainable"}), "dml": ("dml", 1.0, {})}),
    ("mtkd", {"ce": ("ce", 0.1, {}), "mtkd": ("mtkd", 0.9, {"temperature": 4.0, "mean": "arith"})}),
    ("ca_mkd", {"ce": ("ce", 1.0, {}), "ca_mkd": ("ca_mkd", 1.0, {"temperature": 4.0})}),
    ("gd", {"ce": ("ce", 0.5, {}), "soft_ce": ("soft_ce", 0.5, {"temperature": 1.0})}),
    ("tfkd_reg", {"ce": ("ce", 0.9, {}), "tfkd_virtual": ("tfkd_virtual", 0.1, {
        "correct_prob": 0.99, "temperature": 20.0, "multiplier": 100.0, "mode": "code"})}),
    ("tfkd_self", {"ce": ("ce", 0.05, {}), "tfkd_self": ("tfkd_self", 0.95, {"temperature": 6.0, "multiplier": 50.0})}),
])
def test_presets(method, terms):
    spec = METHODS.get(method)
    assert {t: (s.loss, s.weight, s.params) for t, s in spec.terms.items()} == terms
    assert spec.step == "joint" and spec.reference
