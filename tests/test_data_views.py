"""Privileged-information views: MNIST-1D's clean signal and the digits' low-resolution image."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from distillab.core.contract import INDEX, MAIN_INPUT
from distillab.data import DATASETS, build_dataset, data_fields
from distillab.data import mnist1d as mnist1d_module
from distillab.data.augment import AugmentPlan, RandomShift1D
from distillab.data.digits import LOWRES
from distillab.data.mnist1d import CLEAN, TEMPLATE_EPS, _default_args, _generate, _sample_views, cache_path
from distillab.engine.batches import BatchPreparer
from distillab.engine.loader import BatchLoader

TEMPLATE_END = 11  # from this position on, the clean view is past every template (padding >= 36: <= 10 of 40)


def generator_args(num_samples: int = 1000, **changes) -> dict:
    args = _default_args()
    args.update(num_samples=num_samples, **changes)
    return args


@pytest.fixture(scope="module")
def views() -> dict[str, np.ndarray]:
    return _generate(generator_args())


# ------------------------------------------------------------------------------ MNIST-1D clean view


@pytest.mark.parametrize("shuffle_seq", [False, True])
def test_main_view_is_the_package_generator(shuffle_seq):
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = generator_args(300, shuffle_seq=shuffle_seq, seed=7)
    np.random.seed(99)
    random.seed(99)
    np_state, py_state = np.random.get_state(), random.getstate()
    ours = _generate(args)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    reference = make_dataset(ObjectView(dict(args)))
    for key in ("x", "y", "x_test", "y_test"):
        assert ours[key].dtype == reference[key].dtype
        assert np.array_equal(ours[key], reference[key]), key  # bit-identical, not merely close


def test_one_sample_clean_view_is_the_interpolated_scaled_template():
    """Rebuilt from the same two draws (padding, scale) with numpy's own interpolation."""
    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import ObjectView

    args = generator_args()
    template, t = get_templates()["x"][3], get_templates()["t"]
    np.random.seed(5)
    main, clean = _sample_views(template, args)
    np.random.seed(5)
    assert np.array_equal(main, transform(template, t, ObjectView(dict(args)))[0])

    np.random.seed(5)
    low, high = args["padding"]
    pad = low + int(np.random.rand() * (high - low + 1))
    scale = 1 + args["scale_coeff"] * (np.random.rand() - 0.5)
    padded = np.concatenate([template + TEMPLATE_EPS, np.zeros(pad)])
    dilated = np.interp(np.linspace(0, 1, args["template_len"] + high), np.linspace(0, 1, len(padded)), padded)
    expected = scale * np.interp(np.linspace(0, 1, args["final_seq_length"]), np.linspace(0, 1, len(dilated)),
                                 dilated)
    np.testing.assert_allclose(clean, expected, rtol=0, atol=1e-12)
    assert not np.allclose(main, clean)


def test_clean_view_has_no_noise_and_follows_the_samples(views):
    clean = np.concatenate([views["x_clean"], views["x_test_clean"]])
    main = np.concatenate([views["x"], views["x_test"]])
    assert clean.shape == main.shape == (1000, 40)
    # each view is centred and scaled over the whole set, separately
    for x in (clean, main):
        assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-12
    # no translation, no noise: past the template every clean signal is the same exact value (raw zero)
    assert np.unique(clean[:, TEMPLATE_END:]).size == 1
    assert min(np.unique(row[TEMPLATE_END:]).size for row in main) > 1
    # same samples in the same order as the labels: the nearest clean training signal has the test
    # signal's class; the noisy, shifted main view is far from that
    def nearest_neighbour_accuracy(train: str, test: str) -> float:
        nearest = ((views[test][:, None] - views[train][None]) ** 2).sum(-1).argmin(1)
        return float((views["y"][nearest] == views["y_test"]).mean())

    assert nearest_neighbour_accuracy("x_clean", "x_test_clean") >= 0.99
    assert nearest_neighbour_accuracy("x", "x_test") < 0.8


