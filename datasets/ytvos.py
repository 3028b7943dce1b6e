"""YouTube-VOS 2019 train split as extra AVOS training clips (spec avos §4.4, §5).

Layout: ``<root>/train/JPEGImages/<video>/%05d.jpg`` and ``<root>/train/Annotations/<video>/%05d.png``
(palette PNGs, one colour index per object). As in the original:

* a video's frame list is its **annotated** frames (the sorted PNG list; YouTube-VOS annotates
  every 5th raw frame, so consecutive list positions are 5 raw frames apart);
* clip centres are list positions 0, ``step``, 2·``step``, … with ``step`` = frames per clip (6);
* every object id is foreground (the original read the palette PNG as grayscale with OpenCV and
  kept every value > 0; :meth:`datasets.video.VideoSequence.read_mask` does the same).

Videos are visited in sorted name order (the original used unsorted ``glob``), so the sample
list, and with it the shuffled order for a given seed, is the same on every machine.
"""
from __future__ import annotations

from pathlib import Path

from .path_config import dataset_root, require
from .video import Sample, VideoSequence


def ytvos_sequences(root: str | Path | None, split: str = "train") -> list[VideoSequence]:
    """Every video under ``<root>/<split>/Annotations`` with at least one PNG; frames = annotated frames."""
    root = require(dataset_root("ytvos19", root), "ytvos19")
    images = require(root / split / "JPEGImages", "ytvos19", f"{split}/JPEGImages/<video>/*.jpg")
    annotations = require(root / split / "Annotations", "ytvos19", f"{split}/Annotations/<video>/*.png")
    sequences = []
    for video in sorted(p for p in annotations.iterdir() if p.is_dir()):
        gt = sorted(video.glob("*.png"))
        if not gt:
            continue
        frames = [images / video.name / f"{p.stem}.jpg" for p in gt]
        missing = [f for f in frames if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"ytvos19: {len(missing)} annotated frames of video {video.name} have no image, e.g. {missing[0]} "
                "(set the dataset root with --ytvos19_root or MEDVT_YTVOS19_ROOT)")
        sequences.append(VideoSequence(video.name, frames, gt))
    if not sequences:
        raise FileNotFoundError(f"ytvos19: no annotated videos under {annotations} "
                                "(set the dataset root with --ytvos19_root or MEDVT_YTVOS19_ROOT)")
    return sequences


def ytvos_train_samples(root: str | Path | None, step: int = 6) -> list[Sample]:
    """(sequence, centre) pairs: list positions 0, step, 2·step, … of every annotated video."""
    if step < 1:
        raise ValueError(f"step must be ≥ 1, got {step}")
    return [(seq, c) for seq in ytvos_sequences(root) for c in range(0, seq.num_frames, step)]
