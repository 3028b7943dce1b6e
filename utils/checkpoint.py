"""Training checkpoints: atomic saving, and the one resume policy of the training scripts.

A checkpoint is a dict with the keys ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``args``
(argparse.Namespace with str, not Path, values), ``config`` (``MedVTConfig.to_dict()``), ``rng``
(one :func:`utils.rng.capture_rng` per process, in rank order; files written before hold rank 0's only) and
``best``; optionally ``scaler`` (fp16 GradScaler) and what a script adds (``history``; ``task``, the
:mod:`models.tasks` key, from :class:`utils.training.TrainingRun`). It holds
only tensors, primitives, lists/tuples/dicts and the Namespace, so
:func:`models.convert.read_checkpoint` (``weights_only=True``) can read it back.

The training scripts share one resume policy: :func:`save_training` writes the state after each
epoch (every process's RNG gathered first; ``checkpoint_last.pth`` last, as the epoch's commit point)
and :func:`resume_training` takes it back.

:func:`save_checkpoint` never leaves a half-written file at the target path: it writes a
temporary file in the same folder, flushes it to disk and renames it over the target
(``os.replace`` is atomic on POSIX and Windows), so an interrupted save keeps the old checkpoint;
a temporary file left by a killed process is removed by the next save into that folder.

:func:`prepare_output_dir` keeps a fresh run from replacing another run's checkpoints and
metrics: a folder that holds a run is used only with ``--resume`` of that run's own checkpoint
(continue it) or ``--overwrite`` (delete its files first). Its refusals are
:func:`check_run_dir`, which has no side effect, so that a script calls it before reading
anything; with :func:`read_resume_checkpoint` (the ``--resume`` file) and its own checks of the
data, model and initial weights, every mistake is reported before the output folder is created.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from models.config import MedVTConfig
from models.convert import CheckpointMismatchError, checkpoint_state_dict, load_state_dict_strict, read_checkpoint
from models.tasks import TASKS, check_task, checkpoint_task
from utils import distributed as du
from utils.cli import UserError, positive_int
from utils.logger import DeferredLog, log_run_start, setup_logger
from utils.metrics import write_json
from utils.outputs import check_output_dir, writing
from utils.resume_checks import check_kinds, check_training_state, damaged, load_optimizer, loading
from utils.rng import capture_rng, restore_rng, seed_everything

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

    Resuming into a new or empty folder is allowed: a copy of the run continues there."""
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
        return out
    held = f"--output_dir {out} already holds a training run ({', '.join(found)})"
    if not resume:
        if overwrite:
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


# Flags that say where a run reads and writes and how it is watched, not what it computes: they
# may change on --resume. So may paths (a data set moved to another disk), and --epochs, which
# stretch_schedule applies. Any other difference is refused (check_resume_args). A changed worker count
# is allowed but warned about (resume_training): the augmentation draws then differ.
RESUME_FREE = {"resume", "overwrite", "output_dir", "device", "num_workers", "log_every", "val_every",
               "no_val", "val_size", "val_flip", "val_videos", "stop_after", "debug", "tensorboard", "deterministic",
               "find_unused_parameters", "grad_checkpointing", "epochs", "max_epoches", "swin_pretrained", "vistr_coco",
               "init_from", "dist_timeout"}
PATH_SUFFIXES = ("_root", "_path", "_dir", "_file", "_list", "_pretrained")


def check_resume_args(path: str | os.PathLike, saved: argparse.Namespace | None, args: argparse.Namespace,
                      free: Iterable[str] = (), added: Mapping[str, object] | None = None) -> None:
    """Refuse to resume with other training settings than the saved run used (learning rates, sizes,
    loss weights, seed, ...): the optimiser and schedule state would not match what the log claims.
    ``saved`` is the checkpoint's ``args`` (None for files of other scripts: nothing to compare);
    ``free`` names flags of the calling script that may change besides RESUME_FREE; ``added`` gives
    flags newer than some checkpoints the value those runs had (a file without ``--scheduler_type``
    ran the poly decay), so that they are checked too."""
    if not isinstance(saved, argparse.Namespace):
        return
    before, now, free = {**(added or {}), **vars(saved)}, vars(plain_args(args)), RESUME_FREE | set(free)
    changed = [f"--{k} {now[k]} (the run used {before[k]})" for k in sorted(set(before) & set(now))
               if k not in free and not k.endswith(PATH_SUFFIXES) and before[k] != now[k]]
    if changed:
        raise UserError(f"{path}: --resume with other training settings than its run: {'; '.join(changed)}. "
                        "Resume with the run's settings, or start a new run from its weights (--overwrite or "
                        "another --output_dir, with the weights as initialisation)")


