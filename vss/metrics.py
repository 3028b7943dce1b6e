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


class WindowConsistency:
    """VC_n of one video's windows for each n in ``vc_lengths``, taken a frame at a time (:meth:`add`, in
    temporal order), with per-class (common, consistent) pixel counts: ``self.vc[n]`` is ``(values,
    common_per_class, consistent_per_class)``. It holds the last frame's labels and two run-length
    frames, never the video (scoring a 1000-frame 480p video from stacked masks held about 10 GB).

    A window i..i+n-1 is constant at a pixel iff its label has been the same for the n frames up to
    i+n-1 (a run length counted forwards): the pixels of the official pairwise comparisons with frame
    i. ``total_frames`` is the video's length, since the official script skips the window ending at
    the last frame (``range(len - n)``): ``max(total - n, 0)`` values, NaN where a window has no
    common pixel (0/0 there). A common pixel's class (``gt_class``, values ≥ ``num_classes`` left out
    of the counts) is the same in every frame of its window.
    """

    def __init__(self, total_frames: int, vc_lengths: Sequence[int], num_classes: int = 0) -> None:
        self.total, self.num_classes, self.frames = total_frames, num_classes, 0
        self.cap = max(vc_lengths, default=1)  # a run only needs counting up to the longest window
        self.vc = {n: ([], np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)) for n in vc_lengths}
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # the previous frame's (labels, prediction)
        self._runs: tuple[np.ndarray, np.ndarray] | None = None

    def _run(self, x: np.ndarray, last: np.ndarray | None, run: np.ndarray | None) -> np.ndarray:
        dtype = np.uint8 if self.cap < 255 else np.int64  # counts stop at the cap
        if run is None:
            return np.ones(x.shape, dtype)
        return np.where(x == last, np.minimum(run + 1, self.cap), 1).astype(dtype)

    def add(self, labels: np.ndarray, pred: np.ndarray, gt_class: np.ndarray | None = None) -> None:
        """Frame ``self.frames``: the labels VC compares (the raw mask), the prediction, the classes."""
        if self.frames >= self.total:
            raise ValueError(f"more frames than the video's {self.total}")
        last, runs = self._last or (None, None), self._runs or (None, None)
        self._runs = (self._run(labels, last[0], runs[0]), self._run(pred, last[1], runs[1]))
        self._last = (labels, pred)
        j, self.frames = self.frames, self.frames + 1
        for n, (values, common_c, consistent_c) in self.vc.items():
            if not n - 1 <= j < self.total - 1:  # no window ends here, or it is the skipped last one
                continue
            common = self._runs[0] >= n
            consistent = common & (self._runs[1] >= n)
            n_common = int(common.sum())
            values.append(int(consistent.sum()) / n_common if n_common else math.nan)
            if gt_class is not None and self.num_classes:
                cls = np.asarray(gt_class).astype(np.int64)
                keep = cls < self.num_classes
                common_c += np.bincount(cls[common & keep], minlength=self.num_classes)[:self.num_classes]
                consistent_c += np.bincount(cls[consistent & keep], minlength=self.num_classes)[:self.num_classes]


def window_consistency(gts: np.ndarray, preds: np.ndarray, n: int,
                       gt_classes: np.ndarray | None = None, num_classes: int = 0):
    """:class:`WindowConsistency`'s ``(values, common_per_class, consistent_per_class)`` for one video
    given as [N, H, W] stacks (frames in temporal order); ``gt_classes`` optional, as there."""
    gts, preds = np.asarray(gts), np.asarray(preds)
    if gts.shape != preds.shape:
        raise ValueError(f"ground truth {gts.shape} and predictions {preds.shape} differ in shape")
    vc = WindowConsistency(len(gts), (n,), num_classes)
    for i in range(len(gts)):
        vc.add(gts[i], preds[i], None if gt_classes is None else gt_classes[i])
    return vc.vc[n]


class VideoScore:
    """One video's share of the VSPW scores (:meth:`VSPWEvaluator.add` takes :meth:`share`), taken a
    frame at a time: the confusion matrix and :class:`WindowConsistency`."""

    def __init__(self, total_frames: int, num_classes: int = NUM_CLASSES, vc_lengths: Sequence[int] = (8, 16)):
        self.num_classes = num_classes
        self.conf = np.zeros((num_classes, num_classes), np.int64)
        self.consistency = WindowConsistency(total_frames, vc_lengths, num_classes)

    def add_frame(self, gt_class: np.ndarray, pred: np.ndarray, raw: np.ndarray | None = None) -> None:
        """The next frame's classes (0..K-1, 255 ignore), predicted classes and, for VC, the labels as
        the official script compares them (the raw mask; default the classes)."""
        gt_class, pred = np.asarray(gt_class), np.asarray(pred)
        labels = gt_class if raw is None else np.asarray(raw)
        if not gt_class.shape == pred.shape == labels.shape:
            raise ValueError(f"ground truth {labels.shape} and prediction {pred.shape} differ in shape")
        self.conf += confusion_matrix(gt_class, pred, self.num_classes)
        self.consistency.add(labels, pred, gt_class)

    def share(self) -> dict:
        frames, total = self.consistency.frames, self.consistency.total
        if frames != total:
            raise ValueError(f"{frames} of the video's {total} frames were scored")
        row = {"frames": total, "mIoU": mean_iou(self.conf), "pixel_acc": pixel_accuracy(self.conf)}
        for n, (values, _, _) in self.consistency.vc.items():
            row[f"VC{n}"] = _nanmean(values)
        return {"conf": self.conf, "vc": self.consistency.vc, "row": row}


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

    def video_score(self, total_frames: int) -> VideoScore:
        """A video's share, to fill a frame at a time as predictions arrive (:meth:`add` takes its
        ``share()``). Sharded validation scores videos in several processes and adds the shares in the
        videos' order, so the means equal one process's to the last bit."""
        return VideoScore(total_frames, self.num_classes, self.vc_lengths)

    def score_video(self, gt_classes: np.ndarray, preds: np.ndarray, raw_gts: np.ndarray | None = None) -> dict:
        """:meth:`video_score` of a video given as [N, H, W] stacks."""
        gt_classes, preds = np.asarray(gt_classes), np.asarray(preds)
        score = self.video_score(len(preds))
        for i in range(len(preds)):
            score.add_frame(gt_classes[i], preds[i], None if raw_gts is None else raw_gts[i])
        return score.share()

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
