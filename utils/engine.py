"""Training and validation loops (DETR's ``engine.py`` for MED-VT).

* :func:`train_one_epoch` — forward, loss, backward, gradient clipping and an optimiser step per
  batch; the loss terms are averaged over processes every step so that a non-finite loss stops
  every rank at the same step (:class:`NonFiniteLossError`, naming the sequences involved).
* :func:`evaluate_davis` — the original's per-epoch validation: every DAVIS'16 val frame predicted
  as the centre of its own wrap-around clip at ``val_size`` (optionally with the mirrored clip,
  merged by mean), thresholded at 0.5, and scored as the mean over sequences of the per-sequence
  mean Jaccard (spec avos §4.2, §6.2), all in memory.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.cli import UserError
from utils.distributed import is_dist, is_main_process
from utils.logger import format_metrics


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names epoch, step and the batch's sequences."""


# --amp values of every script: autocast dtype, or None for float32.
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_inference_amp_flag(parser) -> None:
    """``--amp [bf16|fp16|none]`` of the inference scripts; a bare ``--amp`` (their older switch) is bf16."""
    parser.add_argument("--amp", nargs="?", const="bf16", default="none", choices=sorted(AMP_DTYPES),
                        help="autocast dtype: bf16 (a bare --amp), fp16, or none = float32 (default); meant for "
                             "CUDA, runs slowly on CPU")


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``amp_dtype`` on ``device`` (no-op for None)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _reduce_losses(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detached loss terms as floats, averaged over processes (one small all-reduce per step)."""
    keys = sorted(losses)
    t = torch.stack([losses[k].detach().float() for k in keys])
    if is_dist():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return dict(zip(keys, t.tolist()))


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
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    sums: dict[str, float] = {}
    steps = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not is_main_process(), dynamic_ncols=True, leave=False)
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
                "Training stopped (as the original); try a lower --lr, --amp none, or check these sequences.")
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
    bar.close()
    stats = {k: v / max(steps, 1) for k, v in sums.items()}
    stats["lr"] = optimizer.param_groups[0]["lr"]
    stats["steps"] = steps
    stats["step_time"] = (time.perf_counter() - t0) / max(steps, 1)
    return stats


@torch.no_grad()
def evaluate_davis(model: nn.Module, sequences: Sequence, device: torch.device, val_size: int = 360,
                   clip_len: int = 6, flip: bool = True, amp_dtype: torch.dtype | None = None,
                   logger: logging.Logger | None = None) -> dict:
    """DAVIS mIoU of ``model`` on ``sequences`` (``datasets.video.VideoSequence`` with masks).

    Each sequence's frames are resized (shorter side ``val_size``, longer capped at 1.8×), every
    frame is the centre of its wrap-around clip; probabilities are upsampled to the GT size,
    thresholded at > 0.5 and compared with the GT (> 0). Returns ``{"miou": mean over sequences
    of per-sequence mean J, "per_sequence": {name: mean J}}``. Leaves the model in eval mode.
    """
    from datasets.stream import ImageFiles
    from datasets.transforms import test_size
    from models.predictor import VideoPredictor
    from utils.metrics import jaccard

    predictor = VideoPredictor(model, "centre", clip_len, flip=flip, flip_merge="mean", amp_dtype=amp_dtype)
    per_seq: dict[str, float] = {}
    for seq in tqdm(sequences, desc="val", disable=not is_main_process(), dynamic_ncols=True, leave=False):
        source = ImageFiles(seq.frames, lambda h, w: test_size(h, w, val_size), name=seq.name)
        annotated = [i for i, m in enumerate(seq.masks) if m is not None]
        out_size = seq.read_mask(annotated[0]).shape if annotated else source.frame_hw
        ious = [jaccard(p.probs[0].numpy() > 0.5, seq.read_mask(p.index))
                for p in predictor.stream(source, out_size, set(annotated).__contains__)]
        per_seq[seq.name] = float(np.mean(ious)) if ious else float("nan")
    miou = float(np.nanmean(list(per_seq.values()))) if per_seq else float("nan")
    if logger is not None:
        logger.info("val " + "  ".join(f"{k} {v:.3f}" for k, v in per_seq.items()) + f"  | mIoU {miou:.4f}")
    return {"miou": miou, "per_sequence": per_seq}
