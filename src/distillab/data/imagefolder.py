"""Images in class folders (ImageNet layout, also Tiny-ImageNet's validation layout), read with Pillow.

Layout under ``root``::

    train/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp,ppm}
    val/<class>/**/*.{...}                  (ImageNet layout), or
    val/images/*.JPEG + val/val_annotations.txt   (Tiny-ImageNet: "<file>\\t<class>\\t...")

Classes are the sub-folders of ``train/``, sorted; validation classes must be among them. Images
are decoded lazily in ``__getitem__``: converted to RGB, the shorter side resized to ``image_size``
(bilinear) and the centre cropped to ``image_size`` x ``image_size``, returned as a uint8 (3, S, S)
tensor; images already of that size are passed through unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distillab.data.augment import RandomCropFlip, normalised_black
from distillab.data.base import DATASETS, DataBundle

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Decode one image to a uint8 (3, S, S) tensor: RGB, shorter side resized to S, centre crop."""
    from PIL import Image

    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (image_size, image_size))  # decode at a reduced scale when possible
        img = img.convert("RGB")
        w, h = img.size
        if (w, h) != (image_size, image_size):
            scale = image_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            img = img.resize((nw, nh), getattr(Image, "Resampling", Image).BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """A list of (path, label) read lazily; item ``i`` is ``(uint8 (3, S, S) tensor, label, i)``."""

    def __init__(self, samples: Sequence[tuple[Path, int]], image_size: int) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return load_image(path, self.image_size), label, i


def _fix(root: Path, download: bool) -> str:
    note = " (this data set cannot be downloaded)" if download else ""
    return f"put the images under {root}/train/<class>/ and {root}/val/<class>/{note}"


def _train_samples(train: Path, root: Path, download: bool) -> tuple[list[str], list[tuple[Path, int]]]:
    if not train.is_dir():
        raise FileNotFoundError(f"imagefolder: no training folder {train}: {_fix(root, download)}")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"imagefolder: {train} holds no class folders: {_fix(root, download)}")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = _images_under(train / name)
        if not files:
            raise FileNotFoundError(
                f"imagefolder: class folder {train / name} holds no images "
                f"({', '.join(IMAGE_EXTENSIONS)}): {_fix(root, download)}"
            )
        samples.extend((f, label) for f in files)
    return classes, samples


def _val_samples(
    val: Path, classes: list[str], root: Path, download: bool
) -> list[tuple[Path, int]]:
    if not val.is_dir():
        raise FileNotFoundError(f"imagefolder: no validation folder {val}: {_fix(root, download)}")
    index = {name: i for i, name in enumerate(classes)}
    annotations = val / "val_annotations.txt"
    samples: list[tuple[Path, int]] = []
    if annotations.is_file():  # Tiny-ImageNet layout
        images = val / "images"
        for n, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise ValueError(f"{annotations} line {n} is not '<file>\\t<class>...': {line!r}")
            fname, cls = parts[0], parts[1]
            if cls not in index:
                raise ValueError(f"{annotations} line {n}: class {cls!r} is not a folder of {root / 'train'}")
            path = images / fname
            if not _is_image(path):
                raise FileNotFoundError(f"{annotations} line {n} names {path}, which is not an image file")
            samples.append((path, index[cls]))
    else:
        folders = sorted(p.name for p in val.iterdir() if p.is_dir())
        unknown = [name for name in folders if name not in index]
        if unknown:
            raise ValueError(
                f"imagefolder: validation classes {unknown[:5]} in {val} are not folders of {root / 'train'}"
            )
        for name in folders:
            samples.extend((f, index[name]) for f in _images_under(val / name))
    if not samples:
        raise FileNotFoundError(f"imagefolder: {val} holds no images: {_fix(root, download)}")
    return samples


@DATASETS.register("imagefolder", description="images in train/<class>/, val/<class>/ folders (ImageNet layout)")
def imagefolder(
    root: str | Path | None = None,
    download: bool = False,
    image_size: int = 64,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DataBundle:
    """Images in class folders under ``root`` (train/ and val/), read lazily with Pillow.

    image_size: side of the square uint8 images produced. mean/std: normalisation (ImageNet's by
    default). Training augmentation: random crop of an image padded by image_size // 8 (black)
    plus horizontal flip.
    """
    if root is None:
        raise ValueError("imagefolder needs root: the folder holding train/ and val/")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: folder {root} does not exist: {_fix(root, download)}")
    classes, train_samples = _train_samples(root / "train", root, download)
    val_samples = _val_samples(root / "val", classes, root, download)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return DataBundle(
        name="imagefolder",
        train=ImageFolderDataset(train_samples, image_size),
        test=ImageFolderDataset(val_samples, image_size),
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        kind="image",
        mean=mean,
        std=std,
        augment=RandomCropFlip(padding=image_size // 8, flip=True, fill=normalised_black(mean, std)),
        class_names=classes,
    )
