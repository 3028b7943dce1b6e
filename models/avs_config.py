"""MED-VT++ configuration: one frozen dataclass and the named presets built from it.

S4 and MS3 build the same network (:class:`models.avs.MEDVTPlusPlus`); their presets differ only
in their name. ``avs_tiny`` is a small, fast model for tests and the demo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from utils.cli import UserError


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
        if "audio_dim" not in name_or_cfg:  # saved by a MED-VT (AVOS, VSS, A2D) run
            raise UserError("the checkpoint holds a MED-VT (video-only) model, not a MED-VT++ one: use the AVOS, "
                            "VSS or A2D scripts")
        d = dict(name_or_cfg)
        d["enc_layers"] = tuple(d.get("enc_layers", (3, 1)))
        d["tpavi_stages"] = tuple(d.get("tpavi_stages", ()))
        cfg = AVSConfig(**d)
    elif name_or_cfg in AVS_CONFIGS:
        cfg = AVS_CONFIGS[name_or_cfg]
    else:
        raise KeyError(f"unknown AVS config {name_or_cfg!r}; known: {sorted(AVS_CONFIGS)}")
    return replace(cfg, **overrides) if overrides else cfg
