"""DCD and RRD: values against independent NumPy computations, DCD's clamp, gradients, fixed temperature, small
batches and epoch log; RRD's queue (initialisation, FIFO wrap-around, enqueue order, checkpointed state)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from distillab.losses import Batch, EpochContext, ModelOutputs, SetupContext
from distillab.losses.inbatch import DCD, RRD
from distillab.methods import METHODS


def _setup(term, s_dim=6, t_dim=5):
    term.setup(SetupContext(num_classes=10, num_train=100, student_shapes={"embedding": torch.Size([2, s_dim])},
                            teacher_shapes={"embedding": torch.Size([2, t_dim])}))
    return term


def _batch(f_s, f_t):
    labels = torch.zeros(len(f_s), dtype=torch.long)
    index = torch.arange(len(f_s))
    return Batch(f_s, labels, index, ModelOutputs(f_s, {"embedding": f_s}), ModelOutputs(f_t, {"embedding": f_t}), 1)


def _np_embed(head, f):
    w, b = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
    z = f.detach().double().numpy() @ w.T + b
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _epoch_ctx(messages, epoch=1):
    return EpochContext(epoch=epoch, num_train=100, train_labels=None, device=torch.device("cpu"),
                        extract=lambda side, names, indices=None: {}, set_subset=lambda idx: None,
                        log=messages.append)


# ---------------------------------------------------------------- DCD


def _np_dcd(z_s, z_t, scale, bias, alpha=0.5):
    """Plain loops over the B x B logits."""
    b = len(z_s)
    l = scale * (z_s @ z_t.T) + bias
    log_p = _np_log_softmax(l, 1)  # row softmax: student anchor i over teachers j
    log_q = _np_log_softmax(l, 0).T  # column softmax transposed: teacher anchor i over students j
    con = -sum(log_p[i, i] for i in range(b)) / b
    kl = sum(math.exp(log_q[i, j]) * (log_q[i, j] - log_p[i, j]) for i in range(b) for j in range(b)) / b
    return con, alpha * kl


def test_dcd_value_matches_numpy():
    torch.manual_seed(0)
    term = _setup(DCD())
    with torch.no_grad():
        term.theta.fill_(0.7)
        term.bias.fill_(0.3)
    f_s, f_t = torch.randn(5, 6), torch.randn(5, 5)
    out = term(_batch(f_s, f_t))
    con, cons = _np_dcd(_np_embed(term.embed_s, f_s), _np_embed(term.embed_t, f_t), math.exp(0.7), 0.3)
    assert set(out) == {"contrastive", "consistency"}
    assert out["contrastive"].item() == pytest.approx(con, rel=1e-5)
    assert out["consistency"].item() == pytest.approx(cons, rel=1e-4)
    assert cons > 0


def test_dcd_kl_direction_is_q_target():
    """KL(Q || P), Q (column softmax) the target, as the reference's F.kl_div(log P, Q)."""
    torch.manual_seed(1)
    term = _setup(DCD(consistency_weight=1.0))
    f_s, f_t = torch.randn(4, 6), torch.randn(4, 5)
    with torch.no_grad():
        l = term.logits(term.embed_s(f_s), term.embed_t(f_t))
        expected = torch.nn.functional.kl_div(torch.log_softmax(l, 1), torch.softmax(l, 0).t(), reduction="batchmean")
        out = term(_batch(f_s, f_t))
    assert out["consistency"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_dcd_gradients_reach_theta_not_bias_and_clamp():
    torch.manual_seed(2)
    term = _setup(DCD())
    assert term.scale().item() == pytest.approx(math.e)
    f_s, f_t = torch.randn(6, 6), torch.randn(6, 5)
    sum(term(_batch(f_s, f_t)).values()).backward()
    assert term.theta.grad is not None and term.theta.grad.abs().item() > 0
    assert term.bias.grad is not None and term.bias.grad.abs().item() < 1e-6
    assert term.embed_s.linear.weight.grad.abs().sum() > 0 and term.embed_t.linear.weight.grad.abs().sum() > 0
    term.zero_grad()
    with torch.no_grad():
        term.theta.fill_(5.0)  # exp(5) >> 10
    assert term.scale().item() == pytest.approx(10.0)
    sum(term(_batch(f_s, f_t)).values()).backward()
    assert term.theta.grad is None or term.theta.grad.item() == 0.0


def test_dcd_fixed_temperature_divides_and_reference_bug_multiplies():
    torch.manual_seed(3)
    f_s, f_t = torch.randn(4, 6), torch.randn(4, 5)
    for bug, scale in ((False, 1 / 0.07), (True, 0.07)):
        torch.manual_seed(3)
        term = _setup(DCD(learnable_temperature=False, reference_fixed_temperature_bug=bug))
        assert not hasattr(term, "theta")
        out = term(_batch(f_s, f_t))
        con, cons = _np_dcd(_np_embed(term.embed_s, f_s), _np_embed(term.embed_t, f_t), scale, 0.0)
        assert out["contrastive"].item() == pytest.approx(con, rel=1e-5)
        assert out["consistency"].item() == pytest.approx(cons, rel=1e-4, abs=1e-7)


def test_dcd_small_batches():
    torch.manual_seed(4)
    term = _setup(DCD())
    out = term(_batch(torch.randn(2, 6), torch.randn(2, 5)))
    total = sum(out.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    assert torch.isfinite(term.theta.grad)
    # B = 1: no negatives; both parts are exactly zero (a 1 x 1 softmax is 1), and nothing breaks
    out1 = term(_batch(torch.randn(1, 6), torch.randn(1, 5)))
    assert out1["contrastive"].item() == 0.0 and out1["consistency"].item() == 0.0


def test_dcd_epoch_log_and_clamp_warning():
    term = _setup(DCD())
    messages: list[str] = []
    term.on_epoch_start(_epoch_ctx(messages))
    assert len(messages) == 1 and "2.718" in messages[0] and "bias 0" in messages[0]
    with torch.no_grad():
        term.theta.fill_(3.0)
    with pytest.warns(UserWarning, match="clamp"):
        term.on_epoch_start(_epoch_ctx(messages, epoch=2))
    assert len(messages) == 3 and "clamp" in messages[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only; later epochs just log
        term.on_epoch_start(_epoch_ctx(messages, epoch=3))
    assert len(messages) == 5


# ---------------------------------------------------------------- RRD


def _np_rrd(z_s, z_t, queue, tau_s, tau_t):
    target = np.exp(_np_log_softmax(z_t @ queue.T / tau_t, 1))
    log_pred = _np_log_softmax(z_s @ queue.T / tau_s, 1)
    return -sum(sum(target[i, k] * log_pred[i, k] for k in range(len(queue))) for i in range(len(z_s))) / len(z_s)


def test_rrd_queue_init_is_column_normalised():
    torch.manual_seed(5)
    term = _setup(RRD(queue_size=64, feat_dim=8))
    q = term.queue
    assert q.shape == (64, 8) and int(term.queue_ptr) == 0
    assert torch.allclose(q.norm(dim=0), torch.ones(8), atol=1e-5)
    assert not torch.allclose(q.norm(dim=1), torch.ones(64), atol=1e-2)


@pytest.mark.parametrize("variant", ["2024", "head"])
def test_rrd_value_matches_numpy_and_enqueue_order(variant):
    torch.manual_seed(6)
    term = _setup(RRD(queue_size=8, feat_dim=4, variant=variant))
    f_s, f_t = torch.randn(3, 6), torch.randn(3, 5)
    q0 = term.queue.double().numpy().copy()
    z_s, z_t = _np_embed(term.embed_s, f_s), _np_embed(term.embed_t, f_t)
    loss = term(_batch(f_s, f_t))
    q_used = q0.copy()
    if variant == "head":  # positives written first
        q_used[:3] = z_t
        expected = _np_rrd(z_s, z_t, q_used, 0.1, 0.02)
    else:
        expected = _np_rrd(z_s, z_t, q0, 0.04, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    q_after = q0.copy()
    q_after[:3] = z_t
    np.testing.assert_allclose(term.queue.double().numpy(), q_after, atol=1e-6)
    assert int(term.queue_ptr) == 3
    loss.backward()
    assert term.embed_s.linear.weight.grad.abs().sum() > 0
    assert term.embed_t.linear.weight.grad is None  # the teacher side is detached, as in the reference


def test_rrd_enqueue_before_and_after_differ():
    torch.manual_seed(7)
    f_s, f_t = torch.randn(4, 6), torch.randn(4, 5)
    losses = []
    for variant in ("2024", "head"):
        torch.manual_seed(7)
        term = _setup(RRD(queue_size=16, feat_dim=4, variant=variant, tau_s=0.1, tau_t=0.1))
        losses.append(term(_batch(f_s, f_t)).item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_rrd_fifo_wraps_around():
    torch.manual_seed(8)
    term = _setup(RRD(queue_size=7, feat_dim=3))
    written = []
    for _ in range(5):  # B = 3 does not divide K = 7: 15 rows written, pointer at 15 % 7 = 1
        keys = torch.randn(3, 3)
        term.enqueue(keys)
        written.append(keys)
    rows = torch.cat(written)
    assert int(term.queue_ptr) == 15 % 7
    expected = torch.empty(7, 3)
    for i, r in enumerate(rows):
        expected[i % 7] = r
    assert torch.equal(term.queue, expected)
    # the last 7 written rows in FIFO order starting at the pointer
    order = torch.cat([term.queue[1:], term.queue[:1]])
    assert torch.equal(order, rows[-7:])


def test_rrd_queue_smaller_than_batch_is_an_error():
    term = _setup(RRD(queue_size=2, feat_dim=4))
    with pytest.raises(ValueError, match="queue_size"):
        term(_batch(torch.randn(3, 6), torch.randn(3, 5)))
    with pytest.raises(ValueError, match="variant"):
        RRD(variant="2025")


def test_rrd_state_dict_round_trip():
    torch.manual_seed(9)
    term = _setup(RRD(queue_size=10, feat_dim=4))
    term(_batch(torch.randn(3, 6), torch.randn(3, 5)))
    state = term.state_dict()
    assert "queue" in state and "queue_ptr" in state
    torch.manual_seed(99)
    other = _setup(RRD(queue_size=10, feat_dim=4))
    assert not torch.equal(other.queue, term.queue)
    other.load_state_dict(state)
    assert torch.equal(other.queue, term.queue) and int(other.queue_ptr) == 3
    f_s, f_t = torch.randn(2, 6), torch.randn(2, 5)
    assert other(_batch(f_s, f_t)).item() == term(_batch(f_s, f_t)).item()


def test_presets():
    dcd, dcd_kd, rrd, rrd_kd = (METHODS.get(n) for n in ("dcd", "dcd_kd", "rrd", "rrd_kd"))
    assert {k: v.weight for k, v in dcd.terms.items()} == {"ce": 1.0, "dcd": 1.0}
    assert {k: v.weight for k, v in dcd_kd.terms.items()} == {"ce": 1.0, "kd": 1.0, "dcd": 1.0}
    assert {k: v.weight for k, v in rrd.terms.items()} == {"ce": 1.0, "rrd": 1.0}
    assert {k: v.weight for k, v in rrd_kd.terms.items()} == {"ce": 1.0, "kd": 1.0, "rrd": 1.0}
