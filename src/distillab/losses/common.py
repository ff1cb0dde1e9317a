"""Small pieces shared by loss families: embedding heads and spatial matching for 1-D and 2-D features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation (CRD's ``Embed``; DCD, RRD and RDD heads).

    Input of any shape (B, ...) is flattened to (B, D) first.
    """

    def __init__(self, dim_in: int, dim_out: int = 128, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return F.normalize(x, p=2, dim=1) if self.normalize else x


def adaptive_pool(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pooling of a (B, C, L) or (B, C, H, W) map to ``size``; a no-op when it already fits."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.adaptive_avg_pool1d(x, size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, size)


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two feature maps down to the smaller's spatial size (AT's and NST's rule)."""
    sa, sb = tuple(a.shape[2:]), tuple(b.shape[2:])
    if sa == sb:
        return a, b
    if all(x >= y for x, y in zip(sa, sb)):
        return adaptive_pool(a, sb), b
    return a, adaptive_pool(b, sa)


def feature_dims(shape: torch.Size) -> int:
    """Number of spatial dimensions of a probed feature shape (0 for pooled vectors)."""
    return len(shape) - 2
