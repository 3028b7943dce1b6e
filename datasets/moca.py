"""MoCA (Moving Camouflaged Animals), the filtered AVOS evaluation set with box annotations.

On disk (spec avos §5), under one root::

    <root>/JPEGImages/<video>/00000.jpg …
    <root>/val_seqs.txt            one video name per line
    <root>/annotations.csv         header row, then rows ``id, /<video>/<%05d>.jpg, bbox, motion``

``bbox`` is a Python literal ``[shape_id, xmin, ymin, width, height]`` or ``[]`` (no box);
``motion`` is ``{"1": "0"|"1"|"2"}`` (locomotion, deformation, static) or ``{}`` meaning "as the
previous row". Rows are read sorted by the path column.

What the original evaluator (``moca_read_annotation``) does and we keep:

* rows with an empty box are dropped, and do not count as "the previous row" for ``{}``;
* negative xmin/ymin are clamped to 0 and xmax/ymax are computed from the *clamped* corner
  (xmax = max(xmin, 0) + width);
* a frame is keyed by its file name (``00012``), not by its position in the folder. The 555a462
  evaluator paired the ff-th saved mask with annotation number ff, which is wrong whenever some
  frames are not annotated; HEAD keys by file name, and so do we.

Clips wrap around over all frames of a video; only annotated frames are predicted and scored.
"""
from __future__ import annotations

import ast
import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utils.cli import UserError

from .path_config import check_listed_name, dataset_root, read_text_file, require
from .video import VideoSequence

DEFAULT_LIST = "val_seqs.txt"
DEFAULT_CSV = "annotations.csv"


class MocaDataError(UserError, ValueError):
    """A malformed MoCA annotation file; the message names the file and line."""


@dataclass(frozen=True)
class MocaBox:
    """One annotated frame: box in original-frame pixels and its motion type ("0"/"1"/"2")."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    motion: str

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.xmin, self.ymin, self.xmax, self.ymax


def read_annotations(csv_path: str | Path) -> dict[str, dict[str, MocaBox]]:
    """``{video: {frame stem: MocaBox}}`` from the MoCA CSV (see the module docstring).

    A malformed row raises :class:`MocaDataError` naming the file and line."""
    csv_path = Path(csv_path)
    reader = csv.reader(io.StringIO(read_text_file(csv_path, "moca: annotation file", MocaDataError), newline=""))
    next(reader, None)  # the header
    rows = [(reader.line_num, r) for r in reader if r]
    rows.sort(key=lambda nr: nr[1][1] if len(nr[1]) > 1 else "")
    out: dict[str, dict[str, MocaBox]] = {}
    previous_motion = None
    for n, row in rows:
        where = f"{csv_path} line {n}"
        if len(row) != 4:
            raise MocaDataError(f"{where}: row {row!r} does not have 4 columns (id, file, bbox, motion)")
        _, file_name, bbox_text, motion_text = (c.strip() for c in row)
        try:
            bbox, motion = ast.literal_eval(bbox_text), ast.literal_eval(motion_text)
        except (ValueError, SyntaxError):
            raise MocaDataError(f"{where}: cannot parse bbox {bbox_text!r} / motion {motion_text!r}") from None
        if not bbox:
            continue
        if motion:
            if not (isinstance(motion, dict) and "1" in motion):
                raise MocaDataError(f"{where}: motion {motion_text} is not {{'1': '0'|'1'|'2'}} or {{}}")
            previous_motion = str(motion["1"])
        elif previous_motion is None:
            raise MocaDataError(f"{where}: the first box row ({file_name}) has motion {{}} and no previous row")
        try:  # another count or a non-number would fail here without the file's name
            _, xmin, ymin, width, height = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise MocaDataError(f"{where}: bbox {bbox_text} is not [shape_id, xmin, ymin, width, height] "
                                "(5 numbers) or []") from None
        xmin, ymin = max(xmin, 0.0), max(ymin, 0.0)
        path = PurePosixPath(file_name)
        out.setdefault(path.parent.name, {})[path.stem] = MocaBox(
            xmin, ymin, xmin + float(width), ymin + float(height), previous_motion)
    return out


def moca_sequences(root: str | Path | None = None, list_file: str | Path | None = None,
                   annotations_csv: str | Path | None = None,
                   names: list[str] | None = None) -> list[VideoSequence]:
    """Listed MoCA videos that have annotations, as :class:`VideoSequence` objects.

    ``masks`` are all None (MoCA has boxes, not masks); ``meta["boxes"]`` maps frame stems to
    :class:`MocaBox` and ``meta["annotated"]`` lists the indices of annotated frames (the frames
    to predict). Videos without any box are skipped, as in the original.
    """
    root = require(dataset_root("moca", root), "moca")
    images = require(root / "JPEGImages", "moca", "JPEGImages/<video>/*.jpg")
    csv_path = require(Path(annotations_csv) if annotations_csv else root / DEFAULT_CSV, "moca",
                       "the annotation CSV (set it with --moca_annotations)", is_file=True)
    if names is None:
        list_path = require(Path(list_file) if list_file else root / DEFAULT_LIST, "moca",
                            "the video list (set it with --moca_list)", is_file=True)
        lines = read_text_file(list_path, "moca: video list", MocaDataError).splitlines()
        names = [check_listed_name(n.strip(), f"moca: {list_path} line {k}", MocaDataError)
                 for k, n in enumerate(lines, 1) if n.strip()]
    annotations = read_annotations(csv_path)
    sequences = []
    for name in names:
        if name not in annotations:
            continue
        frames = sorted(require(images / name, "moca", f"frames of video {name}").glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"moca: {images / name} has no .jpg frames")
        boxes = annotations[name]
        annotated = [i for i, f in enumerate(frames) if f.stem in boxes]
        sequences.append(VideoSequence(name, frames, meta={"boxes": boxes, "annotated": annotated}))
    return sequences
