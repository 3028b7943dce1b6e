"""A small synthetic video set in the DAVIS-2016 on-disk format (tests and ``make demo``).

Each sequence shows one textured object (a wobbly ellipse filled with saturated stripes) moving
and slowly turning over a textured, panning, low-saturation background. Everything is drawn from
``numpy.random.default_rng(seed)``, so the same seed writes the same files. The layout is the real
one, so the real loaders read it::

    <root>/JPEGImages/480p/<seq>/00000.jpg …
    <root>/Annotations/480p/<seq>/00000.png …   (0 / 255)
    <root>/ImageSets/2016/train.txt, val.txt     (one sequence name per line)
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _smooth_texture(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency colour noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, max(2, cells * w // h), channels)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A grey-ish textured canvas twice the frame size (the frames pan across it), uint8 RGB."""
    base = _smooth_texture(rng, 2 * h, 2 * w, cells=6)
    grey = base.mean(-1, keepdims=True)
    tint = rng.uniform(0.7, 1.0, size=3).astype(np.float32)
    img = 0.75 * grey * tint + 0.25 * base  # low saturation
    img += 0.06 * rng.standard_normal(img.shape[:2] + (1,)).astype(np.float32)  # fine grain
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _object_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Saturated stripes in two random hues, uint8 RGB."""
    hues = rng.uniform(0, 180, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 10)
    stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)
    hsv = np.zeros((h, w, 3), np.uint8)
    hsv[..., 0] = np.where(stripes, hues[0], hues[1]).astype(np.uint8)
    hsv[..., 1] = 220
    hsv[..., 2] = np.where(stripes, 230, 150).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _object_mask(h: int, w: int, centre: tuple[float, float], radii: tuple[float, float], angle: float,
                 wobble: np.ndarray) -> np.ndarray:
    """A rotated ellipse whose radius varies smoothly with the polar angle (bool HxW)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    theta = np.arctan2(v, u)
    scale = 1 + sum(a * np.cos((k + 2) * theta + p) for k, (a, p) in enumerate(wobble))
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= scale ** 2


def make_sequence(rng: np.random.Generator, num_frames: int, h: int, w: int,
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (uint8 RGB) and masks (bool) of one synthetic video."""
    canvas = _background(rng, h, w)
    texture = _object_texture(rng, 2 * h, 2 * w)
    r = min(h, w)
    radii = (rng.uniform(0.22, 0.34) * r, rng.uniform(0.15, 0.26) * r)
    wobble = np.stack([rng.uniform(0, 0.12, size=3), rng.uniform(0, 2 * np.pi, size=3)], axis=1)
    start = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h])
    velocity = rng.uniform(-1, 1, size=2) * r * 0.03
    pan = rng.uniform(-1, 1, size=2) * r * 0.02
    angle0, spin = rng.uniform(0, np.pi), rng.uniform(-0.08, 0.08)
    frames, masks = [], []
    for t in range(num_frames):
        pos = start + velocity * t + np.array([0.08 * w, 0.06 * h]) * np.sin(0.4 * t + np.array([0.0, 1.3]))
        pos = np.clip(pos, [0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
        oy, ox = (int(round(h / 2 + pan[1] * t)) % h, int(round(w / 2 + pan[0] * t)) % w)
        frame = canvas[oy:oy + h, ox:ox + w].copy()
        mask = _object_mask(h, w, tuple(pos), radii, angle0 + spin * t, wobble)
        ty, tx = (t * 2) % h, (t * 3) % w  # the object's texture slides a little too
        frame[mask] = texture[ty:ty + h, tx:tx + w][mask]
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def make_synthetic_davis(root: str | Path, num_train: int = 4, num_val: int = 2, num_frames: int = 12,
                         size_hw: tuple[int, int] = (96, 160), seed: int = 0) -> Path:
    """Write the synthetic set under ``root`` (DAVIS-2016 layout) and return ``root``."""
    root = Path(root)
    h, w = size_hw
    splits = {"train": [f"synth-train-{i:02d}" for i in range(num_train)],
              "val": [f"synth-val-{i:02d}" for i in range(num_val)]}
    (root / "ImageSets" / "2016").mkdir(parents=True, exist_ok=True)
    for k, (split, names) in enumerate(splits.items()):
        (root / "ImageSets" / "2016" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, k, i])
            frames, masks = make_sequence(rng, num_frames, h, w)
            img_dir = root / "JPEGImages" / "480p" / name
            gt_dir = root / "Annotations" / "480p" / name
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for t, (frame, mask) in enumerate(zip(frames, masks)):
                Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg", quality=92)
                Image.fromarray(mask.astype(np.uint8) * 255).save(gt_dir / f"{t:05d}.png")
    return root
