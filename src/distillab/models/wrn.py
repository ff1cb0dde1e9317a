"""Wide ResNets for CIFAR (pre-activation blocks, depth 6n+4), the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn


class BasicBlock(nn.Module):
    """Pre-activation block: bn-relu-conv-bn-relu-conv plus shortcut (a 1x1 conv where the width changes).

    Where the width changes, the shortcut also starts from the activated input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return (x if self.equal_in_out else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    """A stage: ``layer`` holds n blocks, the first one changing width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride)]
        blocks += [BasicBlock(out_planes, out_planes, 1) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """conv3x3 stem, three stages of widths 16w/32w/64w, bn-relu, 8x8 average pool, linear classifier.

    Stage features are the (un-activated) stage outputs; as in RepDistiller, their pre-activation form
    is the output of the batch norm that the next stage (or the final bn1) applies to them.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

        self.num_classes = num_classes
        self.input_shape = (in_channels, 32, 32)
        self.embedding_dim = ch[3]
        self.head = "fc"
        self.feature_info = [
            FeatureStage("conv1", ch[0], 1, bn="block1.layer.0.bn1"),
            FeatureStage("block1", ch[1], 1, preact="block2.layer.0.bn1", bn="block2.layer.0.bn1"),
            FeatureStage("block2", ch[2], 2, preact="block3.layer.0.bn1", bn="block3.layer.0.bn1"),
            FeatureStage("block3", ch[3], 4, preact="bn1", bn="bn1"),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(torch.flatten(out, 1))


@MODELS.register("wrn_16_1", description="Wide ResNet-16-1 for CIFAR")
def wrn_16_1(num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(16, 1, num_classes, **kwargs)


@MODELS.register("wrn_16_2", description="Wide ResNet-16-2 for CIFAR")
def wrn_16_2(num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(16, 2, num_classes, **kwargs)


@MODELS.register("wrn_40_1", description="Wide ResNet-40-1 for CIFAR")
def wrn_40_1(num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(40, 1, num_classes, **kwargs)


@MODELS.register("wrn_40_2", description="Wide ResNet-40-2 for CIFAR")
def wrn_40_2(num_classes: int, **kwargs) -> WideResNet:
    return WideResNet(40, 2, num_classes, **kwargs)
