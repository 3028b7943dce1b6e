"""Train MED-VT for automatic video object segmentation (DAVIS-2016 train + YouTube-VOS 2019).

The recipe is the original's (rkyuca/medvt ``train_swin_medvt_avos.py`` at 555a462; spec avos §4):
AdamW (weight decay 1e-4), one 6-frame clip per step per process, focal + dice loss with the aux
term 0.5·(focal + dice) on the pre-propagation masks, gradient clipping at global norm 0.1,
15 epochs with a per-epoch polynomial decay ``lr_e = (base − end)(1 − e/(E−1))^0.9 + end``,
seeds 42 + rank, DAVIS'16 val mIoU after every epoch (flip on, single scale, at --val_size),
``checkpoint_best.pth`` (best val mIoU) and ``checkpoint_last.pth`` (every epoch).

Learning-rate groups (``--lr_groups``)
    ``original`` (default for Swin and tiny) — what the original Swin script actually ran,
    because a later branch always replaced the intended groups: ``label_propagator.*`` at
    ``--lr`` (1e-4) and *everything else*, backbone and transformer included, at
    ``--lr_backbone`` (1e-5). The released Swin checkpoint was trained like this.
    ``intended`` — everything except ``backbone.*`` at ``--lr``, the backbone at ``--lr_backbone``.
    The original ResNet-101 script used this split with ``--lr_backbone 1e-6`` (the default for
    ``--backbone resnet101``, which also defaults to ``--train_size 300`` and ``--lprop_scale 7.3``).

Resuming (``--resume checkpoint_last.pth``) restores the model, optimiser, schedule, epoch, best
score, GradScaler and every RNG (Python, NumPy, torch CPU/CUDA, per process); the shuffling is a
function of (seed, epoch), so a resumed run continues exactly as the uninterrupted one would
(bit for bit with deterministic kernels: ``--deterministic``, on by default on CPU).

Examples::

    # the paper's Swin-B recipe (one GPU), from the Kinetics Swin-B and VisTR COCO weights
    python train_swin_medvt_avos.py --davis16_root data/DAVIS --ytvos19_root data/YouTubeVOS2019 \\
        --swin_pretrained ckpts/swin_base_patch244_window877_kinetics400_22k.pth \\
        --vistr_coco ckpts/384_coco_r101.pth --output_dir runs/swinb
    # several GPUs
    torchrun --nproc_per_node 4 train_swin_medvt_avos.py ... --amp bf16
    # a tiny CPU smoke run on a synthetic DAVIS folder
    python train_swin_medvt_avos.py --model_config tiny --davis16_root data/synth --no_ytvos --train_size 64 \\
        --val_size 64 --small_aug --steps_per_epoch 2 --epochs 2 --device cpu --output_dir runs/smoke
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from avos.validation import evaluate_davis
from datasets.path_config import DatasetNotFoundError, add_path_args, dataset_root, require
from models import build_model, get_config
from models.config import MODEL_CONFIGS, MedVTConfig, preset_name
from models.convert import CheckpointMismatchError
from models.losses import AVOSCriterion
from models.registry import init_weights
from utils import distributed as du
from utils.checkpoint import add_run_args, check_end_lr, check_run_dir
from utils.cli import (ArgumentParser, add_debug_flag, clip_frames, non_negative_float, non_negative_int,
                       positive_float, positive_int, random_seed, run_main)
from utils.engine import AMP_DTYPES, check_frame_size, epoch_steps, train_one_epoch
from utils.optim import LR_GROUPS, PolyLR, param_groups
from utils.resume import stretch_schedule
from utils.rng import seed_everything
from utils.training import RunSpec, TrainingRun, resume_hint

BACKBONE_CONFIGS = {"swinB": "medvt_swinb_avos", "resnet101": "medvt_r101_avos",
                    "tiny": "tiny"}  # "tiny" names a config, not a backbone: kept for older commands and runs
# Defaults that differ for the ResNet-101 script of the original (555a462 train_resnet_medvt_avos.py).
BACKBONE_DEFAULTS = {
    "swinB": {"lr_backbone": 1e-5, "lr_groups": "original", "train_size": 360, "lprop_scale": None},
    "resnet101": {"lr_backbone": 1e-6, "lr_groups": "intended", "train_size": 300, "lprop_scale": 7.3},
    "tiny": {"lr_backbone": 1e-5, "lr_groups": "original", "train_size": 360, "lprop_scale": None},
}
# The presets this script trains: MED-VT with a binary (one-logit) AVOS head; not the VSS or A2D ones.
AVOS_CONFIGS = tuple(name for name, cfg in MODEL_CONFIGS.items() if cfg.num_classes == 1)
# The flags that start a new run from weights (named when --resume is given a file of weights only).
INIT_FLAGS = "--init_from (a MED-VT checkpoint, e.g. the authors' release), or --swin_pretrained / --vistr_coco"
SPEC = RunSpec(task="avos", log_name="medvt.train", metric="miou", row_key="val_miou", init_flags=INIT_FLAGS)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="swinB", choices=sorted(BACKBONE_CONFIGS), metavar="{swinB,resnet101}",
                   help="swinB → config medvt_swinb_avos, resnet101 → medvt_r101_avos, with the original's "
                        "defaults for each (default swinB)")
    g.add_argument("--model_config", default=None, type=preset_name, choices=AVOS_CONFIGS, metavar="NAME",
                   help="model config (preset) overriding the one chosen by --backbone, e.g. tiny for tests and "
                        f"the demo: {', '.join(AVOS_CONFIGS)} (see models/config.py)")
    g.add_argument("--lprop_scale", type=positive_float, default=None,
                   help="label-propagation upsampling scale (default: the config's, 8.0; 7.3 for resnet101 "
                        "as the original ResNet training)")
    g.add_argument("--lprop_mode", type=int, default=None, choices=(0, 1, 2),
                   help="label propagation: 2 many-to-many (default, the paper's), 1 unidirectional (last "
                        "frame from the earlier ones), 0 none")
    g.add_argument("--swin_pretrained", default=None, metavar="PATH",
                   help="Video Swin-B Kinetics-400 checkpoint (swin_base_patch244_window877_kinetics400_22k.pth) "
                        "to initialise the backbone, as the original")
    g.add_argument("--vistr_coco", default=None, metavar="PATH",
                   help="VisTR COCO checkpoint (384_coco_r101.pth) to initialise the transformer "
                        "(ResNet: every matching weight)")
    g.add_argument("--init_from", default=None, metavar="PATH",
                   help="start a new run from a MED-VT checkpoint (the authors' release or ours), e.g. to fine-tune; "
                        "entries whose name or shape differ keep their initial values (--resume continues a run)")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute backbone/encoder activations in backward (0.46x the peak memory of a Swin-B "
                        "step, 1.5-1.6x its time)")

    g = p.add_argument_group("data")
    add_path_args(g, ["davis16", "ytvos19"])
    g.add_argument("--no_ytvos", action="store_true",
                   help="train on DAVIS-2016 train only (the original always added YouTube-VOS 2019)")
    g.add_argument("--davis16_train_seqs_file", default=None, metavar="PATH",
                   help="text file, one DAVIS train sequence per line (default: ImageSets or the standard 30)")
    g.add_argument("--davis16_val_seqs_file", default=None, metavar="PATH",
                   help="text file, one DAVIS val sequence per line (default: ImageSets or the standard 20)")
    g.add_argument("--num_frames", type=clip_frames, default=6,
                   help="frames per clip (at least 2: the model attends across the frames of a clip)")
    g.add_argument("--train_size", type=positive_int, default=None,
                   help="shorter side of training clips (default 360; 300 for resnet101)")
    g.add_argument("--small_aug", action="store_true",
                   help="augmentation sizes scaled to --train_size (TrainTransform.small) for small test images")
    g.add_argument("--num_workers", type=non_negative_int, default=4,
                   help="DataLoader worker processes per training process")

    g = p.add_argument_group("optimisation (defaults = the original recipe)")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate of the fast group (see --lr_groups)")
    g.add_argument("--lr_backbone", type=non_negative_float, default=None,
                   help="learning rate of the slow group (default 1e-5; 1e-6 for resnet101)")
    g.add_argument("--lr_groups", default=None, choices=LR_GROUPS,
                   help="'original' (Swin default): label_propagator.* at --lr, everything else at --lr_backbone "
                        "(what the authors' Swin script actually ran); 'intended' (resnet101 default): "
                        "non-backbone at --lr, backbone.* at --lr_backbone")
    g.add_argument("--end_lr", type=non_negative_float, default=1e-6,
                   help="final learning rate of the polynomial decay")
    g.add_argument("--poly_power", type=positive_float, default=0.9, help="power of the polynomial decay")
    g.add_argument("--weight_decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--epochs", type=positive_int, default=15,
                   help="number of epochs (the schedule decays over epochs-1)")
    g.add_argument("--clip_max_norm", type=non_negative_float, default=0.1,
                   help="gradient clipping global norm (0 = off)")
    g.add_argument("--aux_loss", type=non_negative_float, default=0.5,
                   help="weight of focal+dice on the pre-propagation masks")
    g.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES),
                   help="mixed precision: bf16 autocast, or fp16 autocast with a GradScaler (meant for CUDA; "
                        "runs, slower, on CPU); the original trained in fp32")
    g.add_argument("--steps_per_epoch", type=positive_int, default=None, metavar="N",
                   help="cap the steps of each epoch (quick runs; the full epoch is the whole sample list)")

    g = p.add_argument_group("validation")
    g.add_argument("--val_size", type=positive_int, default=360, help="shorter side of DAVIS val frames")
    g.add_argument("--val_flip", action=argparse.BooleanOptionalAction, default=True,
                   help="average with the mirrored clip during validation (the original: on)")
    g.add_argument("--val_every", type=non_negative_int, default=1, metavar="K",
                   help="validate every K epochs and after the last (0 = never, as --no_val)")
    g.add_argument("--no_val", action="store_true", help="skip validation (checkpoint_best.pth is not written)")

    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="runs/medvt_avos", help="checkpoints, train.log and history.json")
    add_run_args(g)
    g.add_argument("--seed", type=random_seed, default=42, help="random seed (each process uses seed + rank)")
    du.add_device_flag(g)
    g.add_argument("--find_unused_parameters", action="store_true", help="DDP option, for modified models")
    g.add_argument("--log_every", type=positive_int, default=50, help="log the running losses every N steps")
    add_debug_flag(p)
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the per-backbone defaults left as None (see BACKBONE_DEFAULTS)."""
    for k, v in BACKBONE_DEFAULTS[args.backbone].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.model_config is None:
        args.model_config = BACKBONE_CONFIGS[args.backbone]
    return args


