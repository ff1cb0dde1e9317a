"""MUNGE: a synthetic transfer set that resembles a table of training examples, for model compression.

Buciluǎ, Caruana & Niculescu-Mizil, "Model Compression", KDD 2006. The big model labels the synthetic
points and a small network is trained on them; the paper reports the compressed model improving as
the synthetic set grows (up to hundreds of thousands of points).
"""

from __future__ import annotations

from typing import Sequence

import torch

NEIGHBOUR_BLOCK_ROWS = 1024  # rows of the distance matrix held at once: 1024 x 10k float32 is 40 MB


def _scaled_continuous(x: torch.Tensor, is_nominal: torch.Tensor) -> torch.Tensor:
    """The continuous columns of ``x``, each divided by its standard deviation over the set (a constant
    column is left as it is: it adds 0 to every distance)."""
    cont = x[:, ~is_nominal]
    std = cont.std(dim=0)
    return cont / torch.where(std > 0, std, torch.ones_like(std))


def nearest_neighbours(x: torch.Tensor, *, nominal: Sequence[int] = (),
                       block_rows: int = NEIGHBOUR_BLOCK_ROWS) -> torch.Tensor:
    """For each row of ``x`` (N, D), the index of its nearest other row (N,), by MUNGE's distance:
    squared Euclidean over the continuous attributes, each divided by its standard deviation, plus 1
    for every nominal attribute (columns ``nominal``) whose values differ. Ties go to the lowest index.
    Computed ``block_rows`` rows at a time, so N = 10k needs tens of MB, not the full N x N matrix."""
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a nearest other row needs at least 2 rows, got {n}")
    is_nominal = _nominal_mask(d, nominal, x.device)
    cont = _scaled_continuous(x, is_nominal)
    nom = x[:, is_nominal]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        dist = torch.zeros(stop - start, n, dtype=x.dtype, device=x.device)
        if cont.shape[1]:
            dist += torch.cdist(cont[start:stop], cont).square()
        for a in range(nom.shape[1]):
            dist += (nom[start:stop, a, None] != nom[None, :, a]).to(x.dtype)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = float("inf")  # an example is not its own neighbour
        out[start:stop] = dist.argmin(dim=1)
    return out


def _nominal_mask(d: int, nominal: Sequence[int], device: torch.device) -> torch.Tensor:
    mask = torch.zeros(d, dtype=torch.bool, device=device)
    cols = [int(a) for a in nominal]
    bad = [a for a in cols if not 0 <= a < d]
    if bad or len(set(cols)) != len(cols):
        raise ValueError(f"nominal must list distinct column indices in 0..{d - 1}, got {list(nominal)}")
    mask[cols] = True
    return mask


def munge(x: torch.Tensor, *, nominal: Sequence[int] = (), p: float = 0.5, s: float = 10.0, multiplier: int = 1,
          generator: torch.Generator) -> torch.Tensor:
    """MUNGE (Buciluǎ, Caruana & Niculescu-Mizil, "Model Compression", KDD 2006): synthetic examples
    (2 * multiplier * N, D) resembling the examples ``x`` (N, D); labels are not used.

    Each pass, every example e is paired with its nearest neighbour e' (:func:`nearest_neighbours`:
    continuous attributes normalised by their standard deviation, nominal ones counting 0 if equal and
    1 otherwise). Then, for each attribute a, with probability ``p``:

    - nominal (columns listed in ``nominal``): e_a and e'_a are swapped;
    - continuous: with sd = |e_a - e'_a| / s, e_a <- Normal(e'_a, sd) and e'_a <- Normal(e_a, sd), each
      drawn around the *other's old* value.

    Both modified examples join the output, so one pass gives 2N points: rows [0, N) are the modified
    e (row i from example i), rows [N, 2N) the modified e' (row i from example i's neighbour); pass k
    fills rows [2kN, 2(k+1)N). Every pass starts again from the original ``x``. Nominal attributes only
    ever take values present in ``x``.

    p: the chance that an attribute is changed (small p: points close to the originals). s: the
    spread's divisor (large s: little noise, values near the neighbour's; s = inf gives pure swaps).
    p = 0.5 and s = 10 are common starting points from later reimplementations, not values checked in
    the paper; the paper's size multiplier is not checked either.

    Unlike the paper's loop, which changes a copy of the set in place example by example (so a later
    example may meet an already changed neighbour) and keeps that copy (N points per pass), all pairs
    here are drawn at once from the unchanged set, and both members of each pair are kept.

    Random draws, per pass, from ``generator`` (on ``x``'s device), in this order: uniform (N, D) (the
    attributes changed: those below p), standard normal (N, D) for e, standard normal (N, D) for e'.
    The same generator state gives the same output.
    """
    if x.dim() != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float matrix (N, D), got {x.dtype} {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite (MUNGE has no notion of a missing value: fill or drop NaNs first)")
    if len(x) < 2:
        raise ValueError(f"MUNGE pairs each example with its nearest neighbour: x needs at least 2 rows, got {len(x)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p (the chance an attribute is changed) must lie in [0, 1], got {p}")
    if not s > 0:
        raise ValueError(f"s (the spread's divisor) must be positive, got {s}")
    if int(multiplier) != multiplier or multiplier < 1:
        raise ValueError(f"multiplier (passes over the set) must be a positive integer, got {multiplier}")
    n, d = x.shape
    is_nominal = _nominal_mask(d, nominal, x.device)
    neighbour = x[nearest_neighbours(x, nominal=nominal)]
    # a nominal attribute is "drawn" with spread 0: a pure swap
    sd = torch.where(is_nominal, torch.zeros_like(x), (x - neighbour).abs() / s)
    passes = []
    for _ in range(int(multiplier)):
        change = torch.rand(n, d, generator=generator, device=x.device, dtype=x.dtype) < p
        noise_e = torch.randn(n, d, generator=generator, device=x.device, dtype=x.dtype)
        noise_n = torch.randn(n, d, generator=generator, device=x.device, dtype=x.dtype)
        passes.append(torch.where(change, neighbour + sd * noise_e, x))
        passes.append(torch.where(change, x + sd * noise_n, neighbour))
    return torch.cat(passes)
