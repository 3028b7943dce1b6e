"""The VSS criterion: per-pixel classification of every frame, void pixels ignored.

The papers do not give the VSS loss (spec a2d-avs-vss §C.2). Default: cross-entropy with
``ignore_index`` 255 on all frames of the clip, the standard VSPW loss. ``"focal"`` is the
softmax focal loss the authors' A2D code uses (γ = 2, no α, spec §A.5), here with the void pixels
left out of the mean. As in the authors' criteria, logits are upsampled (bilinear, align_corners
False) to the label size before the loss, and with label propagation the pre-propagation logits
(``aux_pred_masks``) add ``aux_weight`` × the same loss (0.5 in the original recipes).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from models.losses import IGNORE_INDEX, softmax_focal_loss, upsample_logits
from utils.cli import UserError


class VSSCriterion(nn.Module):
    """``criterion(outputs, masks)`` → ``{"loss_mask", "loss_aux", "loss"}``.

    Args:
        loss: ``"ce"`` (cross-entropy) or ``"focal"`` (softmax focal).
        aux_weight: weight of the loss on ``aux_pred_masks``; 0 turns it off. Give 0 for a model
            without label propagation, whose ``aux_pred_masks`` equal ``pred_masks``.
    Shapes: ``pred_masks`` [B, K, T, h, w] logits; ``masks`` [B, T, H, W] long, 255 = ignore.
    """

    def __init__(self, loss: str = "ce", aux_weight: float = 0.5, gamma: float = 2.0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', not {loss!r}")
        self.loss, self.aux_weight, self.gamma, self.ignore_index = loss, aux_weight, gamma, ignore_index

    def pixel_loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        if logits.dim() != 5:
            raise ValueError(f"expected multi-class logits [B, K, T, h, w], got {tuple(logits.shape)}")
        logits = upsample_logits(logits, tuple(masks.shape[-2:]))
        if self.loss == "focal":
            return softmax_focal_loss(logits, masks, self.gamma, self.ignore_index)
        valid = masks != self.ignore_index
        total = F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index, reduction="sum")
        return total / valid.sum().clamp(min=1)

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
        losses = {"loss_mask": self.pixel_loss(outputs["pred_masks"], masks)}
        total = losses["loss_mask"]
        if self.aux_weight > 0 and "aux_pred_masks" in outputs:
            losses["loss_aux"] = self.pixel_loss(outputs["aux_pred_masks"], masks)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses
