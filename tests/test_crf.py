"""Tests for utils.crf and the crf_davis16.py script on small synthetic frames."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import crf_davis16
from utils import crf
from utils.metrics import jaccard

ROOT = Path(__file__).resolve().parents[1]


def synthetic_frame(seed: int, height: int = 48, width: int = 64):
    """A bright rectangle on a dark background, its clean mask and a noisy probability map."""
    rng = np.random.default_rng(seed)
    clean = np.zeros((height, width), dtype=bool)
    clean[12:36, 16 + seed:48 + seed] = True
    image = np.where(clean[..., None], 200.0, 40.0) + rng.normal(0, 10, (height, width, 3))
    prob = np.where(clean, 0.7, 0.3) + rng.uniform(-0.35, 0.35, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8), clean, np.clip(prob, 0, 1)


def test_dense_crf_cleans_noisy_map_on_non_davis_size():
    image, clean, prob = synthetic_frame(0)
    labels = crf.dense_crf(image, prob)
    assert labels.dtype == np.uint8 and labels.shape == clean.shape
    assert set(np.unique(labels)) <= {0, 1}
    before, after = jaccard(prob > 0.5, clean), jaccard(labels.astype(bool), clean)
    assert after > before + 0.2 and after > 0.9


def test_dense_crf_constant_map_and_shape_check():
    image, clean, _ = synthetic_frame(1)
    assert crf.dense_crf(image, np.zeros(clean.shape)).sum() == 0
    assert crf.dense_crf(image, np.ones(clean.shape)).all()
    with pytest.raises(ValueError):
        crf.dense_crf(image, np.zeros((10, 10)))


def test_sharpen_probability():
    out = crf.sharpen_probability(np.array([[0.2, 0.5], [0.8, 0.6]]), 1.3)
    lo, hi = 0.2**1.3, 0.8**1.3
    np.testing.assert_allclose(out, (np.array([[0.2, 0.5], [0.8, 0.6]]) ** 1.3 - lo) / (hi - lo), rtol=1e-6)
    assert crf.DenseCRFParams().iterations == 15 and crf.DenseCRFParams().power == 1.3


def write_davis(root: Path, sequences=("seq-a", "seq-b"), n_frames: int = 3) -> Path:
    """DAVIS-like root (JPEGImages/480p, Annotations/480p) plus a logits folder; returns the logits folder."""
    logits = root / "logits"
    for s, seq in enumerate(sequences):
        for f in range(n_frames):
            image, clean, prob = synthetic_frame(s + f, 32, 48)
            name = f"{f:05d}"
            for folder, array, ext in ((root / "JPEGImages" / "480p", image, "jpg"),
                                       (root / "Annotations" / "480p", clean.astype(np.uint8) * 255, "png"),
                                       (logits, (prob * 255).astype(np.uint8), "png")):
                (folder / seq).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / seq / f"{name}.{ext}", quality=95)
    return logits


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVT_")}
    return subprocess.run([sys.executable, str(ROOT / "crf_davis16.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_end_to_end(tmp_path):
    logits = write_davis(tmp_path / "DAVIS")
    out = tmp_path / "crf"
    result = run_script(str(logits), str(out), "--davis16_root", str(tmp_path / "DAVIS"), "--workers", "2")
    assert result.returncode == 0, result.stderr
    for seq in ("seq-a", "seq-b"):
        written = sorted(p.name for p in (out / seq).glob("*.png"))
        assert written == ["00000.png", "00001.png", "00002.png"]
        mask = np.asarray(Image.open(out / seq / "00001.png"))
        assert mask.shape == (32, 48) and set(np.unique(mask)) <= {0, 255}
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("before_crf", "after_crf"):
        assert {"J_mean", "F_mean", "JF_mean", "mIoU"} <= set(metrics[stage])
    assert metrics["after_crf"]["mIoU"] > metrics["before_crf"]["mIoU"]


def test_script_missing_logits_dir(tmp_path):
    missing = tmp_path / "no_such_logits"
    result = run_script(str(missing), str(tmp_path / "out"))
    assert result.returncode != 0 and str(missing) in result.stderr
    with pytest.raises(FileNotFoundError, match="no_such_logits"):
        crf_davis16.main([str(missing), str(tmp_path / "out")])


def test_script_missing_image_or_images_dir(tmp_path):
    logits = write_davis(tmp_path / "DAVIS", sequences=("seq-a",), n_frames=2)
    image = tmp_path / "DAVIS" / "JPEGImages" / "480p" / "seq-a" / "00001.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError, match="00001.jpg"):
        crf_davis16.main([str(logits), str(tmp_path / "out"), "--davis16_root", str(tmp_path / "DAVIS"),
                          "--workers", "1"])
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        crf_davis16.main([str(logits), str(tmp_path / "out"), "--images_dir", str(tmp_path / "elsewhere")])
    # the probability maps of a --video run, without DAVIS: the message says how to give the video's frames
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/480p .* For predictions of other frames \(a --video of "
                                                r"your own\), give --images_dir: .*-start_number 0"):
        crf_davis16.main([str(logits), str(tmp_path / "out"), "--davis16_root", str(tmp_path / "no_davis")])


def test_images_dir_frames_with_the_suffixes_of_video_folders_in_any_case(tmp_path):
    """--images_dir of 00000.JPG frames (as cameras name them) failed: "no RGB frame for 00000: expected
    .../00000.jpg"; the CRF takes the suffixes of a --video frame folder (datasets.video.IMAGE_SUFFIXES)."""
    logits = write_davis(tmp_path / "DAVIS", sequences=("seq-a",), n_frames=3)
    images = tmp_path / "DAVIS" / "JPEGImages" / "480p"
    frames = sorted((images / "seq-a").iterdir())
    frames[0].rename(frames[0].with_suffix(".JPG"))
    Image.open(frames[1]).save(frames[1].with_suffix(".BMP"))
    frames[1].unlink()
    Image.open(frames[2]).save(frames[2].with_suffix(".webp"))
    frames[2].unlink()
    jobs = crf.sequence_jobs(logits / "seq-a", images / "seq-a", tmp_path / "out" / "seq-a")
    assert [image.name for _, image, _ in jobs] == ["00000.JPG", "00001.BMP", "00002.webp"]
    crf_davis16.main([str(logits), str(tmp_path / "out"), "--images_dir", str(images), "--workers", "1"])
    assert sorted(p.name for p in (tmp_path / "out" / "seq-a").glob("*.png")) == ["00000.png", "00001.png",
                                                                                 "00002.png"]
    Image.open(images / "seq-a" / "00000.JPG").save(images / "seq-a" / "00000.png")  # .jpg before .png
    assert crf.sequence_jobs(logits / "seq-a", images / "seq-a", tmp_path / "o")[0][1].name == "00000.JPG"


