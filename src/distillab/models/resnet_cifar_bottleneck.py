"""ResNet-50 for CIFAR (3x3 stem, four bottleneck stages), the RepDistiller/mdistiller ``resnetv2`` key names."""

from __future__ import annotations

import torch
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus shortcut (a 1x1 conv+BN where the shape changes), then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_planes))
        self.out_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.out_relu(out + self.shortcut(x))


class BottleneckResNet(ZooModel):
    """3x3 stem (64), four bottleneck stages of widths 256/512/1024/2048, global average pool, linear."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks), start=1):
            stride = 1 if i == 1 else 2
            blocks = [Bottleneck(in_planes, planes, stride)] + [Bottleneck(planes * 4, planes) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_planes = planes * 4
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(2048, num_classes)
        init_conv_bn(self)

        self.num_classes = num_classes
        self.input_shape = (in_channels, 32, 32)
        self.embedding_dim = 2048
        self.head = "linear"
        self.feature_info = [FeatureStage("relu", 64, 1, bn="bn1")] + [
            FeatureStage(f"layer{i}", 256 * 2 ** (i - 1), 2 ** (i - 1), preact=f"layer{i}.{n - 1}.out_relu:input",
                         bn=f"layer{i}.{n - 1}.bn3")
            for i, n in enumerate(num_blocks, start=1)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


@MODELS.register("ResNet50", description="ResNet-50 (bottleneck blocks 3/4/6/3) with a 3x3 stem for CIFAR")
def resnet50(num_classes: int, **kwargs) -> BottleneckResNet:
    return BottleneckResNet((3, 4, 6, 3), num_classes, **kwargs)
