"""Fully connected CRF refinement of foreground probabilities (DAVIS-16 post-processing).

Implements spec §7 (the original's ``avos/crf_davis16.py``) on top of ``pydensecrf``:
p ← p^1.3, min-max normalised per frame; unary = −log of [1 − p, p] clipped to [1e-5, 1];
a Gaussian and a bilateral pairwise term; 15 mean-field iterations; label = argmax.
Unlike the original, the CRF grid takes its size from the image rather than 854x480.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
from PIL import Image
from pydensecrf.utils import unary_from_softmax

from datasets.video import IMAGE_SUFFIXES, image_header, image_size, open_image
from utils.cli import UserError
from utils.outputs import writing


@dataclass(frozen=True)
class DenseCRFParams:
    """CRF settings for DAVIS-16.

    Values from MED-VT's ``avos/crf_davis16.py`` (commit 555a462; identical in HEAD's
    ``apply_crf_davis16.py``), which credits MSiam/motion_adaptation ``crf/crf_davis.py``.
    Both pairwise terms use pydensecrf's defaults: diagonal kernel, symmetric normalisation.
    """

    power: float = 1.3
    gaussian_sxy: float = 0.220880737269
    gaussian_compat: float = 1.24845093352
    bilateral_sxy: float = 22.3761305044
    bilateral_srgb: float = 7.70254062277
    bilateral_compat: float = 1.40326787165
    iterations: int = 15


def sharpen_probability(prob: np.ndarray, power: float) -> np.ndarray:
    """p^power, min-max normalised to [0, 1] over the frame.

    Deviation: when the frame is constant (max == min) the original divides 0 by 0 and feeds
    NaNs to the CRF; here the un-normalised p^power is returned, so an all-background
    (all-foreground) map stays background (foreground).
    """
    # float32 power as the original (PNG / 255.0 in float32), then float64 arithmetic.
    sharpened = np.power(np.asarray(prob, dtype=np.float32), np.float32(power))
    low, high = sharpened.min(), sharpened.max()
    if high == low:
        return sharpened.astype(np.float64)
    return (sharpened.astype(np.float64) - low) / (high - low)


def dense_crf(image_rgb: np.ndarray, prob: np.ndarray, params: DenseCRFParams = DenseCRFParams()) -> np.ndarray:
    """Refine one frame: ``image_rgb`` uint8 HxWx3, ``prob`` HxW in [0, 1] → HxW uint8 labels 0/1."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3, got {image_rgb.dtype} {image_rgb.shape}")
    height, width = image_rgb.shape[:2]
    prob = np.asarray(prob)
    if prob.shape != (height, width):
        raise ValueError(f"probability map {prob.shape} does not match image {(height, width)}")
    fg = sharpen_probability(prob, params.power)
    softmax = np.ascontiguousarray(np.stack([1.0 - fg, fg]))
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(unary_from_softmax(softmax, scale=1.0))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat,
                            kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    # pydensecrf takes a writable C-contiguous buffer; PIL-backed arrays are read-only.
    rgb = np.require(image_rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=rgb,
                             compat=params.bilateral_compat, kernel=dcrf.DIAG_KERNEL,
                             normalization=dcrf.NORMALIZE_SYMMETRIC)
    marginals = np.asarray(crf.inference(params.iterations))
    return np.argmax(marginals, axis=0).reshape(height, width).astype(np.uint8)


# --------------------------------------------------------------------------- files
def rgb_frames(images_seq_dir: Path) -> dict[str, Path]:
    """The RGB frames of one sequence folder by stem, with the suffixes a --video frame folder takes
    (:data:`datasets.video.IMAGE_SUFFIXES`) in any case, so that 00000.JPG is found; of two frames of
    one stem, the suffix listed first wins (.jpg before .png). Empty if the folder does not exist."""
    if not images_seq_dir.is_dir():
        return {}
    files = [p for p in images_seq_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    frames: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name)):  # same order every run
        frames.setdefault(p.stem, p)
    return frames


def sequence_jobs(logits_seq_dir: Path, images_seq_dir: Path, out_seq_dir: Path) -> list[tuple[Path, Path, Path]]:
    """(probability PNG, RGB frame, output PNG) for each frame of one sequence folder."""
    logits_seq_dir, images_seq_dir, out_seq_dir = Path(logits_seq_dir), Path(images_seq_dir), Path(out_seq_dir)
    if not logits_seq_dir.is_dir():
        raise FileNotFoundError(f"logits folder {logits_seq_dir} does not exist")
    frames = rgb_frames(images_seq_dir)  # listed once: a lookup per frame would read the folder per frame
    jobs = []
    for png in sorted(logits_seq_dir.glob("*.png")):
        if png.stem not in frames:
            raise FileNotFoundError(f"no RGB frame for {png.stem}: expected {images_seq_dir / png.stem}.jpg (or "
                                    f"{'/'.join(IMAGE_SUFFIXES[1:])}, in any case)")
        jobs.append((png, frames[png.stem], out_seq_dir / png.name))
    return jobs


# PIL modes of 8-bit images: the probability·255 PNGs inference writes are "L".
EIGHT_BIT_MODES = ("L", "LA", "P", "RGB", "RGBA")


def check_jobs(jobs: list[tuple[Path, Path, Path]]) -> None:
    """Check every job's inputs before any output is written: both files readable images (headers
    only, so this is quick) of the same size, the probability map an 8-bit one."""
    for logits_path, image_path, _ in jobs:
        (prob_size, mode), rgb_size = image_header(logits_path), image_size(image_path)
        if prob_size != rgb_size:
            raise UserError(f"{logits_path} is {prob_size[0]}x{prob_size[1]} but {image_path} "
                            f"is {rgb_size[0]}x{rgb_size[1]}")
        if mode not in EIGHT_BIT_MODES:  # a 16-bit map read as probability·255 gave values up to 257
            raise UserError(f"{logits_path} is a {mode!r} image, not an 8-bit probability·255 PNG as inference "
                            "writes (logits/<seq>/<frame>.png)")


def read_probability(path: Path) -> np.ndarray:
    """Probability map from a uint8 probability·255 PNG."""
    array = np.asarray(open_image(path))
    if array.ndim == 3:
        array = array[..., 0]
    return array.astype(np.float32) / 255.0


def refine_frame(job: tuple[Path, Path, Path], params: DenseCRFParams = DenseCRFParams()) -> Path:
    """Run the CRF on one (probability PNG, image, output) job and write a 0/255 PNG."""
    logits_path, image_path, out_path = job
    image = np.asarray(open_image(image_path, "RGB"))
    prob = read_probability(logits_path)
    if prob.shape != image.shape[:2]:
        raise UserError(f"{logits_path} is {prob.shape[1]}x{prob.shape[0]} but {image_path} "
                         f"is {image.shape[1]}x{image.shape[0]}")
    labels = dense_crf(image, prob, params)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with writing(out_path):
        Image.fromarray(labels * 255).save(out_path)
    return out_path


def run_jobs(jobs: list[tuple[Path, Path, Path]], params: DenseCRFParams = DenseCRFParams(),
             executor: Executor | None = None, chunksize: int = 1) -> Iterator[Path]:
    """Refine ``jobs`` in order, in this process or on ``executor``; yields each output path."""
    if executor is None:
        return (refine_frame(job, params) for job in jobs)
    return executor.map(refine_frame, jobs, repeat(params, len(jobs)), chunksize=chunksize)

