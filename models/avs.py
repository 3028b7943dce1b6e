"""MED-VT++ for audio-visual segmentation (AVSBench S4 / MS3), one model for both tasks.

Data flow (spec a2d-avs-vss §B.2), N = B·T frames, C = ``d_model``::

    frames [B,T,3,H,W] ─ PVTv2 (timm, per frame) ─ 4 maps, strides 4/8/16/32
        ─ 1x1 conv to C ─ + audio: bidirectional cross-attention per scale (frame ↔ its audio token)
        ─ spatiotemporal encoder on 1/32 (3 layers) and 1/16 (1 layer)
        ─ FPN pixel decoder (shared with MED-VT) → maps 1/4, 1/8, 1/16, 1/32
    audio [B,T,128] (frozen VGGish) ─ MLP → one token per frame
        ─ query generator (3 decoder layers, queries start at zero, attend to the audio token)
        ─ query decoder (12 layers cycling over 1/16, 1/8, 1/4; the first 6 also attend to audio)
    affinity = LayerNorm_q(queries · F_1/4) ; head(cat[F_1/4, affinity]) → logits [B,T,H,W]

Everything is per frame except the encoder (all T·h·w tokens of a clip) and the positional
encoding (3-D sine over t, y, x). S4 and MS3 build the same network; the named configs differ
only in their name, so the original's duplicated code becomes one definition here.

The parts: config and presets in :mod:`models.avs_config`, the audio-visual fusion in
:mod:`models.avs_fusion`, the query generator/decoder and head in :mod:`models.avs_decoder`, the
authors' checkpoint names and the PVTv2 ImageNet weights in :mod:`models.avs_convert`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .avs_config import AVSConfig, get_avs_config
from .avs_decoder import AudioQueryDecoder, AVSHead
from .avs_fusion import AudioVisualFusion, TPAVIFusion
from .backbone import PVTBackbone
from .encoder import encoder_stages, run_stages
from .pixel_decoder import FPNPixelDecoder
from .position_encoding import PositionEmbeddingSine3D


class MEDVTPlusPlus(nn.Module):
    """MED-VT++ (module docstring). ``forward(frames [B,T,3,H,W], audio [B,T,128])`` → dict:

    * ``pred_masks``  logits [B, T, H, W]
    * ``fpn_maps``    4 × [B·T, C, h, w], strides 4, 8, 16, 32 (for the masked-AV loss)
    * ``audio_feats`` 4 × [B, T, C], the cross-attended audio per scale (idem)
    """

    def __init__(self, cfg: AVSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        if d % 6:
            raise ValueError(f"d_model {d} must be divisible by 6 (3 sine axes of sin/cos pairs)")
        self.backbone = PVTBackbone(cfg.backbone, cfg.drop_path)
        self.input_proj = nn.ModuleList(nn.Conv2d(c, d, 1) for c in self.backbone.out_dims)
        self.position = PositionEmbeddingSine3D(d // 3)
        if cfg.mm_context == "bidir":
            self.av_fusion = AudioVisualFusion(4, d, cfg.audio_dim, cfg.fusion_heads, cfg.max_frames,
                                               cfg.audio_pos_seed)
        elif cfg.mm_context == "tpavi":
            self.av_fusion = TPAVIFusion(d, cfg.audio_dim, cfg.tpavi_stages, cfg.tpavi_va, cfg.tpavi_vv)
        else:
            raise ValueError(f"mm_context must be 'bidir' or 'tpavi', got {cfg.mm_context!r}")
        # MED-VT's multiscale encoder with the Swin stage-1 settings and no between-scale layer.
        self.encoder, _ = encoder_stages(d, cfg.enc_nhead, cfg.enc_dim_ff, cfg.dropout, cfg.enc_layers, "swin")
        self.pixel_decoder = FPNPixelDecoder(d)
        self.query_decoder = AudioQueryDecoder(cfg)
        self.head = AVSHead(d + cfg.num_queries, d, cfg.head_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the original constructor: xavier-uniform on every ≥2-D parameter (PVT ImageNet
        weights are loaded afterwards by :func:`models.avs_convert.load_pvt_pretrained`)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _encode(self, feats: list[Tensor], pos: list[Tensor], b: int, t: int) -> list[Tensor]:
        """The shared encoder loop on scale 3 (1/32, stage 0) and scale 2 (1/16, stage 1), over all
        T·h·w tokens of a clip; feats [B·T, C, h, w], pos [B, T, C, h, w]."""
        deep, shallow = run_stages(self.encoder, [feats[3].unflatten(0, (b, t)), feats[2].unflatten(0, (b, t))],
                                   [pos[3], pos[2]], [None, None])
        return [feats[0], feats[1], shallow.flatten(0, 1), deep.flatten(0, 1)]

    def forward(self, frames: Tensor, audio: Tensor) -> dict:
        b, t, _, hh, ww = frames.shape
        if audio.shape[:2] != (b, t):
            raise ValueError(f"audio {tuple(audio.shape)} does not match frames {tuple(frames.shape)}: "
                             "one audio vector per frame is needed")
        feats = [proj(f.flatten(0, 1)) for proj, f in zip(self.input_proj, self.backbone(frames))]
        pos = [self.position(torch.zeros(b, t, *f.shape[-2:], dtype=torch.bool, device=f.device)).to(f.dtype)
               for f in feats]
        feats, audio_feats = self.av_fusion(feats, pos, audio)
        feats = self._encode(feats, pos, b, t)
        maps = self.pixel_decoder(feats[3], [feats[2], feats[1], feats[0]])[::-1]  # fine → coarse
        aff = self.query_decoder(maps, pos, audio.flatten(0, 1))
        logits = self.head(torch.cat([maps[0], aff], 1), (hh, ww))
        return {"pred_masks": logits.reshape(b, t, hh, ww), "fpn_maps": maps, "audio_feats": audio_feats}


def build_avs_model(name_or_cfg: str | AVSConfig | dict = "medvtpp_s4", **overrides) -> MEDVTPlusPlus:
    """MED-VT++ from a preset name, a config or a config dict (:func:`models.avs_config.get_avs_config`)."""
    return MEDVTPlusPlus(get_avs_config(name_or_cfg, **overrides))
