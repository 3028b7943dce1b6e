"""One training run, the same in every task's trainer (AVOS, VSS, A2D, MED-VT++).

A trainer says once what its run is (:class:`RunSpec`: its task, its validation metric, the flags that
start a new run from weights, which flags may change on ``--resume``) and then, in order::

    run = TrainingRun(SPEC, args, info, input_paths(args))  # a --resume file that does not exist: refused
    ...  # its own checks and builds (data, model, frame sizes, initial weights: messages to run.early)
    run.read_resume(cfg)                                     # the --resume file read and checked
    logger = run.open()                                      # the first step that changes --output_dir
    extra = run.restore(model, optimizer, scheduler, scaler)  # a resumed run's state taken back
    return run.fit(state, sampler, train_epoch, validate, scheduler.step)

so that every mistake is refused before the output folder is created or changed, a resumed run
continues as the uninterrupted one (:func:`utils.resume.resume_training`), every epoch is closed
the same way (checkpoints recording the task, ``history.json``, TensorBoard) and every trainer returns
the same summary (:func:`utils.checkpoint.run_summary`).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from utils import distributed as du
from utils.checkpoint import (check_not_finished, close_epoch, first_epoch_only, open_run, resume_path, run_summary,
                              tensorboard_writer)
from utils.cli import UserError
from utils.engine import run_epochs
from utils.logger import DeferredLog
from utils.resume import read_resume_checkpoint, resume_training


_run_folder: Path | None = None  # this process's run folder, once TrainingRun.open prepared it
_folder_start = 0  # the first epoch of the run in that folder (a copy continued there: the one after its source's)


def resume_hint() -> str:
    """What a stopped trainer says (:func:`utils.cli.run_main`), from what its folder holds by then; what
    ``--resume auto`` would refuse (:meth:`TrainingRun.read_resume`) is not offered."""
    if _run_folder is None:
        return "nothing was written: run the same command again"
    if (_run_folder / "checkpoint_last.pth").is_file() or (first_epoch_only(_run_folder) and _folder_start == 0):
        return "to continue, run the same command with --resume auto (without --overwrite)"
    if first_epoch_only(_run_folder):  # a copy continued here, stopped between its first epoch's checkpoints
        best = _run_folder / "checkpoint_best.pth"
        return f"its one saved epoch is in {best} only: continue from it with --resume {best} and another --output_dir"
    return "no epoch was saved: run the same command again"


@dataclass(frozen=True)
class RunSpec:
    """What a trainer's run is, besides its flags."""
    task: str  # a key of models.tasks.TASKS: recorded in every checkpoint, checked on --resume
    log_name: str  # the logger of train.log
    metric: str  # the key of the best score (the name earlier runs' checkpoints keep)
    row_key: str  # the key of that score in a history row (what validate returns)
    init_flags: str  # the flags that start a new run from weights (named when --resume gets weights only)
    floor: float = -1.0  # the best score of a run that has none yet
    epochs_flag: str = "--epochs"
    free: tuple[str, ...] = ()  # flags that may change on --resume besides utils.resume.RESUME_FREE
    added: Mapping[str, object] | None = None  # values of flags that older checkpoints do not record
    read_config: Callable[[dict], object] | None = None  # a saved config dict → config (default: MED-VT's)


