"""MobileNetV2 for CIFAR (expansion T, width multiplier), the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn


def conv_bn(inp: int, oup: int, stride: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU())


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection (``conv`` indices 0..7); identity shortcut when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    """Stride-2 stem, seven groups of inverted residuals (``blocks``), 1x1 conv to 1280, average pool, linear.

    Stages are the stem and the outputs of blocks 1, 2, 4 and 6 (RepDistiller's feature list); those
    outputs end in a batch norm (plus shortcut), with no ReLU, so there is no separate pre-activation.
    """

    def __init__(self, num_classes: int, expansion: int = 6, width_mult: float = 0.5,
                 in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        settings = [(1, 16, 1, 1), (expansion, 24, 2, 1), (expansion, 32, 3, 2), (expansion, 64, 4, 2),
                    (expansion, 96, 3, 1), (expansion, 160, 3, 2), (expansion, 320, 1, 1)]  # t, c, n, s
        channel = int(32 * width_mult)
        self.conv1 = conv_bn(in_channels, channel, 2)
        self.blocks = nn.ModuleList()
        widths, strides, depths, total = [], [], [], 2
        for t, c, n, s in settings:
            out = int(c * width_mult)
            self.blocks.append(nn.Sequential(*(InvertedResidual(channel if i == 0 else out, out, s if i == 0 else 1, t)
                                               for i in range(n))))
            channel, total = out, total * s
            widths.append(out)
            strides.append(total)
            depths.append(n)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(channel, self.last_channel, 1, kernel_size=1)
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_conv_bn(self)
        nn.init.normal_(self.classifier[0].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
        self.embedding_dim = self.last_channel
        self.head = "classifier"
        self.feature_info = [FeatureStage("conv1", int(32 * width_mult), 2, bn="conv1.1")] + [
            FeatureStage(f"blocks.{i}", widths[i], strides[i], bn=f"blocks.{i}.{depths[i] - 1}.conv.7")
            for i in (1, 2, 4, 6)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for block in self.blocks:
            out = block(out)
        out = self.avgpool(self.conv2(out))
        return self.classifier(torch.flatten(out, 1))


@MODELS.register("MobileNetV2", description="MobileNetV2 for CIFAR at half width, expansion 6 (CRD's 'MobileNetV2')")
def mobilenetv2(num_classes: int, **kwargs) -> MobileNetV2:
    return MobileNetV2(num_classes, **kwargs)
