"""Train MED-VT for actor-action segmentation on A2D (the authors' recipe, spec a2d §A.5-§A.7).

* model ``medvt_swinb_a2d`` (``--backbone swinB``) or ``medvt_r101_a2d`` (``resnet101``): the AVOS
  model with an 80-way head (raw A2D ids), FFN 1024, no label propagation (``--lprop_mode 0``);
  Swin-B starts from Kinetics-400 weights (``--swin_b_pretrained_path``) and the VisTR COCO
  transformer (``--resnet101_coco_weights_path``, FFN sliced to 1024) as the original. The
  original's ResNet-101 A2D path applies no COCO init (only torchvision ImageNet weights, which
  our backbone does not download): give ``--init_from`` to start from a checkpoint;
* one item per training video, a random annotated frame, the 6-frame clip around it resized to
  320 × 480, no augmentation; only the annotated frame is supervised with a softmax focal loss
  (γ 2, :mod:`actor_action.losses`), + ``--aux_loss`` × the pre-propagation loss with lprop on;
* AdamW (lr 1e-4, params named ``backbone.*`` 1e-5, weight decay 1e-4), grad-norm clip 0.1,
  batch 1; the backbone's lr is 0 in epoch 0 and ``--lr_backbone`` from epoch 1; per-epoch
  polynomial decay (0.9) to 1e-6 over ``epochs − 1 − warmup_epochs`` = 24 epochs of 30; each
  batch's loss × exp(−epoch/10) (``--no_loss_decay`` turns that off). The original's other
  schedules: ``--scheduler_type step|cosine`` and ``--use_lr_warmup`` (see their ``--help``);
* after each epoch the ``--val_split`` (default ``test``: A2D has no val split, the original
  selects ``checkpoint_best.pth`` on it, spec §A.10 #4 — give ``--val_split train`` to avoid
  that) is scored as :mod:`actor_action.inference_medvt_a2d` does.

Checkpoints hold ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``args``, ``config``, so
the inference script rebuilds the model from the file. ``--resume auto`` continues a run (every
trainer's policy, ``utils.resume.resume_training``: optimizer, schedule, best score, history and
every process's RNG; other training settings than the run's are refused); a run stopped with
``--stop_after`` and resumed continues as the uninterrupted one (bit for bit with deterministic
kernels: ``--deterministic``, on by default on CPU).

Example::

    python actor_action/train_medvt_a2d.py --backbone swinB --a2d_root /data/A2D --output_dir out/a2d \\
        --swin_b_pretrained_path swin_base_patch244_window877_kinetics400_22k.pth \\
        --resnet101_coco_weights_path 384_coco_r101.pth
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import math
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR
from torch.utils.data import DataLoader, DistributedSampler

from actor_action.common import add_model_args, evaluate_a2d, format_summary, model_config
from actor_action.losses import A2DCriterion
from datasets.a2d import CLIP_SIZE, A2DDataset, a2d_root
from datasets.path_config import add_path_args, dataset_root
from models import build_model
from models.registry import init_weights
from utils.checkpoint import add_run_args, check_end_lr, check_run_dir
from utils.cli import (ArgumentParser, UserError, add_debug_flag, clip_frames, non_negative_float, non_negative_int,
                       positive_float, positive_int, random_seed, refuse_unused, run_main)
from utils.distributed import DistInfo, add_device_flag, broadcast_buffers, run_distributed, wrap_ddp
from utils.engine import check_frame_size, epoch_steps, train_one_epoch
from utils.optim import DECAYS, PolyLR, WarmupDecayLR, param_groups
from utils.resume import stretch_schedule
from utils.rng import seed_everything
from utils.training import RunSpec, TrainingRun, resume_hint


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    g = p.add_argument_group("initialisation")
    g.add_argument("--swin_pretrained", "--swin_b_pretrained_path", dest="swin_b_pretrained_path", default=None,
                   metavar="PATH",
                   help="Kinetics-400 Video Swin-B weights (swin_base_patch244_window877_kinetics400_22k.pth)")
    g.add_argument("--resnet101_coco_weights_path", default=None, metavar="PATH",
                   help="VisTR COCO checkpoint (384_coco_r101.pth): the Swin model's transformer (FFN sliced)")
    g.add_argument("--init_from", default=None, metavar="PATH",
                   help="MED-VT checkpoint to start from (entries whose name or shape differ are skipped)")
    g = p.add_argument_group("data")
    add_path_args(g, ["a2d"])
    g.add_argument("--num_frames", type=clip_frames, default=6,
                   help="clip length around the annotated frame (at least 2: the model attends across the frames "
                        "of a clip)")
    g.add_argument("--clip_size", type=positive_int, nargs=2, default=list(CLIP_SIZE), metavar=("H", "W"),
                   help="clip resize (the original: 320 480)")
    g.add_argument("--end_window", default="clamp", choices=("clamp", "original"),
                   help="clip near a video's end (see inference_medvt_a2d.py --help)")
    g.add_argument("--num_workers", type=non_negative_int, default=4, help="DataLoader worker processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    g.add_argument("--batch_size", type=positive_int, default=1, help="clips per process and step")
    g.add_argument("--lr", type=positive_float, default=1e-4,
                   help="learning rate of the parameters not named backbone.*")
    g.add_argument("--lr_backbone", type=non_negative_float, default=1e-5,
                   help="learning rate of backbone.* (0 in epoch 0)")
    g.add_argument("--scheduler_type", default="poly", choices=DECAYS,
                   help="per-epoch decay of both groups' lr, stepped after each epoch: poly (--end_lr, --poly_power) "
                        "over epochs − 1 − warmup_epochs epochs; step: ×0.1 every --lr_drop epochs; cosine: to 0 "
                        "over epochs − warmup_epochs epochs (then back up, as torch's CosineAnnealingLR)")
    g.add_argument("--end_lr", type=non_negative_float, default=1e-6,
                   help="learning rate reached by the polynomial decay")
    g.add_argument("--poly_power", type=positive_float, default=0.9, help="power of the per-epoch polynomial decay")
    g.add_argument("--lr_drop", type=positive_int, default=5, help="epochs between the ×0.1 drops of the step decay")
    g.add_argument("--use_lr_warmup", action="store_true",
                   help="linear warm-up of every group from 0, then the decay, as the original ran it: lr 0 in "
                        "epochs 0 and 1, base·(e−1)/warmup_epochs in epoch e ≤ warmup_epochs+1, then the decay from "
                        "its start (instead of the backbone-only lr 0 in epoch 0)")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=5,
                   help="length of the --use_lr_warmup ramp; without it, as the original, it only shortens the "
                        "poly and cosine decays")
    g.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--clip_max_norm", type=non_negative_float, default=0.1, help="gradient-norm clipping (0 = off)")
    g.add_argument("--aux_loss", type=non_negative_float, default=0.5,
                   help="weight of the pre-propagation loss (lprop on)")
    g.add_argument("--mask_loss_coef", type=positive_float, default=1.0, help="weight of the focal loss")
    g.add_argument("--no_loss_decay", action="store_true", help="do not scale each epoch's loss by exp(-epoch/10)")
    g.add_argument("--steps_per_epoch", type=positive_int, default=None, metavar="N",
                   help="stop each epoch after N steps")
    g.add_argument("--seed", type=random_seed, default=42, help="random seed (each process adds its rank)")
    g = p.add_argument_group("validation, checkpoints, output")
    g.add_argument("--val_every", type=non_negative_int, default=1,
                   help="evaluate every N epochs and after the last (0 = never)")
    g.add_argument("--val_split", default="test", choices=("train", "test"),
                   help="split scored after each epoch and used to pick checkpoint_best.pth (original: test)")
    g.add_argument("--val_items", type=non_negative_int, default=0,
                   help="score the first N annotated frames only (0 = all)")
    g.add_argument("--output_dir", default="runs/medvt_a2d",
                   help="checkpoint_last.pth, checkpoint_best.pth, train.log, history.json")
    add_run_args(g)
    add_device_flag(g)
    add_debug_flag(p)
    return p


def set_backbone_lr(optimizer, epoch: int, lr_backbone: float) -> None:
    """The original: backbone lr 0 during epoch 0, reset to --lr_backbone at the start of epoch 1."""
    for g in optimizer.param_groups:
        if g.get("name") == "backbone":
            if epoch == 0:
                g["lr"] = 0.0
            elif epoch == 1:
                g["lr"] = lr_backbone


# What a checkpoint written before --scheduler_type, --use_lr_warmup and --lr_drop existed ran, so that
# resuming it with another schedule is refused like any other changed setting.
SCHEDULE_BEFORE_FLAGS = {"scheduler_type": "poly", "use_lr_warmup": False, "lr_drop": 5}


def build_scheduler(optimizer, args) -> LRScheduler:
    """The original's schedule for --scheduler_type and --use_lr_warmup, stepped once per epoch, after it."""
    if args.use_lr_warmup:
        return WarmupDecayLR(optimizer, args.warmup_epochs, args.scheduler_type, args.epochs, end_lr=args.end_lr,
                             power=args.poly_power, step_size=args.lr_drop)
    if args.scheduler_type == "step":
        return StepLR(optimizer, step_size=args.lr_drop, gamma=0.1)
    if args.scheduler_type == "cosine":
        # torch's own class, as the original: its recursive update continues from the backbone lr that
        # set_backbone_lr resets in epoch 1, which a closed form would not
        return CosineAnnealingLR(optimizer, T_max=max(args.epochs - args.warmup_epochs, 1))
    return PolyLR(optimizer, max_steps=args.epochs - 1 - args.warmup_epochs, end_lr=args.end_lr,
                  power=args.poly_power)