def model_config(args) -> MedVTConfig:
    cfg = get_config(args.model_config)
    if args.lprop_scale is not None:
        cfg = cfg.replace(lprop_scale=args.lprop_scale)
    if args.lprop_mode is not None:
        cfg = cfg.replace(lprop_mode=args.lprop_mode)
    return cfg


def build_train_loader(args, info: du.DistInfo) -> tuple[DataLoader, DistributedSampler]:
    """Pooled DAVIS (+ YouTube-VOS) clips, shuffled as a function of (seed, epoch) on every process."""
    from datasets.avos import build_avos_train_dataset
    from datasets.transforms import TrainTransform

    ytvos = None
    if not args.no_ytvos:
        ytvos = dataset_root("ytvos19", args.ytvos19_root)
        try:
            require(ytvos, "ytvos19")
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(f"{e} To train on DAVIS only, pass --no_ytvos.") from None
    transform = TrainTransform.small(args.train_size) if args.small_aug else None
    dataset = build_avos_train_dataset(args.davis16_root, ytvos, num_frames=args.num_frames,
                                       train_size=args.train_size, transform=transform,
                                       seqs_file=args.davis16_train_seqs_file)
    # One sampler for one or many processes: its permutation depends only on (seed, epoch), so there
    # is no generator state to checkpoint and resuming reproduces the order exactly.
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=args.num_workers, drop_last=True,
                        pin_memory=info.device.type == "cuda")
    return loader, sampler


