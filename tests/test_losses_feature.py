"""FitNet, AT, NST, VID and OFD against hand computations; connectors sized from real model pairs."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from distillab.features import FeatureTaps, probe_shapes, resolve_feature
from distillab.losses import Batch, ModelOutputs, SetupContext
from distillab.losses.connectors import ConvBN, ConvReg
from distillab.losses.feature import (
    OFD, VID, AttentionTransfer, FitNetHint, NeuronSelectivityTransfer, bn_margin, partial_l2,
)
from distillab.methods import METHODS
from distillab.models import create_model
from distillab.models.base import FeatureStage


@functools.lru_cache(maxsize=None)
def model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, 10, **kwargs)


PAIRS = {  # (teacher, student)
    "cifar": (("resnet32x4", ()), ("resnet8x4", ())),
    "mnist1d": (("cnn1d", (("width", 32),)), ("cnn1d", (("width", 6),))),
}


def pair(kind: str) -> tuple[nn.Module, nn.Module]:
    (t, t_kw), (s, s_kw) = PAIRS[kind]
    return model(t, **dict(t_kw)), model(s, **dict(s_kw))


def info_shapes(net: nn.Module, names) -> dict[str, torch.Size]:
    """Batch-2 shapes from ``feature_info`` (test_models checks them against probes); no forward pass,
    which keeps the CIFAR pairs cheap on a CPU."""
    size = net.input_shape[1:]
    shapes = {}
    for name in names:
        if name == "embedding":
            shapes[name] = torch.Size([2, net.embedding_dim])
            continue
        stage = net.feature_info[int(name.removeprefix("stage").removeprefix("preact"))]
        shapes[name] = torch.Size([2, stage.channels, *(math.ceil(n / stage.stride) for n in size)])
    return shapes


def setup_on(term, teacher: nn.Module, student: nn.Module, probe: bool | None = None) -> SetupContext:
    """What the trainer does: resolve the term's feature names, find their shapes, call setup."""
    s_taps = {n: resolve_feature(student, n) for n in term.student_features}
    t_taps = {n: resolve_feature(teacher, n) for n in term.teacher_features}
    if probe is None:
        probe = len(student.input_shape) == 2  # 1-D models are cheap to run
    if probe:
        s_shapes = probe_shapes(student, s_taps, student.input_shape)
        t_shapes = probe_shapes(teacher, t_taps, teacher.input_shape)
    else:
        s_shapes, t_shapes = info_shapes(student, s_taps), info_shapes(teacher, t_taps)
    ctx = SetupContext(num_classes=10, num_train=8, student_shapes=s_shapes, teacher_shapes=t_shapes,
                       student=student, teacher=teacher)
    term.setup(ctx)
    return ctx


def random_batch(ctx: SetupContext, n: int = 3) -> Batch:
    """Random features of the set-up shapes (student ones require grad)."""
    torch.manual_seed(2)
    s = {k: torch.randn(n, *v[1:], requires_grad=True) for k, v in ctx.student_shapes.items()}
    t = {k: torch.randn(n, *v[1:]) for k, v in ctx.teacher_shapes.items()}
    return feat_batch(s, t)


def real_batch(term, teacher: nn.Module, student: nn.Module, n: int = 4) -> Batch:
    """One batch through both models with the term's taps (teacher in eval mode, no grad)."""
    torch.manual_seed(1)
    x = torch.randn(n, *student.input_shape)
    s_taps = {k: resolve_feature(student, k) for k in term.student_features}
    t_taps = {k: resolve_feature(teacher, k) for k in term.teacher_features}
    teacher.eval()
    with FeatureTaps(teacher, t_taps) as tt, torch.no_grad():
        t_logits = teacher(x)
        t_feats = tt.pop()
    student.train()
    with FeatureTaps(student, s_taps) as st:
        s_logits = student(x)
        s_feats = st.pop()
    return Batch(x, torch.zeros(n, dtype=torch.long), torch.arange(n), ModelOutputs(s_logits, s_feats),
                 ModelOutputs(t_logits, t_feats), epoch=1)


