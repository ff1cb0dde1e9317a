"""ShuffleNet v2 (net size 1) for CIFAR, the RepDistiller/mdistiller layout and key names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel
from distillab.models.layers import ShuffleBlock

CONFIGS: dict[float, tuple[tuple[int, ...], tuple[int, ...]]] = {  # net size: (out_channels, num_blocks)
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class SplitBlock(nn.Module):
    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    """Split channels; 1x1, depthwise 3x3, 1x1 on the second half; concatenate; shuffle.

    The pre-activation (RepDistiller's) is the unshuffled concatenation before the final ReLU. The
    untouched half is already non-negative (every block and the stem end in a ReLU), so applying
    ``out_relu`` to the whole concatenation equals applying it to the branch alone.
    """

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock(groups=2)
        self.out_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.split(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        out = self.bn3(self.conv3(out))
        return self.shuffle(self.out_relu(torch.cat([x1, out], 1)))


class DownBlock(nn.Module):
    """Stride-2 block: depthwise+1x1 on the left, 1x1+depthwise+1x1 on the right; concatenate; shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(ZooModel):
    """1x1 stem to 24 channels, three stages (a down block, then basic blocks), 1x1 conv, 4x4 average pool, linear."""

    def __init__(self, num_classes: int, net_size: float = 1, in_channels: int = 3) -> None:
        super().__init__()
        out_channels, num_blocks = CONFIGS[net_size]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        in_ch = 24
        for i, (ch, n) in enumerate(zip(out_channels[:3], num_blocks), start=1):
            self.add_module(f"layer{i}", nn.Sequential(DownBlock(in_ch, ch), *(BasicBlock(ch) for _ in range(n))))
            in_ch = ch
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

        self.num_classes = num_classes
        self.input_shape = (in_channels, 32, 32)
        self.embedding_dim = out_channels[3]
        self.head = "linear"
        # block n of a layer is its last basic block (block 0 is the down block). Its last BN (bn3) covers
        # only the branch half of the channels (the other half passes through), so a stage has no `bn`;
        # mdistiller's ShuffleNetV2 likewise refuses `get_bn_before_relu`.
        self.feature_info = [FeatureStage("relu", 24, 1, bn="bn1")] + [
            FeatureStage(f"layer{i}", ch, 2 ** i, preact=f"layer{i}.{n}.out_relu:input")
            for i, (ch, n) in enumerate(zip(out_channels[:3], num_blocks), start=1)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(F.relu(self.bn2(self.conv2(out))), 4)
        return self.linear(torch.flatten(out, 1))


@MODELS.register("ShuffleV2", description="ShuffleNet v2 (net size 1) for CIFAR, widths 116/232/464, 1024-d head")
def shufflev2(num_classes: int, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, **kwargs)
