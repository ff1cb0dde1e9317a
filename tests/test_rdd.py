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
