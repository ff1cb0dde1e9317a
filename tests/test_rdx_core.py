"""RDX core: neighbour ranks, differences, affinities and blockwise mining against the full computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillab.rdx import (BETA_BLOG, BETA_DEFAULT, GAMMA_DEFAULT, MiningResult, local_difference, mine,
                           neighbour_ranks, ranks_from_distances, rdx_affinities, resolve_gamma, select_anchors,
                           standard_difference)
from distillab.rdx.mining import anchor_columns, anchor_features, mine_abs_max, mine_rows

# ------------------------------------------------------------------ helpers


def integer_features(n: int, d: int, low: int, high: int, seed: int) -> torch.Tensor:
    """Integer-valued features: every distance is exact in float32, whatever the block shape."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, d), generator=g).float()


def reference_reductions(a01: torch.Tensor, a10: torch.Tensor, pool_k: int, kna_k: int) -> dict[str, np.ndarray]:
    """The per-row reductions written out plainly on the full matrices (NumPy, one row at a time)."""
    a01, a10 = a01.double().numpy(), a10.double().numpy()
    n = a01.shape[0]
    positive, pool, confusion, kna = [], [], [], []
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        row01, row10 = a01[i, others], a10[i, others]
        positive.append(others[np.flatnonzero(row01 == row01.max())[0]])
        order = np.lexsort((others, -row10))  # decreasing A10, then increasing index
        pool.append(others[order[:pool_k]])
        confusion.append((row01 + row10).mean())
        kna.append(np.sort(row01)[::-1][:kna_k].sum())
    return {"positive": np.array(positive), "pool": np.stack(pool), "confusion": np.array(confusion),
            "kna": np.array(kna)}


def assert_matches(result: MiningResult, ref: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(result.positive.numpy(), ref["positive"])
    np.testing.assert_array_equal(result.negative_pool.numpy(), ref["pool"])
    np.testing.assert_allclose(result.confusion.numpy(), ref["confusion"], rtol=1e-5)
    np.testing.assert_allclose(result.kna.numpy(), ref["kna"], rtol=1e-5)


# ------------------------------------------------------------------ a hand-worked example

# Four samples on a line. Teacher (model 0) at 0, 1, 3, 7; student (model 1) at 0, 4, 5, 7 (2-d, second
# coordinate 0). Sorting each row's distances by hand:
#   teacher row 1: distances 1, 0, 2, 6  -> order 1, 0, 2, 3 -> ranks [1, 0, 2, 3]
#   student row 1: distances 4, 0, 1, 3  -> order 1, 2, 3, 0 -> ranks [3, 0, 1, 2]
R_TEACHER = [[0, 1, 2, 3], [1, 0, 2, 3], [2, 1, 0, 3], [3, 2, 1, 0]]
R_STUDENT = [[0, 1, 2, 3], [3, 0, 1, 2], [3, 1, 0, 2], [3, 2, 1, 0]]


def hand_features() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    student = torch.tensor([[0.0, 0.0], [4.0, 0.0], [5.0, 0.0], [7.0, 0.0]])
    return teacher, student


def test_hand_worked_example():
    teacher, student = hand_features()
    assert neighbour_ranks(teacher).tolist() == R_TEACHER
    assert neighbour_ranks(student).tolist() == R_STUDENT

    gamma, beta = 1.0, 1.0
    # R1 - R0 is non-zero at (1,0): +2 (min rank 1), (1,2): -1 (min 1), (1,3): -1 (min 2),
    # (2,0): +1 (min 2), (2,3): -1 (min 2); rows 0 and 3 agree everywhere.
    delta = [[0.0] * 4 for _ in range(4)]
    delta[1][0] = math.tanh(gamma * 2 / 2)
    delta[1][2] = math.tanh(gamma * -1 / 2)
    delta[1][3] = math.tanh(gamma * -1 / 3)
    delta[2][0] = math.tanh(gamma * 1 / 3)
    delta[2][3] = math.tanh(gamma * -1 / 3)
    got = local_difference(torch.tensor(R_STUDENT), torch.tensor(R_TEACHER), gamma)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), delta, rtol=1e-6, atol=1e-7)

    a01, a10 = rdx_affinities(teacher, student, gamma=gamma, beta=beta)
    np.testing.assert_allclose(a01.numpy(), [[math.exp(beta * v) for v in row] for row in delta], rtol=1e-6)
    np.testing.assert_allclose(a10.numpy(), [[math.exp(-beta * v) for v in row] for row in delta], rtol=1e-6)

    result = mine(teacher, student, gamma=gamma, beta=beta, pool_k=2, kna_k=2)
    # row 1: A01 is largest at j = 0 (teacher-close, student-far); rows 0 and 3: all 1, lowest other index
    assert result.positive.tolist() == [1, 0, 0, 0]
    # row 1 by decreasing A10: j = 2 (Delta -tanh(1/2)), 3 (-tanh(1/3)), then 0; row 2: 3, then 1 (1.0), 0
    assert result.negative_pool.tolist() == [[1, 2], [2, 3], [3, 1], [0, 1]]
    c1 = (2 * math.cosh(math.tanh(1.0)) + 2 * math.cosh(math.tanh(0.5)) + 2 * math.cosh(math.tanh(1 / 3))) / 3
    c2 = (2 * math.cosh(math.tanh(1 / 3)) + 2 + 2 * math.cosh(math.tanh(1 / 3))) / 3
    np.testing.assert_allclose(result.confusion.numpy(), [2.0, c1, c2, 2.0], rtol=1e-6)
    kna1 = math.exp(math.tanh(1.0)) + math.exp(-math.tanh(1 / 3))  # the two largest of row 1's A01
    kna2 = math.exp(math.tanh(1 / 3)) + 1.0
    np.testing.assert_allclose(result.kna.numpy(), [2.0, kna1, kna2, 2.0], rtol=1e-6)


