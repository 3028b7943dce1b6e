"""A2D evaluation: the original's reported "mIoU" and the standard class mIoU (spec a2d §A.8).

The original (``evals_a2d.py`` + ``utils/metric.py: new_iou``) scores one annotated frame as

    score = |{p : ŷ_p = y_p ≠ 0}| / |{p : y_p ≠ 0 or ŷ_p ≠ 0}|

— a class-aware foreground IoU pooled over pixels, not a mean over classes — averages the frames
of a video, then the videos. A frame where ground truth and prediction are both all background
has 0/0: the original returns NaN, which turns its video and the final mean into NaN.
``nan_policy`` makes that explicit: ``"skip"`` (default) leaves such frames out of their video's
mean and videos without any scored frame out of the global mean (identical to the original
whenever it gives a number); ``"nan"`` propagates NaN as the original does.

``protocol="head"`` (default, the README HEAD numbers 45.7/57.3) averages every annotated frame
of a video; ``"555a462"`` keeps only the last evaluated frame of each video, as the CVPR'23 code
(its 56.0/56.2) did by overwriting one slot per video.

:class:`ConfusionMatrix` gives the standard metric: per-class IoU = TP / (TP + FP + FN) over all
test pixels, and the class mIoU over the 43 valid actor-action classes (background and the 36
ids A2D never uses excluded from the mean; classes absent from both GT and prediction skipped).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from datasets.a2d import NUM_CLASSES, VALID_IDS, class_name

NAN_POLICIES = ("skip", "nan")
PROTOCOLS = ("head", "555a462")


def frame_score(pred: Tensor, gt: Tensor) -> float:
    """The original's per-frame score (``new_iou`` on one-hot maps without background); NaN on 0/0.

    pred, gt: [H, W] integer label ids.
    """
    fg = (gt != 0) | (pred != 0)
    union = int(fg.sum())
    if union == 0:
        return math.nan
    return int(((pred == gt) & (gt != 0)).sum()) / union


def _mean(values: list[float], nan_policy: str) -> float:
    if nan_policy == "nan":
        return float(np.mean(values)) if values else math.nan
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


class OriginalA2DMetric:
    """Accumulates per-frame scores by video; :meth:`compute` gives the original's "mIoU" (0..1)."""

    def __init__(self, nan_policy: str = "skip", protocol: str = "head") -> None:
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.nan_policy, self.protocol = nan_policy, protocol
        self.frames: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()

    def update(self, video: str, frame: int, pred: Tensor, gt: Tensor) -> float:
        return self.add(video, frame, frame_score(pred, gt))

    def add(self, video: str, frame: int, score: float) -> float:
        """A frame's :func:`frame_score`, taken elsewhere (by another process under torchrun)."""
        self.frames.setdefault(video, []).append((frame, score))
        return score

    def video_scores(self) -> dict[str, float]:
        out = {}
        for vid, items in self.frames.items():
            values = [s for _, s in items] if self.protocol == "head" else [items[-1][1]]
            out[vid] = _mean(values, self.nan_policy)
        return out

    def compute(self) -> dict[str, float]:
        per_video = list(self.video_scores().values())
        all_frames = [s for items in self.frames.values() for _, s in items]
        return {"miou_original": _mean(per_video, self.nan_policy),
                "num_videos": len(per_video),
                "num_frames": len(all_frames),
                "num_nan_frames": sum(math.isnan(s) for s in all_frames)}


class ConfusionMatrix:
    """Pixel confusion matrix over the 80 label ids (rows = ground truth, columns = prediction)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def update(self, pred: Tensor, gt: Tensor) -> None:
        """pred, gt: integer label maps of equal shape (ids ≥ num_classes are an error)."""
        gt, pred = gt.reshape(-1).long().cpu(), pred.reshape(-1).long().cpu()
        if gt.numel() and int(gt.max()) >= self.num_classes:
            raise ValueError(f"ground-truth id {int(gt.max())} is outside 0..{self.num_classes - 1}")
        self.mat += torch.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def iou(self) -> Tensor:
        """[num_classes] float64 IoU; NaN where a class is in neither ground truth nor prediction."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def compute(self, classes: tuple[int, ...] = VALID_IDS) -> dict[str, float]:
        iou = self.iou()[list(classes)]
        present = iou[~iou.isnan()]
        m = self.mat.double()
        return {"class_miou": float(present.mean()) if present.numel() else math.nan,
                "num_classes_scored": int(present.numel()),
                "background_iou": float(self.iou()[0]),
                "pixel_accuracy": float(m.diag().sum() / m.sum().clamp(min=1))}

    def table(self, classes: tuple[int, ...] = VALID_IDS) -> list[dict]:
        """One row per class: id, name, IoU, GT pixels, predicted pixels."""
        iou, m = self.iou(), self.mat
        return [{"id": c, "name": class_name(c), "iou": float(iou[c]), "gt_pixels": int(m[c].sum()),
                 "pred_pixels": int(m[:, c].sum())} for c in classes]
