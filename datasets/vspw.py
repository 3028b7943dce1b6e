"""VSPW (Video Scene Parsing in the Wild) for video semantic segmentation.

On disk (the 480p release; the full-size release has the same layout)::

    <root>/train.txt, val.txt, test.txt       one video name per line
    <root>/data/<video>/origin/<frame>.jpg    every frame
    <root>/data/<video>/mask/<frame>.png      labels (mode L or P), same stem; none for the test split

Raw mask values are 0-124 and 255: 0 = "others" and 255 = void are both ignored, so classes are
``raw - 1`` in 0..123 with 255 = ignore (the dataset README's recipe, :func:`raw_to_class`). A model of
K classes (``--num_classes``) reads raw labels 1..K; any other value but 0 and 255 is refused
(:func:`check_raw_labels`), not read as void.

Training clips (:class:`VSPWClips`) follow the AVOS loaders (spec avos §4.4): clip centres at
positions 0, s, 2s, … of every video (s = ``centre_step``, default the clip length, as for
YouTube-VOS), a clip = T frames around its centre. Unlike AVOS the window is kept inside the video
(shifted at the ends, wrapping only when the video is shorter than the clip): every VSPW frame is
annotated and supervised, and a clip that jumps from the last frame to the first would teach a
false temporal continuity.
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from utils.cli import UserError
from utils.clips import clamped_clip

from .path_config import check_listed_name, check_listed_once, dataset_root, read_text_file, require
from .transforms import IGNORE_INDEX, to_tensor
from .video import VideoSequence, image_size, list_frame_files, open_image, require_same_size

NUM_CLASSES = 124
RAW_VOID = 255  # the raw "void" value of a mask; raw 0 ("others") is ignored as well


def vspw_root(override: str | os.PathLike | None = None) -> Path:
    """The checked VSPW root (``--vspw_root`` / ``MEDVT_VSPW_ROOT`` / ``$MEDVT_DATA_ROOT/VSPW``)."""
    root = require(dataset_root("vspw", override), "vspw")
    require(root / "data", "vspw", "the data/<video>/origin and data/<video>/mask folders")
    return root


def read_split(root: Path, split: str) -> list[str]:
    """Video names listed in ``<root>/<split>.txt`` (blank lines skipped)."""
    path = require(root / f"{split}.txt", "vspw", f"the {split} split list, one video name per line", is_file=True)
    first: dict[str, int] = {}
    for n, line in enumerate(read_text_file(path, "vspw: split list").splitlines(), 1):
        if line.strip():
            check_listed_once(first, check_listed_name(line.strip(), f"vspw: {path} line {n}"), n, f"vspw: {path}")
    names = list(first)
    if not names:
        raise UserError(f"vspw: split list {path} names no video")
    return names


def vspw_sequences(root: Path, split: str, need_masks: bool | None = None,
                   one_size: bool = True) -> list[VideoSequence]:
    """Every video of ``split`` as a :class:`VideoSequence` (frames in natural name order, mask per frame or None).

    ``need_masks`` (default: every split but ``test``) makes a video with a frame without its mask an error
    naming them (:func:`require_all_masks`), and reads the header of every mask file (:func:`image_size`, no
    decoding), so a damaged mask is named now, before training or evaluation starts, not when it is first
    read (after an epoch, for the validation split). Without ``need_masks`` a missing mask is None.
    ``one_size``: the frames of a video must have one size, and (with ``need_masks``) its masks too
    (evaluation predicts at their size); training clips are checked when read instead (:class:`VSPWClips`), so a
    bad frame or mask costs only its clips.
    """
    need_masks = split != "test" if need_masks is None else need_masks
    videos = []
    for name in read_split(root, split):
        frame_dir = require(root / "data" / name / "origin", "vspw", f"frames of video {name} listed in {split}.txt")
        # As a --video folder is listed: 2.jpg before 10.jpg (a text sort would shuffle the clips), and two
        # files of one frame name (00000003.jpg and .png) refused rather than both joining the video.
        frames = list_frame_files(frame_dir, f"vspw: video {name}")
        if one_size:  # headers only; else the frame would be found (and the run stopped) when its video comes up
            require_same_size(frames, f"vspw: video {name}")
        mask_dir = root / "data" / name / "mask"
        if need_masks:
            require(mask_dir, "vspw", f"masks of video {name} (split {split})")
        masks = [m if m.is_file() else None for m in (mask_dir / f"{p.stem}.png" for p in frames)]
        video = VideoSequence(name, frames, masks)
        if need_masks:
            require_all_masks(video, mask_dir)
            first = None
            for m in masks:
                size = image_size(m)  # raises ImageReadError naming the file
                first = first or (m, size)
                # Evaluation predicts a video at its masks' size: masks of two sizes would fail there.
                if one_size and size != first[1]:
                    raise UserError(f"vspw: mask {m} is {size[0]}x{size[1]} but mask {first[0].name} of the same "
                                    f"video {name} is {first[1][0]}x{first[1][1]}; all masks of a video "
                                    "must have one size")
        videos.append(video)
    return videos


def require_all_masks(video: VideoSequence, mask_dir: Path) -> None:
    """Refuse a video some of whose frames have no mask in ``mask_dir``: as all void they would drop out
    of the loss and the scores without a word, while the results still count every frame (as the DAVIS
    loader refuses a frame without annotation)."""
    missing = [f"{frame.stem}.png" for frame, mask in zip(video.frames, video.masks) if mask is None]
    if missing:
        raise FileNotFoundError(f"vspw: {len(missing)} of {video.num_frames} frames of video {video.name} have no "
                                f"mask in {mask_dir}, e.g. {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''} "
                                "(an incomplete copy of the dataset?)")


def check_raw_labels(raw: np.ndarray, num_classes: int, video: str, path: Path | None) -> None:
    """Refuse a raw label of mask ``path`` that is no class of the model (1..K) nor "others" (0) nor void:
    read as void, a 150-class copy's labels 125..150 silently left the loss and the scores."""
    raw = np.asarray(raw)
    bad = raw[(raw > num_classes) & (raw != RAW_VOID)]
    if bad.size:
        r = int(bad.max())
        raise UserError(f"VSPW video {video}: its masks hold class id {r - 1} (raw label {r}), but the model has "
                        f"{num_classes} classes (raw labels 1..{num_classes}; 0 and {RAW_VOID} are ignored), e.g. "
                        f"mask {path}; check --num_classes (VSPW has {NUM_CLASSES}) or the masks")


