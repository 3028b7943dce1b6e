"""MED-VT++ configuration: one frozen dataclass and the named presets built from it.

S4 and MS3 build the same network (:class:`models.avs.MEDVTPlusPlus`); their presets differ only
in their name. ``avs_tiny`` is a small, fast model for tests and the demo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from utils.cli import UserError

from .config import (MAX_HEADS, MAX_LAYERS, MAX_QUERIES, MAX_WIDTH, FieldCheck, check_d_model, config_error, flag,
                     one_of, read_fields, real, unknown_fields, whole, whole_tuple)


@dataclass(frozen=True)
class AVSConfig:
    """Hyper-parameters of MED-VT++ (defaults = the released S4/MS3 model, 149,466,323 parameters).

    ``head_dim`` is the width of the head's second conv (256 in the original). ``audio_ctx_layers``
    of the ``decoder_layers`` query-decoder layers (the first ones) also attend to the audio
    token. ``audio_pos_seed`` seeds the fixed audio positional embeddings
    (:class:`models.avs_fusion.AudioVisualFusion`). ``mm_context`` picks the audio-visual fusion:
    ``"bidir"`` (the released model) or ``"tpavi"`` (with ``tpavi_stages``, ``tpavi_va``, ``tpavi_vv``).
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
    # Object queries, shared by every frame: 384 of them, each giving one affinity map that the head
    # reads as a channel. (MED-VT's ``num_queries`` is different: one query per frame, reused cyclically.)
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


def _name(name, v):
    if type(v) is not str or not 0 < len(v) <= 200:
        raise config_error(name, v, "a name (text)")
    return v


def _stages(name, v):
    # scales 0 (1/4) … 3 (1/32), each at most once (one TPAVI block per scale)
    if (not isinstance(v, (list, tuple)) or any(type(x) is not int or not 0 <= x <= 3 for x in v)
            or len(set(v)) < len(v)):
        raise config_error(name, v, "distinct scales from 0 to 3")
    return tuple(v)


# The checks of a config read from a file (models.config explains the bounds).
_CHECKS: dict[str, FieldCheck] = {
    "name": _name, "backbone": one_of(*(f"pvt_v2_b{i}" for i in range(6))), "drop_path": real(0, 1),
    "d_model": whole(1, MAX_WIDTH), "audio_dim": whole(1, MAX_WIDTH), "max_frames": whole(1, 4096),
    "enc_layers": whole_tuple(2, 1, MAX_LAYERS), "enc_nhead": whole(1, MAX_HEADS), "enc_dim_ff": whole(1, MAX_WIDTH),
    "dropout": real(0, 1), "num_queries": whole(1, MAX_QUERIES), "dec_nhead": whole(1, MAX_HEADS),
    "dec_dim_ff": whole(1, MAX_WIDTH), "qgen_layers": whole(0, MAX_LAYERS), "decoder_layers": whole(1, MAX_LAYERS),
    "audio_ctx_layers": whole(0, MAX_LAYERS), "decoder_scales": whole(1, 4), "audio_proj_hidden": whole(1, MAX_WIDTH),
    "head_dim": whole(1, MAX_WIDTH), "fusion_heads": whole(1, MAX_HEADS), "audio_pos_seed": whole(0, 2**63 - 1),
    "mm_context": one_of("bidir", "tpavi"), "tpavi_stages": _stages, "tpavi_va": flag, "tpavi_vv": flag,
}
assert set(_CHECKS) == {f.name for f in fields(AVSConfig)}, "an AVSConfig field without its check"


def avs_config_from_dict(d: dict) -> AVSConfig:
    """A config saved with ``to_dict()`` (lists for tuples allowed), every field checked: a damaged file
    is refused in one line naming the field (the caller names the file)."""
    if "audio_dim" not in d:  # saved by a MED-VT (AVOS, VSS, A2D) run
        raise UserError("the checkpoint holds a MED-VT (video-only) model, not a MED-VT++ one: use the AVOS, VSS "
                        "or A2D scripts")
    unknown = unknown_fields(d, AVSConfig)
    if unknown:
        raise UserError(f"the checkpoint's model config is not a MED-VT++ config (unknown fields {unknown}): a file "
                        "of another project?")
    cfg = AVSConfig(**read_fields(d, _CHECKS))
    check_d_model(cfg.d_model)
    for name in ("enc_nhead", "dec_nhead", "fusion_heads"):
        if cfg.d_model % getattr(cfg, name):
            raise config_error(name, getattr(cfg, name), f"a divisor of d_model {cfg.d_model} (the heads split it)")
    if cfg.mm_context == "tpavi" and cfg.tpavi_stages and not (cfg.tpavi_va or cfg.tpavi_vv):
        raise UserError("the checkpoint's model config is damaged: tpavi_stages without tpavi_va or tpavi_vv")
    return cfg


AVS_CONFIGS: dict[str, AVSConfig] = {
    "medvtpp_s4": AVSConfig(name="medvtpp_s4"),
    "medvtpp_ms3": AVSConfig(name="medvtpp_ms3"),
    # Small and fast, for tests and the demo: pvt_v2_b0 and narrow widths.
    "avs_tiny": AVSConfig(name="avs_tiny", backbone="pvt_v2_b0", d_model=48, enc_layers=(1, 1), enc_nhead=4,
                          enc_dim_ff=64, num_queries=16, dec_nhead=4, dec_dim_ff=64, qgen_layers=1,
                          decoder_layers=3, audio_ctx_layers=1, audio_proj_hidden=64, head_dim=16),
}


def get_avs_config(name_or_cfg: str | AVSConfig | dict, **overrides) -> AVSConfig:
    """A preset name, a config, or a config's ``to_dict()`` (lists for tuples allowed) → config;
    ``overrides`` replace fields."""
    if isinstance(name_or_cfg, AVSConfig):
        cfg = name_or_cfg
    elif isinstance(name_or_cfg, dict):
        cfg = avs_config_from_dict(name_or_cfg)
    elif name_or_cfg in AVS_CONFIGS:
        cfg = AVS_CONFIGS[name_or_cfg]
    else:
        raise KeyError(f"unknown AVS config {name_or_cfg!r}; known: {sorted(AVS_CONFIGS)}")
    return replace(cfg, **overrides) if overrides else cfg
