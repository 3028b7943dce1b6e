"""The MED-VT configuration for video semantic segmentation on VSPW, and how scripts pick one.

The preset ``medvt_swinb_vss`` lives with the others in :data:`models.config.MODEL_CONFIGS`. The
papers report VSS with MED-VT but its configuration could not be retrieved (spec a2d-avs-vss §C.2)
and the authors' code has none, so it is the AVOS Swin-B model (``medvt_swinb_avos``) changed the
way the authors' only multi-class task (A2D, spec §A.2) changes it: the 3D-CNN head's last
convolution outputs one logit map per class (124) and classes compete through a softmax. Kept
from AVOS, so the Kinetics-400 Swin-B and VisTR COCO initialisations load as they are:

* one query per frame (``num_queries`` = clip length 6), not one per class: the queries locate
  "what matters in this frame", the per-class decision is the head's (as on A2D);
* many-to-many label propagation (``lprop_mode`` 2, ×8) on the 124-channel logits: VSPW also
  measures temporal consistency (mVC), which is what propagation is for; its label encoder's
  first convolution takes ``num_classes`` channels, as on A2D with lprop on;
* FFN width 2048 (AVOS), not A2D's 1024, so no VisTR weight needs slicing.
"""
from __future__ import annotations

from models.config import MODEL_CONFIGS, MedVTConfig, get_config
from utils.cli import UserError

DEFAULT_CONFIG = "medvt_swinb_vss"


def vss_config(name: str = DEFAULT_CONFIG, num_classes: int | None = None) -> MedVTConfig:
    """The named preset, with ``num_classes`` overriding the class count (tests: ``tiny`` with 5).

    A binary preset (``num_classes`` 1) without an override is an error: VSS needs ≥ 2 classes.
    """
    cfg = get_config(name)
    if num_classes is not None:
        cfg = cfg.replace(num_classes=num_classes)
    if cfg.num_classes < 2:
        raise UserError(f"--model {name} has num_classes={cfg.num_classes}; VSS needs a multi-class config "
                        f"(e.g. {DEFAULT_CONFIG}) or --num_classes K")
    return cfg


def config_names() -> list[str]:
    """Every preset name (for ``--model`` choices), the VSS one first."""
    return [DEFAULT_CONFIG, *(n for n in MODEL_CONFIGS if n != DEFAULT_CONFIG)]
