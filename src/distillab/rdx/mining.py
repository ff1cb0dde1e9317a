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
ordered by decreasing A10 then increasing index, so a result never depends on the sort algorithm. A row's
results depend only on that row's features and the anchors', so :func:`mine_rows` mines any set of rows
on its own (RDD mines a batch's pools on the fly with it), ``mine(rows=(start, end))`` mines a contiguous
share of the rows (one rank's share under torchrun) and ``need_pool=False`` skips the pools and their
top-K (positives, confusion and KNA only).

The N x N matrices are never held: each block of rows costs a few (block x M) temporaries, about 0.5 GB
for block 512 and M = 50,000 anchors. The result's pools are N x pool_k int64: 0.4 GB for N = 50,000, but
9.8 GiB for ImageNet's 1.28 million samples, which is why RDD can mine them per batch instead. The features
are converted to float32 one block of rows at a time, so float16 features stay float16 in memory.
Measured (``benchmarks/rdx_scale.py``, ``docs/results/rdx_scale_cpu.json``, 2 shared CPU cores): N = 10,000
in 8-20 s (depending on the machine's load) at about 0.55 GB peak resident memory; N = 50,000 in about
4 minutes at 1.2 GB, or 39 s against 10,000 random anchors. N = 1.28 million 512-d float16 features
without pools (``docs/results/rdx_scale_1m_cpu.json``): 9 minutes against 1,024 anchors and 18 against
4,096 on a loaded machine (about 6 estimated for 4,096 on a quiet one), at 2.9 GiB peak, 2.4 GiB of which
are the features; the pools of a batch of 256 rows on their own: 23 ms (1,024 anchors), 77 ms (4,096).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

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
    """What one RDX mining pass gives each of its samples (indices are sample indices).

    The rows are samples ``rows[0]`` to ``rows[1] - 1`` (all N unless ``mine`` was given ``rows``).
    """

    positive: Tensor  # (R,) long: argmax over j != i of A01_ij, lowest index on ties
    negative_pool: Tensor | None  # (R, K) long: top-K j != i by A10_ij, by decreasing A10 then increasing
    # index; None when mined with need_pool=False
    confusion: Tensor  # (R,) float32: mean over j != i of A01_ij + A10_ij (>= 2)
    kna: Tensor  # (R,) float32: sum of the top-k A01_ij over j != i
    gamma: float  # the gamma used (after resolving "auto")
    beta: float
    anchor_index: Tensor | None = None  # (M,) long, ascending: the anchor samples; None when all N were
    abs_max: Tensor | None = None  # mode "standard": the max |R1 - R0| over all N rows that scaled Delta10
    pool_affinity: Tensor | None = None  # (R, K) float32: A10 of each pool member (if asked for)
    rows: tuple[int, int] | None = None  # [start, end) of the mined rows

    def weights(self) -> Tensor:
        """Per-sample loss weights w_i = c_i / mean(c): average 1, larger where the models disagree more."""
        return self.confusion / self.confusion.mean()

    def to(self, device: torch.device | str) -> MiningResult:
        """The same result with its tensors on ``device``."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **{name: value.to(device) for name, value in tensors.items()})


class MinedRows(NamedTuple):
    """What :func:`mine_rows` gives each of its B rows (indices are sample indices)."""

    positive: Tensor  # (B,) long
    pool: Tensor | None  # (B, K) long; None with need_pool=False
    confusion: Tensor  # (B,) float32
    kna: Tensor  # (B,) float32
    pool_affinity: Tensor | None  # (B, K) float32 A10 of the pool members; None unless asked for


def select_anchors(n: int, anchors: int | None, seed: int = ANCHOR_SEED_DEFAULT) -> Tensor | None:
    """``anchors`` sample indices drawn without replacement with ``seed`` (ascending, on CPU); None for all n."""
    if anchors is None or anchors >= n:
        return None
    if anchors < 2:
        raise ValueError(f"at least 2 anchors are needed, got {anchors}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:anchors].sort().values


def anchor_columns(samples: Tensor, anchor_index: Tensor | None) -> Tensor:
    """Each sample's own anchor column (B,) long, -1 where the sample is not an anchor.

    ``anchor_index``: the anchors' sample indices, ascending (as :func:`select_anchors` gives them), on
    ``samples``' device; None when every sample is an anchor (column = sample index).
    """
    samples = samples.long()
    if anchor_index is None:
        return samples
    pos = torch.searchsorted(anchor_index, samples).clamp_max_(len(anchor_index) - 1)
    return torch.where(anchor_index[pos] == samples, pos, torch.full_like(pos, -1))


def anchor_features(x_teacher: Tensor, x_student: Tensor,
                    anchor_index: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(at, as_, at_sq, as_sq): the anchors' float32 features in both models, on ``x_teacher``'s device,
    and their squared norms. ``anchor_index`` None: all samples are anchors."""
    device = x_teacher.device
    if anchor_index is None:
        at, as_ = x_teacher.detach().to(torch.float32), x_student.detach().to(device, torch.float32)
    else:
        at = x_teacher.detach()[anchor_index.to(x_teacher.device)].to(torch.float32)
        as_ = x_student.detach()[anchor_index.to(x_student.device)].to(device, torch.float32)
    return at, as_, at.pow(2).sum(1), as_.pow(2).sum(1)


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


def _rank_pair(xt_rows: Tensor, xs_rows: Tensor, self_cols: Tensor, at: Tensor, as_: Tensor, at_sq: Tensor,
               as_sq: Tensor) -> tuple[Tensor, Tensor]:
    """float32 ranks (R1, R0) of the rows among the anchors: student (model 1), teacher (model 0)."""
    r0 = row_ranks(xt_rows, at, at_sq, self_cols, dtype=torch.float32)
    r1 = row_ranks(xs_rows, as_, as_sq, self_cols, dtype=torch.float32)
    return r1, r0


def rows_abs_max(xt_rows: Tensor, xs_rows: Tensor, self_cols: Tensor, at: Tensor, as_: Tensor, at_sq: Tensor,
                 as_sq: Tensor) -> Tensor:
    """max |R1_ij - R0_ij| over these rows (a 0-d float32 tensor): one block of ``mode="standard"``'s scale."""
    r1, r0 = _rank_pair(xt_rows, xs_rows, self_cols, at, as_, at_sq, as_sq)
    return r1.sub_(r0).abs_().max()


@torch.no_grad()
def mine_rows(xt_rows: Tensor, xs_rows: Tensor, self_cols: Tensor, at: Tensor, as_: Tensor, at_sq: Tensor,
              as_sq: Tensor, anchor_index: Tensor | None, *, gamma: float | str = GAMMA_DEFAULT,
              beta: float = BETA_DEFAULT, mode: str = "local", abs_max: Tensor | float | None = None,
              pool_k: int = POOL_K_DEFAULT, kna_k: int = KNA_K_DEFAULT, need_pool: bool = True,
              pool_affinity: bool = False) -> MinedRows:
    """Positive, negative pool, confusion and KNA of B rows against M anchors: the body of :func:`mine`.

    Args:
        xt_rows, xs_rows: (B, d_t), (B, d_s) float32 features of the rows, on the anchors' device.
        self_cols: (B,) long, each row's own anchor column, -1 where it has none (:func:`anchor_columns`).
        at, as_, at_sq, as_sq: the anchors' float32 features and squared norms (:func:`anchor_features`).
        anchor_index: (M,) long, the anchors' sample indices (maps columns back to samples); None when the
            anchors are all N samples in order.
        gamma, beta, mode: as :func:`mine` (``gamma="auto"`` = 80 / M).
        abs_max: ``mode="standard"`` only, and required there: max |R1 - R0| over *all* rows of the pass
            (see :func:`mine_abs_max`), not just these.
        pool_k, kna_k: capped at M - 1.
        need_pool: compute the pools (the top-K of A10; skip it when only positives, confusion or KNA
            are wanted).
        pool_affinity: also return the pool members' A10.

    A row's results are the same bits as in :func:`mine` whenever its distances are (always for the same
    row in the same block shape; for any block when they are exact, e.g. small-integer features).
    """
    m = at.shape[0]
    gamma = resolve_gamma(gamma, m)
    k_pool, k_kna = min(pool_k, m - 1), min(kna_k, m - 1)
    if k_pool < 1 or k_kna < 1:
        raise ValueError(f"pool_k and kna_k must be at least 1, got {pool_k} and {kna_k}")
    if mode == "standard" and abs_max is None:
        raise ValueError("mode 'standard' needs abs_max, the max |R1 - R0| over all rows of the pass")
    if pool_affinity and not need_pool:
        raise ValueError("pool_affinity needs the pools (need_pool=True)")
    r1, r0 = _rank_pair(xt_rows, xs_rows, self_cols, at, as_, at_sq, as_sq)
    delta = difference(r1, r0, mode, gamma, abs_max, overwrite=True)
    del r1, r0
    a01, a10 = affinities_from_difference(delta, beta, overwrite=True)
    del delta

    device = a01.device
    rows = torch.nonzero(self_cols >= 0).squeeze(1)
    cols = self_cols[rows]
    # self contributes nothing to the sums, and is never picked
    a01[rows, cols] = 0.0
    a10[rows, cols] = 0.0
    others = torch.full((len(self_cols),), float(m), device=device)
    others[rows] -= 1.0
    confusion = (a01.sum(1) + a10.sum(1)) / others
    kna = a01.topk(k_kna, dim=1, sorted=False).values.sum(1)
    pool = affinity = None
    if need_pool:
        pool = _top_k_by_value_then_index(a10, k_pool, rows, cols)
        if pool_affinity:
            affinity = a10.gather(1, pool)
    del a10
    a01[rows, cols] = -1.0  # below any affinity, even one that underflowed to 0
    positive = a01.argmax(1)  # argmax returns the first maximum: lowest index on ties
    del a01
    if anchor_index is not None:  # anchor columns back to sample indices
        positive = anchor_index[positive]
        if pool is not None:
            pool = anchor_index[pool]
    return MinedRows(positive, pool, confusion, kna, affinity)


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


def _row_range(rows: tuple[int, int] | None, n: int) -> tuple[int, int]:
    if rows is None:
        return 0, n
    start, end = (int(r) for r in rows)
    if not 0 <= start <= end <= n:
        raise ValueError(f"rows must be (start, end) with 0 <= start <= end <= {n}, got {rows}")
    return start, end


def _blocks(start: int, end: int, block: int):
    """[s, e) blocks covering [start, end), cut on multiples of ``block`` (the same grid for every range)."""
    s = start
    while s < end:
        e = min((s // block + 1) * block, end)
        yield s, e
        s = e


def _setup(x_teacher: Tensor, x_student: Tensor, anchors: int | None, seed: int):
    n, device = x_teacher.shape[0], x_teacher.device
    anchor_index = select_anchors(n, anchors, seed)
    if anchor_index is not None:
        anchor_index = anchor_index.to(device)
    at, as_, at_sq, as_sq = anchor_features(x_teacher, x_student, anchor_index)
    if at.shape[0] > MAX_FLOAT_RANK_COLUMNS:
        raise ValueError(f"at most {MAX_FLOAT_RANK_COLUMNS} anchors are supported, got {at.shape[0]}")
    return anchor_index, (at, as_, at_sq, as_sq)


def _rows(x: Tensor, start: int, end: int, device: torch.device) -> Tensor:
    return x.detach()[start:end].to(device, torch.float32)


@torch.no_grad()
def mine_abs_max(x_teacher: Tensor, x_student: Tensor, *, anchors: int | None = None,
                 seed: int = ANCHOR_SEED_DEFAULT, block: int = 512, rows: tuple[int, int] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Tensor:
    """max |R1 - R0| over the rows ``rows`` (default all N), a 0-d float32 tensor: the first pass of
    ``mode="standard"``. The maximum over disjoint row ranges is the maximum of theirs (an all-reduce
    with max when each rank mines its own share)."""
    _check_inputs(x_teacher, x_student, "standard", block)
    n, device = x_teacher.shape[0], x_teacher.device
    start, end = _row_range(rows, n)
    anchor_index, anchor_side = _setup(x_teacher, x_student, anchors, seed)
    abs_max = torch.zeros((), device=device)
    for s, e in _blocks(start, end, block):
        cols = anchor_columns(torch.arange(s, e, device=device), anchor_index)
        block_max = rows_abs_max(_rows(x_teacher, s, e, device), _rows(x_student, s, e, device), cols, *anchor_side)
        abs_max = torch.maximum(abs_max, block_max)
        if progress is not None:
            progress(e - start, end - start)
    return abs_max


@torch.no_grad()
def mine(x_teacher: Tensor, x_student: Tensor, *, gamma: float | str = GAMMA_DEFAULT, beta: float = BETA_DEFAULT,
         mode: str = "local", pool_k: int = POOL_K_DEFAULT, kna_k: int = KNA_K_DEFAULT, anchors: int | None = None,
         seed: int = ANCHOR_SEED_DEFAULT, block: int = 512,
         progress: Callable[[int, int], None] | None = None, rows: tuple[int, int] | None = None,
         need_pool: bool = True, pool_affinity: bool = False,
         abs_max: Tensor | float | None = None) -> MiningResult:
    """Positives, negative pools, confusion and KNA scores of N samples from teacher and student features.

    Args:
        x_teacher, x_student: (N, d_t) and (N, d_s) features of the same samples (the RDD code uses the
            raw pooled penultimate features); computed in float32 on ``x_teacher``'s device, one block of
            rows at a time (float16 input stays float16 in memory). Ranks need full-precision distances:
            on CUDA keep TF32 matmuls off (torch's default).
        gamma: the locally-biased difference's gain, or ``"auto"`` = 80 / M (RDX's fallback, M = number of
            anchors: the scale of the ranks). Not used by ``mode="standard"``.
        beta: the affinity exponent (RDX and RDD code: 5; the RDD blog states 0.8, see ``BETA_BLOG``).
        mode: ``"local"`` (RDX's locally-biased difference) or ``"standard"`` (rank difference over its
            absolute maximum; costs a second pass, for that maximum, unless ``abs_max`` is given).
        pool_k, kna_k: sizes of the negative pool and of the KNA sum, capped at M - 1.
        anchors: rank every sample against this many random anchor samples (RDD's ``rdx_anchor_n``) drawn
            with ``seed``; None (or >= N): against all N samples.
        block: rows per block; the temporaries are a few (block x M) tensors.
        progress: called as progress(rows_done, rows_total) after each block (one pass; two for "standard"
            without ``abs_max``).
        rows: mine only samples ``start`` to ``end - 1`` (the anchors are still drawn from, and ranked
            against, all N): the results are those rows of the full pass, so the row ranges of several
            calls (e.g. one per rank, :func:`distillab.core.dist.shard_range`) concatenate to it.
        need_pool: False skips the negative pools (``negative_pool`` is then None): positives, confusion
            and KNA only, without the N x pool_k table.
        pool_affinity: also return each pool member's A10 (``pool_affinity``, float32 like the pools).
        abs_max: ``mode="standard"``: the global max |R1 - R0| (:func:`mine_abs_max`, maximised over all
            row ranges); required when ``rows`` is not all N, computed by a first pass otherwise.
    """
    _check_inputs(x_teacher, x_student, mode, block)
    device = x_teacher.device
    n = x_teacher.shape[0]
    start, end = _row_range(rows, n)
    anchor_index, anchor_side = _setup(x_teacher, x_student, anchors, seed)
    m = anchor_side[0].shape[0]
    gamma = resolve_gamma(gamma, m)
    k_pool, k_kna = min(pool_k, m - 1), min(kna_k, m - 1)
    if k_pool < 1 or k_kna < 1:
        raise ValueError(f"pool_k and kna_k must be at least 1, got {pool_k} and {kna_k}")
    if pool_affinity and not need_pool:
        raise ValueError("pool_affinity needs the pools (need_pool=True)")

    if mode != "standard":
        abs_max = None
    elif abs_max is None:  # the global max |R1 - R0| first
        if (start, end) != (0, n):
            raise ValueError("mode 'standard' over a share of the rows needs abs_max, the maximum over all "
                             "N rows (mine_abs_max over each share, then their maximum)")
        abs_max = mine_abs_max(x_teacher, x_student, anchors=anchors, seed=seed, block=block, progress=progress)
    else:
        abs_max = torch.as_tensor(abs_max, dtype=torch.float32).to(device)

    count = end - start
    positive = torch.empty(count, dtype=torch.long, device=device)
    pool = torch.empty(count, k_pool, dtype=torch.long, device=device) if need_pool else None
    affinity = torch.empty(count, k_pool, device=device) if pool_affinity else None
    confusion = torch.empty(count, device=device)
    kna = torch.empty(count, device=device)
    for s, e in _blocks(start, end, block):
        cols = anchor_columns(torch.arange(s, e, device=device), anchor_index)
        out = mine_rows(_rows(x_teacher, s, e, device), _rows(x_student, s, e, device), cols, *anchor_side,
                        anchor_index, gamma=gamma, beta=beta, mode=mode, abs_max=abs_max, pool_k=k_pool,
                        kna_k=k_kna, need_pool=need_pool, pool_affinity=pool_affinity)
        here = slice(s - start, e - start)
        positive[here], confusion[here], kna[here] = out.positive, out.confusion, out.kna
        if pool is not None:
            pool[here] = out.pool
        if affinity is not None:
            affinity[here] = out.pool_affinity
        if progress is not None:
            progress(e - start, count)

    return MiningResult(positive=positive, negative_pool=pool, confusion=confusion, kna=kna, gamma=gamma,
                        beta=float(beta), anchor_index=anchor_index, abs_max=abs_max, pool_affinity=affinity,
                        rows=(start, end))
