"""Data sets, their transforms and the batched augmentations."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from distillab.data import DATASETS, ArrayDataset, DataBundle, build_dataset
from distillab.data import cifar as cifar_module
from distillab.data import mnist1d as mnist1d_module
from distillab.data.augment import RandomCropFlip, RandomShift1D, normalised_black
from distillab.data.cifar import CIFAR_SPECS, download_archive, write_fake_cifar_archive

# ------------------------------------------------------------------------------------ helpers


def check_bundle(bundle: DataBundle, n_check: int = 8) -> None:
    """Items are (input, label, index) with index == position; transforms give finite floats."""
    assert bundle.name in DATASETS
    for split in (bundle.train, bundle.test):
        assert len(split) > 0
        positions = sorted({0, len(split) // 2, len(split) - 1})
        for i in positions:
            x, y, index = split[i]
            assert index == i
            assert tuple(x.shape) == bundle.input_shape
            assert 0 <= int(y) < bundle.num_classes
        batch = torch.stack([split[i][0] for i in range(min(n_check, len(split)))])
        g = torch.Generator().manual_seed(0)
        for out in (bundle.test_transform(batch), bundle.train_transform(batch, g)):
            assert out.dtype == torch.float32
            assert tuple(out.shape) == (len(batch), *bundle.input_shape)
            assert torch.isfinite(out).all()
    if bundle.class_names is not None:
        assert len(bundle.class_names) == bundle.num_classes


# ------------------------------------------------------------------------------- registry / build


def test_all_data_sets_registered():
    assert {"mnist1d", "digits", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(DATASETS.names())
    for entry in DATASETS.entries():
        assert entry.description


@pytest.mark.parametrize(
    "name, options, num_classes, shape",
    [
        ("mnist1d", {"num_samples": 500}, 10, (1, 40)),
        ("digits", {}, 10, (1, 8, 8)),
        ("synthetic", {"n_train": 64, "n_test": 16, "num_classes": 7, "image_size": 16}, 7, (3, 16, 16)),
    ],
)
def test_builds_without_external_files(tmp_path, name, options, num_classes, shape):
    bundle = build_dataset(name, root=tmp_path, **options)
    assert bundle.num_classes == num_classes
    assert bundle.input_shape == shape
    check_bundle(bundle)
    loader = DataLoader(bundle.train, batch_size=5, shuffle=False)
    x, y, index = next(iter(loader))
    assert x.shape == (5, *shape) and y.shape == (5,)
    assert index.tolist() == [0, 1, 2, 3, 4]


def test_unknown_option_names_closest(tmp_path):
    with pytest.raises(ValueError, match=r"'num_sample'.*did you mean 'num_samples'") as info:
        build_dataset("mnist1d", root=tmp_path, num_sample=100)
    assert "mnist1d" in str(info.value) and "train_split" in str(info.value)
    with pytest.raises(ValueError, match="valid options"):
        build_dataset("digits", bogus_option=1)
    with pytest.raises(TypeError):  # the factory itself rejects unknown options naturally
        DATASETS.get("synthetic")(bogus=1)
    with pytest.raises(KeyError, match="did you mean"):
        build_dataset("cifar1000")


# ------------------------------------------------------------------------------------------ mnist1d


def test_mnist1d_sizes_and_normalisation(tmp_path):
    bundle = build_dataset("mnist1d", root=tmp_path, num_samples=500, train_split=0.6)
    assert len(bundle.train) == 300 and len(bundle.test) == 200
    assert bundle.kind == "signal" and bundle.class_names == [str(i) for i in range(10)]
    assert bundle.train.inputs.dtype == torch.float32
    x = bundle.test_transform(bundle.train.inputs)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
    assert isinstance(bundle.augment, RandomShift1D) and bundle.augment.max_shift == 2


def test_mnist1d_cache_and_global_rng(tmp_path, monkeypatch):
    np.random.seed(1234)
    random.seed(1234)
    np_state, py_state = np.random.get_state(), random.getstate()
    first = build_dataset("mnist1d", root=tmp_path, num_samples=500, seed=3)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1
    assert not list(tmp_path.glob(".mnist1d-*"))  # no temporary file left

    def no_generation(args):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mnist1d_module, "_generate", no_generation)
    second = build_dataset("mnist1d", root=tmp_path, num_samples=500, seed=3)
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.test.labels, second.test.labels)
    with pytest.raises(AssertionError, match="cache"):  # other generator arguments: another file
        build_dataset("mnist1d", root=tmp_path, num_samples=500, seed=4)


def test_mnist1d_unreadable_cache_is_regenerated(tmp_path):
    first = build_dataset("mnist1d", root=tmp_path, num_samples=100)
    (cache,) = tmp_path.glob("mnist1d-*.npz")
    for junk in (b"PK\x03\x04 truncated zip", b"not a zip file at all"):
        cache.write_bytes(junk)
        again = build_dataset("mnist1d", root=tmp_path, num_samples=100)
        assert torch.equal(first.train.inputs, again.train.inputs)


def test_mnist1d_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLAB_DATA", str(tmp_path / "env"))
    build_dataset("mnist1d", num_samples=100)
    assert len(list((tmp_path / "env").glob("mnist1d-*.npz"))) == 1


# ------------------------------------------------------------------------------------------- digits


def test_digits_split_and_scaling():
    bundle = build_dataset("digits")
    assert len(bundle.train) + len(bundle.test) == 1797
    assert len(bundle.test) == pytest.approx(0.2 * 1797, abs=1)
    assert float(bundle.train.inputs.min()) == 0.0 and float(bundle.train.inputs.max()) == 1.0
    assert bundle.augment is None
    assert torch.equal(bundle.test.labels, build_dataset("digits").test.labels)  # fixed seed
    assert not torch.equal(bundle.test.inputs, build_dataset("digits", seed=1).test.inputs)


def test_digits_class_subset():
    bundle = build_dataset("digits", classes=[8, 3, 5])
    assert bundle.num_classes == 3 and bundle.class_names == ["8", "3", "5"]
    for split in (bundle.train, bundle.test):
        assert set(split.labels.tolist()) == {0, 1, 2}  # stratified: every class in both splits
    full = build_dataset("digits")
    n8 = int((full.train.labels == 8).sum() + (full.test.labels == 8).sum())
    assert int((bundle.train.labels == 0).sum() + (bundle.test.labels == 0).sum()) == n8
    with pytest.raises(ValueError, match="classes"):
        build_dataset("digits", classes=[3, 3])
    with pytest.raises(ValueError, match="classes"):
        build_dataset("digits", classes=[3, 12])


def test_digits_augment_option():
    bundle = build_dataset("digits", augment=True)
    assert isinstance(bundle.augment, RandomCropFlip)
    assert bundle.augment.padding == 1 and not bundle.augment.flip
    assert bundle.augment.fill == pytest.approx(normalised_black(bundle.mean, bundle.std))
    check_bundle(bundle)


# -------------------------------------------------------------------------------------------- cifar

CIFAR_CASES = [("cifar10", 10), ("cifar100", 100)]


def read_archive_split(archive, spec, files):
    """Images and labels read straight from the archive's pickles, for comparison."""
    data, labels = [], []
    with tarfile.open(archive) as tar:
        for f in files:
            d = pickle.load(tar.extractfile(f"{spec.folder}/{f}"), encoding="bytes")
            data.append(d[b"data"])
            labels.extend(d[spec.label_key.encode()])
    return np.concatenate(data).reshape(-1, 3, 32, 32), np.asarray(labels)


