"""Training and validation loops (DETR's ``engine.py`` for MED-VT).

* :func:`train_one_epoch` — forward, loss, backward, gradient clipping and an optimiser step per
  batch; the loss terms are averaged over processes every step so that a non-finite loss stops
  every rank at the same step (:class:`NonFiniteLossError`, naming the sequences involved).
* :func:`run_epochs` — the epochs of a run, the same in every trainer: train, validate when due,
  step the schedule, keep the best epoch, log its line and close it (checkpoints, ``history.json``).

The tasks' validation lives with each task (``avos.validation``, ``vss.common``, ...).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from utils.cli import UserError, refuse_unused
from utils.distributed import is_dist, is_main_process
from utils.logger import epoch_line, format_metrics, progress
from utils.rng import capture_rng, restore_rng


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names epoch, step and the batch's sequences."""


# --amp values of every script: autocast dtype, or None for float32.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_inference_amp_flag(parser) -> None:
    """``--amp [bf16|fp16|none]`` of the inference scripts; a bare ``--amp`` (their older switch) is bf16."""
    parser.add_argument("--amp", nargs="?", const="bf16", default="none", choices=sorted(AMP_DTYPES),
                        help="autocast dtype: bf16 (a bare --amp), fp16, or none = float32 (default); meant for "
                             "CUDA; on a CPU without bf16/fp16 matrix units (AMX) slower than float32")


def add_runtime_flags(parser) -> None:
    """``--runtime torch|onnx`` and ``--onnx_path`` of the inference scripts built on the video predictor."""
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="run the model in PyTorch, or run --onnx_path (written by export_onnx.py) in ONNX "
                             "Runtime on the CPU (default torch)")
    parser.add_argument("--onnx_path", type=Path, default=None, metavar="FILE",
                        help="the exported model for --runtime onnx; a Video Swin model exported at 225 pixels or more "
                             "takes every input size from 225 on (ResNet-101 and PVTv2 from 64), a smaller Swin "
                             "export only its own size; the file records its range")


def check_runtime_flags(parser, args, torch_only: Sequence[str] = (), argv: Sequence[str] | None = None) -> None:
    """One-line errors for ``--runtime onnx`` without a readable ``--onnx_path``, for an ``--onnx_path``
    that would not run (no ``--runtime onnx``), and for the flags ``torch_only`` (dests) of the PyTorch
    model, which the exported file replaces (:func:`utils.cli.refuse_unused`)."""
    if args.runtime == "torch" and args.onnx_path is not None:
        parser.error(f"--onnx_path {args.onnx_path} runs with --runtime onnx only; add it, or leave --onnx_path out")
    if args.runtime == "onnx":
        refuse_unused(parser, args, torch_only, "to the PyTorch model, not to --runtime onnx (the file is the model)",
                      argv)
    if args.runtime == "onnx" and args.onnx_path is None:
        parser.error("--runtime onnx needs --onnx_path FILE (written by export_onnx.py)")
    if args.runtime == "onnx" and args.onnx_path.is_dir():
        parser.error(f"--onnx_path {args.onnx_path} is a folder, not a file")
    if args.runtime == "onnx" and not args.onnx_path.is_file():
        parser.error(f"--onnx_path {args.onnx_path} does not exist")


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``amp_dtype`` on ``device`` (no-op for None)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


# torch's errors for frames too small for a model, and what each means: label propagation normalises
# each frame over its tokens, which needs more than one; a pooling kernel (MED-VT++) must fit the
# downsampled frame.
_TOO_SMALL = {"spatial element": "label propagation needs more than one token per frame",
              "Kernel size can't be greater than actual input size": "a kernel of the model must fit the "
                                                                      "downsampled frame"}


def too_small_reason(error: Exception) -> str | None:
    """What ``error`` says about a frame too small for the model, or None for any other error."""
    return next((why for text, why in _TOO_SMALL.items() if text in str(error)), None)


