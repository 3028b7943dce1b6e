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

The audio positional embeddings of the cross-attention are, in the original, ``nn.Embedding``
objects kept in a plain list: unregistered, untrained and re-drawn at every construction. Here
they are a non-persistent buffer drawn from a fixed seed, so builds are reproducible and the
state dict keeps exactly the original's keys. They cannot change the masks: each frame has a
single audio token, so the visual side's softmax over it is 1 and the visual update does not
depend on the query/key projections; only the returned audio features (MS3's masked-AV loss)
depend on them (spec §B.2-4, tested in tests/test_avs.py).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import PVTBackbone
from .encoder import encoder_stages, run_stages
from .pixel_decoder import FPNPixelDecoder
from .position_encoding import PositionEmbeddingSine3D
from .query_decoder import DecoderLayer


@dataclass(frozen=True)
class AVSConfig:
    """Hyper-parameters of MED-VT++ (defaults = the released S4/MS3 model, 149,466,323 parameters).

    ``head_dim`` is the width of the head's second conv (256 in the original). ``audio_ctx_layers``
    of the ``decoder_layers`` query-decoder layers (the first ones) also attend to the audio
    token. ``audio_pos_seed`` seeds the fixed audio positional embeddings (module docstring).
    """

    name: str = "medvtpp_s4"
    backbone: str = "pvt_v2_b5"
    drop_path: float = 0.1
    d_model: int = 384
    audio_dim: int = 128
    max_frames: int = 5
    enc_layers: tuple[int, int] = (3, 1)
    enc_nhead: int = 8
    enc_dim_ff: int = 2048
    dropout: float = 0.1
    num_queries: int = 384
    dec_nhead: int = 8
    dec_dim_ff: int = 2048
    qgen_layers: int = 3
    decoder_layers: int = 12
    audio_ctx_layers: int = 6
    decoder_scales: int = 3
    audio_proj_hidden: int = 2048
    head_dim: int = 256
    fusion_heads: int = 1
    audio_pos_seed: int = 0
    mm_context: str = "bidir"
    tpavi_stages: tuple[int, ...] = ()
    tpavi_va: bool = True
    tpavi_vv: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


AVS_CONFIGS: dict[str, AVSConfig] = {
    "medvtpp_s4": AVSConfig(name="medvtpp_s4"),
    "medvtpp_ms3": AVSConfig(name="medvtpp_ms3"),
    # Small and fast, for tests and the demo: pvt_v2_b0 and narrow widths.
    "avs_tiny": AVSConfig(name="avs_tiny", backbone="pvt_v2_b0", d_model=48, enc_layers=(1, 1), enc_nhead=4,
                          enc_dim_ff=64, num_queries=16, dec_nhead=4, dec_dim_ff=64, qgen_layers=1,
                          decoder_layers=3, audio_ctx_layers=1, audio_proj_hidden=64, head_dim=16),
}


def get_avs_config(name_or_cfg: str | AVSConfig | dict, **overrides) -> AVSConfig:
    if isinstance(name_or_cfg, AVSConfig):
        cfg = name_or_cfg
    elif isinstance(name_or_cfg, dict):
        d = dict(name_or_cfg)
        d["enc_layers"] = tuple(d.get("enc_layers", (3, 1)))
        d["tpavi_stages"] = tuple(d.get("tpavi_stages", ()))
        cfg = AVSConfig(**d)
    elif name_or_cfg in AVS_CONFIGS:
        cfg = AVS_CONFIGS[name_or_cfg]
    else:
        raise KeyError(f"unknown AVS config {name_or_cfg!r}; known: {sorted(AVS_CONFIGS)}")
    return replace(cfg, **overrides) if overrides else cfg


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
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
        weights are loaded afterwards by :func:`load_pvt_pretrained`)."""
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
    return MEDVTPlusPlus(get_avs_config(name_or_cfg, **overrides))


# --------------------------------------------------------------------------------------------
# Original names → ours
# --------------------------------------------------------------------------------------------
def _pvt(m: re.Match) -> str:
    kind, k, rest = m[1], int(m[2]), m[3]
    if kind == "patch_embed":
        return f"backbone.body.patch_embed.{rest}" if k == 1 else f"backbone.body.stages.{k - 1}.downsample.{rest}"
    if kind == "norm":
        return f"backbone.body.stages.{k - 1}.norm.{rest}"
    return f"backbone.body.stages.{k - 1}.blocks.{rest.replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')}"


_AVS_RULES: list[tuple[str, object]] = [
    (r"^encoder_backbone\.(patch_embed|norm)(\d)\.(.*)$", _pvt),
    (r"^encoder_backbone\.(block)(\d)\.(.*)$", _pvt),
    (r"^visual_feat_proj\.input_proj_modules\.", "input_proj."),
    (r"^mm_context_encoder\.context_proj_modules\.", "av_fusion.audio_proj."),
    (r"^mm_context_encoder\.attn_modules\.", "av_fusion.attn."),
    (r"^mm_context_encoder\.tpavi_b(\d)\.", lambda m: f"av_fusion.blocks.{int(m[1]) - 1}."),
    (r"^visual_context_encoder\.encoder\.layers\.", "encoder."),
    (r"^fpn\.", "pixel_decoder."),
    (r"^query_decoder\.query\.", "query_decoder.query_embed."),
    (r"^query_decoder\.context_proj\.", "query_decoder.audio_proj."),
    (r"^query_decoder\.query_initializer\.layers\.(\d+)\.multihead_attn\.", r"query_decoder.generator.\1.cross_attn."),
    (r"^query_decoder\.query_initializer\.layers\.", "query_decoder.generator."),
    (r"^query_decoder\.decoder\.layers\.(\d+)\.multihead_attn_ctx\.", r"query_decoder.layers.\1.audio_attn."),
    (r"^query_decoder\.decoder\.layers\.(\d+)\.mm_norm\.", r"query_decoder.layers.\1.audio_norm."),
    (r"^query_decoder\.decoder\.layers\.(\d+)\.multihead_attn\.", r"query_decoder.layers.\1.cross_attn."),
    (r"^query_decoder\.decoder\.layers\.", "query_decoder.layers."),
    (r"^query_decoder\.decoder\.norm\.", "query_decoder.norm."),
    (r"^query_decoder\.query_feat_norm\.", "query_decoder.affinity_norm."),
    (r"^output_conv\.0\.", "head.conv1."),
    (r"^output_conv\.2\.", "head.conv2."),
    (r"^output_conv\.5\.", "head.out."),
]


def convert_original_avs_name(name: str) -> str:
    """One original ``Pred_endecoder`` state-dict name → ours (unknown names pass through)."""
    name = name[7:] if name.startswith("module.") else name  # DataParallel prefix
    for pattern, repl in _AVS_RULES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


def is_original_avs_state_dict(sd: dict) -> bool:
    """True for the authors' ``Pred_endecoder`` names (bare or with DataParallel's ``module.``)."""
    return any(k.removeprefix("module.").startswith(("encoder_backbone.", "mm_context_encoder.")) for k in sd)


def convert_original_avs_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an original MED-VT++ state dict (S4 or MS3 release; bare or DataParallel) to ours."""
    return {convert_original_avs_name(k): v for k, v in sd.items()}


