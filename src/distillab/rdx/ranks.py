"""Neighbour ranks, RDX's rank normalisation (Kondapaneni et al. 2025, nkondapa/RDX ``src/rdx.py``).

R_ij is the 0-based position of anchor j in row i's list of anchors sorted by Euclidean distance to
sample i, nearest first: the argsort of the argsort of the distance row. Ranks only depend on the order
of a row, so any increasing function of the distances gives the same ranks; they are taken here on
squared distances (no square root needed).

Two choices the RDX code leaves to chance are fixed here:

- **Ties** (duplicate points, integer-valued features) go to the lowest anchor index: the sort is stable.
  RDX's ``argsort`` is not stable, so its order among ties is unspecified.
- **Self** gets rank 0 whenever the sample is among the anchors, even when a duplicate of it has a lower
  index, and even when the distance expansion leaves a small non-zero self-distance (float32
  cancellation in |a|^2 + |b|^2 - 2 a.b, which ``torch.cdist`` also uses for large inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

# float32 holds every integer up to 2**24 exactly, so float32 ranks are exact up to that many anchors
MAX_FLOAT_RANK_COLUMNS = 2 ** 24


def squared_distances(x: Tensor, anchors: Tensor, anchors_sq: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances (B, M) between rows of ``x`` (B, d) and ``anchors`` (M, d), clamped at 0.

    ``anchors_sq``: the anchors' squared norms (M,), when the caller already has them.
    """
    if anchors_sq is None:
        anchors_sq = anchors.pow(2).sum(1)
    d2 = torch.addmm(anchors_sq.unsqueeze(0), x, anchors.t(), alpha=-2.0)
    d2.add_(x.pow(2).sum(1, keepdim=True))
    return d2.clamp_min_(0.0)


def _order_key(d: Tensor) -> Tensor:
    """An int32 tensor whose order equals the float32 order of ``d`` (NaN aside).

    Sorting int32 is markedly faster than sorting float32 on CPU. A float's bit pattern read as a
    signed integer is in value order for non-negative floats and in reverse order for negative ones;
    flipping the 31 low bits of the negative ones fixes that. ``+ 0.0`` turns -0.0 into +0.0 first, so
    the two zeros stay a tie.
    """
    key = (d + 0.0).view(torch.int32)
    flip = key >> 31  # -1 (all bits set) for negative floats, 0 otherwise
    return key.bitwise_xor_(flip.bitwise_and_(0x7FFFFFFF))


def _ranks_from_keys(key: Tensor, self_columns: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Row-wise ranks of ``key`` (B, M), any ordered dtype; consumes ``key`` (its self columns are overwritten)."""
    if self_columns is not None:
        rows = torch.nonzero(self_columns >= 0).squeeze(1)
        # below every other key (for float32 input the key is int32, and its minimum is below -inf's key)
        key[rows, self_columns[rows]] = -torch.inf if key.is_floating_point() else torch.iinfo(key.dtype).min
    # stable: equal distances are frequent (float32 squared distances of M = 10,000 anchors tie a few
    # times per row), and they go to the lowest column
    order = torch.argsort(key, dim=1, stable=True)
    del key
    positions = torch.arange(order.shape[1], device=order.device, dtype=dtype).expand_as(order)
    # the inverse permutation of each row, by a scatter instead of a second argsort
    return torch.empty(order.shape, device=order.device, dtype=dtype).scatter_(1, order, positions)


def ranks_from_distances(d: Tensor, self_columns: Tensor | None = None, dtype: torch.dtype = torch.long) -> Tensor:
    """Row-wise neighbour ranks of a distance block ``d`` (B, M): 0 for the nearest, ties to the lowest column.

    ``self_columns`` (B,) long: row i's own column, which is ranked 0 whatever its distance; -1 where the
    row has none. ``dtype``: of the result (float32 is exact for M <= 2**24 and saves a conversion).
    """
    if d.dim() != 2:
        raise ValueError(f"distances must be (B, M), got shape {tuple(d.shape)}")
    return _ranks_from_keys(_order_key(d) if d.dtype == torch.float32 else d.clone(), self_columns, dtype)


def row_ranks(x: Tensor, anchors: Tensor, anchors_sq: Tensor | None = None, self_columns: Tensor | None = None,
              dtype: torch.dtype = torch.long) -> Tensor:
    """Neighbour ranks (B, M) of the rows ``x`` (B, d) among ``anchors`` (M, d): one block of the rank matrix."""
    # squared distances are >= 0, where float bits read as int32 are already in value order: the key is
    # the distance block itself, with no copy (the int clamp also maps a stray -0.0 to +0.0)
    key = squared_distances(x, anchors, anchors_sq).view(torch.int32).clamp_min_(0)
    return _ranks_from_keys(key, self_columns, dtype)


@torch.no_grad()
def neighbour_ranks(x: Tensor, anchors: Tensor | None = None, block: int = 512) -> Tensor:
    """The rank matrix R (N, M) long: R_ij = position of anchor j in row i sorted by distance, ascending.

    ``anchors`` None: the anchors are the samples themselves (M = N) and self gets rank 0. Computed in
    blocks of ``block`` rows; the result itself is N x M, so this is for small N only (see
    :func:`distillab.rdx.mining.mine` for the blockwise reductions at data-set scale).
    """
    if x.dim() != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(x.shape)}")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    x = x.detach().float()
    n = x.shape[0]
    if anchors is None:
        anchors, self_all = x, torch.arange(n, device=x.device)
    else:
        anchors, self_all = anchors.detach().to(x.device, torch.float32), None
        if anchors.dim() != 2 or anchors.shape[1] != x.shape[1]:
            raise ValueError(f"anchors must be (M, {x.shape[1]}), got shape {tuple(anchors.shape)}")
    anchors_sq = anchors.pow(2).sum(1)
    out = torch.empty(n, anchors.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, n, block):
        end = min(start + block, n)
        self_cols = None if self_all is None else self_all[start:end]
        out[start:end] = row_ranks(x[start:end], anchors, anchors_sq, self_cols)
    return out