def test_orientation_teacher_close_student_far():
    """model 0 = teacher, model 1 = student: a pair close in T and far in S is teacher-unique."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(20, 8, generator=g) * 10
    student = torch.randn(20, 8, generator=g) * 10
    teacher[1] = teacher[0] + 0.01  # nearest neighbours in the teacher
    student[1] = student[0] + 100.0  # the farthest in the student
    a01, a10 = rdx_affinities(teacher, student)
    assert a01[0, 1] > 1.0 > a10[0, 1]
    assert a01[1, 0] > 1.0 > a10[1, 0]
    # sample 1 is sample 0's nearest neighbour in the teacher and its farthest in the student
    assert mine(teacher, student).positive[0] == 1
    # and the other way round: close in the student, far in the teacher is student-unique
    a01, a10 = rdx_affinities(student, teacher)
    assert a10[0, 1] > 1.0 > a01[0, 1]


def test_constants():
    assert (BETA_DEFAULT, BETA_BLOG, GAMMA_DEFAULT) == (5.0, 0.8, 0.1)


# ------------------------------------------------------------------ ranks


def test_ranks_invariant_under_monotone_transforms():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 5, generator=g)
    base = neighbour_ranks(x)
    assert torch.equal(neighbour_ranks(x * 2.5 + 3.0), base)
    assert torch.equal(neighbour_ranks(x[:, torch.randperm(5, generator=g)]), base)
    anchors = x[:17]
    assert torch.equal(neighbour_ranks(x * 4.0 - 1.0, anchors * 4.0 - 1.0), neighbour_ranks(x, anchors))

    d = torch.cdist(x.double(), x.double())
    ranks = ranks_from_distances(d)
    for f in (torch.sqrt, torch.exp, lambda t: t ** 3 + 2 * t, lambda t: torch.log(t + 1e-3)):
        assert torch.equal(ranks_from_distances(f(d)), ranks)


def test_ranks_match_double_argsort():
    g = torch.Generator().manual_seed(2)
    d = torch.randint(-3, 4, (40, 30), generator=g).float() * 0.5  # many ties, negatives, zeros
    d[0, 3], d[0, 4] = -0.0, 0.0
    want = torch.argsort(torch.argsort(d, dim=1, stable=True), dim=1)
    assert torch.equal(ranks_from_distances(d), want)
    assert torch.equal(ranks_from_distances(d.double()), want)
    d = torch.randn(40, 30, generator=g)
    want = torch.argsort(torch.argsort(d, dim=1, stable=True), dim=1)
    assert torch.equal(ranks_from_distances(d), want)
    assert torch.equal(ranks_from_distances(d, dtype=torch.float32), want.float())


def test_ranks_ties_go_to_lowest_index_and_self_first():
    # 0 and 2 coincide, 1 and 3 coincide
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    ranks = neighbour_ranks(x)
    assert ranks[0].tolist() == [0, 2, 1, 3, 4]  # self, its duplicate, then 1 before 3
    assert ranks[2].tolist() == [1, 2, 0, 3, 4]  # self first even though sample 0 ties it at distance 0
    assert ranks[3].tolist() == [2, 1, 3, 0, 4]  # self, its duplicate 1, then 0 before 2
    assert ranks[4].tolist() == [3, 1, 4, 2, 0]  # d^2 = 41 to 1 and 3, 50 to 0 and 2
    for block in (1, 2, 3):
        assert torch.equal(neighbour_ranks(x, block=block), ranks)
    # against explicit anchors there is no self: ties simply go to the lowest anchor
    assert neighbour_ranks(x[:1], anchors=x).tolist() == [[0, 2, 1, 3, 4]]
    assert neighbour_ranks(x[2:3], anchors=x).tolist() == [[0, 2, 1, 3, 4]]


# ------------------------------------------------------------------ differences


def test_standard_difference_and_gamma():
    r1, r0 = torch.tensor([[0, 3], [1, 0]]), torch.tensor([[0, 1], [2, 0]])
    np.testing.assert_allclose(standard_difference(r1, r0).numpy(), [[0.0, 1.0], [-0.5, 0.0]])
    assert torch.equal(standard_difference(r0, r0), torch.zeros(2, 2))
    assert resolve_gamma(0.05, 10) == 0.05
    assert resolve_gamma("auto", 400) == pytest.approx(0.2)
    for bad in ("fast", None, True):
        with pytest.raises(ValueError):
            resolve_gamma(bad, 10)
    # the in-place path of the mining gives the same bits
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 500, (6, 50), generator=g).float()
    b = torch.randint(0, 500, (6, 50), generator=g).float()
    assert torch.equal(local_difference(a.clone(), b.clone(), 0.1, overwrite=True), local_difference(a, b, 0.1))
    assert torch.equal(standard_difference(a.clone(), b.clone(), overwrite=True), standard_difference(a, b))


# ------------------------------------------------------------------ mining = the full computation


@pytest.mark.parametrize("features", ["spread", "tied"])
@pytest.mark.parametrize("block", [1, 5, 16, 512])
def test_mine_blockwise_equals_full(features, block):
    n = 37
    if features == "spread":  # integer features, few ties
        teacher, student = integer_features(n, 6, -20, 21, 0), integer_features(n, 3, -20, 21, 1)
    else:  # tiny grid: many equal distances and duplicate points
        teacher, student = integer_features(n, 3, 0, 3, 2), integer_features(n, 2, 0, 3, 3)
    pool_k, kna_k = 10, 8
    a01, a10 = rdx_affinities(teacher, student, gamma=0.1, beta=5.0)
    ref = reference_reductions(a01, a10, pool_k, kna_k)
    result = mine(teacher, student, gamma=0.1, beta=5.0, pool_k=pool_k, kna_k=kna_k, block=block)
    assert_matches(result, ref)
    assert result.anchor_index is None and result.gamma == 0.1 and result.beta == 5.0


def test_mine_gaussian_features_and_pool_cap():
    g = torch.Generator().manual_seed(4)
    teacher, student = torch.randn(30, 16, generator=g).relu(), torch.randn(30, 12, generator=g)
    a01, a10 = rdx_affinities(teacher, student)
    result = mine(teacher, student, block=7)  # pool_k 1024 capped at N - 1 = 29
    assert result.negative_pool.shape == (30, 29)
    assert_matches(result, reference_reductions(a01, a10, 29, 8))
    assert (result.confusion >= 2.0 - 1e-6).all()
    assert result.weights().mean().item() == pytest.approx(1.0, abs=1e-6)


def test_mine_standard_mode():
    teacher, student = integer_features(25, 4, -9, 10, 5), integer_features(25, 4, -9, 10, 6)
    a01, a10 = rdx_affinities(teacher, student, mode="standard", beta=2.0)
    lo, hi = math.exp(-2.0), math.exp(2.0)
    assert a01.min() >= lo * (1 - 1e-6) and a01.max() <= hi * (1 + 1e-6)
    assert max(a01.max().item(), a10.max().item()) == pytest.approx(hi, rel=1e-6)  # |Delta| reaches 1
    calls = []
    result = mine(teacher, student, mode="standard", beta=2.0, pool_k=6, block=4,
                  progress=lambda done, total: calls.append((done, total)))
    assert_matches(result, reference_reductions(a01, a10, 6, 8))
    assert calls[-1] == (25, 25) and len(calls) == 2 * 7  # two passes of 7 blocks


def test_mine_gamma_auto():
    teacher, student = integer_features(40, 4, -9, 10, 7), integer_features(40, 4, -9, 10, 8)
    result = mine(teacher, student, gamma="auto")
    assert result.gamma == pytest.approx(80 / 40)
    a01, a10 = rdx_affinities(teacher, student, gamma="auto")
    assert_matches(result, reference_reductions(a01, a10, 39, 8))
    with pytest.raises(ValueError):
        mine(teacher, student, gamma="sometimes")
    with pytest.raises(ValueError):
        mine(teacher, student, mode="global")


def test_mine_deterministic_on_duplicates():
    """Identical models: every Delta is 0, every affinity 1, so every choice is a tie."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    for block in (1, 2, 5):
        result = mine(x, x * 3.0, pool_k=3, kna_k=2, block=block)
        assert result.positive.tolist() == [1, 0, 0, 0, 0]
        assert result.negative_pool.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2]]
        assert torch.equal(result.confusion, torch.full((5,), 2.0))
        assert torch.equal(result.kna, torch.full((5,), 2.0))
        assert torch.equal(result.weights(), torch.ones(5))


