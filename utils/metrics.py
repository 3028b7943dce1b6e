"""Evaluation metrics for unsupervised video object segmentation.

Two families of numbers live here:

* the DAVIS benchmark measures — region similarity J, contour accuracy F and their
  mean / recall / decay statistics — defined as in the DAVIS toolkits
  (``davis2017-evaluation``: ``db_eval_iou``, ``f_measure``, ``_seg2bmap``, ``db_statistics``;
  the DAVIS-2016 toolkit has the same definitions), re-implemented without scikit-image;
* the numbers the MED-VT code itself reports (spec §6.2): DAVIS "mIoU" over all frames,
  the YouTube-Objects class-averaged IoU and the MoCA bounding-box IoU.

Masks are HxW arrays; anything non-zero (after the stated threshold) is foreground.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.video import open_image
from utils.cli import UserError
from utils.outputs import write_whole

MOCA_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------- per-frame J and F
def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J = |pred ∩ gt| / |pred ∪ gt|; 1 when both masks are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else float(np.count_nonzero(pred & gt) / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask (the toolkit's ``seg2bmap`` at full size).

    A pixel is on the boundary when it differs from its east, south or south-east
    neighbour; the last row/column only compare along themselves, which puts the
    boundary half a pixel towards the origin as the Berkeley benchmark does.
    """
    seg = np.asarray(mask, dtype=bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """Disk footprint identical to ``skimage.morphology.disk(radius)``: x² + y² ≤ r²."""
    offsets = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: Sequence[int], bound_th: float = 0.008) -> int:
    """Matching tolerance in pixels: ``bound_th`` itself if ≥ 1, else a fraction of the diagonal."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Contour accuracy F: harmonic mean of boundary precision and recall within a tolerance.

    Empty boundaries follow the toolkit: none in pred only → P=1, R=0; none in gt only →
    P=0, R=1; none in either → P=R=1; F = 0 when P + R = 0.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    footprint = disk(boundary_tolerance(pred.shape, bound_th))
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    # cv2 pads with -inf for dilation, so nothing leaks in from outside the image,
    # the same as the toolkit's cv2.dilate / skimage binary_dilation.
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), footprint).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), footprint).astype(bool)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pred_b & gt_dil) / n_pred
        recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_statistics(per_frame_values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as the toolkit's ``db_statistics``.

    Recall is the fraction of frames scoring > 0.5; decay is the mean of the first minus
    the mean of the last of 4 overlapping temporal bins. The toolkit casts the bin indices
    to uint8, which wraps for sequences over 256 frames; we keep them exact instead.
    """
    values = np.asarray(list(per_frame_values), dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    # +1e-10 makes .5 round up rather than to even, as the toolkit (ported from Matlab) does.
    ids = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64)
    with warnings.catch_warnings():  # all-NaN input gives NaN, as in the toolkit
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = float(np.nanmean(values))
        decay = float(np.nanmean(values[ids[0]:ids[1] + 1]) - np.nanmean(values[ids[3]:ids[4] + 1]))
    return mean, float(np.mean(values > 0.5)), decay


# --------------------------------------------------------------------------- DAVIS folders
def read_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """Boolean mask from a PNG: pixel value > ``threshold`` (a palette PNG's index). A colour PNG is read
    by its brightest channel, so that an object drawn in any colour on black counts (the first channel
    alone gave a green object J = 0); grey masks stored as RGB read as their grey value, as before.
    Decoded completely (:func:`datasets.video.open_image`): a truncated file is named, not a traceback."""
    array = np.asarray(open_image(path))
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] >= 3 else array[..., 0]  # not alpha (RGBA, LA)
    return array > threshold


def sequence_frames(pred_seq: Path, gt_seq: Path) -> list[tuple[Path, Path]]:
    """(prediction, annotation) pairs for every annotated frame; a missing prediction is an error."""
    if not gt_seq.is_dir():
        raise FileNotFoundError(f"ground-truth folder {gt_seq} does not exist")
    pairs = []
    for gt_path in sorted(gt_seq.glob("*.png")):
        pred_path = pred_seq / gt_path.name
        if not pred_path.is_file():
            raise FileNotFoundError(f"prediction {pred_path} is missing (annotation {gt_path} exists)")
        pairs.append((pred_path, gt_path))
    return pairs


