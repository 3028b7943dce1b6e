"""The VSS criterion: per-pixel classification of every frame, void pixels ignored.

The papers do not give the VSS loss (spec a2d-avs-vss §C.2). Default: cross-entropy with
``ignore_index`` 255 on all frames of the clip, the standard VSPW loss. ``"focal"`` is the
softmax focal loss the authors' A2D code uses (γ = 2, no α, spec §A.5), here with the void pixels
left out of the mean. As in the authors' criteria, logits are upsampled (bilinear, align_corners
False) to the label size before the loss, and with label propagation the pre-propagation logits
(``aux_pred_masks``) add ``aux_weight`` × the same loss (0.5 in the original recipes).
"""
from __future__ import annotations

from torch import Tensor

from datasets.transforms import IGNORE_INDEX
from models.losses import ClassCriterion
from utils.cli import UserError


class VSSCriterion(ClassCriterion):
    """:class:`models.losses.ClassCriterion` (``loss`` ``"ce"`` or ``"focal"``) that first refuses a
    label the model has no class for. Give ``aux_weight`` 0 for a model without label propagation."""

    def __init__(self, loss: str = "ce", aux_weight: float = 0.5, gamma: float = 2.0) -> None:
        super().__init__(IGNORE_INDEX, loss, aux_weight, gamma)

    def check_targets(self, masks: Tensor, num_classes: int) -> None:
        """Refuse a label outside 0..K-1 (other than the ignore index) with a message, not the
        ``IndexError: Target 8 is out of bounds`` of the loss (or a CUDA assert): the masks hold
        more classes than the model was built with (``--num_classes``). One min/max per step."""
        if masks.numel() == 0:
            return
        labels = masks.masked_fill(masks == self.ignore_index, 0)
        lo, hi = (int(v) for v in labels.aminmax())
        if lo < 0 or hi >= num_classes:
            bad = hi if hi >= num_classes else lo
            raise UserError(f"a training mask holds class id {bad} (raw VSPW label {bad + 1}), but the model has "
                            f"{num_classes} classes (ids 0..{num_classes - 1}, {self.ignore_index} = ignore); "
                            "check --num_classes (VSPW has 124) or the masks")

    def forward(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        self.check_targets(masks, outputs["pred_masks"].shape[1])
        return super().forward(outputs, masks)
