"""RDX differences and directional affinities (Kondapaneni et al. 2025, arXiv 2505.23917; nkondapa/RDX).

Model 0 is the teacher and model 1 the student (the knowledge-distillation orientation of the RDD blog):

    Delta10_ij = tanh(gamma * (R1_ij - R0_ij) / (min(R0_ij, R1_ij) + 1))     ("local", locally biased)
    Delta10_ij = (R1_ij - R0_ij) / max_ij |R1_ij - R0_ij|                    ("standard")
    A10 = exp(-beta * Delta10)   student-unique: j is nearer to i in the student than in the teacher
    A01 = exp(+beta * Delta10)   teacher-unique: j is nearer to i in the teacher than in the student

with R0, R1 the neighbour ranks (:mod:`distillab.rdx.ranks`) in the teacher and the student. A pair the
teacher holds close and the student far has Delta10 > 0, so A01 > 1 > A10. Values lie in
[exp(-beta), exp(beta)]; neither matrix is symmetric.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distillab.rdx.ranks import neighbour_ranks

# The RDD blog states "for the RDX diagnostic we set gamma = 0.1, beta = 0.8", but its authors' code and
# the RDX code use beta = 5 for the affinity exponent; 0.8 is also the blog's weight of the RDD loss term,
# so the blog's beta may be a slip. The code's value is the default; the blog's is kept under its name.
BETA_DEFAULT = 5.0
BETA_BLOG = 0.8
# gamma of the RDD code and of RDX's MNIST/CUB configs; RDX without a configured gamma uses 80 / N. Ranks
# grow with the number of anchors (RDX compares 500 images, RDD 50,000), so a fixed gamma is not
# scale-equivalent across N; "auto" keeps gamma * rank scale constant.
GAMMA_DEFAULT = 0.1
GAMMA_AUTO_SCALE = 80.0
MODES = ("local", "standard")


def resolve_gamma(gamma: float | str, n: int) -> float:
    """``gamma`` as a float: a number as is, ``"auto"`` -> 80 / n (RDX's fallback; n = rank columns)."""
    if isinstance(gamma, str):
        if gamma == "auto":
            if n < 1:
                raise ValueError(f"gamma 'auto' needs a positive number of columns, got {n}")
            return GAMMA_AUTO_SCALE / n
        raise ValueError(f"gamma must be a number or 'auto', got {gamma!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise ValueError(f"gamma must be a number or 'auto', got {gamma!r}")
    return float(gamma)


def local_difference(r1: Tensor, r0: Tensor, gamma: float, overwrite: bool = False) -> Tensor:
    """RDX's locally-biased difference tanh(gamma (r1 - r0) / (min(r0, r1) + 1)), float32.

    A rank disagreement among near neighbours (small ranks) counts far more than the same disagreement
    among distant samples. ``overwrite``: ``r1`` and ``r0`` are float32 ranks that may be overwritten
    (the result then lives in ``r0``'s storage, and no (B x M) temporary is allocated).
    """
    if overwrite and r1.dtype == r0.dtype == torch.float32:
        # Ranks are integers below 2**24, so these float32 steps are exact: the same bits as below.
        diff = r0.sub_(r1).neg_()  # r1 - r0
        denom = r1.sub_(diff.clamp_min(0.0)).add_(1.0)  # r1 - max(r1 - r0, 0) = min(r1, r0)
    else:
        r1, r0 = r1.float(), r0.float()
        denom = torch.minimum(r1, r0).add_(1.0)
        diff = r1 - r0
    return diff.mul_(gamma).div_(denom).tanh_()


def standard_difference(r1: Tensor, r0: Tensor, abs_max: Tensor | float | None = None,
                        overwrite: bool = False) -> Tensor:
    """RDX's ``standard`` difference (r1 - r0) / max|r1 - r0|, float32; all zeros when r1 == r0 everywhere.

    ``abs_max``: the maximum over the whole matrix when ``r1``, ``r0`` are one block of it (default: over
    the given tensors). ``overwrite``: float32 ``r0`` may be overwritten with the result.
    """
    if overwrite and r1.dtype == r0.dtype == torch.float32:
        diff = r0.sub_(r1).neg_()
    else:
        diff = r1.float() - r0.float()
    if abs_max is None:
        abs_max = diff.abs().max() if diff.numel() else 0.0
    if float(abs_max) == 0.0:
        return diff.zero_()
    return diff.div_(abs_max)


def difference(r1: Tensor, r0: Tensor, mode: str = "local", gamma: float = GAMMA_DEFAULT,
               abs_max: Tensor | float | None = None, overwrite: bool = False) -> Tensor:
    """Delta10 of ``mode`` ("local" uses ``gamma``, "standard" uses ``abs_max``)."""
    if mode == "local":
        return local_difference(r1, r0, gamma, overwrite)
    if mode == "standard":
        return standard_difference(r1, r0, abs_max, overwrite)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def affinities_from_difference(delta10: Tensor, beta: float = BETA_DEFAULT,
                               overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """(A01, A10) = (exp(beta Delta10), exp(-beta Delta10)): teacher-unique, student-unique.

    ``overwrite``: A10 is computed in ``delta10``'s storage.
    """
    a01 = torch.exp(delta10 * beta)
    a10 = delta10.mul_(-beta).exp_() if overwrite else torch.exp(delta10 * -beta)
    return a01, a10


@torch.no_grad()
def rdx_affinities(x_teacher: Tensor, x_student: Tensor, gamma: float | str = GAMMA_DEFAULT,
                   beta: float = BETA_DEFAULT, mode: str = "local") -> tuple[Tensor, Tensor]:
    """Full (N, N) affinities (A01, A10) of teacher features (N, d_t) and student features (N, d_s).

    For small N (explanation figures, N up to a few thousand): four N x N matrices are held at once.
    ``gamma``: a number or ``"auto"`` (80 / N). The diagonal is exp(0) = 1.
    """
    if x_teacher.dim() != 2 or x_student.dim() != 2 or x_teacher.shape[0] != x_student.shape[0]:
        raise ValueError("teacher and student features must be (N, d_t) and (N, d_s) over the same N samples, "
                         f"got {tuple(x_teacher.shape)} and {tuple(x_student.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    gamma = resolve_gamma(gamma, x_teacher.shape[0])
    r0 = neighbour_ranks(x_teacher)
    r1 = neighbour_ranks(x_student.to(x_teacher.device))
    return affinities_from_difference(difference(r1, r0, mode, gamma), beta)
