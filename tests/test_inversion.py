"""DeepInversion / ADI: each loss against a hand computation, the synthesiser on tiny teachers, resumption."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from distillab.features import FeatureTaps
from distillab.inversion import (InversionError, Inverter, adi_competition_loss, bn_statistics_loss,
                                 image_l2_prior, inversion_settings, lr_at, save_grid, synthesise_batches,
                                 total_variation_l1, total_variation_l2)
from distillab.models import create_model


def _bn_term_by_hand(x: torch.Tensor, running_mean: list[float], running_var: list[float]) -> float:
    """‖σ² − running_var‖₂ + ‖μ − running_mean‖₂ with plain Python loops over channels and values."""
    mean_sq, var_sq = 0.0, 0.0
    for c in range(x.shape[1]):
        values = x[:, c].flatten().tolist()
        mu = sum(values) / len(values)
        var = sum((v - mu) ** 2 for v in values) / len(values)  # biased
        mean_sq += (mu - running_mean[c]) ** 2
        var_sq += (var - running_var[c]) ** 2
    return math.sqrt(var_sq) + math.sqrt(mean_sq)


def _bn(channels: int, mean: list[float], var: list[float], dims: int = 2) -> nn.Module:
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels).eval()
    bn.running_mean.copy_(torch.tensor(mean))
    bn.running_var.copy_(torch.tensor(var))
    return bn


def test_bn_statistics_loss_matches_hand_computation():
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 2, 2, 3), torch.randn(4, 3, 5)
    bn1, bn2 = _bn(2, [0.3, -0.2], [1.5, 0.4]), _bn(3, [0.0, 1.0, -1.0], [0.5, 2.0, 1.0], dims=1)
    t1 = _bn_term_by_hand(x1, [0.3, -0.2], [1.5, 0.4])
    t2 = _bn_term_by_hand(x2, [0.0, 1.0, -1.0], [0.5, 2.0, 1.0])
    assert bn_statistics_loss([x1], [bn1]).item() == pytest.approx(t1, rel=1e-5)
    got = bn_statistics_loss([x1, x2], [bn1, bn2], first_bn_multiplier=10.0).item()
    assert got == pytest.approx(10 * t1 + t2, rel=1e-5)


def _bn_first_teacher(mean: list[float], var: list[float]) -> nn.Module:
    """A teacher whose first layer is a BatchNorm, so the hooked BN input is the batch itself."""
    model = nn.Sequential(_bn(len(mean), mean, var, dims=1), nn.Flatten(), nn.Linear(len(mean) * 4, 3))
    model.input_shape, model.num_classes = (len(mean), 4), 3
    return model


def test_inverter_hooks_the_batchnorm_input():
    teacher = _bn_first_teacher([0.1, -0.4], [0.7, 1.3])
    inverter = Inverter(teacher, batch_size=5, jitter=0, bn=1.0)
    x = torch.randn(5, 2, 4)
    with FeatureTaps(teacher, {"0": "0:input"}) as hooks:
        terms = inverter.losses(x, teacher(x), hooks.pop())
    assert terms["bn"].item() == pytest.approx(_bn_term_by_hand(x, [0.1, -0.4], [0.7, 1.3]), rel=1e-5)


def test_bn_statistics_loss_is_exactly_zero_on_matching_statistics():
    # channel c holds mean_c ± s_c (exactly representable): batch mean mean_c, biased variance s_c²
    means, scales = [0.5, -2.0, 0.25], [1.0, 0.5, 2.0]
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0]).view(2, 1, 2)  # (N=2, 1, L=2)
    x = torch.cat([m + s * signs for m, s in zip(means, scales)], dim=1)  # (2, 3, 2)
    bn = _bn(3, means, [s * s for s in scales], dims=1)
    assert bn_statistics_loss([x], [bn]).item() == 0.0
    x2d = x.unsqueeze(-1).repeat(1, 1, 1, 3)  # the same statistics over (N, H, W)
    assert bn_statistics_loss([x2d], [_bn(3, means, [s * s for s in scales])]).item() == 0.0


def test_total_variation_on_a_tiny_image_and_signal():
    ramp = torch.arange(9.0).view(1, 1, 3, 3)  # right +1, down +3, anti-diagonal pair 2, diagonal 4
    assert total_variation_l2(ramp).item() == pytest.approx(math.sqrt(6) + math.sqrt(54) + 4 + 8)
    assert total_variation_l1(ramp).item() == pytest.approx(1 + 3 + 2 + 4)
    signal = torch.tensor([[[0.0, 1.0, 3.0, 6.0]]])
    assert total_variation_l2(signal).item() == pytest.approx(math.sqrt(1 + 4 + 9))
    assert total_variation_l1(signal).item() == pytest.approx(2.0)


def test_total_variation_matches_explicit_neighbour_pairs():
    torch.manual_seed(1)
    x = torch.randn(2, 2, 3, 4)
    n, c, h, w = x.shape
    pairs = {  # the four neighbour relations: right, down, down-right, down-left
        "h": [((i, j), (i, j + 1)) for i in range(h) for j in range(w - 1)],
        "v": [((i, j), (i + 1, j)) for i in range(h - 1) for j in range(w)],
        "d": [((i, j), (i + 1, j + 1)) for i in range(h - 1) for j in range(w - 1)],
        "a": [((i, j + 1), (i + 1, j)) for i in range(h - 1) for j in range(w - 1)],
    }
    l2, l1 = 0.0, 0.0
    for rel in pairs.values():
        diffs = [(x[b, k][p] - x[b, k][q]).item() for b in range(n) for k in range(c) for p, q in rel]
        l2 += math.sqrt(sum(d * d for d in diffs))
        l1 += sum(abs(d) for d in diffs) / len(diffs)
    assert total_variation_l2(x).item() == pytest.approx(l2, rel=1e-5)
    assert total_variation_l1(x).item() == pytest.approx(l1, rel=1e-5)


def test_image_l2_prior_per_image_and_whole_batch():
    x = torch.tensor([[[3.0, 4.0]], [[0.0, 12.0]]])  # per-sample norms 5 and 12
    assert image_l2_prior(x).item() == pytest.approx(8.5)
    assert image_l2_prior(x, whole_batch=True).item() == pytest.approx(math.sqrt(9 + 16 + 144))


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b))


def test_adi_competition_loss_matches_hand_computation():
    student = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
    teacher = [[-1.0, 4.0, 0.0], [1.0, 1.0, 6.0]]
    code, paper = 0.0, 0.0
    for zs, zt in zip(student, teacher):
        p, q = _softmax(zs, 3.0), _softmax(zt, 3.0)
        m = [(a + b) / 2 for a, b in zip(p, q)]
        p, q, m = ([min(max(v, 0.01), 0.99) for v in d] for d in (p, q, m))
        code += (0.5 * _kl(m, p) + 0.5 * _kl(m, q)) / 2
        paper += (0.5 * _kl(p, m) + 0.5 * _kl(q, m)) / 2
    s, t = torch.tensor(student), torch.tensor(teacher)
    assert adi_competition_loss(s, t).item() == pytest.approx(1 - min(max(code, 0), 1), rel=1e-5)
    assert adi_competition_loss(s, t, order="paper").item() == pytest.approx(1 - min(max(paper, 0), 1), rel=1e-5)
    assert code != pytest.approx(paper)  # the two orders differ: the switch matters
    assert adi_competition_loss(t, t).item() == pytest.approx(1.0)  # agreement: JS 0, competition term 1


def test_cosine_schedule_follows_the_reference_policy():
    s = inversion_settings("imagenet", setting=1, iterations=300, warmup=100)
    assert lr_at(s, 0) == pytest.approx(0.2 / 100)
    assert lr_at(s, 99) == pytest.approx(0.2)
    assert lr_at(s, 200) == pytest.approx(0.5 * (1 + math.cos(math.pi * 100 / 200)) * 0.2)
    staged = inversion_settings("imagenet", iterations=30, half_res_iterations=20, warmup=5)
    assert lr_at(staged, 20) == lr_at(staged, 0)  # the schedule restarts with the full-resolution stage


def test_presets_and_option_errors():
    cifar = inversion_settings()
    assert (cifar.batch_size, cifar.iterations, cifar.lr, cifar.bn, cifar.tv_l2, cifar.l2, cifar.adi,
            cifar.jitter, cifar.flip, cifar.lr_schedule) == (256, 2000, 0.1, 100.0, 2.5e-5, 0.0, 0.0, 2, False,
                                                             "constant")
    imagenet = inversion_settings("imagenet")
    assert (imagenet.lr, imagenet.bn, imagenet.first_bn_multiplier, imagenet.tv_l2, imagenet.l2, imagenet.jitter,
            imagenet.flip, imagenet.lr_schedule, imagenet.warmup) == (0.2, 0.05, 10.0, 1e-4, 1e-5, 30, True,
                                                                      "cosine", 100)
    assert (imagenet.iterations, imagenet.half_res_iterations, imagenet.betas) == (3000, 2000, (0.5, 0.9))
    assert inversion_settings("imagenet", setting=2).iterations == 20000
    with pytest.raises(InversionError, match="'tv_l2'"):
        inversion_settings(tv_l22=1.0)
    with pytest.raises(InversionError, match="lr"):
        inversion_settings(lr=-1.0)
    with pytest.raises(InversionError, match="preset='imagenet'"):
        inversion_settings(setting=1)
    with pytest.raises(InversionError, match="student"):
        Inverter(create_model("cnn1d", num_classes=10, width=4), adi=0.1)


def _loss_curve(teacher: nn.Module, **options) -> list[float]:
    totals: list[float] = []
    inverter = Inverter(teacher, **options)
    inverter.run(progress=lambda _it, terms: totals.append(terms["total"]))
    assert inverter.best_loss == min(totals)
    return totals


@pytest.mark.parametrize("arch", ["cnn1d", "cnn_digits"])
def test_synthesiser_reduces_its_loss(arch):
    torch.manual_seed(0)
    teacher = create_model(arch, num_classes=10, width=8)
    teacher.train()
    with torch.no_grad():  # non-trivial running statistics: a few forward passes in training mode
        for _ in range(3):
            teacher(torch.randn(32, *teacher.input_shape) * 0.5 + 0.2)
    totals = _loss_curve(teacher, batch_size=32, iterations=40, jitter=1)
    assert sum(totals[-5:]) / 5 < 0.9 * sum(totals[:5]) / 5  # 40 steps at lr 0.1: about -20 %
    assert teacher.training  # its mode is restored after the run


def _tiny_setup(arch: str):
    torch.manual_seed(0)
    teacher = create_model(arch, num_classes=10, width=4)
    student = create_model("cnn1d_small" if arch == "cnn1d" else arch, num_classes=10, width=4)
    # every option that draws random numbers or changes with the step: flips, rolls, cosine with warm-up,
    # a resolution switch, random labels, ADI with a student, clipping
    options = dict(teacher=teacher, student=student, batch_size=6, iterations=9, jitter=2, flip=True,
                   lr_schedule="cosine", warmup=2, half_res_iterations=4 if arch == "cnn1d" else 0,
                   random_labels=True, adi=0.5, l2=1e-3, tv_l1=1e-2, pixel_range=(-2.0, 2.0), seed=3)
    return teacher, student, options


@pytest.mark.parametrize("arch,split", [("cnn1d", 3), ("cnn1d", 4), ("cnn1d", 6), ("cnn_digits", 5)])
def test_resume_is_bit_identical(arch, split):
    teacher, student, options = _tiny_setup(arch)
    whole = Inverter(**options)
    whole.run()

    first = Inverter(**options)
    first.run(split)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = Inverter(**options)
    second.load_state_dict(torch.load(buffer, weights_only=False))
    second.run()

    assert second.iteration == whole.iteration == 9
    assert torch.equal(second.pixels, whole.pixels)
    assert torch.equal(second.best, whole.best) and second.best_loss == whole.best_loss
    assert torch.equal(second.labels, whole.labels)
    assert torch.equal(second.generator.get_state(), whole.generator.get_state())


def test_models_are_left_untouched():
    teacher, student, options = _tiny_setup("cnn1d")
    before = {k: v.clone() for k, v in {**teacher.state_dict(), **student.state_dict()}.items()}
    teacher.train()
    Inverter(**options).run(3)
    assert teacher.training and student.training
    assert all(p.grad is None for p in [*teacher.parameters(), *student.parameters()])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in teacher.modules())
    after = {**teacher.state_dict(), **student.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics included


def test_resume_refuses_other_settings():
    _, _, options = _tiny_setup("cnn1d")
    state = Inverter(**options).state_dict()
    with pytest.raises(InversionError, match=r"lr \(saved 0.1, here 0.2\)"):
        Inverter(**{**options, "lr": 0.2}).load_state_dict(state)


def test_synthesise_batches_makes_distinct_batches_with_continuing_labels():
    teacher = create_model("cnn1d", num_classes=10, width=4)
    calls = []
    images, labels = synthesise_batches(teacher, 2, batch_size=6, iterations=3,
                                        progress=lambda b, it, terms: calls.append((b, it)))
    assert images.shape == (12, 1, 40) and labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert not torch.equal(images[:6], images[6:])
    assert calls == [(b, it) for b in range(2) for it in range(1, 4)]


@pytest.mark.parametrize("shape", [(30, 1, 40), (30, 3, 8, 8), (30, 1, 8, 8)])
def test_save_grid_writes_a_figure(tmp_path, shape):
    images, labels = torch.randn(shape), torch.arange(30) % 3
    path = save_grid(images, labels, tmp_path / "grid.png", class_names=["zero", "one", "two"], per_class=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
