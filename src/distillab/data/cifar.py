"""CIFAR-10 and CIFAR-100 from the official Python-version archives.

``root`` is a directory holding either the extracted folder (``cifar-10-batches-py`` /
``cifar-100-python``) or the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``),
which is then extracted into ``root``. ``download=True`` fetches the archive from its official
address (to a temporary file, MD5-checked, then renamed into place). An archive found in ``root`` is
checked for structure (keys, shapes, label range) rather than MD5, unless ``verify_md5=True``.

Images stay uint8 (N, 3, 32, 32); the bundle's transforms normalise them on the training device with
the RepDistiller / mdistiller statistics and augment with a 4-pixel random crop (black padding) plus
horizontal flip.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillab.core.files import atomic_file
from distillab.data.augment import RandomCropFlip, normalised_black
from distillab.data.base import DATASETS, ArrayDataset, DataBundle, resolve_root

FIX_MISSING = "pass download=True (data.download=true) or put the archive there"


@dataclass(frozen=True)
class CifarSpec:
    name: str
    archive: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files + (self.meta_file,)


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        # RepDistiller's dataset/cifar100.py (also mdistiller's): Normalize((0.5071, 0.4867, 0.4408),
        # (0.2675, 0.2565, 0.2761)).
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
    ),
}


# ----------------------------------------------------------------------------------------- download


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _progress():
    """A rich progress bar for downloads, or None when rich is not installed."""
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def download_archive(url: str, dest: Path, md5: str | None, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` through a temporary file in the same folder, checking the MD5.

    The temporary file is renamed onto ``dest`` only once complete and verified; on any failure it
    is removed, so no partial archive is ever left under ``dest``'s name.
    """
    dest = Path(dest)
    h = hashlib.md5()
    with atomic_file(dest) as out:
        try:
            response = urllib.request.urlopen(url)
        except OSError as e:
            raise OSError(
                f"could not download {url}: {e}. Check the connection, or download it by hand "
                f"and put it at {dest}"
            ) from e
        with response:
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total = int(total) if total and str(total).isdigit() else None
            progress = _progress()
            task = None
            if progress is not None:
                progress.start()
                task = progress.add_task(f"downloading {dest.name}", total=total)
            try:
                while True:
                    block = response.read(chunk)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    if progress is not None:
                        progress.update(task, advance=len(block))
            finally:
                if progress is not None:
                    progress.stop()
        if md5 is not None and h.hexdigest() != md5:  # raised inside the block: nothing replaces dest
            raise ValueError(
                f"downloaded {url} has MD5 {h.hexdigest()}, expected {md5}: the download is corrupt; "
                f"nothing was written to {dest}. Delete any copy of {dest.name} and re-download "
                f"(download=True)"
            )
    return dest


# -------------------------------------------------------------------------------------- extraction


def _corrupt(path: Path, what: str, spec: CifarSpec, root: Path) -> ValueError:
    return ValueError(
        f"{path} is corrupt ({what}). Delete {root / spec.folder} and {root / spec.archive} and "
        f"re-download (download=True), or put an intact {spec.archive} in {root}"
    )


def _extract(archive: Path, spec: CifarSpec, root: Path) -> Path:
    """Extract ``archive`` into ``root`` atomically (via a temporary folder); returns the data folder."""
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{spec.folder}."))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:  # pragma: no cover - Python without extraction filters
                    for member in tar.getmembers():
                        target = (tmp / member.name).resolve()
                        if tmp.resolve() not in target.parents or not (member.isfile() or member.isdir()):
                            raise tarfile.TarError(f"unsafe member {member.name!r}")
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise ValueError(
                f"{archive} is not a readable .tar.gz ({e}). Delete it and re-download (download=True), "
                f"or put an intact {spec.archive} in {root}"
            ) from e
        extracted = tmp / spec.folder
        missing = [f for f in spec.files if not (extracted / f).is_file()]
        if missing:
            raise ValueError(
                f"{archive} does not hold {spec.folder}/{missing[0]} (missing: {', '.join(missing)}): "
                f"it is not the {spec.name} Python-version archive or it is corrupt. Delete it and "
                f"re-download (download=True)"
            )
        try:
            os.replace(extracted, root / spec.folder)
        except OSError:
            # another process extracted the same archive meanwhile: keep its complete copy
            if any(not (root / spec.folder / f).is_file() for f in spec.files):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / spec.folder


