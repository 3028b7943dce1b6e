"""The error boundary and flag validators shared by every user-facing script.

A user's mistake (a missing path, an unreadable file, a checkpoint of another model, a nonsense
flag value) should end in one message naming the file or flag and what to do, not a traceback;
a bug should keep its traceback. :func:`run_main` draws that line: the exceptions in
:data:`USER_ERRORS` print ``<script>: error: <message>`` on stderr and exit 2 (as argparse does),
anything else propagates. ``--debug`` or ``MEDVT_DEBUG=1`` shows the traceback of every error.

This module imports only the standard library and :mod:`utils.logger`, so any layer (models,
datasets, utils) can raise :class:`UserError` subclasses without import cycles.
"""
from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from utils.logger import log_stop


class UserError(Exception):
    """An error caused by the input (path, file, flag); its message says which and what to do."""


# What a user's input can cause; the messages of these already name the file (OSError subclasses
# carry the path, ours name it explicitly). argparse errors exit by themselves (SystemExit).
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# What the machine can run short of while a run writes (a full disk or quota, a file size limit, a disk
# remounted read-only): one line naming the file (:func:`writing` adds it where the writer does not).
FULL = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a file size limit?)",
        errno.EDQUOT: "disk quota exceeded", errno.EROFS: "the file system is read-only"}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler ending a job) or SIGHUP (the terminal closed): stopped
    as Ctrl-C stops a run, so the same clean-up runs (temporary files removed, INCOMPLETE markers kept, the
    log's last line). ``args[0]``: the signal's name."""


# Handled as Ctrl-C while run_main runs (SIGHUP only where it is not ignored, as under nohup; Windows has none).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_script_process = False  # a script of this repository is the process (utils.startup): run_main keeps the handling


def raise_stop(signum, frame) -> None:
    """The handler of Ctrl-C and the stop signals: a second one (Ctrl-C pressed again, a scheduler and then the
    demo stopping its step) must not cut the clean-up short, so they are ignored from the first on."""
    _quiet()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def handle_stops(script: bool = False) -> dict:
    """Stop on Ctrl-C, SIGTERM and SIGHUP (each unless ignored, as SIGHUP under nohup) with :func:`raise_stop`;
    returns the handlers replaced. ``script``: for the whole process (:mod:`utils.startup`), so that
    :func:`run_main` leaves them in place to the exit instead of putting back what a signal during the
    interpreter's exit would meet."""
    global _script_process
    if threading.current_thread() is not threading.main_thread():
        return {}
    _script_process = _script_process or script
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, raise_stop)
    return previous


def _quiet() -> None:
    """Ignore Ctrl-C and the stop signals from now on (the clean-up and the one line after a stop or error)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(sig, signal.SIG_IGN)


def env_int(name: str, default: int) -> int:
    """An integer set by a launcher in the environment (torchrun's ``RANK``, ``WORLD_SIZE``); ``default``
    where it is unset or not a number."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def under_torchrun() -> bool:
    """Whether torchrun started this process as one of several (its variables are set)."""
    return env_int("WORLD_SIZE", 1) > 1 and "RANK" in os.environ


def end_with_parent(parent: int | None = None) -> None:
    """Have this process (Linux) get SIGTERM when its parent dies (a torchrun launcher, the demo or the CRF
    killed with kill -9), so that it stops rather than running on, orphaned; a parent already gone
    (``parent``: its pid, where the caller knows it) ends it now. Elsewhere nothing is done."""
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (glibc and musl)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl ran: no signal will come
        os._exit(1)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, in turn (each once)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``error`` is, or was raised while handling (a DataLoader worker killed by
    the same SIGTERM makes the parent raise RuntimeError as it unwinds)."""
    return next((e for e in _chain(error) if isinstance(e, KeyboardInterrupt)), None)


def machine_error(error: BaseException) -> OSError | None:
    """The :data:`FULL` error ``error`` is or was raised from (torch.save wraps it in a RuntimeError)."""
    return next((e for e in _chain(error) if isinstance(e, OSError) and e.errno in FULL), None)


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every script's ``--help``: the description as written (its examples keep their lines), and each
    option's default appended where its help does not already say it (no "default" in the text), so
    that no default is hidden. Switches (False), unset or empty options (None, "", []) and hidden ones are
    left as they are."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default in ("", [], ())
        if empty or action.default == argparse.SUPPRESS or "default" in text.lower() or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """Every script's parser: :class:`HelpFormatter` by default, and a usage mistake (an unknown flag, a
    value of the wrong kind, :func:`refuse_unused`) as one line, as every other mistake is, instead of
    argparse's usage block followed by the error: ``prog: error: message (see --help)``, status 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: read by :func:`run_main` from the command line; added so that --help lists it."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (also: environment variable MEDVT_DEBUG=1)")


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("MEDVT_DEBUG", "") not in ("", "0")


