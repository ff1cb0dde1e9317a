"""CRD: the NCE value against an independent NumPy computation, Z, the memory banks, negative sampling,
gradients, checkpointed state (banks, Z, sampler generator) and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distillab.losses import Batch, ModelOutputs, SetupContext
from distillab.losses.contrastive import CRD
from distillab.losses.memory import ContrastMemory, MomentumMemory, nce_loss, nce_per_anchor
from distillab.losses.sampling import ContrastSampler
from distillab.methods import METHODS

T = 0.07


def _term(num_train=10, s_dim=6, t_dim=5, labels=None, seed=0, **options) -> CRD:
    term = CRD(**options)
    term.setup(SetupContext(num_classes=10, num_train=num_train, student_shapes={"embedding": torch.Size([2, s_dim])},
                            teacher_shapes={"embedding": torch.Size([2, t_dim])}, train_labels=labels))
    return term


def _batch(f_s, f_t, index, labels=None):
    labels = torch.zeros(len(index), dtype=torch.long) if labels is None else labels
    return Batch(f_s, labels, index, ModelOutputs(f_s, {"embedding": f_s}), ModelOutputs(f_t, {"embedding": f_t}), 1)


class FixedIndices(nn.Module):
    def __init__(self, idx: torch.Tensor) -> None:
        super().__init__()
        self.idx = idx

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.idx


# ---------------------------------------------------------------- independent NumPy reference


def _np_embed(head, f):
    w, b = head.linear.weight.detach().double().numpy(), head.linear.bias.detach().double().numpy()
    z = f.detach().double().numpy() @ w.T + b
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_side(anchor, bank, idx, n_data, z=None):
    """P = exp(m . v / T) / Z for the rows idx; Z from these scores when not given. Returns (P, Z)."""
    e = np.exp(np.einsum("bkd,bd->bk", bank[idx], anchor) / T)
    z = e.mean() * n_data if z is None else z
    return e / z, z


def _np_nce(p, n_data, eps=1e-7):
    m = p.shape[1] - 1
    pn = 1.0 / n_data
    log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + eps))
    log_d0 = np.log((m * pn) / (p[:, 1:] + m * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def _np_update(bank, index, v, m=0.5):
    bank = bank.copy()
    rows = m * bank[index] + (1 - m) * v
    bank[index] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return bank


def test_nce_value_matches_numpy_and_z_freezes():
    torch.manual_seed(0)
    term = _term(nce_k=3)
    n = 10
    idx1 = torch.tensor([[2, 5, 7, 9], [6, 0, 1, 3]])  # B = 2, K = 3, column 0 the positive (exact mode)
    term.sampler = FixedIndices(idx1)
    f_s, f_t = torch.randn(2, 6), torch.randn(2, 5)
    mem_s, mem_t = (term.memory.student.bank.double().numpy().copy(), term.memory.teacher.bank.double().numpy().copy())
    assert not np.allclose(np.linalg.norm(mem_s, axis=1), 1.0)  # rows start uniform in +-1/sqrt(128/3), not unit
    bound = 1 / np.sqrt(128 / 3)
    assert np.abs(mem_s).max() <= bound and np.abs(mem_t).max() <= bound
    out = term(_batch(f_s, f_t, idx1[:, 0]))

    v_s, v_t = _np_embed(term.embed_s, f_s), _np_embed(term.embed_t, f_t)
    p_s, z_s = _np_side(v_s, mem_t, idx1.numpy(), n)  # student anchor against the teacher bank
    p_t, z_t = _np_side(v_t, mem_s, idx1.numpy(), n)  # teacher anchor against the student bank
    assert out["student_anchor"].item() == pytest.approx(_np_nce(p_s, n), rel=1e-5)
    assert out["teacher_anchor"].item() == pytest.approx(_np_nce(p_t, n), rel=1e-5)
    assert out["student_anchor"].dim() == 0  # a scalar (RepDistiller returns shape [1])
    assert term.memory.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert term.memory.z_teacher.item() == pytest.approx(z_t, rel=1e-5)

    # second batch: the first batch's Z, and the banks as the first batch left them
    mem_s, mem_t = _np_update(mem_s, [2, 6], v_s), _np_update(mem_t, [2, 6], v_t)
    idx2 = torch.tensor([[4, 2, 8, 0], [1, 5, 6, 9]])
    term.sampler = FixedIndices(idx2)
    f_s, f_t = torch.randn(2, 6) * 3, torch.randn(2, 5) * 3
    out = term(_batch(f_s, f_t, idx2[:, 0]))
    v_s, v_t = _np_embed(term.embed_s, f_s), _np_embed(term.embed_t, f_t)
    p_s, _ = _np_side(v_s, mem_t, idx2.numpy(), n, z=z_s)
    p_t, _ = _np_side(v_t, mem_s, idx2.numpy(), n, z=z_t)
    assert out["student_anchor"].item() == pytest.approx(_np_nce(p_s, n), rel=1e-5)
    assert out["teacher_anchor"].item() == pytest.approx(_np_nce(p_t, n), rel=1e-5)
    assert term.memory.z_student.item() == pytest.approx(z_s, rel=1e-6)
    assert term.memory.z_teacher.item() == pytest.approx(z_t, rel=1e-6)


def test_scores_use_the_bank_before_the_update_and_update_formula():
    torch.manual_seed(1)
    memory = ContrastMemory(num_data=20, dim=4)
    before_s, before_t = memory.student.bank.clone(), memory.teacher.bank.clone()
    v_s = nn.functional.normalize(torch.randn(3, 4), dim=1)
    v_t = nn.functional.normalize(torch.randn(3, 4), dim=1)
    index = torch.tensor([4, 11, 17])
    contrast = torch.cat([index[:, None], torch.tensor([[0, 1], [2, 3], [5, 6]])], dim=1)
    log_p = memory(v_s, v_t, index, contrast)
    # the positive is scored against its row as it was before this batch's update
    s_pos = (before_t[index] * v_s).sum(1) / 0.07
    torch.testing.assert_close(log_p["student"][:, 0], s_pos - memory.z_student.log())
    t_pos = (before_s[index] * v_t).sum(1) / 0.07
    torch.testing.assert_close(log_p["teacher"][:, 0], t_pos - memory.z_teacher.log())
    # mem[i] <- normalise(0.5 mem[i] + 0.5 v_i) at the anchors' own indices, other rows untouched
    want_s = nn.functional.normalize(0.5 * before_s[index] + 0.5 * v_s, dim=1)
    torch.testing.assert_close(memory.student.bank[index], want_s)
    want_t = nn.functional.normalize(0.5 * before_t[index] + 0.5 * v_t, dim=1)
    torch.testing.assert_close(memory.teacher.bank[index], want_t)
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False
    assert torch.equal(memory.student.bank[others], before_s[others])
    assert torch.equal(memory.teacher.bank[others], before_t[others])


@pytest.mark.parametrize("n,b,c", [(10, 2, 4), (10, 2, 10)])  # gathered rows; the full (B, N) product
def test_bank_scores_and_gradient_on_both_paths(n, b, c):
    torch.manual_seed(2)
    mem = MomentumMemory(n, 8)
    before = mem.bank.clone()
    anchors = torch.randn(b, 8, requires_grad=True)
    idx = torch.randint(0, n, (b, c))
    scores = mem.scores(anchors, idx)
    torch.testing.assert_close(scores, torch.einsum("bkd,bd->bk", before[idx], anchors))
    mem.update(torch.arange(b), torch.randn(b, 8))  # in place, before the backward pass
    scores.sum().backward()
    torch.testing.assert_close(anchors.grad, before[idx].sum(1))  # the rows as they were when scored


def test_per_anchor_nce_and_weights():
    torch.manual_seed(3)
    log_p = torch.randn(4, 6) - 8
    per = nce_per_anchor(log_p, num_data=50)
    p = log_p.double().exp().numpy()
    assert per.shape == (4,)
    for i in range(4):
        assert per[i].item() == pytest.approx(_np_nce(p[i:i + 1], 50), rel=1e-5)
    w = torch.tensor([0.5, 1.0, 1.5, 1.0])
    assert nce_loss(log_p, 50, w).item() == pytest.approx((per * w).mean().item(), rel=1e-6)
    assert nce_loss(log_p, 50).item() == pytest.approx(per.mean().item(), rel=1e-6)
    # finite for extreme scores, where forming P itself would overflow
    assert torch.isfinite(nce_per_anchor(torch.tensor([[500.0, -500.0, 300.0]]), 10)).all()


def test_only_requested_anchor_sides_are_scored():
    memory = ContrastMemory(num_data=12, dim=4)
    v = nn.functional.normalize(torch.randn(2, 4), dim=1)
    out = memory(v, v, torch.tensor([0, 1]), torch.tensor([[0, 5, 6], [1, 7, 8]]), anchors=("student",))
    assert set(out) == {"student"} and memory.z_teacher.item() == -1.0


# ---------------------------------------------------------------- sampling


def _labels(n=600, classes=6, seed=0):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def test_exact_sampling_other_classes_distinct_and_positive_self():
    labels = _labels()
    sampler = ContrastSampler(600, labels, num_negatives=300, mode="exact", seed=5)
    index = torch.randperm(600, generator=torch.Generator().manual_seed(1))[:32]
    idx = sampler(index)
    assert idx.shape == (32, 301)
    assert torch.equal(idx[:, 0], index)
    negatives = idx[:, 1:]
    assert not (labels[negatives] == labels[index][:, None]).any()
    assert all(len(row.unique()) == 300 for row in negatives)


def test_exact_sampling_is_uniform_over_the_other_classes():
    labels = torch.arange(40) % 4
    sampler = ContrastSampler(40, labels, num_negatives=10, seed=0)
    counts = torch.zeros(40)
    draws = 400
    for _ in range(draws):
        counts += torch.bincount(sampler(torch.tensor([0]))[0, 1:], minlength=40)
    other = labels != 0
    assert counts[~other].sum() == 0
    expected = draws * 10 / 30  # each of the 30 other-class samples with probability K / pool
    assert (counts[other] - expected).abs().max() < 5 * expected ** 0.5


def test_relax_positive_is_same_class():
    labels = _labels(seed=3)
    sampler = ContrastSampler(600, labels, num_negatives=50, mode="relax", seed=0)
    index = torch.arange(64)
    idx = sampler(index)
    assert torch.equal(labels[idx[:, 0]], labels[index])
    assert (idx[:, 0] != index).any()  # a random same-class sample, not always the anchor itself
    assert not (labels[idx[:, 1:]] == labels[index][:, None]).any()


def test_with_replacement_only_for_classes_whose_pool_is_too_small():
    labels = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    sampler = ContrastSampler(100, labels, num_negatives=20, seed=0)
    idx = sampler(torch.tensor([0, 95]))
    assert (labels[idx[0, 1:]] == 1).all()  # class 0's pool is the 10 samples of class 1: drawn with replacement
    assert (labels[idx[1, 1:]] == 0).all() and len(idx[1, 1:].unique()) == 20  # class 1: 90 to draw from
    assert sampler.max_distinct_negatives == 10


def test_without_labels_negatives_are_all_other_samples():
    sampler = ContrastSampler(50, None, num_negatives=49, seed=0)
    index = torch.tensor([3, 17, 42])
    idx = sampler(index)
    for row, i in zip(idx, index):
        assert row[0] == i and i not in row[1:] and len(row[1:].unique()) == 49
    with pytest.raises(ValueError, match="relax.*labels"):
        ContrastSampler(50, None, num_negatives=5, mode="relax")


def test_nce_k_is_clipped_with_a_message():
    labels = torch.arange(100) % 10
    with pytest.warns(UserWarning, match=r"nce_k=16384 is more than the 90 samples outside .* using nce_k=90"):
        term = _term(num_train=100, labels=labels)
    assert term.sampler.num_negatives == 90
    with pytest.warns(UserWarning, match="using nce_k=99"):
        _term(num_train=100, labels=None)
    with pytest.raises(ValueError, match="same label"):
        _term(num_train=10, labels=torch.zeros(10, dtype=torch.long), nce_k=4)
    with pytest.raises(ValueError, match="mode"):
        CRD(mode="loose")


# ---------------------------------------------------------------- gradients, state, resume


def _random_batch(gen, n=60, b=8, s_dim=6, t_dim=5):
    index = torch.randperm(n, generator=gen)[:b]
    return _batch(torch.randn(b, s_dim, generator=gen, requires_grad=True), torch.randn(b, t_dim, generator=gen),
                  index)


def test_gradients_reach_both_heads_through_their_own_anchor_and_not_the_banks():
    torch.manual_seed(4)
    labels = torch.arange(60) % 3
    term = _term(num_train=60, labels=labels, nce_k=16, feat_dim=32)
    batch = _random_batch(torch.Generator().manual_seed(0))
    out = term(batch)
    assert set(out) == {"student_anchor", "teacher_anchor"}
    assert all(not b.requires_grad for b in term.buffers())
    out["student_anchor"].backward(retain_graph=True)
    assert term.embed_s.linear.weight.grad.abs().sum() > 0 and batch.student.logits.grad.abs().sum() > 0
    assert term.embed_t.linear.weight.grad is None
    term.zero_grad(set_to_none=True)
    out["teacher_anchor"].backward()
    assert term.embed_t.linear.weight.grad.abs().sum() > 0
    assert term.embed_s.linear.weight.grad is None


def test_finite_under_bf16_autocast():
    torch.manual_seed(5)
    term = _term(num_train=60, labels=torch.arange(60) % 3, nce_k=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = term(_random_batch(torch.Generator().manual_seed(1)))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_state_round_trip_and_resumed_term_draws_the_same_indices():
    labels = torch.arange(60) % 3
    torch.manual_seed(6)
    a = _term(num_train=60, labels=labels, nce_k=16, seed=11)
    fresh_state = a.state_dict()
    assert fresh_state["sampler._extra_state"].numel() == 0  # nothing drawn yet: starts from the seed
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        a(_random_batch(gen))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert {"memory.student.bank", "memory.teacher.bank", "memory.z_student", "memory.z_teacher",
            "sampler._extra_state"} <= set(state)
    torch.manual_seed(99)  # other heads and banks until the state is loaded
    b = _term(num_train=60, labels=labels, nce_k=16, seed=11)
    b.load_state_dict(state)
    for key, value in b.state_dict().items():
        assert torch.equal(value, state[key]), key
    batch = _random_batch(gen)
    assert torch.equal(a.sampler(batch.index), b.sampler(batch.index))
    out_a, out_b = a(batch), b(batch)
    for part in out_a:
        assert torch.equal(out_a[part], out_b[part]), part
    assert torch.equal(a.memory.student.bank, b.memory.student.bank)


def test_presets():
    crd = METHODS.get("crd")
    assert {t: s.weight for t, s in crd.terms.items()} == {"ce": 1.0, "crd": 0.8}
    crd_kd = METHODS.get("crd_kd")
    assert {t: s.weight for t, s in crd_kd.terms.items()} == {"ce": 1.0, "kd": 1.0, "crd": 0.8}
    assert crd_kd.terms["kd"].params == {"temperature": 4.0}


def test_trainer_resume_continues_the_same_negatives(tmp_path):
    """Through the engine's checkpoint: 2 epochs straight equal 1 epoch, save, load into a new run, 1 epoch."""
    from distillab.config import load_config
    from distillab.data import build_dataset
    from distillab.core.files import load_checkpoint, save_atomic
    from distillab.engine.trainer import Trainer
    from distillab.models import create_model
    from distillab.objective import build_objective

    cfg = load_config("configs/mnist1d/crd.yaml", [
        "train.device=cpu", "train.batch_size=60", "train.tensorboard=false", "train.epochs=2",
        "method.params.crd.nce_k=64"])
    data = build_dataset("mnist1d", num_samples=300)

    def trainer():
        torch.manual_seed(0)
        teacher = create_model("cnn1d", num_classes=10, width=8)
        student = create_model("cnn1d", num_classes=10, width=6)
        return Trainer(cfg, student=student, teacher=teacher, objective=build_objective(cfg.method), data=data)

    full = trainer()
    full.train_epoch(1)
    full.epoch = 1
    save_atomic(full.state_dict(), tmp_path / "last.pt")
    full.train_epoch(2)
    resumed = trainer()
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    resumed.train_epoch(2)
    for key, value in full.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    for key, value in full.objective.state_dict().items():
        assert torch.equal(value, resumed.objective.state_dict()[key]), key
