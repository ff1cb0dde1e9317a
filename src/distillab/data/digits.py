"""scikit-learn's 8x8 handwritten digits (1797 samples, 16 grey levels), split with a fixed seed.

Privileged information (``lowres=<block size>``; learning using privileged information, Lopez-Paz et
al. 2016): each sample also gets a field ``lowres``, the digit averaged over ``lowres x lowres`` blocks
and repeated back to 8x8 (:func:`block_average`), so the same architectures read it. The student reads
``lowres`` (``student: {input: lowres}``), the teacher the full digit (``input``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distillab.data.augment import RandomCropFlip, normalised_black
from distillab.data.base import DATASETS, ArrayDataset, DataBundle, InputField, scalar_stats

LOWRES = "lowres"  # the low-resolution field the student reads
SIDE = 8  # the images are SIDE x SIDE
BLOCK_SIZES = (2, 4, 8)  # block sizes that tile the image


def block_average(images: torch.Tensor, block: int) -> torch.Tensor:
    """(N, C, H, W) -> the same shape, each ``block x block`` block replaced by its mean (average
    pooling, then nearest-neighbour upsampling by repetition)."""
    pooled = F.avg_pool2d(images, block)
    return pooled.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)



@DATASETS.register(
    "digits",
    description="scikit-learn 8x8 digits (1x8x8, 10 classes), stratified split",
    fields=lambda options: (LOWRES,) if options.get("lowres") is not None else (),
    field_hints={LOWRES: "set data.options.lowres=2 (or 4: the block size)"},
)
def digits(
    root: str | Path | None = None,
    download: bool = False,
    test_fraction: float = 0.2,
    seed: int = 0,
    classes: list[int] | None = None,
    augment: bool = False,
    lowres: int | None = None,
) -> DataBundle:
    """The digits data set shipped with scikit-learn (no files needed; root/download are unused).

    test_fraction / seed: stratified train/test split. classes: keep only these digits, re-labelled
    0..k-1 in the given order (class_names keep the digits, e.g. ["3", "5", "8"]). augment: a random
    1-pixel shift (crop of a 1-pixel padded image, padded with black, no flip). Inputs are float32
    (N, 1, 8, 8) scaled to [0, 1]; mean and std are the training set's (one channel). lowres: a block
    size (2, 4 or 8); each sample also gets the field ``lowres``, its :func:`block_average` over
    lowres x lowres blocks, with its own training-set mean and std, shifted with the main input.
    """
    del root, download
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if lowres is not None and lowres not in BLOCK_SIZES:
        raise ValueError(f"lowres must be a block size that tiles the {SIDE}x{SIDE} image "
                         f"({', '.join(map(str, BLOCK_SIZES))}), got {lowres}")
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
    train_fields, test_fields, fields = {}, {}, {}
    if lowres is not None:
        coarse = block_average(x, int(lowres))
        train_fields[LOWRES], test_fields[LOWRES] = coarse[train_idx], coarse[test_idx]
        low_mean, low_std = scalar_stats(train_fields[LOWRES])
        # the shared 1-pixel crop pads with black as this view is normalised, not as the main one is
        fields[LOWRES] = InputField((1, SIDE, SIDE), low_mean, low_std, augment="shared",
                                    fill=normalised_black(low_mean, low_std))
    mean, std = scalar_stats(x_train)
    return DataBundle(
        name="digits",
        train=ArrayDataset(x_train, y[train_idx], train_fields),
        test=ArrayDataset(x_test, y[test_idx], test_fields),
        num_classes=len(classes),
        input_shape=(1, SIDE, SIDE),
        kind="image",
        mean=mean,
        std=std,
        augment=RandomCropFlip(padding=1, flip=False, fill=normalised_black(mean, std)) if augment else None,
        class_names=[str(c) for c in classes],
        fields=fields,
    )
