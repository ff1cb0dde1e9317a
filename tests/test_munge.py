"""MUNGE against a plain-Python reference of the same algorithm, and its properties."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from distillab.munge import munge, nearest_neighbours


def reference_neighbours(rows: list[list[float]], nominal: set[int]) -> list[int]:
    """Each row's nearest other row: squared distance over std-normalised continuous columns plus one per
    differing nominal column; the first row wins a tie."""
    n, d = len(rows), len(rows[0])
    std = {a: statistics.stdev(r[a] for r in rows) or 1.0 for a in range(d) if a not in nominal}

    def dist(i: int, j: int) -> float:
        return (sum(((rows[i][a] - rows[j][a]) / sd) ** 2 for a, sd in std.items())
                + sum(rows[i][a] != rows[j][a] for a in nominal))

    return [min((j for j in range(n) if j != i), key=lambda j: dist(i, j)) for i in range(n)]


def reference_munge(rows: list[list[float]], nominal: set[int], p: float, s: float,
                    draws: list[tuple[list, list, list]]) -> list[list[float]]:
    """The algorithm example by example: per pass, pair each example with its neighbour; for each attribute
    picked (uniform draw < p), swap a nominal value, or draw each continuous value around the other's old
    one with sd = |e_a - e'_a| / s; keep the changed examples, then the changed neighbours."""
    nn = reference_neighbours(rows, nominal)
    out = []
    for uniform, noise_e, noise_n in draws:
        firsts, seconds = [], []
        for i, j in enumerate(nn):
            e, f = list(rows[i]), list(rows[j])
            for a in range(len(e)):
                if uniform[i][a] >= p:
                    continue
                if a in nominal:
                    e[a], f[a] = f[a], e[a]
                else:
                    sd = abs(rows[i][a] - rows[j][a]) / s
                    e[a] = rows[j][a] + sd * noise_e[i][a]
                    f[a] = rows[i][a] + sd * noise_n[i][a]
            firsts.append(e)
            seconds.append(f)
        out += firsts + seconds
    return out


def documented_draws(n: int, d: int, multiplier: int, seed: int, dtype=torch.float64) -> list:
    """The draws munge documents, in its order: per pass uniform (N, D), normal (N, D), normal (N, D)."""
    g = torch.Generator().manual_seed(seed)
    return [tuple(f(n, d, generator=g, dtype=dtype).tolist() for f in (torch.rand, torch.randn, torch.randn))
            for _ in range(multiplier)]


def mixed_table(n: int = 14, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Continuous columns 0, 2, 4 on different scales; nominal columns 1 (codes 0..2) and 3 (codes 5, 7)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1.0, 100.0, 1.0, 0.01],
                                                                           dtype=torch.float64)
    x[:, 1] = torch.randint(0, 3, (n,), generator=g).double()
    x[:, 3] = torch.tensor([5.0, 7.0], dtype=torch.float64)[torch.randint(0, 2, (n,), generator=g)]
    return x, [1, 3]


@pytest.mark.parametrize("nominal_on", [True, False])
def test_neighbours_match_reference(nominal_on):
    x, nominal = mixed_table(n=40)
    nominal = nominal if nominal_on else []
    expected = reference_neighbours(x.tolist(), set(nominal))
    assert nearest_neighbours(x, nominal=nominal).tolist() == expected
    assert nearest_neighbours(x, nominal=nominal, block_rows=7).tolist() == expected  # blocks change nothing


def test_neighbour_distance_normalises_scales():
    # column 1 is 1000x wider than column 0; normalised, row 0's neighbour is row 2 (close in both), not
    # row 1 (identical in the wide column, far in the narrow one)
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.2, 300.0], [5.0, 4000.0]])
    assert nearest_neighbours(x)[0] == 2


@pytest.mark.parametrize("p, s", [(0.5, 10.0), (0.3, 2.0), (1.0, 0.5)])
def test_matches_reference_with_the_same_draws(p, s):
    x, nominal = mixed_table()
    got = munge(x, nominal=nominal, p=p, s=s, multiplier=2, generator=torch.Generator().manual_seed(3))
    expected = reference_munge(x.tolist(), set(nominal), p, s, documented_draws(len(x), x.shape[1], 2, seed=3))
    assert got.shape == (2 * 2 * len(x), x.shape[1])
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_p1_and_infinite_spread_swap_every_attribute():
    x, nominal = mixed_table()
    nn = reference_neighbours(x.tolist(), set(nominal))
    got = munge(x, nominal=nominal, p=1.0, s=math.inf, multiplier=2, generator=torch.Generator().manual_seed(0))
    once = torch.cat([x[nn], x])  # each example becomes its neighbour and the neighbour becomes it
    assert torch.equal(got, torch.cat([once, once]))


