"""VGG with batch norm for CIFAR (no FC stack), the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel, init_conv_bn

CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """[conv3x3 (with bias), BN, ReLU] per width, the last ReLU left out (it is applied by ``relu{i}``)."""
    layers: list[nn.Module] = []
    for v in widths:
        layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """Five conv blocks, max pools between them (the one after block3 only for 64-pixel inputs),
    global average pool and one linear layer. Block outputs are the pre-activation features."""

    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        widths = [in_channels] + [block[-1] for block in cfg]
        for i in range(5):
            self.add_module(f"block{i}", make_block(cfg[i], widths[i]))
        for i in range(4):
            self.add_module(f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        for i in range(5):  # parameter-free; each one's input is block{i}'s pre-activation output
            self.add_module(f"relu{i}", nn.ReLU())
        self.classifier = nn.Linear(512, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

        self.num_classes = num_classes
        self.input_shape = (in_channels, input_size, input_size)
        self.embedding_dim = 512
        self.head = "classifier"
        strides = [1, 2, 4, 8, 16 if input_size == 64 else 8]
        last_bn = [f"block{i}.{3 * len(cfg[i]) - 2}" for i in range(5)]  # each block ends in its BN
        self.feature_info = [FeatureStage("relu0", widths[1], 1, bn=last_bn[0])] + [
            FeatureStage(f"relu{i}", widths[i + 1], strides[i], preact=f"block{i}", bn=last_bn[i])
            for i in range(1, 5)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:
            x = self.pool3(x)
        x = self.pool4(self.relu4(self.block4(x)))
        return self.classifier(torch.flatten(x, 1))


def _vgg(cfg: str, num_classes: int, **kwargs) -> VGG:
    return VGG(CFGS[cfg], num_classes, **kwargs)


@MODELS.register("vgg8", description="VGG-8 with batch norm for CIFAR (config S)")
def vgg8(num_classes: int, **kwargs) -> VGG:
    return _vgg("S", num_classes, **kwargs)


@MODELS.register("vgg11", description="VGG-11 with batch norm for CIFAR (config A)")
def vgg11(num_classes: int, **kwargs) -> VGG:
    return _vgg("A", num_classes, **kwargs)


@MODELS.register("vgg13", description="VGG-13 with batch norm for CIFAR (config B)")
def vgg13(num_classes: int, **kwargs) -> VGG:
    return _vgg("B", num_classes, **kwargs)


@MODELS.register("vgg16", description="VGG-16 with batch norm for CIFAR (config D)")
def vgg16(num_classes: int, **kwargs) -> VGG:
    return _vgg("D", num_classes, **kwargs)


@MODELS.register("vgg19", description="VGG-19 with batch norm for CIFAR (config E)")
def vgg19(num_classes: int, **kwargs) -> VGG:
    return _vgg("E", num_classes, **kwargs)
