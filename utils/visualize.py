"""Overlays of predicted masks on frames, and videos/GIFs of them."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# One colour per class id (1-based); the binary task uses the first.
PALETTE = np.array([[255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 40], [200, 80, 255], [40, 220, 220]],
                   dtype=np.uint8)


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """frame HxWx3 uint8 RGB, mask HxW (bool or class ids) → HxWx3 uint8 with coloured mask and contours."""
    out = frame.astype(np.float32).copy()
    labels = mask.astype(np.int64)
    for k in np.unique(labels):
        if k == 0:
            continue
        color = PALETTE[(k - 1) % len(PALETTE)].astype(np.float32)
        sel = labels == k
        out[sel] = (1 - alpha) * out[sel] + alpha * color
    out = out.clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((labels > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write RGB uint8 frames as .mp4 (OpenCV) or .gif (Pillow), by the path's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError("no frames to write")
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path