def test_p0_keeps_the_examples_and_their_neighbours():
    x, nominal = mixed_table()
    nn = reference_neighbours(x.tolist(), set(nominal))
    got = munge(x, nominal=nominal, p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, torch.cat([x, x[nn]]))


def test_nominal_values_stay_among_the_values_present():
    x, nominal = mixed_table(n=60)
    got = munge(x, nominal=nominal, p=0.7, s=0.5, multiplier=3, generator=torch.Generator().manual_seed(1))
    for a in nominal:
        assert set(got[:, a].tolist()) <= set(x[:, a].tolist())
    assert not set(got[:, 0].tolist()) <= set(x[:, 0].tolist())  # continuous values are new


def _relative_spread(out: torch.Tensor, x: torch.Tensor) -> float:
    """Mean distance of each output value from the nearer of the two old values of its pair (e_a, e'_a),
    over the pair's gap |e_a - e'_a|: |Normal(0, 1)| / s where an attribute was drawn, 0 where kept."""
    nn = nearest_neighbours(x)
    e, f = torch.cat([x, x[nn]]), torch.cat([x[nn], x])
    gap = (e - f).abs()
    return float((torch.minimum((out - e).abs(), (out - f).abs()) / gap).mean())


def test_spread_follows_s():
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spreads = {s: _relative_spread(munge(x, p=0.5, s=s, generator=torch.Generator().manual_seed(1)), x)
               for s in (0.5, 10.0, 1000.0)}
    # expected: p * E|N(0, 1)| / s = 0.5 * 0.798 / s for large s (the nearer old value is the centre)
    assert spreads[1000.0] == pytest.approx(0.5 * math.sqrt(2 / math.pi) / 1000.0, rel=0.1)
    assert spreads[10.0] == pytest.approx(0.5 * math.sqrt(2 / math.pi) / 10.0, rel=0.1)
    assert spreads[0.5] > 10 * spreads[10.0] > 10 * 10 * spreads[1000.0]


@pytest.mark.parametrize("multiplier", [1, 3])
def test_output_size_and_dtype(multiplier):
    x = torch.randn(25, 4)
    got = munge(x, multiplier=multiplier, generator=torch.Generator().manual_seed(0))
    assert got.shape == (2 * multiplier * 25, 4) and got.dtype == torch.float32
    assert torch.isfinite(got).all()


def test_same_seed_same_output():
    x, nominal = mixed_table(n=30)
    a = munge(x, nominal=nominal, multiplier=2, generator=torch.Generator().manual_seed(7))
    b = munge(x, nominal=nominal, multiplier=2, generator=torch.Generator().manual_seed(7))
    c = munge(x, nominal=nominal, multiplier=2, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:60], a[60:])  # the second pass draws anew


def test_ten_thousand_examples_in_blocks():
    x = torch.randn(10_000, 8, generator=torch.Generator().manual_seed(0))
    nn = nearest_neighbours(x)
    assert nn.shape == (10_000,) and not (nn == torch.arange(10_000)).any()
    sample = torch.arange(0, 10_000, 997)
    full = torch.cdist(x[sample] / x.std(0), x / x.std(0))
    full[torch.arange(len(sample)), sample] = math.inf
    assert torch.equal(nn[sample], full.argmin(1))


@pytest.mark.parametrize("kwargs, match", [
    ({"p": 1.5}, "p "), ({"s": 0.0}, "s "), ({"multiplier": 0}, "multiplier"),
    ({"nominal": [5]}, "nominal"), ({"nominal": [1, 1]}, "nominal"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        munge(torch.randn(10, 3), generator=torch.Generator(), **kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2 rows"):
        munge(torch.randn(1, 3), generator=torch.Generator())
    with pytest.raises(ValueError, match="float matrix"):
        munge(torch.randn(4, 3, 2), generator=torch.Generator())
    with pytest.raises(ValueError, match="finite"):
        munge(torch.tensor([[0.0, math.nan], [1.0, 2.0]]), generator=torch.Generator())
