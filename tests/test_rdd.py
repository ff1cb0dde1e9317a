"""RDD: positive/negative selection, weights, refresh schedule and adaptive trigger, the RDX data schedules."""

from __future__ import annotations

import pytest
import torch

from distillab.losses import EpochContext, SetupContext
from distillab.losses.rdd import RDD, ks_statistic
from distillab.schedules import RDDCurriculum, RDDSampling


def _term(n=8, **kw) -> RDD:
    term = RDD(nce_k=6, pool_k=3, **kw)
    labels = torch.arange(n) % 2
    term.setup(SetupContext(num_classes=2, num_train=n, student_shapes={"embedding": torch.Size([2, 5])},
                            teacher_shapes={"embedding": torch.Size([2, 7])}, train_labels=labels))
    return term


def _mined(term: RDD) -> RDD:
    n = term.num_data
    term.positive.copy_((torch.arange(n) + 3) % n)
    term.pool.copy_(torch.stack([(torch.arange(n) + k) % n for k in (1, 2, 4)], dim=1))
    term.confusion.copy_(torch.linspace(2.0, 4.0, n))
    term.mined_epoch.fill_(1)
    return term


def test_contrast_indices_use_a01_positive_and_a10_pool():
    term = _mined(_term())
    index = torch.tensor([0, 5, 6])
    idx = term.contrast_indices(index)
    assert idx.shape == (3, 7)
    assert idx[:, 0].tolist() == [3, 0, 1]  # positive = argmax A01 (here (i + 3) % 8), not the anchor itself
    for row, i in zip(idx, index.tolist()):
        assert set(row[1:].tolist()) <= {(i + 1) % 8, (i + 2) % 8, (i + 4) % 8}
    keep = _mined(_term(keep_self_positive=True))
    assert keep.contrast_indices(index)[:, 0].tolist() == [0, 5, 6]


def test_crd_negatives_keep_the_a01_positive_and_draw_other_classes():
    """negatives="crd" (an ablation): CRD's draws (samples of the other class here, labels i % 2) around the
    mined positive; the weights are unchanged."""
    term = _mined(_term(negatives="crd"))
    index = torch.tensor([0, 5, 6])
    idx = term.contrast_indices(index)
    # K as CRD draws it: nce_k, at most the distinct samples of other classes (4 of 8 here)
    assert idx.shape == (3, 1 + min(6, 4)) and idx[:, 0].tolist() == [3, 0, 1]
    for row, i in zip(idx, index.tolist()):
        assert all(j % 2 != i % 2 for j in row[1:].tolist())
    both = _mined(_term(negatives="crd", keep_self_positive=True))
    assert both.contrast_indices(index)[:, 0].tolist() == [0, 5, 6]
    with pytest.raises(ValueError, match="negatives must be"):
        _term(negatives="random")
    with pytest.raises(ValueError, match="needs negatives='a10'"):
        _term(negatives="crd", weighted_negatives=True)


def test_negative_draws_are_resumable_and_weighted_option_follows_affinity():
    a, b = _mined(_term()), _mined(_term())
    a.contrast_indices(torch.tensor([1, 2]))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.contrast_indices(torch.tensor([3, 4])), b.contrast_indices(torch.tensor([3, 4])))
    w = _mined(_term(weighted_negatives=True))
    w.pool_affinity.copy_(torch.tensor([[1.0, 0.0, 0.0]]).repeat(8, 1))  # all mass on the first pool entry
    idx = w.contrast_indices(torch.tensor([0, 1]))
    assert (idx[0, 1:] == 1).all() and (idx[1, 1:] == 2).all()


def test_weights_average_to_one_and_reference_is_unweighted():
    term = _mined(_term())
    index = torch.tensor([0, 3, 7])
    w = term.anchor_weights(index)
    assert float(w.mean()) == pytest.approx(1.0)
    c = term.confusion[index]
    torch.testing.assert_close(w, c / c.mean())
    ref = _mined(_term(weighting="reference"))
    assert torch.equal(ref.anchor_weights(index), torch.ones(3))


def test_refresh_schedule_and_adaptive_trigger():
    term = _term(start_epoch=2, refresh_every=3)
    assert term.refresh_reason(1, None) is None
    assert "first mining" in term.refresh_reason(2, None)
    term.mined_epoch.fill_(2)
    assert [e for e in range(3, 12) if term.refresh_reason(e, None)] == [5, 8, 11]
    adaptive = _term(adaptive=True, drift_threshold=0.2)
    adaptive.mined_epoch.fill_(1)
    assert adaptive.refresh_reason(4, 0.1) is None
    assert "adaptive refresh" in adaptive.refresh_reason(4, 0.3)


def test_ks_statistic_hand_values():
    assert ks_statistic(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == 0.0
    assert ks_statistic(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 6.0])) == 1.0
    # CDFs of {1, 2, 3, 4} and {3, 4, 5, 6}: largest gap at x in [2, 3): 0.5 - 0 = 0.5
    assert ks_statistic(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([3.0, 4.0, 5.0, 6.0])) == 0.5


