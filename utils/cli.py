"""The error boundary and flag validators shared by every user-facing script.

A user's mistake (a missing path, an unreadable file, a checkpoint of another model, a nonsense
flag value) should end in one message naming the file or flag and what to do, not a traceback;
a bug should keep its traceback. :func:`run_main` draws that line: the exceptions in
:data:`USER_ERRORS` print ``<script>: error: <message>`` on stderr and exit 2 (as argparse does),
anything else propagates. ``--debug`` or ``MEDVT_DEBUG=1`` shows the traceback of every error.

How a stop signal ends a run is :mod:`utils.process`'s; where a run writes, :mod:`utils.outputs`'s.
This module imports only the standard library, :mod:`utils.logger` and :mod:`utils.process`, so any layer
(models, datasets, utils) can raise :class:`UserError` subclasses without import cycles.
"""
from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.logger import log_stop
from utils.process import Terminated, env_int, error_chain, handle_stops, interruption, quiet, say, \
    script_owns_stops, stop_status


class UserError(Exception):
    """An error caused by the input (path, file, flag); its message says which and what to do."""


# What a user's input can cause; the messages of these already name the file (OSError subclasses
# carry the path, ours name it explicitly). argparse errors exit by themselves (SystemExit).
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


# What the machine can run short of while a run writes (a full disk or quota, a file size limit, a disk
# remounted read-only): one line naming the file (:func:`utils.outputs.writing` adds it where the writer does not).
FULL = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (a file size limit?)",
        errno.EDQUOT: "disk quota exceeded", errno.EROFS: "the file system is read-only"}


def machine_error(error: BaseException) -> OSError | None:
    """The :data:`FULL` error ``error`` is or was raised from (torch.save wraps it in a RuntimeError)."""
    return next((e for e in error_chain(error) if isinstance(e, OSError) and e.errno in FULL), None)


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
    (:class:`utils.process.Terminated`) while ``main`` runs (:func:`utils.process.handle_stops`); the handlers
    are put back when it returns, but in a script's own process."""
    prog = prog or Path(sys.argv[0]).name
    debug = debug_enabled(sys.argv[1:])
    previous = handle_stops()
    try:
        _boundary(main, prog, debug, resume)
    finally:
        _settle_stdout()
        for sig, handler in () if script_owns_stops() else previous.items():  # a test calling this keeps its own
            if handler is not None:  # None: a handler not set from Python, which cannot be restored
                signal.signal(sig, handler)


def stop_message(prog: str, stop: KeyboardInterrupt, how: str | None = None) -> str:
    """The one line of a run stopped by Ctrl-C or a stop signal (``how``: how to continue)."""
    what = stop_line(stop) if isinstance(stop, Terminated) else "interrupted"  # "terminated (SIGTERM)"
    return f"{prog}: {what}{f'; {how}' if how else ''}"


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
        quiet()
        _release_frames(e)
        log_stop(stop_line(e))
        say(stop_message(prog, e, resume() if callable(resume) else resume))
        sys.exit(stop_status(e))
    except USER_ERRORS as e:
        quiet()
        if debug:
            traceback.print_exc()
        _release_frames(e)
        log_stop(stop_line(e))
        say(f"{prog}: error: {error_message(e)}", every_rank=True)
        _error_exit(2)
    except Exception as e:
        full = machine_error(e)
        if full is not None and not debug:
            quiet()
            _release_frames(e)
            log_stop(f"error: {full_message(full)}")
            say(f"{prog}: error: {full_message(full)}", every_rank=True)
            _error_exit(1)
        if isinstance(e, BrokenPipeError) and not debug and _stdout_closed():
            quiet()  # `script | head`: the reader has what it wanted; a pipe's writer ends quietly
            log_stop("error: its standard output was closed (the reader of a pipe ended)")
            _error_exit(1)
        if debug or not lost_peer(e):
            raise
        quiet()
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
    for e in error_chain(error):
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


def require_file(path: str | Path | None, flag: str) -> Path:
    """An input file given by ``flag``, or the error a user reads: a folder is called a folder."""
    if path and Path(path).is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder, not a file")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: file {path} does not exist")
    return Path(path)


def require_folder(path: str | Path, flag: str, hint: str) -> Path:
    """An input folder given by ``flag``, or the error a user reads (``hint``: what to give instead)."""
    if not Path(path).is_dir():
        raise UserError(f"{flag} {path}: {'not a folder' if Path(path).exists() else 'folder does not exist'} ({hint})")
    return Path(path)


def refuse_unused(parser: argparse.ArgumentParser, args: argparse.Namespace, dests: Sequence[str],
                  applies_to: str, argv: Sequence[str] | None = None) -> None:
    """Flags that do nothing in this run (``dests`` written in ``argv``, default the command line, or
    whose values differ from their defaults) are a usage error, not silently ignored: "--save_pred
    applies to an A2D split, not to --video"."""
    given = [f"--{d}" for d in dests if getattr(args, d) != parser.get_default(d) or _written(parser, d, argv)]
    if given:
        parser.error(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {applies_to}")


def _written(parser: argparse.ArgumentParser, dest: str, argv: Sequence[str] | None = None) -> list[str]:
    """The option strings of ``dest`` that ``argv`` (default: the command line) writes, in its order."""
    words = sys.argv[1:] if argv is None else list(argv)
    options = [o for a in parser._actions if a.dest == dest for o in a.option_strings]
    return [o for w in words for o in options if w == o or w.startswith(o + "=")]


def typed_option(parser: argparse.ArgumentParser, dest: str, argv: Sequence[str] | None = None) -> str:
    """The flag of ``dest`` as the user wrote it (an alias, e.g. AVS's ``--weights`` for ``--model_path``),
    so that messages name what they typed; else its first option string."""
    written = _written(parser, dest, argv)
    return written[-1] if written else next(o for a in parser._actions if a.dest == dest for o in a.option_strings)


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
