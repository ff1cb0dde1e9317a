"""Random CIFAR-shaped images and labels, generated deterministically: for throughput runs."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from distillab.data.augment import RandomCropFlip, normalised_black
from distillab.data.base import DATASETS, ArrayDataset, DataBundle

# Statistics of uniform uint8 noise scaled to [0, 1]: mean 255/2/255, variance (256^2 - 1)/12/255^2.
UNIFORM_MEAN = 0.5
UNIFORM_STD = math.sqrt((256**2 - 1) / 12) / 255


@DATASETS.register("synthetic", description="random uint8 images and labels (CIFAR-shaped), for throughput")
def synthetic(
    root: str | Path | None = None,
    download: bool = False,
    n_train: int = 10000,
    n_test: int = 1000,
    num_classes: int = 100,
    image_size: int = 32,
    seed: int = 0,
) -> DataBundle:
    """Uniform random uint8 images (N, 3, S, S) with uniform random labels; nothing to learn.

    The same options give the same tensors. Augmentation as CIFAR: random crop with padding
    image_size // 8 plus horizontal flip. root/download are unused.
    """
    del root, download
    if n_train < 1 or n_test < 1 or num_classes < 1 or image_size < 1:
        raise ValueError(
            f"n_train, n_test, num_classes and image_size must be positive, got "
            f"{n_train}, {n_test}, {num_classes}, {image_size}"
        )
    g = torch.Generator().manual_seed(seed)
    shape = (3, image_size, image_size)

    def split(n: int) -> ArrayDataset:
        images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        return ArrayDataset(images, labels)

    train, test = split(n_train), split(n_test)
    mean, std = (UNIFORM_MEAN,) * 3, (UNIFORM_STD,) * 3
    return DataBundle(
        name="synthetic",
        train=train,
        test=test,
        num_classes=num_classes,
        input_shape=shape,
        kind="image",
        mean=mean,
        std=std,
        augment=RandomCropFlip(padding=image_size // 8, flip=True, fill=normalised_black(mean, std)),
        class_names=[str(i) for i in range(num_classes)],
    )
