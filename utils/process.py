"""This process: how it stops (Ctrl-C, SIGTERM, SIGHUP), the launcher that started it (torchrun) and its
parent, and the one line it prints once per run.

A stop signal is raised as :class:`KeyboardInterrupt` (:class:`Terminated` for SIGTERM and SIGHUP), so that
the same clean-up runs whatever stopped a run (:func:`utils.cli.run_main` turns it into one line and
status 130 or 143). Standard library only: :mod:`utils.startup` imports it before torch.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator


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
    quiet()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def script_owns_stops() -> bool:
    """Whether a script of this repository is the process and keeps :func:`handle_stops`'s handling to its exit."""
    return _script_process


def handle_stops(script: bool = False) -> dict:
    """Stop on Ctrl-C, SIGTERM and SIGHUP (each unless ignored, as SIGHUP under nohup) with :func:`raise_stop`;
    returns the handlers replaced. ``script``: for the whole process (:mod:`utils.startup`), so that
    :func:`utils.cli.run_main` leaves them in place to the exit instead of putting back what a signal during the
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


def quiet() -> None:
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


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from or while handling, in turn (each once)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``error`` is, or was raised while handling (a DataLoader worker killed by
    the same SIGTERM makes the parent raise RuntimeError as it unwinds)."""
    return next((e for e in error_chain(error) if isinstance(e, KeyboardInterrupt)), None)


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
