"""Load the authors' checkpoints (and ours) into :class:`models.medvt.MEDVT`.

:func:`convert_original_state_dict` is a pure renaming function, like timm's
``checkpoint_filter_fn``: it maps the original parameter names (rkyuca/medvt, both the Swin
``transformer.*`` layout and the ResNet/VisTR ``vistr.*`` layout) onto ours, and drops the
entries the original creates but never uses (``WV`` value projections and ``samp_w_pred`` of
the label propagator). :func:`load_checkpoint` reads a file safely (``weights_only=True``,
only ``argparse.Namespace`` allow-listed), converts it when needed and loads it strictly; a
mismatch raises :class:`CheckpointMismatchError` naming the missing, unexpected and
wrongly shaped keys.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from utils.cli import UserError, require_file

from .config import MedVTConfig, get_config

# Entries the original model registers but never uses in its forward (its WV value projections
# are used by the unidirectional propagation, lprop_mode 1, only).
_UNUSED = {
    1: re.compile(r"label_propagator\.label_encoder\.samp_w_pred\."),
    2: re.compile(r"label_propagator\.(prop_layer\.(self|cross)_attn\.WV\.|label_encoder\.samp_w_pred\.)"),
}

_COMMON_RULES: list[tuple[str, str]] = [
    (r"^label_propagator\.prop_layer\.self_attn\.WK\.", "label_propagator.propagation.self_key."),
    (r"^label_propagator\.prop_layer\.cross_attn\.WK\.", "label_propagator.propagation.cross_key."),
    (r"^label_propagator\.prop_layer\.self_attn\.WV\.", "label_propagator.propagation.self_value."),
    (r"^label_propagator\.prop_layer\.cross_attn\.WV\.", "label_propagator.propagation.cross_value."),
    (r"^label_propagator\.label_encoder\.conv_block\.0\.", "label_propagator.label_encoder.stem."),
    (r"^label_propagator\.label_encoder\.label_pred_tm\.0\.", "label_propagator.label_encoder.proj."),
    (r"^label_propagator\.label_encoder\.res(\d)_tm\.downsample\.", r"label_propagator.label_encoder.res\1.shortcut."),
    (r"^label_propagator\.label_encoder\.res(\d)_tm\.", r"label_propagator.label_encoder.res\1."),
    (r"^insmask_head\.", "head."),
]

_SWIN_RULES: list[tuple[str, str]] = [
    (r"^backbone\.norm_layers\.", "backbone.norms."),
    (r"^transformer\.input_proj_modules\.", "input_proj."),
    (r"^transformer\.encoder\.layers\.(\d)\.(\d+)\.", r"encoder.stages.\1.\2."),
    (r"^transformer\.encoder\.cross_res_layers\.0\.", "encoder.cross_scale."),
    (r"^transformer\.fpn\.", "pixel_decoder."),
    (r"^transformer\.query_embed\.", "query_decoder.query_embed."),
    (r"^transformer\.decoder\.layers\.(\d+)\.multihead_attn\.", r"query_decoder.layers.\1.cross_attn."),
    (r"^transformer\.decoder\.", "query_decoder."),
    (r"^transformer\.bbox_attention\.", "object_attention."),
]

_RESNET_RULES: list[tuple[str, str]] = [
    (r"^vistr\.backbone\.0\.body\.", "backbone.body."),
    (r"^vistr\.input_proj\.", "input_proj.3."),
    (r"^vistr\.input_proj_2\.", "input_proj.2."),
    (r"^vistr\.query_embed\.", "query_decoder.query_embed."),
    (r"^vistr\.transformer\.encoder\.cross_res_layers\.0\.", "encoder.cross_scale."),
    (r"^vistr\.transformer\.mask_head\.adapter(\d)\.", lambda m: f"pixel_decoder.lateral.{int(m[1]) - 1}."),
    (r"^vistr\.transformer\.mask_head\.", "pixel_decoder."),
    (r"^vistr\.transformer\.decoder\.layers\.(\d+)\.multihead_attn\.", r"query_decoder.layers.\1.cross_attn."),
    (r"^vistr\.transformer\.decoder\.", "query_decoder."),
    (r"^bbox_attention\.", "object_attention."),
]


def _swin_block_name(m: re.Match) -> str:
    rest = m[3].replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
    return f"backbone.features.{2 * int(m[1])}.{m[2]}.{rest}"


_SWIN_BACKBONE_RULES = [
    (r"^backbone\.layers\.(\d)\.blocks\.(\d+)\.(.*)$", _swin_block_name),
    (r"^backbone\.layers\.(\d)\.downsample\.", lambda m: f"backbone.features.{2 * int(m[1]) + 1}."),
]


def _resnet_encoder_layer(n0: int):
    def rename(m: re.Match) -> str:
        i = int(m[1])
        return f"encoder.stages.0.{i}." if i < n0 else f"encoder.stages.1.{i - n0}."
    return [(r"^vistr\.transformer\.encoder\.layers\.(\d+)\.", rename)]


def strip_prefixes(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in state_dict.items():
        for p in ("module.", "_orig_mod."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def convert_original_state_dict(state_dict: dict[str, Tensor], config: str | MedVTConfig) -> dict[str, Tensor]:
    """Rename an original MED-VT state dict onto our module names.

    Every rule is anchored on an original-only prefix, so names already in our layout pass through
    unchanged and the function is idempotent.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    state_dict = strip_prefixes(state_dict)
    if cfg.backbone == "swin":
        rules = _SWIN_BACKBONE_RULES + _SWIN_RULES
    else:
        rules = _resnet_encoder_layer(cfg.enc_layers[0]) + _RESNET_RULES
    rules = rules + _COMMON_RULES
    unused = _UNUSED.get(cfg.lprop_mode, _UNUSED[2])
    out = {}
    for name, value in state_dict.items():
        if unused.match(name):
            continue
        for pattern, repl in rules:  # the first matching rule gives the whole new name
            new, n = re.subn(pattern, repl, name)
            if n:
                name = new
                break
        out[name] = value
    return out


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint's keys or shapes do not fit the model; the message lists them."""