# ------------------------------------------------------------------ anchor subsampling


def test_anchors_all_equal_full():
    teacher, student = integer_features(30, 5, -9, 10, 9), integer_features(30, 3, -9, 10, 10)
    full = mine(teacher, student, pool_k=7)
    for anchors in (30, 100):
        sub = mine(teacher, student, pool_k=7, anchors=anchors, block=8)
        assert sub.anchor_index is None
        for name in ("positive", "negative_pool", "confusion", "kna"):
            assert torch.equal(getattr(sub, name), getattr(full, name))


def test_anchor_subsampling():
    n, m = 50, 20
    teacher, student = integer_features(n, 5, -9, 10, 11), integer_features(n, 3, -9, 10, 12)
    result = mine(teacher, student, anchors=m, seed=3, pool_k=5, kna_k=4, block=16)
    idx = result.anchor_index
    assert torch.equal(idx, select_anchors(n, m, seed=3))
    assert not torch.equal(idx, select_anchors(n, m, seed=4))
    assert len(idx) == m and torch.equal(idx, idx.unique())  # distinct, ascending
    anchor_set = set(idx.tolist())
    assert set(result.positive.tolist()) <= anchor_set
    assert set(result.negative_pool.flatten().tolist()) <= anchor_set
    samples = torch.arange(n)
    assert (result.positive != samples).all()
    assert (result.negative_pool != samples[:, None]).all()
    assert all(len(set(row)) == 5 for row in result.negative_pool.tolist())

    # reference: the full RDX rows against the anchor columns, self excluded
    r0 = ranks_with_self_first(teacher, idx)
    r1 = ranks_with_self_first(student, idx)
    delta = local_difference(r1, r0, 0.1)
    a01, a10 = torch.exp(5.0 * delta).double(), torch.exp(-5.0 * delta).double()
    for i in range(n):
        keep = idx != i
        cols, row01, row10 = idx[keep].numpy(), a01[i, keep].numpy(), a10[i, keep].numpy()
        assert result.positive[i] == cols[np.flatnonzero(row01 == row01.max())[0]]
        assert result.negative_pool[i].tolist() == cols[np.lexsort((cols, -row10))[:5]].tolist()
        assert result.confusion[i].item() == pytest.approx((row01 + row10).mean(), rel=1e-5)
        assert result.kna[i].item() == pytest.approx(np.sort(row01)[::-1][:4].sum(), rel=1e-5)


