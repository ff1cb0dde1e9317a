"""Relation-based terms: the student matches how the teacher relates the samples of a batch to each other
(RKD's distances and angles, SP's similarity matrix, PKT's similarity distributions, CC's correlations).

The relational quantities are computed in fp32 with autocast off (a bf16 Gram matrix of a 16k-dimensional
map loses the differences the loss is made of); the teacher's side runs under ``no_grad``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from distillab.features import feature_name
from distillab.losses.base import LOSSES, Batch, LossTerm, SetupContext
from distillab.losses.common import Embed
from distillab.methods import register_method

PDIST_EPS = 1e-12  # RKD: squared distances are clamped here before the square root (RepDistiller's pdist)
PKT_EPS = 1e-7  # PKT: added to the norms and inside the log (RepDistiller's PKT)


def _flat_fp32(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D), upcast to at least fp32 (fp64 stays fp64)."""
    return x.flatten(1).to(torch.promote_types(x.dtype, torch.float32))


def _full_precision(x: torch.Tensor):
    """Autocast off on the tensor's device, so matrix products run in the inputs' precision."""
    try:
        return torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to turn off
        return contextlib.nullcontext()


def _check_batch(method: str, s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{method}: student batch {s.shape[0]} and teacher batch {t.shape[0]} differ")


# ---------------------------------------------------------------------------- RKD


def _differences(x: torch.Tensor) -> torch.Tensor:
    """diff[i, j] = x[j] - x[i], shape (B, B, D)."""
    return x.unsqueeze(0) - x.unsqueeze(1)


def _normalised_distances(diff: torch.Tensor) -> torch.Tensor:
    """Euclidean distances, sqrt(max(d^2, 1e-12)) off the diagonal and 0 on it, divided by the mean of the
    non-zero entries. Squared distances are summed from the differences (no |a|^2 + |b|^2 - 2ab cancellation)."""
    b = diff.shape[0]
    d = diff.pow(2).sum(-1).clamp_min(PDIST_EPS).sqrt()
    d = d.masked_fill(torch.eye(b, dtype=torch.bool, device=d.device), 0.0)
    mean = d.sum() / (d > 0).sum().clamp_min(1)
    return d / mean.clamp_min(torch.finfo(d.dtype).tiny)  # B = 1: all zero, stays zero


def _angles(diff: torch.Tensor) -> torch.Tensor:
    """cos of the angle at i between j and k: <e_ij, e_ik> with e_ij = normalise(x_j - x_i), shape (B, B, B)."""
    e = F.normalize(diff, p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_parts(student: torch.Tensor, teacher: torch.Tensor, angle: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (distance, angle) losses of RKD on (B, ...) features; smooth-L1 means over all entries."""
    _check_batch("rkd", student, teacher)
    with _full_precision(student):
        s = _differences(_flat_fp32(student))
        with torch.no_grad():
            t = _differences(_flat_fp32(teacher.detach()))
            t_dist = _normalised_distances(t)
            t_angle = _angles(t) if angle else None
        loss_d = F.smooth_l1_loss(_normalised_distances(s), t_dist)
        loss_a = F.smooth_l1_loss(_angles(s), t_angle) if angle else loss_d.new_zeros(())
    return loss_d, loss_a


@LOSSES.register("rkd", description="Relational KD: pairwise distances and triplet angles of the embeddings")
class RKD(LossTerm):
    """Relational Knowledge Distillation (Park, Kim, Lu & Cho 2019, arXiv 1904.05068).

    On the pooled embeddings f (flattened to (B, D)):

    - distance: psi_D(i, j) = ||f_i - f_j|| / mu, mu the mean of the non-zero distances in the batch;
      L_D = mean over all B^2 pairs (diagonal included) of smooth_L1(psi_D^s, psi_D^t).
    - angle: e_ij = (f_j - f_i) / ||f_j - f_i||, psi_A(i, j, k) = <e_ij, e_ik>; L_A = mean over all B^3
      triplets (degenerate ones included) of smooth_L1(psi_A^s, psi_A^t).
    - L = w_dist * L_D + w_angle * L_A, returned as the parts ``distance`` and ``angle`` (already weighted).

    Reference defaults (RepDistiller ``distiller_zoo/RKD.py``, input ``feat[-1]``, our ``"embedding"``):
    w_dist 25, w_angle 50, distances sqrt(max(d^2, 1e-12)) with a zeroed diagonal; CIFAR-100 weight 1
    next to CE 1 (``scripts/run_cifar_distill.sh``: ``-a 0 -b 1``). The paper's metric-learning weights
    are 1 and 2; the CIFAR numbers come from the code's 25 / 50. We sum squared distances from the
    differences instead of |a|^2 + |b|^2 - 2<a, b>: the same value without the cancellation error.

    feature: the feature compared (any feature name, an integer ``i`` reads as ``stage<i>``; maps are flattened).
    """

    def __init__(self, w_dist: float = 25.0, w_angle: float = 50.0, feature: str | int = "embedding") -> None:
        super().__init__()
        if w_dist < 0 or w_angle < 0:
            raise ValueError(f"w_dist and w_angle must be non-negative, got {w_dist} and {w_angle}")
        self.w_dist, self.w_angle, self.feature = w_dist, w_angle, feature_name("rkd", feature)
        self.student_features = self.teacher_features = (self.feature,)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss_d, loss_a = rkd_parts(batch.student.features[self.feature], batch.teacher.features[self.feature],
                                   angle=self.w_angle > 0)
        return {"distance": self.w_dist * loss_d, "angle": self.w_angle * loss_a}


# ---------------------------------------------------------------------------- SP


def _row_normalised_gram(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f @ f.t(), p=2, dim=1)


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G_t - G_s||_F^2 / B^2, G = f f^T of the flattened features with rows L2-normalised."""
    _check_batch("sp", student, teacher)
    b = student.shape[0]
    with _full_precision(student):
        with torch.no_grad():
            g_t = _row_normalised_gram(_flat_fp32(teacher.detach()))
        g_s = _row_normalised_gram(_flat_fp32(student))
        return (g_t - g_s).pow(2).sum() / (b * b)


@LOSSES.register("sp", description="Similarity-preserving KD: match the batch's row-normalised Gram matrices")
class SP(LossTerm):
    """Similarity-Preserving Knowledge Distillation (Tung & Mori 2019, arXiv 1907.09682).

    G = f f^T for the (B, D) flattening of a feature map, each row L2-normalised;
    L = ||G_t - G_s||_F^2 / B^2. Only batch-by-batch similarities are compared, so the two maps may differ
    in channels and size, and 1-D maps (B, C, L) work as 2-D ones do.

    Reference defaults (RepDistiller ``distiller_zoo/SP.py``, applied to ``feat[-2]``, the last residual
    stage: our ``"stage-1"``): CIFAR-100 weight 3000 next to CE 1 (``-a 0 -b 3000``). The paper sums the
    loss over several layer pairs; RepDistiller (and this preset) uses the last stage only; ``feature``
    picks another (any feature name; an integer ``i`` reads as ``stage<i>``). RepDistiller returns a
    1-element tensor; this returns a scalar.
    """

    def __init__(self, feature: str | int = "stage-1") -> None:
        super().__init__()
        self.feature = feature_name("sp", feature)
        self.student_features = self.teacher_features = (self.feature,)

    def forward(self, batch: Batch) -> torch.Tensor:
        return sp_loss(batch.student.features[self.feature], batch.teacher.features[self.feature])


# ---------------------------------------------------------------------------- PKT


def _similarity_distribution(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Cosine similarities mapped to [0, 1] by (s + 1) / 2, each row divided by its sum (diagonal included)."""
    # vector_norm's gradient is 0 at a zero vector, where sqrt(sum(x^2)) would give NaN
    f = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + eps)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    """mean over all B^2 entries of P_t * log((P_t + eps) / (P_s + eps))."""
    _check_batch("pkt", student, teacher)
    with _full_precision(student):
        with torch.no_grad():
            p_t = _similarity_distribution(_flat_fp32(teacher.detach()), eps)
        p_s = _similarity_distribution(_flat_fp32(student), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@LOSSES.register("pkt", description="Probabilistic KT: KL between the batch's cosine-similarity distributions")
class PKT(LossTerm):
    """Probabilistic Knowledge Transfer (Passalis & Tefas 2018, ECCV; arXiv 1803.10837).

    x <- x / (||x|| + eps); K_ij = (<x_i, x_j> + 1) / 2; P_ij = K_ij / sum_k K_ik (diagonal included);
    L = mean over all B^2 entries of P_t,ij * log((P_t,ij + eps) / (P_s,ij + eps)), eps = 1e-7.

    Reference defaults (RepDistiller ``distiller_zoo/PKT.py``, the authors' code, on ``feat[-1]``: our
    ``"embedding"``): eps 1e-7 in the norms and inside the log; the mean over B^2 entries rather than a
    sum; CIFAR-100 weight 30000 next to CE 1 (``-a 0 -b 30000``). The paper's conditional probabilities
    leave out k = i; the code keeps the diagonal, as we do. The code also zeroes NaNs after normalising,
    which only NaN inputs produce; here NaN inputs give a NaN loss, which the trainer reports.

    feature: the feature compared (any feature name, an integer ``i`` reads as ``stage<i>``; maps are flattened).
    """

    def __init__(self, eps: float = PKT_EPS, feature: str | int = "embedding") -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps, self.feature = eps, feature_name("pkt", feature)
        self.student_features = self.teacher_features = (self.feature,)

    def forward(self, batch: Batch) -> torch.Tensor:
        return pkt_loss(batch.student.features[self.feature], batch.teacher.features[self.feature], self.eps)


# ---------------------------------------------------------------------------- CC


def cc_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """With delta = |f_s - f_t| (B, D): mean over i < B - 1 of sum_d delta_i,d * delta_{i+1},d (0 for B = 1)."""
    _check_batch("cc", student, teacher)
    delta = (_flat_fp32(student) - _flat_fp32(teacher)).abs()
    return (delta[:-1] * delta[1:]).sum() / max(delta.shape[0] - 1, 1)


@LOSSES.register("cc", description="Correlation congruence: products of consecutive samples' embedding gaps")
class CC(LossTerm):
    """Correlation Congruence for Knowledge Distillation (Peng et al. 2019, arXiv 1904.01802), as
    RepDistiller computes it.

    Linear heads (no normalisation, RepDistiller's ``LinearEmbed``) map the student's and the teacher's
    pooled embeddings to ``feat_dim``; with delta_i = |h_s(f_s,i) - h_t(f_t,i)|:
    L = (1 / (B - 1)) * sum_{i < B-1} sum_d delta_i,d * delta_{i+1},d.

    Only consecutive samples are paired, so **the order of the batch matters**: the same samples in
    another order give another loss (shuffled loaders make the pairs random). Both heads are trained
    (RepDistiller puts both in its optimiser); the teacher network itself is not.

    Reference defaults (RepDistiller ``distiller_zoo/CC.py`` with ``train_student.py``: ``LinearEmbed`` on
    ``feat[-1]``, ``--feat_dim`` 128): CIFAR-100 weight 0.02 next to CE 1 (``-a 0 -b 0.02``).
    Paper vs code: the paper matches B x B correlation matrices built with a Taylor-expanded Gaussian
    kernel (plus an instance-level KD term); the code, sent to RepDistiller by the authors, computes the
    consecutive-pair product above. We follow the code, whose numbers the CIFAR-100 tables report.

    feature: the feature embedded (any feature name, an integer ``i`` reads as ``stage<i>``; maps are flattened).
    """

    def __init__(self, feat_dim: int = 128, feature: str | int = "embedding") -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be a positive integer, got {feat_dim}")
        self.feat_dim, self.feature = feat_dim, feature_name("cc", feature)
        self.student_features = self.teacher_features = (self.feature,)

    def setup(self, ctx: SetupContext) -> None:
        d_s = math.prod(ctx.student_shapes[self.feature][1:])
        d_t = math.prod(ctx.teacher_shapes[self.feature][1:])
        self.embed_s = Embed(d_s, self.feat_dim, normalize=False)
        self.embed_t = Embed(d_t, self.feat_dim, normalize=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        if not hasattr(self, "embed_s"):
            raise RuntimeError("cc: setup(ctx) builds the heads and must run before the first forward")
        return cc_loss(self.embed_s(batch.student.features[self.feature]),
                       self.embed_t(batch.teacher.features[self.feature]))


# ---------------------------------------------------------------------------- presets

register_method(
    "rkd",
    "Relational KD: CE + 25 x distance + 50 x angle smooth-L1 on the embeddings (RepDistiller's preset)",
    {"ce": ("ce", 1.0), "rkd": ("rkd", 1.0, {"w_dist": 25.0, "w_angle": 50.0})},
    reference="Park et al. 2019 (arXiv 1904.05068); RepDistiller distiller_zoo/RKD.py, --distill rkd -a 0 -b 1",
)
register_method(
    "sp",
    "Similarity-preserving KD: CE + 3000 x Gram-matrix MSE on the last stage (RepDistiller's preset)",
    {"ce": ("ce", 1.0), "sp": ("sp", 3000.0)},
    reference="Tung & Mori 2019 (arXiv 1907.09682); RepDistiller distiller_zoo/SP.py, --distill similarity -b 3000",
)
register_method(
    "pkt",
    "Probabilistic KT: CE + 30000 x KL of cosine-similarity distributions (RepDistiller's preset)",
    {"ce": ("ce", 1.0), "pkt": ("pkt", 30000.0)},
    reference="Passalis & Tefas 2018 (arXiv 1803.10837); RepDistiller distiller_zoo/PKT.py, --distill pkt -b 30000",
)
register_method(
    "cc",
    "Correlation congruence: CE + 0.02 x consecutive-sample products of 128-d head gaps (RepDistiller)",
    {"ce": ("ce", 1.0), "cc": ("cc", 0.02, {"feat_dim": 128})},
    reference="Peng et al. 2019 (arXiv 1904.01802); RepDistiller distiller_zoo/CC.py, --distill correlation -b 0.02",
)
