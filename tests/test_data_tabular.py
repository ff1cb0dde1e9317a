"""Tabular data sets (breast_cancer, wine, digits_vector), tensor folders (``tensors``), an MLP trained on a table."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from distillab.config import ConfigError, load_config
from distillab.core.contract import INDEX, MAIN_INPUT
from distillab.core.errors import DataError, DataMissingError
from distillab.data import build_dataset, data_fields
from distillab.data.tensor_folder import SOFT, read_tensor_meta, save_tensor_dataset
from distillab.engine.loader import BatchLoader
from distillab.plan import check_plan
from distillab.runner import run

# name -> (samples, features, classes)
TABLES = {"breast_cancer": (569, 30, 2), "wine": (178, 13, 3), "digits_vector": (1797, 64, 10)}


@pytest.mark.parametrize("name", TABLES)
def test_table_shapes_classes_and_split(name):
    samples, features, classes = TABLES[name]
    bundle = build_dataset(name)
    assert bundle.kind == "vector" and bundle.input_shape == (features,) and bundle.num_classes == classes
    assert bundle.augment is None and len(bundle.class_names) == classes and not bundle.fields
    train, test = bundle.train, bundle.test
    assert train.inputs.dtype == torch.float32 and train.inputs.shape == (len(train), features)
    assert len(test) == math.ceil(0.2 * samples) and len(train) + len(test) == samples
    for split in (train, test):  # stratified: every class in both splits, in proportion
        counts = torch.bincount(split.labels, minlength=classes).double()
        assert (counts > 0).all()
        whole = torch.bincount(torch.cat([train.labels, test.labels]), minlength=classes).double()
        assert torch.allclose(counts / counts.sum(), whole / whole.sum(), atol=0.03)
    x, y, index = train[3]
    assert x.shape == (features,) and int(y) == int(train.labels[3]) and index == 3


@pytest.mark.parametrize("name", TABLES)
def test_table_is_standardised_with_training_statistics(name):
    bundle = build_dataset(name)
    z = bundle.test_transform(bundle.train.inputs)
    assert z.dtype == torch.float32 and z.shape == bundle.train.inputs.shape
    raw_std = bundle.train.inputs.double().std(0)
    varying = raw_std > 0
    assert torch.allclose(z.double().mean(0), torch.zeros(z.shape[1], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.double().std(0)[varying], torch.ones(int(varying.sum()), dtype=torch.float64), atol=1e-4)
    assert (z[:, ~varying] == 0).all()  # a constant feature (blank digit pixels) maps to 0, not NaN
    manual = (bundle.test.inputs - torch.tensor(bundle.mean)) / torch.tensor(bundle.std)  # per feature, not global
    assert torch.allclose(bundle.test_transform(bundle.test.inputs), manual.float(), atol=1e-5)
    assert torch.equal(bundle.train_transform(bundle.train.inputs, torch.Generator()), z)  # no augmentation


def test_split_options():
    base = build_dataset("wine")
    assert torch.equal(build_dataset("wine").train.inputs, base.train.inputs)  # same seed, same split
    other = build_dataset("wine", seed=1)
    assert not torch.equal(other.train.inputs, base.train.inputs)
    half = build_dataset("wine", test_fraction=0.5)
    assert len(half.test) == 89 and len(half.train) == 89
    with pytest.raises(DataError, match="test_fraction"):
        build_dataset("wine", test_fraction=1.0)


def test_digits_vector_is_digits_flattened_with_the_same_split():
    images, vectors = build_dataset("digits"), build_dataset("digits_vector")
    assert torch.equal(vectors.train.labels, images.train.labels)
    assert torch.equal(vectors.test.inputs, images.test.inputs.flatten(1) * 16)  # grey levels 0..16


# ------------------------------------------------------------------------------------------- tensors


def _small_set(classes: int = 3, features: int = 5, n_train: int = 40, n_test: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_train, features, generator=g), torch.randint(0, classes, (n_train,), generator=g),
            torch.randn(n_test, features, generator=g), torch.randint(0, classes, (n_test,), generator=g))


def test_tensors_round_trip(tmp_path):
    train_x, train_y, test_x, test_y = _small_set()
    mean, std = train_x.mean(0).tolist(), train_x.std(0).tolist()
    folder = save_tensor_dataset(tmp_path / "set", train_x, train_y, test_x, test_y, num_classes=3, kind="vector",
                                 mean=mean, std=std, class_names=["a", "b", "c"], meta={"source": "test", "k": 2})
    assert sorted(p.name for p in folder.iterdir()) == ["data.pt", "meta.json"]  # no temporary files left
    bundle = build_dataset("tensors", path=str(folder))
    assert bundle.name == "tensors" and bundle.kind == "vector" and bundle.input_shape == (5,)
    assert bundle.num_classes == 3 and bundle.class_names == ["a", "b", "c"] and not bundle.fields
    assert torch.equal(bundle.train.inputs, train_x) and torch.equal(bundle.train.labels, train_y)
    assert torch.equal(bundle.test.inputs, test_x) and torch.equal(bundle.test.labels, test_y)
    assert bundle.mean == pytest.approx(mean) and bundle.std == pytest.approx(std)
    assert read_tensor_meta(folder)["meta"] == {"source": "test", "k": 2}
    assert data_fields("tensors", {"path": str(folder)}) == (MAIN_INPUT,)


def test_tensors_round_trip_of_images_keeps_uint8(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.arange(10) % 2
    folder = save_tensor_dataset(tmp_path, images, labels, images[:4], labels[:4], num_classes=2, kind="image",
                                 mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    bundle = build_dataset("tensors", path=str(folder))
    assert bundle.train.inputs.dtype == torch.uint8 and bundle.input_shape == (3, 4, 4)
    assert torch.allclose(bundle.test_transform(images), (images.float() / 255 - 0.5) / 0.25)


def test_soft_targets_are_the_field_soft(tmp_path):
    train_x, _, test_x, test_y = _small_set()
    soft = torch.softmax(torch.randn(len(train_x), 3, generator=torch.Generator().manual_seed(1)), dim=1)
    folder = save_tensor_dataset(tmp_path / "soft", train_x, None, test_x, test_y, num_classes=3, kind="vector",
                                 mean=None, std=None, soft_targets=soft)
    assert data_fields("tensors", {"path": str(folder)}) == (MAIN_INPUT, SOFT)  # known from meta.json alone
    bundle = build_dataset("tensors", path=str(folder))
    assert bundle.fields[SOFT].shape == (3,) and bundle.fields[SOFT].augment == "none"
    assert torch.allclose(bundle.train.fields[SOFT], soft)
    assert torch.equal(bundle.train.labels, soft.argmax(1))  # labels are the soft targets' argmax
    assert torch.equal(bundle.test.fields[SOFT], torch.nn.functional.one_hot(test_y, 3).float())
    assert torch.equal(bundle.prepare_field(SOFT, bundle.train.fields[SOFT]), bundle.train.fields[SOFT])
    assert read_tensor_meta(folder)["test_soft"] == "one-hot labels"
    batches = list(BatchLoader(bundle.train, batch_size=16, device=torch.device("cpu"), shuffle=True, seed=0))
    for batch in batches:
        assert torch.equal(batch[SOFT], soft[batch[INDEX]])
    assert sum(len(b[INDEX]) for b in batches) == len(train_x)


def test_given_test_soft_targets_and_labels_are_kept(tmp_path):
    train_x, train_y, test_x, test_y = _small_set()
    soft = torch.full((len(train_x), 3), 1 / 3)
    test_soft = torch.full((len(test_x), 3), 1 / 3)
    bundle = build_dataset("tensors", path=str(save_tensor_dataset(
        tmp_path, train_x, train_y, test_x, test_y, num_classes=3, kind="vector", mean=None, std=None,
        soft_targets=soft, test_soft_targets=test_soft)))
    assert torch.equal(bundle.train.labels, train_y) and torch.equal(bundle.test.fields[SOFT], test_soft)


@pytest.mark.parametrize("change, match", [
    ({"soft_targets": torch.ones(40, 3)}, "summing to 1"),
    ({"soft_targets": torch.ones(40, 2) / 2}, r"shape \(40, 3\)"),
    ({"train_y": torch.full((40,), 3)}, "0..2"),
    ({"train_y": torch.zeros(40)}, "integer"),
    ({"train_y": None}, "train_y may only be None"),
    ({"kind": "image"}, "4 dimensions"),
    ({"kind": "table"}, "kind must be"),
    ({"mean": [0.0, 1.0]}, "mean must hold 1 or 5"),
    ({"std": [0.0]}, "std must be positive"),
    ({"test_x": torch.randn(12, 4)}, "differ in shape"),
])
def test_save_refuses_what_is_not_a_data_set(tmp_path, change, match):
    train_x, train_y, test_x, test_y = _small_set()
    args = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "num_classes": 3,
            "kind": "vector", "mean": [0.0], "std": [1.0], **change}
    with pytest.raises(ValueError, match=match):
        save_tensor_dataset(tmp_path / "bad", **args)
    assert not (tmp_path / "bad" / "meta.json").exists()


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataMissingError, match=f"folder '{missing}'.*does not exist"):
        build_dataset("tensors", path=str(missing))
    with pytest.raises(DataMissingError, match="meta.json"):
        build_dataset("tensors", path=str(tmp_path))  # a folder, but not one written by save_tensor_dataset
    with pytest.raises(DataError, match="option path is required"):
        build_dataset("tensors")


def test_missing_path_is_refused_before_any_run(tmp_path):
    with pytest.raises(ConfigError, match="data.options.*path is required"):
        check_plan(load_config(None, ["data.name=tensors", "student.arch=mlp", f"out_dir={tmp_path}"]))
    with pytest.raises(DataMissingError, match="nowhere"):
        check_plan(load_config(None, ["data.name=tensors", f"data.options.path={tmp_path / 'nowhere'}",
                                      "student.arch=mlp", f"out_dir={tmp_path}"]))


def test_unreadable_or_mismatched_folder_is_refused(tmp_path):
    folder = save_tensor_dataset(tmp_path / "set", *_small_set(), num_classes=3, kind="vector", mean=None, std=None)
    data = folder / "data.pt"
    data.write_bytes(data.read_bytes()[:100])  # truncated: no longer the file meta.json describes
    with pytest.raises(DataError, match=r"data.pt.*does not match meta.json"):
        build_dataset("tensors", path=str(folder))
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()  # consistent hash, corrupt contents
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="cannot be loaded"):
        build_dataset("tensors", path=str(folder))
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json.*cannot be read"):
        build_dataset("tensors", path=str(folder))


# ------------------------------------------------------------------------------------------ training


def test_mlp_learns_breast_cancer(tmp_path):
    cfg = load_config(None, [
        "data.name=breast_cancer", "student.arch=mlp", "student.options.input_features=30", f"out_dir={tmp_path}",
        "train.epochs=2", "train.batch_size=32", "train.progress=false", "train.tensorboard=false",
        "train.device=cpu", "optim.schedule=constant",
    ])
    summary, run_dir = run(cfg)
    assert summary["epochs"] == 2
    assert summary["test_top1"] > 80.0
