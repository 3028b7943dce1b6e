"""A video as a list of frame files (with optional masks), and clips drawn from videos.

Every AVOS loader (DAVIS-16, YouTube-VOS, YouTube-Objects, MoCA) returns
:class:`VideoSequence` objects; training wraps (sequence, centre frame) pairs in a
:class:`ClipDataset`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from models.predictor import wraparound_clip


@dataclass
class VideoSequence:
    """One video: ``frames[i]`` is an image file, ``masks[i]`` its annotation file or None."""

    name: str
    frames: list[Path]
    masks: list[Path | None] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.masks:
            self.masks = [None] * len(self.frames)
        if len(self.masks) != len(self.frames):
            raise ValueError(f"{self.name}: {len(self.frames)} frames but {len(self.masks)} mask entries")

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def read_image(self, i: int) -> Image.Image:
        return Image.open(self.frames[i]).convert("RGB")

    def read_mask(self, i: int, threshold: int = 0) -> np.ndarray:
        """HxW bool: grayscale value > ``threshold`` (palette PNGs read as luminance, as OpenCV did
        in the original, so every object id becomes foreground)."""
        path = self.masks[i]
        if path is None:
            raise FileNotFoundError(f"{self.name}: frame {self.frames[i].name} has no mask")
        return np.asarray(Image.open(path).convert("L")) > threshold


Sample = tuple[VideoSequence, int]


class ClipDataset(Dataset):
    """Training clips: ``num_frames`` list positions around a centre, wrapping at the ends (spec §4.4).

    Item: ``frames`` [T, 3, H, W] normalised, ``masks`` [T, H, W] float 0/1, ``name`` (sequence),
    ``centre`` (frame index of the centre).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, num_frames: int = 6) -> None:
        if not samples:
            raise ValueError("no training samples (empty dataset)")
        self.samples = list(samples)
        self.transform = transform
        self.num_frames = num_frames

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        seq, centre = self.samples[index]
        ids = wraparound_clip(centre, seq.num_frames, self.num_frames)
        frames, masks = self.transform([seq.read_image(i) for i in ids], [seq.read_mask(i) for i in ids])
        return {"frames": frames, "masks": masks, "name": seq.name, "centre": centre}