class TrainingRun:
    """The steps of a run that every trainer takes (see the module docstring); ``early`` keeps the
    messages of the checks before the log exists, and ``start_epoch``, ``best`` and ``history`` are
    the run's (a resumed run's after :meth:`restore`)."""

    def __init__(self, spec: RunSpec, args: argparse.Namespace, info: du.DistInfo,
                 inputs: Mapping[str, str | Path | None]) -> None:
        global _run_folder, _folder_start
        _run_folder, _folder_start = None, 0  # nothing written yet (a second run in one process)
        self.spec, self.args, self.info, self.inputs = spec, args, info, inputs
        self.out = Path(args.output_dir)
        self.resume_from = resume_path(args.resume, self.out)
        self.early = DeferredLog()
        self.start_epoch, self.best, self.history = 0, {spec.metric: spec.floor, "epoch": -1}, []
        self.logger: logging.Logger | None = None
        self._ckpt: dict | None = None
        self._writer = None

    @property
    def epochs(self) -> int:
        return getattr(self.args, self.spec.epochs_flag.lstrip("-"))

    def _resume_rules(self) -> dict:
        s = self.spec
        return dict(free=s.free, added=s.added, read_config=s.read_config, init_flags=s.init_flags)

    def read_resume(self, cfg, check: Callable[[dict], None] | None = None) -> None:
        """Read and check the ``--resume`` file, if any, for the model config ``cfg``: a file of another
        task, another config, ``check`` (the script's own refusal) or other training settings are refused
        (:func:`utils.resume.read_resume_checkpoint`). Nothing has been created yet."""
        if self.resume_from is not None:
            self._ckpt = read_resume_checkpoint(self.resume_from, self.args, cfg, check=check, task=self.spec.task,
                                                **self._resume_rules())
            if self._first_epoch and self._ckpt["epoch"] != 0:  # not a run stopped within its first epoch's files
                raise UserError(f"--resume auto: --output_dir {self.out} holds checkpoint_best.pth of epoch "
                                f"{self._ckpt['epoch']} but no checkpoint_last.pth or history.json (deleted?), so "
                                "it is not continued from; pass --overwrite to replace it, give it as --resume PATH "
                                "with another --output_dir to continue a copy, or choose another --output_dir")

    @property
    def _first_epoch(self) -> bool:
        """The run is continued from its checkpoint_best.pth (:func:`utils.checkpoint.first_epoch_only`)."""
        return self.args.resume == "auto" and self.resume_from is not None and \
            self.resume_from.name == "checkpoint_best.pth"

    def open(self) -> logging.Logger:
        """Prepare the output folder, open train.log (the checks' messages replayed) and TensorBoard."""
        global _run_folder
        self.logger = open_run(self.out, self.args, self.info, self.early, self.inputs, name=self.spec.log_name)
        _run_folder = self.out
        self._writer = tensorboard_writer(self.args, self.info)
        if self.args.resume == "auto" and self.resume_from is None:
            self.logger.info(f"--resume auto: no checkpoint in {self.out} to continue, so a new run starts")
        if self._first_epoch:
            self.logger.info("--resume auto: the run stopped between its first epoch's checkpoints; continuing from "
                             "checkpoint_best.pth, which holds that epoch's whole state")
        return self.logger

    def restore(self, model, optimizer, scheduler, scaler) -> dict | None:
        """Take back the state of the file :meth:`read_resume` checked; returns the file's other entries
        (its ``args``, ...), or None for a new run. A run with nothing left to train says so."""
        global _folder_start
        if self._ckpt is None:
            return None
        self.start_epoch, self.best, extra = resume_training(self.resume_from, self.args, model, optimizer, scheduler,
                                                             scaler, self.info, self.logger, best=self.best,
                                                             ckpt=self._ckpt, **self._resume_rules())
        self._ckpt = None  # free it
        own = self.resume_from.parent.resolve() == self.out.resolve()  # (its checkpoint_best.pth of epoch 0 too)
        _folder_start = 0 if own else self.start_epoch
        self.history = list(extra.get("history", []))
        check_not_finished(self.start_epoch, self.epochs, self.logger, self.spec.epochs_flag)
        return extra

    def fit(self, state: tuple, sampler, train_epoch: Callable[[int], dict], validate: Callable[[int], dict] | None,
            step_schedule: Callable[[], None]) -> dict:
        """Train the epochs left (:func:`utils.engine.run_epochs`), each closed with the run's checkpoints,
        which record ``state`` = (config, model, optimizer, scheduler, scaler) and the task; returns the
        run's summary."""
        cfg, model, optimizer, scheduler, scaler = state
        close = partial(close_epoch, self.out, self.info, self.args, cfg, model, optimizer, scheduler, scaler,
                        self._writer, task=self.spec.task)
        try:
            self.best = run_epochs(self.start_epoch, self.epochs, self.args.stop_after, sampler, train_epoch, validate,
                                   self.args.val_every, (self.spec.row_key, self.spec.metric), self.best,
                                   self.history, step_schedule, close, self.logger)
        finally:
            if self._writer is not None:
                self._writer.close()
        return run_summary(self.history, self.best, self.out)