def feat_batch(s: dict, t: dict, epoch: int = 1) -> Batch:
    n = len(next(iter(s.values())))
    z = torch.zeros(n, 3)
    return Batch(z, torch.zeros(n, dtype=torch.long), torch.arange(n), ModelOutputs(z, s), ModelOutputs(z, t), epoch)


def total(out) -> torch.Tensor:
    return sum(out.values()) if isinstance(out, dict) else out


# ------------------------------------------------------------------------------------------- ConvReg


@pytest.mark.parametrize("s_size,t_size,kind,kernel,stride", [
    ((8, 8), (8, 8), nn.Conv2d, (1, 1), (1, 1)),        # equal: the reference's kernel 1 + s - t = 1
    ((16, 16), (8, 8), nn.Conv2d, (3, 3), (2, 2)),
    ((4, 4), (8, 8), nn.ConvTranspose2d, (4, 4), (2, 2)),
    ((7, 7), (4, 4), nn.Conv2d, (4, 4), (1, 1)),
    ((20,), (10,), nn.Conv1d, (3,), (2,)),
    ((5,), (10,), nn.ConvTranspose1d, (4,), (2,)),
    ((10,), (10,), nn.Conv1d, (1,), (1,)),
])
def test_convreg_picks_the_reference_convolution(s_size, t_size, kind, kernel, stride):
    reg = ConvReg((2, 3, *s_size), (2, 5, *t_size))
    assert type(reg.conv) is kind and reg.conv.kernel_size == kernel and reg.conv.stride == stride
    assert reg(torch.randn(2, 3, *s_size)).shape == (2, 5, *t_size)


def test_convreg_rejects_a_small_student_map():
    with pytest.raises(ValueError, match=r"size \(3, 3\).*\(8, 8\)"):
        ConvReg((2, 3, 3, 3), (2, 5, 8, 8))
    with pytest.raises(ValueError, match="1-D or two 2-D"):
        ConvReg((2, 3, 8), (2, 5, 8, 8))


# -------------------------------------------------------------------------------------------- FitNet


def test_fitnet_value_by_hand():
    """1x1 conv, BN on batch statistics, ReLU, then MSE: computed with numpy."""
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 4, 4), torch.randn(3, 3, 4, 4)
    term = FitNetHint(hint_layer=2)
    term.setup(SetupContext(10, 8, {"stage2": s.shape}, {"stage2": t.shape}))
    term.train()
    loss = term(feat_batch({"stage2": s}, {"stage2": t}))
    w = term.regressor.conv.weight.detach().numpy()[:, :, 0, 0]
    b = term.regressor.conv.bias.detach().numpy()
    y = np.einsum("oc,nchw->nohw", w, s.numpy()) + b[None, :, None, None]
    mu, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
    y = np.maximum((y - mu) / np.sqrt(var + 1e-5), 0.0)
    assert loss.item() == pytest.approx(float(((y - t.numpy()) ** 2).mean()), rel=1e-5)


def test_fitnet_setup_sizes_the_regressor_on_model_pairs():
    teacher, student = pair("cifar")
    term = FitNetHint()
    setup_on(term, teacher, student)
    assert term.regressor.conv.in_channels == 128 and term.regressor.conv.out_channels == 128
    assert term.regressor.conv.kernel_size == (1, 1)
    teacher, student = pair("mnist1d")
    term = FitNetHint(hint_layer=1)
    setup_on(term, teacher, student)
    assert isinstance(term.regressor.conv, nn.Conv1d) and isinstance(term.regressor.bn, nn.BatchNorm1d)
    assert (term.regressor.conv.in_channels, term.regressor.conv.out_channels) == (6, 32)


def test_fitnet_setup_error_names_method_and_shapes():
    term = FitNetHint(hint_layer=0)
    with pytest.raises(ValueError, match=r"fitnet \(hint_layer 0\).*\(3,\).*\(8,\)"):
        term.setup(SetupContext(10, 8, {"stage0": torch.Size([2, 4, 3])}, {"stage0": torch.Size([2, 4, 8])}))
    with pytest.raises(ValueError, match="fitnet"):
        FitNetHint(hint_layer=1.5)


# ------------------------------------------------------------------------------------------------ AT


