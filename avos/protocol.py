"""The original AVOS test protocol per dataset (spec avos §6.1):

========  =========  ==================================  ============  ===========
dataset   val size   scales with ``--msc``               flip merge    foreground
========  =========  ==================================  ============  ===========
davis     473        0.75 0.8 0.9 1 1.1 1.2 1.3          mean          p > 0.5
ytbo      360        0.95 1 1.05 1.1 1.15                max           p ≥ 0.5
moca      473        CVPR'23: none; 2024: 0.9 … 1.1      max           p > 0.5
video     473        as davis                            mean          p > 0.5
========  =========  ==================================  ============  ===========

ResNet-101 on DAVIS uses 0.75 0.8 0.9 1 1.1 1.15 and, with ``--msc``, caps the longer input side
at 1.65·val_size instead of 1.8·val_size (the original's ``davis_msc_scales`` and
``davis_input_max_sc``). Logits are resized to the output size (DAVIS and YouTube-Objects: the
ground-truth size; MoCA: the resized input size; a video: its frame size) before the sigmoid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models import MedVTConfig

DATASETS = ("davis", "ytbo", "moca")


@dataclass(frozen=True)
class Protocol:
    """How one dataset is evaluated (spec avos §6.1)."""

    dataset: str
    val_size: int
    scales: tuple[float, ...]
    flip: bool
    flip_merge: str  # "mean" | "max"
    inclusive: bool  # foreground is p ≥ 0.5 (YouTube-Objects) instead of p > 0.5
    max_ratio: float = 1.8
    notes: tuple[str, ...] = field(default=())

    def binarize(self, prob: np.ndarray) -> np.ndarray:
        """[H, W] probability → bool foreground."""
        return prob >= 0.5 if self.inclusive else prob > 0.5

    def describe(self) -> str:
        return (f"{self.dataset}: val_size {self.val_size} (longer side ≤ {self.max_ratio}·size), "
                f"scales {list(self.scales)}, flip {'on (' + self.flip_merge + ')' if self.flip else 'off'}, "
                f"foreground p {'≥' if self.inclusive else '>'} 0.5")


DEFAULT_VAL_SIZE = {"davis": 473, "ytbo": 360, "moca": 473, "video": 473}
MSC_SCALES = {
    "davis": (0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
    "ytbo": (0.95, 1.0, 1.05, 1.1, 1.15),
    "moca": (0.9, 0.95, 1.0, 1.05, 1.1),  # HEAD only; 555a462 forces msc off on MoCA
    "video": (0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
}
RESNET_DAVIS_SCALES = (0.75, 0.8, 0.9, 1.0, 1.1, 1.15)
RESNET_DAVIS_MAX_RATIO = 1.65


def make_protocol(dataset: str, cfg: MedVTConfig, version: str, val_size: int | None = None,
                  msc: bool = False, flip: bool = False) -> Protocol:
    """The original's settings for ``dataset`` ("davis", "ytbo", "moca" or "video")."""
    size = DEFAULT_VAL_SIZE[dataset] if val_size is None else val_size
    notes = []
    scales: tuple[float, ...] = (1.0,)
    max_ratio = 1.8
    if msc:
        if dataset == "moca" and version == "cvpr23":
            notes.append("--msc ignored on MoCA: the CVPR'23 code forces single scale there "
                         "(the 2024 code uses 0.9…1.1)")
        elif dataset in ("davis", "video") and cfg.backbone == "resnet101":
            scales, max_ratio = RESNET_DAVIS_SCALES, RESNET_DAVIS_MAX_RATIO
        else:
            scales = MSC_SCALES[dataset]
    merge = "max" if dataset in ("ytbo", "moca") else "mean"
    return Protocol(dataset, size, scales, flip, merge, inclusive=dataset == "ytbo", max_ratio=max_ratio,
                    notes=tuple(notes))


def run_name(dataset: str, val_size: int, msc: bool, cfg: MedVTConfig) -> str:
    """The original's output folder name, without its unix-time suffix."""
    return f"infer_{dataset}{val_size}{'msc' if msc else 'ssc'}lpp_mode{cfg.lprop_mode}_sc{cfg.lprop_scale:.2f}"
