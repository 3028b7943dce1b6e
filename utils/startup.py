"""Imported first by every script, before torch (seconds to import): Ctrl-C, SIGTERM or SIGHUP in those
seconds ends in one line, as later in the run (:func:`utils.cli.run_main`), not in the traceback of
whatever import it interrupted. Only where a script of this repository runs as ``__main__`` (not when
the tests import the scripts)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from utils.cli import STOP_SIGNALS, Terminated, debug_enabled, raise_terminated, stop_line

_default_hook = sys.excepthook


def _one_line(kind, value, tb) -> None:
    if issubclass(kind, KeyboardInterrupt) and not debug_enabled(sys.argv[1:]):
        what = stop_line(value) if isinstance(value, Terminated) else "interrupted"
        print(f"{Path(sys.argv[0]).name}: {what}", file=sys.stderr)
        return
    _default_hook(kind, value, tb)


_main = getattr(sys.modules.get("__main__"), "__file__", None)
if _main and Path(os.path.realpath(_main)).is_relative_to(Path(__file__).resolve().parents[1]):
    sys.excepthook = _one_line
    for _sig in STOP_SIGNALS:
        if signal.getsignal(_sig) is not signal.SIG_IGN:
            signal.signal(_sig, raise_terminated)
