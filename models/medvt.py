"""MED-VT: multiscale encoder-decoder video transformer with label propagation.

Data flows one way, one line per stage in :meth:`MEDVT.forward`::

    frames [B,T,3,H,W] → backbone (4 maps) → input projections + sine positions
      → multiscale encoder (two deepest levels) → FPN pixel decoder [M0..M3]
      → query decoder (one query per frame, cycling over scales) → object attention maps
      → seg feats = [M3, maps] → 3D-CNN head (coarse logits) → label propagation
      → pred_masks = (coarse + propagated) / 2

One class covers the Swin-B and ResNet-101 models of the original and the three Swin forward
variants; :mod:`models.config` holds the differences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import build_backbone
from .config import MedVTConfig
from .encoder import MultiscaleEncoder, flatten_tokens
from .heads import SegHead3D
from .label_propagation import LabelPropagator
from .pixel_decoder import FPNPixelDecoder
from .position_encoding import PositionEmbeddingSine3D
from .query_decoder import ObjectAttentionMap, QueryDecoder


class MEDVT(nn.Module):
    """The MED-VT model. Build it with :func:`models.build_model` (a preset name or a config)."""

    def __init__(self, cfg: MedVTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.backbone = build_backbone(cfg)
        dims = self.backbone.out_dims
        swin = cfg.encoder_style == "swin"
        # Swin projects all four maps; ResNet only the two it encodes and adapts the rest in the FPN.
        self.input_proj = nn.ModuleList(
            nn.Conv2d(c, d, 1) if (swin or i >= 2) else nn.Identity() for i, c in enumerate(dims)
        )
        self.pos_embed = PositionEmbeddingSine3D(d // 3)
        if not (cfg.encoder_cross_layer or swin):
            raise ValueError("encoder_cross_layer=False exists only for the Swin family (the original "
                             "ResNet transformer hard-codes its between-scale layer)")
        self.encoder = MultiscaleEncoder(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.enc_layers,
                                         cfg.encoder_style, cfg.encoder_cross_layer, cfg.cross_scale_ff)
        self.pixel_decoder = FPNPixelDecoder(d, None if swin else (d, dims[1], dims[0]))
        self.query_decoder = QueryDecoder(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.dec_layers,
                                          cfg.num_queries, tgt_init=1e-6 if cfg.variant == "2024" else 0.0)
        self.object_attention = ObjectAttentionMap(d, cfg.nheads, joint_softmax=cfg.variant != "2024")
        self.head = SegHead3D(d + cfg.nheads, cfg.head_dims, cfg.num_classes)
        self.label_propagator = None
        if cfg.lprop_mode in (1, 2):
            self.label_propagator = LabelPropagator(d + cfg.nheads, cfg.num_classes, cfg.lprop_scale,
                                                    cfg.lprop_key_dim, cfg.label_enc_dims, cfg.lprop_mode)
        if swin:
            self._reset_transformer_parameters()

    def _reset_transformer_parameters(self) -> None:
        # The original Swin "Transformer" module re-initialises every matrix in it with xavier.
        for mod in (self.input_proj, self.encoder, self.pixel_decoder, self.query_decoder, self.object_attention):
            for p in mod.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    @property
    def num_classes(self) -> int:
        """K: 1 (a binary mask, logits [B, T, h, w]) or the classes of [B, K, T, h, w] logits."""
        return self.cfg.num_classes

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute backbone and encoder activations during backward (less memory, more time)."""
        self.backbone.grad_checkpointing = enable
        self.encoder.grad_checkpointing = enable

    def forward(self, frames: Tensor, padding_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Segment a batch of clips.

        Args:
            frames: [B, T, 3, H, W] normalised RGB clips (T ≥ 2).
            padding_mask: optional [B, T, H, W] bool, True on padded pixels.

        Returns:
            ``pred_masks``: logits [B, T, h, w] (or [B, K, T, h, w] when K > 1 classes), at 1/8 of
            the input for Swin and 1/4 for ResNet; ``aux_pred_masks``: the head's logits before
            label propagation, same layout.
        """
        b, t = frames.shape[:2]
        padded = padding_mask is not None
        if not padded:
            padding_mask = torch.zeros((b, t) + frames.shape[-2:], dtype=torch.bool, device=frames.device)
        feats = self.backbone(frames)  # 4 × [B, T, C_i, h_i, w_i]
        masks = [F.interpolate(padding_mask.float(), size=f.shape[-2:]).bool() for f in feats]
        pos = [self.pos_embed(m).to(f.dtype) for m, f in zip(masks, feats)]  # [B, T, d, h_i, w_i]
        # Without padding, attention takes no key mask: an all-False mask changes nothing, and testing
        # for one (mask.any()) syncs CUDA and is data-dependent control flow that torch.export rejects.
        masks = masks if padded else [None] * len(masks)
        feats = [p(f.flatten(0, 1)).unflatten(0, (b, t)) for p, f in zip(self.input_proj, feats)]

        enc = self.encoder([feats[3], feats[2]], [pos[3], pos[2]], [masks[3], masks[2]])  # E0 (deepest), E1
        pix = self.pixel_decoder(enc[0].flatten(0, 1), [enc[1].flatten(0, 1), feats[1].flatten(0, 1),
                                                        feats[0].flatten(0, 1)])
        pix = [p.unflatten(0, (b, t)) for p in pix]  # M0..M3, [B, T, d, h, w], coarse to fine

        # Query-decoder memories per variant (spec avos §0: V1, V2, V3): (map, level of its pos/mask).
        if self.cfg.variant == "2024":
            mem = [(pix[1], 2), (pix[2], 1), (pix[3], 0)]
        else:
            mem = [(enc[0] if self.cfg.variant == "2024train" else pix[0], 3), (pix[1], 2), (pix[2], 1)]
        mem = mem[:self.cfg.query_decoder_scales]  # the original's --query_decoder_scales (deepest first)
        key_masks = [None if masks[i] is None else masks[i].flatten(1) for _, i in mem]
        queries = self.query_decoder([flatten_tokens(m) for m, _ in mem], [flatten_tokens(pos[i]) for _, i in mem],
                                     key_masks, t)  # [B, T, d]

        hr = pix[3]
        seg = torch.cat([hr, self.object_attention(queries, hr, masks[0])], dim=2)  # [B, T, d + heads, h, w]
        coarse = self.head(seg.transpose(1, 2))  # [B, K, T, h, w]
        out = coarse
        if self.label_propagator is not None:
            refined = self.label_propagator(coarse, seg)
            coarse, refined = _match_size(coarse, refined)
            out = (coarse + refined) / 2
        squeeze = (lambda x: x.squeeze(1)) if self.cfg.num_classes == 1 else (lambda x: x)
        return {"pred_masks": squeeze(out), "aux_pred_masks": squeeze(coarse)}


def _match_size(coarse: Tensor, refined: Tensor) -> tuple[Tensor, Tensor]:
    """Bring both [B, K, T, h, w] logits to the larger grid with nearest resizing, as the original."""
    def resize(x: Tensor, size) -> Tensor:
        return F.interpolate(x.flatten(1, 2), size=size, mode="nearest").unflatten(1, x.shape[1:3])

    if sum(refined.shape[-2:]) < sum(coarse.shape[-2:]):
        refined = resize(refined, coarse.shape[-2:])
    elif sum(refined.shape[-2:]) > sum(coarse.shape[-2:]):
        coarse = resize(coarse, refined.shape[-2:])
    return coarse, refined