def ranks_with_self_first(x: torch.Tensor, anchor_index: torch.Tensor) -> torch.Tensor:
    """Ranks of each sample among the anchors, its own anchor column (if any) first: plain double argsort."""
    d = torch.cdist(x.double(), x[anchor_index].double())
    d[anchor_index, torch.arange(len(anchor_index))] = -1.0
    return torch.argsort(torch.argsort(d, dim=1, stable=True), dim=1)


def test_input_checks():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError):
        mine(x, torch.randn(9, 3))
    with pytest.raises(ValueError):
        mine(x, x, anchors=1)
    with pytest.raises(ValueError):
        mine(x, x, block=0)
    with pytest.raises(ValueError):
        rdx_affinities(x, torch.randn(9, 3))


# ------------------------------------------------------------------ row ranges, rows on their own, no pools

RESULT_TENSORS = ("positive", "negative_pool", "confusion", "kna", "pool_affinity")


def assert_same_rows(parts: list[MiningResult], full: MiningResult) -> None:
    for name in RESULT_TENSORS:
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(full, name)), name


@pytest.mark.parametrize("mode,anchors", [("local", None), ("local", 23), ("standard", None), ("standard", 23)])
def test_row_ranges_concatenate_to_the_full_pass(mode, anchors):
    """Two (or three) rows= shares, as ranks mine them, give the full result; standard mode's scale is
    the maximum of the shares' maxima (what an all-reduce with max gives every rank)."""
    n = 45
    teacher, student = integer_features(n, 5, -9, 10, 20), integer_features(n, 3, -9, 10, 21)
    opts = dict(mode=mode, anchors=anchors, pool_k=6, kna_k=4, block=8, pool_affinity=True)
    full = mine(teacher, student, **opts)
    assert full.rows == (0, n)
    for cuts in ([0, 22, n], [0, 13, 30, n], [0, 0, n]):  # uneven shares, block-unaligned, an empty one
        shares = list(zip(cuts[:-1], cuts[1:]))
        abs_max = None
        if mode == "standard":
            abs_max = torch.stack([mine_abs_max(teacher, student, anchors=anchors, block=8, rows=r)
                                   for r in shares]).max()
            assert torch.equal(abs_max, full.abs_max)
        parts = [mine(teacher, student, rows=r, abs_max=abs_max, **opts) for r in shares]
        assert [p.rows for p in parts] == shares
        assert_same_rows(parts, full)
    if mode == "standard":  # a share cannot know the global scale on its own
        with pytest.raises(ValueError):
            mine(teacher, student, rows=(0, 22), **opts)
    with pytest.raises(ValueError):
        mine(teacher, student, rows=(10, n + 1), **opts)


