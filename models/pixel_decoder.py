"""FPN pixel decoder with a deformable convolution at its finest level (spec avos §1.6).

From the deepest encoded map it builds four maps, coarse to fine::

    M0 = relu(gn2(lay2(relu(gn1(lay1(E0))))))                   # deepest scale
    M1 = relu(gn3(lay3(L0 + up(M0))))                            # L_i = lateral_i(fpn input i)
    M2 = relu(gn4(lay4(L1 + up(M1))))
    M3 = relu(gn5(dcn(x, conv_offset(x)))),  x = L2 + up(M2)     # finest: the "high-res" features

``up`` is PyTorch's legacy nearest interpolation (floor of dst·in/out), as in the original,
which matters for non-integer ratios such as 15x27 → 30x53. The laterals are identities for
Swin (its inputs are already projected) and 1x1 adapters for ResNet. The deformable
convolution is torchvision's ``DeformConv2d`` (one offset group, no modulation, no bias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d


def _conv_gn(cin: int, cout: int) -> tuple[nn.Conv2d, nn.GroupNorm]:
    return nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout)


class FPNPixelDecoder(nn.Module):
    """Args:
        dim: width of every map.
        lateral_dims: channels of the three FPN inputs, or None when they already have ``dim``.
    """

    def __init__(self, dim: int, lateral_dims: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.lay1, self.gn1 = _conv_gn(dim, dim)
        self.lay2, self.gn2 = _conv_gn(dim, dim)
        self.lay3, self.gn3 = _conv_gn(dim, dim)
        self.lay4, self.gn4 = _conv_gn(dim, dim)
        self.conv_offset = nn.Conv2d(dim, 18, 1)
        self.dcn = DeformConv2d(dim, dim, 3, padding=1, bias=False)
        self.gn5 = nn.GroupNorm(8, dim)
        self.lateral = nn.ModuleList(
            nn.Identity() if lateral_dims is None else nn.Conv2d(c, dim, 1) for c in (lateral_dims or (dim,) * 3)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        # Zero offsets: the deformable conv starts as a plain 3x3 conv.
        nn.init.zeros_(self.conv_offset.weight)

    def forward(self, deep: Tensor, fpns: list[Tensor]) -> list[Tensor]:
        """deep [N, C, h, w]; fpns: three maps [N, C_i, h_i, w_i], coarse to fine (N = B·T) → [M0..M3]."""
        x = F.relu(self.gn2(self.lay2(F.relu(self.gn1(self.lay1(deep))))))
        outs = [x]
        for i, (lay, gn) in enumerate(((self.lay3, self.gn3), (self.lay4, self.gn4), (None, self.gn5))):
            lat = self.lateral[i](fpns[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
            x = lay(x) if lay is not None else self._deform(x)
            x = F.relu(gn(x))
            outs.append(x)
        return outs

    def _deform(self, x: Tensor) -> Tensor:
        """The deformable conv in float32, returned in ``x``'s dtype. torchvision's CUDA autocast
        wrapper already runs it in float32; its CPU kernel has no bf16/fp16 path and CPU autocast
        does not promote it, so under autocast it is done here for both devices alike."""
        offset = self.conv_offset(x)
        # torchvision's CPU kernel reads out of bounds (a segfault) at a NaN offset, as a diverging
        # training run produces. The kernel gets 0 there and the output is NaN at those positions,
        # so the NaN still reaches the loss (and its check); finite offsets are passed unchanged.
        nan_at = offset.isnan().any(1, keepdim=True)
        offset = offset.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        if x.dtype == offset.dtype == self.dcn.weight.dtype:  # no autocast: float32 or float64 throughout
            out = self.dcn(x, offset)
        else:
            with torch.autocast(x.device.type, enabled=False):
                out = self.dcn(x.float(), offset.float()).to(x.dtype)
        return out.masked_fill(nan_at, float("nan"))
