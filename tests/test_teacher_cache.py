"""Augmentation keys, augmentation plans (with fixed variants) and the teacher output cache."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from distillab.data.augment import AugmentPlan, RandomCropFlip, RandomShift1D, take_params
from distillab.engine.teacher_cache import TeacherCache


def _all_crop_params(aug: RandomCropFlip) -> dict[str, torch.Tensor]:
    side = 2 * aug.padding + 1
    combos = list(itertools.product(range(side), range(side), (False, True) if aug.flip else (False,)))
    return {"offsets": torch.tensor([[r, c] for r, c, _ in combos], dtype=torch.long),
            "flips": torch.tensor([f for _, _, f in combos], dtype=torch.bool)}


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("flip", [False, True])
def test_crop_flip_param_keys_are_a_bijection(padding, flip):
    aug = RandomCropFlip(padding=padding, flip=flip)
    params = _all_crop_params(aug)
    assert aug.key_space == (2 * padding + 1) ** 2 * (2 if flip else 1) == len(params["flips"])
    keys = aug.param_keys(params)
    assert keys.dtype == torch.long
    assert torch.equal(keys.sort().values, torch.arange(aug.key_space))


@pytest.mark.parametrize("max_shift", [0, 1, 5])
def test_shift_param_keys_are_a_bijection(max_shift):
    aug = RandomShift1D(max_shift)
    params = {"shifts": torch.arange(-max_shift, max_shift + 1)}
    assert aug.key_space == 2 * max_shift + 1
    assert torch.equal(aug.param_keys(params).sort().values, torch.arange(aug.key_space))


def test_sampled_params_keys_in_range():
    g = torch.Generator().manual_seed(0)
    for aug in (RandomCropFlip(4), RandomCropFlip(2, flip=False), RandomShift1D(3)):
        keys = aug.param_keys(aug.sample_params(500, g))
        assert keys.min() >= 0 and keys.max() < aug.key_space


def test_cache_key_changes_exactly_when_params_change():
    cache = TeacherCache(num_samples=4, key_space=RandomCropFlip(2).key_space, logits_dim=3)
    aug = RandomCropFlip(2)
    base = {"offsets": torch.tensor([[1, 3]]), "flips": torch.tensor([False])}
    variants = [
        {"offsets": torch.tensor([[2, 3]]), "flips": torch.tensor([False])},  # row offset
        {"offsets": torch.tensor([[1, 0]]), "flips": torch.tensor([False])},  # column offset
        {"offsets": torch.tensor([[1, 3]]), "flips": torch.tensor([True])},  # flip
    ]
    index = torch.tensor([2])
    key = cache.keys(index, aug.param_keys(base))
    assert torch.equal(key, cache.keys(index, aug.param_keys({k: v.clone() for k, v in base.items()})))
    for changed in variants:
        assert not torch.equal(key, cache.keys(index, aug.param_keys(changed)))
    assert not torch.equal(key, cache.keys(torch.tensor([3]), aug.param_keys(base)))  # other sample

    # Many random draws: equal keys <=> equal params, for the crop+flip and for the shift.
    g = torch.Generator().manual_seed(1)
    index = torch.zeros(300, dtype=torch.long)
    p = aug.sample_params(300, g)
    keys = cache.keys(index, aug.param_keys(p))
    same_params = (p["offsets"][:, None] == p["offsets"][None]).all(-1) & (p["flips"][:, None] == p["flips"][None])
    assert torch.equal(keys[:, None] == keys[None], same_params)

    shift = RandomShift1D(3)
    s = shift.sample_params(300, g)
    keys = TeacherCache(1, shift.key_space, 3).keys(index, shift.param_keys(s))
    assert torch.equal(keys[:, None] == keys[None], s["shifts"][:, None] == s["shifts"][None])


def test_take_params():
    params = {"offsets": torch.arange(10).view(5, 2), "flips": torch.tensor([True, False, True, False, True])}
    rows = torch.tensor([4, 0])
    sel = take_params(params, rows)
    assert torch.equal(sel["offsets"], torch.tensor([[8, 9], [0, 1]]))
    assert torch.equal(sel["flips"], torch.tensor([True, True]))
    assert torch.equal(take_params(params, slice(1, 3))["offsets"], torch.tensor([[2, 3], [4, 5]]))


@pytest.mark.parametrize("aug,shape", [(RandomCropFlip(4, fill=[-1.0, 0.5, 2.0]), (8, 3, 12, 12)),
                                       (RandomShift1D(3), (8, 2, 20))])
def test_plan_without_variants_reproduces_augment(aug, shape):
    x = torch.randn(shape)
    plan = AugmentPlan(aug, num_samples=100)
    assert plan.keyed and plan.key_space == aug.key_space
    g_ref, g_plan = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    index = torch.arange(10, 10 + shape[0])
    for _ in range(3):
        expected = aug(x, g_ref)
        params, keys = plan.draw(index, g_plan)
        assert torch.equal(plan.apply(x, params), expected)
        assert torch.equal(keys, aug.param_keys(params))
    # The generators were advanced identically.
    assert torch.equal(g_ref.get_state(), g_plan.get_state())


def test_plan_with_variants():
    aug, n, r = RandomCropFlip(4), 12, 3
    plan = AugmentPlan(aug, num_samples=n, variants=r, seed=5)
    assert plan.key_space == r
    again = AugmentPlan(aug, num_samples=n, variants=r, seed=5)
    assert all(torch.equal(plan.table[k], again.table[k]) for k in plan.table)  # table depends on seed only
    g = torch.Generator().manual_seed(0)
    seen: dict[tuple[int, int], tuple] = {}
    per_sample: dict[int, set] = {i: set() for i in range(n)}
    for _ in range(40):
        index = torch.randperm(n, generator=g)[:8]
        params, keys = plan.draw(index, g)
        assert keys.dtype == torch.long and keys.min() >= 0 and keys.max() < r
        for i, v, off, fl in zip(index.tolist(), keys.tolist(), params["offsets"].tolist(), params["flips"].tolist()):
            value = (tuple(off), fl)
            assert seen.setdefault((i, v), value) == value  # same (sample, variant) -> same params
            per_sample[i].add(value)
    assert all(1 <= len(s) <= r for s in per_sample.values())
    assert len(seen) == n * r  # every variant of every sample was drawn at least once


def test_plan_without_augment_and_plain_callable():
    plan = AugmentPlan(None, num_samples=10, variants=4)
    params, keys = plan.draw(torch.tensor([3, 1]), torch.Generator())
    assert params == {} and torch.equal(keys, torch.zeros(2, dtype=torch.long)) and plan.key_space == 1
    x = torch.randn(2, 3)
    assert plan.apply(x, params) is x and plan.augment_plain(x) is x

    def plain(batch, generator=None):
        return batch + 1

    plan = AugmentPlan(plain, num_samples=10)
    assert not plan.keyed
    assert plan.draw(torch.tensor([0, 1]), None) == (None, None)
    assert torch.equal(plan.augment_plain(x, None), x + 1)
    with pytest.raises(ValueError, match="cannot be keyed"):
        plan.key_space
    with pytest.raises(ValueError, match="augment_plain"):
        plan.apply(x, None)
    with pytest.raises(ValueError, match="variants"):
        AugmentPlan(plain, num_samples=10, variants=2)


class _Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        pooled = self.body(x)
        return self.head(pooled), pooled


def test_fetch_computes_only_misses_and_matches_teacher():
    torch.manual_seed(0)
    teacher = _Teacher().eval().requires_grad_(False)
    n, r, batch = 24, 2, 8
    data = torch.randn(n, 3, 32, 32)
    plan = AugmentPlan(RandomCropFlip(4, fill=-1.0), num_samples=n, variants=r, seed=3)
    cache = TeacherCache(n, plan.key_space, 10, feature_dims={"pool": (8,)})
    g = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    computed_rows = expected_hits = expected_misses = 0
    for epoch in range(4):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch):
            index = order[start : start + batch]
            params, pkeys = plan.draw(index, g)
            x = plan.apply(data[index], params)
            keys = cache.keys(index, pkeys)
            calls = []

            def compute(rows):
                calls.append(len(rows))
                return teacher(x[rows])[0], {"pool": teacher(x[rows])[1]}

            logits, feats = cache.fetch(keys, compute)
            new = {k for k in keys.tolist() if k not in seen}
            expected_misses += len(new)
            expected_hits += len(keys) - len(new)
            seen |= new
            assert sum(calls) == len(new) and len(calls) == (1 if new else 0)
            computed_rows += sum(calls)
            ref_logits, ref_pool = teacher(x)
            assert logits.dtype == torch.float32
            torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(feats["pool"], ref_pool, rtol=1e-5, atol=1e-5)
    assert computed_rows == len(seen) <= n * r
    assert cache.hits == expected_hits > 0 and cache.misses == expected_misses
    assert cache.hit_rate == pytest.approx(expected_hits / (expected_hits + expected_misses))
    assert cache.num_filled == len(seen)
    cache.reset_counters()
    assert cache.hits == cache.misses == 0 and cache.hit_rate == 0.0

    # A batch where everything is cached never calls compute.
    keys = torch.tensor(sorted(seen)[:5])
    logits, _ = cache.fetch(keys, lambda rows: pytest.fail("compute called on a full hit"))
    assert cache.hits == 5 and cache.misses == 0


def test_max_bytes_error_message():
    need = TeacherCache.bytes_needed(50_000, 162, 100, {"pool": (256,)})
    assert need == 50_000 * 162 * (356 * 4 + 1)
    with pytest.raises(ValueError) as err:
        TeacherCache(50_000, 162, 100, feature_dims={"pool": (256,)}, max_bytes=2**30)
    msg = str(err.value)
    for part in ("50000 samples", "162", "data.augment_variants", "float16", "train.teacher_cache_max_gb"):
        assert part in msg
    TeacherCache(100, 2, 10, max_bytes=TeacherCache.bytes_needed(100, 2, 10))  # exactly at the limit is fine


def test_float16_round_trip_and_consistent_values():
    cache = TeacherCache(10, 3, 5, feature_dims={"f": (4,)}, dtype=torch.float16)
    assert cache.logits.dtype == torch.float16
    keys = cache.keys(torch.tensor([0, 4, 9]), torch.tensor([2, 0, 1]))
    logits, feat = torch.randn(3, 5) * 10, torch.randn(3, 4)
    cache.store(keys, logits, {"f": feat})
    hit, got, got_f = cache.lookup(keys)
    assert hit.all() and got.dtype == torch.float32 and got_f["f"].dtype == torch.float32
    torch.testing.assert_close(got, logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got_f["f"], feat, rtol=1e-3, atol=1e-3)
    miss_keys = cache.keys(torch.tensor([1]), torch.tensor([0]))
    assert not cache.lookup(miss_keys)[0].any()

    # A freshly computed row is returned exactly as a later hit returns it.
    new = torch.randn(1, 5) / 3
    first, _ = cache.fetch(miss_keys, lambda rows: (new, {"f": torch.randn(1, 4)}))
    second, _ = cache.fetch(miss_keys, lambda rows: pytest.fail("should hit"))
    assert torch.equal(first, second) and torch.equal(first, new.half().float())


def test_store_checks_shapes():
    cache = TeacherCache(4, 2, 3, feature_dims={"f": (2,)})
    keys = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="logits"):
        cache.store(keys, torch.zeros(2, 4), {"f": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="not given"):
        cache.store(keys, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="'f'"):
        cache.store(keys, torch.zeros(2, 3), {"f": torch.zeros(2, 3)})