def _at_by_hand(f, p=2):
    """Rows of q = normalise(mean over channels of f^p) in plain Python, for a (B, C, N) nested list."""
    out = []
    for sample in f:
        q = [sum(ch[j] ** p for ch in sample) / len(sample) for j in range(len(sample[0]))]
        norm = math.sqrt(sum(v * v for v in q))
        out.append([v / norm for v in q])
    return out


def test_at_value_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 2, 3), torch.randn(2, 5, 2, 3)
    out = AttentionTransfer(stages=(1,))(feat_batch({"stage1": s}, {"stage1": t}))
    qs, qt = _at_by_hand(s.flatten(2).tolist()), _at_by_hand(t.flatten(2).tolist())
    expected = sum((a - b) ** 2 for rs, rt in zip(qs, qt) for a, b in zip(rs, rt)) / 12
    assert set(out) == {"stage1"} and out["stage1"].item() == pytest.approx(expected, rel=1e-5)


def test_at_pools_the_larger_map_and_sums_stages():
    torch.manual_seed(0)
    s1, t1 = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)   # student pooled 4x4 -> 2x2
    s2, t2 = torch.randn(2, 2, 3), torch.randn(2, 2, 6)         # 1-D: teacher pooled 6 -> 3
    term = AttentionTransfer(stages=(1, 2))
    out = term(feat_batch({"stage1": s1, "stage2": s2}, {"stage1": t1, "stage2": t2}))
    s1p = s1.reshape(2, 2, 2, 2, 2, 2).mean(dim=(3, 5))
    t2p = t2.reshape(2, 2, 3, 2).mean(dim=3)
    for name, (a, b) in {"stage1": (s1p, t1), "stage2": (s2, t2p)}.items():
        qa, qb = _at_by_hand(a.flatten(2).tolist()), _at_by_hand(b.flatten(2).tolist())
        n = len(qa) * len(qa[0])
        expected = sum((x - y) ** 2 for ra, rb in zip(qa, qb) for x, y in zip(ra, rb)) / n
        assert out[name].item() == pytest.approx(expected, rel=1e-5)


def test_at_finite_for_extreme_inputs_and_gradient_to_student_only():
    s = torch.tensor([[[[1e30, -1e30], [0.0, 1.0]]]]).repeat(2, 2, 1, 1).requires_grad_(True)
    t = torch.zeros(2, 3, 2, 2)
    out = total(AttentionTransfer(stages=(1,))(feat_batch({"stage1": s}, {"stage1": t})))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    bf = total(AttentionTransfer(stages=(1,))(feat_batch({"stage1": s.detach().bfloat16()}, {"stage1": t.bfloat16()})))
    assert torch.isfinite(bf)


# ----------------------------------------------------------------------------------------------- NST


def _nst_by_hand(fs, ft):
    """Squared MMD with k(x, y) = (x.y)^2 of L2-normalised channel rows; (B, C, N) nested lists."""
    def norm_rows(sample):
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in sample]

    def kmean(a, b):
        vals = [sum(x * y for x, y in zip(ra, rb)) ** 2 for ra in a for rb in b]
        return sum(vals) / len(vals)

    total_ = [0.0, 0.0, 0.0]
    for s, t in zip(fs, ft):
        s, t = norm_rows(s), norm_rows(t)
        total_[0] += kmean(t, t)
        total_[1] += kmean(s, s)
        total_[2] += kmean(s, t)
    return (total_[0] + total_[1] - 2 * total_[2]) / len(fs)


def test_nst_value_by_hand_and_zero_for_equal_maps():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)
    out = NeuronSelectivityTransfer(stages=(2,))(feat_batch({"stage2": s}, {"stage2": t}))
    assert out["stage2"].item() == pytest.approx(_nst_by_hand(s.flatten(2).tolist(), t.flatten(2).tolist()), rel=1e-5)
    same = NeuronSelectivityTransfer(stages=(2,))(feat_batch({"stage2": t}, {"stage2": 3 * t}))
    assert same["stage2"].item() == pytest.approx(0.0, abs=1e-6)


def test_nst_finite_for_zero_and_huge_maps():
    s = torch.zeros(2, 3, 4).requires_grad_(True)
    t = torch.full((2, 3, 4), 1e30)
    out = total(NeuronSelectivityTransfer(stages=(0,))(feat_batch({"stage0": s}, {"stage0": t})))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------------------------- VID


