"""Model configuration: one frozen dataclass and the named presets built from it.

Every architectural difference between the original MED-VT variants is a field here, so
there is one model definition (:class:`models.medvt.MEDVT`) and no copied files. The
presets reproduce the original code's graphs (``../shared/spec/avos.md``):

* ``medvt_swinb_avos``      — Video Swin-B, the CVPR'23 code (rkyuca/medvt 555a462): variant ``cvpr23``.
* ``medvt_swinb_avos_2024`` — the same weights layout run by the 2024 inference script: variant
  ``2024`` (see :class:`MedVTConfig` for what differs).
* ``medvt_swinb_avos_2024train`` — the 2024 training code's forward: variant ``2024train``
  (formerly ``medvt_swinb_avos_v2``, still accepted: :data:`PRESET_ALIASES`).
* ``medvt_r101_avos``       — ResNet-101 (VisTR layout), 555a462.
* ``medvt_r101_a2d``        — ResNet-101 for actor-action segmentation on A2D (HEAD code,
  spec a2d §A.2): 80-class head, FFN 1024, no label propagation.
* ``medvt_swinb_a2d``       — Swin-B for A2D (HEAD ``medvt_swin.py``, variant ``2024train``): 80-class head, FFN
  1024, no between-scale encoder layer, no label propagation, 3 query-decoder scales (the
  training script's default; its inference script defaults to 1, spec a2d §A.10 #1).
* ``tiny``                  — a small Swin backbone and narrow widths for tests and the demo.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Literal

from utils.cli import UserError


@dataclass(frozen=True)
class SwinConfig:
    """A torchvision ``SwinTransformer3d`` configuration (Video Swin naming in comments)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: tuple[int, int, int] = (8, 7, 7)
    patch_size: tuple[int, int, int] = (1, 4, 4)
    drop_path: float = 0.1

    @property
    def out_dims(self) -> tuple[int, ...]:
        # Outputs are taken after each stage's patch merging (the last stage has none):
        # channels 2C, 4C, 8C, 8C at strides 8, 16, 32, 32.
        c = self.embed_dim
        return (2 * c, 4 * c, 8 * c, 8 * c)


# The authors' three forwards (documented on MedVTConfig), and the names earlier versions of this
# project gave them (still read from saved configs and accepted wherever a variant is given).
VARIANTS: tuple[str, ...] = ("cvpr23", "2024train", "2024")
VARIANT_ALIASES: dict[str, str] = {"v1": "cvpr23", "v2": "2024train", "v3": "2024"}


# A config read from a file (a checkpoint's ``config``) is checked field by field before anything is
# built from it: a damaged or hostile file must be refused in one line naming the field, not build a
# 76.8 GB model (dim_feedforward 4e8) or fail deep inside a constructor. The bounds are far above every
# preset of both families (Swin-B: widths <= 2048, 18 blocks a stage, 32 heads; VSS: 124 classes;
# MED-VT++: 384 queries), so that no real model is refused.
MAX_WIDTH = 65536
MAX_LAYERS = 64
MAX_HEADS = 1024
MAX_CLASSES = 100_000
MAX_QUERIES = 65536

FieldCheck = Callable[[str, object], object]  # (field name, value read) -> the value to build with


def config_error(name: str, value: object, expected: str) -> UserError:
    """The one-line refusal of a config field read from a file (the caller prefixes the file)."""
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UserError(f"the checkpoint's model config is damaged: {name} is {shown}, expected {expected}")


def whole(lo: int, hi: int) -> FieldCheck:
    """An int (not a bool, not a float) in [lo, hi]."""
    def check(name, v):
        if type(v) is not int or not lo <= v <= hi:
            raise config_error(name, v, f"an integer from {lo} to {hi}")
        return v
    return check


