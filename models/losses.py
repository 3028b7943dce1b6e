"""Training losses of MED-VT for binary (AVOS) segmentation.

The original criterion (rkyuca/medvt ``avos/models/criterions.py``, a VisTR/DETR ``SetCriterion``
stripped to masks; spec avos §4.3) computes, per clip:

* a sigmoid focal loss (α = 0.25, γ = 2) **averaged over every pixel of the clip** (T·H·W),
* a dice loss ``1 − (2·Σ p·t + 1) / (Σ p + Σ t + 1)`` over the whole clip,

each summed over the clips of the batch. Predictions are logits at a fraction of the input size
and are resized bilinearly (``align_corners=False``) to the target size first. The same two terms
on ``aux_pred_masks`` (the 3D head's logits before label propagation) are added with weight
``aux_weight`` (0.5 in the original):

    loss = focal(main) + dice(main) + aux_weight · (focal(aux) + dice(aux))

The multi-class tasks (A2D, VSS) share :class:`ClassCriterion`: per-pixel classification of every
frame, the pixels labelled ``ignore_index`` left out.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """RetinaNet focal loss, mean over the pixels of each clip, summed over clips.

    Args:
        logits: [B, N] (any shape with the batch first; flattened per clip).
        targets: same shape, values in {0, 1}.
        alpha: weight of positives (negatives get 1 − alpha); a negative value disables it.
        gamma: focusing exponent on (1 − p_t).
    Returns:
        scalar tensor.
    """
    logits, targets = logits.flatten(1), targets.flatten(1).to(logits.dtype)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(1).sum()


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft dice loss with +1 smoothing over each whole clip, summed over clips.

    Args:
        logits: [B, N] (flattened per clip).
        targets: same shape, values in {0, 1}.
    """
    prob = logits.flatten(1).sigmoid()
    targets = targets.flatten(1).to(prob.dtype)
    num = 2 * (prob * targets).sum(1)
    den = prob.sum(1) + targets.sum(1)
    return (1 - (num + smooth) / (den + smooth)).sum()


def resize_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, T, h, w] logits → [B, T, *size], bilinear (``align_corners=False``) as the original."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, K, T, h, w] → [B, K, T, *size] (bilinear per frame)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    b, k, t = logits.shape[:3]
    x = F.interpolate(logits.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
    return x.view(b, k, t, *size)


def softmax_focal_loss(logits: Tensor, target: Tensor, gamma: float, ignore_index: int) -> Tensor:
    """Mean over non-ignored pixels of −(1 − p_t)^γ log p_t; logits [B, K, …], target [B, …]."""
    valid = target != ignore_index
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = logp.gather(1, target.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
    loss = -((1 - logp_t.exp()) ** gamma) * logp_t
    # An all-void clip gives 0 (with a graph), not NaN, so one empty sample cannot stop training.
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class AVOSCriterion(nn.Module):
    """Focal + dice loss on the final masks, plus ``aux_weight`` × the same on the aux masks.

    ``criterion(outputs, masks)`` with ``outputs["pred_masks"]`` (and optionally
    ``outputs["aux_pred_masks"]``) logits [B, T, h, w] and ``masks`` [B, T, H, W] (bool or 0/1
    float) returns a dict: ``loss`` (the total, what is back-propagated), ``loss_focal``,
    ``loss_dice`` (main output) and, when the aux term is active, ``loss_focal_aux``,
    ``loss_dice_aux`` (unweighted).

    ``aux_norm=True`` reproduces the original's ``--aux_loss_norm``: main weight 1/(1+a), aux a/(1+a).
    Losses are computed in float32 even under autocast (sums over ~10⁶ pixels).
    """

    def __init__(self, aux_weight: float = 0.5, alpha: float = 0.25, gamma: float = 2.0,
                 aux_norm: bool = False) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.alpha = alpha
        self.gamma = gamma
        self.aux_norm = aux_norm

    def _terms(self, logits: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        logits = resize_logits(logits.float(), masks.shape[-2:])
        return (sigmoid_focal_loss(logits, masks, self.alpha, self.gamma), dice_loss(logits, masks))

    def forward(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        masks = masks.float()
        focal, dice = self._terms(outputs["pred_masks"], masks)
        losses = {"loss_focal": focal, "loss_dice": dice}
        w_main, w_aux = 1.0, self.aux_weight
        if self.aux_norm:
            w_main, w_aux = 1.0 / (1.0 + self.aux_weight), self.aux_weight / (1.0 + self.aux_weight)
        total = w_main * (focal + dice)
        if self.aux_weight > 0 and outputs.get("aux_pred_masks") is not None:
            focal_aux, dice_aux = self._terms(outputs["aux_pred_masks"], masks)
            losses.update(loss_focal_aux=focal_aux, loss_dice_aux=dice_aux)
            total = total + w_aux * (focal_aux + dice_aux)
        losses["loss"] = total
        return losses


class ClassCriterion(nn.Module):
    """``criterion(outputs, masks)`` → ``{"loss_mask", ["loss_aux"], "loss"}`` for multi-class logits.

    ``pred_masks`` [B, K, T, h, w] are upsampled bilinearly (align_corners False, as the authors'
    criteria) to the label size of ``masks`` [B, T, H, W] (long class ids) and scored by
    cross-entropy (``loss="ce"``) or the softmax focal loss (``"focal"``, γ = ``gamma``, no α), each
    the mean over the pixels not labelled ``ignore_index``. With label propagation the
    pre-propagation logits (``aux_pred_masks``, when they are another tensor) add ``aux_weight`` ×
    the same loss; give 0 for a model without it. ``mask_coef`` weights the main term and
    ``epoch_scale`` (set by a trainer each epoch; 1 keeps it) multiplies the total.
    """

    def __init__(self, ignore_index: int, loss: str = "ce", aux_weight: float = 0.5, gamma: float = 2.0,
                 mask_coef: float = 1.0) -> None:
        super().__init__()
        if loss not in ("ce", "focal"):
            raise ValueError(f"loss must be 'ce' or 'focal', not {loss!r}")
        self.ignore_index, self.loss, self.aux_weight, self.gamma = ignore_index, loss, aux_weight, gamma
        self.mask_coef, self.epoch_scale = mask_coef, 1.0

    def pixel_loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        if logits.dim() != 5:
            raise ValueError(f"expected multi-class logits [B, K, T, h, w], got {tuple(logits.shape)}")
        logits = upsample_logits(logits, tuple(masks.shape[-2:]))  # class axis 1, as both losses expect
        if self.loss == "focal":
            return softmax_focal_loss(logits, masks, self.gamma, self.ignore_index)
        valid = masks != self.ignore_index
        total = F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index, reduction="sum")
        return total / valid.sum().clamp(min=1)

    def forward(self, outputs: dict[str, Tensor], masks: Tensor) -> dict[str, Tensor]:
        losses = {"loss_mask": self.pixel_loss(outputs["pred_masks"], masks)}
        total = self.mask_coef * losses["loss_mask"]
        aux = outputs.get("aux_pred_masks")
        if self.aux_weight > 0 and aux is not None and aux is not outputs["pred_masks"]:
            losses["loss_aux"] = self.pixel_loss(aux, masks)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total * self.epoch_scale
        return losses
