"""The authors' MED-VT++ checkpoints and the PVTv2 ImageNet weights, in our names.

:func:`convert_original_avs_state_dict` renames the original ``Pred_endecoder`` state dict (S4
or MS3 release, bare or DataParallel) onto :class:`models.avs.MEDVTPlusPlus`, one regex rule per
module; :func:`avs_state_dict` converts only when needed. :func:`load_avs_checkpoint` loads ours
or theirs strictly through the shared loader of :mod:`models.convert`; :func:`load_pvt_pretrained`
loads ImageNet PVTv2 weights (original or timm names) into the backbone for training.
"""
from __future__ import annotations

import re

from torch import Tensor

from .avs import MEDVTPlusPlus
from .convert import CheckpointMismatchError, checkpoint_state_dict, load_state_dict_strict, read_checkpoint


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
    ckpt = read_checkpoint(path)
    load_state_dict_strict(model, avs_state_dict(checkpoint_state_dict(ckpt, str(path))), source=str(path))
    return ckpt


def load_pvt_pretrained(model: MEDVTPlusPlus, path) -> int:
    """Load PVTv2 ImageNet weights (original ``pvt_v2_b5.pth`` names or timm names) into the
    backbone; the classification head is ignored. Returns the number of tensors loaded."""
    ckpt = read_checkpoint(path)
    sd = checkpoint_state_dict(ckpt, str(path), entry="model" if "model" in ckpt else "state_dict")
    own = model.backbone.body.state_dict()
    out = {}
    for k, v in sd.items():
        name = convert_original_avs_name("encoder_backbone." + k).removeprefix("backbone.body.")
        if name.startswith("encoder_backbone."):
            name = k  # already timm names
        if name in own and own[name].shape == v.shape:
            out[name] = v
    if not out:
        raise CheckpointMismatchError(f"{path}: no PVTv2 weights of {model.cfg.backbone} found in this file "
                                      "(--pvtv2_pretrained_path expects pvt_v2_b5.pth)")
    own.update(out)
    model.backbone.body.load_state_dict(own)
    return len(out)