def raw_to_class(raw: np.ndarray, num_classes: int | None = NUM_CLASSES) -> np.ndarray:
    """Raw VSPW labels (0 others, 1..K classes, 255 void) → classes 0..K-1, 255 = ignore (uint8), for a
    model of K = ``num_classes`` classes (VSPW's 124 by default). A label above K is ignored too: refuse
    it first with :func:`check_raw_labels`. None: every label 1..254 is a class (for a caller whose loss
    checks the class count, :class:`vss.losses.VSSCriterion`)."""
    raw = np.asarray(raw)
    out = raw.astype(np.int16) - 1
    ignored = (raw == 0) | (raw == RAW_VOID)
    if num_classes is not None:
        ignored |= out >= num_classes
    out[ignored] = IGNORE_INDEX
    return out.astype(np.uint8)


def read_raw_mask(path: Path | None, size_hw: tuple[int, int]) -> np.ndarray:
    """The raw mask as uint8 HxW (pixel values = labels); a missing mask is all void (255)."""
    if path is None:
        return np.full(size_hw, IGNORE_INDEX, dtype=np.uint8)
    mask = np.asarray(open_image(path))  # L and P modes both give the label values
    if mask.ndim == 3:  # saved as RGB by some tool: the label is in every channel
        # unless it is a colour rendering of the labels, whose red channel is no label (it read as {0, 128}:
        # every pixel ignored and a mIoU of nan, without an error)
        if mask.shape[-1] >= 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                        and np.array_equal(mask[..., 0], mask[..., 2])):
            raise UserError(f"vspw: mask {path} is a colour image (its R, G and B channels differ): labels are "
                            "the pixel values of a grey or palette PNG (mode L or P), not colours")
        mask = mask[..., 0]
    return mask.astype(np.uint8)


def resized_hw(h: int, w: int, short: int | None, max_size: int | None = None) -> tuple[int, int]:
    """Size with the shorter side ``short`` (None = unchanged), the longer capped at ``max_size``."""
    if not short:
        return h, w
    scale = short / min(h, w)
    if max_size and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