def stretch_schedule(scheduler, max_steps: int, epochs: int, logger) -> None:
    """``--epochs`` changed on resume: the poly decay continues from where it is to the new end."""
    max_steps = max(max_steps, 1)
    if scheduler.max_steps != max_steps:
        logger.warning(f"--epochs {epochs} differs from the checkpoint's run: the learning rate now decays to "
                       f"--end_lr by epoch {epochs - 1}")
        scheduler.max_steps = max_steps


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
    :func:`resume_training` gives each its own back); rank 0 alone writes, when ``is_best``,
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
    epoch behind: :func:`resume_training` rewrites it from the checkpoint. Returns the written
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


# What a checkpoint of save_training holds at least; a file without these (e.g. the authors' released
# weights) cannot continue a run, only initialise one (each script's --init_from or pretrained flags).
TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "config")
_RESTORED = ("model", "optimizer", "lr_scheduler", "scaler", "epoch", "best", "rng")


def read_resume_checkpoint(path: str | os.PathLike, args: argparse.Namespace, cfg, *, free: Iterable[str] = (),
                           added: Mapping[str, object] | None = None,
                           read_config: Callable[[dict], object] | None = None,
                           check: Callable[[dict], None] | None = None, init_flags: str = "",
                           task: str | None = None) -> dict:
    """Read and check the ``--resume`` file before anything is created: the refusals of
    :func:`resume_training` (a model of another ``task`` than the script's, named with its trainer; a file
    that is not a training checkpoint of this script, another model config than ``cfg``, the script's
    ``check``, other training settings), without a model or optimiser. Returns the checkpoint, for
    ``resume_training(..., ckpt=)``. ``init_flags`` names the script's flags that start a new run from
    weights (said when the file holds weights only)."""
    ckpt = read_checkpoint(path)
    if task is not None:
        classes_given = (args.num_classes is not None) if hasattr(args, "num_classes") else None
        check_task(ckpt, task, f"--resume {path}", TASKS[task].train, classes_given)
    _check_training_checkpoint(path, ckpt, cfg, read_config, init_flags, classes_flag=hasattr(args, "num_classes"),
                               same_task=task is not None and checkpoint_task(ckpt) == task)
    if check is not None:
        check(ckpt)
    check_resume_args(path, ckpt.get("args"), args, free, added)
    return ckpt


def _check_training_checkpoint(path, ckpt: dict, cfg, read_config, init_flags: str, classes_flag: bool = False,
                               same_task: bool = False) -> None:
    """Refuse a checkpoint of another model config, then one that is not a training checkpoint
    (``classes_flag``: the script has a --num_classes flag; ``same_task``: the file is known to be of the
    script's task), then one whose entries are damaged."""
    if isinstance(ckpt.get("config"), dict):
        _check_config(path, ckpt["config"], cfg, read_config or MedVTConfig.from_dict, classes_flag, same_task)
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        how = f"use {init_flags}" if init_flags else "use the script's initialisation flags"
        raise CheckpointMismatchError(
            f"--resume {path} is not a training checkpoint of this script (it has no {', '.join(missing)}): "
            f"--resume continues a run that this script saved; to start a new run from these weights, {how}")
    check_training_state(path, ckpt)