def avs_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A MED-VT++ state dict in our names, whether it is ours or an authors' release."""
    return convert_original_avs_state_dict(sd) if is_original_avs_state_dict(sd) else sd


def load_avs_checkpoint(model: MEDVTPlusPlus, path) -> dict:
    """Load our checkpoint (dict with "model") or an original bare state dict strictly (the shared
    loader: missing / unexpected / mis-shaped keys named, non-finite weights refused); returns the
    checkpoint dict."""
    from .convert import checkpoint_state_dict, load_state_dict_strict, read_checkpoint
    ckpt = read_checkpoint(path)
    load_state_dict_strict(model, avs_state_dict(checkpoint_state_dict(ckpt)), source=str(path))
    return ckpt


def load_pvt_pretrained(model: MEDVTPlusPlus, path) -> int:
    """Load PVTv2 ImageNet weights (original ``pvt_v2_b5.pth`` names or timm names) into the
    backbone; the classification head is ignored. Returns the number of tensors loaded."""
    from .convert import read_checkpoint
    sd = read_checkpoint(path)
    sd = sd.get("model", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
    own = model.backbone.body.state_dict()
    out = {}
    for k, v in sd.items():
        name = convert_original_avs_name("encoder_backbone." + k).removeprefix("backbone.body.")
        if name.startswith("encoder_backbone."):
            name = k  # already timm names
        if name in own and own[name].shape == v.shape:
            out[name] = v
    if not out:
        from .convert import CheckpointMismatchError
        raise CheckpointMismatchError(f"{path}: no PVTv2 weights of {model.cfg.backbone} found in this file "
                                      "(--pvtv2_pretrained_path expects pvt_v2_b5.pth)")
    own.update(out)
    model.backbone.body.load_state_dict(own)
    return len(out)