def test_no_pool_pass_and_pool_affinity():
    teacher, student = integer_features(40, 4, -9, 10, 22), integer_features(40, 4, -9, 10, 23)
    full = mine(teacher, student, pool_k=7, block=9, pool_affinity=True)
    light = mine(teacher, student, pool_k=7, block=9, need_pool=False)
    assert light.negative_pool is None and light.pool_affinity is None
    for name in ("positive", "confusion", "kna"):
        assert torch.equal(getattr(light, name), getattr(full, name))
    _, a10 = rdx_affinities(teacher, student)
    torch.testing.assert_close(full.pool_affinity, a10.gather(1, full.negative_pool), rtol=1e-6, atol=0)
    assert mine(teacher, student, pool_k=7).pool_affinity is None
    with pytest.raises(ValueError):
        mine(teacher, student, need_pool=False, pool_affinity=True)


def test_float16_features_give_the_float32_result():
    """Small integers are exact in float16: the same result, with the float16 copy never widened whole."""
    teacher, student = integer_features(50, 6, -30, 31, 24), integer_features(50, 3, -30, 31, 25)
    full = mine(teacher, student, anchors=20, pool_k=5, block=16)
    half = mine(teacher.half(), student.half(), anchors=20, pool_k=5, block=16)
    for name in ("positive", "negative_pool", "confusion", "kna"):
        assert torch.equal(getattr(half, name), getattr(full, name))


