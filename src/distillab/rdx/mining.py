"""RDX mining at data-set scale: per-sample positives, negative pools and confusion scores, blockwise.

For every sample i, from its row of the RDX affinities (teacher = model 0, student = model 1; see
:mod:`distillab.rdx.affinity`) against M anchors, j != i:

- ``positive``: argmax_j A01_ij, the strongest teacher-unique neighbour (the one positive of the RDD code);
- ``negative_pool``: the top-K j by A10_ij, the samples the student merges with i and the teacher does not
  (RDD's ``neg_pool_k``; its loss draws negatives from this pool);
- ``confusion``: c_i = mean_j (A01_ij + A10_ij) = mean_j 2 cosh(beta Delta10_ij) >= 2 (the RDD code's
  per-sample weight, w_i = c_i / mean(c));
- ``kna``: the sum of the top-k A01_ij (RDD's difficulty score for its easy-first curriculum, k = 8).

Ties (frequent: ranks are integers and tanh saturates) go to the lowest sample index, and the pool is
ordered by decreasing A10 then increasing index, so a result never depends on the sort algorithm. The
N x N matrices are never held: each block of rows costs a few (block x M) temporaries, about 0.5 GB for
block 512 and M = 50,000 anchors; the result's pools are N x pool_k int64 (0.4 GB for N = 50,000).
Measured (``benchmarks/rdx_scale.py``, ``docs/results/rdx_scale_cpu.json``, 2 shared CPU cores): N = 10,000
in 8-20 s (depending on the machine's load) at about 0.55 GB peak resident memory; N = 50,000 in about
4 minutes at 1.2 GB, or 39 s against 10,000 random anchors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from distillab.rdx.affinity import (BETA_DEFAULT, GAMMA_DEFAULT, MODES, affinities_from_difference, difference,
                                    resolve_gamma)
from distillab.rdx.ranks import MAX_FLOAT_RANK_COLUMNS, row_ranks

POOL_K_DEFAULT = 1024  # RDD's neg_pool_k = min(1024, nce_k)
KNA_K_DEFAULT = 8  # RDD's kna_k
ANCHOR_SEED_DEFAULT = 42  # RDD's seed for rdx_anchor_n


@dataclass
class MiningResult:
    """What one RDX mining pass gives each of the N samples (indices are sample indices)."""

    positive: Tensor  # (N,) long: argmax over j != i of A01_ij, lowest index on ties
    negative_pool: Tensor  # (N, K) long: top-K j != i by A10_ij, by decreasing A10 then increasing index
    confusion: Tensor  # (N,) float32: mean over j != i of A01_ij + A10_ij (>= 2)
    kna: Tensor  # (N,) float32: sum of the top-k A01_ij over j != i
    gamma: float  # the gamma used (after resolving "auto")
    beta: float
    anchor_index: Tensor | None = None  # (M,) long, ascending: the anchor samples; None when all N were

    def weights(self) -> Tensor:
        """Per-sample loss weights w_i = c_i / mean(c): average 1, larger where the models disagree more."""
        return self.confusion / self.confusion.mean()

    def to(self, device: torch.device | str) -> MiningResult:
        """The same result with its tensors on ``device``."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **{name: value.to(device) for name, value in tensors.items()})


