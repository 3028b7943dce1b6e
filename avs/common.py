"""Pieces shared by avs/train_medvt.py and avs/test_medvt.py: model flags, audio features, evaluation."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from models.audio import build_frozen_vggish
from models.avs import MEDVTPlusPlus, build_avs_model
from models.avs_config import AVS_CONFIGS, get_avs_config
from models.predictor import VideoPredictor
from utils.cli import UserError, add_debug_flag, non_negative_int, positive_int
from utils.distributed import add_device_flag, gather_in_order, is_main_process, shard
from utils.engine import check_frame_size
from utils.logger import progress
from utils.outputs import writing

from .metrics import BatchAverage, f_score, mask_iou

TASK_CONFIG = {"s4": "medvtpp_s4", "ms3": "medvtpp_ms3"}
STAGES = range(4)  # the scales a stage flag names: 0 = 1/4 ... 3 = 1/32


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--task", choices=("s4", "ms3"), default="s4", help="AVSBench setting: single- or multi-source")
    g.add_argument("--config", default=None, choices=sorted(AVS_CONFIGS),
                   help="named model config (default: medvtpp_s4 / medvtpp_ms3 by --task; avs_tiny for smoke tests)")
    g.add_argument("--visual_backbone", default="pvt", choices=("pvt",),
                   help="visual backbone, kept for the original's command lines: only PVTv2 (the released model) "
                        "exists")
    g.add_argument("--mm_context", default="bidir", choices=("bidir", "tpavi"),
                   help="audio-visual fusion: bidirectional cross-attention (the released model) or AVSBench's "
                        "TPAVI on --tpavi_stages (the original MS3 code's alternative)")
    g.add_argument("--tpavi_va_flag", action="store_true",
                   help="TPAVI audio-visual attention; no effect with --mm_context bidir (the README passes it "
                        "anyway, spec §B.4)")
    g.add_argument("--tpavi_vv_flag", action="store_true", help="TPAVI visual self-attention (tpavi only)")
    g.add_argument("--tpavi_stages", default=[], nargs="*", type=int, choices=STAGES,
                   help="scales (0 = 1/4 … 3 = 1/32) with a TPAVI block (tpavi only)")
    g.add_argument("--vce_enc_layer", default=None, nargs=2, type=positive_int,
                   help="visual encoder layers on 1/32 and 1/16 (default: the config's, 3 1)")
    g.add_argument("--vggish_weights", default=None, metavar="PATH",
                   help="local torchvggish weights (vggish-10086976.pth); VGGish is frozen. Required unless "
                        "--allow_random_vggish")
    g.add_argument("--allow_random_vggish", action="store_true",
                   help="run with a randomly initialised VGGish (smoke tests only: audio features meaningless)")
    g.add_argument("--audio", default="log_mel", choices=("log_mel", "wav", "auto"),
                   help="audio source: the AVSBench log-mel pickles, the wavs (computed here), or pickle-if-present")
    g.add_argument("--allow_resample", action="store_true",
                   help="resample wavs that are not 16 kHz (scipy polyphase; the original uses resampy) "
                        "instead of raising an error")
    g.add_argument("--allow_silent", action="store_true", help="accept all-zero wavs instead of raising an error")
    add_device_flag(g)
    g.add_argument("--num_workers", default=2, type=non_negative_int, help="data-loading worker processes")
    add_debug_flag(p)


def model_config(args):
    name = args.config or TASK_CONFIG[args.task]
    over = {}
    if args.vce_enc_layer:
        over["enc_layers"] = tuple(args.vce_enc_layer)
    if args.mm_context == "tpavi":
        if args.tpavi_stages and not (args.tpavi_va_flag or args.tpavi_vv_flag):
            raise UserError("--tpavi_stages needs --tpavi_va_flag and/or --tpavi_vv_flag: a TPAVI block attends "
                            "audio-visually, visually, or both")
        over.update(mm_context="tpavi", tpavi_stages=tuple(args.tpavi_stages), tpavi_va=args.tpavi_va_flag,
                    tpavi_vv=args.tpavi_vv_flag)
    return get_avs_config(name, **over)


def check_im_size(model: MEDVTPlusPlus, device: torch.device, sizes: dict[str, int | None]) -> None:
    """Refuse a square frame size (flag → size; 0 = the native 224) too small for the model before any
    output: a pooling kernel must fit the downsampled frame (torch's error came mid-run, as a traceback)."""
    t = model.cfg.max_frames

    def clip(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:  # frames and VGGish embeddings
        return torch.zeros(1, t, 3, h, w, device=device), torch.zeros(1, t, 128, device=device)

    check_frame_size(model, device, sizes, f"config {model.cfg.name}", clip)


def build_model_and_audio(args, device: torch.device) -> tuple[MEDVTPlusPlus, nn.Module]:
    model = build_avs_model(model_config(args)).to(device)
    vggish = build_frozen_vggish(args.vggish_weights, args.allow_random_vggish).to(device)
    return model, vggish


@torch.no_grad()
def audio_features(vggish: nn.Module, log_mel: torch.Tensor) -> torch.Tensor:
    """log-mel [B, T, 1, 96, 64] → frozen VGGish embeddings [B, T, 128]."""
    b, t = log_mel.shape[:2]
    return vggish(log_mel.flatten(0, 1)).reshape(b, t, -1)


def save_pred_masks(logits: torch.Tensor, out_dir: Path, categories: list[str], names: list[str]) -> None:
    """As the original: sigmoid > 0.5 as 0/255 PNGs ``<out>/<category>/<name>/<name>_<i>.png``, i from 0."""
    masks = (torch.sigmoid(logits) > 0.5).to(torch.uint8).cpu().numpy() * 255
    for m, c, n in zip(masks, categories, names):
        d = out_dir / c / n if c else out_dir / n
        d.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(m):
            with writing(d / f"{n}_{i}.png"):
                Image.fromarray(f).convert("P").save(d / f"{n}_{i}.png")


@torch.no_grad()
def evaluate(model: nn.Module, vggish: nn.Module, dataset, batch_size: int, device: torch.device,
             save_dir: Path | None = None, max_batches: int | None = None, num_workers: int = 0,
             desc: str = "eval") -> dict:
    """mIoU and F-score per batch of ``batch_size`` clips of ``dataset`` in order (the first
    ``max_batches``), at the dataset's resolution, averaged over batches (spec §B.9). Under torchrun
    every process must call it: each scores every world-size-th batch, and all get the averages of
    one process scoring them all (the batch values added in batch order)."""
    starts = range(0, len(dataset), batch_size)[:max_batches]
    batches = {k: list(range(starts[k], min(starts[k] + batch_size, len(dataset)))) for k in shard(len(starts))}
    loader = DataLoader(dataset, batch_sampler=list(batches.values()), num_workers=num_workers)
    predictor, scores = None, {}  # batch number → (mIoU, F-score, clips)
    for k, batch in zip(batches, progress(loader, desc=desc, disable=not is_main_process())):
        frames = batch["frames"]
        b, t = frames.shape[:2]
        if predictor is None:  # a clip is a whole AVSBench video: one chunk, every frame kept, raw logits
            predictor = VideoPredictor(model, "chunk", t, activation="none")
        size = tuple(frames.shape[-2:])
        preds = predictor.predict_clips(frames, [{f: f for f in range(t)}] * b, lambda _f, size=size: size,
                                        inputs=(audio_features(vggish, batch["audio"].to(device)),))
        out = torch.stack([p[0] for _, p in preds]).unflatten(0, (b, t))  # [B, T, h, w] logits
        if batch["masks"].shape[1] != out.shape[1]:
            raise ValueError(f"evaluation needs a mask for every frame; got {batch['masks'].shape[1]} per clip "
                             f"(the S4 train split has only the first)")
        pred, gt = out.flatten(0, 1).float().cpu(), batch["masks"].flatten(0, 1).float()
        scores[k] = (float(mask_iou(pred, gt)), float(f_score(pred, gt)), len(frames))
        if save_dir is not None:
            save_pred_masks(out.cpu(), save_dir, list(batch["category"]), list(batch["name"]))
    miou, fs = BatchAverage(), BatchAverage()
    n_clips = 0
    for iou, f, clips in gather_in_order(scores):
        miou.add(iou)
        fs.add(f)
        n_clips += clips
    return {"miou": miou.value, "fscore": fs.value, "num_clips": n_clips, "num_batches": miou.count}
