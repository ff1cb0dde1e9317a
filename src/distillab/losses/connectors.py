"""Connectors: small trainable modules that map a student feature map onto a teacher's.

Every builder takes probed shapes (batch included: (B, C, L) or (B, C, H, W)) and builds 1-D or 2-D
layers to match, so the same term runs on MNIST-1D signals and on CIFAR images.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def map_dims(shape: Sequence[int]) -> int:
    """Spatial dimensionality (1 or 2) of a probed feature-map shape; 0 for a pooled vector."""
    return len(shape) - 2


def conv_layer(dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[dims]


def conv_transpose_layer(dims: int) -> type[nn.Module]:
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dims]


def batch_norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)


def require_maps(method: str, pairs: dict[str, tuple[Sequence[int], Sequence[int]]]) -> int:
    """Check that every (student, teacher) shape pair holds feature maps of one rank; return it (1 or 2).

    ``pairs`` maps a label (e.g. ``"stage2"``) to the two probed shapes. The ValueError names the method,
    the shapes, and what would work.
    """
    dims = {map_dims(s) for pair in pairs.values() for s in pair}
    if len(dims) != 1 or not dims <= {1, 2}:
        found = {k: (tuple(s), tuple(t)) for k, (s, t) in pairs.items()}
        raise ValueError(
            f"{method}: needs student and teacher feature maps of one kind, all (B, C, L) or all (B, C, H, W); "
            f"got (student, teacher) shapes {found}. Pick convolutional stages of both models with "
            f"method.params.<term>.stages (pooled vectors and MLP layers cannot be used)")
    return dims.pop()


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ConvReg(nn.Module):
    """FitNet's convolutional regressor (RepDistiller / mdistiller ``ConvReg``): conv, BN, optional ReLU.

    The convolution is chosen from the first spatial size of the student (s) and teacher (t) maps:
    s = 2t: 3x3 conv, stride 2, padding 1; 2s = t: 4x4 transposed conv, stride 2, padding 1;
    s >= t otherwise: a valid conv of kernel 1 + s - t along each axis (a 1x1 conv when sizes are equal).
    A smaller student map that is not half the teacher's cannot be mapped: ValueError. The BN runs in
    whatever mode the owning term is in (train mode, batch statistics, while training, as the reference).
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], use_relu: bool = True) -> None:
        super().__init__()
        dims = map_dims(s_shape)
        if dims not in (1, 2) or map_dims(t_shape) != dims:
            raise ValueError(f"ConvReg: needs two 1-D or two 2-D feature maps, got {tuple(s_shape)} and "
                             f"{tuple(t_shape)}")
        s_c, t_c = s_shape[1], t_shape[1]
        s_size, t_size = tuple(s_shape[2:]), tuple(t_shape[2:])
        if s_size[0] == 2 * t_size[0]:
            self.conv = conv_layer(dims)(s_c, t_c, kernel_size=3, stride=2, padding=1)
            out = tuple(_conv_out(n, 3, 2, 1) for n in s_size)
        elif 2 * s_size[0] == t_size[0]:
            self.conv = conv_transpose_layer(dims)(s_c, t_c, kernel_size=4, stride=2, padding=1)
            out = tuple(2 * n for n in s_size)
        elif all(s >= t for s, t in zip(s_size, t_size)):
            self.conv = conv_layer(dims)(s_c, t_c, kernel_size=tuple(1 + s - t for s, t in zip(s_size, t_size)))
            out = t_size
        else:
            out = None
        if out != t_size:
            raise ValueError(
                f"ConvReg: cannot map a student map of size {s_size} onto a teacher map of size {t_size}: the "
                "regressor handles a student map of the same size, twice or half the teacher's, or larger "
                "along every axis; choose another stage (e.g. method.params.hint.feature=stage1)")
        self.bn = batch_norm(dims, t_c)
        self.relu = nn.ReLU() if use_relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """OFD's connector (mdistiller ``ConnectorConvBN``): conv (no bias, 'same' padding) + BN, no activation.

    Initialisation as the reference: conv weights N(0, 2 / (k^d * C_out)), BN weight 1 and bias 0.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = conv_layer(dims)(in_channels, out_channels, kernel_size=kernel_size, stride=1,
                                     padding=(kernel_size - 1) // 2, bias=False)
        self.bn = batch_norm(dims, out_channels)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / (kernel_size**dims * out_channels)))
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def conv1x1_regressor(dims: int, in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """VID's mean regressor (RepDistiller ``VIDLoss.regressor``): three bias-free 1x1 convs, ReLU between."""
    conv = conv_layer(dims)
    return nn.Sequential(
        conv(in_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
        conv(mid_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
        conv(mid_channels, out_channels, kernel_size=1, bias=False),
    )
