"""ShuffleNet (v1, 3 groups) for CIFAR, the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel
from distillab.models.layers import ShuffleBlock


class Bottleneck(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; a stride-2 block concatenates an average-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block sees the 24-channel stem: no grouping
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.out_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.out_relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(ZooModel):
    """1x1 stem to 24 channels, three stages each opening with a stride-2 block, 4x4 average pool, linear."""

    def __init__(self, num_classes: int, out_planes: tuple[int, ...] = (240, 480, 960),
                 num_blocks: tuple[int, ...] = (4, 8, 4), groups: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        in_planes = 24
        for i, (planes, n) in enumerate(zip(out_planes, num_blocks), start=1):
            # the first block's output is concatenated with its pooled input, so it produces only the difference
            blocks = [Bottleneck(in_planes, planes - in_planes, 2, groups)]
            blocks += [Bottleneck(planes, planes, 1, groups) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes
        self.linear = nn.Linear(out_planes[-1], num_classes)

        self.num_classes = num_classes
        self.input_shape = (in_channels, 32, 32)
        self.embedding_dim = out_planes[-1]
        self.head = "linear"
        self.feature_info = [FeatureStage("relu", 24, 1, bn="bn1")] + [
            FeatureStage(f"layer{i}", planes, 2 ** i, preact=f"layer{i}.{n - 1}.out_relu:input",
                         bn=f"layer{i}.{n - 1}.bn3")
            for i, (planes, n) in enumerate(zip(out_planes, num_blocks), start=1)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.avg_pool2d(out, 4), 1))


@MODELS.register("ShuffleV1", description="ShuffleNet v1 for CIFAR (3 groups, widths 240/480/960)")
def shufflev1(num_classes: int, **kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, **kwargs)