@contextmanager
def frames_too_small(given: str, remedy: str) -> Iterator[None]:
    """Inference whose frame sizes depend on each video (no size to check up front): torch's error for
    frames too small for the model becomes one line, ``{given} is too small for this model ...; {remedy}``."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        why = too_small_reason(e)
        if why is None:
            raise
        raise UserError(f"{given} is too small for this model ({why}); {remedy}") from None


def check_frame_size(model: nn.Module, device: torch.device, sizes: dict[str, int | tuple[int, int] | None],
                     what: str, clip: Callable[[int, int], tuple[torch.Tensor, ...]] | None = None) -> None:
    """Refuse a frame size below the smallest the model accepts, before any training or output (with a
    too small --val_size, torch's error came only after a whole epoch, as a traceback).

    ``sizes``: flag → a shorter side (the longer side is not known: checked as a square, the fewest
    tokens for that side), a (height, width), or None/0 = not used. ``clip(h, w)``: the model's inputs
    for one clip of that size (default: two frames, ``[1, 2, 3, h, w]``). One forward pass per flag, in
    eval mode and without gradients; when it is refused, a few more (doubling, then bisecting) find the
    smallest shorter side, at the same aspect, to suggest. The RNG state is left as it was."""
    def shape(size: int | tuple[int, int], side: int) -> tuple[int, int]:
        if isinstance(size, int):
            return side, side
        h, w = size  # scaled so that its shorter side is ``side``
        return (side, max(side, round(side * w / h))) if h <= w else (max(side, round(side * h / w)), side)

    def inputs(h: int, w: int) -> tuple[torch.Tensor, ...]:
        return clip(h, w) if clip else (torch.zeros(1, 2, 3, h, w, device=device),)

    def refusal(size: int | tuple[int, int], side: int) -> str | None:
        try:
            with torch.no_grad():
                model(*inputs(*shape(size, side)))
        except (ValueError, RuntimeError) as e:
            why = too_small_reason(e)
            if why is None:
                raise
            return why
        return None

    was_training, rng = model.training, capture_rng()
    model.eval()
    try:
        for flag, size in sizes.items():
            if not size:
                continue
            lo = size if isinstance(size, int) else min(size)
            why = refusal(size, lo)
            if why is None:
                continue
            hi = 2 * lo  # lo refused; find the smallest accepted side in (lo, hi]
            while refusal(size, hi):
                lo, hi = hi, 2 * hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if refusal(size, mid) is None else (mid, hi)
            given = size if isinstance(size, int) else f"{size[0]} {size[1]}"
            raise UserError(f"{flag} {given} is too small for {what}: its frames need a shorter side of at least "
                            f"{hi} pixels ({why})")
    finally:
        model.train(was_training)
        restore_rng(rng)


def _reduce_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detached loss terms as floats, averaged over processes (one small all-reduce per step)."""
    keys = sorted(losses)
    t = torch.stack([losses[k].detach().float() for k in keys])
    if is_dist():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist()))


