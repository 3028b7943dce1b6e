"""Continuing a training run: the ``--resume`` file read and checked before anything is created
(:func:`read_resume_checkpoint`), then the run's state taken back (:func:`resume_training`: weights,
optimiser, schedule, each process's own RNG), the one resume policy of the training scripts
(:func:`utils.checkpoint.save_training` writes what it reads).

Is a ``--resume`` file what :func:`utils.checkpoint.training_state` writes? Every entry of a training
checkpoint is checked before the run folder is touched (:func:`check_training_state`), and the loads of the
optimiser, schedule, scaler and RNG name the entry that does not fit (:func:`loading`, :func:`load_optimizer`):
a damaged or hand-edited file is one line naming the file and the entry, not a KeyError mid-resume or, worse,
a run that trains on (epoch -5 trained epochs -4, -3, ...). Training settings other than the run's are
refused (:func:`check_resume_args`); a changed ``--epochs`` stretches the schedule (:func:`stretch_schedule`).
"""
from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from models.config import MedVTConfig
from models.convert import CheckpointMismatchError, checkpoint_state_dict, load_state_dict_strict, read_checkpoint
from models.tasks import TASKS, check_task, checkpoint_task
from utils import distributed as du
from utils.checkpoint import first_epoch_only, plain_args, write_history
from utils.cli import UserError
from utils.rng import check_rng_state, restore_rng, seed_everything


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
    """Continue the run saved in ``path`` by :func:`utils.checkpoint.save_training`: the one resume policy of the
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
    process (:func:`utils.checkpoint.save_training`), or one state (files written before: rank 0's). Where there is
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


# Far above any run's epoch count, and small enough for the reseed of restore_own_rng (below 2**32).
MAX_EPOCH = 1_000_000


def damaged(path, entry: str, what: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(f"--resume {path} is damaged: its '{entry}' entry {what}")


def is_number(v) -> bool:
    return type(v) in (int, float)


def check_training_state(path, ckpt: dict) -> None:
    """Refuse entries that are not what :func:`utils.checkpoint.training_state` writes, before anything is created: a
    damaged or hand-edited file would otherwise fail mid-resume (a KeyError of the optimiser, a format
    error of the best score) or, worse, train on (epoch -5 trained epochs -4, -3, ...)."""
    epoch = ckpt["epoch"]
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise damaged(path, "epoch", f"is {epoch!r:.60}, not the number of an epoch (0 to {MAX_EPOCH})")
    opt = ckpt["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        raise damaged(path, "optimizer", "is not an optimiser's state (a dict of 'state' and 'param_groups')")
    for entry in ("lr_scheduler", "scaler"):
        if entry in ckpt and not isinstance(ckpt[entry], dict):
            raise damaged(path, entry, f"is a {type(ckpt[entry]).__name__}, not a state dict")
    best = ckpt.get("best")
    if best:  # None or {} (files without a best yet): the script's own start
        if not (isinstance(best, dict) and all(isinstance(k, str) and is_number(v) for k, v in best.items())
                and type(best.get("epoch", -1)) is int and -1 <= best.get("epoch", -1) <= epoch):
            raise damaged(path, "best", f"is {best!r:.80}, not a best score (metric numbers and the epoch, from -1 "
                                         f"to the file's epoch {epoch}, that scored them)")
    history = ckpt.get("history")
    if history is not None and not (isinstance(history, list) and all(
            isinstance(row, dict) and all(isinstance(k, str) for k in row) for row in history)):
        raise damaged(path, "history", "is not a list of per-epoch rows (dicts)")
    rng = ckpt.get("rng")
    for state in (rng if isinstance(rng, list) else [] if rng is None else [rng]):
        try:
            check_rng_state(state)
        except (*LOAD_ERRORS, OverflowError) as e:
            raise damaged(path, "rng", f"holds a state the random number generators do not take ({e})") from None


def kind(value):
    """What a saved state value is, as far as loading it may differ from this run's: a number (int and
    float alike), a sequence of its length and kinds, a tensor, a dict, or its type's name."""
    if is_number(value):
        return "number"
    if isinstance(value, (list, tuple)):
        return (len(value), *map(kind, value))
    return "tensor" if isinstance(value, torch.Tensor) else "dict" if isinstance(value, dict) else type(value).__name__


def check_kinds(path, entry: str, saved: dict, own: dict) -> None:
    """Refuse saved state values of another kind than this run's object holds under the same name (a
    text for a learning rate, a list of another length); a name only one side has, or a None on
    either side, is left alone (torch versions add, drop and default them differently)."""
    for k in sorted(set(saved) & set(own), key=str):
        if saved[k] is not None and own[k] is not None and kind(saved[k]) != kind(own[k]):
            raise damaged(path, entry, f"holds {k} = {saved[k]!r:.60}, where this run has {own[k]!r:.60}")


# What a ``load_state_dict`` (or the RNG restore) raises for a state that is not what it saves.
LOAD_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError)


@contextlib.contextmanager
def loading(path, entry: str):
    """A saved state that its object's ``load_state_dict`` refuses is named with the file and entry
    (what the checks before loading cannot see)."""
    try:
        yield
    except LOAD_ERRORS as e:
        raise damaged(path, entry, f"does not fit this run ({type(e).__name__}: {str(e)[:200]})") from None


def load_optimizer(path, optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, refusing groups of another count or kind of values and
    per-parameter state of another shape than the parameter (each would fail at the first step). The
    trainers' AdamW (as SGD and Adam) keeps per parameter scalars (its step) and tensors of its shape."""
    for saved, own in zip(state["param_groups"], optimizer.param_groups):
        check_kinds(path, "optimizer", {k: v for k, v in saved.items() if k != "params"},
                     {k: v for k, v in own.items() if k != "params"})
    try:
        optimizer.load_state_dict(state)
    except ValueError as e:  # torch's refusal of groups of another count or size
        raise CheckpointMismatchError(f"{path}: optimizer state does not fit ({e}); were its parameter groups "
                                      "made with other settings?") from None
    except LOAD_ERRORS as e:
        raise damaged(path, "optimizer", f"does not fit this run ({type(e).__name__}: {str(e)[:200]})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                ok = v is None or is_number(v) or isinstance(v, torch.Tensor) and v.shape in (torch.Size(), p.shape)
                if not ok:
                    shown = f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else f"value {v!r:.40}"
                    raise damaged(path, "optimizer", f"holds {name} of {shown} for a parameter of shape "
                                                      f"{tuple(p.shape)}")
