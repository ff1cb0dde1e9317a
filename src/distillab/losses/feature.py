"""Feature-based terms: FitNet, AT, NST, VID and OFD (ReviewKD lives in ``review.py``).

Features are chosen by name (:func:`~distillab.features.resolve_feature`): ``"stage<i>"`` / ``"preact<i>"``
(entry ``i`` of the model's ``feature_info``, negative counts from the end) or a module tap address. An
integer ``i``, the older spelling, is still accepted and read as ``"stage<i>"`` (``"preact<i>"`` for OFD).
RepDistiller's ``is_feat`` list maps onto the names as ``feat[0]`` = ``stage0`` (the stem), ``feat[1:-1]``
= ``stage1`` .. ``stage-1``, ``feat[-1]`` = ``embedding``; the defaults below are the reference's choice for
the CIFAR ResNets and WRNs (``stage1``-``stage3``). Models without a separate stem (MNIST-1D's ``cnn1d``) or
with more stages (VGG, MobileNetV2, ResNet50: ``feat[1:-1]`` is ``stage1``-``stage4``) set the list in
their config.
Every term takes 1-D maps (B, C, L) as well as 2-D maps (B, C, H, W).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillab.features import feature_name, feature_names, feature_stage, resolve_module
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.common import adaptive_pool, match_spatial
from distillab.losses.connectors import ConvBN, ConvReg, conv1x1_regressor, require_maps
from distillab.methods import StageSpec, register_method

REFERENCE_STAGES = ("stage1", "stage2", "stage3")  # RepDistiller's feat[1:-1] on a CIFAR ResNet/WRN
REFERENCE_PREACTS = ("preact1", "preact2", "preact3")  # the same three stages before their last ReLU (OFD)
HINT_FEATURE = "stage2"  # RepDistiller's --hint_layer 2: feat[2]
HINT_EPOCHS = 30  # RepDistiller's --init_epochs, the length of FitNet's hint stage (fitnet2)


def _pairs(ctx: SetupContext, student: Sequence[str], teacher: Sequence[str]) -> dict[str, tuple]:
    return {s: (ctx.student_shapes[s], ctx.teacher_shapes[t]) for s, t in zip(student, teacher)}


# -------------------------------------------------------------------------------------------------- FitNet


@LOSSES.register("fitnet", description="FitNet hint: ConvReg on a student stage, MSE to the teacher's stage")
class FitNetHint(LossTerm):
    """FitNets: hints for thin deep nets (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015,
    arXiv 1412.6550).

    L = mean over (B, C, H, W) of (r(f_s) - f_t)^2, where f_s, f_t are the student's and teacher's
    ``feature`` (by default ``stage2``, a stage output after its ReLU) and r is :class:`ConvReg` (conv, BN,
    ReLU) sized from the probed shapes.

    Reference (RepDistiller ``distiller_zoo/FitNet.py`` ``HintLoss``, ``models/util.py`` ``ConvReg``;
    mdistiller ``distillers/FitNet.py``): ``--hint_layer 2`` = ``feat[2]`` = ``stage2`` of both models;
    on CIFAR-100 the objective is CE + 100 x hint from the first epoch (mdistiller's FEAT_WEIGHT, the CRD
    paper's beta). The regressor's BN uses batch statistics while training, as in the reference. The
    reference regressor is a 1x1 conv when the two maps have the same size (kernel 1 + s - t), which we keep.

    The paper trains in two stages: first the student up to the hint layer and the regressor on the hint
    loss alone, then the whole student with KD (its lambda annealed). RepDistiller's ``--distill hint`` and
    mdistiller run only the single-stage recipe above (preset ``fitnet``). Preset ``fitnet2`` is the
    paper's option: a ``hint`` stage of 30 epochs (RepDistiller's ``--init_epochs``, which it never uses
    for FitNet) training the student body and the regressor at lr = ``optim.lr`` with the hint weighted
    100 as in the single-stage recipe (weights past the hint get no gradient and stay as they are; the
    student's BN runs in train mode so its statistics follow the weights being fitted), then the main
    stage with the project's KD preset, 0.1 CE + 0.9 KD at T = 4, a fixed weight where the paper anneals.

    feature: the student's hint feature (None: ``stage2``, RepDistiller's ``--hint_layer 2``; an integer
        ``i`` reads as ``stage<i>``).
    teacher_feature: the teacher's (None: the same name as ``feature``).
    hint_layer: the older spelling, an integer ``i`` for ``feature = "stage<i>"``; not together with ``feature``.
        The presets leave both unset (the default is the reference's ``stage2``), so a config that still sets
        ``hint_layer`` on the ``fitnet`` or ``fitnet2`` preset keeps working.
    """

    def __init__(self, feature: str | int | None = None, teacher_feature: str | int | None = None,
                 hint_layer: int | None = None) -> None:
        super().__init__()
        if hint_layer is not None:
            if not isinstance(hint_layer, int) or isinstance(hint_layer, bool):
                raise ValueError(f"fitnet: hint_layer must be an integer feature_info index, got {hint_layer!r}")
            if feature is not None:
                raise ValueError(f"fitnet: give feature ({feature!r}) or its older spelling hint_layer "
                                 f"({hint_layer!r}), not both")
            feature = f"stage{hint_layer}"
        self.hint_layer = hint_layer
        self.feature = feature_name("fitnet", HINT_FEATURE if feature is None else feature)
        self.teacher_feature = (self.feature if teacher_feature is None
                                else feature_name("fitnet", teacher_feature, option="teacher_feature"))
        self.student_features, self.teacher_features = (self.feature,), (self.teacher_feature,)
        self.regressor: nn.Module = nn.Identity()

    def setup(self, ctx: SetupContext) -> None:
        s, t = ctx.student_shapes[self.feature], ctx.teacher_shapes[self.teacher_feature]
        label = (self.feature if self.teacher_feature == self.feature
                 else f"{self.feature}/{self.teacher_feature}")
        require_maps("fitnet", {label: (s, t)})
        try:
            self.regressor = ConvReg(s, t)
        except ValueError as exc:
            where = f"hint_layer {self.hint_layer}" if self.hint_layer is not None else label
            raise ValueError(f"fitnet ({where}): {exc}") from None

    def forward(self, batch: Batch) -> torch.Tensor:
        f_s = self.regressor(batch.student.features[self.feature])
        return F.mse_loss(f_s.float(), batch.teacher.features[self.teacher_feature].float())


# ------------------------------------------------------------------------------------------------------ AT


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """q = normalise(mean over channels of |f|^p), flattened to (B, positions), fp32.

    q is unchanged by a positive scale of f, so each sample is first divided by its largest magnitude:
    the value is the same and f^p cannot overflow for large activations.
    """
    f = f.float().flatten(2)
    scale = f.detach().abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)
    return F.normalize((f / scale).abs().pow(p).mean(1), dim=1)


@LOSSES.register("at", description="attention transfer: MSE between normalised spatial attention maps")
class AttentionTransfer(LossTerm):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv 1612.03928).

    For each chosen stage, q = normalise_L2(mean over channels of f^p), flattened over positions, and
    L = sum over stages of mean over (B, positions) of (q_s - q_t)^2. When the two maps differ in size
    the larger is adaptive-average-pooled to the smaller's.

    Reference (RepDistiller ``distiller_zoo/AT.py``, mdistiller ``AT.py``): p = 2, stages ``feat[1:-1]``,
    CIFAR-100 weight 1000 (CE 1). The reference takes f^p without an absolute value; with p = 2 (the
    default) they agree; for odd p we use |f|^p, the paper's definition. The reference pools to a square
    from the heights alone; we pool to the smaller map's exact size (the same on square maps).

    p: the power. stages: features compared on both models (an integer ``i`` reads as ``stage<i>``).
    """

    def __init__(self, p: float = 2.0, stages: Sequence[str | int] = REFERENCE_STAGES) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"at: p must be positive, got {p}")
        self.p = p
        self.stages = feature_names("at", stages)
        self.student_features = self.teacher_features = self.stages

    def setup(self, ctx: SetupContext) -> None:
        require_maps("at", _pairs(ctx, self.student_features, self.teacher_features))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        parts = {}
        for name in self.student_features:
            f_s, f_t = match_spatial(batch.student.features[name], batch.teacher.features[name])
            parts[name] = (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return parts


# ----------------------------------------------------------------------------------------------------- NST


def poly_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channel maps of two features with the kernel k(x, y) = (x^T y)^2.

    Each channel's map is L2-normalised over positions; each of the three kernel means is taken over
    the batch and both channel axes (RepDistiller's ``NSTLoss.nst_loss``).
    """
    s = F.normalize(f_s.float().flatten(2), dim=2)
    t = F.normalize(f_t.float().flatten(2), dim=2)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


@LOSSES.register("nst", description="neuron selectivity transfer: polynomial-kernel MMD between channel maps")
class NeuronSelectivityTransfer(LossTerm):
    """Neuron selectivity transfer (Huang & Wang, "Like what you like", 2017, arXiv 1707.01219).

    Each channel of a stage map is a sample of that stage's distribution (its map over positions,
    L2-normalised). With k(x, y) = (x^T y)^2,
    L = sum over stages of mean k(t, t') + mean k(s, s') - 2 mean k(s, t), means over the batch and all
    channel pairs; the larger map is first adaptive-average-pooled to the smaller's size.

    Reference (RepDistiller ``distiller_zoo/NST.py``, its ``full_loss`` branch; mdistiller ``NST.py``):
    polynomial kernel of degree 2 with c = 0, stages ``feat[1:-1]``, CIFAR-100 weight 50 (CE 1). The
    paper's objective also has a KD term; the CIFAR references train NST with CE only, as here.

    stages: features compared on both models (an integer ``i`` reads as ``stage<i>``).
    """

    def __init__(self, stages: Sequence[str | int] = REFERENCE_STAGES) -> None:
        super().__init__()
        self.stages = feature_names("nst", stages)
        self.student_features = self.teacher_features = self.stages

    def setup(self, ctx: SetupContext) -> None:
        require_maps("nst", _pairs(ctx, self.student_features, self.teacher_features))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        parts = {}
        for name in self.student_features:
            parts[name] = poly_mmd(*match_spatial(batch.student.features[name], batch.teacher.features[name]))
        return parts


# ----------------------------------------------------------------------------------------------------- VID


class VIDHead(nn.Module):
    """One stage of VID: the mean regressor and the per-channel variance parameter alpha."""

    def __init__(self, dims: int, s_channels: int, mid_channels: int, t_channels: int, init_alpha: float) -> None:
        super().__init__()
        self.regressor = conv1x1_regressor(dims, s_channels, mid_channels, t_channels)
        self.alpha = nn.Parameter(torch.full((t_channels,), init_alpha))


@LOSSES.register("vid", description="variational information distillation: Gaussian NLL of teacher maps")
class VID(LossTerm):
    """Variational information distillation (Ahn, Hu, Damianou, Lawrence & Dai, CVPR 2019, arXiv 1904.05835).

    Per stage, the teacher map t is modelled as N(mu(s), sigma^2) with mu a regressor of three 1x1
    convolutions (ReLU between) on the student map s and one variance per teacher channel,
    sigma_c^2 = softplus(alpha_c) + eps. The loss is the negative log-likelihood without its
    log(2 pi) / 2 constant, averaged over (B, C, H, W):
        L = sum over stages of mean of 1/2 * ((t - mu(s))^2 / sigma^2 + log sigma^2).

    Reference (RepDistiller ``distiller_zoo/VID.py``, ``train_student.py``; mdistiller ``VID.py``):
    stages ``feat[1:-1]``, regressor widths (C_s -> C_t -> C_t -> C_t) (``VIDLoss(s, t, t)``), bias-free
    convs, init_pred_var = 5 (alpha = softplus^-1(5 - eps)), eps = 1e-5, CIFAR-100 weight 1 (CE 1); where
    the sizes differ the larger map is adaptive-average-pooled first (the student before its regressor).
    The paper's mid width is not fixed; ``mid_channels`` overrides it.

    stages: features compared on both models (an integer ``i`` reads as ``stage<i>``).
    init_pred_var, eps: the variance at initialisation and its floor.
    mid_channels: the regressor's hidden width (None: the teacher's channel count, as the reference).
    """

    def __init__(self, stages: Sequence[str | int] = REFERENCE_STAGES, init_pred_var: float = 5.0,
                 eps: float = 1e-5, mid_channels: int | None = None) -> None:
        super().__init__()
        if eps <= 0 or init_pred_var <= eps:
            raise ValueError(f"vid: needs 0 < eps < init_pred_var, got eps={eps}, init_pred_var={init_pred_var}")
        if mid_channels is not None and mid_channels < 1:
            raise ValueError(f"vid: mid_channels must be positive, got {mid_channels}")
        self.stages = feature_names("vid", stages)
        self.student_features = self.teacher_features = self.stages
        self.init_pred_var, self.eps, self.mid_channels = init_pred_var, eps, mid_channels
        self.heads = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        pairs = _pairs(ctx, self.student_features, self.teacher_features)
        dims = require_maps("vid", pairs)
        init_alpha = math.log(math.expm1(self.init_pred_var - self.eps))  # softplus^-1
        self.heads = nn.ModuleList(
            VIDHead(dims, s[1], self.mid_channels or t[1], t[1], init_alpha) for s, t in pairs.values())

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        parts = {}
        for name, head in zip(self.student_features, self.heads):
            f_s, f_t = match_spatial(batch.student.features[name], batch.teacher.features[name])
            mean = head.regressor(f_s).float()
            var = F.softplus(head.alpha.float()) + self.eps
            var = var.view(1, -1, *([1] * (f_t.dim() - 2)))
            parts[name] = (0.5 * ((mean - f_t.float()).pow(2) / var + var.log())).mean()
        return parts


# ----------------------------------------------------------------------------------------------------- OFD


def bn_margin(gamma: torch.Tensor, beta: torch.Tensor, tail: float = 1e-3) -> torch.Tensor:
    """OFD's per-channel margin from a BatchNorm's affine parameters (mdistiller ``get_margin_from_BN``).

    For x ~ N(beta, gamma^2): m = E[x | x < 0] = beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|), or
    m = -3 |gamma| where Phi(-beta/|gamma|) <= ``tail`` (almost no negative responses). Computed in float64;
    gamma = 0 is treated as the limit (m = beta if beta < 0, else 0).
    """
    s = gamma.detach().double().abs().clamp_min(1e-12)
    m = beta.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
    expected = m - s * pdf / cdf.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(cdf > tail, expected, -3 * s).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance, summed over (C, H, W) and averaged over the batch (mdistiller ``feat_loss``).

    Per entry: (s - m)^2 where t <= m < s (a teacher response below the margin only pushes s down to m);
    (s - t)^2 where m < t <= 0 and s > t; (s - t)^2 where t > 0; 0 otherwise.
    """
    loss = ((source - margin).pow(2) * ((source > margin) & (target <= margin))
            + (source - target).pow(2) * ((source > target) & (target > margin) & (target <= 0))
            + (source - target).pow(2) * (target > 0))
    return loss.sum() / source.shape[0]


