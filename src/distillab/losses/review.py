"""ReviewKD: attention-based fusion of student stages (deep to shallow) and the hierarchical context loss."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillab.features import feature_names, stage_reference
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.common import adaptive_pool
from distillab.losses.connectors import batch_norm, conv_layer, require_maps
from distillab.losses.feature import REFERENCE_STAGES
from distillab.methods import register_method

MAX_MID_CHANNELS = 512  # the fusion width is min(512, the student's last channel count), as mdistiller hard-codes
PYRAMID = (4, 2, 1)  # HCL's pooled sizes; a size is skipped when the map is not larger than it


class ABF(nn.Module):
    """Attention-based fusion block (mdistiller ``ReviewKD.ABF``), 1-D or 2-D.

    x -> 1x1 conv + BN to ``mid`` channels; if ``fuse``, the residual from the deeper block is resized
    (nearest) to x's size, a 1x1 conv + sigmoid on [x, residual] gives two attention maps a, b, and
    x <- a * x + b * residual; x is resized (nearest) to the teacher's size if needed; the output is a
    3x3 conv + BN to the teacher's channels. Returns (output, x), x being the residual for the next block.
    Convolution weights are Kaiming-uniform with a = 1, as the reference.
    """

    def __init__(self, dims: int, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        conv = conv_layer(dims)
        self.conv1 = nn.Sequential(conv(in_channels, mid_channels, kernel_size=1, bias=False),
                                   batch_norm(dims, mid_channels))
        self.conv2 = nn.Sequential(conv(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                   batch_norm(dims, out_channels))
        self.att_conv = nn.Sequential(conv(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=tuple(x.shape[2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, :1] + residual * att[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss for one level (mdistiller ``hcl_loss``).

    MSE of the full maps (weight 1) plus the MSE of both maps adaptive-average-pooled to 4, 2 and 1
    positions per axis, skipping sizes not smaller than the map (its first spatial axis); the k-th size
    used weighs 2^-k, and the sum is divided by the sum of the weights used.
    """
    f_s, f_t = f_s.float(), f_t.float()
    loss, weight, total = F.mse_loss(f_s, f_t), 1.0, 1.0
    size = f_s.shape[2]
    dims = f_s.dim() - 2
    for level in PYRAMID:
        if level >= size:
            continue
        weight /= 2.0
        pooled = (level,) * dims
        loss = loss + weight * F.mse_loss(adaptive_pool(f_s, pooled), adaptive_pool(f_t, pooled))
        total += weight
    return loss / total