def same_lr_groups(path, args: argparse.Namespace):
    """The script's own resume refusal: a run made with other --lr_groups is named as such."""
    def check(ckpt: dict) -> None:
        saved = getattr(ckpt.get("args"), "lr_groups", None)
        if saved is not None and saved != args.lr_groups:
            raise CheckpointMismatchError(f"{path} was trained with --lr_groups {saved}; resume with the same")
    return check


def input_paths(args: argparse.Namespace) -> dict[str, str | Path | None]:
    """What the run reads, by flag: --output_dir must stay apart from all of it."""
    paths = {"--davis16_root": dataset_root("davis16", args.davis16_root), "--swin_pretrained": args.swin_pretrained,
             "--vistr_coco": args.vistr_coco, "--init_from": args.init_from}
    if not args.no_ytvos:
        paths["--ytvos19_root"] = dataset_root("ytvos19", args.ytvos19_root)
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = resolve_defaults(parser.parse_args(argv))
    check_end_lr(args)
    # The output folder's refusals first (an earlier run, --resume of another run, a file, inside an input,
    # --resume with --init_from): they cost nothing and change nothing.
    check_run_dir(args.output_dir, args.resume, args.overwrite, inputs=input_paths(args),
                  init={"--init_from": args.init_from})
    return du.run_distributed(train, args, args.deterministic)


