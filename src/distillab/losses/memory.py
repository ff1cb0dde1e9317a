"""Momentum memory banks and the NCE loss of CRD (Tian, Krishnan & Isola 2020, arXiv 1910.10699).

The pieces are separate so that a method can reuse them with its own contrast indices: a
:class:`ContrastMemory` scores anchors against the other side's bank at given indices (B, K + 1)
(column 0 the positive) and returns log-probabilities; :func:`nce_per_anchor` turns those into one
loss per anchor (B,), before any reduction; :func:`nce_loss` averages them, optionally weighted.

Reference: RepDistiller ``crd/memory.py`` (``ContrastMemory``) and ``crd/criterion.py`` (``ContrastLoss``).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from distillab.core import dist as comm

NCE_EPS = 1e-7  # RepDistiller's eps in the NCE ratios
ANCHORS = ("student", "teacher")


class MomentumMemory(nn.Module):
    """A bank of ``num_rows`` vectors of size ``dim``, one per training sample, never trained by gradient.

    Rows start uniform in +-1/sqrt(dim/3) (about unit length on average, but not normalised: RepDistiller's
    initialisation) and are updated as ``row <- normalise(momentum * row + (1 - momentum) * v)``.
    """

    def __init__(self, num_rows: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("bank", torch.rand(num_rows, dim).mul_(2 * bound).sub_(bound))

    def scores(self, anchors: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Dot products (B, C) of each anchor (B, dim) with the rows ``index`` (B, C), in fp32.

        Differentiable with respect to the anchors only. When scoring every row is cheaper than gathering
        B x C rows (CIFAR: 50k rows against 64 x 16385 gathered), the full (B, N) product is taken and the
        C columns picked; both paths give the same values. The full product keeps a copy of the bank for
        the backward pass, because :meth:`update` changes the bank in place before the backward runs.
        """
        anchors = anchors.float()
        n, d = self.bank.shape
        b, c = index.shape
        if n * (d + b) <= b * c * d:
            bank = self.bank.clone() if anchors.requires_grad else self.bank
            return (anchors @ bank.t()).gather(1, index)
        rows = self.bank[index]  # (B, C, dim): a copy, as RepDistiller's index_select
        return torch.bmm(rows, anchors.unsqueeze(2)).squeeze(2)

    @torch.no_grad()
    def update(self, index: torch.Tensor, values: torch.Tensor) -> None:
        """Momentum update of the rows ``index`` (B,) towards ``values`` (B, dim), then L2 normalisation."""
        rows = self.bank.index_select(0, index).mul_(self.momentum)
        rows.add_(values.detach().float(), alpha=1.0 - self.momentum)
        self.bank.index_copy_(0, index, F.normalize(rows, dim=1))


