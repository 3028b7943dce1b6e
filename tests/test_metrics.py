"""Hand-checked cases for utils.metrics (DAVIS J/F, statistics, folder evaluation, YouTube-Objects, MoCA)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils import metrics as M


def square(shape=(10, 10), top=2, left=2, size=4) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


# --------------------------------------------------------------------------- J
def test_jaccard_basic_cases():
    a = square()
    assert M.jaccard(a, a) == 1.0
    assert M.jaccard(a, square(top=6, left=6, size=3)) == 0.0  # disjoint
    empty = np.zeros_like(a)
    assert M.jaccard(empty, empty) == 1.0
    assert M.jaccard(empty, a) == 0.0 and M.jaccard(a, empty) == 0.0


def test_jaccard_shifted_square():
    # 4x4 squares two columns apart: overlap 4x2 = 8, union 16 + 16 - 8 = 24.
    assert M.jaccard(square(left=2), square(left=4)) == pytest.approx(8 / 24)


def test_jaccard_rejects_size_mismatch():
    with pytest.raises(ValueError):
        M.jaccard(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------- F
def test_boundary_map_is_offset_towards_origin():
    seg = np.zeros((4, 4), dtype=bool)
    seg[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(M.boundary_map(seg), expected)


def test_disk_and_tolerance():
    np.testing.assert_array_equal(M.disk(2), np.array([[0, 0, 1, 0, 0],
                                                       [0, 1, 1, 1, 0],
                                                       [1, 1, 1, 1, 1],
                                                       [0, 1, 1, 1, 0],
                                                       [0, 0, 1, 0, 0]], dtype=np.uint8))
    assert M.boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert M.boundary_tolerance((100, 100)) == 2  # ceil(0.008 * 141.4)
    assert M.boundary_tolerance((100, 100), bound_th=3) == 3


def test_f_measure_cases():
    a = square((100, 100), 30, 30, 20)
    assert M.f_measure(a, a) == 1.0
    # Tolerance is 2 px here: a one-pixel shift still matches every boundary pixel ...
    assert M.f_measure(square((100, 100), 30, 31, 20), a) == 1.0
    # ... a five-pixel shift does not.
    assert M.f_measure(square((100, 100), 30, 35, 20), a) < 0.9
    assert M.f_measure(square((100, 100), 0, 0, 5), square((100, 100), 90, 90, 5)) == 0.0
    empty = np.zeros_like(a)
    assert M.f_measure(empty, empty) == 1.0
    assert M.f_measure(empty, a) == 0.0 and M.f_measure(a, empty) == 0.0


# --------------------------------------------------------------------------- statistics
def test_db_statistics_known_lists():
    mean, recall, decay = M.db_statistics([1, 1, 1, 1, 0, 0, 0, 0])
    assert (mean, recall, decay) == pytest.approx((0.5, 0.5, 1.0))
    # Bins for 8 frames are [0:3], [2:5], [4:6], [5:8]; recall counts strictly > 0.5.
    mean, recall, decay = M.db_statistics([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)
    assert decay == pytest.approx(0.8 - 0.3)
    assert all(math.isnan(v) for v in M.db_statistics([]))


# --------------------------------------------------------------------------- folders
def save(path: Path, mask: np.ndarray, scale: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * scale).save(path)


@pytest.fixture()
def davis_like(tmp_path: Path) -> tuple[Path, Path]:
    """Sequence 'a': per-frame J = [0, 1, 1/3, 1]; sequence 'b': 3 perfect frames (0/1 PNGs)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    empty = np.zeros((10, 10), dtype=bool)
    frames_a = [(empty, square()), (square(), square()), (square(left=4), square()), (empty, empty)]
    for i, (p, g) in enumerate(frames_a):
        save(pred / "a" / f"{i:05d}.png", p)
        save(gt / "a" / f"{i:05d}.png", g)
    for i in range(3):
        save(pred / "b" / f"{i:05d}.png", square(), scale=1)
        save(gt / "b" / f"{i:05d}.png", square())
    return pred, gt