@pytest.mark.parametrize("name, num_classes", CIFAR_CASES)
def test_cifar_from_archive(tmp_path, name, num_classes):
    spec = CIFAR_SPECS[name]
    archive = write_fake_cifar_archive(tmp_path, n_train=53, n_test=20, num_classes=num_classes)
    assert archive == tmp_path / spec.archive
    bundle = build_dataset(name, root=tmp_path)
    assert (tmp_path / spec.folder).is_dir()  # extracted on demand
    assert not list(tmp_path.glob(f".{spec.folder}.*"))  # no temporary folder left
    assert bundle.num_classes == num_classes and bundle.input_shape == (3, 32, 32)
    assert bundle.train.inputs.shape == (53, 3, 32, 32) and bundle.train.inputs.dtype == torch.uint8
    assert bundle.test.inputs.shape == (20, 3, 32, 32)
    assert len(bundle.class_names) == num_classes
    for split, files in ((bundle.train, spec.train_files), (bundle.test, spec.test_files)):
        images, labels = read_archive_split(archive, spec, files)
        assert np.array_equal(split.inputs.numpy(), images)
        assert np.array_equal(split.labels.numpy(), labels)
    assert tuple(bundle.mean) == spec.mean and tuple(bundle.std) == spec.std
    assert isinstance(bundle.augment, RandomCropFlip) and bundle.augment.padding == 4 and bundle.augment.flip
    assert bundle.augment.fill == pytest.approx(normalised_black(spec.mean, spec.std))
    check_bundle(bundle)

    archive.unlink()  # the extracted folder alone is enough
    again = build_dataset(name, root=tmp_path, train_subset=10)
    assert torch.equal(again.train.inputs, bundle.train.inputs[:10])
    assert torch.equal(again.test.labels, bundle.test.labels)