def locate(spec: CifarSpec, root: Path, download: bool, verify_md5: bool) -> Path:
    """The extracted data folder under ``root``, extracting or downloading the archive as needed."""
    folder = root / spec.folder
    archive = root / spec.archive
    if folder.is_dir():
        missing = [f for f in spec.files if not (folder / f).is_file()]
        if not missing:
            return folder
        raise ValueError(
            f"{folder} is incomplete (missing: {', '.join(missing)}): delete it, then put "
            f"{spec.archive} in {root} or pass download=True (data.download=true) to re-download"
        )
    if archive.is_file():
        if verify_md5:
            got = file_md5(archive)
            if got != spec.md5:
                raise ValueError(
                    f"{archive} has MD5 {got}, expected {spec.md5}: it is corrupt or not the official "
                    f"archive. Delete it and re-download (download=True)"
                )
    elif download:
        root.mkdir(parents=True, exist_ok=True)
        download_archive(spec.url, archive, spec.md5)
    else:
        raise FileNotFoundError(
            f"{spec.name}: neither {spec.folder}/ nor {spec.archive} found in {root}: {FIX_MISSING}"
        )
    return _extract(archive, spec, root)


# ------------------------------------------------------------------------------------------ reading


def _text(key) -> str:
    return key.decode("latin1") if isinstance(key, bytes) else str(key)


