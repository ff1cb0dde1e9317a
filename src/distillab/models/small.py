"""Small models for small data: MNIST-1D signals (1, 40), scikit-learn digits (1, 8, 8) and tabular
feature vectors (D,).

Every hidden stage ends in a parameter-free ReLU module (``act``), so ``<stage>.act:input`` is its
pre-activation. A flat (MLP) feature counts as fully reduced: its stride is the product of the input's
spatial sizes (the length of a signal; 1 for a feature vector, which has none).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn
from distillab.models.layers import ConvBNAct


class SmallCNN(ZooModel):
    """A stack of conv-BN-ReLU stages (1-D or 2-D), global average pool, linear classifier."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, widths: Sequence[int],
                 strides: Sequence[int], kernel_sizes: Sequence[int], dims: int) -> None:
        super().__init__()
        stages, total, self.feature_info = [], 1, []
        for i, (w, s, k) in enumerate(zip(widths, strides, kernel_sizes, strict=True)):
            stages.append(ConvBNAct(widths[i - 1] if i else in_channels, w, k, s, dims=dims))
            total *= s
            self.feature_info.append(FeatureStage(f"stages.{i}", w, total, preact=f"stages.{i}.act:input",
                                                  bn=f"stages.{i}.bn"))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

        self.num_classes = num_classes
        self.input_shape = (in_channels,) + (input_size,) * dims
        self.embedding_dim = widths[-1]
        self.head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(x)), 1))


class LinearBNAct(nn.Module):
    def __init__(self, in_features: int, out_features: int, norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=not norm)
        self.bn = nn.BatchNorm1d(out_features) if norm else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.linear(x)))


class MLP(ZooModel):
    """Flatten, hidden linear-BN-ReLU layers, linear classifier (``norm=False``: no BatchNorm, so a
    sample's output does not depend on the rest of its batch).

    input_shape: one sample's shape, ``(channels, length)`` for a signal or ``(features,)`` for a vector;
    the first layer reads all its values flattened.
    """

    def __init__(self, num_classes: int, input_shape: Sequence[int], hidden: Sequence[int],
                 norm: bool = True) -> None:
        super().__init__()
        sizes = [math.prod(input_shape), *hidden]
        self.hidden = nn.Sequential(*(LinearBNAct(a, b, norm) for a, b in zip(sizes[:-1], sizes[1:])))
        self.fc = nn.Linear(sizes[-1], num_classes)
        init_conv_bn(self)

        self.num_classes = num_classes
        self.input_shape = tuple(int(n) for n in input_shape)
        self.embedding_dim = sizes[-1]
        self.head = "fc"
        reduced = math.prod(self.input_shape[1:])  # a flat feature is fully reduced (1: a vector has no spatial axis)
        self.feature_info = [FeatureStage(f"hidden.{i}", h, reduced, preact=f"hidden.{i}.act:input",
                                          bn=f"hidden.{i}.bn" if norm else None) for i, h in enumerate(hidden)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(torch.flatten(x, 1)))


@MODELS.register("cnn1d", description="1-D CNN for MNIST-1D: three stride-2 conv-BN-ReLU stages, global pool")
def cnn1d(num_classes: int, in_channels: int = 1, length: int = 40, width: int = 32) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, length, [width, width, 2 * width], [2, 2, 2], [5, 3, 3], dims=1)


@MODELS.register("cnn1d_small", description="weak 1-D CNN student for MNIST-1D: two narrow stride-2 stages")
def cnn1d_small(num_classes: int, in_channels: int = 1, length: int = 40, width: int = 8) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, length, [width, width], [2, 2], [5, 3], dims=1)


@MODELS.register("mlp1d", description="MLP on the flattened MNIST-1D signal")
def mlp1d(num_classes: int, in_channels: int = 1, length: int = 40, hidden: Sequence[int] = (128, 128),
          norm: bool = True) -> MLP:
    return MLP(num_classes, (in_channels, length), hidden, norm)


@MODELS.register("mlp", description="MLP on a feature vector (tabular data): hidden linear-BN-ReLU layers")
def mlp(num_classes: int, input_features: int = 30, hidden: Sequence[int] = (64,), norm: bool = True) -> MLP:
    """input_features: length of the input vector (30: breast_cancer; wine has 13, digits_vector 64).
    hidden: sizes of the hidden layers. norm: BatchNorm before each ReLU."""
    return MLP(num_classes, (input_features,), hidden, norm)


@MODELS.register("cnn_digits", description="2-D CNN for 8x8 scikit-learn digits: three conv-BN-ReLU stages")
def cnn_digits(num_classes: int, in_channels: int = 1, size: int = 8, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, size, [width, 2 * width, 4 * width], [1, 2, 2], [3, 3, 3], dims=2)
