"""Label propagation: many-to-many (spec avos §1.10, ``lprop_mode`` 2) or unidirectional (mode 1).

The coarse logits of every frame are upsampled (nearest, ×``scale``), encoded by a small CNN
into 16-channel label embeddings at 1/16 of that size, and each frame's embedding is then
re-estimated from the *other* frames of the clip through feature affinities:

1. self step — features attend to the other frames' features (cosine keys, temperature 1/30),
   values are the raw features; residual + per-frame instance norm;
2. cross step — the updated features (queries) attend to the original features (keys) of the
   other frames, values are the label embeddings; per-frame instance norm;
3. a 3D-conv label decoder maps the embeddings back to logits.

"Other frames" is a block mask in the original, built as a dense (T·h·w)² additive matrix, with
a score matrix of the same size. Here each frame's queries attend to the keys of the remaining
T-1 frames gathered per frame in one fused SDPA call (see :func:`_attend_other_frames`), so
neither the mask nor the score matrix is built and the softmax runs over exactly the same keys.
Clips need T ≥ 2.

Mode 1 (spec a2d §A.4) refines only the LAST frame: its features attend to themselves (values
through a ``WV`` projection), residual + instance norm, then attend to the features of the earlier
frames whose projected (``WV``) label embeddings are the values; the result is averaged with the
last frame's own embedding, the other frames keep theirs.

In mode 2 the original also creates ``WV`` projections but never uses their output, and in both
modes a ``samp_w_pred`` conv it never uses; we build none of these (the converter drops them).
"""
from __future__ import annotations

from fractions import Fraction

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ResBlock(nn.Module):
    """Stride-2 basic block with a 3x3 strided conv shortcut (optionally batch-normed)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.shortcut = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class LabelEncoder(nn.Module):
    """Label maps [N, K, H, W] → embeddings [N, dims[3], H/16, W/16]."""

    def __init__(self, num_classes: int, dims: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(num_classes, dims[0], 3, stride=2, padding=1)
        self.res1 = _ResBlock(dims[0], dims[1], batch_norm=False)
        self.res2 = _ResBlock(dims[1], dims[2], batch_norm=True)
        self.proj = nn.Conv2d(dims[2], dims[3], 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, stride=2, padding=1)
        return F.relu(self.proj(self.res2(self.res1(x))))


def _other_frames(t: int, device: torch.device) -> Tensor:
    """[T, T-1] long: row r lists the frames s ≠ r in increasing order."""
    idx = torch.arange(t, device=device)
    return idx.expand(t, t)[idx[:, None] != idx[None, :]].view(t, t - 1)


def _attend_other_frames(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """q/k [B, T, n, d], v [B, T, n, e] → [B, T, n, e]; frame t attends to all tokens of frames ≠ t.

    The original adds a dense (T·n)² mask (−inf within a frame) to a (T·n)² score matrix. The
    mask is block-structured, so here each frame's queries get the keys/values of the other T-1
    frames gathered next to them ([B, T, (T-1)·n, ·], T-1 copies of the small key/value tensors)
    and one batched SDPA call runs over exactly the keys the original's softmax keeps.

    PyTorch's fused CPU kernel (which tiles the scores and never holds them) needs one head width
    for q, k and v; with e ≠ d it silently falls back to the math path, which materialises a
    [B, T, n, (T-1)·n] score matrix and its softmax. So on CPU the narrower side is zero-padded:
    zero key channels add nothing to q·k, zero value channels are sliced off. CUDA's
    memory-efficient kernel takes e ≠ d as is.
    """
    t = q.shape[1]
    others = _other_frames(t, q.device)
    k_o = k[:, others].flatten(2, 3)  # [B, T, (T-1)·n, d]
    v_o = v[:, others].flatten(2, 3)  # [B, T, (T-1)·n, e]
    d, e = q.shape[-1], v.shape[-1]
    if q.device.type == "cpu" and d != e:
        if e > d:
            q, k_o = F.pad(q, (0, e - d)), F.pad(k_o, (0, e - d))
        else:
            v_o = F.pad(v_o, (0, d - e))
    return F.scaled_dot_product_attention(q, k_o, v_o, scale=scale)[..., :e]


def _instance_norm(x: Tensor) -> Tensor:
    """Per frame and channel over the pixels: x [B, T, n, C]."""
    return F.instance_norm(x.transpose(2, 3).flatten(0, 1)).unflatten(0, x.shape[:2]).transpose(2, 3)


class ManyToManyPropagation(nn.Module):
    """Mode 2: every frame's labels from the other frames, a self step then a cross step. Keys are
    cosine-normalised projections of the features; ``attn_scale`` = 1/τ multiplies their similarities."""

    def __init__(self, feat_dim: int, key_dim: int, tau: float = 1 / 30) -> None:
        super().__init__()
        self.self_key = nn.Linear(feat_dim, key_dim)
        self.cross_key = nn.Linear(feat_dim, key_dim)
        self.attn_scale = 1.0 / tau
        for lin in (self.self_key, self.cross_key):
            nn.init.normal_(lin.weight, 0, math.sqrt(2.0 / key_dim))
            nn.init.zeros_(lin.bias)

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        """feats [B, T, n, C], labels [B, T, n, E] (n = h·w tokens per frame) → [B, T, n, E]."""
        k = F.normalize(self.self_key(feats), dim=-1)
        updated = _instance_norm(feats + _attend_other_frames(k, k, feats, self.attn_scale))
        q = F.normalize(self.cross_key(updated), dim=-1)
        k = F.normalize(self.cross_key(feats), dim=-1)
        return _instance_norm(_attend_other_frames(q, k, labels, self.attn_scale))


class LastFramePropagation(nn.Module):
    """Mode 1: the last frame's labels re-estimated from the earlier frames (plain softmax attention)."""

    def __init__(self, feat_dim: int, key_dim: int, label_dim: int, tau: float = 1 / 30) -> None:
        super().__init__()
        self.self_key = nn.Linear(feat_dim, key_dim)
        self.self_value = nn.Linear(feat_dim, feat_dim)
        self.cross_key = nn.Linear(feat_dim, key_dim)
        self.cross_value = nn.Linear(label_dim, label_dim)
        self.attn_scale = 1.0 / tau
        for lin in (self.self_key, self.self_value, self.cross_key, self.cross_value):
            nn.init.normal_(lin.weight, 0, math.sqrt(2.0 / lin.out_features))
            nn.init.zeros_(lin.bias)

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        """feats [B, T, n, C], labels [B, T, n, E] → [B, T, n, E] (only the last frame changes)."""
        cur, prev = feats[:, -1:], feats[:, :-1].flatten(1, 2)  # [B, 1, n, C], [B, (T-1)·n, C]
        k = F.normalize(self.self_key(cur), dim=-1)
        cur = _instance_norm(cur + F.scaled_dot_product_attention(k, k, self.self_value(cur), scale=self.attn_scale))
        q = F.normalize(self.cross_key(cur[:, 0]), dim=-1)
        k = F.normalize(self.cross_key(prev), dim=-1)
        v = self.cross_value(labels[:, :-1].flatten(1, 2))
        last = F.scaled_dot_product_attention(q, k, v, scale=self.attn_scale)  # [B, n, E]
        return torch.cat([labels[:, :-1], ((labels[:, -1] + last) / 2)[:, None]], dim=1)


