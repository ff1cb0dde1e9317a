"""ReviewKD: HCL and the ABF fusion against hand computations; fusion blocks sized from real model pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillab.losses import SetupContext
from distillab.losses.review import ABF, ReviewKD, hcl
from distillab.methods import METHODS

from test_losses_feature import feat_batch, pair, real_batch, setup_on


def _pool(a: np.ndarray, k: int) -> np.ndarray:
    """Average-pool the last axes of (B, C, *S) into k cells per axis (sizes divisible by k)."""
    b, c, *size = a.shape
    if len(size) == 1:
        return a.reshape(b, c, k, size[0] // k).mean(axis=3)
    return a.reshape(b, c, k, size[0] // k, k, size[1] // k).mean(axis=(3, 5))


def test_hcl_on_4x4_skips_the_size_4_level():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a, b = s.numpy(), t.numpy()
    mse = lambda x, y: float(((x - y) ** 2).mean())  # noqa: E731
    expected = (mse(a, b) + 0.5 * mse(_pool(a, 2), _pool(b, 2)) + 0.25 * mse(_pool(a, 1), _pool(b, 1))) / 1.75
    assert hcl(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_hcl_on_1d_maps_uses_every_shorter_size():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    a, b = s.numpy(), t.numpy()
    mse = lambda x, y: float(((x - y) ** 2).mean())  # noqa: E731
    expected = (mse(a, b) + 0.5 * mse(_pool(a, 4), _pool(b, 4)) + 0.25 * mse(_pool(a, 2), _pool(b, 2))
                + 0.125 * mse(_pool(a, 1), _pool(b, 1))) / 1.875
    assert hcl(s, t).item() == pytest.approx(expected, rel=1e-5)


def test_hcl_on_a_pooled_level_is_plain_mse():
    s, t = torch.tensor([[[[1.0]], [[2.0]]]]), torch.tensor([[[[0.0]], [[4.0]]]])
    assert hcl(s, t).item() == pytest.approx((1 + 4) / 2)


def _bn_train(y: torch.Tensor) -> torch.Tensor:
    """BatchNorm with batch statistics (biased variance), weight 1, bias 0."""
    mean, var = y.mean(dim=(0, 2, 3), keepdim=True), y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (y - mean) / torch.sqrt(var + 1e-5)


def test_abf_fusion_by_hand():
    torch.manual_seed(0)
    abf = ABF(2, in_channels=3, mid_channels=4, out_channels=5, fuse=True).train()
    x, residual = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out, fused = abf(x, residual, out_size=(4, 4))
    with torch.no_grad():
        w1 = abf.conv1[0].weight[:, :, 0, 0]
        y = torch.einsum("oc,nchw->nohw", w1, x)
        y = _bn_train(y)
        up = residual.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest, 2x
        wa, ba = abf.att_conv[0].weight[:, :, 0, 0], abf.att_conv[0].bias
        att = torch.sigmoid(torch.einsum("oc,nchw->nohw", wa, torch.cat([y, up], 1)) + ba.view(1, 2, 1, 1))
        expected_fused = y * att[:, :1] + up * att[:, 1:]
        z = F.conv2d(expected_fused, abf.conv2[0].weight, padding=1)
        z = _bn_train(z)
    torch.testing.assert_close(fused, expected_fused, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, z, rtol=1e-4, atol=1e-4)
    assert out.shape == (2, 5, 4, 4)


def test_abf_resizes_to_the_teacher_map_and_has_no_attention_at_the_deepest_level():
    deepest = ABF(1, in_channels=6, mid_channels=6, out_channels=8, fuse=False)
    assert deepest.att_conv is None
    out, fused = deepest(torch.randn(3, 6, 1), None, out_size=(1,))
    assert out.shape == (3, 8, 1) and fused.shape == (3, 6, 1)
    up = ABF(1, in_channels=6, mid_channels=6, out_channels=8, fuse=True)
    out, fused = up(torch.randn(3, 6, 5), torch.randn(3, 6, 1), out_size=(10,))
    assert out.shape == (3, 8, 10) and fused.shape == (3, 6, 10)


def test_setup_on_resnets_builds_the_reference_blocks():
    teacher, student = pair("cifar")
    term = ReviewKD()
    setup_on(term, teacher, student)
    assert term.student_features == ("stage1", "stage2", "stage3", "embedding")
    assert term.teacher_features == ("preact1", "preact2", "preact3", "embedding")
    # deepest first; mdistiller's IN_CHANNELS / OUT_CHANNELS [64, 128, 256, 256] reversed, mid = min(512, 256)
    got = [(a.conv1[0].in_channels, a.conv1[0].out_channels, a.conv2[0].out_channels, a.att_conv is not None)
           for a in term.abfs]
    assert got == [(256, 256, 256, False), (256, 256, 256, True), (128, 256, 128, True), (64, 256, 64, True)]
    assert term.out_sizes == [(1, 1), (8, 8), (16, 16), (32, 32)]


def test_setup_on_cnn1d_pair_and_a_training_step():
    teacher, student = pair("mnist1d")
    term = ReviewKD(stages=(0, 1, 2))
    setup_on(term, teacher, student)
    assert all(isinstance(a.conv1[0], nn.Conv1d) for a in term.abfs)
    assert [(a.conv1[0].in_channels, a.conv1[0].out_channels, a.conv2[0].out_channels) for a in term.abfs] == [
        (12, 12, 64), (12, 12, 64), (6, 12, 32), (6, 12, 32)]  # mid = min(512, 12)
    assert term.out_sizes == [(1,), (5,), (10,), (20,)]
    batch = real_batch(term, teacher, student)
    batch.epoch = 20
    term.train()
    student.zero_grad(set_to_none=True)
    out = term(batch)
    assert list(out) == ["stage0", "stage1", "stage2", "embedding"]
    loss = sum(out.values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)


def _small_term_and_batch(epoch: int, scale: float = 1.0):
    torch.manual_seed(0)
    s = {"stage1": scale * torch.randn(2, 3, 8), "stage2": scale * torch.randn(2, 4, 4),
         "embedding": torch.randn(2, 4)}
    t = {"preact1": scale * torch.randn(2, 5, 8), "preact2": scale * torch.randn(2, 6, 4),
         "embedding": torch.randn(2, 6)}
    term = ReviewKD(stages=(1, 2))
    torch.manual_seed(1)
    term.setup(SetupContext(10, 8, {k: v.shape for k, v in s.items()}, {k: v.shape for k, v in t.items()}))
    return term.train(), feat_batch(s, t, epoch)


def test_warmup_is_linear_from_epoch_one_over_twenty():
    term, batch = _small_term_and_batch(epoch=20)
    full = {k: v.item() for k, v in term(batch).items()}
    for epoch, factor in ((1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)):
        batch.epoch = epoch
        assert {k: v.item() for k, v in term(batch).items()} == pytest.approx(
            {k: factor * v for k, v in full.items()}, rel=1e-6)
    assert ReviewKD(warmup_epochs=0).warmup_factor(1) == 1.0


def test_finite_for_extreme_inputs():
    term, batch = _small_term_and_batch(epoch=5, scale=1e15)
    out = term(batch)
    assert all(torch.isfinite(v) for v in out.values())


def test_errors_for_impossible_pairs_and_bad_options():
    term = ReviewKD(stages=(1,))
    with pytest.raises(ValueError, match="reviewkd: needs student and teacher feature maps"):
        term.setup(SetupContext(10, 8, {"stage1": torch.Size([2, 3, 8]), "embedding": torch.Size([2, 3])},
                                {"preact1": torch.Size([2, 3, 8, 8]), "embedding": torch.Size([2, 3])}))
    with pytest.raises(ValueError, match="warmup_epochs"):
        ReviewKD(warmup_epochs=-1)
    with pytest.raises(ValueError, match="stages"):
        ReviewKD(stages=[])


def test_student_preact_option_and_preset():
    assert ReviewKD(student_preact=True).student_features[:3] == ("preact1", "preact2", "preact3")
    spec = METHODS.get("reviewkd")
    assert {t: (s.loss, s.weight) for t, s in spec.terms.items()} == {"ce": ("ce", 1.0), "reviewkd": ("reviewkd", 1.0)}