def _ctx(epoch: int, teacher: torch.Tensor, student: torch.Tensor, subsets: list, logs: list) -> EpochContext:
    feats = {"teacher": teacher, "student": student}

    def extract(side, names, indices=None):
        x = feats[side] if indices is None else feats[side][indices]
        return {n: x for n in names}

    return EpochContext(epoch=epoch, num_train=len(teacher), train_labels=None, device=torch.device("cpu"),
                        extract=extract, set_subset=subsets.append, log=logs.append)


def test_rdd_mining_logs_and_fills_the_table():
    torch.manual_seed(0)
    teacher, student = torch.randn(8, 7), torch.randn(8, 5)
    term = _term()
    logs: list = []
    term.on_epoch_start(_ctx(1, teacher, student, [], logs))
    assert int(term.mined_epoch) == 1 and "first mining" in logs[0]
    assert (term.positive != torch.arange(8)).all() and (term.pool != torch.arange(8)[:, None]).all()
    assert (term.confusion >= 2.0 - 1e-6).all()


def test_sampling_and_curriculum_subsets():
    torch.manual_seed(0)
    teacher, student = torch.randn(20, 4), torch.randn(20, 3)
    subsets: list = []
    sampling = RDDSampling(keep_fraction=0.25, refresh_every=2)
    sampling.on_epoch_start(_ctx(1, teacher, student, subsets, []))
    from distillab.rdx.mining import mine

    kna = mine(teacher, student, pool_k=1).kna
    easiest = set(torch.sort(kna, stable=True).indices[:5].tolist())
    assert set(subsets[-1].tolist()) == easiest
    curriculum = RDDCurriculum(phi0=0.3, e_pace=10)
    sizes = []
    for epoch in (1, 6, 11, 20):
        curriculum.on_epoch_start(_ctx(epoch, teacher, student, subsets, []))
        sizes.append(20 if subsets[-1] is None else len(subsets[-1]))
    assert sizes == [6, 13, 20, 20]  # 0.3 -> 0.65 -> 1.0 of 20 samples
    assert curriculum.fraction(1) == pytest.approx(0.3) and curriculum.fraction(6) == pytest.approx(0.65)


# ------------------------------------------------------------------ pool storage: table or on the fly


def _int_features(n: int, d: int, seed: int) -> torch.Tensor:
    """Small integers: exact in float16 and every distance exact, whatever the matmul shape."""
    return torch.randint(-9, 10, (n, d), generator=torch.Generator().manual_seed(seed)).float()


def _storage_term(n: int, storage: str, **kw) -> RDD:
    term = RDD(nce_k=9, pool_k=5, pool_storage=storage, block=7, **kw)
    term.setup(SetupContext(num_classes=3, num_train=n, student_shapes={"embedding": torch.Size([2, 3])},
                            teacher_shapes={"embedding": torch.Size([2, 5])}, train_labels=torch.arange(n) % 3))
    return term


def test_pool_storage_auto_follows_the_table_size(monkeypatch):
    import distillab.losses.rdd as rdd_module

    assert not _storage_term(30, "auto").on_the_fly  # 30 x 5 x 8 bytes
    monkeypatch.setattr(rdd_module, "TABLE_LIMIT_BYTES", 30 * 5 * 8)
    assert not _storage_term(30, "auto").on_the_fly  # at the limit: still the table
    monkeypatch.setattr(rdd_module, "TABLE_LIMIT_BYTES", 30 * 5 * 8 - 1)
    fly = _storage_term(30, "auto")
    assert fly.on_the_fly and _storage_term(30, "table").on_the_fly is False
    keys = fly.state_dict().keys()
    assert "pool" not in keys and fly.state_dict()["mined_teacher"].dtype == torch.float16
    with pytest.raises(ValueError):
        RDD(pool_storage="disk")


@pytest.mark.parametrize("options", [{}, {"anchors": 17, "gamma": "auto"}, {"mode": "standard", "anchors": 17},
                                     {"weighted_negatives": True, "anchors": 17}, {"keep_self_positive": True}])
def test_on_the_fly_pools_give_the_table_contrast_indices(options):
    n = 40
    teacher, student = _int_features(n, 5, 0), _int_features(n, 3, 1)
    table, fly = _storage_term(n, "table", **options), _storage_term(n, "on_the_fly", **options)
    assert fly.on_the_fly and not table.on_the_fly
    for term in (table, fly):
        term.on_epoch_start(_ctx(1, teacher, student, [], []))
    for name in ("positive", "confusion", "kna"):
        assert torch.equal(getattr(table, name), getattr(fly, name)), name
    assert torch.equal(fly.mined_teacher, teacher.half()) and torch.equal(fly.mined_student, student.half())
    pools, _ = fly.pools_on_the_fly(torch.arange(n))
    assert torch.equal(pools, table.pool)
    for batch in (torch.tensor([3, 0, 39, 12]), torch.tensor([5, 5, 21, 8]), torch.arange(10, 20)):
        assert torch.equal(fly.contrast_indices(batch), table.contrast_indices(batch))
        assert torch.equal(fly.anchor_weights(batch), table.anchor_weights(batch))


