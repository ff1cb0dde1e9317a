"""Feature methods with an initialisation stage: FSP, AB and FT.

RepDistiller runs these three as two-stage methods (``helper/pretrain.py``): a 30-epoch ``init`` stage
trains some modules on the method's loss alone, then the main stage trains the student. Each preset
below declares that stage with :class:`~distillab.methods.StageSpec`; the engine runs it.

Feature names follow RepDistiller's ``is_feat`` list ``feat[0..n]``: ``feat[0]`` (the stem) is
``"stage0"``, ``feat[1:-1]`` are ``"stage1"`` .. ``"stage-1"`` (``"preact<i>"`` before the last ReLU),
``feat[-1]`` is ``"embedding"``. The defaults are the reference's choice for the CIFAR ResNets and WRNs
(stem + three stages); models without a separate stem (MNIST-1D's ``cnn1d``) set the lists in their
config. An integer ``i`` is accepted for a name (``"stage<i>"``; ``"preact<i>"`` for AB). Every term takes
1-D maps (B, C, L) as well as 2-D maps (B, C, H, W).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillab.features import feature_name, feature_names
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.common import match_spatial
from distillab.losses.connectors import ConvReg, batch_norm, conv_layer, conv_transpose_layer, require_maps
from distillab.methods import StageSpec, register_method

INIT_EPOCHS = 30  # RepDistiller's --init_epochs for every two-stage method
FT_INIT_LR = 0.01  # RepDistiller's paraphraser lr for resnet/wrn students (helper/pretrain.py)
LEAKY_SLOPE = 0.1  # negative slope of the paraphraser's and translator's LeakyReLUs


def _shapes(ctx: SetupContext, student: Sequence[str], teacher: Sequence[str]) -> tuple[list, list]:
    return [tuple(ctx.student_shapes[n]) for n in student], [tuple(ctx.teacher_shapes[n]) for n in teacher]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _fp32(x: torch.Tensor) -> torch.autocast:
    """Matrix products of features in float32 even under bf16 autocast."""
    return torch.autocast(device_type=x.device.type, enabled=False)


# ---------------------------------------------------------------------------------------------------- FSP


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """G[n, i, j] = (1 / |S|) * sum over positions s of a[n, i, s] * b[n, j, s]; shape (B, C_a, C_b).

    The larger map is first average-pooled to the smaller's spatial size (RepDistiller's rule).
    """
    a, b = match_spatial(a, b)
    a, b = a.reshape(a.shape[0], a.shape[1], -1), b.reshape(b.shape[0], b.shape[1], -1)
    return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]


@LOSSES.register("fsp", description="FSP: MSE between Gram matrices of consecutive stages (Yim et al. 2017)")
class FSP(LossTerm):
    """Flow of solution procedure (Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation", CVPR 2017).

    For consecutive features f_k, f_{k+1} of one model (spatial size matched by average-pooling the
    larger to the smaller), G_k = f_k f_{k+1}^T / (H W), a (C_k, C_{k+1}) matrix per sample. The loss is
    sum over k of mean over (B, C_k, C_{k+1}) of (G_k^s - G_k^t)^2: RepDistiller's ``FSP.compute_loss``
    reduction. The paper writes (1 / N) sum over samples and pairs of lambda_k ||G_k^t - G_k^s||_2^2 with
    equal lambda_k, i.e. a sum over matrix entries where the code takes their mean.

    stages: student features compared, shallow to deep (an integer ``i`` reads as ``stage<i>``); the
        default is RepDistiller's ``feat[:-1]`` (stem and the three stage outputs of a CIFAR ResNet/WRN).
    teacher_stages: the teacher's features (None: the same names as ``stages``).

    Both models need the same channel count at every compared stage, or their matrices cannot be
    compared (RepDistiller raises too). The reference pools to a square (t_H, t_H) from the heights
    alone; we pool to the smaller map's exact size, the same on square maps. The loss is quartic in
    the features, so its scale follows the teacher's: the reference lr suits a trained teacher, while an
    untrained deep one (eval-mode BN at its initial statistics) diverges within a few steps.

    Preset ``fsp`` (RepDistiller ``--distill fsp``): a 30-epoch ``init`` stage trains the student body
    (``get_feat_modules``: all but the classifier) on this loss alone, with the student body in train
    mode (RepDistiller's ``init`` calls ``model_s.eval()`` and then ``init_modules.train()``, and the init
    modules hold the student's feature modules, so their BatchNorm trains) and lr = ``optim.lr``; the main stage is CE only. RepDistiller's CIFAR-100 command passes ``-b 50``,
    but its main loop sets the FSP loss to 0 (``loss_kd = 0``), so the weight is never used.
    """

    def __init__(self, stages: Sequence[str | int] = ("stage0", "stage1", "stage2", "stage3"),
                 teacher_stages: Sequence[str | int] | None = None) -> None:
        super().__init__()
        self.student_features = feature_names("fsp", stages)
        self.teacher_features = (self.student_features if teacher_stages is None
                                 else feature_names("fsp", teacher_stages, option="teacher_stages"))
        if len(self.student_features) < 2:
            raise ValueError(f"fsp: needs at least two stages to form a matrix, got {list(self.student_features)}")
        if len(self.teacher_features) != len(self.student_features):
            raise ValueError(f"fsp: as many teacher stages as student stages are needed, got "
                             f"{list(self.student_features)} and {list(self.teacher_features)}")

    def setup(self, ctx: SetupContext) -> None:
        s_shapes, t_shapes = _shapes(ctx, self.student_features, self.teacher_features)
        for side, shapes, names in (("student", s_shapes, self.student_features),
                                    ("teacher", t_shapes, self.teacher_features)):
            dims = {len(s) - 2 for s in shapes}
            if len(dims) != 1:
                raise ValueError(f"fsp: the {side} stages mix feature ranks: {dict(zip(names, shapes))}")
        s_ch, t_ch = [s[1] for s in s_shapes], [t[1] for t in t_shapes]
        if s_ch != t_ch:
            raise ValueError(
                f"fsp: FSP matrices of student and teacher are compared entry by entry, so every stage needs the "
                f"same channel count in both; student {dict(zip(self.student_features, s_ch))} vs teacher "
                f"{dict(zip(self.teacher_features, t_ch))}. Use a pair of equal widths (resnet32x4 -> resnet8x4, "
                f"resnet110 -> resnet20, wrn_40_2 -> wrn_16_2) or pick stages that match with "
                f"method.params.fsp.stages / method.params.fsp.teacher_stages")

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        s = [_at_least_fp32(batch.student.features[n]) for n in self.student_features]
        t = [_at_least_fp32(batch.teacher.features[n]) for n in self.teacher_features]
        parts = {}
        with _fp32(s[0]):
            for k in range(len(s) - 1):
                g_s, g_t = fsp_matrix(s[k], s[k + 1]), fsp_matrix(t[k], t[k + 1])
                parts[f"pair{k}"] = (g_s - g_t).pow(2).mean()
        return parts


# ----------------------------------------------------------------------------------------------------- AB


def make_connector(s_shape: tuple, t_shape: tuple, always: bool = False) -> nn.Module:
    """RepDistiller's AB ``Connector`` for one stage: identity where channels and size already agree (unless
    ``always``), else FitNet's ``ConvReg`` without its ReLU (a 1x1 conv + BN when the sizes are equal)."""
    if not always and s_shape[1] == t_shape[1] and tuple(s_shape[2:]) == tuple(t_shape[2:]):
        return nn.Identity()
    return ConvReg(s_shape, t_shape, use_relu=False)


def alternative_l2(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum over all entries of (s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]."""
    off = (source > -margin) & (target <= 0)
    on = (source <= margin) & (target > 0)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


@LOSSES.register("ab", description="activation boundaries: margin loss on pre-ReLU maps via connectors (Heo 2019)")
class ActivationBoundary(LossTerm):
    """Activation-boundary transfer (Heo, Lee, Yun & Choi, AAAI 2019, arXiv 1811.03233).

    The student's pre-activation map s_k passes a connector r_k (conv + BN to the teacher's channels)
    and is pushed to the same side of zero as the teacher's pre-activation t_k, with margin m:

        L_k = (1 / B) * sum over (C, H, W) of (r(s) + m)^2 [r(s) > -m, t <= 0] + (r(s) - m)^2 [r(s) <= m, t > 0]
        L = scale * sum over k of 2^(k - n + 1) * L_k        (k = 0 .. n-1, the deepest stage weighs 1)

    The paper's alternative loss is the squared hinge ||rho(t) * relu(m - r(s)) + (1 - rho(t)) * relu(m + r(s))||^2,
    which is this. Reference defaults (RepDistiller ``distiller_zoo/AB.py``, ``models/util.py``
    ``Connector``): m = 1, stages ``feat[1:-1]`` with ``preact=True`` (the three stage outputs of a
    CIFAR ResNet/WRN before their last ReLU), stage weights 2^(k - n + 1), each stage divided by B and
    multiplied by ``scale`` = 3 / 1000. The paper states no such scale; it comes from the reference code.

    stages / teacher_stages: pre-activation features, shallow to deep (an integer ``i`` reads as ``preact<i>``;
        teacher None: the same names).
    margin: m. scale: the constant multiplier of the whole loss.
    always_connect: RepDistiller's ``Connector`` is the identity at a stage whose student and teacher
        maps already agree in channels and size (so resnet32x4 -> resnet8x4 has no connector at all);
        True builds the conv + BN connector there too, the learnt r(.) of the paper's formulation.

    Preset ``ab`` (RepDistiller ``--distill abound``): a 30-epoch ``init`` stage trains the connectors
    and the student body on this loss alone (student body and connectors in train mode, as RepDistiller's
    ``init_modules.train()`` leaves them; lr = ``optim.lr``); the main stage is CE only (RepDistiller's main loop sets the AB loss to 0, so its
    ``-b`` weight is unused).
    """

    def __init__(self, stages: Sequence[str | int] = ("preact1", "preact2", "preact3"),
                 teacher_stages: Sequence[str | int] | None = None, margin: float = 1.0, scale: float = 3 / 1000,
                 always_connect: bool = False) -> None:
        super().__init__()
        self.student_features = feature_names("ab", stages, kind="preact")
        self.teacher_features = (self.student_features if teacher_stages is None
                                 else feature_names("ab", teacher_stages, kind="preact", option="teacher_stages"))
        if len(self.teacher_features) != len(self.student_features):
            raise ValueError(f"ab: needs as many teacher stages as student stages, got "
                             f"{list(self.student_features)} and {list(self.teacher_features)}")
        if margin <= 0:
            raise ValueError(f"ab: margin must be positive, got {margin}")
        self.margin = margin
        self.scale = scale
        self.always_connect = always_connect
        n = len(self.student_features)
        self.stage_weights = [2.0 ** (k - n + 1) for k in range(n)]
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        s_shapes, t_shapes = _shapes(ctx, self.student_features, self.teacher_features)
        require_maps("ab", {f"{s}/{t}": pair for s, t, pair in
                            zip(self.student_features, self.teacher_features, zip(s_shapes, t_shapes))})
        connectors = []
        for s_name, t_name, s, t in zip(self.student_features, self.teacher_features, s_shapes, t_shapes):
            try:
                connectors.append(make_connector(s, t, self.always_connect))
            except ValueError as exc:
                raise ValueError(f"ab: student {s_name} {s} -> teacher {t_name} {t}: {exc}") from None
        self.connectors = nn.ModuleList(connectors)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        parts = {}
        for k, (s_name, t_name) in enumerate(zip(self.student_features, self.teacher_features)):
            s = _at_least_fp32(self.connectors[k](batch.student.features[s_name]))
            t = _at_least_fp32(batch.teacher.features[t_name])
            loss = alternative_l2(s, t, self.margin) / s.shape[0]
            parts[f"stage{k}"] = self.scale * self.stage_weights[k] * loss
        return parts


# ----------------------------------------------------------------------------------------------------- FT


def _conv_block(dims: int, c_in: int, c_out: int, bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv = (conv_transpose_layer if transpose else conv_layer)(dims)(c_in, c_out, kernel_size=3, stride=1, padding=1)
    return [conv, *([batch_norm(dims, c_out)] if bn else []), nn.LeakyReLU(LEAKY_SLOPE)]


class Paraphraser(nn.Module):
    """Convolutional auto-encoder on the teacher's feature map (RepDistiller ``models/util.py``).

    encoder: C -> C -> kC -> kC (3x3 convs, LeakyReLU 0.1); decoder: kC -> kC -> C -> C (3x3 transposed
    convs). Spatial size is kept. BatchNorm after each conv only with ``bn`` (the reference's default: off).
    """

    def __init__(self, channels: int, factor_channels: int, dims: int, bn: bool = False) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(*_conv_block(dims, c, c, bn), *_conv_block(dims, c, k, bn),
                                     *_conv_block(dims, k, k, bn))
        self.decoder = nn.Sequential(*_conv_block(dims, k, k, bn, True), *_conv_block(dims, k, c, bn, True),
                                     *_conv_block(dims, c, c, bn, True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """The student's encoder: C_s -> C_s -> kC_t -> kC_t (3x3 convs, BatchNorm by default, LeakyReLU 0.1)."""

    def __init__(self, channels: int, factor_channels: int, dims: int, bn: bool = True) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(*_conv_block(dims, c, c, bn), *_conv_block(dims, c, k, bn),
                                     *_conv_block(dims, k, k, bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def factor_vector(f: torch.Tensor, mode: str = "attention") -> torch.Tensor:
    """Normalised factor, shape (B, D). ``attention``: L2-normalise(mean over channels of f^2) (RepDistiller);
    ``flat``: L2-normalise(the flattened factor) (the paper's Eq. 3)."""
    v = f.pow(2).mean(1) if mode == "attention" else f
    return F.normalize(v.flatten(1), p=2, dim=1)


@LOSSES.register("ft", description="factor transfer: L1 between paraphrased teacher and translated student factors")
class FactorTransfer(LossTerm):
    """Factor transfer (Kim, Park & Kwak, "Paraphrasing Complex Network", NeurIPS 2018, arXiv 1802.04977).

    A paraphraser P (auto-encoder on the teacher's ``feat[-2]``, factor channels k * C_t with rate k) is
    first trained to reconstruct that map: L_rec = mean (P_dec(P_enc(f_t)) - f_t)^2. Then a translator T
    maps the student's ``feat[-2]`` to factor space and

        L_FT = mean over (B, positions) of |phi(T(f_s)) - phi(P_enc(f_t))|,

    phi(F) = L2-normalise(mean over channels of F^2) per sample (RepDistiller ``distiller_zoo/FT.py``,
    p1 = 2, p2 = 1), after pooling the larger factor map to the smaller's size.

    In a pre-training stage (``batch.stage`` set) the term returns L_rec; in the main stage L_FT, with
    the paraphraser frozen: it runs in eval mode under no_grad, so only the translator (and the student)
    learns from it. RepDistiller's main loop also keeps the paraphraser in eval mode and out of the
    optimiser.

    Paper vs code: the paper compares the normalised factors themselves (phi(F) = F / ||vec F||_2,
    p = 1), while RepDistiller compares channel means of their squares, as attention transfer does;
    ``factor="flat"`` selects the paper's phi, ``"attention"`` (default) the reference's. Both reduce by a
    mean, to which the CIFAR-100 weight 200 (RepDistiller ``-b 200``, CE 1) is tuned; with the
    ``attention`` factor the term shrinks as 1 / sqrt(positions), so maps smaller than 8x8 want less.

    student_feature / teacher_feature: the maps used (default ``stage-1``: RepDistiller's ``feat[-2]``; an
        integer ``i`` reads as ``stage<i>``).
    rate: k, the paraphraser's factor channels as a fraction of the teacher's (0.5, as the reference).
    paraphraser_bn / translator_bn: BatchNorm after each conv (reference: off / on).

    Preset ``ft``: the 30-epoch ``init`` stage trains only the paraphraser (``ft.paraphraser``), student
    in eval mode, at lr 0.01: RepDistiller uses 0.01 for resnet/wrn students and ``--learning_rate``
    otherwise (0.05 for vgg, 0.01 for MobileNet/ShuffleNet); set ``method.stages.init.lr`` per config.
    """

    def __init__(self, student_feature: str | int = "stage-1", teacher_feature: str | int = "stage-1",
                 rate: float = 0.5,
                 factor: Literal["attention", "flat"] = "attention", paraphraser_bn: bool = False,
                 translator_bn: bool = True) -> None:
        super().__init__()
        if rate <= 0:
            raise ValueError(f"ft: rate must be positive, got {rate}")
        if factor not in ("attention", "flat"):
            raise ValueError(f"ft: factor must be 'attention' (RepDistiller) or 'flat' (the paper), got {factor!r}")
        self.student_features = (feature_name("ft", student_feature, option="student_feature"),)
        self.teacher_features = (feature_name("ft", teacher_feature, option="teacher_feature"),)
        self.rate = rate
        self.factor = factor
        self.paraphraser_bn = paraphraser_bn
        self.translator_bn = translator_bn
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def setup(self, ctx: SetupContext) -> None:
        s_shape, t_shape = (tuple(ctx.student_shapes[self.student_features[0]]),
                            tuple(ctx.teacher_shapes[self.teacher_features[0]]))
        dims = require_maps("ft", {f"{self.student_features[0]}/{self.teacher_features[0]}": (s_shape, t_shape)})
        k = int(t_shape[1] * self.rate)
        if k < 1:
            raise ValueError(f"ft: rate {self.rate} leaves no factor channels for a teacher map of "
                             f"{t_shape[1]} channels")
        self.paraphraser = Paraphraser(t_shape[1], k, dims, bn=self.paraphraser_bn)
        self.translator = Translator(s_shape[1], k, dims, bn=self.translator_bn)

    def teacher_factor(self, f_t: torch.Tensor) -> torch.Tensor:
        """The frozen paraphraser's encoding of a teacher map (eval mode, no gradient)."""
        was_training = self.paraphraser.training
        self.paraphraser.eval()
        try:
            with torch.no_grad():
                return self.paraphraser.encoder(f_t)
        finally:
            self.paraphraser.train(was_training)

    def forward(self, batch: Batch) -> torch.Tensor | dict[str, torch.Tensor]:
        f_t = batch.teacher.features[self.teacher_features[0]]
        if batch.stage is not None:
            _, rec = self.paraphraser(f_t)
            return {"reconstruction": F.mse_loss(_at_least_fp32(rec), _at_least_fp32(f_t))}
        factor_s = self.translator(batch.student.features[self.student_features[0]])
        factor_s, factor_t = match_spatial(_at_least_fp32(factor_s), _at_least_fp32(self.teacher_factor(f_t)))
        return (factor_vector(factor_s, self.factor) - factor_vector(factor_t, self.factor)).abs().mean()


# -------------------------------------------------------------------------------------------- presets

register_method(
    "fsp",
    "FSP: 30 init epochs fit the student body to the teacher's FSP matrices, then CE only",
    {"ce": ("ce", 1.0), "fsp": ("fsp", 0.0)},
    reference="Yim et al. 2017; RepDistiller --distill fsp -a 0 -b 50 (b unused), helper/pretrain.py",
    stages=(StageSpec("init", INIT_EPOCHS, {"fsp": 1.0}, train=("student_body",)),),
)
register_method(
    "ab",
    "AB: 30 init epochs fit connectors + student body to activation boundaries, then CE only",
    {"ce": ("ce", 1.0), "ab": ("ab", 0.0)},
    reference="Heo et al. 2019 (arXiv 1811.03233); RepDistiller --distill abound, helper/pretrain.py",
    stages=(StageSpec("init", INIT_EPOCHS, {"ab": 1.0}, train=("ab", "student_body")),),
)
register_method(
    "ft",
    "FT: 30 epochs pre-train a paraphraser on the teacher, then CE + 200 x factor transfer",
    {"ce": ("ce", 1.0), "ft": ("ft", 200.0)},
    reference="Kim et al. 2018 (arXiv 1802.04977); RepDistiller --distill factor -a 0 -b 200",
    stages=(StageSpec("init", INIT_EPOCHS, {"ft": 1.0}, train=("ft.paraphraser",), lr=FT_INIT_LR,
                      student_mode="eval"),),
)
