"""A video as a list of frame files (with optional masks), and clips drawn from videos.

Every AVOS loader (DAVIS-16, YouTube-VOS, YouTube-Objects, MoCA) returns
:class:`VideoSequence` objects; training wraps (sequence, centre frame) pairs in a
:class:`ClipDataset`. Every image file is read with :func:`open_image`, so a damaged file is
reported with its path; a user's folder of frames is listed with :func:`list_frame_files`
(natural order: frame2 before frame10) and checked with :func:`require_same_size`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from utils.cli import UserError
from utils.clips import wraparound_clip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The most pixels a frame, mask or label map may have: an 8K frame has 33 million. PIL's own limit
# (179 million) lets a 300 KB PNG of 10000x10000 through, which costs gigabytes once decoded,
# converted and resized; a larger image is refused from its header, before any decoding.
MAX_PIXELS = 40_000_000


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded (truncated, corrupt, not an image); names the path."""


def check_pixel_count(width: int, height: int, what: str) -> None:
    """Refuse an image or label map (``what`` names it) of more than :data:`MAX_PIXELS` pixels."""
    if width * height > MAX_PIXELS:
        raise ImageReadError(f"{what} is {width}x{height} ({width * height / 1e6:.0f} million pixels), more than "
                             f"the {MAX_PIXELS // 1_000_000} million accepted (an 8K frame has 33 million); "
                             "resize it first")


def open_image(path: str | Path, mode: str | None = None) -> Image.Image:
    """Decode ``path`` completely (converted to ``mode`` if given). PIL decodes lazily, so without
    ``load()`` here a truncated file would fail later, inside a transform, without its name."""
    try:
        with Image.open(path) as im:
            check_pixel_count(*im.size, str(path))
            im.load()
            if mode == "RGB" and im.mode.startswith("I"):  # a 16-bit grey frame: PIL's convert clips it at 255
                scaled = np.clip(np.asarray(im, dtype=np.float64) / 257, 0, 255).round().astype(np.uint8)
                return Image.fromarray(scaled).convert(mode)
            return im.convert(mode) if mode else im.copy()
    except (FileNotFoundError, ImageReadError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image (truncated or corrupt? {e})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header only (no pixel decoding); a file that is not an image is named."""
    return image_header(path)[0]


def image_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """((width, height), PIL mode) from the image header only; a file that is not an image is named."""
    try:
        with Image.open(path) as im:
            check_pixel_count(*im.size, str(path))
            return im.size, im.mode
    except (FileNotFoundError, ImageReadError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def natural_key(path: str | Path) -> list:
    """Sort key putting numbers in numeric order: frame2 < frame10 (plain sorting gives frame10 < frame2)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", Path(path).name)]


def list_frame_files(folder: str | Path, flag: str = "--video") -> list[Path]:
    """The image files of a frame folder in natural order; an error naming ``flag`` if there are none.
    Hidden files are left out: macOS writes ``._<name>.jpg`` metadata beside each frame on other disks."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                   key=natural_key)
    if not files:
        raise FileNotFoundError(f"{flag} folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} frames")
    # Outputs are named by the frame's stem: 00001.jpg and 00001.png would write one mask over the other.
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise UserError(f"{flag} folder {folder} holds {stems[f.stem].name} and {f.name}: two frames of one "
                            "name, whose outputs would overwrite each other; keep one of them")
        stems[f.stem] = f
    return files


def require_same_size(files: Sequence[str | Path], source: str) -> None:
    """Refuse frame files of different sizes (headers only, :func:`image_size`): every output would
    silently take the first frame's size."""
    sizes = [image_size(p) for p in files]
    odd = [i for i, s in enumerate(sizes) if s != sizes[0]]
    if odd:
        w, h = sizes[0]
        examples = ", ".join(f"{Path(files[i]).name} is {sizes[i][0]}x{sizes[i][1]}" for i in odd[:3])
        raise UserError(f"{source}: frames differ in size: {Path(files[0]).name} is {w}x{h} but {examples}"
                        f"{' …' if len(odd) > 3 else ''} ({len(odd)} of {len(sizes)} frames); resize them to "
                        "one size first")


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
        return open_image(self.frames[i], "RGB")

    def read_mask(self, i: int, threshold: int = 0) -> np.ndarray:
        """HxW bool: grayscale value > ``threshold`` (palette PNGs read as luminance, as OpenCV did
        in the original, so every object id becomes foreground)."""
        path = self.masks[i]
        if path is None:
            raise FileNotFoundError(f"{self.name}: frame {self.frames[i].name} has no mask")
        return np.asarray(open_image(path, "L")) > threshold


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
        images, masks = [seq.read_image(i) for i in ids], [seq.read_mask(i) for i in ids]
        for i, image, mask in zip(ids, images, masks):  # a crop would silently cut them at different places
            if mask.shape != image.size[::-1]:
                raise UserError(f"{seq.masks[i]} is {mask.shape[1]}x{mask.shape[0]} but its frame {seq.frames[i]} "
                                f"is {image.size[0]}x{image.size[1]}")
        frames, masks = self.transform(images, masks)
        return {"frames": frames, "masks": masks, "name": seq.name, "centre": centre}
