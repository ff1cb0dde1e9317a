"""Generators for data-free distillation: noise in, a batch shaped like the data set's inputs out.

Registered in :data:`~distillab.models.MODELS` with ``kind="generator"``: they take no ``num_classes``, are
trained but never evaluated as classifiers, and read no batch field (their step draws their noise).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from distillab.models.base import MODELS


class DFADGenerator(nn.Module):
    """DFAD's ``GeneratorA`` (Fang et al. 2019, arXiv 1912.11006; VainF/Data-Free-Adversarial-Distillation,
    ``network/gan.py``), for images (C, H, W) or signals (C, L).

    z (``nz``, N(0, 1)) -> Linear to 2·ngf × (size / 4) -> BN -> upsample ×2 -> conv3 (2ngf -> 2ngf) + BN +
    LeakyReLU(0.2) -> upsample ×2 -> conv3 (2ngf -> ngf) + BN + LeakyReLU(0.2) -> conv3 (ngf -> C) -> tanh ->
    BN(affine=False), so the output is normalised like data. Reference defaults: nz 256, ngf 64, 32×32×3.
    For signals the same with 1-D layers (length divisible by 4).
    """

    def __init__(self, out_shape: Sequence[int], nz: int = 256, ngf: int = 64) -> None:
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        if len(self.out_shape) not in (2, 3) or any(s % 4 for s in self.out_shape[1:]):
            raise ValueError(f"dfad_generator: out_shape must be (C, L) or (C, H, W) with sizes divisible by 4, "
                             f"got {self.out_shape}")
        self.nz, self.ngf = nz, ngf
        dims = len(self.out_shape) - 1
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.init_size = tuple(s // 4 for s in self.out_shape[1:])
        self.l1 = nn.Linear(nz, ngf * 2 * int(torch.tensor(self.init_size).prod()))
        self.conv_blocks0 = bn(ngf * 2)
        self.conv_blocks1 = nn.Sequential(conv(ngf * 2, ngf * 2, 3, stride=1, padding=1), bn(ngf * 2),
                                          nn.LeakyReLU(0.2))
        self.conv_blocks2 = nn.Sequential(conv(ngf * 2, ngf, 3, stride=1, padding=1), bn(ngf), nn.LeakyReLU(0.2),
                                          conv(ngf, self.out_shape[0], 3, stride=1, padding=1), nn.Tanh(),
                                          bn(self.out_shape[0], affine=False))
        self.mode = "linear" if dims == 1 else "nearest"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.l1(z.view(z.shape[0], -1)).view(z.shape[0], self.ngf * 2, *self.init_size)
        x = nn.functional.interpolate(self.conv_blocks0(x), scale_factor=2, mode="nearest")
        x = nn.functional.interpolate(self.conv_blocks1(x), scale_factor=2, mode="nearest")
        return self.conv_blocks2(x)


@MODELS.register("dfad_generator", description="DFAD's GeneratorA: noise -> images or signals", kind="generator")
def dfad_generator(out_shape: Sequence[int], nz: int = 256, ngf: int = 64) -> DFADGenerator:
    return DFADGenerator(out_shape, nz=nz, ngf=ngf)
