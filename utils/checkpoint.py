"""Training checkpoints and run folders: atomic saving, what a training run writes each epoch, and which
folder a run may write in (continuing a run is :mod:`utils.resume`'s).

A checkpoint is a dict with the keys ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``args``
(argparse.Namespace with str, not Path, values), ``config`` (``MedVTConfig.to_dict()``), ``rng``
(one :func:`utils.rng.capture_rng` per process, in rank order; files written before hold rank 0's only) and
``best``; optionally ``scaler`` (fp16 GradScaler) and what a script adds (``history``; ``task``, the
:mod:`models.tasks` key, from :class:`utils.training.TrainingRun`). It holds
only tensors, primitives, lists/tuples/dicts and the Namespace, so
:func:`models.convert.read_checkpoint` (``weights_only=True``) can read it back.

The training scripts share one resume policy: :func:`save_training` writes the state after each
epoch (every process's RNG gathered first; ``checkpoint_last.pth`` last, as the epoch's commit point)
and :func:`utils.resume.resume_training` takes it back.

:func:`save_checkpoint` never leaves a half-written file at the target path: it writes a
temporary file in the same folder, flushes it to disk and renames it over the target
(``os.replace`` is atomic on POSIX and Windows), so an interrupted save keeps the old checkpoint;
a temporary file left by a killed process is removed by the next save into that folder.

:func:`prepare_output_dir` keeps a fresh run from replacing another run's checkpoints and
metrics: a folder that holds a run is used only with ``--resume`` of that run's own checkpoint
(continue it) or ``--overwrite`` (delete its files first). Its refusals are
:func:`check_run_dir`, which has no side effect, so that a script calls it before reading
anything; with :func:`utils.resume.read_resume_checkpoint` (the ``--resume`` file) and its own checks of the
data, model and initial weights, every mistake is reported before the output folder is created.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from utils import distributed as du
from utils.cli import UserError, positive_int, require_file
from utils.logger import DeferredLog, log_run_start, setup_logger
from utils.metrics import write_json
from utils.outputs import check_output_dir, writing
from utils.rng import capture_rng

# Files a training run leaves in its --output_dir; any of them means the folder holds a run (metrics.jsonl:
# what AVOS runs wrote before history.json).
RUN_FILES = ("checkpoint_last.pth", "checkpoint_best.pth", "metrics.jsonl", "history.json")
# Everything else a training script writes there, which --overwrite deletes too (and nothing else):
# its log, TensorBoard folder (--tensorboard), per-epoch validation tables (VSS) and the temporary
# files of an interrupted save_checkpoint.
RUN_LOG = "train.log"
RUN_FOLDERS = ("tb",)
RUN_PATTERN = re.compile(r"val_epoch\d+\.(csv|json)|\.(checkpoint_last|checkpoint_best)\.pth\..+\.tmp")


def add_run_args(group, epochs_flag: str = "--epochs") -> None:
    """``--resume``, ``--overwrite``, ``--stop_after``, ``--tensorboard``, ``--dist_timeout`` and
    ``--deterministic`` of every training script."""
    group.add_argument("--resume", default=None, metavar="PATH|auto",
                       help="checkpoint_last.pth of a run to continue; 'auto' = <output_dir>/checkpoint_last.pth "
                            "if it exists (else start)")
    group.add_argument("--overwrite", action="store_true",
                       help="start a new run in an --output_dir that holds one, deleting what a run wrote there "
                            "(checkpoints, train.log, metrics, history, tb/, val_epoch* tables; nothing else); "
                            "without it, or --resume, such a folder is refused")
    group.add_argument("--stop_after", default=None, type=positive_int, metavar="N",
                       help=f"stop after N epochs in this run (the schedule still follows {epochs_flag}); continue "
                            "later with --resume auto")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write each epoch's numbers (those of history.json) as TensorBoard scalars to "
                            "<output_dir>/tb (needs the tensorboard package)")
    group.add_argument("--dist_timeout", default=du.DIST_TIMEOUT_MIN, type=positive_int, metavar="MIN",
                       help="under torchrun: minutes a process waits in a collective before the run is stopped; "
                            "processes that finish their share of the validation wait for the others, so raise it "
                            f"when one validation takes longer (default {du.DIST_TIMEOUT_MIN})")
    group.add_argument("--deterministic", default="auto", choices=("auto", "on", "off"),
                       help="deterministic kernels (torch.use_deterministic_algorithms): needed for a resumed "
                            "run to equal an uninterrupted one bit for bit, since a few multi-threaded backward "
                            "kernels accumulate in a varying order; auto = on for CPU, off for CUDA (on CUDA it "
                            "costs speed and only warns where no deterministic kernel exists)")


def check_end_lr(args: argparse.Namespace) -> None:
    """A poly decay goes from ``--lr`` down to ``--end_lr``: a larger ``--end_lr`` would raise the lr
    instead (epoch 1 would already train above --lr); refused at argument time."""
    if args.end_lr > args.lr:
        raise UserError(f"--end_lr {args.end_lr} is larger than --lr {args.lr}: the poly schedule decays from --lr "
                        "to --end_lr; pass an --end_lr below --lr")


def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """Copy of ``args`` whose values are primitives (Paths and other objects become str)."""
    def conv(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        return str(v)

    return argparse.Namespace(**{k: conv(v) for k, v in vars(args).items()})


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a save that was killed (kill -9)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with writing(path), os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Whatever happened (disk full, Ctrl-C), the previous checkpoint at ``path`` is untouched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def resume_path(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` = ``<output_dir>/checkpoint_last.pth`` if it exists, else
    the ``checkpoint_best.pth`` of a run stopped while its first epoch was saved (:func:`first_epoch_only`)."""
    if resume == "auto":
        path = Path(output_dir) / "checkpoint_last.pth"
        if first_epoch_only(output_dir):
            return Path(output_dir) / "checkpoint_best.pth"
        return path if path.is_file() else None
    if resume and Path(resume).is_dir():
        raise IsADirectoryError(f"--resume {resume} is a folder, not a checkpoint file (give its checkpoint_last.pth)")
    if resume and not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: checkpoint file not found")
    return Path(resume) if resume else None