def real(lo: float, hi: float, lo_open: bool = False) -> FieldCheck:
    """A finite int or float in [lo, hi] (``lo_open``: above lo); kept as read, so that a config equals
    the one that was saved."""
    def check(name, v):
        if not (type(v) in (int, float) and math.isfinite(v) and v <= hi and (v > lo if lo_open else v >= lo)):
            raise config_error(name, v, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")
        return v
    return check


def whole_tuple(length: int, lo: int, hi: int) -> FieldCheck:
    """A list or tuple of ``length`` ints in [lo, hi], as a tuple (to_dict() and JSON give lists)."""
    def check(name, v):
        if (not isinstance(v, (list, tuple)) or len(v) != length
                or any(type(x) is not int or not lo <= x <= hi for x in v)):
            raise config_error(name, v, f"{length} integers from {lo} to {hi}")
        return tuple(v)
    return check


def one_of(*options) -> FieldCheck:
    def check(name, v):
        # type as well as value: True == 1 would otherwise pass for lprop_mode 1
        if not any(type(v) is type(o) and v == o for o in options):
            raise config_error(name, v, f"one of {', '.join(map(repr, options))}")
        return v
    return check


def flag(name, v):
    if type(v) is not bool:
        raise config_error(name, v, "True or False")
    return v


def read_fields(d: dict, checks: dict[str, FieldCheck], prefix: str = "") -> dict:
    """``d``'s fields, each passed through its check (every field of the config has one)."""
    return {k: checks[k](prefix + k, v) for k, v in d.items()}


def unknown_fields(d: dict, cls) -> list[str]:
    """``d``'s keys that are not fields of the dataclass ``cls`` (as text: a file may hold any key)."""
    return sorted(str(k) for k in set(d) - {f.name for f in fields(cls)})


def require_divisible(name: str, value: int, by: int, why: str) -> None:
    if value % by:
        raise config_error(name, value, f"a multiple of {by} ({why})")


def check_d_model(d_model: int) -> None:
    """The model width both families need: 3 sine position axes of sin/cos pairs (a multiple of 6) and
    the pixel decoder's 8 norm groups."""
    require_divisible("d_model", d_model, 24, "3 position axes of sin/cos pairs, and 8 norm groups")


@dataclass(frozen=True)
class MedVTConfig:
    """All hyper-parameters of a MED-VT model.

    ``variant`` selects which of the authors' three forwards runs (Swin family; the same weights
    fit all three). These names are the ones every user-facing place uses: the ``--model_version``
    flag of the AVOS scripts and the suffix of the Swin-B AVOS presets.

    * ``"cvpr23"`` — the CVPR'23 code (rkyuca/medvt 555a462); the query decoder reads the three
      coarsest pixel-decoder maps, starts from 0 and normalises object attention jointly.
    * ``"2024train"`` — the 2024 training code: as ``cvpr23``, but decoder scale 0 reads the raw
      encoder output instead of the first pixel-decoder map.
    * ``"2024"`` — the 2024 inference code: the query decoder over the three finest pixel-decoder
      maps, its target starting from 1e-6, object attention normalised over heads per pixel.

    Earlier versions of this project wrote ``"v1"``, ``"v2"`` and ``"v3"`` for these three (in the
    configs saved in their checkpoints; the spec, avos §0, still says V1/V2/V3); they are accepted
    and read as the names above (:data:`VARIANT_ALIASES`).

    ``encoder_style`` selects the between-scale layer and stage-1 layer of the two
    original families: ``"swin"`` (fused key, 1 head, no norms) or ``"resnet"`` (VisTR-style).
    ``encoder_cross_layer=False`` drops the Swin between-scale layer (the original's
    ``--encoder_cross_layer False``, A2D): encoder stage 1 then runs on its own map only.
    ``cross_scale_ff`` is the between-scale layer's FFN width; 0 keeps the family rule (Swin:
    d_model, ResNet: dim_feedforward // 2). The original ResNet code hard-codes 1024, which equals
    that rule for AVOS (2048 // 2) but not for A2D (FFN 1024 → stage-1 512, between-scale 1024).
    ``query_decoder_scales`` is how many memories the query decoder cycles over (the original's
    ``--query_decoder_scales``; 1 = only the deepest).
    ``num_queries`` is the clip length's worth of learned per-frame queries of the query decoder
    (the original's ``--num_queries``, equal to its ``--num_frames``: 6): frame ``t``'s decoded
    query, hence its object attention map, comes from query ``t mod num_queries``; all of them
    attend to the whole clip. (MED-VT++, :mod:`models.avs_config`, uses the name for its 384 object
    queries, which are not tied to frames.)
    """

    backbone: Literal["swin", "resnet101"] = "swin"
    swin: SwinConfig = field(default_factory=SwinConfig)
    d_model: int = 384
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    enc_layers: tuple[int, int] = (6, 1)
    encoder_cross_layer: bool = True
    cross_scale_ff: int = 0
    encoder_style: Literal["swin", "resnet"] = "swin"
    dec_layers: int = 9
    num_queries: int = 6
    variant: Literal["cvpr23", "2024train", "2024"] = "cvpr23"
    query_decoder_scales: int = 3
    head_dims: tuple[int, int, int] = (384, 256, 128)
    num_classes: int = 1
    lprop_mode: Literal[0, 1, 2] = 2
    lprop_scale: float = 8.0
    lprop_key_dim: int = 128
    label_enc_dims: tuple[int, int, int, int] = (16, 32, 64, 16)

    def __post_init__(self) -> None:
        variant = VARIANT_ALIASES.get(self.variant, self.variant)
        if variant not in VARIANTS:
            raise ValueError(f"unknown MED-VT variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        object.__setattr__(self, "variant", variant)  # an old spelling becomes its name (frozen class)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> MedVTConfig:
        if "audio_dim" in d:
            raise UserError("the checkpoint holds a MED-VT++ (audio-visual) model, not a MED-VT one: "
                            "use the AVSBench scripts in avs/")
        unknown = unknown_fields(d, MedVTConfig)
        if unknown or not isinstance(d.get("swin"), dict):
            raise UserError(f"the checkpoint's model config is not a MED-VT config (unknown fields {unknown} or no "
                            "'swin' section): a file of another project?")
        unknown = unknown_fields(d["swin"], SwinConfig)
        if unknown:
            raise UserError(f"the checkpoint's model config is damaged: unknown swin fields {unknown}")
        # Every field is checked (type and range); fields a config of an earlier version lacks keep their defaults.
        swin = SwinConfig(**read_fields(d["swin"], _SWIN_CHECKS, "swin."))
        cfg = MedVTConfig(swin=swin, **read_fields({k: v for k, v in d.items() if k != "swin"}, _CHECKS))
        cfg._check_consistent()
        return cfg

    def _check_consistent(self) -> None:
        """The constraints between fields that the modules rely on (checked for a config read from a
        file; each would otherwise fail deep in a constructor or in the forward)."""
        d = self.d_model
        check_d_model(d)
        if d % self.nheads:
            raise config_error("nheads", self.nheads, f"a divisor of d_model {d} (the attention heads split it)")
        for i, heads in enumerate(self.swin.num_heads):  # stage i of Video Swin is embed_dim·2^i wide
            if (self.swin.embed_dim << i) % heads:
                raise config_error(f"swin.num_heads[{i}]", heads, f"a divisor of its stage's width "
                                                                  f"{self.swin.embed_dim << i} (swin.embed_dim·2^{i})")
        for i, width in enumerate(self.head_dims):
            require_divisible(f"head_dims[{i}]", width, 4, "the head's norms have 4 groups")
        if self.lprop_mode:
            require_divisible("label_enc_dims[3]", self.label_enc_dims[3], 4, "the label decoder's norm has 4 groups")
        if not self.encoder_cross_layer and self.encoder_style != "swin":
            raise UserError("the checkpoint's model config is damaged: encoder_cross_layer False exists only with "
                            "encoder_style 'swin'")

    def replace(self, **changes) -> MedVTConfig:
        return replace(self, **changes)


_SWIN_CHECKS: dict[str, FieldCheck] = {
    "embed_dim": whole(1, MAX_WIDTH), "depths": whole_tuple(4, 1, MAX_LAYERS),
    "num_heads": whole_tuple(4, 1, MAX_HEADS), "window_size": whole_tuple(3, 1, 1024),
    "patch_size": whole_tuple(3, 1, 64), "drop_path": real(0, 1),
}
_CHECKS: dict[str, FieldCheck] = {
    "backbone": one_of("swin", "resnet101"), "d_model": whole(1, MAX_WIDTH), "nheads": whole(1, MAX_HEADS),
    "dim_feedforward": whole(1, MAX_WIDTH), "dropout": real(0, 1), "enc_layers": whole_tuple(2, 1, MAX_LAYERS),
    "encoder_cross_layer": flag, "cross_scale_ff": whole(0, MAX_WIDTH), "encoder_style": one_of("swin", "resnet"),
    "dec_layers": whole(1, MAX_LAYERS), "num_queries": whole(1, MAX_QUERIES),
    "variant": one_of(*VARIANTS, *VARIANT_ALIASES), "query_decoder_scales": whole(1, 3),
    "head_dims": whole_tuple(3, 1, MAX_WIDTH), "num_classes": whole(1, MAX_CLASSES), "lprop_mode": one_of(0, 1, 2),
    "lprop_scale": real(0, 64, lo_open=True), "lprop_key_dim": whole(1, MAX_WIDTH),
    "label_enc_dims": whole_tuple(4, 1, MAX_WIDTH),
}
assert set(_SWIN_CHECKS) == {f.name for f in fields(SwinConfig)}, "a SwinConfig field without its check"
assert set(_CHECKS) == {f.name for f in fields(MedVTConfig)} - {"swin"}, "a MedVTConfig field without its check"

_SWINB = MedVTConfig()

MODEL_CONFIGS: dict[str, MedVTConfig] = {
    "medvt_swinb_avos": _SWINB,
    "medvt_swinb_avos_2024train": replace(_SWINB, variant="2024train"),
    "medvt_swinb_avos_2024": replace(_SWINB, variant="2024"),
    "medvt_r101_avos": replace(_SWINB, backbone="resnet101", encoder_style="resnet"),
    "medvt_swinb_vss": replace(_SWINB, num_classes=124),  # VSPW semantic segmentation (vss/config.py)
    # Actor-action segmentation on A2D (actor_action/, spec a2d §A.2): 80 classes indexed by the raw
    # A2D id 10·actor + action; the HEAD code's widths and switches.
    "medvt_r101_a2d": replace(_SWINB, backbone="resnet101", encoder_style="resnet", dim_feedforward=1024,
                              cross_scale_ff=1024, num_classes=80, lprop_mode=0, lprop_scale=16.0),
    "medvt_swinb_a2d": replace(_SWINB, variant="2024train", dim_feedforward=1024, encoder_cross_layer=False,
                               num_classes=80, lprop_mode=0, lprop_scale=16.0),
    "tiny": MedVTConfig(
        swin=SwinConfig(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=(2, 7, 7),
                        drop_path=0.0),
        d_model=48,
        nheads=4,
        dim_feedforward=96,
        enc_layers=(1, 1),
        dec_layers=3,
        head_dims=(32, 32, 16),
        lprop_key_dim=32,
    ),
}


# Former preset names, still built: old name → its name now.
PRESET_ALIASES: dict[str, str] = {"medvt_swinb_avos_v2": "medvt_swinb_avos_2024train"}


def preset_name(name: str) -> str:
    """A preset's name now for a former one (else ``name`` itself); usable as an argparse ``type``."""
    return PRESET_ALIASES.get(name, name)


def get_config(name: str) -> MedVTConfig:
    """Return the named preset (a former name too), with an error that lists the known names."""
    try:
        return MODEL_CONFIGS[preset_name(name)]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(MODEL_CONFIGS)}") from None