def resume_training(path: str | os.PathLike, args: argparse.Namespace, model, optimizer, scheduler, scaler,
                    info: du.DistInfo, logger, *, best: dict, free: Iterable[str] = (),
                    added: Mapping[str, object] | None = None,
                    read_config: Callable[[dict], object] | None = None,
                    check: Callable[[dict], None] | None = None,
                    ckpt: dict | None = None, init_flags: str = "", task: str | None = None) -> tuple[int, dict, dict]:
    """Continue the run saved in ``path`` by :func:`save_training`: the one resume policy of the
    training scripts. Returns (first epoch to train, best so far, the checkpoint's other entries:
    ``history``, ``args``, ``config``, ...).

    In order: the file is read safely (``weights_only``); the model config it records must equal
    ``model.cfg`` (``read_config`` makes a config of the saved dict; default ``MedVTConfig.from_dict``);
    ``check(ckpt)`` runs the script's own refusals; settings other than the run's are refused
    (:func:`check_resume_args`, ``free`` = more flags of the script that may change, ``added`` = values of
    flags that older checkpoints do not record); then the model
    (strict), optimiser, ``scheduler`` and ``scaler`` (when not None), epoch and best score are
    restored, and this process takes back its own RNG state if the run had as many processes (else a
    warning, and a reseed from seed, epoch and rank). A file written before every process's RNG was
    saved (one state) gives its RNG to rank 0. A schedule whose length follows a flag that may change
    (``--epochs``) is stretched by the caller afterwards (:func:`stretch_schedule`).

    Rank 0 then rewrites ``<args.output_dir>/history.json`` from the checkpoint's ``history`` when it is the
    run's own folder (repairing a kill between the two files), says where the best epoch's weights are
    when the run continues as a copy in another folder, and warns when the worker count differs from the
    run's (allowed, but the augmentations then differ).

    ``best``: the best-so-far dict of a run that has none yet (its keys name the script's metric).
    A file that is not a training checkpoint (no optimiser, epoch, ...) is refused, naming
    ``init_flags``, the script's flags that initialise a new run. ``ckpt``: the file as
    :func:`read_resume_checkpoint` read and checked it already (neither read nor checked again).
    """
    if ckpt is None:
        ckpt = read_resume_checkpoint(path, args, model.cfg, free=free, added=added, read_config=read_config,
                                      check=check, init_flags=init_flags, task=task)
    load_state_dict_strict(model, checkpoint_state_dict(ckpt, str(path)), source=str(path))
    load_optimizer(path, optimizer, ckpt["optimizer"])
    if scheduler is not None:
        check_kinds(path, "lr_scheduler", ckpt["lr_scheduler"], scheduler.state_dict())
        with loading(path, "lr_scheduler"):
            scheduler.load_state_dict(ckpt["lr_scheduler"])
    if scaler is not None and "scaler" in ckpt:
        with loading(path, "scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    epoch = ckpt["epoch"]
    reseed = 1000 * (epoch + 1) + info.rank + getattr(args, "seed", 42)
    with loading(path, "rng"):
        restore_own_rng(ckpt.get("rng"), info, logger, reseed=reseed)
    saved_best = ckpt.get("best") or best
    lacking = [k for k in best if k not in saved_best]
    if lacking:  # another script's metric: this one's comparisons would fail at the end of the first epoch
        raise damaged(path, "best", f"has no {', '.join(lacking)} (it holds {', '.join(saved_best)}): a checkpoint "
                                     "of another script?")
    best = dict(saved_best)
    metric = next((k for k in best if k != "epoch"), None)
    score = (f"best val {metric} {best[metric]:.4f} (epoch {best['epoch']})"
             if metric is not None and best.get("epoch", -1) >= 0 else "no best val score yet")
    logger.info(f"resumed from {path}: epoch {epoch} done, {score}")
    out = getattr(args, "output_dir", None)
    own_folder = out is not None and Path(path).resolve().parent == Path(out).resolve()
    if info.is_main and out is not None:
        # Only in the run's own folder: a copy continued elsewhere gets history.json with its first epoch, so
        # that a stop before it leaves that folder without run files (the same command then starts it again);
        # and not beside a lone epoch-0 checkpoint_best.pth, which --resume auto takes only without it.
        if isinstance(ckpt.get("history"), list) and own_folder and not first_epoch_only(out):
            # The checkpoint is the epoch's commit point: a process killed after it but before history.json
            # left that file an epoch behind (also when nothing is left to train and no epoch rewrites it).
            write_history(out, ckpt["history"])
        if best.get("epoch", -1) >= 0 and not own_folder:
            logger.warning(_best_of_copy(Path(path), epoch, int(best["epoch"]), Path(out)))
        _warn_other_workers(ckpt.get("args"), args, logger)
    return epoch + 1, best, {k: v for k, v in ckpt.items() if k not in _RESTORED}


def _best_of_copy(path: Path, epoch: int, best_epoch: int, out: Path) -> str:
    """Where the best epoch's weights are when a run continues as a copy in another folder: the new
    folder gets a checkpoint_best.pth only when one of its own epochs scores better."""
    source_best = path.parent / "checkpoint_best.pth"
    if source_best.is_file():
        where = f"are in {source_best}"
    elif best_epoch == epoch:
        where = f"are in {path}, the file resumed"
    else:
        where = f"are not in {path.parent} (it has no checkpoint_best.pth)"
    return (f"continuing a copy of the run of {path.parent}: its best epoch {best_epoch}'s weights {where}; "
            f"--output_dir {out} gets its own checkpoint_best.pth only when a later epoch scores better")


def _warn_other_workers(saved, args: argparse.Namespace, logger) -> None:
    """A changed worker count may resume (RESUME_FREE) but reseeds the augmentation draws: say so."""
    then, now = getattr(saved, "num_workers", None), getattr(args, "num_workers", None)
    if then is not None and now is not None and then != now:
        logger.warning(f"--num_workers {now} differs from the run's ({then}): the data loader's random augmentations "
                       "come out differently, so the resumed run does not repeat an uninterrupted one bit for "
                       f"bit; resume with --num_workers {then} for that")


def restore_own_rng(rng, info: du.DistInfo, logger, reseed: int) -> None:
    """Give this process its own RNG state from a checkpoint's ``rng``: a list with one state per
    process (:func:`save_training`), or one state (files written before: rank 0's). Where there is
    no state for this process, warn and seed everything with ``reseed`` (which should differ per rank
    and epoch): the run continues, but not bit-identically."""
    if isinstance(rng, list) and len(rng) == info.world_size:
        restore_rng(rng[info.rank])
    elif isinstance(rng, dict):  # one state, rank 0's
        if info.world_size > 1:
            logger.warning("the checkpoint holds the RNG state of rank 0 only (it was written before every "
                           "process's was saved); the other processes reseed (the run continues, but not "
                           "bit-identically)")
        if info.rank == 0:
            restore_rng(rng)
        else:
            seed_everything(reseed)
    else:
        logger.warning("the checkpoint's RNG states are missing or for a different number of processes; "
                       "reseeding (the run continues, but not bit-identically)")
        seed_everything(reseed)


def _check_config(path, saved: dict, cfg, read_config: Callable[[dict], object], classes_flag: bool = False,
                  same_task: bool = False) -> None:
    """Refuse a checkpoint whose recorded model config differs from ``cfg`` (the model the flags build);
    one with another class count as a checkpoint of another task (``classes_flag``: the script has a
    --num_classes flag, which a run of its own task may have set otherwise), or, when it is known to be
    of this task (``same_task``), as a run with another --num_classes."""
    try:
        then = read_config(saved)
    except CheckpointMismatchError:
        raise
    except UserError as e:  # e.g. a MED-VT++ (AVS) checkpoint given to a MED-VT script: name the file and flag
        raise CheckpointMismatchError(f"--resume {path}: {e}") from None
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointMismatchError(f"{path}: its model config cannot be read ({e})") from None
    if then != cfg:
        a, b = then.to_dict(), cfg.to_dict()
        if same_task and classes_flag and a.get("num_classes") != b.get("num_classes"):
            raise CheckpointMismatchError(f"--resume {path} is a run of this task with {a['num_classes']} classes, "
                                          f"this script's model has {b['num_classes']}: pass --num_classes "
                                          f"{a['num_classes']}")
        if "num_classes" in a and "num_classes" in b and a["num_classes"] != b["num_classes"]:
            # Another class count is another task's model (AVOS 1, VSS K, A2D 80): asking for "the same model
            # flags" would send an AVOS user looking for a --num_classes flag that does not exist.
            same_task = f"; if it is a run of this task, pass --num_classes {a['num_classes']}" if classes_flag else ""
            raise CheckpointMismatchError(
                f"--resume {path} is a checkpoint of another task: its model has {a['num_classes']} classes, this "
                f"script's model has {b['num_classes']}. Resume it with the training script of its task{same_task}")
        diff = [f"{k} {b[k]} (the run used {a[k]})" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
        raise CheckpointMismatchError(f"{path} was trained with another model config: {'; '.join(diff)}. Pass the "
                                      "same model flags as that run")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
