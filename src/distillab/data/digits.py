"""scikit-learn's 8x8 handwritten digits (1797 samples, 16 grey levels), split with a fixed seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distillab.data.augment import RandomCropFlip, normalised_black
from distillab.data.base import DATASETS, ArrayDataset, DataBundle


@DATASETS.register("digits", description="scikit-learn 8x8 digits (1x8x8, 10 classes), stratified split")
def digits(
    root: str | Path | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    classes: list[int] | None = None,
    augment: bool = False,
) -> DataBundle:
    """The digits data set shipped with scikit-learn (no files needed; root/download are unused).

    test_fraction / seed: stratified train/test split. classes: keep only these digits, re-labelled
    0..k-1 in the given order (class_names keep the digits, e.g. ["3", "5", "8"]). augment: a random
    1-pixel shift (crop of a 1-pixel padded image, padded with black, no flip). Inputs are float32
    (N, 1, 8, 8) scaled to [0, 1]; mean and std are the training set's (one channel).
    """
    del root, download
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    raw = load_digits()
    images = raw.images.astype(np.float32) / 16.0
    labels = raw.target.astype(np.int64)
    if classes is None:
        classes = list(range(10))
    else:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must be at least two distinct digits in 0..9, got {classes}")
        keep = np.isin(labels, classes)
        relabel = np.full(10, -1, dtype=np.int64)
        relabel[classes] = np.arange(len(classes))
        images, labels = images[keep], relabel[labels[keep]]

    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=labels, shuffle=True
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    x_train, x_test = x[train_idx], x[test_idx]
    mean = [float(x_train.double().mean())]
    std = [float(x_train.double().std())]
    return DataBundle(
        name="digits",
        train=ArrayDataset(x_train, y[train_idx]),
        test=ArrayDataset(x_test, y[test_idx]),
        num_classes=len(classes),
        input_shape=(1, 8, 8),
        kind="image",
        mean=mean,
        std=std,
        augment=RandomCropFlip(padding=1, flip=False, fill=normalised_black(mean, std)) if augment else None,
        class_names=[str(c) for c in classes],
    )