def error_message(error: BaseException) -> str:
    """The message of ``error`` without the traceback that DataLoader workers paste into it."""
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a worker: its last line is "Type: message"
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.strip() or type(error).__name__


def stop_line(error: BaseException) -> str:
    """What a log's last line says about why a run stopped (:func:`utils.logger.log_stop`): an
    interruption, or a user's mistake by its one-line message."""
    if isinstance(error, Terminated):
        return f"terminated ({error.args[0] if error.args else 'SIGTERM'})"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGINT)"
    return f"error: {error_message(error)}"


def full_message(error: OSError) -> str:
    """A :data:`FULL` error in one line: what ran short, and the file being written."""
    where = f" writing {error.filename}" if error.filename else ""
    return f"{FULL[error.errno]}{where} ([Errno {error.errno}]); free space or choose another output folder"


def run_main(main: Callable[[], object], prog: str | None = None,
             resume: str | Callable[[], str | None] | None = None) -> None:
    """Call ``main()`` (the script's, reading ``sys.argv``) inside the error boundary; never returns.
    ``resume``: how a stopped run continues, said after an interruption (the trainers: a function that
    looks at the run's folder then). SIGTERM, and SIGHUP unless ignored, are handled as Ctrl-C
    (:class:`Terminated`) while ``main`` runs (:func:`handle_stops`); the handlers are put back when it
    returns, but in a script's own process."""
    prog = prog or Path(sys.argv[0]).name
    debug = debug_enabled(sys.argv[1:])
    previous = handle_stops()
    try:
        _boundary(main, prog, debug, resume)
    finally:
        _settle_stdout()
        for sig, handler in () if _script_process else previous.items():  # a test calling this keeps its own
            if handler is not None:  # None: a handler not set from Python, which cannot be restored
                signal.signal(sig, handler)


def stop_message(prog: str, stop: KeyboardInterrupt, how: str | None = None) -> str:
    """The one line of a run stopped by Ctrl-C or a stop signal (``how``: how to continue)."""
    what = stop_line(stop) if isinstance(stop, Terminated) else "interrupted"  # "terminated (SIGTERM)"
    return f"{prog}: {what}{f'; {how}' if how else ''}"


def stop_status(stop: KeyboardInterrupt) -> int:
    """A stopped script's exit status: 130 after Ctrl-C, 143 after SIGTERM or SIGHUP (a shell's 128 + SIGINT's
    or SIGTERM's number)."""
    return 143 if isinstance(stop, Terminated) else 130


