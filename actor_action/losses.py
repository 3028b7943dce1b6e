"""The A2D criterion of the original (``SetMultiLabelCriterion``, spec a2d §A.5).

Logits ``[B, 80, T, h, w]`` are upsampled bilinearly (align_corners False) to the label size and a
softmax focal loss (γ = 2, no α, background an ordinary class) is averaged over the pixels of the
annotated frame. The loader marks every other frame :data:`~datasets.transforms.IGNORE_INDEX`, so
"mean over non-ignored pixels" is exactly the original's mean over the annotated frame (batch 1; for
larger batches of equal-size clips it is the mean of the per-clip losses). The original's dice
term is computed nowhere, so there is none here. With label propagation the pre-propagation logits
add ``aux_weight`` × the same loss (train default 0.5); without it there is no aux term.

``epoch_scale`` multiplies the total: the original scales every batch's loss by exp(−epoch/10)
before backward (set by the training script each epoch; 1 keeps the loss as is).
"""
from __future__ import annotations

from datasets.transforms import IGNORE_INDEX
from models.losses import ClassCriterion


class A2DCriterion(ClassCriterion):
    """:class:`models.losses.ClassCriterion` with the original's softmax focal loss; ``mask_coef``
    weights the main term (the original's ``--mask_loss_coef``)."""

    def __init__(self, aux_weight: float = 0.5, gamma: float = 2.0, mask_coef: float = 1.0) -> None:
        super().__init__(IGNORE_INDEX, "focal", aux_weight, gamma, mask_coef)