def select_anchors(n: int, anchors: int | None, seed: int = ANCHOR_SEED_DEFAULT) -> Tensor | None:
    """``anchors`` sample indices drawn without replacement with ``seed`` (ascending, on CPU); None for all n."""
    if anchors is None or anchors >= n:
        return None
    if anchors < 2:
        raise ValueError(f"at least 2 anchors are needed, got {anchors}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:anchors].sort().values


def _top_k_by_value_then_index(values: Tensor, k: int, rows: Tensor, self_cols: Tensor) -> Tensor:
    """Columns of the k largest non-negative ``values`` per row, excluding (rows, self_cols); ties by lowest column.

    The float32 bit pattern of a non-negative float is in value order as an integer, so
    bits * M + (M - 1 - column) is a unique int64 key in the wanted order, and topk on it is deterministic.
    """
    m = values.shape[1]
    key = values.view(torch.int32).to(torch.int64).mul_(m)
    key.add_(torch.arange(m - 1, -1, -1, device=values.device))
    key[rows, self_cols] = -1
    return key.topk(k, dim=1).indices


def _check_inputs(x_teacher: Tensor, x_student: Tensor, mode: str, block: int) -> None:
    if x_teacher.dim() != 2 or x_student.dim() != 2 or x_teacher.shape[0] != x_student.shape[0]:
        raise ValueError("teacher and student features must be (N, d_t) and (N, d_s) over the same N samples, "
                         f"got {tuple(x_teacher.shape)} and {tuple(x_student.shape)}")
    if x_teacher.shape[0] < 2:
        raise ValueError("mining needs at least 2 samples")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")


@torch.no_grad()
def mine(x_teacher: Tensor, x_student: Tensor, *, gamma: float | str = GAMMA_DEFAULT, beta: float = BETA_DEFAULT,
         mode: str = "local", pool_k: int = POOL_K_DEFAULT, kna_k: int = KNA_K_DEFAULT, anchors: int | None = None,
         seed: int = ANCHOR_SEED_DEFAULT, block: int = 512,
         progress: Callable[[int, int], None] | None = None) -> MiningResult:
    """Positives, negative pools, confusion and KNA scores of N samples from teacher and student features.

    Args:
        x_teacher, x_student: (N, d_t) and (N, d_s) features of the same samples (the RDD code uses the
            raw pooled penultimate features); computed in float32 on ``x_teacher``'s device. Ranks need
            full-precision distances: on CUDA keep TF32 matmuls off (torch's default).
        gamma: the locally-biased difference's gain, or ``"auto"`` = 80 / M (RDX's fallback, M = number of
            anchors: the scale of the ranks). Not used by ``mode="standard"``.
        beta: the affinity exponent (RDX and RDD code: 5; the RDD blog states 0.8, see ``BETA_BLOG``).
        mode: ``"local"`` (RDX's locally-biased difference) or ``"standard"`` (rank difference over its
            absolute maximum; costs a second pass, for that maximum).
        pool_k, kna_k: sizes of the negative pool and of the KNA sum, capped at M - 1.
        anchors: rank every sample against this many random anchor samples (RDD's ``rdx_anchor_n``) drawn
            with ``seed``; None (or >= N): against all N samples.
        block: rows per block; the temporaries are a few (block x M) tensors.
        progress: called as progress(rows_done, N) after each block (one pass; two for "standard").
    """
    _check_inputs(x_teacher, x_student, mode, block)
    device = x_teacher.device
    xt = x_teacher.detach().to(torch.float32)
    xs = x_student.detach().to(device, torch.float32)
    n = xt.shape[0]

    anchor_index = select_anchors(n, anchors, seed)
    if anchor_index is None:
        at, as_ = xt, xs
        self_col = torch.arange(n, device=device)
    else:
        anchor_index = anchor_index.to(device)
        at, as_ = xt[anchor_index], xs[anchor_index]
        self_col = torch.full((n,), -1, dtype=torch.long, device=device)
        self_col[anchor_index] = torch.arange(len(anchor_index), device=device)
    m = at.shape[0]
    if m > MAX_FLOAT_RANK_COLUMNS:
        raise ValueError(f"at most {MAX_FLOAT_RANK_COLUMNS} anchors are supported, got {m}")
    gamma = resolve_gamma(gamma, m)
    k_pool, k_kna = min(pool_k, m - 1), min(kna_k, m - 1)
    if k_pool < 1 or k_kna < 1:
        raise ValueError(f"pool_k and kna_k must be at least 1, got {pool_k} and {kna_k}")
    at_sq, as_sq = at.pow(2).sum(1), as_.pow(2).sum(1)

    def block_ranks(start: int, end: int) -> tuple[Tensor, Tensor]:
        cols = self_col[start:end]
        r0 = row_ranks(xt[start:end], at, at_sq, cols, dtype=torch.float32)
        r1 = row_ranks(xs[start:end], as_, as_sq, cols, dtype=torch.float32)
        return r1, r0

    abs_max = None
    if mode == "standard":  # the global max |R1 - R0| first
        abs_max = torch.zeros((), device=device)
        for start in range(0, n, block):
            end = min(start + block, n)
            r1, r0 = block_ranks(start, end)
            abs_max = torch.maximum(abs_max, r1.sub_(r0).abs_().max())
            if progress is not None:
                progress(end, n)

    positive = torch.empty(n, dtype=torch.long, device=device)
    pool = torch.empty(n, k_pool, dtype=torch.long, device=device)
    confusion = torch.empty(n, device=device)
    kna = torch.empty(n, device=device)
    for start in range(0, n, block):
        end = min(start + block, n)
        r1, r0 = block_ranks(start, end)
        delta = difference(r1, r0, mode, gamma, abs_max, overwrite=True)
        del r1, r0
        a01, a10 = affinities_from_difference(delta, beta, overwrite=True)
        del delta

        cols = self_col[start:end]
        rows = torch.nonzero(cols >= 0).squeeze(1)
        cols = cols[rows]
        # self contributes nothing to the sums, and is never picked
        a01[rows, cols] = 0.0
        a10[rows, cols] = 0.0
        others = torch.full((end - start,), float(m), device=device)
        others[rows] -= 1.0
        confusion[start:end] = (a01.sum(1) + a10.sum(1)) / others
        kna[start:end] = a01.topk(k_kna, dim=1, sorted=False).values.sum(1)
        block_pool = _top_k_by_value_then_index(a10, k_pool, rows, cols)
        del a10
        a01[rows, cols] = -1.0  # below any affinity, even one that underflowed to 0
        block_positive = a01.argmax(1)  # argmax returns the first maximum: lowest index on ties
        del a01
        if anchor_index is not None:  # anchor columns back to sample indices
            block_pool, block_positive = anchor_index[block_pool], anchor_index[block_positive]
        pool[start:end], positive[start:end] = block_pool, block_positive
        if progress is not None:
            progress(end, n)

    return MiningResult(positive=positive, negative_pool=pool, confusion=confusion, kna=kna, gamma=gamma,
                        beta=float(beta), anchor_index=anchor_index)