def follow_epochs(scheduler, args, run_epochs: int, logger) -> None:
    """--epochs changed on --resume: the decay follows the new length (the step decay has none)."""
    if isinstance(scheduler, PolyLR):
        stretch_schedule(scheduler, args.epochs - 1 - args.warmup_epochs, args.epochs, logger)
    elif run_epochs != args.epochs:
        if isinstance(scheduler, CosineAnnealingLR):  # a recursive update: no closed form to refit
            raise UserError(f"--epochs {args.epochs}: the run used {run_epochs}, and --scheduler_type cosine "
                            "without --use_lr_warmup cannot change length on --resume")
        if isinstance(scheduler, WarmupDecayLR):
            scheduler.epochs = args.epochs
            logger.warning(f"--epochs {args.epochs} differs from the checkpoint's run ({run_epochs}): the "
                           f"{args.scheduler_type} decay now follows {args.epochs} epochs")


# The flags that start a new run from weights (named when --resume is given a file of weights only).
INIT_FLAGS = "--init_from (any MED-VT checkpoint), or --swin_pretrained / --resnet101_coco_weights_path"
SPEC = RunSpec(task="a2d", log_name="medvt.a2d", metric="miou_original", row_key="miou_original",
               init_flags=INIT_FLAGS, floor=-math.inf, added=SCHEDULE_BEFORE_FLAGS)


