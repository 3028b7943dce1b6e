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

    def forward(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        losses = {"loss_mask": self.pixel_loss(outputs["pred_masks"], masks)}
        total = losses["loss_mask"]
        if self.aux_weight > 0 and "aux_pred_masks" in outputs:
            losses["loss_aux"] = self.pixel_loss(outputs["aux_pred_masks"], masks)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses
