"""Backbones: each maps a clip to four feature maps at strides (8, 16, 32, 32) or (4, 8, 16, 32).

Every backbone has the same small interface: ``forward(frames [B, T, 3, H, W])`` → a list of four
``[B, T, C_i, h_i, w_i]`` maps, ``out_dims`` (the C_i), ``strides`` and a ``grad_checkpointing``
switch; its pretrained weights come from a local file through its converter.

* :class:`VideoSwinBackbone` — torchvision's ``SwinTransformer3d`` configured as the original
  Video Swin-B (patch 1x4x4, window 8x7x7, embed 128, depths 2-2-18-2, heads 4-8-16-32). The
  original takes each stage's output *after* its patch merging and passes it through a
  per-stage LayerNorm (``norms``); the stride-4 map is never used (spec avos §1.2).
* :class:`ResNetBackbone` — torchvision ResNet-101 with frozen batch norm; outputs of layer1..4.
* :class:`PVTBackbone` — timm PVTv2 (MED-VT++), applied per frame; its four stage outputs.

Both return a list of ``[B, T, C_i, h_i, w_i]`` tensors. Pretrained weights are loaded only
from local files (:func:`load_swin_pretrained`); nothing is downloaded.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.video.swin_transformer import (PatchEmbed3d, PatchMerging, ShiftedWindowAttention3d,
                                                       SwinTransformer3d, SwinTransformerBlock,
                                                       _compute_attention_mask_3d, _get_window_and_shift_size)
from torchvision.ops import FrozenBatchNorm2d

from .config import MedVTConfig, SwinConfig
from .convert import CheckpointMismatchError, check_finite, checkpoint_state_dict, read_checkpoint


class SDPAWindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's shifted-window attention with the product softmax(QKᵀ·s + bias + mask)·V done by
    ``F.scaled_dot_product_attention`` (fused, no score matrix kept around), same parameters and
    same arithmetic otherwise: pad to whole windows, cyclic shift, windows, attention, undo."""

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, H, W, C] → [B, T, H, W, C]."""
        b, t, h, w, c = x.shape
        ws, ss = _get_window_and_shift_size(self.shift_size.copy(), [t, h, w], self.window_size.copy())
        # Pad to whole windows. Sizes are written as grid·window (not size + (−size mod window)) so that
        # under symbolic shapes (ONNX export, dynamic H/W) they stay small expressions; same numbers.
        grid = [(s + k - 1) // k for s, k in zip((t, h, w), ws)]
        padded = [g * k for g, k in zip(grid, ws)]
        x = F.pad(x, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - t))
        shifted = sum(ss) > 0
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in ss), dims=(1, 2, 3))
        n = ws[0] * ws[1] * ws[2]
        windows = b * grid[0] * grid[1] * grid[2]
        # [B, T, H, W, C] -> [B·nW, N, C], windows in (t, h, w) order
        x = x.view(b, grid[0], ws[0], grid[1], ws[1], grid[2], ws[2], c)
        x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(windows, n, c)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(windows, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mask = self.get_relative_position_bias(ws)  # [1, heads, N, N]
        if shifted:  # -100 between tokens that came from different regions before the shift
            regions = _compute_attention_mask_3d(x, tuple(padded), tuple(ws), tuple(ss))
            mask = (mask + regions[:, None]).repeat(b, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype),
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = F.linear(out.transpose(1, 2).reshape(windows, n, c), self.proj.weight, self.proj.bias)
        out = F.dropout(out, p=self.dropout, training=self.training)
        out = out.view(b, *grid, *ws, c).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *padded, c)
        if shifted:
            out = torch.roll(out, shifts=tuple(ss), dims=(1, 2, 3))
        return out.narrow(1, 0, t).narrow(2, 0, h).narrow(3, 0, w).contiguous()


class WholePatchEmbed3d(PatchEmbed3d):
    """torchvision's patch embedding, padding written as whole patches (``ceil(size/p)·p − size``): the same
    zeros, but a symbolic size (ONNX export, dynamic H/W) stays one small expression per stage."""

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pad = [(n + p - 1) // p * p - n for n, p in zip(size, self.tuple_patch_size)]
        x = self.proj(F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0])))
        return self.norm(x.permute(0, 2, 3, 4, 1))  # B T h w C


class WholePatchMerging(PatchMerging):
    """torchvision's patch merging (pad H and W to even, concatenate the 2×2 neighbours in the order
    (0,0), (1,0), (0,1), (1,1), norm, reduce), with the neighbours taken by a reshape instead of strided
    slices: same values, and sizes that stay small expressions under symbolic shapes."""

    def forward(self, x: Tensor) -> Tensor:
        *lead, h, w, c = x.shape
        hh, wh = (h + 1) // 2, (w + 1) // 2
        x = F.pad(x, (0, 0, 0, 2 * wh - w, 0, 2 * hh - h)).reshape(*lead, hh, 2, wh, 2, c)
        x = torch.cat([x[..., :, 0, :, 0, :], x[..., :, 1, :, 0, :], x[..., :, 0, :, 1, :], x[..., :, 1, :, 1, :]], -1)
        return self.reduction(self.norm(x))


def _sdpa_block(*args, attn_layer=None, **kwargs) -> SwinTransformerBlock:
    # SwinTransformer3d passes attn_layer=ShiftedWindowAttention3d explicitly; use ours instead.
    return SwinTransformerBlock(*args, attn_layer=SDPAWindowAttention3d, **kwargs)


class VideoSwinBackbone(nn.Module):
    """Video Swin on torchvision's implementation. Input [B, T, 3, H, W]."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        body = SwinTransformer3d(
            patch_size=list(cfg.patch_size),
            embed_dim=cfg.embed_dim,
            depths=list(cfg.depths),
            num_heads=list(cfg.num_heads),
            window_size=list(cfg.window_size),
            stochastic_depth_prob=cfg.drop_path,
            norm_layer=partial(nn.LayerNorm, eps=1e-5),
            downsample_layer=WholePatchMerging,
            block=_sdpa_block,
            patch_embed=WholePatchEmbed3d,
        )
        # Only the patch embedding and the stages are used; drop the classifier parts.
        self.patch_embed = body.patch_embed
        self.features = body.features  # [stage0, merge0, stage1, merge1, stage2, merge2, stage3]
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in cfg.out_dims)
        self.out_dims = cfg.out_dims
        self.strides = (8, 16, 32, 32)
        self.grad_checkpointing = False
        # Below this height/width the deepest map (1/32) is no larger than a window, and torchvision
        # shrinks the window to the map: a different computation. From it on, one graph serves every
        # size (what a dynamic-size ONNX export needs).
        self.min_uniform_size = 32 * max(cfg.window_size[1:]) + 1

    def forward(self, frames: Tensor) -> list[Tensor]:
        x = self.patch_embed(frames.transpose(1, 2))  # [B, 3, T, H, W] -> [B, T, H/4, W/4, C]
        outs = []
        for i, layer in enumerate(self.features):
            x = run_blocks(layer, x, self.grad_checkpointing)
            if i % 2 == 1 or i == len(self.features) - 1:  # after each merge, and the last stage
                outs.append(x)
        return [norm(o).permute(0, 1, 4, 2, 3) for norm, o in zip(self.norms, outs)]  # [B, T, C, h, w]


