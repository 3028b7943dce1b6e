"""Image and mask transforms of the AVOS pipeline (spec avos §4.4 training, §5 test).

Frames travel as PIL RGB images and masks as boolean HxW arrays until the last step, which
returns tensors: frames ``[T, 3, H, W]`` ImageNet-normalised, masks ``[T, H, W]`` float 0/1.
Geometric steps draw one random value per clip (all frames move together); the photometric
distortion draws independently per frame, as the original does.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .video import open_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255  # label of void / unsupervised pixels in the multi-class loaders (A2D, VSPW)


def test_size(h: int, w: int, short: int, max_ratio: float = 1.8) -> tuple[int, int]:
    """(h, w) after resizing the shorter side to ``short`` with the longer side capped at
    ``int(max_ratio * short)`` — torchvision's (DETR's) ``get_size`` rule the original uses."""
    max_size = int(max_ratio * short) if max_ratio else None
    lo, hi = min(h, w), max(h, w)
    if max_size is not None and hi / lo * short > max_size:
        short = int(round(max_size * lo / hi))
    if lo == short:
        return h, w
    if w < h:
        return int(short * h / w), short
    return short, int(short * w / h)


test_size.__test__ = False  # a size rule, not a pytest test (test files import it by name)


def to_tensor(image: Image.Image) -> Tensor:
    """PIL RGB → [3, H, W] float, ImageNet-normalised."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(frames: Tensor) -> np.ndarray:
    """[..., 3, H, W] normalised → [..., H, W, 3] uint8 RGB (for overlays)."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(3, 1, 1)
    x = (frames * std + mean).clamp(0, 1) * 255
    return x.round().byte().movedim(-3, -1).cpu().numpy()


def load_frames(paths: Sequence[str | Path], size_hw: tuple[int, int] | None = None) -> Tensor:
    """Read frames → [N, 3, h, w] normalised; resized (PIL bilinear) to ``size_hw`` if given."""
    out = []
    for p in paths:
        img = open_image(p, "RGB")
        if size_hw is not None and img.size != (size_hw[1], size_hw[0]):
            img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
        out.append(to_tensor(img))
    return torch.stack(out)


# ------------------------------------------------------------------------------------ training
Clip = tuple[list[Image.Image], list[np.ndarray]]


def _resize(clip: Clip, size_hw: tuple[int, int]) -> Clip:
    images, masks = clip
    h, w = size_hw
    images = [im.resize((w, h), Image.BILINEAR) for im in images]
    masks = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0 for m in masks]
    return images, masks


def _resize_short(clip: Clip, short: int, max_size: int | None) -> Clip:
    w, h = clip[0][0].size
    ratio = max_size / short if max_size else 0
    return _resize(clip, test_size(h, w, short, ratio))


def photometric_distort(image: np.ndarray, rng) -> np.ndarray:
    """SSD-style colour jitter of one HxWx3 float32 image in [0, 255] (spec §4.4 step 3).

    As the original, the HSV conversion treats the RGB array as BGR (this changes which hue the
    jitter rotates, not its statistics). Unlike the original, values are clipped to [0, 255]
    instead of wrapping around in the uint8 cast.
    """
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x = x + rng.uniform(-32, 32)

    def contrast(x):
        return x * rng.uniform(0.5, 1.5) if rng.random() < 0.5 else x

    def hsv_jitter(x):
        hsv = cv2.cvtColor(np.clip(x, 0, 255), cv2.COLOR_BGR2HSV)
        if rng.random() < 0.5:
            hsv[..., 1] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.5:
            hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18)) % 360
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    x = hsv_jitter(contrast(x)) if rng.random() < 0.5 else contrast(hsv_jitter(x))
    if rng.random() < 0.5:
        x = x[..., list(rng.sample(range(3), 3))]
    return np.clip(x, 0, 255)


class TrainTransform:
    """The original training augmentation (spec §4.4), one random geometry per clip.

    1. horizontal flip (p 0.5); 2. shorter side → one of ``resize1`` (longer ≤ ``resize1_max``);
    3. photometric distortion per frame; 4. shorter side → one of ``resize2``; 5. random crop of
    width and height drawn in [crop_min, min(side, crop_max)]; 6. shorter side → ``train_size``
    (longer ≤ max_ratio·train_size); 7. tensors. Defaults are the original's numbers.
    """

    def __init__(self, train_size: int = 360, max_ratio: float = 1.8,
                 resize1: Sequence[int] = tuple(range(480, 801, 32)), resize1_max: int = 800,
                 resize2: Sequence[int] = (500, 600, 700), crop: tuple[int, int] = (473, 750),
                 seed: int | None = None) -> None:
        self.train_size, self.max_ratio = train_size, max_ratio
        self.resize1, self.resize1_max = tuple(resize1), resize1_max
        self.resize2, self.crop = tuple(resize2), crop
        # Without a seed, draw from the global ``random`` module: DataLoader workers seed it per
        # worker, and training checkpoints capture it, so augmentation resumes exactly.
        self.rng = random.Random(seed) if seed is not None else random

    @classmethod
    def small(cls, train_size: int, seed: int | None = None) -> TrainTransform:
        """The same steps with every size scaled by train_size / 360 (tests, the CPU demo)."""
        s = train_size / 360
        sizes = lambda xs: tuple(max(8, int(round(x * s))) for x in xs)  # noqa: E731
        return cls(train_size, resize1=sizes(range(480, 801, 32)), resize1_max=int(800 * s),
                   resize2=sizes((500, 600, 700)), crop=sizes((473, 750)), seed=seed)

    def __call__(self, images: list[Image.Image], masks: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        rng = self.rng
        clip: Clip = ([im.convert("RGB") for im in images], [np.asarray(m, dtype=bool) for m in masks])
        if rng.random() < 0.5:
            clip = ([im.transpose(Image.FLIP_LEFT_RIGHT) for im in clip[0]], [m[:, ::-1] for m in clip[1]])
        clip = _resize_short(clip, rng.choice(self.resize1), self.resize1_max)
        clip = ([Image.fromarray(photometric_distort(np.asarray(im, dtype=np.float32), rng).astype(np.uint8))
                 for im in clip[0]], clip[1])
        clip = _resize_short(clip, rng.choice(self.resize2), None)
        clip = self._random_crop(clip)
        clip = _resize_short(clip, self.train_size, int(self.max_ratio * self.train_size))
        frames = torch.stack([to_tensor(im) for im in clip[0]])
        target = torch.from_numpy(np.stack(clip[1]).astype(np.float32))
        return frames, target

    def _random_crop(self, clip: Clip) -> Clip:
        w, h = clip[0][0].size
        lo, hi = self.crop
        cw = self.rng.randint(min(lo, w), min(w, hi))
        ch = self.rng.randint(min(lo, h), min(h, hi))
        x0, y0 = self.rng.randint(0, w - cw), self.rng.randint(0, h - ch)
        images = [im.crop((x0, y0, x0 + cw, y0 + ch)) for im in clip[0]]
        masks = [m[y0:y0 + ch, x0:x0 + cw] for m in clip[1]]
        return images, masks
