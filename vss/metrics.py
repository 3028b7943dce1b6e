"""VSPW metrics: mIoU and video consistency VC_n, computed as the VSPW authors' scripts do.

mIoU (``evaluator_test.py`` with its ``Evaluator(124)``): one confusion matrix accumulated over
every evaluated frame, counting only pixels whose label is in ``[0, K)`` (255 is ignored);
IoU_c = TP / (TP + FP + FN); mIoU = sum of IoU_c over the classes that occur in the ground truth
divided by their number (classes only predicted do not count and cannot make the mean NaN). Labels
are in the dataset README's convention (raw − 1, raw 0 "others" and 255 void → 255 ignore); the
official script itself reads the raw masks, so it needs labels and predictions in one convention.

VC_n (``VC_perclip.py``, n = 8 or 16 → "mVC8" / "mVC16"): for every video with more than n frames
and every window start ``i in range(len - n)`` (the last possible window is skipped, as there), the
pixels whose ground truth is the same in frames i … i+n-1 are the "common" pixels; the window's VC
is the fraction of them whose prediction is also the same over those n frames. It measures
consistency, not correctness. The official score is the NaN-ignoring mean over all windows of all
videos (``mVC{n}``). Labels are compared as given: the official script reads the raw masks, in
which "others" (0) and void (255) are two different values and void pixels count — pass the raw
masks (``raw_gts``) to match it exactly.

Extras, not official numbers: ``mVC{n}_video_mean`` is the mean over videos of each video's VC_n
(a per-video average, as the VSPW paper's wording reads — unverified here; the official script pools
windows). ``mVC{n}_class`` (the issue's "means over classes"): the common pixels are split by their
ground-truth class (``gt_classes``); VC_c pools class c's common and consistent pixels over all
windows, and ``mVC{n}_class`` is the mean of VC_c over the classes that have common pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from datasets.vspw import NUM_CLASSES


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] int64 counts (rows = ground truth, columns = prediction) over pixels with 0 ≤ gt < K."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = (gt >= 0) & (gt < num_classes)
    p = pred[valid].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction labels must be in [0, {num_classes}); got {p.min()}..{p.max()}")
    idx = num_classes * gt[valid].astype(np.int64) + p
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both ground truth and prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / union


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (NaN if there are none)."""
    present = conf.sum(1) > 0
    if not present.any():
        return math.nan
    return float(np.nan_to_num(class_iou(conf))[present].sum() / present.sum())


def pixel_accuracy(conf: np.ndarray) -> float:
    total = conf.sum()
    return float(np.trace(conf) / total) if total else math.nan


def _run_lengths(labels: np.ndarray) -> np.ndarray:
    """[N, H, W] → per frame and pixel, how many consecutive frames from there keep the same label."""
    runs = np.ones(labels.shape, dtype=np.uint16 if len(labels) < 2**16 else np.int64)
    for i in range(len(labels) - 2, -1, -1):
        same = labels[i] == labels[i + 1]
        runs[i][same] += runs[i + 1][same]
    return runs


def window_consistency(gts: np.ndarray, preds: np.ndarray, n: int,
                       gt_classes: np.ndarray | None = None, num_classes: int = 0, _runs=None):
    """Per-window VC_n of one video, plus per-class (common, consistent) pixel counts.

    Args:
        gts, preds: [N, H, W] label stacks (frames in temporal order).
        gt_classes: optional [N, H, W] class ids used only to split pixels by class (values ≥
            ``num_classes`` are left out of the class counts); a window's pixel has the class of
            the window's first frame (the same in all n frames, by definition of "common").
    Returns:
        (values, common_per_class, consistent_per_class): ``values`` has ``max(N - n, 0)`` floats,
        NaN where a window has no common pixel (0/0 in the official script).
    """
    gts, preds = np.asarray(gts), np.asarray(preds)
    if gts.shape != preds.shape:
        raise ValueError(f"ground truth {gts.shape} and predictions {preds.shape} differ in shape")
    common_c = np.zeros(num_classes, np.int64)
    consistent_c = np.zeros(num_classes, np.int64)
    if len(gts) <= n:
        return [], common_c, consistent_c
    # A window i..i+n-1 is constant at a pixel iff the run starting at i is at least n long: the
    # same set as the official pairwise comparisons with frame i, in one pass over the video.
    gt_runs, pred_runs = _runs if _runs is not None else (_run_lengths(gts), _run_lengths(preds))
    common = gt_runs[: len(gts) - n] >= n
    consistent = common & (pred_runs[: len(gts) - n] >= n)
    n_common = common.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (consistent.sum(axis=(1, 2)) / n_common).tolist()
    if gt_classes is not None and num_classes:
        cls = np.asarray(gt_classes)[: len(gts) - n].astype(np.int64)
        keep = cls < num_classes
        common_c += np.bincount(cls[common & keep], minlength=num_classes)[:num_classes]
        consistent_c += np.bincount(cls[consistent & keep], minlength=num_classes)[:num_classes]
    return values, common_c, consistent_c


