"""Small building blocks shared by several model files."""

from __future__ import annotations

import torch
from torch import nn


class ShuffleBlock(nn.Module):
    """Channel shuffle: (N, C, ...) viewed as (N, g, C/g, ...), the two group axes swapped, flattened back."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *rest = x.shape
        return x.view(n, self.groups, c // self.groups, *rest).transpose(1, 2).reshape(n, c, *rest)


class ConvBNAct(nn.Module):
    """Convolution (no bias), batch norm, ReLU; 1-D or 2-D. ``act:input`` taps the pre-activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dims: int = 2) -> None:
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[dims]
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = bn(out_channels)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