class ContrastMemory(nn.Module):
    """CRD's two banks (student and teacher embeddings) and the frozen normalisers Z.

    The student anchor v_s is scored against the *teacher* bank and the teacher anchor v_t against the
    *student* bank: P = exp(m . v / T) / Z. Each anchor side has its own Z, set on the first batch it is
    scored on to mean(exp(m . v / T)) * n_data (over the B x (K + 1) scores, positives included) and frozen
    after that; ``-1`` marks it unset. Z is a buffer, so it is checkpointed.
    """

    def __init__(self, num_data: int, dim: int = 128, temperature: float = 0.07, momentum: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_data = num_data
        self.temperature = temperature
        self.student = MomentumMemory(num_data, dim, momentum)  # RepDistiller's memory_v1
        self.teacher = MomentumMemory(num_data, dim, momentum)  # RepDistiller's memory_v2
        self.register_buffer("z_student", torch.tensor(-1.0))  # normaliser of the student anchor's scores
        self.register_buffer("z_teacher", torch.tensor(-1.0))  # normaliser of the teacher anchor's scores
        self._z_frozen: set[str] = set()  # anchor sides whose Z has been set in this process

    def log_probs(self, anchors: torch.Tensor, contrast_index: torch.Tensor, side: str) -> torch.Tensor:
        """log P (B, K + 1) of the ``side`` anchors (B, dim) against the other side's bank at ``contrast_index``.

        Sets that side's Z on its first call (no gradient flows through Z).
        """
        if side not in ANCHORS:
            raise ValueError(f"anchor side must be one of {ANCHORS}, got {side!r}")
        bank = self.teacher if side == "student" else self.student
        z = self.z_student if side == "student" else self.z_teacher
        logits = bank.scores(anchors, contrast_index) / self.temperature
        if side not in self._z_frozen:  # first batch: Z from this batch; later: unchanged
            with torch.no_grad():  # (no host sync to ask which: a loaded Z >= 0 is kept as it is)
                mean = comm.all_reduce_(logits.exp().mean(), "mean")  # the global batch's (equal rank batches)
                z.copy_(torch.where(z < 0, mean * self.num_data, z))
            self._z_frozen.add(side)  # no more per-step work (or, under DDP, collective) for this side
        return logits - z.log()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._z_frozen.clear()  # the loaded Z may be unset (-1): the next batch decides again
        super()._load_from_state_dict(*args, **kwargs)

    def update(self, index: torch.Tensor, v_student: torch.Tensor | None, v_teacher: torch.Tensor | None) -> None:
        """Momentum update of both banks at the anchors' own indices (a side given as None is left alone).

        Under DDP the indices and embeddings of the whole global batch are gathered first, so every rank
        applies the same update and the banks stay identical (and equal to a single process's)."""
        index = comm.gather_cat(index)
        v_student = None if v_student is None else comm.gather_cat(v_student.detach())
        v_teacher = None if v_teacher is None else comm.gather_cat(v_teacher.detach())
        if v_student is not None:
            self.student.update(index, v_student)
        if v_teacher is not None:
            self.teacher.update(index, v_teacher)

    def forward(self, v_student: torch.Tensor, v_teacher: torch.Tensor, index: torch.Tensor,
                contrast_index: torch.Tensor, anchors: Iterable[str] = ANCHORS) -> dict[str, torch.Tensor]:
        """Score the requested anchor sides against the banks as they were before this batch, then update
        both banks at ``index`` (the anchors' own training-set indices). Returns ``{side: log P (B, K + 1)}``."""
        with torch.autocast(device_type=v_student.device.type, enabled=False):
            v = {"student": v_student.float(), "teacher": v_teacher.float()}
            out = {side: self.log_probs(v[side], contrast_index, side) for side in anchors}
            self.update(index, v["student"], v["teacher"])
        return out


def nce_per_anchor(log_p: torch.Tensor, num_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """NCE loss of each anchor (paper Eq. 18, RepDistiller's ``ContrastLoss`` before its batch sum).

    ``log_p`` (B, K + 1): log P of the positive (column 0) and of the K negatives. With the noise
    distribution Pn = 1 / num_data and m = K:

        loss_i = -[log(P_0 / (P_0 + K Pn + eps)) + sum_k log(K Pn / (P_k + K Pn + eps))]

    computed in log space (softplus), which is the same value without forming P.
    """
    k = log_p.shape[1] - 1
    if k < 1:
        raise ValueError("NCE needs at least one negative (contrast indices of shape (B, K + 1) with K >= 1)")
    log_p = log_p.float()
    c = k / num_data
    log_c_eps = math.log(c + eps)
    positive = -F.softplus(log_c_eps - log_p[:, 0])  # log(P / (P + c + eps))
    negatives = (math.log(c) - log_c_eps) - F.softplus(log_p[:, 1:] - log_c_eps)  # log(c / (P + c + eps))
    return -(positive + negatives.sum(dim=1))


def nce_loss(log_p: torch.Tensor, num_data: int, weights: torch.Tensor | None = None,
             eps: float = NCE_EPS) -> torch.Tensor:
    """Batch NCE loss, a scalar: (1/B) sum_i w_i loss_i (w_i = 1 without ``weights`` (B,))."""
    per_anchor = nce_per_anchor(log_p, num_data, eps)
    if weights is not None:
        per_anchor = per_anchor * weights.to(per_anchor)
    return per_anchor.mean()