@LOSSES.register("reviewkd", description="ReviewKD: fused student stages (ABF) matched to teacher stages by HCL")
class ReviewKD(LossTerm):
    """Distilling knowledge via knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021, arXiv 2104.09044).

    Student levels (the chosen stages after their ReLU, then the pooled embedding as a 1x1 map) are fused
    from deep to shallow by :class:`ABF` blocks: each level is mixed with the fused result of the deeper
    ones and mapped to the teacher's channels and size. Level l's output is compared with the teacher's
    level l (its stages before their last ReLU, then its pooled embedding) by :func:`hcl`:
        L = min(epoch / warmup_epochs, 1) * sum over levels of HCL(ABF_l, t_l)      (epoch counts from 1).

    Reference (mdistiller ``distillers/ReviewKD.py``, ``configs/cifar100/reviewkd.yaml``): student
    ``feats[1:]`` + pooled (STU_PREACT false), teacher ``preact_feats[1:]`` + pooled, fusion width
    min(512, the student's last channel count) whatever MAX_MID_CHANNEL says, fusion blocks' BN in train
    mode, 20 warm-up epochs; the loss weight is 1 by default and 5.0 in the resnet32x4 -> resnet8x4
    config (CE 1). SHAPES / OUT_SHAPES / channel lists, hand-written in mdistiller's config, come from
    the probed shapes here. On 1-D maps the blocks use 1-D convolutions and the pyramid sizes are skipped
    when not shorter than the map, as on 2-D maps.

    stages: the student's stage levels, shallow to deep (an integer ``i`` reads as ``stage<i>``); the
        embedding level is always added. Logged parts are named after them, then ``embedding``.
    teacher_stages: the teacher's levels (an integer ``i`` reads as ``preact<i>``; None: ``preact<i>`` for each
        student ``stage<i>`` / ``preact<i>``, so a student feature named otherwise, e.g. a module path, needs
        them given).
    warmup_epochs: epochs of the linear warm-up of the weight (0: none).
    student_preact: read the student's stages before their last ReLU (mdistiller's STU_PREACT): ``stage<i>``
        in ``stages`` becomes ``preact<i>``.
    """

    def __init__(self, stages: Sequence[str | int] = REFERENCE_STAGES,
                 teacher_stages: Sequence[str | int] | None = None, warmup_epochs: int = 20,
                 student_preact: bool = False) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"reviewkd: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.warmup_epochs = warmup_epochs
        self.stages = feature_names("reviewkd", stages, kind="preact" if student_preact else "stage")
        if student_preact:
            fix = "with student_preact, name the stages 'stage<i>' / 'preact<i>'"
            self.stages = feature_names("reviewkd", [self._preact(name, fix) for name in self.stages])
        if teacher_stages is None:
            teacher = tuple(self._preact(name, "set teacher_stages to name the teacher's levels")
                            for name in self.stages)
        else:
            teacher = feature_names("reviewkd", teacher_stages, kind="preact", option="teacher_stages")
        if len(teacher) != len(self.stages):
            raise ValueError(f"reviewkd: needs as many teacher_stages as stages, got {list(self.stages)} and "
                             f"{list(teacher)}")
        if "embedding" in self.stages or "embedding" in teacher:
            raise ValueError("reviewkd: the embedding level is always added; leave 'embedding' out of stages "
                             "and teacher_stages")
        self.teacher_stages = teacher
        self.student_features = self.stages + ("embedding",)
        self.teacher_features = teacher + ("embedding",)
        self.parts = self.student_features
        self.abfs = nn.ModuleList()  # deepest level first
        self.out_sizes: list[tuple[int, ...]] = []

    @staticmethod
    def _preact(name: str, fix: str) -> str:
        """``preact<i>`` for a name ``stage<i>`` or ``preact<i>``; another name is an error ending with ``fix``."""
        ref = stage_reference(name)
        if ref is None:
            raise ValueError(f"reviewkd: stages entry {name!r} is not of the form 'stage<i>' or 'preact<i>', "
                             f"so its pre-ReLU feature is unknown: {fix}")
        return f"preact{ref[1]}"

    def setup(self, ctx: SetupContext) -> None:
        s_shapes = [tuple(ctx.student_shapes[n]) for n in self.student_features]
        t_shapes = [tuple(ctx.teacher_shapes[n]) for n in self.teacher_features]
        pairs = {p: (s, t) for p, s, t in zip(self.parts[:-1], s_shapes[:-1], t_shapes[:-1])}
        dims = require_maps("reviewkd", pairs)
        if len(s_shapes[-1]) != 2 or len(t_shapes[-1]) != 2:
            raise ValueError(f"reviewkd: the embedding level needs pooled vectors (B, D), got student "
                             f"{s_shapes[-1]} and teacher {t_shapes[-1]}")
        channels = [s[1] for s in s_shapes]
        mid = min(MAX_MID_CHANNELS, channels[-1])
        n = len(channels)
        # built deepest first: the embedding level has nothing deeper to fuse with
        self.abfs = nn.ModuleList(ABF(dims, channels[k], mid, t_shapes[k][1], fuse=k < n - 1)
                                  for k in reversed(range(n)))
        self.out_sizes = [tuple(t[2:]) if len(t) > 2 else (1,) * dims for t in reversed(t_shapes)]

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min(epoch / self.warmup_epochs, 1.0)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        s_feats = [batch.student.features[n] for n in self.student_features]
        t_feats = [batch.teacher.features[n] for n in self.teacher_features]
        dims = s_feats[0].dim() - 2
        s_feats[-1] = s_feats[-1].reshape(*s_feats[-1].shape, *([1] * dims))
        t_feats[-1] = t_feats[-1].reshape(*t_feats[-1].shape, *([1] * dims))
        scale = self.warmup_factor(batch.epoch)
        parts, residual = {}, None
        for abf, out_size, f_s, f_t, part in zip(self.abfs, self.out_sizes, reversed(s_feats), reversed(t_feats),
                                                  reversed(self.parts)):
            out, residual = abf(f_s, residual, out_size)
            parts[part] = scale * hcl(out, f_t)
        return dict(reversed(parts.items()))


register_method(
    "reviewkd",
    "ReviewKD: CE + HCL between ABF-fused student stages and teacher pre-ReLU stages, 20-epoch warm-up",
    {"ce": ("ce", 1.0), "reviewkd": ("reviewkd", 1.0)},
    reference="Chen et al. 2021; mdistiller REVIEWKD (weight 1 by default, 5.0 in its resnet32x4 config)",
)