def say(line: str, every_rank: bool = False) -> None:
    """Print the boundary's line on stderr: a stop line or note once per run, by rank 0 under torchrun (every
    process stops; each log gets its stop line), an error by the process that met it (``every_rank``: only
    rank 0 writes a log file). A closed terminal (SIGHUP) or stderr cannot take it: it is dropped."""
    if not every_rank and env_int("RANK", 0) != 0:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _settle_stdout() -> None:
    """Standard output whose reader went away (``| head``, a closed terminal) would fail again at exit, with
    a traceback and status 120: what is left of it goes nowhere instead."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def _boundary(main: Callable[[], object], prog: str, debug: bool, resume) -> None:
    try:
        try:
            main()
        except Exception as e:
            stop = interruption(e)
            if stop is None or debug:
                raise
            raise stop from None
    except KeyboardInterrupt as e:
        if debug:
            raise
        _quiet()
        _release_frames(e)
        log_stop(stop_line(e))
        say(stop_message(prog, e, resume() if callable(resume) else resume))
        sys.exit(stop_status(e))
    except USER_ERRORS as e:
        _quiet()
        if debug:
            traceback.print_exc()
        _release_frames(e)
        log_stop(stop_line(e))
        say(f"{prog}: error: {error_message(e)}", every_rank=True)
        _error_exit(2)
    except Exception as e:
        full = machine_error(e)
        if full is not None and not debug:
            _quiet()
            _release_frames(e)
            log_stop(f"error: {full_message(full)}")
            say(f"{prog}: error: {full_message(full)}", every_rank=True)
            _error_exit(1)
        if isinstance(e, BrokenPipeError) and not debug and _stdout_closed():
            _quiet()  # `script | head`: the reader has what it wanted; a pipe's writer ends quietly
            log_stop("error: its standard output was closed (the reader of a pipe ended)")
            _error_exit(1)
        if debug or not lost_peer(e):
            raise
        _quiet()
        log_stop("error: another process of this run stopped (see its message)")
        print(f"{prog}: error: rank {os.environ.get('RANK', '?')}: another process of this run stopped (see its "
              "message, or the launcher's summary if it was killed); stopping too", file=sys.stderr)
        _error_exit(1)
    sys.exit(0)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader ended (poll says so without writing to it)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a test's capture)
        return False


def _release_frames(error: BaseException | None) -> None:
    """Free the locals of the finished frames that ``error``, and the errors it was raised from, came
    through, so that what they held is closed now: a progress bar left open mid-loop would otherwise
    redraw itself when collected at exit, after the error line, which would then not be the last line."""
    for e in _chain(error):
        traceback.clear_frames(e.__traceback__)


def _error_exit(code: int) -> None:
    """Exit with ``code`` after an error. In a multi-process run, without the interpreter's exit-time
    teardown: after a lost connection Gloo's threads are sometimes still joinable when it destroys
    them, and the process then aborts ("terminate called without an active exception", status -6;
    about one run in eight on a loaded 2-core machine) after its one-line message, as if it had crashed.
    Log handlers flush every record, so only the standard streams need flushing here."""
    if env_int("WORLD_SIZE", 1) <= 1:
        sys.exit(code)
    _settle_stdout()
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is what a process of a multi-process (torchrun) run gets in a collective after
    another process stopped, e.g. on a damaged file found mid-epoch: that process has printed the
    cause, so this one's traceback would only bury it. Gloo reports the lost connection as a plain
    RuntimeError; NCCL and the store as torch.distributed's DistError family (named by type name:
    this module does not import torch)."""
    if env_int("WORLD_SIZE", 1) <= 1:
        return False
    if any(cls.__name__ == "DistError" for cls in type(error).__mro__):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("Connection closed by peer", "Connection reset by peer"))


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


def require_file(path: str | Path | None, flag: str) -> Path:
    """An input file given by ``flag``, or the error a user reads: a folder is called a folder."""
    if path and Path(path).is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder, not a file")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: file {path} does not exist")
    return Path(path)


def refuse_unused(parser: argparse.ArgumentParser, args: argparse.Namespace, dests: Sequence[str],
                  applies_to: str, argv: Sequence[str] | None = None) -> None:
    """Flags that do nothing in this run (``dests`` written in ``argv``, default the command line, or
    whose values differ from their defaults) are a usage error, not silently ignored: "--save_pred
    applies to an A2D split, not to --video"."""
    words = sys.argv[1:] if argv is None else list(argv)
    options = {d: [o for a in parser._actions if a.dest == d for o in a.option_strings] for d in dests}
    given = [f"--{d}" for d in dests if getattr(args, d) != parser.get_default(d)
             or any(w == o or w.startswith(o + "=") for w in words for o in options[d])]
    if given:
        parser.error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {applies_to}")


def add_overlay_fps_flag(parser, frames_of: str = "a --video folder") -> None:
    """``--fps``: the frame rate of overlay videos made from frame files, which have none of their own."""
    parser.add_argument("--fps", type=positive_float, default=10,
                        help=f"frame rate of the overlay video of {frames_of} of frames; a --video file's overlay "
                             "keeps the file's own timing (default 10)")


def check_overlay_fps(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None = None,
                      datasets_too: bool = False) -> None:
    """``--fps`` where it does nothing is refused, not ignored: with a --video file, whose overlay keeps the
    file's own frame times, and (unless ``datasets_too``: AVOS overlays a dataset's sequences) in a run
    on a dataset split, which writes no overlay video."""
    if args.video is not None and Path(args.video).is_file():
        refuse_unused(parser, args, ["fps"], f"to frame folders; --video {args.video} has its own frame rate", argv)
    elif args.video is None and not datasets_too:
        refuse_unused(parser, args, ["fps"], "to --video (a folder of frames)", argv)


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


# ------------------------------------------------------------------ argparse type validators
def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer (> 0)")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer (>= 0)")
positive_float = _number(float, lambda v: v > 0 and v < float("inf"), "a positive finite number (> 0)")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a non-negative finite number (>= 0)")
# numpy's and Python's generators take seeds in [0, 2**32); each process of a run adds its rank.
random_seed = _number(int, lambda v: 0 <= v < 2**32 - 1024, "a seed from 0 to 2**32 - 1025")
# A clip: the model attends across the frames of a clip, so one frame is not one.
clip_frames = _number(int, lambda v: v >= 2, "a clip length: at least 2 frames (the model attends across them)")
