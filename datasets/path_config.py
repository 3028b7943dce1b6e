"""Where each dataset lives on disk.

Every dataset has one root directory. It is resolved, first match wins, from:

1. the script flag (e.g. ``--davis16_root``), passed here as ``override``;
2. the environment variable ``MEDVT_<NAME>_ROOT`` (e.g. ``MEDVT_DAVIS16_ROOT``);
3. ``$MEDVT_DATA_ROOT/<default sub-folder>``, with ``MEDVT_DATA_ROOT`` defaulting to ``./data``.

Nothing here is an absolute path of anybody's machine. A missing folder stops with
:class:`DatasetNotFoundError`, whose message names the path, what was expected there, and
the flag and variable that set it.

A dataset's list and metadata files are the user's, not ours: :func:`read_text_file` reads them
(a binary file is named, not a UnicodeDecodeError), and every name listed there that becomes a path
passes :func:`check_listed_name` (an absolute path or ``..`` would put outputs outside the output
folder, over the dataset itself).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from utils.cli import UserError


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset's default location and what a user should find inside it."""

    name: str  # key used in code, flags and env vars
    subdir: str  # default folder under MEDVT_DATA_ROOT
    expected: str  # one line describing the layout, shown in errors


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("davis16", "DAVIS", "JPEGImages/480p/<seq>/*.jpg and Annotations/480p/<seq>/*.png"),
        DatasetSpec("ytvos19", "YouTubeVOS2019", "train/JPEGImages/<video>/*.jpg and train/Annotations/<video>/*.png"),
        DatasetSpec("youtube_objects", "YouTube-Objects",
                    "frames/<class>/data/<vid>/shots/<shot>/frame*.jpg and youtube_masks/…/labels/*.jpg"),
        DatasetSpec("moca", "MoCA", "JPEGImages/<video>/*.jpg and the annotation CSV"),
        DatasetSpec("a2d", "A2D", "frames/<vid>/00001.png … (every frame, extracted from Release/clips320H/*.mp4), "
                                 "Release/Annotations/mat/…, Release/videoset.csv"),
        DatasetSpec("avsbench", "AVSBench", "Single-source/ or Multi-sources/ with the metadata CSV"),
        DatasetSpec("vspw", "VSPW", "data/<video>/origin/*.jpg, data/<video>/mask/*.png and the split files"),
    ]
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing or malformed; the message says how to fix it."""


def flag_name(name: str) -> str:
    return f"--{name}_root"


def env_name(name: str) -> str:
    return f"MEDVT_{name.upper()}_ROOT"


def dataset_root(name: str, override: str | os.PathLike | None = None) -> Path:
    """Resolve (without checking) the root folder of dataset ``name``."""
    spec = DATASETS[name]
    if override:
        return Path(override)
    if os.environ.get(env_name(name)):
        return Path(os.environ[env_name(name)])
    return Path(os.environ.get("MEDVT_DATA_ROOT", "data")) / spec.subdir


def require(path: str | os.PathLike, name: str, what: str | None = None, is_file: bool = False) -> Path:
    """Return ``path`` if it exists, else raise an error naming the flag/variable of dataset ``name``.

    ``what`` describes the missing thing (defaults to the dataset's expected layout).
    """
    path = Path(path)
    ok = path.is_file() if is_file else path.is_dir()
    if not ok:
        spec = DATASETS[name]
        raise DatasetNotFoundError(
            f"{spec.name}: expected {'file' if is_file else 'folder'} {path} "
            f"({what or spec.expected}) was not found. Set the dataset root with "
            f"{flag_name(name)} PATH or the environment variable {env_name(name)}, "
            f"or put the data under $MEDVT_DATA_ROOT/{spec.subdir} (MEDVT_DATA_ROOT defaults to ./data)."
        )
    return path


def add_path_args(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Add one ``--<name>_root`` flag per dataset in ``names``."""
    for name in names:
        spec = DATASETS[name]
        parser.add_argument(
            flag_name(name),
            default=None,
            metavar="PATH",
            help=f"root of {name} (expects {spec.expected}); default ${env_name(name)} "
            f"or $MEDVT_DATA_ROOT/{spec.subdir}",
        )


def read_text_file(path: str | os.PathLike, what: str, error: type[UserError] = UserError) -> str:
    """The text of a dataset's list or metadata file ``path`` (``what`` says which, e.g. "vspw: split
    list"), decoded as UTF-8 (a leading byte-order mark dropped) without newline translation, so that
    ``csv.reader(io.StringIO(text, newline=""))`` reads it as ``open(path, newline="")`` would. A file
    that is not text (an image or archive under the list's name) raises ``error`` naming it: decoding
    would fail with a traceback, and NUL bytes would reach a path as "embedded null byte"."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not a text file (byte {data[e.start]:#04x} at offset {e.start} is not "
                    "UTF-8); replace it with the original file") from None
    if "\x00" in text:
        raise error(f"{what} {path} is not a text file (a NUL byte at character {text.index(chr(0))}); "
                    "replace it with the original file")
    return text


def check_listed_once(seen: dict[str, int], name: str, line: int, where: str, unit: str = "lines") -> None:
    """Refuse ``name`` at ``line`` of a dataset's list (``where``: the prefix and file) when an earlier line
    named it (``seen``: name → its line, updated): the original keeps every line, so the video is predicted
    and scored (or sampled) twice; a dataset lists each once."""
    if name in seen:
        raise UserError(f"{where} line {line}: video {name} is listed again (first on line {seen[name]}); delete "
                        f"one of the two {unit}")
    seen[name] = line


def check_listed_name(name: str, where: str, error: type[UserError] = UserError, nested: bool = False) -> str:
    """``name`` read from a dataset file (``where``: the file and line), returned unchanged when it is
    safe as a path under the dataset root and under an output folder: not empty, not absolute, no
    ``.``/``..`` component, and (unless ``nested``: a relative folder such as YouTube-Objects'
    ``frames/<class>/...``) no path separator at all. Outputs are written at ``<output>/<name>/...``:
    an absolute name or ``..`` would put them anywhere, over the dataset's own frames too. Both
    separators count, so that a list means the same on Windows."""
    parts = name.replace("\\", "/").split("/")
    if not name.strip():
        why = "is empty"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        why = "is an absolute path"
    elif any(p in (".", "..") for p in parts):
        why = "has a '.' or '..' component"
    elif not nested and len(parts) > 1:
        why = "contains a path separator ('/' or '\\')"
    else:
        return name
    kind = "a relative folder under the dataset root" if nested else "one plain folder name"
    raise error(f"{where}: listed name {name!r} {why}; it names the folders of the inputs and outputs, so it "
                f"must be {kind} (outputs would otherwise be written outside the output folder)")
