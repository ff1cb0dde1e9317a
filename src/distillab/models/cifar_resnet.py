"""CIFAR ResNets (3 stages of basic blocks, depth 6n+2), the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus shortcut, then ReLU (``out_relu``, whose input is the block's pre-activation)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.out_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        residual = x if self.downsample is None else self.downsample(x)
        return self.out_relu(out + residual)


class CifarResNet(ZooModel):
    """conv3x3 stem, three stages at 32/16/8 pixels, 8x8 average pool, linear classifier."""

    def __init__(self, depth: int, filters: list[int], num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(filters[0], filters[1], n, stride=1)
        self.layer2 = self._make_layer(filters[1], filters[2], n, stride=2)
        self.layer3 = self._make_layer(filters[2], filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(filters[3], num_classes)
        init_conv_bn(self)

        self.num_classes = num_classes
        self.input_shape = (in_channels, 32, 32)
        self.embedding_dim = filters[3]
        self.head = "fc"
        self.feature_info = [FeatureStage("relu", filters[0], 1, bn="bn1")] + [
            FeatureStage(f"layer{i}", filters[i], stride, preact=f"layer{i}.{n - 1}.out_relu:input",
                         bn=f"layer{i}.{n - 1}.bn2")
            for i, stride in ((1, 1), (2, 2), (3, 4))
        ]

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        rest = (BasicBlock(planes, planes) for _ in range(blocks - 1))
        return nn.Sequential(BasicBlock(inplanes, planes, stride), *rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SMALL = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@MODELS.register("resnet8", description="CIFAR ResNet-8, filters 16/16/32/64")
def resnet8(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(8, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet14", description="CIFAR ResNet-14, filters 16/16/32/64")
def resnet14(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(14, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet20", description="CIFAR ResNet-20, filters 16/16/32/64")
def resnet20(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(20, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet32", description="CIFAR ResNet-32, filters 16/16/32/64")
def resnet32(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(32, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet44", description="CIFAR ResNet-44, filters 16/16/32/64")
def resnet44(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(44, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet56", description="CIFAR ResNet-56, filters 16/16/32/64")
def resnet56(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(56, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet110", description="CIFAR ResNet-110, filters 16/16/32/64")
def resnet110(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(110, _SMALL, num_classes, **kwargs)


@MODELS.register("resnet8x4", description="CIFAR ResNet-8 at 4x width, filters 32/64/128/256")
def resnet8x4(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, **kwargs)


@MODELS.register("resnet32x4", description="CIFAR ResNet-32 at 4x width, filters 32/64/128/256")
def resnet32x4(num_classes: int, **kwargs) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, **kwargs)
