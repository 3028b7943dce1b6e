"""AVOS validation during training: the original's per-epoch DAVIS'16 score.

Every DAVIS'16 val frame is predicted as the centre of its own wrap-around clip at ``val_size``
(optionally with the mirrored clip, merged by mean), thresholded at 0.5, and scored as the mean over
sequences of the per-sequence mean Jaccard (spec avos §4.2, §6.2), all in memory.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from datasets.stream import ImageFiles
from datasets.transforms import test_size
from models.predictor import VideoPredictor
from utils.distributed import gather_in_order, is_main_process, shard
from utils.logger import progress
from utils.metrics import jaccard


@torch.no_grad()
def evaluate_davis(model: nn.Module, sequences: Sequence, device: torch.device, val_size: int = 360,
                   clip_len: int = 6, flip: bool = True, amp_dtype: torch.dtype | None = None,
                   logger: logging.Logger | None = None) -> dict:
    """DAVIS mIoU of ``model`` on ``sequences`` (``datasets.video.VideoSequence`` with masks).

    Each sequence's frames are resized (shorter side ``val_size``, longer capped at 1.8×), every
    frame is the centre of its wrap-around clip; probabilities are upsampled to the GT size,
    thresholded at > 0.5 and compared with the GT (> 0). Returns ``{"miou": mean over sequences
    of per-sequence mean J, "per_sequence": {name: mean J}}``. Leaves the model in eval mode.

    Under torchrun every process must call it (with rank 0's buffers: the trainer broadcasts them):
    each scores every world-size-th sequence, and all get the whole result, in the order of
    ``sequences``: the numbers of one process.
    """
    predictor = VideoPredictor(model, "centre", clip_len, flip=flip, flip_merge="mean", amp_dtype=amp_dtype)
    mine: dict[int, float] = {}
    for i in progress(shard(len(sequences)), desc="val", disable=not is_main_process()):
        seq = sequences[i]
        source = ImageFiles(seq.frames, lambda h, w: test_size(h, w, val_size), name=seq.name)
        annotated = [f for f, m in enumerate(seq.masks) if m is not None]
        out_size = seq.read_mask(annotated[0]).shape if annotated else source.frame_hw
        ious = [jaccard(p.probs[0].numpy() > 0.5, seq.read_mask(p.index))
                for p in predictor.stream(source, out_size, set(annotated).__contains__)]
        mine[i] = float(np.mean(ious)) if ious else float("nan")
    per_seq = dict(zip((seq.name for seq in sequences), gather_in_order(mine)))
    miou = float(np.nanmean(list(per_seq.values()))) if per_seq else float("nan")
    if logger is not None:
        logger.info("val " + "  ".join(f"{k} {v:.3f}" for k, v in per_seq.items()) + f"  | mIoU {miou:.4f}")
    return {"miou": miou, "per_sequence": per_seq}
