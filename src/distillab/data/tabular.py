"""Tabular data sets from scikit-learn's bundled copies (nothing is downloaded): feature vectors (N, D).

The data sets of model compression (Buciluǎ, Caruana & Niculescu-Mizil, KDD 2006) are tables of
attributes; these three small ones let a teacher, an MLP student and a MUNGE transfer set
(:mod:`distillab.munge`) run in seconds on a CPU:

- ``breast_cancer``: Wisconsin diagnostic breast cancer, 569 samples, 30 features, 2 classes;
- ``wine``: UCI wine recognition, 178 samples, 13 features, 3 classes;
- ``digits_vector``: the 8x8 digits of ``digits`` as 64 grey levels (0..16), 1797 samples, 10 classes.

Inputs stay raw (float32); the bundle standardises each feature with the training split's mean and
standard deviation. No augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distillab.data.base import DATASETS, ArrayDataset, DataBundle


def feature_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-feature mean and standard deviation of a (training) matrix (N, D). A constant feature gets
    standard deviation 1, so standardising maps it to 0 instead of dividing by zero (``digits_vector``
    has pixels that are blank in every image)."""
    x = x.double()
    std = x.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return x.mean(dim=0).tolist(), std.tolist()


def tabular_bundle(name: str, features: np.ndarray, labels: np.ndarray, class_names: list[str],
                   test_fraction: float, seed: int) -> DataBundle:
    """A vector data set from a feature matrix (N, D) and integer labels: stratified train/test split
    (``test_fraction``, ``seed``), per-feature standardisation with the training split's statistics."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels,
                                           shuffle=True)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    mean, std = feature_stats(x[train_idx])
    return DataBundle(
        name=name,
        train=ArrayDataset(x[train_idx], y[train_idx]),
        test=ArrayDataset(x[test_idx], y[test_idx]),
        num_classes=len(class_names),
        input_shape=(x.shape[1],),
        kind="vector",
        mean=mean,
        std=std,
        augment=None,
        class_names=class_names,
    )


def _sklearn_table(name: str, loader: Callable, root: str | Path | None, download: bool, test_fraction: float,
                   seed: int) -> DataBundle:
    del root, download  # bundled with scikit-learn: no files, nothing to download
    raw = loader()
    return tabular_bundle(name, raw.data, raw.target, [str(c) for c in raw.target_names], test_fraction, seed)


@DATASETS.register("breast_cancer", description="scikit-learn breast cancer table (30 features, 2 classes)")
def breast_cancer(root: str | Path | None = None, download: bool = False, test_fraction: float = 0.2,
                  seed: int = 0) -> DataBundle:
    """Wisconsin diagnostic breast cancer (569 samples; classes malignant, benign), as bundled with
    scikit-learn. test_fraction / seed: stratified train/test split. root/download are unused."""
    from sklearn.datasets import load_breast_cancer

    return _sklearn_table("breast_cancer", load_breast_cancer, root, download, test_fraction, seed)


@DATASETS.register("wine", description="scikit-learn wine table (13 features, 3 classes)")
def wine(root: str | Path | None = None, download: bool = False, test_fraction: float = 0.2,
         seed: int = 0) -> DataBundle:
    """UCI wine recognition (178 samples, three cultivars), as bundled with scikit-learn.
    test_fraction / seed: stratified train/test split. root/download are unused."""
    from sklearn.datasets import load_wine

    return _sklearn_table("wine", load_wine, root, download, test_fraction, seed)


@DATASETS.register("digits_vector", description="scikit-learn 8x8 digits as 64 features (10 classes)")
def digits_vector(root: str | Path | None = None, download: bool = False, test_fraction: float = 0.2,
                  seed: int = 0) -> DataBundle:
    """The 8x8 digits (1797 samples) flattened to 64 grey levels (0..16) per sample, as a table; the
    same options give the same split as ``digits``. root/download are unused."""
    from sklearn.datasets import load_digits

    return _sklearn_table("digits_vector", load_digits, root, download, test_fraction, seed)
