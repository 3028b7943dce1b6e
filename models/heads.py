"""The shallow 3D-CNN segmentation head (spec avos §1.9).

Input [B, C, T, h, w] (decoded features + object attention maps), output logits [B, K, T, h, w].
A (1,3,3) conv, then two dilated 3x3x3 convs (dilation 2, zero padding in time too), then a 1x1x1
classifier; GroupNorm(4) + ReLU between. Kept as an ``nn.Sequential`` whose indices 0..9 match
the original ``insmask_head``.
"""
from __future__ import annotations

from torch import nn


class SegHead3D(nn.Sequential):
    def __init__(self, in_dim: int, dims: tuple[int, int, int] = (384, 256, 128), num_classes: int = 1) -> None:
        d0, d1, d2 = dims
        super().__init__(
            nn.Conv3d(in_dim, d0, (1, 3, 3), padding="same"),
            nn.GroupNorm(4, d0),
            nn.ReLU(),
            nn.Conv3d(d0, d1, 3, padding="same", dilation=2),
            nn.GroupNorm(4, d1),
            nn.ReLU(),
            nn.Conv3d(d1, d2, 3, padding="same", dilation=2),
            nn.GroupNorm(4, d2),
            nn.ReLU(),
            nn.Conv3d(d2, num_classes, 1),
        )