def test_vid_starts_at_variance_five_and_matches_hand_value():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)   # student pooled to 2x2 before the regressor
    term = VID(stages=(1,))
    term.setup(SetupContext(10, 8, {"stage1": s.shape}, {"stage1": t.shape}))
    head = term.heads[0]
    widths = [(m.in_channels, m.out_channels) for m in head.regressor if isinstance(m, nn.Conv2d)]
    assert widths == [(3, 5), (5, 5), (5, 5)]
    var = torch.nn.functional.softplus(head.alpha) + 1e-5
    torch.testing.assert_close(var, torch.full((5,), 5.0))
    # with a zero regressor the mean is 0: L = mean of (t^2 / 5 + log 5) / 2
    for m in head.regressor:
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
    out = term(feat_batch({"stage1": s}, {"stage1": t}))
    expected = sum(0.5 * (v * v / 5.0 + math.log(5.0)) for v in t.flatten().tolist()) / t.numel()
    assert out["stage1"].item() == pytest.approx(expected, rel=1e-5)
    out["stage1"].backward()
    # dL/dalpha_c = mean over the channel's entries of (1/2)(1/var - t^2/var^2) * sigmoid(alpha), / C
    sig = torch.sigmoid(head.alpha.detach())
    grad = (0.5 * (1 / 5.0 - t.pow(2) / 25.0)).mean(dim=(0, 2, 3)) * sig / 5
    torch.testing.assert_close(head.alpha.grad, grad, rtol=1e-4, atol=1e-7)


def test_vid_finite_for_extreme_targets():
    term = VID(stages=(0,))
    term.setup(SetupContext(10, 8, {"stage0": torch.Size([2, 2, 5])}, {"stage0": torch.Size([2, 3, 5])}))
    out = total(term(feat_batch({"stage0": torch.full((2, 2, 5), 1e6)}, {"stage0": torch.full((2, 3, 5), -1e6)})))
    assert torch.isfinite(out)


# ----------------------------------------------------------------------------------------------- OFD


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("gamma,beta", [(1.0, 0.0), (2.0, 1.0), (0.5, -1.0), (-1.5, 0.3), (1.0, 3.5), (0.1, 5.0)])
def test_bn_margin_is_the_conditional_mean_or_three_sigma(gamma, beta):
    s, m = abs(gamma), beta
    if _phi(-m / s) > 0.001:
        expected = m - s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / _phi(-m / s)
    else:
        expected = -3 * s
    got = bn_margin(torch.tensor([gamma]), torch.tensor([beta]))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_bn_margin_monte_carlo_and_zero_gamma():
    torch.manual_seed(0)
    x = 0.3 + 1.7 * torch.randn(400_000, dtype=torch.float64)
    assert bn_margin(torch.tensor([1.7]), torch.tensor([0.3])).item() == pytest.approx(x[x < 0].mean().item(), abs=0.01)
    m = bn_margin(torch.tensor([0.0, 0.0]), torch.tensor([-0.5, 0.5]))
    assert torch.isfinite(m).all() and m.tolist() == pytest.approx([-0.5, 0.0], abs=1e-6)


def test_partial_l2_hand_worked_cases():
    # margin -1. Entries (s, t): t <= m: (0.5, -2) -> (0.5 + 1)^2 = 2.25; (-3, -2) -> 0 (s below the margin)
    # m < t <= 0: (0, -0.5) -> 0.25 (s > t); (-0.8, -0.5) -> 0 (s <= t); t > 0: (1, 3) -> 4; (4, 3) -> 1
    s = torch.tensor([[[0.5, -3.0, 0.0, -0.8, 1.0, 4.0]]])
    t = torch.tensor([[[-2.0, -2.0, -0.5, -0.5, 3.0, 3.0]]])
    margin = torch.tensor([-1.0]).view(1, 1, 1)
    assert partial_l2(s, t, margin).item() == pytest.approx(2.25 + 0.25 + 4 + 1)
    # sum over (C, L), mean over the batch
    assert partial_l2(s.repeat(4, 2, 1), t.repeat(4, 2, 1), margin).item() == pytest.approx(2 * 7.5)


