"""DAVIS-2016: ``JPEGImages/480p/<seq>/%05d.jpg`` and ``Annotations/480p/<seq>/%05d.png`` (0/255).

Which sequences form a split comes from, first match wins: an explicit list file (one name per
line, the original's format), ``ImageSets/2016/<split>.txt`` (DAVIS-2017 release),
``ImageSets/480p/<split>.txt`` (DAVIS-2016 release, lines ``/JPEGImages/480p/<seq>/… /Annotations/…``),
else the standard 30 train / 20 val names below. A sequence's frames are its annotated frames
(the sorted annotation list), as the original reads them.
"""
from __future__ import annotations

from collections.abc import Collection
import os
from pathlib import Path

from utils.cli import UserError

from .path_config import DatasetNotFoundError, check_listed_name, dataset_root, read_text_file, require
from .video import Sample, VideoSequence

DAVIS16_SPLITS = {
    "train": ("bear bmx-bumps boat breakdance-flare bus car-turn dance-jump dog-agility drift-turn elephant "
              "flamingo hike hockey horsejump-low kite-walk lucia mallard-fly mallard-water motocross-bumps "
              "motorbike paragliding rhino rollerblade scooter-gray soccerball stroller surf swing tennis "
              "train").split(),
    "val": ("blackswan bmx-trees breakdance camel car-roundabout car-shadow cows dance-twirl dog drift-chicane "
            "drift-straight goat horsejump-high kite-surf libby motocross-jump paragliding-launch parkour "
            "scooter-black soapbox").split(),
}


def read_sequence_list(path: Path) -> list[str]:
    """Sequence names from a list file: plain names, or DAVIS-2016 ``/JPEGImages/480p/<seq>/…`` lines."""
    names = []
    for n, line in enumerate(read_text_file(path, "davis16: sequence list").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        name = check_listed_name(Path(first).parent.name if "/" in first else first, f"davis16: {path} line {n}")
        if name not in names:
            names.append(name)
    return names


def split_sequences(root: Path, split: str, seqs_file: str | Path | None = None) -> list[str]:
    """The names of a split's sequences (see the module docstring: :func:`split_list` says where from)."""
    return _listed(split_list(root, split, seqs_file), split)


def _listed(source: Path | None, split: str) -> list[str]:
    """The names in ``source`` (:func:`split_list`), or the split's standard ones."""
    return list(DAVIS16_SPLITS[split]) if source is None else read_sequence_list(source)


def split_list(root: Path, split: str, seqs_file: str | Path | None = None) -> Path | None:
    """The list file that names a split's sequences, or None for the standard list."""
    if seqs_file is not None:  # a flag of its own (--davis16_*seqs_file): not a matter of the dataset root
        if not Path(seqs_file).is_file():
            raise FileNotFoundError(f"the DAVIS-16 {split} sequence list {seqs_file} does not exist (a text file, "
                                    "one sequence per line; without it the split's standard list is used)")
        return Path(seqs_file)
    for candidate in (root / "ImageSets" / "2016" / f"{split}.txt", root / "ImageSets" / "480p" / f"{split}.txt"):
        if candidate.is_file():
            return candidate
    return None


def davis16_sequences(root: str | Path | None, split: str = "val", seqs_file: str | Path | None = None,
                      only: Collection[str] | None = None, subset: str = "--davis16_seqs_file"
                      ) -> list[VideoSequence]:
    """The sequences of a DAVIS-2016 split (those named in ``only``, when given: the others need not be
    on disk); a missing dataset folder raises an error naming ``--davis16_root``, a listed sequence
    missing from a copy that has the others one naming the list and ``subset`` (the caller's flags
    that choose fewer sequences)."""
    if split not in DAVIS16_SPLITS:
        raise ValueError(f"DAVIS-16 split must be 'train' or 'val', not {split!r}")
    root = require(dataset_root("davis16", root), "davis16")
    images = require(root / "JPEGImages" / "480p", "davis16", "JPEGImages/480p/<seq>/*.jpg")
    annotations = require(root / "Annotations" / "480p", "davis16", "Annotations/480p/<seq>/*.png")
    sequences = []
    source = split_list(root, split, seqs_file)
    names = _listed(source, split)
    listed = f"listed in {source}" if source else f"in the standard DAVIS-16 {split} list"
    absent = [n for n in names if not (annotations / n).is_dir()]
    partial = 0 < len(absent) < len(names)  # the root is right (every one absent: the root is wrong, said below)
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"--sequences: {', '.join(unknown)} not in the DAVIS-16 {split} split ({len(names)} "
                            f"sequences: {', '.join(names[:30])}{' …' if len(names) > 30 else ''})")
        missing = [n for n in only if n in absent]
        if missing and partial:
            raise DatasetNotFoundError(f"davis16: --sequences {', '.join(missing)}: not in {annotations}, which holds "
                                       f"{len(names) - len(absent)} of the {len(names)} sequences {listed} (a partial "
                                       "copy of DAVIS?); name sequences it holds")
        names = [n for n in names if n in only]
    elif partial:
        raise DatasetNotFoundError(
            f"davis16: {len(absent)} of the {len(names)} sequences {listed} {'is' if len(absent) == 1 else 'are'} not "
            f"in {annotations} (e.g. {absent[0]}): a partial copy of DAVIS? Choose the sequences you have with "
            f"{subset}")
    for name in names:
        gt = sorted(require(annotations / name, "davis16", f"annotations of sequence {name}").glob("*.png"))
        if not gt:
            raise FileNotFoundError(f"davis16: {annotations / name} has no PNG annotations")
        frames = [images / name / f"{p.stem}.jpg" for p in gt]
        # One listing of the frame folder serves both checks (scandir's file type: not a stat per frame).
        on_disk = set()
        if (images / name).is_dir():  # else every frame is reported missing, below
            with os.scandir(images / name) as entries:
                on_disk = {e.name[:-4] for e in entries if e.name.endswith(".jpg") and e.is_file()}
        missing = [str(f) for f in frames if f.stem not in on_disk]
        if missing:
            raise FileNotFoundError(f"davis16: {len(missing)} frames of {name} are missing, e.g. {missing[0]} "
                                    f"(set the dataset root with --davis16_root or MEDVT_DAVIS16_ROOT)")
        # Frames are listed from the annotations (every DAVIS-2016 frame has one): a frame without one
        # would silently drop out of the video, and its neighbours' clips would skip over it.
        unannotated = sorted(on_disk - {p.stem for p in gt})
        if unannotated:
            raise FileNotFoundError(f"davis16: {len(unannotated)} frames of {name} have no annotation, e.g. "
                                    f"{annotations / name / unannotated[0]}.png (an incomplete copy of the dataset?)")
        sequences.append(VideoSequence(name, frames, gt))
    return sequences


def davis16_train_samples(sequences: list[VideoSequence]) -> list[Sample]:
    """Every annotated frame of every sequence is a clip centre (spec §4.4)."""
    return [(seq, i) for seq in sequences for i in range(seq.num_frames)]
