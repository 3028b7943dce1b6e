"""YouTube-Objects (the AVOS evaluation version with the ``youtube_masks`` annotations).

On disk (spec avos §5), under one root::

    <root>/val_seqs.txt                                     one sequence folder per line, e.g.
                                                            frames/aeroplane/data/0001/shots/001
    <root>/frames/<class>/data/<vid>/shots/<shot>/frame0001.jpg …
    <root>/youtube_masks/<class>/data/<vid>/shots/<shot>/labels/00001.jpg …   (JPEG masks)

A sequence's frames are all ``*.jpg`` of its folder (clips wrap around over all of them); the
mask of ``frameNNNN.jpg`` is ``labels/%05d.jpg`` of the number NNNN in the folder obtained by
replacing the ``frames`` component with ``youtube_masks``. Only frames with a mask file are
predicted and scored (the original skips the others). Masks are JPEGs: foreground is
grey value ≥ 80 (:data:`MASK_THRESHOLD`).

The original replaced the substring ``frames`` anywhere in the absolute path; we replace the
first path component named ``frames`` of the listed relative path, so a root folder whose
name contains "frames" still works.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from utils.cli import UserError

from .path_config import check_listed_name, dataset_root, read_text_file, require
from .video import VideoSequence

# JPEG masks: grey ≥ 80 is foreground (original ``th_mask = 80``), i.e. read_mask(threshold=79).
MASK_THRESHOLD = 80
DEFAULT_LIST = "val_seqs.txt"
_FRAME_NUMBER = re.compile(r"(\d+)")


def read_list(path: Path) -> list[str]:
    """Relative sequence folders from the list file (blank lines and surrounding slashes ignored)."""
    lines = read_text_file(path, "youtube_objects: sequence list").splitlines()
    return [check_listed_name(line.strip().strip("/"), f"youtube_objects: {path} line {n}", nested=True)
            for n, line in enumerate(lines, 1) if line.strip()]


def mask_folder(rel: str) -> PurePosixPath:
    """``frames/<class>/…/<shot>`` → ``youtube_masks/<class>/…/<shot>/labels``."""
    parts = list(PurePosixPath(rel).parts)
    if "frames" not in parts:
        raise UserError(f"youtube_objects: listed folder {rel!r} has no 'frames' component "
                         "(expected frames/<class>/data/<vid>/shots/<shot>)")
    parts[parts.index("frames")] = "youtube_masks"
    return PurePosixPath(*parts, "labels")


def sequence_name(rel: str) -> str:
    """The key used in outputs and metrics: the path after ``frames``, i.e.
    ``<class>/data/<vid>/shots/<shot>`` (the original's last five mask-folder components)."""
    parts = PurePosixPath(rel).parts
    return str(PurePosixPath(*parts[parts.index("frames") + 1:]))


def mask_file_name(frame: Path) -> str:
    """``frame0012.jpg`` → ``00012.jpg`` (the frame number, zero-padded to 5)."""
    digits = _FRAME_NUMBER.findall(frame.stem)
    if not digits:
        raise UserError(f"youtube_objects: cannot read a frame number from {frame}")
    return f"{int(digits[-1]):05d}.jpg"


def youtube_objects_sequences(root: str | Path | None = None, list_file: str | Path | None = None,
                              ) -> list[VideoSequence]:
    """Every listed sequence as a :class:`VideoSequence` (``masks[i]`` None where not annotated).

    ``meta``: ``class`` (the object class) and ``video`` (``<vid>``, the unit the metric averages).
    """
    root = require(dataset_root("youtube_objects", root), "youtube_objects")
    list_path = Path(list_file) if list_file else root / DEFAULT_LIST
    require(list_path, "youtube_objects", "the sequence list (set it with --youtube_objects_list)", is_file=True)
    sequences = []
    for rel in read_list(list_path):
        folder = require(root / rel, "youtube_objects", f"frames of sequence {rel} listed in {list_path}")
        frames = sorted(folder.glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"youtube_objects: {folder} (listed in {list_path}) has no .jpg frames")
        labels = root / mask_folder(rel)
        masks = [labels / mask_file_name(f) for f in frames]
        masks = [m if m.is_file() else None for m in masks]
        name = sequence_name(rel)
        parts = PurePosixPath(name).parts
        meta = {"class": parts[0], "video": parts[2] if len(parts) > 2 and parts[1] == "data" else name}
        sequences.append(VideoSequence(name, frames, masks, meta))
    return sequences
