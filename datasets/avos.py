"""The AVOS training set: DAVIS-2016 train, optionally pooled with YouTube-VOS 2019 (spec §4.4).

Every annotated DAVIS frame is a clip centre; YouTube-VOS adds the annotated frames at list
positions 0, T, 2T, … of each video. The two are pooled and shuffled together by the sampler.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .davis16 import davis16_sequences, davis16_train_samples
from .transforms import TrainTransform
from .video import ClipDataset


def build_avos_train_dataset(davis_root: str | Path | None, ytvos_root: str | Path | None = None,
                             num_frames: int = 6, train_size: int = 360, transform: Callable | None = None,
                             seqs_file: str | Path | None = None) -> ClipDataset:
    davis = davis16_sequences(davis_root, "train", seqs_file, subset="--davis16_train_seqs_file")
    samples = davis16_train_samples(davis)
    if ytvos_root is not None:
        from .ytvos import ytvos_train_samples

        samples += ytvos_train_samples(ytvos_root, step=num_frames)
    return ClipDataset(samples, transform or TrainTransform(train_size), num_frames)