def test_evaluate_sequences(davis_like):
    pred, gt = davis_like
    res = M.evaluate_sequences(pred, gt)
    a, b = res["sequences"]["a"], res["sequences"]["b"]
    assert a["J_mean"] == pytest.approx((1 + 1 / 3) / 2)  # first and last frame dropped
    assert a["mIoU_all_frames"] == pytest.approx((0 + 1 + 1 / 3 + 1) / 4)
    assert b["J_mean"] == 1.0 and b["F_mean"] == 1.0 and b["JF_mean"] == 1.0
    assert res["J_mean"] == pytest.approx(((1 + 1 / 3) / 2 + 1) / 2)
    assert res["mIoU"] == pytest.approx(((0 + 1 + 1 / 3 + 1) / 4 + 1) / 2)
    assert res["JF_mean"] == pytest.approx((res["J_mean"] + res["F_mean"]) / 2)
    all_frames = M.evaluate_sequences(pred, gt, sequences=["a"], drop_first_last=False)
    assert all_frames["J_mean"] == pytest.approx((0 + 1 + 1 / 3 + 1) / 4)


def test_evaluate_sequences_threshold_and_missing_frame(davis_like, tmp_path):
    pred, gt = davis_like
    save(pred / "b" / "00001.png", square(), scale=127)
    assert M.evaluate_sequences(pred, gt, ["b"], threshold=127)["sequences"]["b"]["mIoU_all_frames"] < 1
    (pred / "b" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="00002.png"):
        M.evaluate_sequences(pred, gt, ["b"])


def test_write_results(davis_like, tmp_path):
    res = M.evaluate_sequences(*davis_like)
    json_path, csv_path = M.write_results(res, tmp_path / "out", "davis")
    assert json.loads(json_path.read_text())["mIoU"] == pytest.approx(res["mIoU"])
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["sequence"] for r in rows] == ["a", "b", "Overall"]
    assert float(rows[-1]["mIoU"]) == pytest.approx(res["mIoU"], abs=1e-5)


# --------------------------------------------------------------------------- YouTube-Objects
def test_youtube_objects_miou_pools_shots_per_video_then_classes():
    res = M.youtube_objects_miou({
        "cat/data/0001/shots/001": [1.0, 0.0],
        "cat/data/0001/shots/002": [1.0],
        "cat/data/0002/shots/001": [0.5],
        "dog/data/0001/shots/001": [0.2],
    })
    # cat: video 0001 pools [1, 0, 1] → 2/3, video 0002 → 0.5; classes weigh equally.
    assert res["classes"]["cat"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert res["classes"]["dog"] == pytest.approx(0.2)
    assert res["mIoU"] == pytest.approx(((2 / 3 + 0.5) / 2 + 0.2) / 2)


# --------------------------------------------------------------------------- MoCA
def moca_mask() -> np.ndarray:
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[20:40, 40:80] = 255  # box (40, 20, 80, 40) at mask size, 800 pixels
    # A thin ring: larger bounding box (3600 px) but less mask inside it (236 px), so the
    # HEAD rule (sum of mask values) must pick the block, where an area rule would not.
    mask[10:70, 100:160] = 255
    mask[11:69, 101:159] = 0
    return mask


def test_moca_box_iou_picks_most_mask_and_rescales():
    # Original frame 300x400 (HxW) for a 100x200 mask: x scales by 2, y by 3,
    # so the box becomes (80, 60, 160, 120).
    assert M.moca_box_iou(moca_mask(), (80, 60, 160, 120), (300, 400)) == pytest.approx(1.0)
    assert M.moca_box_iou(moca_mask(), (80, 60, 120, 120), (300, 400)) == pytest.approx(0.5)
    assert M.moca_box_iou(moca_mask(), (0, 0, 10, 10), (300, 400)) == 0.0


def test_moca_box_iou_inverts_border_foreground_and_handles_empty():
    inverted = 255 - moca_mask()
    assert M.moca_box_iou(inverted, (80, 60, 160, 120), (300, 400)) == pytest.approx(1.0)
    assert M.moca_box_iou(np.zeros((100, 200), np.uint8), (80, 60, 160, 120), (300, 400)) == 0.0


def test_moca_summary():
    res = M.moca_summary({"v1": [1.0, 0.55], "v2": [0.0], "v3": []})
    assert res["videos"] == pytest.approx({"v1": 0.775, "v2": 0.0})
    assert res["mean_iou"] == pytest.approx(0.3875)
    assert res["success_rates"]["0.5"] == pytest.approx(2 / 3)
    assert res["success_rates"]["0.6"] == pytest.approx(1 / 3)
    assert res["n_frames"] == 3
