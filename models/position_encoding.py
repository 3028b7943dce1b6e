"""3-D sine positional encoding over (time, row, column), as DETR/VisTR and MED-VT use it.

Each axis gets ``d_model // 3`` channels; positions are the cumulative count of unpadded
places along the axis, normalised to (0, 2π]. Channels are interleaved sin/cos and the
axes are concatenated in the order (t, y, x) (spec avos §1.3). No parameters.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine3D(nn.Module):
    def __init__(self, num_pos_feats: int, temperature: float = 10000.0, scale: float = 2 * math.pi) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even (sin/cos pairs)")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B, T, h, w] bool (True = padding) → encoding [B, T, 3·num_pos_feats, h, w] float32."""
        not_mask = (~mask).float()
        eps = 1e-6
        embeds = []
        for axis in (1, 2, 3):  # t, y, x
            e = not_mask.cumsum(axis)
            last = e.narrow(axis, e.shape[axis] - 1, 1)
            embeds.append(e / (last + eps) * self.scale)
        i = torch.arange(self.num_pos_feats, device=mask.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        out = []
        for e in embeds:
            p = e[..., None] / dim_t  # [B, T, h, w, F]
            out.append(torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2))
        return torch.cat(out, dim=-1).permute(0, 1, 4, 2, 3)  # [B, T, 3F, h, w]