def test_workers_are_capped_at_frames_and_cores(tmp_path, monkeypatch):
    """--workers 1000 forked 1000 processes for a handful of frames; more than frames or cores only wait."""
    logits = write_davis(tmp_path / "DAVIS", sequences=("seq-a",), n_frames=2)
    started = []
    monkeypatch.setattr(crf_davis16, "ProcessPoolExecutor", lambda max_workers, **kw: started.append(max_workers)
                        or pytest.fail("stop here"))
    monkeypatch.setattr(crf_davis16.os, "cpu_count", lambda: 8)
    with pytest.raises(pytest.fail.Exception):
        crf_davis16.main([str(logits), str(tmp_path / "out"), "--davis16_root", str(tmp_path / "DAVIS"),
                          "--workers", "1000"])
    assert started == [2]


def test_gt_dir_given_a_file_is_called_a_file(tmp_path):
    """--gt_dir naming a file said the folder "does not exist"."""
    import argparse

    notes = tmp_path / "val.txt"
    notes.write_text("blackswan\n")
    with pytest.raises(NotADirectoryError, match=r"--gt_dir .*val\.txt is a file"):
        crf_davis16.resolve_gt_dir(argparse.Namespace(gt_dir=notes))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        crf_davis16.resolve_gt_dir(argparse.Namespace(gt_dir=tmp_path / "none"))