def test_ofd_setup_on_resnets_margins_from_teacher_bn_and_stage_weights():
    teacher, student = pair("cifar")
    bn = dict(teacher.named_modules())["layer3.4.bn2"]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 256))
        bn.bias.copy_(torch.linspace(-1.0, 2.0, 256))
    try:
        term = OFD()
        setup_on(term, teacher, student)
        assert [(c.conv.in_channels, c.conv.out_channels, c.conv.kernel_size) for c in term.connectors] == [
            (64, 64, (1, 1)), (128, 128, (1, 1)), (256, 256, (1, 1))]
        torch.testing.assert_close(term.margin2, bn_margin(bn.weight, bn.bias))
        assert "margin0" in term.state_dict() and term.stage_weights == [0.25, 0.5, 1.0]
    finally:
        with torch.no_grad():
            bn.weight.fill_(1.0)
            bn.bias.zero_()


def test_ofd_forward_pools_teacher_and_weights_stages():
    torch.manual_seed(0)
    s1, t1 = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 8, 8)
    s2, t2 = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    shapes_s = {"preact1": s1.shape, "preact2": s2.shape}
    shapes_t = {"preact1": t1.shape, "preact2": t2.shape}
    teacher = nn.Module()
    teacher.bn_a, teacher.bn_b = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    teacher.feature_info = [FeatureStage("x", 2, 1), FeatureStage("a", 2, 1, "a", "bn_a"),
                            FeatureStage("b", 2, 2, "b", "bn_b")]
    term = OFD(stages=(1, 2))
    term.setup(SetupContext(10, 8, shapes_s, shapes_t, teacher=teacher))
    term.connectors = nn.ModuleList([nn.Identity(), nn.Identity()])
    out = term(feat_batch({"preact1": s1, "preact2": s2}, {"preact1": t1, "preact2": t2}))
    m = bn_margin(torch.ones(1), torch.zeros(1)).item()  # default BN: gamma 1, beta 0 -> -sqrt(2/pi)
    assert m == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)
    margin = torch.full((1, 2, 1, 1), m)
    t1p = t1.reshape(2, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    assert out["preact1"].item() == pytest.approx(0.5 * partial_l2(s1, t1p, margin).item(), rel=1e-6)
    assert out["preact2"].item() == pytest.approx(partial_l2(s2, t2, margin).item(), rel=1e-6)


def test_ofd_errors_for_teachers_without_margins():
    teacher, student = model("ShuffleV2"), model("ShuffleV1")
    with pytest.raises(ValueError, match=r"ofd: teacher stage 1 .*FeatureStage.bn"):
        setup_on(OFD(), teacher, student)
    with pytest.raises(ValueError, match="kernel_size"):
        OFD(kernel_size=2)


# ------------------------------------------------------------------------- all terms, real model pairs


TERMS = {
    "fitnet": lambda kind: FitNetHint(hint_layer=2 if kind == "cifar" else 1),
    "at": lambda kind: AttentionTransfer(stages=(1, 2, 3) if kind == "cifar" else (0, 1, 2)),
    "nst": lambda kind: NeuronSelectivityTransfer(stages=(1, 2, 3) if kind == "cifar" else (0, 1, 2)),
    "vid": lambda kind: VID(stages=(1, 2, 3) if kind == "cifar" else (0, 1, 2)),
    "ofd": lambda kind: OFD(stages=(1, 2, 3) if kind == "cifar" else (0, 1, 2)),
}


@pytest.mark.parametrize("name", list(TERMS))
def test_terms_on_resnet_pair_are_finite_and_train_their_connectors(name):
    teacher, student = pair("cifar")
    term = TERMS[name]("cifar")
    batch = random_batch(setup_on(term, teacher, student))
    term.train()
    out = term(batch)
    loss = total(out)
    loss.backward()
    assert torch.isfinite(loss) and (loss.item() >= 0 or name == "vid")  # VID's NLL may go below zero
    assert all(p.grad is not None for p in term.parameters())
    assert all(f.grad is not None for f in batch.student.features.values())


def test_terms_on_cnn1d_pair_from_real_forward_passes():
    """Every term set up on the MNIST-1D pair; one forward of both models feeds them all."""
    teacher, student = pair("mnist1d")
    terms = nn.ModuleDict({name: make("mnist1d") for name, make in TERMS.items()})
    for term in terms.values():
        setup_on(term, teacher, student)
    union = type("Union", (), {})()
    union.student_features = tuple({n for t in terms.values() for n in t.student_features})
    union.teacher_features = tuple({n for t in terms.values() for n in t.teacher_features})
    batch = real_batch(union, teacher, student)
    terms.train()
    student.zero_grad(set_to_none=True)
    losses = {name: total(term(batch)) for name, term in terms.items()}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    for name, term in terms.items():
        assert all(p.grad is not None for p in term.parameters()), name
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for n, p in student.named_parameters() if not n.startswith("fc."))
    student.zero_grad(set_to_none=True)