class ResNetBackbone(nn.Module):
    """ResNet-101 (v1.5) with frozen batch norm, applied per frame. Input [B, T, 3, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        net = resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
        self.body = IntermediateLayerGetter(net, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)})
        # The original never trains the stem and layer1.
        for name, p in self.body.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.out_dims = (256, 512, 1024, 2048)
        self.strides = (4, 8, 16, 32)
        self.grad_checkpointing = False

    def forward(self, frames: Tensor) -> list[Tensor]:
        b = frames.shape[0]
        x = frames.flatten(0, 1)  # per frame: [B*T, 3, H, W]
        feats = []
        for name, layer in self.body.items():  # conv1 … layer4, as IntermediateLayerGetter runs them
            x = run_blocks(layer, x, self.grad_checkpointing and name.startswith("layer"))
            if name in self.body.return_layers:
                feats.append(x)
        return [f.unflatten(0, (b, -1)) for f in feats]


class PVTBackbone(nn.Module):
    """timm PVTv2 without head, applied per frame; the four stage outputs at strides 4, 8, 16, 32.

    timm's ``pvt_v2_b5`` has the original MED-VT++'s architecture, parameter count and LayerNorm eps
    (spec §B.2-1); only the key names differ (:func:`models.avs_convert.convert_original_avs_state_dict`;
    ImageNet weights: :func:`models.avs_convert.load_pvt_pretrained`). Built with ``pretrained=False``:
    weights come only from local files.
    """

    def __init__(self, name: str, drop_path: float) -> None:
        super().__init__()
        import timm  # only MED-VT++ needs it

        self.body = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path)
        self.body.head = nn.Identity()
        self.out_dims = tuple(s.norm.normalized_shape[0] for s in self.body.stages)
        self.strides = (4, 8, 16, 32)
        self.grad_checkpointing = False

    def forward(self, frames: Tensor) -> list[Tensor]:
        b = frames.shape[0]
        x = self.body.patch_embed(frames.flatten(0, 1))  # NHWC, what timm's first stage (no downsample) takes
        outs = []
        for stage in self.body.stages:  # each stage returns NCHW
            x = run_blocks(stage, x, self.grad_checkpointing)
            outs.append(x)
        return [o.unflatten(0, (b, -1)) for o in outs]


def run_blocks(layer: nn.Module, x: Tensor, grad_checkpointing: bool) -> Tensor:
    """Run ``layer`` (a block, or an ``nn.Sequential`` of blocks). With ``grad_checkpointing`` each
    block is its own checkpoint: backward then rebuilds one block's activations at a time, not a
    whole stage's (Swin-B's third stage is 18 blocks, ~4 GB of activations at 6×360×640)."""
    if not (grad_checkpointing and torch.is_grad_enabled()):
        return layer(x)
    for block in (layer if isinstance(layer, nn.Sequential) else (layer,)):
        x = checkpoint(block, x, use_reentrant=False)  # RNG state kept: stochastic depth recomputes alike
    return x


def build_backbone(cfg: MedVTConfig) -> nn.Module:
    if cfg.backbone == "swin":
        return VideoSwinBackbone(cfg.swin)
    if cfg.backbone == "resnet101":
        return ResNetBackbone()
    raise ValueError(f"unknown backbone {cfg.backbone!r}")


def convert_video_swin_kinetics(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map the official Video Swin checkpoint (mmaction layout) onto :class:`VideoSwinBackbone`.

    Follows what the original training did (spec avos §4.1): keep ``backbone.*``, take the first
    temporal slice of the 2x4x4 patch-embedding kernel, and initialise the four output norms
    from the checkpoint's final norm (norms 0/1 take its first 256/512 entries).
    """
    sd = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    missing = [f"backbone.{k}" for k in ("patch_embed.proj.weight", "norm.weight", "norm.bias") if k not in sd]
    if missing:
        what = "'backbone.*' entries" if not sd else f"entries {', '.join(missing)}"
        raise CheckpointMismatchError(f"no {what}: not a Video Swin (mmaction) checkpoint (expected: "
                                      "swin_base_patch244_window877_kinetics400_22k.pth)")
    w = sd["patch_embed.proj.weight"]
    if w.dim() == 5 and w.shape[2] > 1:
        sd["patch_embed.proj.weight"] = w[:, :, :1].contiguous()
    final_w, final_b = sd.pop("norm.weight"), sd.pop("norm.bias")
    out = {}
    for k, v in sd.items():
        out[_swin_name(k)] = v
    for i, n in enumerate((256, 512, 1024, 1024)):
        n = min(n, final_w.numel())
        out[f"norms.{i}.weight"] = final_w[:n].clone()
        out[f"norms.{i}.bias"] = final_b[:n].clone()
    return out