def input_paths(args: argparse.Namespace) -> dict[str, str | Path | None]:
    """What the run reads, by flag: --output_dir must stay apart from all of it."""
    return {"--a2d_root": dataset_root("a2d", args.a2d_root), "--swin_pretrained": args.swin_b_pretrained_path,
            "--resnet101_coco_weights_path": args.resnet101_coco_weights_path, "--init_from": args.init_from}


def same_schedule_length(args: argparse.Namespace):
    """--resume refusal of this script: the cosine decay without warm-up cannot change length
    (:func:`follow_epochs`), checked before anything is created."""
    def check(ckpt: dict) -> None:
        run_epochs = getattr(ckpt.get("args"), "epochs", args.epochs)
        if args.scheduler_type == "cosine" and not args.use_lr_warmup and run_epochs != args.epochs:
            raise UserError(f"--epochs {args.epochs}: the run used {run_epochs}, and --scheduler_type cosine "
                            "without --use_lr_warmup cannot change length on --resume")
    return check


def check_schedule_length(args: argparse.Namespace) -> None:
    """Refuse an --epochs that leaves the schedule no room: the original clamps a decay of fewer than
    one epoch to one, so every epoch after the first trained at --end_lr (poly) or the lr went to 0
    and back (cosine), without a word; --use_lr_warmup trains epochs 0 and 1 at lr 0."""
    e, w = args.epochs, args.warmup_epochs
    if args.use_lr_warmup:
        if w < 1:
            raise UserError("--use_lr_warmup needs --warmup_epochs 1 or more")
        if e <= 2:
            raise UserError(f"--use_lr_warmup trains epochs 0 and 1 at lr 0, so --epochs {e} would not train; "
                            "raise --epochs above 2 or leave out --use_lr_warmup")
        return
    decay = {"poly": e - 1 - w, "cosine": e - w}.get(args.scheduler_type)
    if e >= 2 and decay is not None and decay < 1:
        raise UserError(f"--epochs {e} with --warmup_epochs {w}: the {args.scheduler_type} decay would run over "
                        f"{decay} epochs, so the lr would drop to its end after epoch 0 instead of decaying over the "
                        f"run; pass --warmup_epochs {w - (1 - decay)} or less (without --use_lr_warmup it only "
                        "shortens the decay)")


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.scheduler_type != "step":  # the other decays have no period: the flag would do nothing
        refuse_unused(parser, args, ("lr_drop",), "to --scheduler_type step only (its period)", argv)
    check_schedule_length(args)
    if args.scheduler_type == "poly":  # the other decays do not use --end_lr
        check_end_lr(args)
    # The output folder's refusals first (an earlier run, --resume of another run, a file, inside an input,
    # --resume with --init_from): they cost nothing and change nothing.
    check_run_dir(args.output_dir, args.resume, args.overwrite, inputs=input_paths(args),
                  init={"--init_from": args.init_from})
    a2d_root(args.a2d_root)  # fail early, naming the flag and variable, before creating any folder
    return run_distributed(train, args, args.deterministic)


