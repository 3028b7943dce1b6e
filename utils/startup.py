"""Imported first by every script, before torch (seconds to import): Ctrl-C, SIGTERM or SIGHUP in those
seconds ends in one line, as later in the run (:func:`utils.cli.run_main`), not in the traceback of
whatever import it interrupted; and a torchrun worker is tied to its launcher from its first moment (a
launcher killed with kill -9 before that would leave it training on, orphaned). Only where a script of
this repository runs as ``__main__`` (not when the tests import the scripts)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from utils.cli import debug_enabled, stop_message
from utils.process import end_with_parent, handle_stops, say, stop_status, under_torchrun

_default_hook = sys.excepthook


def _one_line(kind, value, tb) -> None:
    """An interruption that escapes before run_main: its line, and the status run_main gives it."""
    if issubclass(kind, KeyboardInterrupt) and not debug_enabled(sys.argv[1:]):
        say(stop_message(Path(sys.argv[0]).name, value))
        os._exit(stop_status(value))  # nothing to clean up yet
    _default_hook(kind, value, tb)


ROOT = Path(__file__).resolve().parents[1]


def repository_script(main: str | None, root: Path = ROOT) -> bool:
    """Whether ``main`` (the file Python runs) is a script of this repository under ``root``, not a tool of an
    environment kept in it (``.venv/bin/pytest``: a test session keeps its own handling of Ctrl-C)."""
    path = Path(os.path.realpath(main)) if main else None
    if path is None or not path.is_relative_to(root):
        return False
    parts = path.relative_to(root).parts
    return not (root / parts[0] / "pyvenv.cfg").exists() and not {"site-packages", "dist-packages"} & set(parts)


if repository_script(getattr(sys.modules.get("__main__"), "__file__", None)):
    sys.excepthook = _one_line
    handle_stops(script=True)
    if under_torchrun():
        end_with_parent()