def epoch_steps(loader: Iterable, max_steps: int | None = None) -> int | None:
    """The steps of an epoch: the loader's batches, at most ``max_steps`` (``--steps_per_epoch``);
    None when neither is known."""
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    return total


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, clip_max_norm: float = 0.1,
                    amp_dtype: torch.dtype | None = None, max_steps: int | None = None,
                    logger: logging.Logger | None = None, scaler: torch.amp.GradScaler | None = None,
                    log_every: int = 50,
                    compute_losses: Callable[[nn.Module, dict], dict[str, torch.Tensor]] | None = None
                    ) -> dict[str, float]:
    """Train for one pass over ``loader`` (or ``max_steps`` batches).

    Batches are dicts with ``frames`` [B, T, 3, H, W] (normalised), ``masks`` [B, T, H, W] (0/1)
    and ``name`` (list of B sequence names; ``centre`` optional). Returns the mean of every loss
    term over the steps (averaged over processes), plus ``lr`` (first group), ``steps`` and
    ``step_time`` (seconds per step). ``compute_losses(model, batch)`` replaces the default
    ``criterion(model(frames), masks)`` for models with other inputs (MED-VT++ takes audio too).
    """
    model.train()
    criterion.train()
    total = epoch_steps(loader, max_steps)
    sums: dict[str, float] = {}
    steps = 0
    t0 = time.perf_counter()
    bar = progress(total=total, desc=f"epoch {epoch}", disable=not is_main_process())
    try:  # a closed bar first, so an error message starts on its own line
        for step, batch in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            if compute_losses is not None:
                with autocast(device, amp_dtype):
                    losses = compute_losses(model, batch)
            else:
                frames = batch["frames"].to(device, non_blocking=True)
                masks = batch["masks"].to(device, non_blocking=True)
                with autocast(device, amp_dtype):
                    outputs = model(frames)
                losses = criterion(outputs, masks)  # computed in float32 by the criterion
            values = _reduce_losses(losses)
            if not all(math.isfinite(v) for v in values.values()):
                centre = batch.get("centre")
                centre = centre.tolist() if torch.is_tensor(centre) else centre
                error = NonFiniteLossError(
                    f"non-finite loss at epoch {epoch}, step {step}: {format_metrics(values)}; "
                    f"batch sequences {list(batch['name'])} (centre frames {centre}). "
                    f"Training stopped (as the original); try a lower --lr{', --amp none' if amp_dtype else ''}, "
                    "or check these sequences.")
                bar.close()
                if logger is not None:  # also in train.log, which is where a long run is read afterwards
                    logger.error(str(error))
                raise error
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(losses["loss"]).backward()
                scaler.unscale_(optimizer)  # clip the true gradients
            else:
                losses["loss"].backward()
            if clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            steps += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / steps:.4f}")
            if logger is not None and (step + 1) % log_every == 0:
                lr = optimizer.param_groups[0]["lr"]
                logger.info(f"epoch {epoch} step {step + 1}/{total or '?'}  "
                            f"{format_metrics({k: v / steps for k, v in sums.items()})}  lr {lr:.3e}")
    finally:
        bar.close()
    stats = {k: v / max(steps, 1) for k, v in sums.items()}
    stats["lr"] = optimizer.param_groups[0]["lr"]
    stats["steps"] = steps
    stats["step_time"] = (time.perf_counter() - t0) / max(steps, 1)
    return stats


def run_epochs(start: int, epochs: int, stop_after: int | None, sampler, train_epoch: Callable[[int], dict],
               validate: Callable[[int], dict] | None, val_every: int, score: tuple[str, str], best: dict,
               history: list[dict], step_schedule: Callable[[], None],
               close_epoch: Callable[[int, bool, dict, list[dict]], object], logger: logging.Logger) -> dict:
    """Train epochs ``start`` .. ``epochs`` − 1 (at most ``stop_after`` of them); returns the best.

    Each epoch: the sampler's epoch is set, ``train_epoch(epoch)`` gives the row of training numbers,
    ``validate(epoch)`` adds its numbers every ``val_every`` epochs and after the last one (0 or None:
    never), the schedule steps, and ``score`` = (the row's key, the best dict's key: the names
    checkpoints of earlier runs keep) decides whether this epoch is the best. The row is appended to
    ``history`` (in place), its line logged, and ``close_epoch(epoch, is_best, best, history)``
    writes what the epoch leaves behind (:func:`utils.checkpoint.close_epoch`)."""
    row_key, best_key = score
    end = epochs if stop_after is None else min(epochs, start + stop_after)
    for epoch in range(start, end):
        t0 = time.time()
        sampler.set_epoch(epoch)
        row = {"epoch": epoch, **train_epoch(epoch)}
        if validate is not None and val_every > 0 and ((epoch + 1) % val_every == 0 or epoch == epochs - 1):
            row.update(validate(epoch))
        step_schedule()
        is_best = row_key in row and row[row_key] > best[best_key]
        if is_best:
            best = {best_key: float(row[row_key]), "epoch": epoch}
        history.append(row)
        logger.info(epoch_line(epoch, epochs, time.time() - t0, row, best))
        close_epoch(epoch, is_best, best, history)
    return best
