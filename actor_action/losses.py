"""The A2D criterion of the original (``SetMultiLabelCriterion``, spec a2d §A.5).

Logits ``[B, 80, T, h, w]`` are upsampled bilinearly (align_corners False) to the label size and a
softmax focal loss (γ = 2, no α, background an ordinary class) is averaged over the pixels of the
annotated frame. The loader marks every other frame :data:`~datasets.a2d.IGNORE_INDEX`, so "mean
over non-ignored pixels" is exactly the original's mean over the annotated frame (batch 1; for
larger batches of equal-size clips it is the mean of the per-clip losses). The original's dice
term is computed nowhere, so there is none here. With label propagation the pre-propagation logits
add ``aux_weight`` × the same loss (train default 0.5); without it there is no aux term.

``epoch_scale`` multiplies the total: the original scales every batch's loss by exp(−epoch/10)
before backward (set by the training script each epoch; 1 keeps the loss as is).
"""
from __future__ import annotations

from torch import Tensor, nn

from datasets.a2d import IGNORE_INDEX
from models.losses import softmax_focal_loss, upsample_logits


class A2DCriterion(nn.Module):
    """``criterion(outputs, masks)`` → ``{"loss_mask", ["loss_aux"], "loss"}``.

    Shapes: ``outputs["pred_masks"]`` [B, K, T, h, w] logits; ``masks`` [B, T, H, W] long class ids,
    255 on frames/pixels that are not supervised.
    """

    def __init__(self, aux_weight: float = 0.5, gamma: float = 2.0, mask_coef: float = 1.0) -> None:
        super().__init__()
        self.aux_weight, self.gamma, self.mask_coef = aux_weight, gamma, mask_coef
        self.epoch_scale = 1.0

    def pixel_loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        if logits.dim() != 5:
            raise ValueError(f"expected multi-class logits [B, K, T, h, w], got {tuple(logits.shape)}")
        logits = upsample_logits(logits, tuple(masks.shape[-2:]))
        # [B, K, T, H, W] vs [B, T, H, W]: class axis 1, as softmax_focal_loss expects.
        return softmax_focal_loss(logits, masks, self.gamma, IGNORE_INDEX)

    def forward(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        losses = {"loss_mask": self.pixel_loss(outputs["pred_masks"], masks)}
        total = self.mask_coef * losses["loss_mask"]
        if self.aux_weight > 0 and outputs.get("aux_pred_masks") is not None \
                and outputs["aux_pred_masks"] is not outputs["pred_masks"]:
            losses["loss_aux"] = self.pixel_loss(outputs["aux_pred_masks"], masks)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total * self.epoch_scale
        return losses