def test_anchor_columns():
    anchor_index = torch.tensor([2, 5, 6, 9])
    samples = torch.tensor([0, 2, 9, 6, 7, 10, 5])
    assert anchor_columns(samples, anchor_index).tolist() == [-1, 0, 3, 2, -1, -1, 1]
    assert torch.equal(anchor_columns(samples, None), samples)


@pytest.mark.parametrize("mode,anchors", [("local", None), ("local", 17), ("standard", 17)])
def test_mine_rows_of_any_samples_equal_the_full_pass(mode, anchors):
    """A batch of samples in any order, mined on its own (RDD's pools on the fly), gives their rows of the
    full pass (integer features: every distance exact, whatever the row count of the matmul)."""
    n = 40
    teacher, student = integer_features(n, 5, -9, 10, 26), integer_features(n, 3, -9, 10, 27)
    full = mine(teacher, student, mode=mode, anchors=anchors, gamma="auto", pool_k=6, pool_affinity=True)
    anchor_index = select_anchors(n, anchors)
    side = anchor_features(teacher, student, anchor_index)
    batch = torch.tensor([31, 0, 7, 7, 39, 12, 3])
    out = mine_rows(teacher[batch], student[batch], anchor_columns(batch, anchor_index), *side, anchor_index,
                    gamma="auto", mode=mode, abs_max=full.abs_max, pool_k=6, pool_affinity=True)
    assert torch.equal(out.positive, full.positive[batch])
    assert torch.equal(out.pool, full.negative_pool[batch])
    assert torch.equal(out.pool_affinity, full.pool_affinity[batch])
    assert torch.equal(out.confusion, full.confusion[batch]) and torch.equal(out.kna, full.kna[batch])
    light = mine_rows(teacher[batch], student[batch], anchor_columns(batch, anchor_index), *side, anchor_index,
                      gamma="auto", mode=mode, abs_max=full.abs_max, pool_k=6, need_pool=False)
    assert light.pool is None and torch.equal(light.kna, out.kna)
    if mode == "standard":
        with pytest.raises(ValueError):
            mine_rows(teacher[batch], student[batch], anchor_columns(batch, anchor_index), *side, anchor_index,
                      mode=mode)


# ------------------------------------------------------------------ device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mine_on_cuda_matches_cpu():
    teacher, student = integer_features(300, 16, -20, 21, 13), integer_features(300, 8, -20, 21, 14)
    cpu = mine(teacher, student, pool_k=32, anchors=200, block=64)
    gpu = mine(teacher.cuda(), student.cuda(), pool_k=32, anchors=200, block=64)
    assert gpu.positive.device.type == "cuda"
    gpu = gpu.to("cpu")
    assert torch.equal(gpu.anchor_index, cpu.anchor_index)
    assert torch.equal(gpu.positive, cpu.positive)
    assert torch.equal(gpu.negative_pool, cpu.negative_pool)
    torch.testing.assert_close(gpu.confusion, cpu.confusion)
    torch.testing.assert_close(gpu.kna, cpu.kna)
    a01, _ = rdx_affinities(teacher.cuda(), student.cuda())
    assert a01.device.type == "cuda"