class LabelPropagator(nn.Module):
    """Args:
        feat_dim: channels of the features used for affinities (decoded features + attention maps).
        num_classes: K, channels of the logits being propagated.
        scale: upsampling factor of the logits before encoding (8.0 Swin, 7.2/7.3/8.0 ResNet).
        mode: 2 many-to-many (every frame from the others), 1 the last frame from the earlier ones.
    """

    def __init__(self, feat_dim: int, num_classes: int, scale: float, key_dim: int = 128,
                 enc_dims: tuple[int, int, int, int] = (16, 32, 64, 16), mode: int = 2) -> None:
        super().__init__()
        if mode not in (1, 2):
            raise ValueError(f"label propagation mode must be 1 or 2, not {mode}")
        self.upsample = scale  # the logits' upsampling factor (config lprop_scale)
        self._ratio = _exact_ratio(scale)
        self.label_encoder = LabelEncoder(num_classes, enc_dims)
        e = enc_dims[-1]
        self.propagation = ManyToManyPropagation(feat_dim, key_dim) if mode == 2 else \
            LastFramePropagation(feat_dim, key_dim, e)
        self.label_decoder = nn.Sequential(
            nn.Conv3d(e, e, 3, padding="same"), nn.GroupNorm(4, e), nn.ReLU(), nn.Conv3d(e, num_classes, 1)
        )

    def forward(self, logits: Tensor, feats: Tensor) -> Tensor:
        """logits [B, K, T, h, w], feats [B, T, C, h, w] → refined logits [B, K, T, h', w'] (h' ≈ h·upsample/16)."""
        b, _, t, h, w = logits.shape
        up = F.interpolate(logits, size=(t, self._scaled(h), self._scaled(w)), mode="nearest")
        enc = self.label_encoder(up.transpose(1, 2).flatten(0, 1))  # [B·T, E, h', w']
        size = enc.shape[-2:]
        f = F.interpolate(feats.flatten(0, 1), size=size, mode="nearest")
        def tokens(x: Tensor) -> Tensor:  # [B·T, C, h', w'] -> [B, T, n, C]
            return x.flatten(2).transpose(1, 2).unflatten(0, (b, t))

        out = self.propagation(tokens(f), tokens(enc))  # [B, T, n, E]
        out = out.transpose(2, 3).unflatten(3, size).transpose(1, 2)  # [B, E, T, h', w']
        return self.label_decoder(out)

    def _scaled(self, n: int) -> int:
        """``int(n · upsample)``, as the original sizes it; in integers when that is exact, so that a
        symbolic size (ONNX export with dynamic H/W) is not specialised by a float truncation."""
        if self._ratio is None:
            return int(n * self.upsample)
        p, q = self._ratio
        return n * p // q


def _exact_ratio(scale: float, limit: int = 1 << 14) -> tuple[int, int] | None:
    """(p, q) with ``n·p // q == int(n·scale)`` for every size n below ``limit``, else None."""
    f = Fraction(scale).limit_denominator(1000)
    p, q = f.numerator, f.denominator
    return (p, q) if all(n * p // q == int(n * scale) for n in range(limit)) else None