@LOSSES.register("ofd", description="overhaul of feature distillation: margin-ReLU teacher, partial L2, pre-ReLU")
class OFD(LossTerm):
    """A comprehensive overhaul of feature distillation (Heo, Kim, Yun, Park, Kwak & Choi, ICCV 2019,
    arXiv 1904.01866).

    Student and teacher features are taken before their last ReLU. The student's pass a connector r
    (1x1 conv + BN to the teacher's channels; BN in train mode); the teacher's are average-pooled to the
    student's size. Per teacher channel, a margin m = E[x | x < 0] for x ~ N(beta, gamma^2) of the BN
    right before that ReLU (or -3 |gamma| when P(x < 0) <= 0.001). With the partial L2 distance d_p
    (see :func:`partial_l2`), summed over (C, H, W) and averaged over the batch,
        L = sum over stages i = 0..n-1 of d_p(r(s_i), t_i) / 2^(n-1-i)      (the deepest stage weighs 1).

    Reference (mdistiller ``distillers/OFD.py``, ``configs/cifar100/ofd.yaml``): the stage outputs after
    the stem (``preact_feats[1:]``, our ``preact1``-``preact3`` on the CIFAR ResNets/WRNs; the stem has no
    pre-activation tap and mdistiller skips it too), margins from the models' ``get_bn_before_relu``
    (our ``FeatureStage.bn``), connector kernel 1, CIFAR-100 weight 0.001 (FEAT_WEIGHT; CE 1). Margins
    are computed once in ``setup`` from the teacher and kept as buffers. mdistiller's ``OFD.train()`` also
    switches the teacher to train mode, so its teacher BN uses batch statistics during distillation;
    that is a bug we do not copy: the teacher stays in eval mode. The paper's CIFAR recipe also adds KD
    on some pairs; the reference's CIFAR preset is CE + OFD, as here.

    stages: pre-activation features compared on both models (an integer ``i`` reads as ``preact<i>``); each
        must name a stage of the teacher's ``feature_info`` (:func:`~distillab.features.feature_stage`) whose
        ``bn`` gives the margins.
    kernel_size: the connector's convolution size.
    """

    def __init__(self, stages: Sequence[str | int] = REFERENCE_PREACTS, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ofd: kernel_size must be a positive odd integer, got {kernel_size}")
        self.stages = feature_names("ofd", stages, kind="preact")
        self.kernel_size = kernel_size
        self.student_features = self.teacher_features = self.stages
        self.connectors = nn.ModuleList()
        n = len(self.stages)
        self.stage_weights = [2.0 ** -(n - 1 - k) for k in range(n)]

    def setup(self, ctx: SetupContext) -> None:
        pairs = _pairs(ctx, self.student_features, self.teacher_features)
        dims = require_maps("ofd", pairs)
        info = getattr(ctx.teacher, "feature_info", None)
        if info is None:
            raise ValueError("ofd: reads its margins from the teacher's BatchNorms through feature_info[i].bn; "
                             f"{type(ctx.teacher).__name__} describes no feature_info")
        self.connectors = nn.ModuleList(ConvBN(dims, s[1], t[1], self.kernel_size) for s, t in pairs.values())
        for k, (name, (_, t)) in enumerate(zip(self.stages, pairs.values())):
            try:
                stage = feature_stage(ctx.teacher, name)
            except ValueError as exc:
                raise ValueError(f"ofd: reads each margin from the BatchNorm of a teacher stage: {exc}") from None
            if stage.bn is None:
                raise ValueError(f"ofd: teacher stage {info.index(stage)} ({stage.name!r}, feature {name!r}) of "
                                 f"{type(ctx.teacher).__name__} names no BatchNorm before its ReLU "
                                 "(FeatureStage.bn), so no margin can be computed; choose other stages with "
                                 "method.params.ofd.stages or another teacher")
            bn = resolve_module(ctx.teacher, stage.bn)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.num_features != t[1] or not bn.affine:
                raise ValueError(f"ofd: teacher module {stage.bn!r} should be an affine BatchNorm over the "
                                 f"{t[1]} channels of {name}, found {bn}")
            self.register_buffer(f"margin{k}", bn_margin(bn.weight, bn.bias))

    def margin(self, k: int, dims: int) -> torch.Tensor:
        return getattr(self, f"margin{k}").view(1, -1, *([1] * dims))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        parts = {}
        for k, name in enumerate(self.student_features):
            f_s = self.connectors[k](batch.student.features[name]).float()
            f_t = adaptive_pool(batch.teacher.features[name].float(), tuple(f_s.shape[2:]))
            parts[name] = self.stage_weights[k] * partial_l2(f_s, f_t, self.margin(k, f_s.dim() - 2))
        return parts


# ------------------------------------------------------------------------------------------------- presets

register_method(
    "fitnet",
    "FitNet: CE + 100 x MSE between ConvReg(student stage 2) and the teacher's stage 2, single stage",
    # no feature option: FitNetHint's default is stage2, and one here would clash with an old config's hint_layer
    {"ce": ("ce", 1.0), "hint": ("fitnet", 100.0)},
    reference="Romero et al. 2015; RepDistiller --distill hint --hint_layer 2 -b 100; mdistiller FITNET",
)
register_method(
    "fitnet2",
    "FitNet, the paper's two stages: 30 epochs of hint on body + regressor, then 0.1 CE + 0.9 KD",
    {"ce": ("ce", 0.1), "kd": ("kd", 0.9, {"temperature": 4.0}), "hint": ("fitnet", 0.0)},
    reference="Romero et al. 2015 (stage 1: hint, stage 2: KD); stage length RepDistiller --init_epochs 30; "
              "KD weights of RepDistiller's kd preset",
    # The hint stage trains the student body and the regressor on the hint loss alone (see FitNetHint); the
    # student stays in train mode (RepDistiller's init stages for AB/FSP use eval mode; it has none for FitNet).
    stages=(StageSpec("hint", HINT_EPOCHS, {"hint": 100.0}, train=("student_body", "hint")),),
)
register_method(
    "at",
    "attention transfer: CE + 1000 x MSE of normalised attention maps (p = 2) over the three stages",
    {"ce": ("ce", 1.0), "at": ("at", 1000.0)},
    reference="Zagoruyko & Komodakis 2017; RepDistiller --distill attention -b 1000; mdistiller AT",
)
register_method(
    "nst",
    "neuron selectivity transfer: CE + 50 x polynomial-kernel MMD of channel maps over the three stages",
    {"ce": ("ce", 1.0), "nst": ("nst", 50.0)},
    reference="Huang & Wang 2017; RepDistiller --distill nst -b 50; mdistiller NST",
)
register_method(
    "vid",
    "variational information distillation: CE + Gaussian NLL of teacher stages from student regressors",
    {"ce": ("ce", 1.0), "vid": ("vid", 1.0)},
    reference="Ahn et al. 2019; RepDistiller --distill vid -b 1; mdistiller VID",
)
register_method(
    "ofd",
    "overhaul of feature distillation: CE + 0.001 x partial L2 to margin-clipped pre-ReLU teacher maps",
    {"ce": ("ce", 1.0), "ofd": ("ofd", 0.001)},
    reference="Heo et al. 2019; mdistiller OFD (FEAT_WEIGHT 0.001)",
)
