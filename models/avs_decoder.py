"""MED-VT++'s output side, per frame: audio-conditioned queries → affinity maps → mask logits.

:class:`AudioQueryDecoder` generates ``num_queries`` object queries from the frame's audio token,
refines them over the pixel decoder's finest maps and returns their affinity with the 1/4 map;
:class:`AVSHead` turns cat(F_1/4, affinity) into one mask logit per pixel (spec §B.2-7).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .avs_config import AVSConfig
from .query_decoder import DecoderLayer


class AudioQueryDecoder(nn.Module):
    """Audio-conditioned query generator + multiscale query decoder, per frame (spec §B.2-7).

    Returns the affinity maps [N, Q, h, w] at the finest scale, LayerNorm-ed over the query axis.
    """

    def __init__(self, cfg: AVSConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.scales = cfg.decoder_scales
        self.query_embed = nn.Embedding(cfg.num_queries, d)   # generator / audio-attention positional
        self.query_pos = nn.Embedding(cfg.num_queries, d)     # decoder positional
        self.audio_proj = nn.Sequential(nn.Linear(cfg.audio_dim, cfg.audio_proj_hidden), nn.ReLU(),
                                        nn.LayerNorm(cfg.audio_proj_hidden), nn.Linear(cfg.audio_proj_hidden, d))
        self.generator = nn.ModuleList(DecoderLayer(d, cfg.dec_nhead, cfg.dec_dim_ff, cfg.dropout)
                                       for _ in range(cfg.qgen_layers))
        self.layers = nn.ModuleList(DecoderLayer(d, cfg.dec_nhead, cfg.dec_dim_ff, cfg.dropout,
                                                 audio=i < cfg.audio_ctx_layers) for i in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.affinity_norm = nn.LayerNorm(cfg.num_queries)

    def forward(self, maps: list[Tensor], pos: list[Tensor], audio: Tensor) -> Tensor:
        """maps [N, C, h_i, w_i] fine→coarse; pos [B, T, C, h_i, w_i]; audio [N, A] → [N, Q, h_0, w_0]."""
        n = audio.shape[0]
        # Memories coarse→fine over the `scales` finest maps: 1/16, 1/8, 1/4 for 3.
        mems = [(maps[i].flatten(2).transpose(1, 2), pos[i].flatten(0, 1).flatten(2).transpose(1, 2))
                for i in reversed(range(self.scales))]
        qpos = self.query_pos.weight.expand(n, -1, -1)
        qpos_a = self.query_embed.weight.expand(n, -1, -1)
        a = self.audio_proj(audio).unsqueeze(1)  # [N, 1, C]
        tgt = torch.zeros_like(qpos)
        for layer in self.generator:  # queries generated from audio
            tgt = layer(tgt, qpos_a, a, None)
        for k, layer in enumerate(self.layers):
            mem, mpos = mems[k % len(mems)]
            tgt = layer(tgt, qpos, mem, mpos, audio=a, audio_query_pos=qpos_a)
        tgt = self.norm(tgt)
        # In float32 under autocast: the norm over the query axis removes what the queries' affinities
        # share and magnifies the rest, so bf16 rounding of the product would be magnified with it.
        # (With random weights the queries differ by <1% of their shared part; bf16 products took
        # the normalised affinities' correlation with float32 to 0.65, float32 products to 0.80.)
        dtype = torch.promote_types(tgt.dtype, torch.float32)  # float64 stays float64
        with torch.autocast(tgt.device.type, enabled=False):
            aff = torch.einsum("nqc,nchw->nqhw", tgt.to(dtype), maps[0].to(dtype))
            return self.affinity_norm(aff.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AVSHead(nn.Module):
    """cat(F_1/4, affinity) → nearest to H/2 → conv3x3·ReLU·conv3x3 → bilinear ×2 → ReLU → 1x1 conv.

    The original's last 1x1 conv has padding 1, so it outputs (H+2)×(W+2), which is then
    nearest-resized to H×W: row 0 and column 0 are the conv's bias. Kept for equality.
    """

    def __init__(self, cin: int, d: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, d, 3, padding=1)
        self.conv2 = nn.Conv2d(d, mid, 3, padding=1)
        self.out = nn.Conv2d(mid, 1, 1, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = F.interpolate(x, size=(size[0] // 2, size[1] // 2))
        x = self.conv2(F.relu(self.conv1(x)))
        x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return F.interpolate(self.out(x), size=size)