def test_connector_shapes_on_model_pairs():
    teacher, student = pair("mnist1d")
    vid = VID(stages=(0, 1, 2))
    setup_on(vid, teacher, student)
    convs = [[(m.in_channels, m.out_channels) for m in h.regressor if isinstance(m, nn.Conv1d)] for h in vid.heads]
    assert convs == [[(6, 32), (32, 32), (32, 32)], [(6, 32), (32, 32), (32, 32)], [(12, 64), (64, 64), (64, 64)]]
    ofd = OFD(stages=(0, 1, 2))
    setup_on(ofd, teacher, student)
    assert [type(c.conv) for c in ofd.connectors] == [nn.Conv1d] * 3
    assert [(c.conv.in_channels, c.conv.out_channels) for c in ofd.connectors] == [(6, 32), (6, 32), (12, 64)]
    teacher, student = pair("cifar")
    vid = VID()
    setup_on(vid, teacher, student)
    assert [h.alpha.shape[0] for h in vid.heads] == [64, 128, 256]


def test_mixed_ranks_and_flat_features_are_refused_in_setup():
    ctx = SetupContext(10, 8, {"stage1": torch.Size([2, 4, 8])}, {"stage1": torch.Size([2, 4, 8, 8])})
    for term in (AttentionTransfer(stages=(1,)), NeuronSelectivityTransfer(stages=(1,)), VID(stages=(1,))):
        with pytest.raises(ValueError, match=r"(at|nst|vid): needs student and teacher feature maps"):
            term.setup(ctx)
    flat = SetupContext(10, 8, {"stage1": torch.Size([2, 4])}, {"stage1": torch.Size([2, 4])})
    with pytest.raises(ValueError, match="pooled vectors and MLP layers"):
        AttentionTransfer(stages=(1,)).setup(flat)


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="stages"):
        AttentionTransfer(stages=())
    with pytest.raises(ValueError, match="stages"):
        NeuronSelectivityTransfer(stages=(1, 1))
    with pytest.raises(ValueError, match="p must be positive"):
        AttentionTransfer(p=0)
    with pytest.raises(ValueError, match="eps"):
        VID(init_pred_var=0.0)
    with pytest.raises(ValueError, match="mid_channels"):
        VID(mid_channels=0)


def test_presets_follow_the_references():
    fitnet = METHODS.get("fitnet")
    assert {t: (s.loss, s.weight) for t, s in fitnet.terms.items()} == {"ce": ("ce", 1.0), "hint": ("fitnet", 100.0)}
    assert not fitnet.stages
    two = METHODS.get("fitnet2")
    assert {t: s.weight for t, s in two.terms.items()} == {"ce": 0.1, "kd": 0.9, "hint": 0.0}
    (stage,) = two.stages
    assert stage.epochs == 30 and stage.weights == {"hint": 100.0} and set(stage.train) == {"student_body", "hint"}
    weights = {m: METHODS.get(m).terms[t].weight for m, t in
               (("at", "at"), ("nst", "nst"), ("vid", "vid"), ("ofd", "ofd"))}
    assert weights == {"at": 1000.0, "nst": 50.0, "vid": 1.0, "ofd": 0.001}
    assert all(METHODS.get(m).terms["ce"].weight == 1.0 for m in ("fitnet", "at", "nst", "vid", "ofd"))