def test_cifar_statistics_match_reference():
    assert CIFAR_SPECS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
    assert CIFAR_SPECS["cifar100"].std == (0.2675, 0.2565, 0.2761)
    assert CIFAR_SPECS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert CIFAR_SPECS["cifar10"].std == (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("name, num_classes", CIFAR_CASES)
def test_cifar_missing_archive(tmp_path, name, num_classes):
    spec = CIFAR_SPECS[name]
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(name, root=tmp_path)
    message = str(info.value)
    for part in (spec.archive, spec.folder, str(tmp_path), "download=True", "put the archive there"):
        assert part in message


@pytest.mark.parametrize("name, num_classes", CIFAR_CASES)
def test_cifar_garbage_archive(tmp_path, name, num_classes):
    spec = CIFAR_SPECS[name]
    (tmp_path / spec.archive).write_bytes(b"this is not a tar.gz archive" * 100)
    with pytest.raises(ValueError, match="re-download") as info:
        build_dataset(name, root=tmp_path)
    assert spec.archive in str(info.value)
    assert not (tmp_path / spec.folder).exists()


def test_cifar_truncated_archive(tmp_path):
    archive = write_fake_cifar_archive(tmp_path, 50, 20, 100)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="re-download"):
        build_dataset("cifar100", root=tmp_path)
    assert not (tmp_path / "cifar-100-python").exists()


def test_cifar_archive_without_expected_files(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"hello"
        info = tarfile.TarInfo("something-else/readme.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="cifar-10-batches-py/data_batch_1"):
        build_dataset("cifar10", root=tmp_path)


def _rewrite_member(root, spec, member, obj_or_bytes):
    path = root / spec.folder / member
    path.write_bytes(obj_or_bytes if isinstance(obj_or_bytes, bytes) else pickle.dumps(obj_or_bytes, protocol=2))
    return path


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x80\x02garbage that is no pickle", "cannot unpickle"),
        ({b"data": np.zeros((5, 100), np.uint8), b"fine_labels": [0] * 5}, r"\(N, 3072\)"),
        ({b"data": np.zeros((5, 3072), np.float32), b"fine_labels": [0] * 5}, "uint8"),
        ({b"data": np.zeros((5, 3072), np.uint8), b"fine_labels": [0] * 4}, "5 images"),
        ({b"data": np.zeros((5, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3, 100]}, "labels outside"),
        ({b"data": np.zeros((5, 3072), np.uint8)}, "fine_labels"),
        ([1, 2, 3], "dict"),
    ],
)
def test_cifar_corrupt_pickle(tmp_path, content, match):
    spec = CIFAR_SPECS["cifar100"]
    write_fake_cifar_archive(tmp_path, 50, 20, 100)
    build_dataset("cifar100", root=tmp_path)  # extracts
    path = _rewrite_member(tmp_path, spec, "train", content)
    with pytest.raises(ValueError, match=match) as info:
        build_dataset("cifar100", root=tmp_path)
    assert str(path) in str(info.value) and "re-download" in str(info.value)


def test_cifar_incomplete_folder(tmp_path):
    write_fake_cifar_archive(tmp_path, 50, 20, 10)
    build_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="data_batch_3"):
        build_dataset("cifar10", root=tmp_path)


def test_cifar_verify_md5_of_found_archive(tmp_path):
    write_fake_cifar_archive(tmp_path, 50, 20, 10)
    with pytest.raises(ValueError, match="MD5"):
        build_dataset("cifar10", root=tmp_path, verify_md5=True)


