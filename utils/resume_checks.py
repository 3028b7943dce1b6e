"""Is a ``--resume`` file what :func:`utils.checkpoint.training_state` writes? Every entry of a training
checkpoint is checked before the run folder is touched (:func:`check_training_state`), and the loads of
the optimiser, schedule, scaler and RNG name the entry that does not fit (:func:`loading`,
:func:`load_optimizer`): a damaged or hand-edited file is one line naming the file and the entry, not a
KeyError mid-resume or, worse, a run that trains on (epoch -5 trained epochs -4, -3, ...).
"""
from __future__ import annotations

import contextlib

import torch

from models.convert import CheckpointMismatchError
from utils.rng import check_rng_state


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