def _describe(keys: list[str], limit: int = 20) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_finite(state_dict: dict[str, Tensor], source: str = "checkpoint", limit: int = 5) -> None:
    """Refuse NaN/inf weights: they give NaN masks at best and crash native kernels (the deformable
    convolution) at worst, far from the file that caused them."""
    bad = [k for k, v in state_dict.items()
           if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatchError(
            f"{source} holds non-finite (NaN or inf) weights in {len(bad)} tensor(s): {_describe(bad, limit)}; "
            "the run that saved it diverged, use an earlier checkpoint")


def check_fits(own: dict[str, Tensor], state_dict: dict[str, Tensor], source: str = "checkpoint",
               model_name: str = "model") -> None:
    """Raise an error naming the missing, unexpected and mis-shaped keys (and integer / floating-point
    mix-ups) when ``state_dict`` does not fit ``own``, a model's state dict: also one built on the meta
    device, so that a file is compared with the model its config makes before that is allocated."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    # Integer values loaded into a float weight (or back) are cast silently, and give garbage masks.
    kinds = sorted(f"{k}: checkpoint {state_dict[k].dtype} vs model {own[k].dtype}" for k in set(own) & set(state_dict)
                   if own[k].is_floating_point() != state_dict[k].is_floating_point())
    if missing or unexpected or shapes or kinds:
        lines = [f"{source} does not fit the model ({model_name}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {_describe(shapes)}")
        if kinds:
            lines.append(f"  integer / floating-point mismatches ({len(kinds)}): {_describe(kinds)}")
        raise CheckpointMismatchError("\n".join(lines))


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load strictly; on mismatch raise an error naming missing, unexpected and mis-shaped keys
    (:func:`check_fits`), and refuse non-finite weights (:func:`check_finite`)."""
    check_fits(model.state_dict(), state_dict, source, type(model).__name__)
    check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file with ``weights_only=True``; only ``argparse.Namespace`` is allow-listed."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (set it with --model_path)")
    if path.stat().st_size == 0:
        raise CheckpointMismatchError(f"{path} is empty (0 bytes), not a PyTorch checkpoint")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint: neither a zip archive nor a "
                                      "pickle (a text file, or a file of another format?)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # a plain pickle of a newer protocol makes torch warn before it refuses the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- a damaged file makes the reader raise almost anything
        # (UnpicklingError, RuntimeError, EOFError, KeyError for a text file, ...); all mean "this file".
        text = str(e)
        unsafe = re.findall(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if unsafe:
            raise CheckpointMismatchError(
                f"{path} holds objects other than tensors and argparse arguments ({', '.join(unsafe)}); they are "
                "not loaded for safety (unpickling them could run code from the file). If you trust where the file "
                "comes from, load it once yourself with full unpickling allowed and re-save only its state dict"
            ) from None
        # torch's own text advises turning the safe reader off: only its reason is kept
        boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
        reason = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip() and not p.strip().startswith(boilerplate)]
        first = reason[0].splitlines()[0] if reason else type(e).__name__
        raise CheckpointMismatchError(
            f"{path} is not a readable PyTorch checkpoint (truncated, a plain pickle, or another format; it is "
            f"not unpickled, which could run code from it): {first.strip()[:200]}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointMismatchError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def check_tensor_dict(sd: dict, source: str) -> None:
    """Refuse a state dict whose keys are not names or whose tensors hold no plain values: a sparse,
    quantised or nested tensor, or one on the meta device (no data), which the name conversion, the
    finiteness check and ``load_state_dict`` are not made for (they would fail deep inside, or copy
    nothing). Every tensor ``torch.save`` writes of a model is a dense (strided) one with its data."""
    names = [k for k in sd if not isinstance(k, str)]
    if names:
        raise CheckpointMismatchError(f"{source} is damaged: its state dict has keys that are not parameter names "
                                      f"(e.g. {names[0]!r} of type {type(names[0]).__name__})")
    for k, v in sd.items():
        kind = ("sparse" if v.layout != torch.strided else "on the meta device (it holds no values)" if v.is_meta
                else "quantised" if v.is_quantized else "nested" if v.is_nested else None)
        if kind:
            raise CheckpointMismatchError(f"{source} is damaged: its tensor {k} is {kind}, not the dense tensor of "
                                          "values a model's state dict holds")


# The pretrained files of the backbones, which a user may give where a MED-VT checkpoint goes (flags
# swapped): (the prefixes every name has, one that must be there, what the file is, where it goes).
PRETRAINED_FILES = (
    (("features.", "embeddings."), "embeddings.", "VGGish's audio weights", "--vggish_weights"),
    (("backbone.", "cls_head."), "cls_head.", "Video Swin's Kinetics weights",
     "a trainer's --swin_pretrained (A2D's: --swin_b_pretrained_path)"),
    (("patch_embed", "block", "norm", "head."), "patch_embed1.", "PVTv2's ImageNet weights",
     "--pvtv2_pretrained_path of avs/train_medvt.py"),
)


def pretrained_file(sd: object) -> str | None:
    """What a backbone's pretrained file given as a model checkpoint is, and where it goes; else None."""
    names = [str(k) for k in sd] if isinstance(sd, dict) else []
    for prefixes, mark, what, where in PRETRAINED_FILES:
        if names and all(k.startswith(prefixes) for k in names) and any(k.startswith(mark) for k in names):
            return f"{what}, not a MED-VT model: they go to {where}"
    return None


def checkpoint_state_dict(ckpt: dict, source: str = "the checkpoint", entry: str = "model") -> dict[str, Tensor]:
    """The model weights inside a checkpoint dict (its ``entry``, or the dict itself), names and dense
    tensors (:func:`check_tensor_dict`); ``source`` names the file in the error."""
    sd = ckpt.get(entry, ckpt)
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        entries = ", ".join(sorted(map(str, ckpt))[:6]) or "none"
        kind = pretrained_file(ckpt.get("state_dict")) if entry == "model" else None
        if kind is not None:  # Video Swin's file keeps its weights under "state_dict", as Lightning does
            raise CheckpointMismatchError(f"{source} holds {kind}")
        hint = (" (a PyTorch Lightning checkpoint? re-save its 'state_dict' under 'model')"
                if entry == "model" and "state_dict" in ckpt else "")
        raise CheckpointMismatchError(f"{source} has no '{entry}' state dict of tensors (its entries: {entries}){hint}")
    check_tensor_dict(sd, source)
    return sd


def infer_model_version(ckpt: dict) -> tuple[str, str]:
    """Which original forward runs a checkpoint: (variant, reason), the variant ``"cvpr23"`` or
    ``"2024"`` (:class:`models.config.MedVTConfig`; the authors' 2024 inference script runs what
    their 2024 code trained with the ``2024`` forward)."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, dict):
        # Flags only the 2024 (MED-VT++ era) scripts define.
        marks = sorted(k for k in ("use_flow", "query_decoder_scales", "mm_fuse_type", "qgen_dec_layers") if k in args)
        if marks:
            return "2024", f"its saved arguments include {', '.join(marks)} (2024 code)"
        return "cvpr23", "its saved arguments are those of the CVPR'23 code"
    return "cvpr23", "it records no training arguments (default)"


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load an original or a medvt checkpoint file into ``model`` strictly; returns the checkpoint dict."""
    ckpt = read_checkpoint(path)
    sd = convert_original_state_dict(checkpoint_state_dict(ckpt, str(path)), model.cfg)
    load_state_dict_strict(model, sd, source=str(path))
    return ckpt


def init_from_checkpoint(model: nn.Module, path: str | Path, ckpt: dict | None = None) -> tuple[list[str], list[str]]:
    """Start a new run from a MED-VT checkpoint file (the authors' or ours, of any task; ``ckpt``: the file,
    already read): copy every entry whose converted name and shape match; return (loaded, kept at their
    initial values)."""
    require_file(path, "--init_from")
    try:
        sd = checkpoint_state_dict(read_checkpoint(path) if ckpt is None else ckpt, str(path))
    except CheckpointMismatchError as e:
        if str(path) in str(e):
            raise
        raise CheckpointMismatchError(f"--init_from {path}: {e}") from None
    sd = convert_original_state_dict(sd, model.cfg)
    own = model.state_dict()
    loaded = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        names = sorted(sd)
        raise CheckpointMismatchError(
            f"--init_from {path}: none of its {len(sd)} entries fit this model ({type(model).__name__}; "
            f"{'e.g. ' + _describe(names, 3) if names else 'it has none'}); is it a checkpoint of another model?")
    check_finite(loaded, f"--init_from {path}")
    model.load_state_dict(loaded, strict=False)
    return sorted(loaded), sorted(k for k in own if k not in loaded)


def init_from_vistr_coco(model: nn.Module, path: str | Path) -> list[str]:
    """Initialise from VisTR's COCO checkpoint (``384_coco_r101.pth``) as the original training did.

    Swin models take only the transformer (encoder stage 0, decoder, decoder norm; decoder layers
    past the file's last are copied from it; FFN matrices sliced to our width); ResNet models take
    every entry whose converted name and shape match, backbone included (spec avos §4.1).
    Returns the names of the parameters that were initialised.
    """
    sd = strip_prefixes(checkpoint_state_dict(read_checkpoint(path), str(path)))
    cfg = model.cfg
    resnet = cfg.backbone == "resnet101"
    keep = ("vistr.",) if resnet else ("vistr.transformer.encoder.layers.", "vistr.transformer.decoder.")
    sd = {k: v for k, v in sd.items() if k.startswith(keep) and "mask_head" not in k}
    converted = convert_original_state_dict(sd, cfg.replace(backbone="resnet101"))
    dec = [int(m[1]) for k in converted if (m := re.match(r"query_decoder\.layers\.(\d+)\.", k))]
    if dec:
        last = max(dec)
        for k in [k for k in converted if k.startswith(f"query_decoder.layers.{last}.")]:
            for j in range(last + 1, cfg.dec_layers):
                converted[k.replace(f"layers.{last}.", f"layers.{j}.", 1)] = converted[k]
    own = model.state_dict()
    loaded = {}
    for k, v in converted.items():
        if k not in own:
            continue
        if v.shape != own[k].shape and v.dim() == own[k].dim():  # wider FFN in the file: slice
            v = v[tuple(slice(0, n) for n in own[k].shape)]
        if v.shape == own[k].shape:
            loaded[k] = v
    model.load_state_dict(loaded, strict=False)
    return sorted(loaded)