def evaluate_sequence(pairs: Sequence[tuple[Path, Path]], threshold: int = 0,
                      drop_first_last: bool = True, bound_th: float = 0.008) -> dict[str, float]:
    """Per-sequence J/F statistics plus the original's all-frame mean IoU."""
    j_values, f_values = [], []
    for pred_path, gt_path in pairs:
        pred, gt = read_mask(pred_path, threshold), read_mask(gt_path)
        if pred.shape != gt.shape:
            raise UserError(f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but {gt_path} "
                             f"is {gt.shape[1]}x{gt.shape[0]}")
        j_values.append(jaccard(pred, gt))
        f_values.append(f_measure(pred, gt, bound_th))
    keep = slice(1, -1) if drop_first_last else slice(None)
    j_mean, j_recall, j_decay = db_statistics(j_values[keep])
    f_mean, f_recall, f_decay = db_statistics(f_values[keep])
    return {"J_mean": j_mean, "J_recall": j_recall, "J_decay": j_decay, "F_mean": f_mean,
            "F_recall": f_recall, "F_decay": f_decay, "JF_mean": (j_mean + f_mean) / 2,
            "mIoU_all_frames": mean_or_nan(j_values)}


def evaluate_sequences(pred_dir: str | Path, gt_dir: str | Path, sequences: Sequence[str] | None = None,
                       threshold: int = 0, drop_first_last: bool = True,
                       bound_th: float = 0.008) -> dict:
    """Evaluate ``pred_dir/<seq>/<frame>.png`` against ``gt_dir/<seq>/<frame>.png``.

    Frame convention. The DAVIS-2016 toolkit (fperazzi/davis) and the 2017 challenge toolkit
    the MED-VT authors used (MSiam/davis-2017 fork) evaluate J and F on every annotated frame
    except the first and the last. ``davis2017-evaluation`` strips them only for its
    semi-supervised task and keeps all frames for the unsupervised one. The default
    (``drop_first_last=True``) is the DAVIS-2016 convention, the one behind published
    DAVIS-16 J/F numbers; pass False for the davis2017-evaluation unsupervised convention.
    Dataset numbers are means over sequences (one object per DAVIS-16 sequence), and
    ``JF_mean`` = (J_mean + F_mean) / 2.

    ``mIoU`` is instead the original repo's "Davis Videos Mean IOU": mean over sequences of the
    per-sequence mean J over *all* frames. Predictions are foreground where > ``threshold``
    (0 for 0/1 or 0/255 masks; 127 turns a probability·255 PNG into the original's p > 0.5);
    ground truth is foreground where > 0. Every annotated frame needs a prediction (as in
    the toolkit). Sequences default to the sub-folders of ``pred_dir``.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    if sequences is None:
        sequences = sorted(p.name for p in pred_dir.iterdir() if p.is_dir())
    per_seq = {seq: evaluate_sequence(sequence_frames(pred_dir / seq, gt_dir / seq), threshold,
                                      drop_first_last, bound_th) for seq in sequences}
    results: dict = {"sequences": per_seq}
    for key in ("J_mean", "F_mean", "JF_mean", "J_recall", "F_recall", "J_decay", "F_decay"):
        results[key] = mean_or_nan([s[key] for s in per_seq.values()])
    results["mIoU"] = mean_or_nan([s["mIoU_all_frames"] for s in per_seq.values()])
    return results


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean, or NaN for no values (a sequence or class with nothing scored)."""
    return float(np.mean(values)) if len(values) else math.nan


# --------------------------------------------------------------------------- YouTube-Objects
def youtube_objects_miou(per_sequence_ious: Mapping[str, Sequence[float]]) -> dict:
    """Mean over classes of the mean over that class's sequences of the mean frame IoU.

    Keys are relative paths whose first component is the class, e.g.
    ``aeroplane/data/0001/shots/001``. As in the original evaluator, a "sequence" is a
    video (the component after ``data``): the frames of all its shots are pooled before
    averaging. Keys without a ``data`` component are taken as sequences as they are.
    Returns ``{"classes": {class: IoU}, "mIoU": mean over classes}``.
    """
    pooled: dict[str, dict[str, list[float]]] = {}
    for key, ious in per_sequence_ious.items():
        parts = Path(key).parts
        video = parts[2] if len(parts) > 2 and parts[1] == "data" else key
        pooled.setdefault(parts[0], {}).setdefault(video, []).extend(ious)
    classes = {cls: mean_or_nan([mean_or_nan(v) for v in videos.values() if v])
               for cls, videos in sorted(pooled.items())}
    return {"classes": classes, "mIoU": mean_or_nan(list(classes.values()))}