def test_privileged_bundle_and_cache(tmp_path, monkeypatch):
    plain = build_dataset("mnist1d", root=tmp_path, num_samples=500)
    bundle = build_dataset("mnist1d", root=tmp_path, num_samples=500, privileged=True)
    args = generator_args(500)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted(
        [cache_path(tmp_path, args).name, cache_path(tmp_path, args, clean=True).name])
    assert cache_path(tmp_path, args, clean=True).name.endswith("-clean.npz")
    assert plain.fields == {} and plain.train.fields == {}
    assert torch.equal(bundle.train.inputs, plain.train.inputs) and bundle.mean == plain.mean
    spec = bundle.fields[CLEAN]
    assert spec.shape == (1, 40) and spec.augment == "shared"
    for split in (bundle.train, bundle.test):
        assert split.fields[CLEAN].shape == split.inputs.shape and split.fields[CLEAN].dtype == torch.float32
    x = bundle.prepare_field(CLEAN, bundle.train.fields[CLEAN])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
    assert not torch.allclose(bundle.train.fields[CLEAN], bundle.train.inputs)

    def no_generation(args):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mnist1d_module, "_generate", no_generation)
    again = build_dataset("mnist1d", root=tmp_path, num_samples=500, privileged=True)
    assert torch.equal(again.train.fields[CLEAN], bundle.train.fields[CLEAN])
    assert torch.equal(again.test.fields[CLEAN], bundle.test.fields[CLEAN])
    assert torch.equal(build_dataset("mnist1d", root=tmp_path, num_samples=500).train.inputs, plain.train.inputs)
    with pytest.raises(AssertionError, match="cache"):
        build_dataset("mnist1d", root=tmp_path, num_samples=500, seed=1, privileged=True)


# ---------------------------------------------------------------------------------- digits lowres


@pytest.mark.parametrize("block", [2, 4])
def test_digits_lowres_is_the_block_average(block):
    bundle = build_dataset("digits", lowres=block)
    plain = build_dataset("digits")
    assert torch.equal(bundle.train.inputs, plain.train.inputs) and bundle.mean == plain.mean
    image, coarse = bundle.train.inputs[17, 0].tolist(), bundle.train.fields[LOWRES][17, 0]
    for r in range(8):
        for c in range(8):
            top, left = r // block * block, c // block * block
            block_pixels = [image[i][j] for i in range(top, top + block) for j in range(left, left + block)]
            assert float(coarse[r, c]) == sum(block_pixels) / block**2  # exact: multiples of 1/16
    spec = bundle.fields[LOWRES]
    assert spec.shape == (1, 8, 8) and spec.augment == "shared"
    x = bundle.prepare_field(LOWRES, bundle.train.fields[LOWRES])
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
    assert bundle.test.fields[LOWRES].shape == bundle.test.inputs.shape


def test_digits_lowres_refuses_blocks_that_do_not_tile():
    with pytest.raises(ValueError, match="lowres"):
        build_dataset("digits", lowres=3)


# ------------------------------------------------------------------------------- fields and batches


@pytest.mark.parametrize(
    "name, option, on, off, field",
    [("mnist1d", "privileged", True, False, CLEAN), ("digits", "lowres", 2, None, LOWRES)],
)
def test_declared_fields_follow_the_options(name, option, on, off, field):
    assert data_fields(name, {option: on}) == (MAIN_INPUT, field)
    assert data_fields(name, {option: off}) == data_fields(name, {}) == (MAIN_INPUT,)
    assert f"data.options.{option}" in DATASETS.entry(name).meta["field_hints"][field]


@pytest.mark.parametrize(
    "name, options, field",
    [("mnist1d", {"num_samples": 300, "privileged": True}, CLEAN),
     ("digits", {"lowres": 4, "augment": True}, LOWRES)],
)
def test_batches_carry_the_field_and_share_the_augmentation(name, options, field):
    bundle = build_dataset(name, **options)
    assert set(bundle.field_names()) == set(data_fields(name, options))
    loader = BatchLoader(bundle.train, batch_size=64, device=torch.device("cpu"), shuffle=True, seed=3)
    batches = list(loader)
    assert sum(len(b[INDEX]) for b in batches) == len(bundle.train)
    for batch in batches:
        assert torch.equal(batch[field], bundle.train.fields[field][batch[INDEX]])

    plan = AugmentPlan(bundle.augment, len(bundle.train))
    prepared, _ = BatchPreparer(bundle, plan, {field}).train(batches[0], torch.Generator().manual_seed(0))
    params, _ = plan.draw(batches[0][INDEX], torch.Generator().manual_seed(0))
    if isinstance(bundle.augment, RandomShift1D):
        assert params["shifts"].abs().max() > 0
    for f in (MAIN_INPUT, field):
        fill = bundle.fields[f].fill if f != MAIN_INPUT else None  # each view pads with its own black
        expected = bundle.augment.apply(bundle.prepare_field(f, batches[0][f]), params, **({"fill": fill} if fill else {}))
        assert torch.equal(prepared[f], expected)
    if field == "lowres":  # a sample shifted right by the crop shows the low-res view's black in its first column
        shifted = (params["offsets"][:, 1] == 0).nonzero()[0, 0]
        black = bundle.fields[field].fill[0]
        assert torch.allclose(prepared[field][shifted, 0, :, 0], torch.full((8,), black))
