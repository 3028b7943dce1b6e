"""Multiscale query decoder and the object attention map (spec avos §1.7–1.8).

The decoder holds one learned query per frame (``num_queries`` of them, reused cyclically when
the clip is longer). All queries attend jointly to the memory of the whole clip; decoder layer j
cross-attends to memory scale ``j mod S``. Layers are post-norm DETR decoder layers; the output
is the final LayerNorm of the last layer.

:class:`ObjectAttentionMap` turns each frame's decoded query into ``nheads`` attention maps over
that frame's high-resolution features (no values: only the softmax is used).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiheadAttention


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer. With ``audio=True`` (MED-VT++) a cross-attention to the audio
    tokens (+ its own norm) follows the self-attention."""

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, audio: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.audio_attn = MultiheadAttention(d_model, nhead, dropout) if audio else None
        self.audio_norm = nn.LayerNorm(d_model) if audio else None
        self.cross_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor | None,
                memory_padding_mask: Tensor | None = None, audio: Tensor | None = None,
                audio_query_pos: Tensor | None = None) -> Tensor:
        """tgt/query_pos [B, Q, C]; memory/pos [B, L, C]; memory_padding_mask [B, L];
        audio [B, La, C] with its query positions audio_query_pos [B, Q, C] → [B, Q, C]."""
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, tgt)))
        if self.audio_attn is not None:
            tgt = self.audio_norm(tgt + self.dropout(self.audio_attn(tgt + audio_query_pos, audio, audio)))
        key = memory if pos is None else memory + pos
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + query_pos, key, memory, memory_padding_mask)))
        return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class QueryDecoder(nn.Module):
    """Args:
        num_queries: learned per-frame queries, the training clip length (``MedVTConfig.num_queries``,
            6); frame t uses query ``t mod num_queries``. Not MED-VT++'s object queries.
        tgt_init: constant the decoder target starts from (0 in the CVPR'23 code, 1e-6 in the 2024
            inference code: variant ``2024``).
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float, num_layers: int,
                 num_queries: int, tgt_init: float = 0.0) -> None:
        super().__init__()
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_ff, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.tgt_init = tgt_init

    def forward(self, memories: list[Tensor], pos: list[Tensor], masks: list[Tensor], num_frames: int) -> Tensor:
        """memories/pos: per scale [B, L_s, C]; masks [B, L_s] → one decoded query per frame [B, T, C]."""
        b = memories[0].shape[0]
        idx = torch.arange(num_frames, device=self.query_embed.weight.device) % self.query_embed.num_embeddings
        query_pos = self.query_embed.weight[idx].unsqueeze(0).expand(b, -1, -1)
        tgt = torch.full_like(query_pos, self.tgt_init)
        for j, layer in enumerate(self.layers):
            s = j % len(memories)
            tgt = layer(tgt, query_pos, memories[s], pos[s], masks[s])
        return self.norm(tgt)


class ObjectAttentionMap(nn.Module):
    """Per-frame multi-head attention maps of a query over feature maps.

    ``joint_softmax=True`` normalises over heads × pixels together (DETR's MHAttentionMap, the
    CVPR code); ``False`` over the heads at each pixel (the 2024 inference code).
    """

    def __init__(self, dim: int, num_heads: int, joint_softmax: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.joint_softmax = joint_softmax
        self.q_linear = nn.Linear(dim, dim)
        self.k_linear = nn.Linear(dim, dim)
        for lin in (self.q_linear, self.k_linear):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.scale = float(dim / num_heads) ** -0.5

    def forward(self, queries: Tensor, feats: Tensor, mask: Tensor | None = None) -> Tensor:
        """queries [B, T, C]; feats [B, T, C, h, w]; mask [B, T, h, w] (True = padding) → [B, T, heads, h, w].

        The original projects every pixel with ``k_linear`` (a C×C 1x1 conv) and then takes one
        dot product per head. Both are linear, so the query is folded into the key weights first:
        q_n·(W_n f + b_n) = (q_nᵀW_n)·f + q_n·b_n, a [heads, C] map per frame instead of a C×C
        conv over all pixels (C/heads times fewer FLOPs; same values up to float rounding).
        Not an SDPA shape: there are no values and the joint softmax spans heads × pixels.
        """
        q = (self.q_linear(queries) * self.scale).unflatten(-1, (self.num_heads, -1))  # [B, T, n, d]
        w_k = self.k_linear.weight.unflatten(0, (self.num_heads, -1))  # [n, d, C]
        b_k = self.k_linear.bias.unflatten(0, (self.num_heads, -1))  # [n, d]
        qw = torch.einsum("btnd,ndc->btnc", q, w_k)  # [B, T, n, C]
        qb = (q * b_k).sum(-1)  # [B, T, n]
        w = torch.einsum("btnc,btchw->btnhw", qw, feats) + qb[..., None, None]
        if mask is not None:
            w = w.masked_fill(mask[:, :, None], float("-inf"))
        if self.joint_softmax:
            return F.softmax(w.flatten(2), dim=-1).view_as(w)
        return F.softmax(w, dim=2)
