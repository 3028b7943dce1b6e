"""Multi-head attention on ``F.scaled_dot_product_attention``.

It keeps ``nn.MultiheadAttention``'s parameter layout (``in_proj_weight`` [3C, C],
``in_proj_bias`` [3C], ``out_proj``) so the original checkpoints map onto it one to one,
but takes batch-first tensors and lets PyTorch pick a fused attention kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Attention with separate query/key/value inputs, all of width ``dim``.

    Args:
        dim: model width C.
        num_heads: number of heads (C must be divisible by it).
        dropout: dropout on the attention weights, active in training only.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """query [B, Lq, C], key/value [B, Lk, C], key_padding_mask [B, Lk] (True = ignore) → [B, Lq, C]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        projections = ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))
        q, k, v = (self._heads(F.linear(x, w, b)) for x, w, b in projections)
        mask = None
        if key_padding_mask is not None and key_padding_mask.any():
            mask = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, Lk], True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).flatten(2)  # [B, heads, Lq, d] -> [B, Lq, C]
        return self.out_proj(out)

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, L, C] -> [B, heads, L, d]
