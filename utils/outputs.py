"""Where a run writes: output folders and files checked before any work (apart from every input, writable,
new unless ``--overwrite``), files written whole or not at all (and named in a writer's OSError), and the
``INCOMPLETE`` marker of a run that did not finish. Nothing a run writes replaces an input or an earlier
run's output unasked.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.cli import UserError, machine_error
from utils.process import say


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in the OSError of a writer that does not (PIL and json say only "[Errno 28] No space
    left on device"; torch.save raises a RuntimeError from it)."""
    try:
        yield
    except Exception as e:
        cause = e if isinstance(e, OSError) else machine_error(e)
        if cause is None or cause.filename is not None or cause.errno is None:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from None


def write_whole(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all: through a temporary file in the same folder, renamed
    over ``path`` (a run stopped mid-write leaves the former file, or none, not half of one that a later
    run would take as done)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with writing(path):
            tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def require_separate(output: str | Path, output_flag: str, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output folder that is, contains or lies inside an input folder: writing there would
    overwrite the inputs (or add folders a later run would read as inputs)."""
    # realpath, not Path.resolve: a symbolic link loop stays a path (its own error comes where it is
    # used), where resolve raised RuntimeError "Symlink loop".
    out = Path(os.path.realpath(output))
    for flag, path in inputs.items():
        if path is None:
            continue
        p = Path(os.path.realpath(path))
        if out == p or out.is_relative_to(p) or p.is_relative_to(out):
            raise UserError(f"{output_flag} {output} overlaps {flag} {path}: the outputs would overwrite or mix "
                            "with the inputs; choose an output folder outside it")


def add_overwrite_flag(parser, output: str = "--output_dir") -> None:
    """``--overwrite`` of a script whose outputs go into a folder checked by :func:`check_output_dir`."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"write into an {output} that already holds files, replacing files of the same name")


def _no_literal_tilde(output: str | Path, flag: str) -> Path:
    """``output`` as a Path, refused when it starts with a literal ``~``: the shell does not expand
    ``~`` after ``=`` (``--output_dir=~/runs``), and the outputs would go to a folder named ``~``
    under the current one, where a later ``rm -rf ~`` to remove it would delete the home folder."""
    out = Path(output)
    if out.parts and out.parts[0].startswith("~"):
        raise UserError(f"{flag} {output} starts with a literal ~ (the shell does not expand ~ after '=' or in "
                        f"quotes): write {flag} {output} with a space instead of '=', or give $HOME/ or a full path")
    return out


def check_output_dir(output: str | Path, flag: str, inputs: dict[str, str | Path | None],
                     overwrite: bool = False, default: bool = False, deletes: bool = False) -> Path:
    """Check an output folder before anything is read or written: not a file, apart from every
    input (:func:`require_separate`), one this user can create or write in, and empty or new unless
    ``overwrite`` (then files of the same name are replaced, nothing is deleted: said, unless the caller
    ``deletes`` its earlier outputs itself). ``default``: the script chose it (:func:`new_run_folder`), so an
    error says to pass ``flag`` instead. Returns it as a Path, not yet created."""
    out = _no_literal_tilde(output, flag)
    named = f"the default output folder {output} (no {flag} given)" if default else f"{flag} {output}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{named} is a file, not a folder; give a folder (it is created if missing)")
    if out.is_symlink() and not out.exists():  # mkdir would say "File exists"
        raise UserError(f"{named} is a symbolic link that leads nowhere (a loop, or a missing target); "
                        "choose another folder")
    require_separate(out, flag, inputs)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():  # a/b where a is a file: not a matter of permissions
        raise UserError(f"{named}: {existing} is a file, not a folder; choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{named} cannot be written: {existing} is not writable for this user; "
                        f"{f'pass {flag} to write elsewhere' if default else 'choose another folder'}")
    if out.is_dir() and any(out.iterdir()):
        what = ("the partial outputs of a run that did not finish (its INCOMPLETE marker)"
                if (out / "INCOMPLETE").is_file() else "files (an earlier run?)")
        if not overwrite:
            remedy = f"pass {flag}" if default else "choose a new folder, or pass --overwrite to write over them"
            raise UserError(f"{named} already holds {what}; {remedy}")
        if not deletes:  # e.g. a longer video's frames beyond this one's would look like this run's
            say(f"note: {named} holds {what}: --overwrite replaces the files this run writes and deletes none, so "
                "any others stay beside them")
    return out


def new_run_folder(name: str, beside: str | Path | None = None) -> Path:
    """The default output folder of an inference run: ``<name>_<unix time>`` next to ``beside`` (the
    checkpoint or exported file: its results stay with the model), else under ``runs/``. A new folder
    per run, so running twice never mixes two runs: when that name is taken (another run started in the
    same second), the first free ``<name>_<unix time>_2``, ``_3``, ... (the name is ours to choose)."""
    first = (Path(beside).parent if beside else Path("runs")) / f"{name}_{int(time.time())}"
    out, n = first, 1
    while out.exists():
        n += 1
        out = first.parent / f"{first.name}_{n}"
    return out


def check_output_file(output: str | Path, flag: str, inputs: dict[str, str | Path | None],
                      overwrite: bool = False) -> Path:
    """Check an output file before any work: not a folder, not one of the ``inputs`` files (even with
    ``overwrite``), in a folder that exists, and new unless ``overwrite``."""
    out = _no_literal_tilde(output, flag)
    if out.is_dir():
        raise UserError(f"{flag} {output} is a folder; give a file name")
    for in_flag, path in inputs.items():
        if path is not None and Path(path).exists() and out.exists() and out.samefile(path):
            raise UserError(f"{flag} {output} is the input {in_flag}: writing it would destroy the input")
    if not out.parent.is_dir():
        raise UserError(f"{flag} {output}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):  # found before the work, not when writing its result
        raise UserError(f"{flag} {output} cannot be written: {out.parent} is not writable for this user; choose "
                        "another folder")
    if out.exists() and not overwrite:
        raise UserError(f"{flag} {output} already exists; pass --overwrite to replace it, or choose another name")
    return out


@contextmanager
def incomplete_marker(out_dir: str | Path, log: str | None = None, flag: str = "--output_dir") -> Iterator[Path]:
    """Create ``out_dir`` (given by ``flag``, or chosen for it) with an ``INCOMPLETE`` file in it for the
    body's duration: the file is removed when the body ends well and left in place by an error or Ctrl-C,
    so partial outputs say so (and name the run's ``log`` file, if it writes one). A run stopped before
    writing anything leaves the folder as it found it (absent, or empty), so that the same command can run
    again without --overwrite."""
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what check_output_dir's permission test cannot see: /sys, /proc, a full or read-only disk
        failed = f" ({e.filename})" if e.filename and Path(e.filename) != out else ""
        raise UserError(f"{flag} {out_dir}: cannot create this folder{failed}: {e.strerror or e}; "
                        "choose another folder") from e
    marker = out / "INCOMPLETE"
    marker.write_text(f"this run did not finish: its outputs are partial{f' (see {log})' if log else ''}\n")
    try:
        yield out
    except BaseException:
        try:
            if [p.name for p in out.iterdir()] == [marker.name]:  # nothing written: no partial outputs to mark
                marker.unlink()
                if created:
                    out.rmdir()
        except OSError:  # another process's first file arrived meanwhile, or the folder went: keep what is there
            pass
        raise
    marker.unlink()
