"""AVSBench metrics as the original computes them (spec a2d-avs-vss §B.9, AVSBench utility.py).

Both take one test batch of logits and 0/1 masks [N, H, W] (N = frames of the batch) at the
evaluation resolution (384 in the MED-VT++ test scripts), and are averaged over batches by the
caller (:class:`BatchAverage`).

* :func:`mask_iou`: sigmoid > 0.5; per frame inter / (union + 1e-7); a frame with empty ground
  truth scores its true-negative fraction; the batch value is the mean over its frames.
* :func:`f_score`: sigmoid; for each frame with non-empty ground truth, precision and recall at
  255 thresholds linspace(0, 1 − 1e-10, 255) (pred ≥ t, +1e-20 in denominators);
  F = (1 + β²)PR / (β²P + R), β² = 0.3, NaN → 0; the curves are averaged over those frames and
  the batch value is the curve's maximum (the threshold is chosen per batch). A batch without a
  non-empty frame scores 0 (MS3's copy; S4's divides by zero).
"""
from __future__ import annotations

import torch
from torch import Tensor

BETA2 = 0.3
NUM_THRESHOLDS = 255


def mask_iou(logits: Tensor, target: Tensor, eps: float = 1e-7) -> float:
    """logits, target [N, H, W] → mean IoU of the N frames (empty-GT rule in the module docstring)."""
    if logits.dim() != 3 or logits.shape != target.shape:
        raise ValueError(f"mask_iou needs two [N, H, W] tensors, got {tuple(logits.shape)} and {tuple(target.shape)}")
    pred = (torch.sigmoid(logits.float()) > 0.5).float()
    target = target.float()
    empty = target.sum((1, 2)) == 0
    inter = (pred * target).sum((1, 2))
    union = torch.maximum(pred, target).sum((1, 2))
    inter = torch.where(empty, ((1 - pred) * (1 - target)).sum((1, 2)), inter)
    union = torch.where(empty, torch.full_like(union, pred.shape[1] * pred.shape[2]), union)
    return (inter / (union + eps)).mean().item()


def f_score_curve(prob: Tensor, gt: Tensor, num: int = NUM_THRESHOLDS) -> Tensor:
    """One frame's F-curve over the thresholds: prob, gt [H, W] → [num]."""
    th = torch.linspace(0, 1 - 1e-10, num, device=prob.device)
    pred = (prob.flatten()[None, :] >= th[:, None]).float()
    tp = (pred * gt.flatten()[None, :]).sum(1)
    prec, rec = tp / (pred.sum(1) + 1e-20), tp / (gt.sum() + 1e-20)
    f = (1 + BETA2) * prec * rec / (BETA2 * prec + rec)
    return torch.nan_to_num(f, nan=0.0)


def f_score(logits: Tensor, target: Tensor, num: int = NUM_THRESHOLDS) -> float:
    """logits, target [N, H, W] → max over thresholds of the mean F-curve of the non-empty frames."""
    prob = torch.sigmoid(logits.float())
    curves = [f_score_curve(prob[i], target[i].float(), num) for i in range(len(prob)) if target[i].mean() != 0]
    if not curves:
        return 0.0
    return torch.stack(curves).mean(0).max().item()


class BatchAverage:
    """Mean of per-batch values (the original's AverageMeter)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, v: float) -> None:
        self.total += float(v)
        self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")