def _swin_name(name: str) -> str:
    """Video Swin parameter name (inside the backbone) → torchvision SwinTransformer3d name."""
    parts = name.split(".")
    if parts[0] == "layers":
        stage = int(parts[1])
        if parts[2] == "blocks":
            rest = ".".join(parts[4:]).replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
            return f"features.{2 * stage}.{parts[3]}.{rest}"
        if parts[2] == "downsample":
            return f"features.{2 * stage + 1}.{'.'.join(parts[3:])}"
    if parts[0] == "norm_layers":
        return "norms." + ".".join(parts[1:])
    return name


def load_swin_pretrained(backbone: VideoSwinBackbone, path: str) -> list[str]:
    """Load a local Video Swin Kinetics checkpoint into ``backbone``; returns keys left unset."""
    sd = checkpoint_state_dict(read_checkpoint(path), str(path), entry="state_dict")  # names, dense tensors
    try:
        sd = convert_video_swin_kinetics(sd)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path}: {e}") from None
    check_finite(sd, str(path))
    sd = {k: v for k, v in sd.items() if "relative_position_index" not in k}
    own = backbone.state_dict()
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointMismatchError(f"{path} is not a Video Swin-B checkpoint: unexpected keys {unexpected[:10]}")
    # load_state_dict(strict=False) skips missing keys but not mis-shaped ones (a file of another width)
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
              if v.shape != own[k].shape]
    if shapes:
        raise CheckpointMismatchError(f"{path} is a Video Swin checkpoint of another size than this backbone "
                                      f"(embed_dim {backbone.out_dims[0] // 2}): {len(shapes)} shape mismatches, e.g. "
                                      f"{'; '.join(shapes[:3])}")
    result = backbone.load_state_dict(sd, strict=False)
    return [k for k in result.missing_keys if "relative_position_index" not in k]
