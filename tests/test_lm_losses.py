"""Token-level language-model terms (losses/lm.py) against independent computations: per-token loops with
torch.distributions / numpy in float64, masking and the real-token average, temperature, bf16, GKD's beta
endpoints (TRL's definition), gradients (gradcheck), hidden-state matching, the presets; and every registered
term that takes language-model outputs binds, sets up and trains only what it should on (N, L, V) outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from distillab.config import MethodConfig
from distillab.core.contract import FROZEN, TRAINABLE
from distillab.data.base import IGNORE_INDEX
from distillab.losses import LOSSES, Batch, ModelOutputs, SetupContext
from distillab.losses.lm import (LMHidden, TokenJSD, TokenKL, TokenReverseKL, TokenTVD, hidden_state_loss,
                                 token_jsd_loss, token_kl_loss, token_rkl_loss, token_tvd_loss)
from distillab.methods import METHODS
from distillab.objective import build_objective

N, L, V = 2, 5, 7
LENGTHS = (5, 2)  # real tokens per sequence: the mean over tokens differs from the mean of per-sequence means
DIVERGENCES = {"token_kl": token_kl_loss, "token_rkl": token_rkl_loss, "token_jsd": token_jsd_loss,
               "token_tvd": token_tvd_loss}
PRESET_LOSSES = {**DIVERGENCES,
               # GKD's loss on a batch is the JSD (its other options drive sampling); offline KD with the whole
               # vocabulary stored is the forward KL at T = 1
               "gkd": lambda s, t, y, beta, temperature, **_: token_jsd_loss(s, t, y, beta, temperature),
               "token_kl_topk": lambda s, t, y: token_kl_loss(s, t, y, 1.0)}


def _logits(seed: int, dtype=torch.float32, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(N, L, V, generator=g, dtype=torch.float64)).to(dtype)


def _labels(lengths=LENGTHS) -> torch.Tensor:
    labels = torch.full((N, L), IGNORE_INDEX, dtype=torch.long)
    for i, n in enumerate(lengths):
        labels[i, :n] = torch.arange(n) % V
    return labels


def _softmax_np(z: np.ndarray, T: float) -> np.ndarray:
    e = np.exp((z - z.max()) / T)
    return e / e.sum()


def _kl_np(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def _per_token_reference(student, teacher, labels, fn) -> float:
    """sum over real tokens of fn(z_s, z_t) / number of real tokens, one token at a time."""
    values = [fn(student[i, j].double().numpy(), teacher[i, j].double().numpy())
              for i in range(labels.shape[0]) for j in range(labels.shape[1]) if labels[i, j] != IGNORE_INDEX]
    return sum(values) / len(values)


def _kl_dist(student_row: np.ndarray, teacher_row: np.ndarray, T: float, reverse: bool = False) -> float:
    ps = Categorical(logits=torch.from_numpy(student_row) / T)
    pt = Categorical(logits=torch.from_numpy(teacher_row) / T)
    return float(kl_divergence(ps, pt) if reverse else kl_divergence(pt, ps))


def _jsd_np(s: np.ndarray, t: np.ndarray, beta: float, T: float) -> float:
    """The paper's Eq. 1 with TRL's weights: beta KL(p_t || M) + (1 - beta) KL(p_s || M),
    M = beta p_t + (1 - beta) p_s."""
    ps, pt = _softmax_np(s, T), _softmax_np(t, T)
    m = beta * pt + (1 - beta) * ps
    return beta * _kl_np(pt, m) + (1 - beta) * _kl_np(ps, m)


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_token_kl_and_rkl_equal_per_token_kl_divergences(T):
    s, t, labels = _logits(0), _logits(1), _labels()
    fkl = _per_token_reference(s, t, labels, lambda a, b: _kl_dist(a, b, T)) * T**2
    rkl = _per_token_reference(s, t, labels, lambda a, b: _kl_dist(a, b, T, reverse=True)) * T**2
    assert token_kl_loss(s, t, labels, T).item() == pytest.approx(fkl, rel=1e-5)
    assert token_rkl_loss(s, t, labels, T).item() == pytest.approx(rkl, rel=1e-5)
    assert abs(fkl - rkl) > 1e-3  # the two directions do differ on this case


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_token_jsd_equals_generalised_jsd_per_token(beta, T):
    s, t, labels = _logits(2), _logits(3), _labels()
    expected = _per_token_reference(s, t, labels, lambda a, b: _jsd_np(a, b, beta, T))  # TRL: no T^2
    assert token_jsd_loss(s, t, labels, beta, T).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_token_tvd_equals_half_l1_per_token(T):
    s, t, labels = _logits(4), _logits(5), _labels()
    expected = _per_token_reference(
        s, t, labels, lambda a, b: 0.5 * np.abs(_softmax_np(b, T) - _softmax_np(a, T)).sum()) * T**2
    assert token_tvd_loss(s, t, labels, T).item() == pytest.approx(expected, rel=1e-5)


def test_token_kl_hand_worked_single_token():
    # p_t = softmax([3,2,1]) = (0.6652, 0.2447, 0.0900), log p_t - log p_s = (2, 0, -2): KL = 2 (0.6652 - 0.0900)
    s, t = torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[3.0, 2.0, 1.0]]])
    assert token_kl_loss(s, t, torch.tensor([[0]])).item() == pytest.approx(2 * (0.665240955 - 0.090030573), abs=1e-6)


# ---------------------------------------------------------------------------- masking and the average


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_padding_with_wild_logits_changes_nothing(name):
    fn = DIVERGENCES[name]
    s, t, labels = _logits(6), _logits(7), _labels()
    pad = labels == IGNORE_INDEX
    wild_s, wild_t = s.clone(), t.clone()
    wild_s[pad] = torch.tensor([1e4, -1e4, 3e3, 0.0, 5e3, -2e3, 1e4])
    wild_t[pad] = -wild_s[pad]
    wild_s.requires_grad_(True)
    value = fn(wild_s, wild_t, labels)
    assert value.item() == pytest.approx(fn(s, t, labels).item(), rel=1e-6)
    value.backward()
    assert torch.isfinite(wild_s.grad).all() and wild_s.grad[pad].abs().sum() == 0


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_average_is_over_real_tokens_not_over_sequences(name):
    fn = DIVERGENCES[name]
    s, t, labels = _logits(8), _logits(9), _labels()
    per_token = [fn(s[i:i + 1, j:j + 1], t[i:i + 1, j:j + 1], labels[i:i + 1, j:j + 1]).item()
                 for i in range(N) for j in range(LENGTHS[i])]
    per_sequence = [fn(s[i:i + 1], t[i:i + 1], labels[i:i + 1]).item() for i in range(N)]
    value = fn(s, t, labels).item()
    assert value == pytest.approx(sum(per_token) / len(per_token), rel=1e-5)
    assert value != pytest.approx(sum(per_sequence) / N, rel=1e-3)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_no_real_token_gives_zero_with_a_graph(name):
    s = _logits(10).requires_grad_(True)
    labels = torch.full((N, L), IGNORE_INDEX, dtype=torch.long)
    value = DIVERGENCES[name](s, _logits(11), labels)
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_logits_and_labels_must_agree():
    s, t, labels = _logits(0), _logits(1), _labels()
    with pytest.raises(ValueError, match="same vocabulary"):
        token_kl_loss(s, t[..., :-1], labels)
    with pytest.raises(ValueError, match="labels"):
        token_kl_loss(s, t, labels[:, :-1])


# ---------------------------------------------------------------------------- temperature, dtype


@pytest.mark.parametrize("name", ["token_kl", "token_rkl", "token_tvd"])
def test_temperature_softens_both_and_scales_by_t_squared(name):
    fn, T = DIVERGENCES[name], 4.0
    s, t, labels = _logits(12), _logits(13), _labels()
    assert fn(s, t, labels, T).item() == pytest.approx(T**2 * fn(s / T, t / T, labels, 1.0).item(), rel=1e-5)


def test_jsd_temperature_softens_without_t_squared():  # TRL's generalized_jsd_loss has no T^2
    s, t, labels = _logits(12), _logits(13), _labels()
    assert token_jsd_loss(s, t, labels, 0.5, 4.0).item() == pytest.approx(
        token_jsd_loss(s / 4, t / 4, labels, 0.5, 1.0).item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_bf16_logits_give_the_fp32_value(name):
    fn = DIVERGENCES[name]
    s, t, labels = _logits(14, torch.bfloat16), _logits(15, torch.bfloat16), _labels()
    value = fn(s, t, labels)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(fn(s.float(), t.float(), labels).item(), rel=1e-6)  # upcast is exact
    assert value.item() == pytest.approx(fn(_logits(14), _logits(15), labels).item(), rel=0.05, abs=1e-3)


def test_fp64_stays_fp64():
    assert token_kl_loss(_logits(0, torch.float64), _logits(1, torch.float64), _labels()).dtype == torch.float64


# ---------------------------------------------------------------------------- GKD's JSD


def test_jsd_endpoints_are_trls_unscaled_kl_directions():
    s, t, labels = _logits(16), _logits(17), _labels()
    # TRL generalized_jsd_loss: beta == 0 -> kl_div(student_log_probs, teacher_log_probs) = KL(p_t || p_s);
    # beta == 1 -> kl_div(teacher_log_probs, student_log_probs) = KL(p_s || p_t)
    assert token_jsd_loss(s, t, labels, beta=0.0).item() == pytest.approx(token_kl_loss(s, t, labels).item(), rel=1e-6)
    assert token_jsd_loss(s, t, labels, beta=1.0).item() == pytest.approx(token_rkl_loss(s, t, labels).item(), rel=1e-6)
    # the formula itself vanishes at the endpoints and behaves like beta x forward KL near 0
    eps = 1e-4
    assert token_jsd_loss(s, t, labels, beta=eps).item() / eps == pytest.approx(
        token_kl_loss(s, t, labels).item(), rel=1e-2)
    assert token_jsd_loss(s, t, labels, beta=1 - eps).item() / eps == pytest.approx(
        token_rkl_loss(s, t, labels).item(), rel=1e-2)


def test_jsd_half_is_symmetric_zero_on_equal_and_at_most_ln2():
    s, t, labels = _logits(18), _logits(19), _labels()
    assert token_jsd_loss(s, t, labels).item() == pytest.approx(token_jsd_loss(t, s, labels).item(), rel=1e-6)
    assert token_jsd_loss(s, s.clone(), labels).item() == pytest.approx(0.0, abs=1e-7)
    # disjoint near-one-hot distributions: the JSD approaches ln 2 from below
    far_s, far_t = torch.zeros(N, L, V), torch.zeros(N, L, V)
    far_s[..., 0], far_t[..., 1] = 60.0, 60.0
    value = token_jsd_loss(far_s, far_t, labels).item()
    assert value <= math.log(2) + 1e-6 and value == pytest.approx(math.log(2), rel=1e-4)
    for beta in (0.1, 0.5, 0.9):
        assert token_jsd_loss(_logits(20, scale=8.0), _logits(21, scale=8.0), labels, beta).item() <= math.log(2)


def test_term_options_are_checked():
    with pytest.raises(ValueError, match="beta"):
        TokenJSD(beta=1.5)
    for cls in (TokenKL, TokenReverseKL, TokenJSD, TokenTVD):
        with pytest.raises(ValueError, match="temperature"):
            cls(temperature=0.0)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name, kwargs", [("token_kl", {"temperature": 2.0}), ("token_rkl", {}),
                                          ("token_jsd", {"beta": 0.3}), ("token_jsd", {"beta": 0.0}),
                                          ("token_jsd", {"beta": 1.0}), ("token_tvd", {})])
def test_gradcheck_float64(name, kwargs):
    fn = DIVERGENCES[name]
    s = _logits(22, torch.float64).requires_grad_(True)
    t = _logits(23, torch.float64).requires_grad_(True)  # through the teacher too: the formula, not the use
    labels = _labels()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, labels, **kwargs), (s, t))


# ---------------------------------------------------------------------------- hidden states


def _hidden_batch(d_s: int, d_t: int, seed: int = 0, names=("stage-1",)):
    g = torch.Generator().manual_seed(seed)
    s_feats = {n: torch.randn(N, L, d_s, generator=g, requires_grad=True) for n in names}
    t_feats = {n: torch.randn(N, L, d_t, generator=g) for n in names}
    labels = _labels()
    batch = Batch(torch.zeros(N, L, dtype=torch.long), labels, torch.arange(N),
                  ModelOutputs(torch.zeros(N, L, V), s_feats), ModelOutputs(torch.zeros(N, L, V), t_feats), epoch=1)
    return batch, s_feats, t_feats, labels


def _setup(term, d_s: int, d_t: int, names=("stage-1",)) -> None:
    term.setup(SetupContext(num_classes=V, num_train=8, student_shapes={n: torch.Size([2, L, d_s]) for n in names},
                            teacher_shapes={n: torch.Size([2, L, d_t]) for n in names}))


def test_lm_hidden_mse_is_masked_mean_of_projected_squared_error():
    term = LMHidden()
    _setup(term, 3, 6)
    assert term.student_features == term.teacher_features == ("stage-1",)
    assert [tuple(p.weight.shape) for p in term.projections] == [(6, 3)] and term.projections[0].bias is None
    batch, s, t, labels = _hidden_batch(3, 6)
    w = term.projections[0].weight.detach()
    rows = [(s["stage-1"][i, j].detach() @ w.T - t["stage-1"][i, j]) for i in range(N) for j in range(LENGTHS[i])]
    expected = sum(float((r ** 2).sum()) for r in rows) / (len(rows) * 6)
    value = term(batch)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert term.projections[0].weight.grad is not None
    assert s["stage-1"].grad[labels == IGNORE_INDEX].abs().sum() == 0


def test_lm_hidden_cosine_and_several_pairs():
    names = ("block1", "block3")
    term = LMHidden(student_layers=list(names), teacher_layers=list(names), metric="cosine")
    _setup(term, 4, 4, names)
    batch, s, t, labels = _hidden_batch(4, 4, seed=1, names=names)
    parts = term(batch)
    assert set(parts) == set(names)
    for k, name in enumerate(names):
        w = term.projections[k].weight.detach()
        cos = [torch.nn.functional.cosine_similarity(s[name][i, j].detach() @ w.T, t[name][i, j], dim=0)
               for i in range(N) for j in range(LENGTHS[i])]
        expected = sum(1 - float(c) for c in cos) / len(cos) / len(names)
        assert parts[name].item() == pytest.approx(expected, rel=1e-5)


def test_lm_hidden_without_projection_and_its_errors():
    term = LMHidden(project=False)
    _setup(term, 4, 4)
    batch, s, t, labels = _hidden_batch(4, 4)
    assert term(batch).item() == pytest.approx(hidden_state_loss(s["stage-1"], t["stage-1"], labels).item())
    with pytest.raises(ValueError, match="project: true"):
        _setup(LMHidden(project=False), 4, 8)
    with pytest.raises(ValueError, match="pair up"):
        LMHidden(student_layers=["a", "b"], teacher_layers=["a"])
    with pytest.raises(ValueError, match="metric"):
        LMHidden(metric="l1")
    image_like = LMHidden()
    with pytest.raises(ValueError, match=r"\(N, L, d\)"):
        image_like.setup(SetupContext(num_classes=V, num_train=8, student_shapes={"stage-1": torch.Size([2, 8, 4, 4])},
                                      teacher_shapes={"stage-1": torch.Size([2, 8, 4, 4])}))


def test_lm_hidden_no_real_token_gives_zero_with_a_graph():
    term = LMHidden()
    _setup(term, 3, 5)
    batch, s, _, _ = _hidden_batch(3, 5)
    batch.labels = torch.full((N, L), IGNORE_INDEX, dtype=torch.long)
    value = term(batch)
    assert value.item() == 0.0 and value.grad_fn is not None


# ---------------------------------------------------------------------------- registry: every LM term, the presets

LM_TERMS = [n for n in LOSSES.names() if "lm" in LOSSES.get(n).tasks]
LM_METHODS = [m for m in METHODS.names() if not m.startswith("_")
              and all("lm" in LOSSES.get(t.loss).tasks for t in METHODS.get(m).terms.values())
              and any(LOSSES.get(t.loss).tasks == ("lm",) for t in METHODS.get(m).terms.values())]
D_S, D_T = 4, 6


def _lm_outputs(term, seed: int) -> dict[str, ModelOutputs]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, feats in term.reads().items():
        trainable = name == "student"
        d = D_S if trainable else D_T
        out[name] = ModelOutputs(torch.randn(N, L, V, generator=g).requires_grad_(trainable),
                                 {f: torch.randn(N, L, d, generator=g).requires_grad_(trainable) for f in feats})
    return out


@pytest.mark.parametrize("loss", LM_TERMS)
def test_every_lm_term_reads_sets_up_and_trains_only_the_student(loss):
    term = LOSSES.get(loss)()
    roles = {"student": TRAINABLE, "teacher": FROZEN}
    term.bind(roles)
    reads = term.reads()
    assert set(reads) <= set(roles) and "student" in reads
    shapes = {name: {f: torch.Size([2, L, D_S if name == "student" else D_T]) for f in feats}
              for name, feats in reads.items()}
    term.setup(SetupContext(num_classes=V, num_train=8, student_shapes=shapes.get("student", {}),
                            teacher_shapes=shapes.get("teacher", {})))
    outputs = _lm_outputs(term, 0)
    fields = {"input": torch.zeros(N, L, dtype=torch.long)}
    if term.input_fields:  # offline KD reads a teacher's stored top-k log-probabilities from the batch
        from distillab.pipeline_lm import topk_logprobs

        values, ids = topk_logprobs(torch.randn(N, L, V), 3, torch.float16)
        fields.update({"topk_logprobs": values, "topk_ids": ids})
        assert set(term.input_fields) <= set(fields)
    batch = Batch(fields["input"], _labels(), torch.arange(N), outputs.get("student"),
                  outputs.get("teacher"), epoch=1, outputs=outputs, fields=fields)
    out = term(batch)
    parts = out if isinstance(out, dict) else {"value": out}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in parts.values()), parts
    sum(parts.values()).backward()
    student = [outputs["student"].logits, *outputs["student"].features.values()]
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in student + list(term.parameters()))
    if "teacher" in outputs:
        assert not outputs["teacher"].logits.requires_grad


def test_lm_presets_use_reference_weights():
    weights = {m: {t: (s.loss, s.weight) for t, s in METHODS.get(m).terms.items()} for m in LM_METHODS}
    assert weights == {
        "lm_fkl": {"ce": ("ce", 0.5), "token_kl": ("token_kl", 0.5)},    # DistillKit's default recipe
        "lm_rkl": {"token_rkl": ("token_rkl", 1.0)},                     # divergence only (GKD's reverse KL)
        "lm_jsd": {"token_jsd": ("token_jsd", 1.0)},                     # TRL's GKD: the JSD alone
        "lm_tvd": {"ce": ("ce", 0.5), "token_tvd": ("token_tvd", 0.5)},  # DistillKit's recipe, tvd for kl
        "gkd": {"gkd": ("gkd", 1.0)},                                    # TRL's GKD: the JSD alone, on-policy
        "lm_offline": {"ce": ("ce", 0.5), "token_kl_topk": ("token_kl_topk", 0.5)},  # as lm_fkl, stored teacher
    }
    assert METHODS.get("lm_jsd").terms["token_jsd"].params == {"beta": 0.5, "temperature": 1.0}
    assert all(METHODS.get(m).paradigm == "lm" and len(METHODS.get(m).description) < 120 for m in LM_METHODS)


@pytest.mark.parametrize("method", LM_METHODS)
def test_lm_preset_objective_is_the_weighted_sum_of_its_terms(method):
    objective = build_objective(MethodConfig(name=method))
    objective.bind({"student": TRAINABLE, "teacher": FROZEN})
    s = _logits(24).requires_grad_(True)
    t, labels = _logits(25), _labels()
    from distillab.pipeline_lm import topk_logprobs

    values, ids = topk_logprobs(t, V, torch.float32)
    fields = {"input": torch.zeros(N, L, dtype=torch.long), "topk_logprobs": values, "topk_ids": ids}
    batch = Batch(fields["input"], labels, torch.arange(N), ModelOutputs(s), ModelOutputs(t), epoch=1, fields=fields)
    total, logs = objective(batch)
    spec = METHODS.get(method)
    expected = sum(term.weight * (torch.nn.functional.cross_entropy(s.flatten(0, 1), labels.flatten())
                                  if term.loss == "ce" else PRESET_LOSSES[term.loss](s, t, labels, **term.params))
                   for term in spec.terms.values())
    assert total.item() == pytest.approx(expected.item(), rel=1e-5), logs
    total.backward()
    assert s.grad[labels == IGNORE_INDEX].abs().sum() == 0