def warn_trained_val_sequences(args: argparse.Namespace, val_names: list[str], log) -> list[str]:
    """Warn (through ``log``) about validation sequences that are also in the DAVIS training list, e.g.
    with a --davis16_train_seqs_file naming the val list; returns them."""
    from datasets.davis16 import split_sequences

    trained = set(split_sequences(dataset_root("davis16", args.davis16_root), "train", args.davis16_train_seqs_file))
    both = [name for name in val_names if name in trained]
    if both:
        log.warning(f"{len(both)} of the {len(val_names)} validation sequences are also trained on "
                    f"({', '.join(both[:5])}{' …' if len(both) > 5 else ''}): their scores measure memory, not "
                    "generalisation; check --davis16_train_seqs_file / --davis16_val_seqs_file")
    return both


def train(args: argparse.Namespace, info: du.DistInfo) -> dict:
    """Everything the run reads is checked (data, model config, frame sizes, --resume file, initial
    weights) before the output folder is created or changed, so a mistake leaves nothing behind."""
    run = TrainingRun(SPEC, args, info, input_paths(args))
    # As the original AVOS trainer (the other tasks' originals leave cuDNN's defaults, and so do ours, to
    # compute what they compute on CUDA): reproducible convolution kernels.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    seed_everything(args.seed + info.rank)
    device = info.device
    amp_dtype = AMP_DTYPES[args.amp]

    loader, sampler = build_train_loader(args, info)
    val_seqs = []
    if not args.no_val and args.val_every > 0:  # the DAVIS val index is read only when it is used
        from datasets.davis16 import davis16_sequences
        val_seqs = davis16_sequences(args.davis16_root, "val", args.davis16_val_seqs_file,
                                     subset="--davis16_val_seqs_file")
        warn_trained_val_sequences(args, [s.name for s in val_seqs], run.early)

    cfg = model_config(args)
    model = build_model(cfg).to(device)
    check_frame_size(model, device, {"--train_size": args.train_size,
                                     **({"--val_size": args.val_size} if val_seqs else {})},
                     f"--model_config {args.model_config}")
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if run.resume_from is None:
        init_weights(model, run.early, ("--swin_pretrained", args.swin_pretrained),
                     ("--vistr_coco", args.vistr_coco), args.init_from)
    run.read_resume(cfg, check=same_lr_groups(run.resume_from, args))

    logger = run.open()
    logger.info(f"{len(loader.dataset)} training clips ({epoch_steps(loader, args.steps_per_epoch)} "
                f"steps/epoch/process, {info.world_size} process(es)); {len(val_seqs)} val sequences")
    groups = param_groups(model, args.lr, args.lr_backbone, args.lr_groups)
    for grp in groups:
        logger.info(f"param group {grp['name']}: {sum(p.numel() for p in grp['params']):,} params, lr {grp['lr']:.1e}")
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = PolyLR(optimizer, max_steps=args.epochs - 1, end_lr=args.end_lr, power=args.poly_power)
    if amp_dtype is not None and device.type != "cuda":
        logger.warning(f"--amp {args.amp} on {device}: autocast works on CPU but is slower than float32 on "
                       "CPUs without native bf16/fp16 matrix units")
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    criterion = AVOSCriterion(aux_weight=args.aux_loss)
    if run.restore(model, optimizer, scheduler, scaler) is not None:  # a changed --epochs stretches the decay
        stretch_schedule(scheduler, args.epochs - 1, args.epochs, logger)
    train_model = du.wrap_ddp(model, info, args.find_unused_parameters)

    def train_epoch(epoch: int) -> dict:
        stats = train_one_epoch(train_model, criterion, loader, optimizer, device, epoch, args.clip_max_norm,
                                amp_dtype, args.steps_per_epoch, logger, scaler, args.log_every)
        return {f"train_{k}": v for k, v in stats.items()}

    def validate(epoch: int) -> dict:  # every process scores its share of the sequences; all get the result
        du.broadcast_buffers(model)  # with rank 0's BatchNorm statistics
        return {"val_miou": evaluate_davis(model, val_seqs, device, args.val_size, args.num_frames, args.val_flip,
                                           amp_dtype, logger)["miou"]}

    return run.fit((cfg, model, optimizer, scheduler, scaler), sampler, train_epoch, validate if val_seqs else None,
                   scheduler.step)


if __name__ == "__main__":
    run_main(main, resume=resume_hint)