@pytest.mark.parametrize("name, num_classes", CIFAR_CASES)
def test_cifar_download_from_file_url(tmp_path, monkeypatch, name, num_classes):
    source = write_fake_cifar_archive(tmp_path / "server", 50, 20, num_classes)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    spec = dataclasses.replace(CIFAR_SPECS[name], url=source.as_uri(), md5=md5)
    monkeypatch.setitem(CIFAR_SPECS, name, spec)
    root = tmp_path / "data"
    bundle = build_dataset(name, root=root, download=True, verify_md5=True)
    assert len(bundle.train) == 50 and len(bundle.test) == 20
    assert (root / spec.archive).read_bytes() == source.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == sorted([spec.archive, spec.folder])


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_cifar_download_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    payload = write_fake_cifar_archive(tmp_path / "server", 50, 20, 100).read_bytes()
    requested = []

    def fake_urlopen(url, *args, **kwargs):
        requested.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="MD5") as info:
        build_dataset("cifar100", root=root, download=True)
    assert requested == [CIFAR_SPECS["cifar100"].url]
    assert "re-download" in str(info.value)
    assert list(root.iterdir()) == []  # no archive, no partial file

    dest = tmp_path / "direct" / "archive.tar.gz"
    download_archive("https://example.invalid/a.tar.gz", dest, hashlib.md5(payload).hexdigest(), chunk=1000)
    assert dest.read_bytes() == payload
    assert list(dest.parent.iterdir()) == [dest]


def test_cifar_download_interrupted_leaves_nothing(tmp_path, monkeypatch):
    class Broken(FakeResponse):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection lost")
            return super().read(n)

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", lambda url, *a, **k: Broken(b"x" * 5000))
    with pytest.raises(ConnectionResetError):
        download_archive("https://example.invalid/a.tar.gz", tmp_path / "a.tar.gz", None, chunk=1000)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------- imagefolder