def first_epoch_only(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` holds a run stopped between its first epoch's two checkpoints: its
    ``checkpoint_best.pth`` (the whole state after epoch 0, as checkpoint_last.pth would have held it)
    but neither ``checkpoint_last.pth`` nor the ``history.json`` written after it."""
    out = Path(output_dir)
    return (out / "checkpoint_best.pth").is_file() and not any((out / name).exists() for name in
                                                               ("checkpoint_last.pth", "history.json", "metrics.jsonl"))


def run_files(output_dir: str | os.PathLike) -> list[str]:
    """The RUN_FILES present in ``output_dir`` as files (none: it holds no training run)."""
    out = Path(output_dir)
    return [name for name in RUN_FILES if (out / name).is_file()] if out.is_dir() else []


def run_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """Everything a training run writes in ``output_dir`` that is there: what ``--overwrite`` deletes
    (RUN_FILES, train.log, tb/, val_epoch*.csv/json, temporary checkpoint files); nothing else."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    names = {*RUN_FILES, RUN_LOG, *RUN_FOLDERS}
    return sorted(p for p in out.iterdir() if p.name in names or RUN_PATTERN.fullmatch(p.name))


def check_not_finished(start_epoch: int, epochs: int, logger, flag: str = "--epochs") -> bool:
    """After a resume: warn, and return False, when the run has already trained ``epochs`` epochs
    (``flag`` = the script's epoch-count flag) so that nothing is left to train."""
    if start_epoch < epochs:
        return True
    if start_epoch == epochs:
        logger.warning(f"the run has already trained its {start_epoch} epochs; nothing to do — raise {flag} to "
                       "train more")
    else:
        logger.warning(f"{flag} {epochs} but the run has already trained {start_epoch} epochs; nothing to do — "
                       f"raise {flag} above {start_epoch} to train more")
    return False


def check_run_dir(output_dir: str | os.PathLike, resume: str | None, overwrite: bool, can_resume: bool = True,
                  inputs: Mapping[str, str | os.PathLike | None] | None = None,
                  init: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Every refusal of :func:`prepare_output_dir`, with no side effect (nothing is created or
    deleted), so that a script can call it first, on every process:

    * ``--resume`` with ``--overwrite`` (continue the run / delete it: contradictory);
    * ``--resume PATH`` with one of ``init`` (flag → path: the script's flags that initialise a new run,
      which a resumed run would silently ignore). ``--resume auto`` is allowed with them, so a job
      script can always pass both: it continues the folder's run if there is one, and otherwise
      starts a new run from the initial weights;
    * a RUN_FILES name that is a folder in ``--output_dir`` (a run could neither continue from nor
      replace it);
    * an ``--output_dir`` that is a file, or that is, contains or lies inside one of ``inputs``
      (flag → path: data roots, initial weights; :func:`utils.outputs.check_output_dir`);
    * a folder that holds a run, without ``--resume`` or ``--overwrite``;
    * a folder that holds a run, with a ``--resume`` file that is not that run's own checkpoint
      (continuing run A there would replace run B's checkpoints and mix their metrics), or with
      ``--resume auto`` and no ``checkpoint_last.pth`` to continue from;
    * a ``--resume`` file of the folder other than its ``checkpoint_last.pth`` (e.g. checkpoint_best.pth)
      while that exists: continuing it would rewind the run, overwriting its later epochs.

    Resuming into a new or empty folder is allowed: a copy of the run continues there. The ``init`` files of a
    run that starts anew must exist (they are read only after the data and the model are built)."""
    out = Path(output_dir)
    if resume and overwrite:
        raise UserError(f"--resume {resume} and --overwrite contradict each other: --resume continues the run, "
                        "--overwrite deletes it to start a new one; pass only one of them")
    given = [f"{flag} {path}" for flag, path in (init or {}).items() if path]
    if resume and resume != "auto" and given:
        raise UserError(f"--resume {resume} and {', '.join(given)} contradict each other: --resume continues a run "
                        "with its own weights, so the initial weights would be ignored; pass --resume to continue "
                        f"the run, or {' / '.join(f.split()[0] for f in given)} (without --resume) to start a new one")
    if out.is_dir():
        folders = [name for name in RUN_FILES if (out / name).exists() and not (out / name).is_file()]
        if folders:
            raise UserError(f"--output_dir {out}: {', '.join(folders)} in it is a folder, not a file of a training "
                            "run; move it away or choose another --output_dir")
    check_output_dir(out, "--output_dir", dict(inputs or {}), overwrite=True, deletes=True)  # a file; an input
    found = run_files(out)
    if not found:
        _require_init(init)
        return out
    held = f"--output_dir {out} already holds a training run ({', '.join(found)})"
    if not resume:
        if overwrite:
            _require_init(init)
            return out
        how = "pass --resume auto to continue it, " if can_resume else ""
        raise UserError(f"{held}: {how}--overwrite to replace it, or choose another --output_dir")
    if resume == "auto":
        if not (out / "checkpoint_last.pth").is_file() and not first_epoch_only(out):
            raise UserError(f"--resume auto: {held} but no checkpoint_last.pth to continue it from; pass --overwrite "
                            "to replace it, or choose another --output_dir")
        return out
    if Path(resume).resolve().parent != out.resolve():
        raise UserError(f"--resume {resume} is not a checkpoint of the run in --output_dir {out} (it holds "
                        f"{', '.join(found)}): continuing it there would replace that run's checkpoints and mix "
                        f"their metrics. Continue the run in its own folder (--output_dir {Path(resume).parent}), "
                        "or give an empty --output_dir to continue a copy of it there")
    last = out / "checkpoint_last.pth"
    if last.is_file() and Path(resume).resolve() != last.resolve():
        # e.g. checkpoint_best.pth: continuing it here would overwrite checkpoint_last.pth (a later epoch)
        # and the later epochs' history, rewinding the run without a word
        raise UserError(f"--resume {resume} is not the latest checkpoint of the run in --output_dir {out}, "
                        f"which is {last}: continuing from it there would overwrite {last.name} and the history "
                        f"of the epochs after it. Resume {last} (or --resume auto), or continue from {resume} "
                        "in another --output_dir")
    return out


def _require_init(init: Mapping[str, str | os.PathLike | None] | None) -> None:
    """Each initial-weights file given (flag → path) is a file that exists (:func:`utils.cli.require_file`)."""
    for flag, path in (init or {}).items():
        if path:
            require_file(path, flag)


def prepare_output_dir(output_dir: str | os.PathLike, resume: str | None, overwrite: bool,
                       can_resume: bool = True, inputs: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Refuse to start a new run over an existing one (it would replace its checkpoints and append a
    second epoch 0 to its metrics) unless resuming that run (:func:`check_run_dir` lists every
    refusal); ``overwrite`` deletes the old run's files. Call it once the inputs are checked: it is
    the first step that changes the output folder."""
    out = check_run_dir(output_dir, resume, overwrite, can_resume, inputs)
    if overwrite:
        for path in run_outputs(out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def open_run(out_dir: str | os.PathLike, args: argparse.Namespace, info: du.DistInfo, early: DeferredLog,
             inputs: Mapping[str, str | os.PathLike | None], name: str) -> logging.Logger:
    """Start a training run's outputs, once every input is checked: prepare the folder (rank 0,
    :func:`prepare_output_dir`), open its train.log (logger ``name``), mark the run's start with its
    arguments and replay the messages the checks deferred. ``--tensorboard`` without its package is
    refused first, on every process (so that none waits for another that stopped)."""
    if args.tensorboard:
        check_tensorboard()
    if info.is_main:
        prepare_output_dir(out_dir, args.resume, args.overwrite, inputs=inputs)
    logger = setup_logger(out_dir, info.is_main, name=name)
    log_run_start(logger, args)
    early.replay(logger)
    return logger


def check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the 'tensorboard' package (pip install tensorboard); "
                        "each epoch's numbers are always written to <output_dir>/history.json and train.log") from None


def tensorboard_writer(args: argparse.Namespace, info: du.DistInfo):
    """The SummaryWriter of ``--tensorboard`` (rank 0; None otherwise), for :func:`close_epoch`."""
    if not (args.tensorboard and info.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(args.output_dir) / "tb"))


def training_state(args, cfg, model, optimizer, scheduler, scaler, epoch: int, best: dict, rng, **extra) -> dict:
    """What a training script saves each epoch: everything ``--resume`` restores (``extra`` adds more)."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch, "args": plain_args(args), "config": cfg.to_dict(), "rng": rng, "best": dict(best), **extra,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def save_last_and_best(state: dict, out_dir: str | os.PathLike, is_best: bool) -> dict[str, str]:
    """Write, when ``is_best``, ``checkpoint_best.pth`` and then ``checkpoint_last.pth`` (both atomic).

    ``checkpoint_last.pth`` is the epoch's commit point, so it comes last: a process killed before it
    leaves the previous epoch's, and ``--resume`` repeats the epoch, rewriting checkpoint_best.pth. In
    the other order a kill in between left a last checkpoint whose best epoch had no (or a stale)
    checkpoint_best.pth, and after the last epoch nothing would ever write it."""
    out_dir = Path(out_dir)
    paths = {}
    if is_best:
        paths["checkpoint_best"] = str(save_checkpoint(state, out_dir / "checkpoint_best.pth"))
    paths["checkpoint_last"] = str(save_checkpoint(state, out_dir / "checkpoint_last.pth"))
    return paths


def write_history(out_dir: str | os.PathLike, history: list[dict]) -> Path:
    """Write ``<out_dir>/history.json``: the run's epochs as its checkpoint records them."""
    path = Path(out_dir) / "history.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, history)


def save_training(out_dir: str | os.PathLike, is_best: bool, info: du.DistInfo, args, cfg, model, optimizer,
                  scheduler, scaler, epoch: int, best: dict, **extra) -> dict[str, str]:
    """Save the state after ``epoch`` (:func:`training_state`; ``extra`` adds entries such as ``history``).

    Every process calls it (it gathers every process's RNG state, in rank order, so that
    :func:`utils.resume.resume_training` gives each its own back); rank 0 alone writes, when ``is_best``,
    ``checkpoint_best.pth`` and then ``checkpoint_last.pth`` (:func:`save_last_and_best`). Returns the
    written paths ({} on the other ranks).
    """
    rng = du.all_gather_object(capture_rng())
    if not info.is_main:
        return {}
    if not Path(out_dir).is_dir():  # save_checkpoint would make a new, empty one: the run's log and files are gone
        raise UserError(f"--output_dir {out_dir} disappeared during the run (deleted or moved?): stopped at the end "
                        f"of epoch {epoch} without saving it")
    state = training_state(args, cfg, model, optimizer, scheduler, scaler, epoch, best, rng, **extra)
    return save_last_and_best(state, out_dir, is_best)


def close_epoch(out_dir: str | os.PathLike, info: du.DistInfo, args, cfg, model, optimizer, scheduler, scaler, writer,
                epoch: int, is_best: bool, best: dict, history: list[dict], *, task: str | None = None
                ) -> dict[str, str]:
    """The end of a training epoch, the same in every task (:meth:`utils.training.TrainingRun.fit` binds
    the run's parts for :func:`utils.engine.run_epochs`): :func:`save_training` with the run's
    ``history`` and ``task`` (every process's RNG; rank 0 writes), then rank 0 rewrites ``history.json`` and gives
    the epoch's numbers (``history[-1]``) to ``writer`` (:func:`tensorboard_writer`), and every process
    waits for it. A process killed after the checkpoints but before ``history.json`` leaves it an
    epoch behind: :func:`utils.resume.resume_training` rewrites it from the checkpoint. Returns the written
    checkpoint paths ({} on the other ranks)."""
    recorded = {"task": task} if task is not None else {}
    paths = save_training(out_dir, is_best, info, args, cfg, model, optimizer, scheduler, scaler, epoch, best,
                          history=history, **recorded)
    if info.is_main:
        write_history(out_dir, history)
        if writer is not None:
            for key, value in history[-1].items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, epoch)
            writer.flush()  # a run stopped later keeps this epoch's scalars
    du.barrier()
    return paths


def run_summary(history: list[dict], best: dict, out_dir: str | os.PathLike) -> dict:
    """What a training script returns: epochs done, best, history, output folder, the paths of the
    run's checkpoints (``checkpoint_last``, ``checkpoint_best``: those in the folder, also when this
    process resumed and wrote none), and the last epoch's numbers (loss terms, lr, val scores), also
    after a resume that had nothing left to train."""
    result = {"epochs_done": len(history), "best": best, "history": history, "output_dir": str(out_dir)}
    for name in ("checkpoint_last", "checkpoint_best"):
        if (Path(out_dir) / f"{name}.pth").is_file():
            result[name] = str(Path(out_dir) / f"{name}.pth")
    if history:
        result.update({k: v for k, v in history[-1].items() if k != "epoch"})
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