class VSPWEvaluator:
    """Accumulates mIoU and VC_n over videos; per-video numbers are kept for the report.

    ``add_video(gt_classes, preds, raw_gts)``: [N, H, W] ground-truth classes (0..K-1, 255 ignore),
    predicted classes and, for VC, the labels as the official script compares them (the raw masks;
    defaults to ``gt_classes``).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, vc_lengths: Sequence[int] = (8, 16)) -> None:
        self.num_classes, self.vc_lengths = num_classes, tuple(vc_lengths)
        self.conf = np.zeros((num_classes, num_classes), np.int64)
        self.windows: dict[int, list[float]] = {n: [] for n in self.vc_lengths}
        self.class_common = {n: np.zeros(num_classes, np.int64) for n in self.vc_lengths}
        self.class_consistent = {n: np.zeros(num_classes, np.int64) for n in self.vc_lengths}
        self.videos: dict[str, dict[str, float]] = {}

    def add_video(self, name: str, gt_classes: np.ndarray, preds: np.ndarray,
                  raw_gts: np.ndarray | None = None) -> dict[str, float]:
        """Score one video and add it (:meth:`score_video`, then :meth:`add`); returns its row."""
        return self.add(name, self.score_video(gt_classes, preds, raw_gts))

    def score_video(self, gt_classes: np.ndarray, preds: np.ndarray, raw_gts: np.ndarray | None = None) -> dict:
        """One video's share of the scores, not yet added: its confusion matrix, its windows' VC_n and
        per-class counts, and its row. Sharded validation scores videos in several processes and adds
        the shares in the videos' order, so the means equal one process's to the last bit."""
        gt_classes, preds = np.asarray(gt_classes), np.asarray(preds)
        conf = confusion_matrix(gt_classes, preds, self.num_classes)
        share: dict = {"conf": conf, "vc": {},
                       "row": {"frames": int(len(preds)), "mIoU": mean_iou(conf), "pixel_acc": pixel_accuracy(conf)}}
        vc_gts = gt_classes if raw_gts is None else np.asarray(raw_gts)
        runs = (_run_lengths(vc_gts), _run_lengths(preds)) if len(preds) > min(self.vc_lengths, default=0) else None
        for n in self.vc_lengths:
            share["vc"][n] = window_consistency(vc_gts, preds, n, gt_classes, self.num_classes, runs)
            share["row"][f"VC{n}"] = _nanmean(share["vc"][n][0])
        return share

    def add(self, name: str, share: dict) -> dict[str, float]:
        """Add a video's :meth:`score_video` share; returns its row."""
        self.conf += share["conf"]
        for n, (values, common, consistent) in share["vc"].items():
            self.windows[n].extend(values)
            self.class_common[n] += common
            self.class_consistent[n] += consistent
        self.videos[name] = share["row"]
        return share["row"]

    def class_vc(self, n: int) -> np.ndarray:
        """VC_n per class (pooled pixels); NaN for classes without common pixels."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.class_consistent[n] / self.class_common[n]

    def summary(self) -> dict:
        """Dataset numbers (``mIoU``, ``mVC8``, ``mVC16``, ``mVC8_class``, …) and per-class lists."""
        out: dict = {"mIoU": mean_iou(self.conf), "pixel_acc": pixel_accuracy(self.conf),
                     "class_IoU": [None if math.isnan(v) else float(v) for v in class_iou(self.conf)]}
        for n in self.vc_lengths:
            out[f"mVC{n}"] = _nanmean(self.windows[n])
            out[f"mVC{n}_video_mean"] = _nanmean([row[f"VC{n}"] for row in self.videos.values()])
            out[f"mVC{n}_class"] = _nanmean(self.class_vc(n))
            out[f"class_VC{n}"] = [None if math.isnan(v) else float(v) for v in self.class_vc(n)]
        out["sequences"] = self.videos
        return out


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.isnan(arr).all() else math.nan
