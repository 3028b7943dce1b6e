"""Two small helpers that overlap I/O with compute: a read-ahead iterator and an in-order job runner.

Both run one daemon thread, bound their queue (so a fast producer cannot fill memory), re-raise an
error of the thread in the caller with its original type (a UserError stays a UserError and reaches
the error boundary as one line), and never leave a thread blocked forever when the caller stops
early: every blocking put/get in a thread polls a stop flag.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked thread checks whether it should stop
_DONE = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; False if it was not put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def background_iter(iterable: Iterable[T], depth: int) -> Iterator[T]:
    """Yield the items of ``iterable``, produced by a daemon thread at most ``depth`` items ahead.

    ``iter(iterable)`` itself runs in the thread (so does a source's file opening). Closing this
    generator early (``break``, ``close()``, garbage collection) stops the thread after its
    current item and closes the underlying iterator there.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        it = None
        try:
            it = iter(iterable)
            for item in it:
                if not _put(q, (item, None), stop):
                    return
            _put(q, (_DONE, None), stop)
        except BaseException as e:  # handed to the consumer, who re-raises it
            _put(q, (_DONE, e), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # e.g. a decoder's open file, closed in the thread that used it

    thread = threading.Thread(target=produce, name="background_iter", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        # Usually immediate; bounded so that a producer stuck in a slow read cannot hang the caller
        # (it exits by itself once that read returns, as it finds ``stop`` set).
        thread.join(timeout=1.0)


class BackgroundWorker:
    """Runs submitted callables in order in one daemon thread (e.g. encoding and saving outputs).

    ``submit`` blocks while ``depth`` jobs wait. A job's exception is re-raised (original type) by
    the next ``submit`` or by ``close``; the jobs after it are skipped. As a context manager it
    closes on success; on an exception in the block it drops the waiting jobs, waits for the one
    running, and lets the block's exception propagate unmasked.
    """

    def __init__(self, depth: int = 8, name: str = "writer") -> None:
        self.depth = max(1, depth)
        self.max_pending = 0  # the largest number of waiting jobs seen (for tests)
        self._queue: queue.Queue = queue.Queue(maxsize=self.depth)
        self._error: BaseException | None = None
        self._cancel = threading.Event()  # skip the jobs still queued
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _DONE:
                return
            # After an error or a cancel the queue is still drained, so that no submit blocks forever.
            if self._error is None and not self._cancel.is_set():
                fn, args = job
                try:
                    fn(*args)
                except BaseException as e:
                    self._error = e

    def _raise_error(self) -> None:
        # Kept (not cleared): a worker that lost a job stays failed, and says so on every call.
        if self._error is not None:
            raise self._error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._closed:
            raise RuntimeError("BackgroundWorker: submit after close")
        self._raise_error()
        self._queue.put((fn, args))
        self.max_pending = max(self.max_pending, self._queue.qsize())

    def close(self) -> None:
        """Wait for every submitted job; re-raise a job's exception."""
        if not self._closed:
            self._closed = True
            self._queue.put(_DONE)
            self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Drop the waiting jobs, wait for the running one; a job's exception is discarded."""
        self._cancel.set()
        if not self._closed:
            self._closed = True
            self._queue.put(_DONE)
            self._thread.join()

    def __enter__(self) -> BackgroundWorker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