class VSPWTrainTransform:
    """One random geometry per clip, the same for every frame.

    Shorter side → a random choice of ``train_sizes`` (longer side ≤ ``max_size``), horizontal flip
    with p ``hflip``, then a random ``crop_hw`` crop; a smaller image is padded first (frames with 0,
    the mean colour after normalisation; labels with 255). A fixed crop makes clips batchable and
    keeps both sides multiples of 32 for the Swin backbone. Frames bilinear, labels nearest.

    ``__call__(images: list[PIL RGB], labels: list[uint8 HxW class ids])`` →
    (frames [T, 3, H, W] normalised float, labels [T, H, W] long with 255 = ignore).
    """

    def __init__(self, train_sizes: Sequence[int] = (360,), max_size: int | None = 648,
                 crop_hw: tuple[int, int] | None = (352, 640), hflip: float = 0.5, seed: int | None = None) -> None:
        self.train_sizes, self.max_size, self.crop_hw, self.hflip = tuple(train_sizes), max_size, crop_hw, hflip
        # The global ``random`` by default: DataLoader workers seed it, checkpoints capture it.
        self.rng = random.Random(seed) if seed is not None else random

    def __call__(self, images: list[Image.Image], labels: list[np.ndarray]) -> tuple[Tensor, Tensor]:
        w0, h0 = images[0].size
        h, w = resized_hw(h0, w0, self.rng.choice(self.train_sizes), self.max_size)
        flip = self.rng.random() < self.hflip
        frames, masks = [], []
        for img, lab in zip(images, labels):
            img = img.convert("RGB").resize((w, h), Image.BILINEAR) if img.size != (w, h) else img.convert("RGB")
            lab = Image.fromarray(np.asarray(lab, dtype=np.uint8))
            lab = lab.resize((w, h), Image.NEAREST) if lab.size != (w, h) else lab
            if flip:
                img, lab = img.transpose(Image.FLIP_LEFT_RIGHT), lab.transpose(Image.FLIP_LEFT_RIGHT)
            frames.append(to_tensor(img))
            masks.append(torch.from_numpy(np.array(lab, dtype=np.int64)))
        return self._crop(torch.stack(frames), torch.stack(masks))

    def _crop(self, frames: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        if self.crop_hw is None:
            return frames, masks
        ch, cw = self.crop_hw
        h, w = masks.shape[-2:]
        if h < ch or w < cw:
            pad = (0, max(cw - w, 0), 0, max(ch - h, 0))
            frames = F.pad(frames, pad, value=0.0)
            masks = F.pad(masks, pad, value=IGNORE_INDEX)
            h, w = masks.shape[-2:]
        y, x = self.rng.randint(0, h - ch), self.rng.randint(0, w - cw)
        return frames[..., y:y + ch, x:x + cw], masks[..., y:y + ch, x:x + cw]


class VSPWClips(Dataset):
    """Training clips of annotated VSPW videos.

    Item: ``frames`` [T, 3, H, W] normalised, ``masks`` [T, H, W] long (classes 0..K-1, 255 ignore),
    ``name`` (video), ``centre`` (frame index of the clip centre).

    ``num_classes``: the model's K; a mask holding a raw label above it is refused naming the file
    (:func:`check_raw_labels`). None keeps every raw label 1..254 as a class, for the loss to refuse
    one the model has not (:class:`vss.losses.VSSCriterion`, which cannot name the file).
    """

    def __init__(self, sequences: Sequence[VideoSequence], transform, num_frames: int = 6,
                 centre_step: int | None = None, frame_stride: int = 1, num_classes: int | None = None) -> None:
        if not sequences:
            raise ValueError("vspw: no training videos")
        self.sequences, self.transform, self.num_classes = list(sequences), transform, num_classes
        self.num_frames, self.frame_stride = num_frames, frame_stride
        step = centre_step or num_frames
        self.samples = [(v, c) for v, seq in enumerate(self.sequences) for c in range(0, seq.num_frames, step)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        v, centre = self.samples[index]
        seq = self.sequences[v]
        ids = clamped_clip(seq.num_frames, centre, self.num_frames, self.frame_stride)
        images = [seq.read_image(i) for i in ids]
        size_hw = images[0].size[::-1]
        raw = [read_raw_mask(seq.masks[i], size_hw) for i in ids]
        for i, image, mask in zip(ids, images, raw):  # a crop would silently cut them at different places
            if mask.shape != image.size[::-1]:
                raise UserError(f"{seq.masks[i]} is {mask.shape[1]}x{mask.shape[0]} but its frame {seq.frames[i]} "
                                f"is {image.size[0]}x{image.size[1]}; a mask must have its frame's size")
        if self.num_classes is not None:
            for i, mask in zip(ids, raw):
                check_raw_labels(mask, self.num_classes, seq.name, seq.masks[i])
        labels = [raw_to_class(m, self.num_classes) for m in raw]
        frames, masks = self.transform(images, labels)
        return {"frames": frames, "masks": masks, "name": seq.name, "centre": centre}


def build_vspw_train_dataset(root: str | os.PathLike | None = None, split: str = "train", num_frames: int = 6,
                             centre_step: int | None = None, frame_stride: int = 1,
                             transform: VSPWTrainTransform | None = None,
                             num_classes: int | None = None) -> VSPWClips:
    """Clips of ``split`` (default ``train``) under the resolved VSPW root, for a model of ``num_classes``
    classes (:class:`VSPWClips`)."""
    seqs = vspw_sequences(vspw_root(root), split, need_masks=True, one_size=False)
    return VSPWClips(seqs, transform or VSPWTrainTransform(), num_frames, centre_step, frame_stride, num_classes)