def test_on_the_fly_resume_draws_the_same_indices():
    n = 40
    teacher, student = _int_features(n, 5, 2), _int_features(n, 3, 3)
    options = dict(anchors=20, mode="standard", refresh_every=1, adaptive=True, probe_size=10)
    a = _storage_term(n, "on_the_fly", **options)
    a.on_epoch_start(_ctx(1, teacher, student, [], []))
    assert float(a.abs_max) > 0
    a.contrast_indices(torch.tensor([1, 2, 3]))
    b = _storage_term(n, "on_the_fly", **options)
    b.load_state_dict(a.state_dict())
    for batch in (torch.tensor([4, 9, 33]), torch.tensor([0, 1, 2])):
        assert torch.equal(a.contrast_indices(batch), b.contrast_indices(batch))
    # the next mining (the probe against the stored teacher, then a refresh): the next pools come from it
    logs: list = []
    other = _int_features(n, 3, 6)
    a.on_epoch_start(_ctx(2, teacher, other, [], logs))
    assert "probe drift" in logs[0] and "on the fly" in logs[1]
    assert torch.equal(a.mined_student, other.half()) and torch.equal(a.mined_teacher, teacher.half())
    assert not torch.equal(a.pools_on_the_fly(torch.arange(n))[0], b.pools_on_the_fly(torch.arange(n))[0])


def test_float16_overflow_is_refused():
    term = _storage_term(10, "on_the_fly")
    with pytest.raises(ValueError, match="float16"):
        term.on_epoch_start(_ctx(1, torch.full((10, 5), 1e5), torch.randn(10, 3), [], []))


# ------------------------------------------------------------------ several ranks, faked in one process


@pytest.mark.parametrize("storage,mined", [("table", True), ("on_the_fly", True), ("table", False)])
def test_each_rank_gets_its_rows_of_the_global_draws(storage, mined, monkeypatch):
    """With the collectives faked as rank r of 2, each rank's contrast indices and weights are its rows
    of what one process computes for the global batch (the draws come from the shared generator state)."""
    from distillab.core import dist

    n = 40
    teacher, student = _int_features(n, 5, 4), _int_features(n, 3, 5)
    ref = _storage_term(n, storage, anchors=20)
    if mined:
        ref.on_epoch_start(_ctx(1, teacher, student, [], []))
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    global_batches = [torch.tensor([3, 0, 39, 12, 7, 7]), torch.tensor([1, 2, 3, 4, 5, 6])]
    want = [(ref.contrast_indices(b), ref.anchor_weights(b)) for b in global_batches]
    for r in (0, 1):
        term = _storage_term(n, storage, anchors=20)
        term.load_state_dict(state)
        for b, (indices, weights) in zip(global_batches, want):
            local = b[3 * r:3 * r + 3]
            monkeypatch.setattr(dist, "gather_cat", lambda t, b=b, local=local: b if torch.equal(t, local) else None)
            monkeypatch.setattr(dist, "local_slice", lambda g, r=r: slice(g // 2 * r, g // 2 * (r + 1)))
            assert torch.equal(term.contrast_indices(local), indices[3 * r:3 * r + 3])
            torch.testing.assert_close(term.anchor_weights(local), weights[3 * r:3 * r + 3], rtol=0, atol=0)


@pytest.mark.parametrize("config,extra", [
    ("rdd_adaptive", ["method.params.rdd.probe_size=50", "method.params.rdd.drift_threshold=0.05",
                      "method.params.rdd.nce_k=64", "method.params.rdd.pool_k=32"]),
    ("rdd_curriculum", ["method.schedule.e_pace=2"]),
    ("rdd_sampling", ["method.schedule.refresh_every=2"]),
])
def test_resume_equals_uninterrupted(config, extra, tmp_path, monkeypatch):
    from distillab.config import load_config
    from distillab.engine.trainer import Trainer
    from distillab.models import create_model
    from distillab.runner import PACKAGED_CONFIGS, run

    teacher = tmp_path / "t.pt"
    torch.manual_seed(0)
    torch.save({"model": create_model("cnn1d", num_classes=10).state_dict(), "arch": "cnn1d"}, teacher)

    def cfg(name):
        return load_config(PACKAGED_CONFIGS / "mnist1d" / f"{config}.yaml", [
            f"out_dir={tmp_path}", f"name={name}", "train.epochs=3", "data.options.num_samples=300",
            "train.progress=false", "train.tensorboard=false", "train.device=cpu", f"teacher.checkpoint={teacher}",
            *extra])

    _, full = run(cfg("full"))
    original = Trainer.train_epoch

    def crash(self, epoch, progress=None, **kw):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, progress, **kw)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg("cut"))
    monkeypatch.setattr(Trainer, "train_epoch", original)
    run(cfg("cut"), resume=tmp_path / "cut")
    a, b = torch.load(full / "model.pt")["model"], torch.load(tmp_path / "cut" / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "events.log").read_text().count("epoch") >= 1