def train(args: argparse.Namespace, info: DistInfo) -> dict:
    """Everything the run reads (initial weights, data, the --resume file) is checked before the output
    folder is created or changed, so a mistake leaves nothing behind."""
    run = TrainingRun(SPEC, args, info, input_paths(args))
    device = info.device
    seed_everything(args.seed + info.rank)
    root = a2d_root(args.a2d_root)  # fail early, naming the flag and variable
    cfg = model_config(args)
    model = build_model(cfg)
    init_weights(model, run.early, ("--swin_b_pretrained_path", args.swin_b_pretrained_path),
                 ("--resnet101_coco_weights_path", args.resnet101_coco_weights_path), args.init_from)
    model.to(device)
    check_frame_size(model, device, {"--clip_size": tuple(args.clip_size)},
                     f"--model {args.model}" if args.model else f"--backbone {args.backbone}")
    model_without_ddp, model = model, wrap_ddp(model, info)
    criterion = A2DCriterion(aux_weight=args.aux_loss if cfg.lprop_mode else 0.0, mask_coef=args.mask_loss_coef)
    optimizer = torch.optim.AdamW(param_groups(model_without_ddp, args.lr, args.lr_backbone, "intended"),
                                  weight_decay=args.weight_decay)
    scheduler = build_scheduler(optimizer, args)
    dataset = A2DDataset(root, "train", args.num_frames, tuple(args.clip_size), args.end_window)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed,
                                 drop_last=info.world_size > 1)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        drop_last=True, persistent_workers=args.num_workers > 0,
                        collate_fn=_collate)
    val_set = A2DDataset(root, args.val_split, args.num_frames, tuple(args.clip_size), args.end_window) \
        if args.val_every > 0 else None
    for shortfall in (data.shortfall for data in (dataset, val_set) if data is not None and data.shortfall):
        run.early.warning(shortfall)
    run.read_resume(cfg, check=same_schedule_length(args))

    logger = run.open()
    extra = run.restore(model_without_ddp, optimizer, scheduler, None)
    if extra is not None:  # a changed --epochs: the decay follows the new length
        follow_epochs(scheduler, args, getattr(extra.get("args"), "epochs", args.epochs), logger)
    logger.info(f"A2D training: {cfg.num_classes} classes, lprop_mode {cfg.lprop_mode}, query_decoder_scales "
                f"{cfg.query_decoder_scales}; {len(dataset)} videos, {epoch_steps(loader, args.steps_per_epoch)} "
                f"steps/epoch/process on {device}")
    def train_epoch(epoch: int) -> dict:
        if not args.use_lr_warmup:  # the original's warm-up starts every group at 0 instead
            set_backbone_lr(optimizer, epoch, args.lr_backbone)
        criterion.epoch_scale = 1.0 if args.no_loss_decay else math.exp(-epoch / 10)
        return train_one_epoch(model, criterion, loader, optimizer, device, epoch, args.clip_max_norm,
                               max_steps=args.steps_per_epoch, logger=logger)

    def validate(epoch: int) -> dict:
        broadcast_buffers(model_without_ddp)  # every process scores its share with rank 0's statistics
        summary, _, _ = evaluate_a2d(model_without_ddp, val_set, device, max_items=args.val_items)
        logger.info(f"epoch {epoch} {args.val_split}: {format_summary(summary)}")
        return {k: summary[k] for k in ("miou_original", "class_miou")}

    return run.fit((cfg, model_without_ddp, optimizer, scheduler, None), sampler, train_epoch,
                   validate if val_set is not None else None, scheduler.step)


def _collate(items: list[dict]) -> dict:
    """Stack clips and labels; names and frame numbers as lists/tensors (the engine's batch layout)."""
    return {"frames": torch.stack([i["frames"] for i in items]), "masks": torch.stack([i["masks"] for i in items]),
            "name": [i["name"] for i in items], "centre": torch.tensor([i["frame"] for i in items]),
            "gt_index": torch.tensor([i["gt_index"] for i in items])}


if __name__ == "__main__":
    run_main(main, resume=resume_hint)
