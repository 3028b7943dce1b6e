"""MED-VT++'s audio-visual fusion: each backbone scale's visual tokens meet the frame's audio.

:class:`AudioVisualFusion` (the released model, ``mm_context="bidir"``) runs a bidirectional
cross-attention per scale between a frame's tokens and its one audio token; :class:`TPAVIFusion`
(``mm_context="tpavi"``) is the original's AVSBench TPAVI alternative. Both take feats
[B·T, C, h, w] and positions [B, T, C, h, w] per scale and audio [B, T, 128], and return the
fused feats and the audio per scale (for MS3's masked audio-visual loss).

The audio positional embeddings of the cross-attention are, in the original, ``nn.Embedding``
objects kept in a plain list: unregistered, untrained and re-drawn at every construction. Here
they are a non-persistent buffer drawn from a fixed seed, so builds are reproducible and the
state dict keeps exactly the original's keys. They cannot change the masks: each frame has a
single audio token, so the visual side's softmax over it is 1 and the visual update does not
depend on the query/key projections; only the returned audio features (MS3's masked-AV loss)
depend on them (spec §B.2-4, tested in tests/test_avs.py).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class BidirectionalCrossAttention(nn.Module):
    """Joint attention between visual tokens x [N, L, C] and audio tokens a [N, M, C].

    One similarity S = q(x + pos) · q_a(a + pos_a)ᵀ / sqrt(C/heads) serves both directions:
    visual tokens read audio values (softmax over M), audio tokens read visual values (softmax
    over L). Outputs are projected (with bias) and added to the inputs; q/k/v have no bias.
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_qk = nn.Linear(dim, dim, bias=False)
        self.context_to_qk = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.context_to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.context_to_out = nn.Linear(dim, dim)

    def _split(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [N, heads, L, d]

    def forward(self, x: Tensor, a: Tensor, pos: Tensor, a_pos: Tensor) -> tuple[Tensor, Tensor]:
        qk, v = self._split(self.to_qk(x + pos)), self._split(self.to_v(x))
        a_qk, a_v = self._split(self.context_to_qk(a + a_pos)), self._split(self.context_to_v(a))
        sim = qk @ a_qk.transpose(-1, -2) * self.scale  # [N, heads, L, M]
        out = (sim.softmax(-1) @ a_v).transpose(1, 2).flatten(2)
        a_out = (sim.softmax(-2).transpose(-1, -2) @ v).transpose(1, 2).flatten(2)
        return x + self.to_out(out), a + self.context_to_out(a_out)


class AudioVisualFusion(nn.Module):
    """Per scale: audio Linear(128→C), then frame-wise bidirectional cross-attention (spec §B.2-4)."""

    def __init__(self, num_scales: int, dim: int, audio_dim: int, heads: int, max_frames: int, seed: int) -> None:
        super().__init__()
        self.audio_proj = nn.ModuleList(nn.Linear(audio_dim, dim) for _ in range(num_scales))
        self.attn = nn.ModuleList(BidirectionalCrossAttention(dim, heads) for _ in range(num_scales))
        g = torch.Generator().manual_seed(seed)
        # Fixed, non-persistent: not part of the original's state dict (module docstring).
        self.register_buffer("audio_pos", torch.randn(num_scales, max_frames, dim, generator=g), persistent=False)

    def forward(self, feats: list[Tensor], pos: list[Tensor], audio: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """feats [N, C, h, w] and pos [B, T, C, h, w] per scale; audio [B, T, A]
        → (feats, audio [B, T, C] per scale)."""
        b, t = audio.shape[:2]
        if t > self.audio_pos.shape[1]:
            raise ValueError(f"clip of {t} frames, but the audio positions cover {self.audio_pos.shape[1]}")
        out_v, out_a = [], []
        for i, x in enumerate(feats):
            n, c, h, w = x.shape
            a = self.audio_proj[i](audio.flatten(0, 1)).unsqueeze(1)  # [N, 1, C]
            a_pos = self.audio_pos[i, :t].repeat(b, 1).unsqueeze(1)
            v, a = self.attn[i](x.flatten(2).transpose(1, 2), a, pos[i].flatten(0, 1).flatten(2).transpose(1, 2), a_pos)
            out_v.append(v.transpose(1, 2).reshape(n, c, h, w))
            out_a.append(a.reshape(b, t, c))
        return out_v, out_a


class TPAVI(nn.Module):
    """AVSBench's temporal pixel-wise audio-visual interaction block, 'dot' mode (spec §B.4).

    x [B, C, T, h, w]; audio [B, T, 128] (None = visual self-attention): θ, φ, g = 1x1x1 convs to
    C/2; affinity θ(x)ᵀφ(a) / (T·h·w) with the audio broadcast over (h, w); y = affinity · g(x);
    z = LayerNorm_C(x + BN(W(y))), BN zero-initialised. Returns (z, projected audio [B, T, C]).
    The product is evaluated as θᵀ(φ gᵀ) — the same value without the (T·h·w)² affinity matrix.
    """

    def __init__(self, dim: int, audio_dim: int = 128) -> None:
        super().__init__()
        inter = max(dim // 2, 1)
        self.align_channel = nn.Linear(audio_dim, dim)
        self.norm_layer = nn.LayerNorm(dim)
        self.g = nn.Conv3d(dim, inter, 1)
        self.theta = nn.Conv3d(dim, inter, 1)
        self.phi = nn.Conv3d(dim, inter, 1)
        self.W_z = nn.Sequential(nn.Conv3d(inter, dim, 1), nn.BatchNorm3d(dim))
        nn.init.zeros_(self.W_z[1].weight)
        nn.init.zeros_(self.W_z[1].bias)

    def forward(self, x: Tensor, audio: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        b, c, t, h, w = x.shape
        a_proj = None
        if audio is not None:
            a_proj = self.align_channel(audio)  # [B, T, C]
            ctx = a_proj.transpose(1, 2)[..., None, None].expand(b, c, t, h, w)
        else:
            ctx = x
        g = self.g(x).flatten(2)                     # [B, C', L]
        theta = self.theta(x).flatten(2)             # [B, C', L]
        phi = self.phi(ctx).flatten(2)               # [B, C', L]
        n = phi.shape[-1]
        y = theta.transpose(1, 2) @ (phi @ g.transpose(1, 2)) / n  # [B, L, C']
        y = y.transpose(1, 2).reshape(b, -1, t, h, w)
        z = self.W_z(y) + x
        return self.norm_layer(z.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3), a_proj


class TPAVIFusion(nn.Module):
    """The original's ``--mm_context tpavi`` alternative (MS3 code; not the released model).

    Scales in ``stages`` are replaced by the mean of the enabled TPAVI outputs (audio-visual
    ``va`` and/or visual self-attention ``vv``); the others pass unchanged. Returned audio per
    scale: TPAVI's projected audio [B, T, C] where ``va`` ran, else the raw input [B, T, 128].
    """

    def __init__(self, dim: int, audio_dim: int, stages: tuple[int, ...], va: bool, vv: bool) -> None:
        super().__init__()
        if stages and not (va or vv):
            raise ValueError("TPAVI stages need tpavi_va and/or tpavi_vv")
        self.va, self.vv = va, vv
        self.blocks = nn.ModuleDict({str(i): TPAVI(dim, audio_dim) for i in stages})

    def forward(self, feats: list[Tensor], pos: list[Tensor], audio: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        b, t = audio.shape[:2]
        feats, out_a = list(feats), [audio] * len(feats)
        for key, block in self.blocks.items():
            i = int(key)
            n, c, h, w = feats[i].shape
            x = feats[i].reshape(b, t, c, h, w).transpose(1, 2)  # [B, C, T, h, w]
            outs = []
            if self.vv:
                outs.append(block(x)[0])
            if self.va:
                z, out_a[i] = block(x, audio)
                outs.append(z)
            feats[i] = (sum(outs) / len(outs)).transpose(1, 2).reshape(n, c, h, w)
        return feats, out_a
