"""Train MED-VT for video semantic segmentation on VSPW.

The authors released no VSS code; this recipe is the AVOS/A2D one adapted to dense multi-class
labels (every choice is listed in the README, "Video semantic segmentation"):

* model ``medvt_swinb_vss`` (:mod:`vss.config`): the AVOS Swin-B model with a 124-way head,
  initialised from Kinetics-400 Swin-B (``--swin_pretrained``) and the VisTR COCO transformer
  (``--vistr_coco``) as the original AVOS training, or from any MED-VT checkpoint
  (``--init_from``, e.g. the released AVOS weights; class-dependent layers are skipped);
* clips of 6 consecutive frames, every frame supervised with cross-entropy, 255 ignored
  (:mod:`vss.losses`), plus 0.5 × the same loss on the pre-propagation logits;
* AdamW, lr 1e-4 (backbone 1e-5), weight decay 1e-4, per-epoch polynomial decay (power 0.9) to
  1e-6, gradient-norm clipping 0.1, batch 1 clip per process;
* after every ``--val_every`` epochs, mIoU / mVC8 / mVC16 on the val split (under torchrun each
  process predicts its share of the videos);
  ``checkpoint_best.pth`` keeps the best val mIoU, ``checkpoint_last.pth`` the latest epoch.

Checkpoints are written atomically and hold the model config, so ``vss/inference_medvt_vss.py``
rebuilds the model from the file alone. ``--resume auto`` continues from
``<output_dir>/checkpoint_last.pth`` (every trainer's policy, ``utils.resume.resume_training``:
optimizer, schedule, best score and every process's RNG; other training settings than the run's are
refused); a run stopped
with ``--stop_after`` and resumed continues as the uninterrupted one (bit for bit with deterministic
kernels: ``--deterministic``, on by default on CPU).

Multi-GPU: ``torchrun --nproc_per_node N vss/train_medvt_vss.py ...`` (one clip per process).

Example::

    python vss/train_medvt_vss.py --vspw_root /data/VSPW_480p --output_dir out/vss \\
        --swin_pretrained swin_base_patch244_window877_kinetics400_22k.pth --vistr_coco 384_coco_r101.pth
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from datasets.path_config import add_path_args, dataset_root
from datasets.vspw import VSPWTrainTransform, build_vspw_train_dataset, vspw_root, vspw_sequences
from models import build_model
from models.registry import init_weights
from models.config import preset_name
from utils.checkpoint import add_run_args, check_end_lr, check_run_dir
from utils.cli import (ArgumentParser, add_debug_flag, clip_frames, non_negative_float, non_negative_int,
                       positive_float, positive_int, random_seed, run_main)
from utils.distributed import DistInfo, add_device_flag, broadcast_buffers, run_distributed, wrap_ddp
from utils.engine import AMP_DTYPES, check_frame_size, epoch_steps, train_one_epoch
from utils.metrics import write_results
from utils.optim import LR_GROUPS, PolyLR, param_groups
from utils.resume import stretch_schedule
from utils.rng import seed_everything
from utils.training import RunSpec, TrainingRun, resume_hint
from vss.common import evaluate_videos, format_summary
from vss.config import DEFAULT_CONFIG, config_names, vss_config
from vss.losses import VSSCriterion


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_CONFIG, type=preset_name, choices=config_names(),
                   help="model config preset")
    g.add_argument("--num_classes", type=positive_int, default=None,
                   help="override the preset's class count (VSPW: 124, the default of medvt_swinb_vss)")
    g.add_argument("--swin_pretrained", default=None, metavar="PATH",
                   help="Kinetics-400 Video Swin-B weights for the backbone (swin_base_patch244_window877_"
                        "kinetics400_22k.pth); without it and --init_from the backbone starts random")
    g.add_argument("--vistr_coco", default=None, metavar="PATH",
                   help="VisTR ResNet-101 COCO checkpoint (384_coco_r101.pth) for the transformer, as AVOS training")
    g.add_argument("--init_from", default=None, metavar="PATH",
                   help="MED-VT checkpoint (original or ours, e.g. the AVOS Swin-B release) to start from; entries "
                        "whose name or shape differ (the class-dependent head/propagation layers) are skipped")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute backbone/encoder activations in backward (0.46x the peak memory of a Swin-B "
                        "step, 1.5-1.6x its time)")

    g = p.add_argument_group("data")
    add_path_args(g, ["vspw"])
    g.add_argument("--train_split", default="train", help="split list used for training (<vspw_root>/<split>.txt)")
    g.add_argument("--num_frames", type=clip_frames, default=6,
                   help="frames per training clip; at least 2, the model attends across the frames of a clip. "
                        "Inference takes clips of this length (it is saved with the checkpoint); 6 if not given")
    g.add_argument("--centre_step", type=positive_int, default=None,
                   help="distance between clip centres in a video (default: --num_frames, as YouTube-VOS in AVOS)")
    g.add_argument("--frame_stride", type=positive_int, default=1, help="distance between the frames of a clip")
    g.add_argument("--train_sizes", type=positive_int, nargs="+", default=[360],
                   help="shorter side after resizing, one drawn per clip")
    g.add_argument("--max_size", type=non_negative_int, default=648,
                   help="cap on the longer side after resizing (0 = none)")
    g.add_argument("--crop", type=positive_int, nargs=2, default=[352, 640], metavar=("H", "W"),
                   help="random crop (padded with ignore if the image is smaller); multiples of 32 for Swin")
    g.add_argument("--no_hflip", action="store_true", help="disable the random horizontal flip")
    g.add_argument("--num_workers", type=non_negative_int, default=4, help="DataLoader worker processes")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=15, help="training epochs (the AVOS recipe)")
    g.add_argument("--batch_size", type=positive_int, default=1, help="clips per process and step")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate of the non-backbone parameters")
    g.add_argument("--lr_backbone", type=non_negative_float, default=1e-5, help="learning rate of the backbone")
    g.add_argument("--lr_groups", default="intended", choices=LR_GROUPS,
                   help="intended: backbone at --lr_backbone, the rest (incl. the new head) at --lr; "
                        "original: the AVOS Swin script's effective split (only label propagation at --lr)")
    g.add_argument("--end_lr", type=non_negative_float, default=1e-6,
                   help="learning rate reached by the polynomial decay")
    g.add_argument("--poly_power", type=positive_float, default=0.9,
                   help="power of the polynomial decay (stepped per epoch)")
    g.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--clip_max_norm", type=non_negative_float, default=0.1, help="gradient-norm clipping (0 = off)")
    g.add_argument("--loss", default="ce", choices=("ce", "focal"),
                   help="ce: cross-entropy; focal: the A2D softmax focal loss (gamma 2); 255 ignored in both")
    g.add_argument("--aux_loss", type=non_negative_float, default=0.5,
                   help="weight of the loss on the pre-propagation logits (models with label propagation)")
    g.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES),
                   help="autocast dtype: bf16 (recommended on recent GPUs), fp16 (with loss scaling) or none")
    g.add_argument("--steps_per_epoch", type=positive_int, default=None, metavar="N",
                   help="stop each epoch after N steps (smoke tests; default: the whole dataset)")
    g.add_argument("--seed", type=random_seed, default=42, help="random seed (each process adds its rank)")

    g = p.add_argument_group("validation, checkpoints, output")
    g.add_argument("--val_every", type=non_negative_int, default=1,
                   help="validate every N epochs and after the last (0 = never)")
    g.add_argument("--val_split", default="val", help="split list used for validation")
    g.add_argument("--val_videos", type=non_negative_int, default=0,
                   help="validate on the first N videos only (0 = all)")
    g.add_argument("--val_size", type=non_negative_int, default=480,
                   help="shorter side of validation frames (0 = as stored)")
    g.add_argument("--output_dir", default="runs/medvt_vss",
                   help="checkpoint_last.pth, checkpoint_best.pth, train.log, history.json")
    add_run_args(g)
    add_device_flag(g)
    add_debug_flag(p)
    return p


def build_loader(args: argparse.Namespace, rank: int, world_size: int,
                 num_classes: int) -> tuple[DataLoader, DistributedSampler]:
    transform = VSPWTrainTransform(args.train_sizes, args.max_size or None, tuple(args.crop),
                                   hflip=0.0 if args.no_hflip else 0.5)
    # the model's class count maps the masks' labels (a label it does not have is refused naming the mask)
    dataset = build_vspw_train_dataset(args.vspw_root, args.train_split, args.num_frames, args.centre_step,
                                       args.frame_stride, transform, num_classes=num_classes)
    # A DistributedSampler also in one process: the shuffle is a function of (seed, epoch), so a
    # resumed run sees the same order as an uninterrupted one.
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=world_size > 1)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        drop_last=True, pin_memory=torch.cuda.is_available(),
                        persistent_workers=args.num_workers > 0)
    return loader, sampler


# The flags that start a new run from weights (named when --resume is given a file of weights only).
INIT_FLAGS = "--init_from (any MED-VT checkpoint), or --swin_pretrained / --vistr_coco"
SPEC = RunSpec(task="vss", log_name="medvt.vss", metric="mIoU", row_key="mIoU", init_flags=INIT_FLAGS,
               floor=-math.inf)


def input_paths(args: argparse.Namespace) -> dict[str, str | Path | None]:
    """What the run reads, by flag: --output_dir must stay apart from all of it."""
    return {"--vspw_root": dataset_root("vspw", args.vspw_root), "--swin_pretrained": args.swin_pretrained,
            "--vistr_coco": args.vistr_coco, "--init_from": args.init_from}


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_end_lr(args)
    # The output folder's refusals first (an earlier run, --resume of another run, a file, inside an input,
    # --resume with --init_from): they cost nothing and change nothing.
    check_run_dir(args.output_dir, args.resume, args.overwrite, inputs=input_paths(args),
                  init={"--init_from": args.init_from})
    vspw_root(args.vspw_root)  # fail early, with the flag and variable named, before creating any folder
    return run_distributed(train, args, args.deterministic)


def train(args: argparse.Namespace, info: DistInfo) -> dict:
    """Everything the run reads (initial weights, data, the --resume file) is checked before the output
    folder is created or changed, so a mistake leaves nothing behind."""
    run = TrainingRun(SPEC, args, info, input_paths(args))
    out, device = Path(args.output_dir), info.device
    seed_everything(args.seed + info.rank)
    cfg = vss_config(args.model, args.num_classes)
    model = build_model(cfg)
    init_weights(model, run.early, ("--swin_pretrained", args.swin_pretrained), ("--vistr_coco", args.vistr_coco),
                 args.init_from)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    # training sees --crop-sized clips; validation frames at --val_size (0 = as stored: not known here)
    check_frame_size(model, device, {"--crop": tuple(args.crop),
                                     "--val_size": args.val_size if args.val_every else None}, f"--model {args.model}")
    model_without_ddp, model = model, wrap_ddp(model, info)

    # Without label propagation the "aux" logits are the final ones: no second loss term.
    criterion = VSSCriterion(args.loss, aux_weight=args.aux_loss if cfg.lprop_mode else 0.0)
    optimizer = torch.optim.AdamW(param_groups(model_without_ddp, args.lr, args.lr_backbone, args.lr_groups),
                                  weight_decay=args.weight_decay)
    scheduler = PolyLR(optimizer, max_steps=args.epochs - 1, end_lr=args.end_lr, power=args.poly_power)
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype is torch.float16 else None
    loader, sampler = build_loader(args, info.rank, info.world_size, cfg.num_classes)
    val_videos = []
    if args.val_every > 0:
        val_videos = vspw_sequences(vspw_root(args.vspw_root), args.val_split, need_masks=True)
        val_videos = val_videos[: args.val_videos] if args.val_videos > 0 else val_videos
    run.read_resume(cfg)

    logger = run.open()
    if run.restore(model_without_ddp, optimizer, scheduler, scaler) is not None:  # a changed --epochs stretches it
        stretch_schedule(scheduler, args.epochs - 1, args.epochs, logger)
    logger.info(f"VSS training: {args.model} ({cfg.num_classes} classes), {len(loader.dataset)} clips, "
                f"{epoch_steps(loader, args.steps_per_epoch)} steps/epoch/process, {info.world_size} process(es) "
                f"on {device}")
    def train_epoch(epoch: int) -> dict:
        return train_one_epoch(model, criterion, loader, optimizer, device, epoch, args.clip_max_norm, amp_dtype,
                               args.steps_per_epoch, logger, scaler)

    def validate(epoch: int) -> dict:
        model_without_ddp.eval()
        broadcast_buffers(model_without_ddp)  # every process scores its share with rank 0's statistics
        # validation autocasts in bf16 only (an fp16 run validates in float32, as before)
        summary = evaluate_videos(model_without_ddp, val_videos, device, save_predictions=False, log=logger.info,
                                  val_size=args.val_size or None, clip_len=args.num_frames,
                                  amp_dtype=amp_dtype if amp_dtype is torch.bfloat16 else None)
        if info.is_main:
            write_results(summary, out, f"val_epoch{epoch:03d}")
        logger.info(f"epoch {epoch} val: {format_summary(summary)}")
        return {k: summary[k] for k in ("mIoU", "mVC8", "mVC16")}

    return run.fit((cfg, model_without_ddp, optimizer, scheduler, scaler), sampler, train_epoch,
                   validate if val_videos else None, scheduler.step)


if __name__ == "__main__":
    run_main(main, resume=resume_hint)
