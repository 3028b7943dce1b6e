"""Multiscale encoder: within-scale spatiotemporal self-attention and a between-scale layer.

Stages run deepest first. Stage 0 is a stack of post-norm DETR encoder layers over the
deepest map's T·h·w tokens; stage 1 first fuses the stage-0 output into the next map with the
between-scale layer (:class:`CrossScaleLayer`), then runs its own encoder layers.

The two original families differ here (spec avos §1.5 and §2):

* Swin (``style="swin"``): stage-1 layers have 1 head, FFN width d_model, no dropout and no
  LayerNorm; the between-scale layer builds its key from a learned fusion of both scales,
  re-normalised with the deep statistics and re-coloured with the shallow ones, and uses the
  *shallow* tokens as values.
* ResNet (``style="resnet"``): VisTR-style layers (nheads, FFN dim_feedforward // 2, LayerNorm);
  the deep map is bilinearly resized to the shallow grid, standardised and re-coloured, and used
  as both key and value.

Token order everywhere is time-major then row then column; tensors are batch first [B, L, C].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import MultiheadAttention


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; ``use_norm=False`` replaces both norms by identity."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, use_norm: bool = True) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model) if use_norm else nn.Identity()
        self.norm2 = nn.LayerNorm(d_model) if use_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """src, pos [B, L, C]; key_padding_mask [B, L] → [B, L, C]."""
        qk = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src, key_padding_mask)))
        return self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))


def _recolor(x: Tensor, stats_from: Tensor, target: Tensor) -> Tensor:
    """Standardise ``x`` with the per-channel token statistics of ``stats_from`` and give it those of
    ``target`` (unbiased std over tokens, per clip). Division is skipped when a std is ~0, as the
    original does (as a division by one, not a branch: the same values, no data-dependent control
    flow for torch.export and no CUDA sync)."""
    mean, std = stats_from.mean(dim=1, keepdim=True), stats_from.std(dim=1, keepdim=True)
    x = (x - mean) / torch.where(std.min() > 1e-10, std, torch.ones_like(std))
    return x * target.std(dim=1, keepdim=True) + target.mean(dim=1, keepdim=True)


class CrossScaleLayer(nn.Module):
    """Between-scale layer: shallow tokens (queries) attend to a key built from the deep scale.

    ``fused=True`` is the Swin design, ``fused=False`` the ResNet one (module docstring).
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        if fused:
            self.fuse_linear1 = nn.Linear(d_model, d_model)
            self.fuse_linear2 = nn.Linear(d_model, d_model)
            self.fuse_linear3 = nn.Linear(d_model, d_model)
            self.gamma = nn.Parameter(torch.ones(d_model))
            self.beta = nn.Parameter(torch.zeros(d_model))
            self.res_embed = nn.Embedding(1, d_model)
            self.res_embed_shallow = nn.Embedding(1, d_model)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.Identity() if fused else nn.LayerNorm(d_model)
        self.norm2 = nn.Identity() if fused else nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, deep: Tensor, shallow: Tensor, pos_deep: Tensor, pos_shallow: Tensor,
                key_padding_mask: Tensor | None = None) -> Tensor:
        """deep/shallow [B, L, C] on the same token grid (resize first); returns [B, L, C]."""
        if self.fused:
            fused = self.fuse_linear3(F.relu(self.fuse_linear1(deep)) + F.relu(self.fuse_linear2(shallow)))
            fused = _recolor(fused, deep, shallow) * self.gamma + self.beta
            key = fused + pos_deep + self.res_embed.weight
            query = shallow + pos_shallow + self.res_embed_shallow.weight
            value = shallow
        else:
            value = _recolor(deep, deep, shallow)
            key = value + pos_shallow
            query = shallow + pos_shallow
        out = self.norm1(shallow + self.dropout(self.self_attn(query, key, value, key_padding_mask)))
        return self.norm2(out + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(out))))))


def encoder_stages(d_model: int, nhead: int, dim_ff: int, dropout: float, num_layers: tuple[int, int],
                   style: str) -> tuple[nn.ModuleList, dict]:
    """The layers of the two stages, and the stage-1 settings (the between-scale layer shares them).
    Stage-1 widths are fixed by the original code, not by flags (module docstring)."""
    s1 = dict(nhead=1, dim_ff=d_model, dropout=0.0, use_norm=False) if style == "swin" else \
        dict(nhead=nhead, dim_ff=dim_ff // 2, dropout=dropout, use_norm=True)
    stages = nn.ModuleList([
        nn.ModuleList(EncoderLayer(d_model, nhead, dim_ff, dropout) for _ in range(num_layers[0])),
        nn.ModuleList(EncoderLayer(d_model, **s1) for _ in range(num_layers[1])),
    ])
    return stages, s1


def run_stages(stages: nn.ModuleList, feats: list[Tensor], pos: list[Tensor], masks: list[Tensor | None],
               cross_scale: CrossScaleLayer | None = None, grad_checkpointing: bool = False) -> list[Tensor]:
    """The encoder loop (MED-VT and MED-VT++): feats/pos [B, T, C, h_i, w_i] and masks [B, T, h_i, w_i]
    or None for (deep, shallow) → same shapes; the shallow stage first takes in the deep output
    through ``cross_scale`` when there is one."""
    outs = []
    for i, (x, p, m) in enumerate(zip(feats, pos, masks)):
        tokens, p_tok, m_tok = flatten_tokens(x), flatten_tokens(p), None if m is None else m.flatten(1)
        if i == 1 and cross_scale is not None:
            deep, pos_deep = outs[0], pos[0]
            if deep.shape[-2:] != x.shape[-2:]:  # ResNet: the 1/32 output goes onto the 1/16 grid
                deep = F.interpolate(deep.flatten(0, 1), size=x.shape[-2:], mode="bilinear",
                                     align_corners=False).unflatten(0, x.shape[:2])
                pos_deep = p
            tokens = cross_scale(flatten_tokens(deep), tokens, flatten_tokens(pos_deep), p_tok, m_tok)
        for layer in stages[i]:
            if grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, p_tok, m_tok, use_reentrant=False)
            else:
                tokens = layer(tokens, p_tok, m_tok)
        b, t, c, h, w = x.shape
        outs.append(tokens.reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3))
    return outs


class MultiscaleEncoder(nn.Module):
    """Two-stage encoder. Inputs are the deep and the next-shallower projected maps."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, num_layers: tuple[int, int],
                 style: str, cross_layer: bool = True, cross_ff: int = 0) -> None:
        """``cross_layer=False`` drops the between-scale layer (stage 1 sees its own map only);
        ``cross_ff`` overrides its FFN width (0: the stage-1 width, the original's rule)."""
        super().__init__()
        self.stages, s1 = encoder_stages(d_model, nhead, dim_ff, dropout, num_layers, style)
        self.cross_scale = None
        if cross_layer:
            self.cross_scale = CrossScaleLayer(d_model, s1["nhead"], cross_ff or s1["dim_ff"], s1["dropout"],
                                               fused=style == "swin")
        self.grad_checkpointing = False

    def forward(self, feats: list[Tensor], pos: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        """feats/pos [B, T, C, h_i, w_i] and masks [B, T, h_i, w_i] or None for (deep, shallow) → same shapes."""
        return run_stages(self.stages, feats, pos, masks, self.cross_scale, self.grad_checkpointing)


def flatten_tokens(x: Tensor) -> Tensor:
    """[B, T, C, h, w] → [B, T·h·w, C] (time-major, then row, then column)."""
    return x.permute(0, 1, 3, 4, 2).flatten(1, 3)