def _unpickle(path: Path, spec: CifarSpec, root: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise _corrupt(path, f"cannot unpickle: {type(e).__name__}: {e}", spec, root) from e
    if not isinstance(obj, dict):
        raise _corrupt(path, f"expected a pickled dict, found {type(obj).__name__}", spec, root)
    return {_text(k): v for k, v in obj.items()}


def _read_batch(path: Path, spec: CifarSpec, root: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path, spec, root)
    for key in ("data", spec.label_key):
        if key not in d:
            raise _corrupt(path, f"no {key!r} entry; keys are {sorted(d)}", spec, root)
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise _corrupt(path, f"'data' must be uint8 of shape (N, 3072), found {dtype} {shape}", spec, root)
    try:
        labels = np.asarray(d[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise _corrupt(path, f"{spec.label_key!r} is not a list of integers", spec, root) from e
    if labels.shape != (len(data),):
        raise _corrupt(
            path, f"{len(data)} images but {spec.label_key!r} has shape {labels.shape}", spec, root
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise _corrupt(
            path,
            f"labels outside 0..{spec.num_classes - 1} (found {labels.min()}..{labels.max()})",
            spec,
            root,
        )
    return data, labels


def _read_split(folder: Path, files: tuple[str, ...], spec: CifarSpec, root: Path):
    parts = [_read_batch(folder / f, spec, root) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _read_names(folder: Path, spec: CifarSpec, root: Path) -> list[str]:
    path = folder / spec.meta_file
    d = _unpickle(path, spec, root)
    names = d.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise _corrupt(path, f"{spec.names_key!r} must list {spec.num_classes} class names", spec, root)
    return [_text(n) for n in names]


def load_cifar(
    name: str,
    root: str | Path | None,
    download: bool,
    verify_md5: bool = False,
    train_subset: int | None = None,
) -> DataBundle:
    spec = CIFAR_SPECS[name]
    root_path = resolve_root(root)
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be a positive number of samples or None, got {train_subset}")
    folder = locate(spec, root_path, download, verify_md5)
    x_train, y_train = _read_split(folder, spec.train_files, spec, root_path)
    x_test, y_test = _read_split(folder, spec.test_files, spec, root_path)
    class_names = _read_names(folder, spec, root_path)
    if train_subset is not None:
        x_train, y_train = x_train[:train_subset].clone(), y_train[:train_subset].clone()
    return DataBundle(
        name=name,
        train=ArrayDataset(x_train, y_train),
        test=ArrayDataset(x_test, y_test),
        num_classes=spec.num_classes,
        input_shape=(3, 32, 32),
        kind="image",
        mean=spec.mean,
        std=spec.std,
        augment=RandomCropFlip(padding=4, flip=True, fill=normalised_black(spec.mean, spec.std)),
        class_names=class_names,
    )


@DATASETS.register("cifar10", description="CIFAR-10 (3x32x32, 10 classes) from the official archive")
def cifar10(
    root: str | Path | None = None,
    download: bool = False,
    verify_md5: bool = False,
    train_subset: int | None = None,
) -> DataBundle:
    """CIFAR-10. verify_md5: check a found archive's MD5 too. train_subset: keep the first n."""
    return load_cifar("cifar10", root, download, verify_md5, train_subset)


@DATASETS.register("cifar100", description="CIFAR-100 (3x32x32, 100 classes) from the official archive")
def cifar100(
    root: str | Path | None = None,
    download: bool = False,
    verify_md5: bool = False,
    train_subset: int | None = None,
) -> DataBundle:
    """CIFAR-100 (fine labels). verify_md5: check a found archive's MD5 too. train_subset: keep the first n."""
    return load_cifar("cifar100", root, download, verify_md5, train_subset)


# ------------------------------------------------------------------------------- archives for tests


def _pickle_bytes(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)


def write_fake_cifar_archive(
    path: str | Path, n_train: int = 50, n_test: int = 20, num_classes: int = 10, seed: int = 0
) -> Path:
    """Write a small archive in the official Python-version format, with random images and labels.

    ``num_classes`` 10 writes ``cifar-10-python.tar.gz``'s layout (five data batches, test_batch,
    batches.meta); 100 writes ``cifar-100-python.tar.gz``'s (train, test, meta with fine and coarse
    labels). Dicts have bytes keys, as the originals read with ``encoding="bytes"``. ``path`` is the
    archive file, or a directory to put it in under its official name. Returns the archive's path.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    spec = CIFAR_SPECS["cifar10" if num_classes == 10 else "cifar100"]
    path = Path(path)
    if path.is_dir():
        path = path / spec.archive
    rng = np.random.default_rng(seed)

    def batch(n: int, label: str, start: int) -> dict:
        labels = [int(v) for v in rng.integers(0, num_classes, n)]
        d = {
            b"batch_label": label.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{start + i:06d}.png".encode() for i in range(n)],
        }
        if num_classes == 10:
            d[b"labels"] = labels
        else:
            d[b"fine_labels"] = labels
            d[b"coarse_labels"] = [v // 5 for v in labels]
        return d

    members: dict[str, bytes] = {}
    if num_classes == 10:
        sizes = [n_train // 5 + (1 if i < n_train % 5 else 0) for i in range(5)]
        start = 0
        for i, (fname, n) in enumerate(zip(spec.train_files, sizes)):
            members[fname] = _pickle_bytes(batch(n, f"training batch {i + 1} of 5", start))
            start += n
        members["test_batch"] = _pickle_bytes(batch(n_test, "testing batch 1 of 1", 0))
        members["batches.meta"] = _pickle_bytes(
            {
                b"num_cases_per_batch": max(sizes),
                b"label_names": [f"class_{i}".encode() for i in range(10)],
                b"num_vis": 3072,
            }
        )
    else:
        members["train"] = _pickle_bytes(batch(n_train, "training batch 1 of 1", 0))
        members["test"] = _pickle_bytes(batch(n_test, "testing batch 1 of 1", 0))
        members["meta"] = _pickle_bytes(
            {
                b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
            }
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(spec.folder)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for fname, payload in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{fname}")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
    return path