def _write_image(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagefolder_imagenet_layout(tmp_path):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for label, (name, colour) in enumerate(colours.items()):
        for i in range(3):
            _write_image(tmp_path / "train" / name / f"{i}.png", (20 + i, 30), colour)
        _write_image(tmp_path / "val" / name / "v.jpg", (16, 16), colour)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    bundle = build_dataset("imagefolder", root=tmp_path, image_size=16)
    assert bundle.class_names == ["cat", "dog"] and bundle.num_classes == 2
    assert len(bundle.train) == 6 and len(bundle.test) == 2
    assert bundle.input_shape == (3, 16, 16)
    x, y, i = bundle.train[4]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and y == 1 and i == 4
    assert torch.all(x[2] == 255) and torch.all(x[0] == 0)  # a blue dog, resized
    assert bundle.test.targets == [0, 1]
    assert isinstance(bundle.augment, RandomCropFlip) and bundle.augment.padding == 2
    check_bundle(bundle)
    x, y, index = next(iter(DataLoader(bundle.train, batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 0, 1] and index.tolist() == [0, 1, 2, 3]


def test_imagefolder_tiny_imagenet_val_layout(tmp_path):
    wnids = ["n01443537", "n01629819"]
    for k, wnid in enumerate(wnids):
        for i in range(2):
            _write_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (64, 64), (k * 200, 0, 0))
        (tmp_path / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for j, wnid in enumerate([wnids[1], wnids[0], wnids[1]]):
        _write_image(tmp_path / "val" / "images" / f"val_{j}.JPEG", (64, 64), (0, 0, 0))
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    bundle = build_dataset("imagefolder", root=tmp_path)
    assert bundle.class_names == wnids and len(bundle.train) == 4
    assert bundle.test.targets == [1, 0, 1]
    x, y, i = bundle.test[2]
    assert x.shape == (3, 64, 64) and y == 1 and i == 2
    assert bundle.augment.padding == 8
    check_bundle(bundle)


def test_imagefolder_missing_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("imagefolder", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train"):
        build_dataset("imagefolder", root=tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        build_dataset("imagefolder", root=tmp_path)
    _write_image(tmp_path / "train" / "cat" / "a.png", (8, 8), (1, 2, 3))
    with pytest.raises(FileNotFoundError, match="validation folder"):
        build_dataset("imagefolder", root=tmp_path)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        build_dataset("imagefolder", root=tmp_path)
    _write_image(tmp_path / "val" / "bird" / "b.png", (8, 8), (1, 2, 3))
    with pytest.raises(ValueError, match="bird"):
        build_dataset("imagefolder", root=tmp_path)
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("imagefolder")


# ---------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic():
    a = build_dataset("synthetic", n_train=32, n_test=8, seed=5)
    b = build_dataset("synthetic", n_train=32, n_test=8, seed=5)
    c = build_dataset("synthetic", n_train=32, n_test=8, seed=6)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.train.inputs.dtype == torch.uint8 and a.num_classes == 100
    assert isinstance(a.train, ArrayDataset)
    assert a.test_transform(a.train.inputs).std().item() == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------------------------------ augment


def test_crop_flip_identity_without_padding_or_flip():
    x = torch.randn(6, 3, 7, 5)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x, torch.Generator().manual_seed(0)), x)


def test_crop_flip_matches_manual_crop():
    n, c, h, w, p = 16, 3, 6, 5, 2
    x = torch.randn(n, c, h, w)
    fill = [-1.0, -2.0, -3.0]
    aug = RandomCropFlip(padding=p, flip=True, fill=fill)
    params = aug.sample_params(n, torch.Generator().manual_seed(1))
    offsets, flips = params["offsets"], params["flips"]
    assert offsets.shape == (n, 2) and offsets.min() >= 0 and offsets.max() <= 2 * p
    assert flips.any() and not flips.all()
    out = aug.apply(x, params)
    for i in range(n):
        padded = torch.tensor(fill).view(c, 1, 1).expand(c, h + 2 * p, w + 2 * p).clone()
        padded[:, p : p + h, p : p + w] = x[i]
        oy, ox = offsets[i].tolist()
        crop = padded[:, oy : oy + h, ox : ox + w]
        if flips[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop), i


def test_crop_flip_flips():
    x = torch.randn(2, 3, 4, 4)
    aug = RandomCropFlip(padding=0, flip=True)
    out = aug.apply(x, {"offsets": torch.zeros(2, 2, dtype=torch.long), "flips": torch.tensor([True, False])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_crop_flip_pads_with_normalised_black_like_torchvision():
    """Padding after normalisation equals torchvision's: pad the raw image with 0, then normalise."""
    spec = CIFAR_SPECS["cifar100"]
    bundle = DataBundle(
        name="cifar100", train=None, test=None, num_classes=100, input_shape=(3, 32, 32), kind="image",
        mean=spec.mean, std=spec.std,
        augment=RandomCropFlip(4, fill=normalised_black(spec.mean, spec.std)),
    )
    raw = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    params = bundle.augment.sample_params(8, torch.Generator().manual_seed(2))
    params["offsets"][0] = torch.tensor([0, 0])  # maximal padding visible at the top left
    ours = bundle.augment.apply(bundle.test_transform(raw), params)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    for i in range(8):
        padded = torch.nn.functional.pad(raw[i], (4, 4, 4, 4), value=0)  # black, as torchvision
        oy, ox = params["offsets"][i].tolist()
        crop = padded[:, oy : oy + 32, ox : ox + 32]
        if params["flips"][i]:
            crop = crop.flip(-1)
        reference = (crop.float() / 255 - mean) / std
        torch.testing.assert_close(ours[i], reference, rtol=0, atol=1e-6)
    black = torch.tensor(normalised_black(spec.mean, spec.std))
    torch.testing.assert_close(ours[0, :, 0, :].mean(-1), black)


def test_augment_same_seed_same_output():
    x = torch.randn(32, 3, 8, 8)
    s = torch.randn(32, 2, 20)
    for aug, batch in ((RandomCropFlip(2), x), (RandomShift1D(3), s)):
        a = aug(batch, torch.Generator().manual_seed(7))
        b = aug(batch, torch.Generator().manual_seed(7))
        c = aug(batch, torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
        g = torch.Generator().manual_seed(7)
        assert torch.equal(aug.apply(batch, aug.sample_params(32, g)), a)


def test_shift_matches_manual_shift():
    n, c, length, m = 24, 2, 10, 3
    x = torch.randn(n, c, length)
    g = torch.Generator().manual_seed(3)
    zero, circular = RandomShift1D(m), RandomShift1D(m, mode="circular")
    params = zero.sample_params(n, g)
    shifts = params["shifts"]
    assert shifts.min() >= -m and shifts.max() <= m and len(set(shifts.tolist())) > 3
    out_zero, out_circ = zero.apply(x, params), circular.apply(x, params)
    for i in range(n):
        s = int(shifts[i])
        expected = torch.zeros(c, length)
        for t in range(length):
            if 0 <= t - s < length:
                expected[:, t] = x[i, :, t - s]
        assert torch.equal(out_zero[i], expected)
        assert torch.equal(out_circ[i], torch.roll(x[i], s, dims=-1))
    assert torch.equal(RandomShift1D(0)(x, g), x)
