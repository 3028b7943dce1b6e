"""Readable logs: one ``logging`` logger writing to stdout and ``<output_dir>/train.log``, the
project's progress bars (:func:`progress`), and the frames/s bar and summary line of video inference
(:class:`Throughput`).

Only the main process prints; other ranks log warnings and errors only, so a multi-process run
reads like a single one.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

_FMT = "%(asctime)s %(levelname)s %(message)s"
# Where a bar's stream is a file or a pipe (``> run.out 2>&1``, nohup, a scheduler's log), a redraw every
# 0.1 s would add megabytes of carriage-return segments to it in an hour: there a bar writes a line at
# most this often, and none for a loop that ends sooner.
FILE_PROGRESS_S = 30.0


class _Lines:
    """A stream seen by tqdm where each redraw becomes one line (tqdm starts redraws with a carriage
    return and clears a closed bar with spaces: neither belongs in a log file)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").replace("\x1b[A", "").strip()  # (a nested bar moves the cursor up)
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _FileBar(tqdm):
    """A bar in a file: a new postfix waits for the next timed line (tqdm would write a line for each, as a
    terminal redraws)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True) -> None:
        super().set_postfix_str(s, refresh=False)


def progress(iterable=None, *, total: float | None = None, desc: str | None = None, unit: str = "it",
             leave: bool = False, delay: float = 0.0, disable: bool = False, file=None) -> tqdm:
    """The project's progress bar (tqdm): width following the terminal, removed when done unless ``leave``,
    shown only after ``delay`` seconds; on a stream that is not a terminal, one line per
    :data:`FILE_PROGRESS_S` seconds instead of redraws."""
    stream = file if file is not None else sys.stderr
    kwargs = dict(total=total, desc=desc, unit=unit, leave=leave, delay=delay, disable=disable, dynamic_ncols=True)
    isatty = getattr(stream, "isatty", None)
    if stream is not None and not (callable(isatty) and isatty()):
        kwargs.update(file=_Lines(stream), mininterval=FILE_PROGRESS_S, maxinterval=FILE_PROGRESS_S,
                      delay=max(delay, FILE_PROGRESS_S), dynamic_ncols=False, ncols=100)
        return _FileBar(iterable, **kwargs)
    if file is not None:
        kwargs["file"] = file
    return tqdm(iterable, **kwargs)


class ConsoleHandler(logging.StreamHandler):
    """The log's copy on stdout. Where its reader went away (``script | head``, a closed terminal), the
    run goes on writing its log file: logging would print its own traceback for every line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], (OSError, ValueError)):  # ValueError: the stream was closed
            super().handleError(record)


def setup_logger(output_dir: str | Path | None, main_process: bool = True, name: str = "medvt.train",
                 filename: str = "train.log") -> logging.Logger:
    """Return a logger printing to stdout (main process) and appending to ``output_dir/filename``.

    Calling it again (e.g. a second in-process run) replaces the handlers instead of duplicating them.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(_FMT, datefmt="%Y-%m-%d %H:%M:%S")
    stream = ConsoleHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if output_dir is not None and main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / filename)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def log_stop(line: str) -> None:
    """Append why a run stopped (its error line, an interruption) to the log files of this process's
    ``medvt`` loggers (``train.log``), which would otherwise just end there: a log read after a long run
    says what stopped it. A line that already ends a file (the non-finite loss, logged where it was
    found) is not written again."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not name.startswith("medvt") or not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler) or handler.stream is None:  # None: closed, a run ended
                continue
            path = Path(handler.baseFilename)
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, path.stat().st_size - 4096))
                    if f.read().decode("utf-8", "replace").rstrip().endswith(line.split(": ", 1)[-1]):
                        continue
                record = logging.LogRecord(name, logging.ERROR, "", 0, f"stopped: {line}", None, None)
                handler.stream.write(handler.format(record) + handler.terminator)
                handler.flush()
            except (OSError, ValueError):  # the log deleted, unreadable, or on the full disk that stopped the run
                continue  # (emit would print logging's own traceback): the line goes to stderr only


def log_run_start(logger: logging.Logger, args) -> None:
    """A run's first line in train.log: a marker and every argument. A folder's log holds every attempt
    (a resumed run, or a new start after one that failed before its first checkpoint), appended in
    turn, so each needs a line saying where it begins and with what."""
    logger.info("=== training started; arguments: " + " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())))


class DeferredLog:
    """Stands in for the logger while the output folder does not exist yet (the inputs are still being
    checked, so a mistake leaves nothing behind): keeps ``info`` / ``warning`` messages and
    :meth:`replay` sends them to the real logger (stdout and train.log) once it is set up."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str]] = []

    def info(self, msg: str) -> None:
        self.records.append((logging.INFO, msg))

    def warning(self, msg: str) -> None:
        self.records.append((logging.WARNING, msg))

    def replay(self, logger: logging.Logger) -> None:
        for level, msg in self.records:
            logger.log(level, msg)
        self.records.clear()


def format_metrics(values: dict[str, float], digits: int = 4) -> str:
    """``{"loss": 0.51, "lr": 1e-4}`` → ``"loss 0.5100  lr 1.000e-04"``."""
    parts = []
    for k, v in values.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.3e}" if (v != 0 and abs(v) < 1e-3) else f"{k} {v:.{digits}f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


def epoch_line(epoch: int, epochs: int, seconds: float, row: dict, best: dict) -> str:
    """The line every trainer logs when an epoch ends, e.g. ``epoch 3/9 done in 41.2 s: train_loss 0.3100
    val_miou 0.5200  (best miou 0.5200 @ epoch 3)``: the epoch's history ``row`` without its ``epoch``
    and step counts (``steps``, ``train_steps``); ``best`` as the trainers keep it: one metric and its
    ``epoch`` (-1 before any validation, then left out)."""
    numbers = {k: v for k, v in row.items() if k != "epoch" and not k.endswith("steps")}
    line = f"epoch {epoch}/{epochs - 1} done in {seconds:.1f} s: {format_metrics(numbers)}"
    if best.get("epoch", -1) >= 0:
        name, value = next((k, v) for k, v in best.items() if k != "epoch")
        line += f"  (best {name} {value:.4f} @ epoch {best['epoch']})"
    return line


class Throughput:
    """A progress bar in frames and, at :meth:`close`, one summary line (frames, wall time, frames/s)
    passed to ``log`` (e.g. a logger's ``info``); ``close`` also returns those figures."""

    def __init__(self, total: int, desc: str, log: Callable[[str], object] = print, disable: bool = False) -> None:
        self.bar = progress(total=total, desc=desc, unit="frame", leave=True, disable=disable)
        self.log, self.t0, self.frames = log, time.perf_counter(), 0

    def update(self, n: int = 1) -> None:
        self.frames += n
        self.bar.update(n)

    def close(self) -> dict:
        self.bar.close()
        wall = time.perf_counter() - self.t0
        fps = self.frames / wall if wall > 0 else float("nan")
        self.log(f"{self.frames} frames in {wall:.1f} s: {fps:.2f} frames/s")
        return {"frames": self.frames, "wall_s": wall, "frames_per_s": fps}