# --------------------------------------------------------------------------- MoCA
def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in continuous coordinates (no +1 on widths)."""
    inter_w = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    inter_h = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    inter = max(inter_w, 0.0) * max(inter_h, 0.0)
    if inter == 0:
        return 0.0
    area_a, area_b = (abs((b[2] - b[0]) * (b[3] - b[1])) for b in (box_a, box_b))
    return float(inter / (area_a + area_b - inter))


def border_foreground_fraction(mask: np.ndarray) -> float:
    """Fraction of the image border pixels brighter than 127.5."""
    h, w = mask.shape
    border = np.concatenate([mask[0, :], mask[-1, :], mask[1:-1, 0], mask[1:-1, -1]])
    return float(np.count_nonzero(border > 127.5) / (2 * h + 2 * w - 4))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the external contour whose bounding rectangle holds the most mask.

    "Most mask" is the sum of mask values inside the rectangle (MED-VT HEAD evaluator;
    the motion-grouping original used the rectangle area). Ties keep the first contour.
    """
    contours = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[-2]
    best, best_sum = None, 0
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        total = int(mask[y:y + h, x:x + w].sum(dtype=np.int64))
        if total > best_sum:
            best, best_sum = (x, y, x + w, y + h), total
    return best


def moca_box_iou(mask: np.ndarray, gt_box: Sequence[float], orig_size: tuple[int, int]) -> float:
    """Box IoU of one saved MoCA mask against its annotated box (HEAD ``moca_eval``).

    ``mask``: uint8 0/255 (colour images are averaged over channels); ``gt_box``:
    (xmin, ymin, xmax, ymax) in original-frame pixels; ``orig_size``: (height, width) of
    the original frame. A mask that covers most of the border is taken as inverted.
    Returns 0 when the mask has no contour.
    """
    values = np.asarray(mask, dtype=np.float64)
    if values.ndim == 3:
        values = values.mean(axis=2)
    if border_foreground_fraction(values) > 0.5:
        values = 255 - values
    binary = np.where(values > 0.1 * 255, 255, 0).astype(np.uint8)
    box = mask_box(binary)
    if box is None:
        return 0.0
    sy, sx = orig_size[0] / binary.shape[0], orig_size[1] / binary.shape[1]
    scaled = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return box_iou([float(v) for v in gt_box], scaled)


def moca_summary(per_video_ious: Mapping[str, Sequence[float]],
                 thresholds: Sequence[float] = MOCA_THRESHOLDS) -> dict:
    """MoCA numbers: per-video mean IoU, their mean (the reported score) and success rates.

    Success rate at t = fraction of all annotated frames (pooled over videos) with IoU > t.
    Videos without annotated frames are skipped.
    """
    videos = {v: mean_or_nan(ious) for v, ious in sorted(per_video_ious.items()) if len(ious)}
    all_ious = np.concatenate([np.asarray(v, dtype=np.float64) for v in per_video_ious.values()] or [[]])
    success = {f"{t:.1f}": float(np.mean(all_ious > t)) if all_ious.size else math.nan
               for t in thresholds}
    return {"videos": videos, "mean_iou": mean_or_nan(list(videos.values())),
            "success_rates": success, "n_frames": int(all_ious.size)}


# --------------------------------------------------------------------------- output
def write_results(results: Mapping, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``results`` as ``out_dir/name.json`` and ``out_dir/name.csv``.

    The CSV has one row per entry of ``results["sequences"]`` (if any) and a final
    "Overall" row with the top-level numbers. NaN is written as JSON null / empty cell.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    write_json(json_path, results)
    rows = [{"sequence": seq, **vals} for seq, vals in results.get("sequences", {}).items()]
    overall = {k: v for k, v in results.items() if isinstance(v, (int, float, np.floating))}
    rows.append({"sequence": "Overall", **overall})
    columns = ["sequence"] + list(dict.fromkeys(k for row in rows for k in row if k != "sequence"))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in jsonable(row).items()})
    return json_path, csv_path


def write_json(path: str | Path, value: object) -> Path:
    """Write ``jsonable(value)`` as indented JSON, whole or not at all (:func:`utils.outputs.write_whole`)."""
    return write_whole(path, json.dumps(jsonable(value), indent=2) + "\n")


def jsonable(value: object) -> object:
    """``value`` with numpy scalars as Python numbers and NaN as None, ready for json.dumps."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
