"""Train MED-VT++ on AVSBench S4 or MS3 with the authors' recipe (spec a2d-avs-vss §B.5-§B.7).

One model definition for both tasks; the task changes the data and the recipe:

================  =================================  ===========================================
                  S4 (``--task s4``)                 MS3 (``--task ms3``)
================  =================================  ===========================================
image size        384 train / 384 val (upsampled)    native 224 / 224 (the test script uses 384)
batch             2 train / 4 val                    2 / 1
epochs            50                                 60
schedule          cosine (T_max = epochs)            poly 0.9 to 1e-6 over epochs − 1
loss              BCE on frame 1 (the annotated one) BCE on 5 frames + λ₁ 0.1 · masked-AV (KL)
init              PVTv2 ImageNet + xavier            the best S4 model (--load_s4_params)
================  =================================  ===========================================

Both: AdamW, lr 1e-4, ``backbone.*`` 1e-5, weight decay 1e-4, no augmentation, no gradient
clipping, the schedule stepped at the *start* of each epoch (epoch e runs at step e + 1, so the
last epoch of S4 has lr 0), seed 123, VGGish frozen (eval, no grad). Every ``--val_every`` epochs
(default 1) and after the last the val split is scored (mIoU) and the best model is saved as
``checkpoint_best.pth`` (``--val_every 0``: never, and no ``checkpoint_best.pth``).

Checkpoints and resuming (every trainer's policy, ``utils.resume.resume_training``): ``checkpoint_last.pth`` is
written atomically after every epoch with the model, optimiser, schedule position, epoch, best
score, history and the RNG state of every process; ``--resume PATH|auto`` continues such a run
exactly (a run stopped with ``--stop_after`` and resumed equals the uninterrupted one bit for bit
with ``--deterministic``, on by default on CPU). Other training settings than the run's are
refused, listing the differences. An ``--output_dir`` that holds a run needs ``--resume`` or
``--overwrite``.

Several processes: ``torchrun --nproc_per_node N avs/train_medvt.py ...`` (NCCL on CUDA, one GPU per
process; Gloo on CPU). Each process trains on its share of every epoch (DistributedSampler, a
function of seed and epoch) with the model in DistributedDataParallel (the frozen VGGish stays a
plain module on every process); each process scores every N-th val batch with rank 0's buffers and
all get the averages in batch order, so the val metrics do not depend on the number of processes;
rank 0 logs and writes the checkpoints and ``history.json``. With one process the run is the same as without torchrun.

README commands (the original's flags are accepted; ``--tpavi_va_flag`` has no effect with the
bidirectional fusion)::

    python avs/train_medvt.py --task s4 --avsbench_root /data/AVSBench --output_dir out/s4 \\
        --pvtv2_pretrained_path pvt_v2_b5.pth --vggish_weights vggish-10086976.pth
    python avs/train_medvt.py --task ms3 --avsbench_root /data/AVSBench --output_dir out/ms3 \\
        --tpavi_va_flag --masked_av_flag --masked_av_stages 0 1 2 3 --kl_flag \\
        --load_s4_params --trained_s4_model_path out/s4/checkpoint_best.pth --vggish_weights vggish-10086976.pth
    # continue an interrupted run; the same on 4 GPUs
    python avs/train_medvt.py --task s4 ... --output_dir out/s4 --resume auto
    torchrun --nproc_per_node 4 avs/train_medvt.py --task s4 ... --output_dir out/s4
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from avs.common import STAGES, add_model_args, audio_features, build_model_and_audio, check_im_size, evaluate
from avs.losses import AVSCriterion
from datasets.avsbench import AVSBenchDataset, task_dir
from datasets.path_config import add_path_args, dataset_root
from models.avs_config import get_avs_config
from models.avs_convert import load_pvt_pretrained
from models.convert import read_checkpoint
from models.registry import load_weights
from models.tasks import TASKS, check_task
from utils import distributed as du
from utils.checkpoint import add_run_args, check_end_lr, check_run_dir
from utils.cli import (ArgumentParser, UserError, non_negative_float, non_negative_int, positive_float, positive_int,
                       random_seed, run_main)
from utils.engine import train_one_epoch
from utils.optim import cosine_lr, param_groups, poly_lr
from utils.rng import seed_everything
from utils.training import RunSpec, TrainingRun, resume_hint

TASK_DEFAULTS = {
    "s4": dict(train_im_size=384, val_im_size=384, val_batch_size=4, max_epoches=50, lambda_1=0.0),
    "ms3": dict(train_im_size=0, val_im_size=0, val_batch_size=1, max_epoches=60, lambda_1=0.1),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    add_path_args(p, ["avsbench"])
    g = p.add_argument_group("recipe (None = the task's default, see the table above)")
    g.add_argument("--session_name", default=None,
                   help="kept for the original's command lines; not used (a run is named by --output_dir)")
    g.add_argument("--output_dir", default="runs/avs_train", help="checkpoints, log and history")
    add_run_args(g, epochs_flag="--max_epoches")
    g.add_argument("--train_im_size", default=None, type=non_negative_int, help="square training size (0 = native 224)")
    g.add_argument("--val_im_size", default=None, type=non_negative_int, help="square validation size (0 = native 224)")
    g.add_argument("--train_batch_size", default=2, type=positive_int, help="clips per training batch")
    g.add_argument("--val_batch_size", default=None, type=positive_int, help="clips per validation batch")
    g.add_argument("--epochs", "--max_epoches", dest="max_epoches", default=None, type=positive_int,
                   help="number of epochs (--max_epoches: the original's spelling)")
    g.add_argument("--lr", default=1e-4, type=positive_float, help="learning rate of everything but the backbone")
    g.add_argument("--lr_backbone", default=1e-5, type=non_negative_float, help="learning rate of the PVTv2 backbone")
    g.add_argument("--weight_decay", default=1e-4, type=non_negative_float, help="AdamW weight decay")
    g.add_argument("--end_lr", default=1e-6, type=non_negative_float, help="MS3 poly schedule: final lr")
    g.add_argument("--poly_power", default=0.9, type=positive_float, help="MS3 poly schedule: power")
    g.add_argument("--seed", default=123, type=random_seed, help="random seed (original: 123)")
    g.add_argument("--steps_per_epoch", default=None, type=positive_int, help="cap on steps per epoch (smoke tests)")
    g.add_argument("--val_max_batches", default=None, type=positive_int, help="cap on validation batches (smoke tests)")
    g.add_argument("--val_every", default=1, type=non_negative_int, metavar="N",
                   help="validate every N epochs and after the last (0 = never)")
    loss = p.add_argument_group("loss")
    loss.add_argument("--masked_av_flag", action="store_true", help="add the masked audio-visual matching loss (MS3)")
    loss.add_argument("--masked_av_stages", default=[0, 1, 2, 3], nargs="+", type=int, choices=STAGES,
                      help="FPN scales (0 = 1/4 … 3 = 1/32) where the masked-AV loss is computed")
    loss.add_argument("--lambda_1", default=None, type=non_negative_float, help="weight of that loss (S4 0, MS3 0.1)")
    loss.add_argument("--kl_flag", action="store_true", help="masked-AV loss as KL(softmax(audio) ‖ softmax(visual))")
    loss.add_argument("--euclidean_flag", action="store_true", help="masked-AV loss as the Euclidean distance")
    loss.add_argument("--norm_fea_flag", action="store_true", help="L2-normalise both features first")
    loss.add_argument("--threshold_flag", action="store_true", help="binarise the pooled mask at 0.5 (÷ mask area)")
    loss.add_argument("--closer_flag", action="store_true",
                      help="the original's visual-visual variant (not implemented)")
    loss.add_argument("--sa_loss_flag", action="store_true",
                      help="S4: add AVSBench's audio/masked-visual cosine loss (same as --masked_av_flag without KL)")
    loss.add_argument("--sa_loss_stages", default=None, nargs="+", type=int, choices=STAGES,
                      help="S4: stages of --sa_loss_flag")
    loss.add_argument("--mask_pooling_type", default="avg", choices=("avg", "max"),
                      help="how predicted logits are downsampled to each map")
    i = p.add_argument_group("initialisation")
    i.add_argument("--pvtv2_pretrained_path", default=None, metavar="PATH",
                      help="PVTv2-b5 ImageNet weights (pvt_v2_b5.pth), a local file; without it the backbone is random")
    i.add_argument("--load_s4_params", action="store_true", help="start from a trained S4 model (MS3 recipe)")
    i.add_argument("--trained_s4_model_path", default="", metavar="PATH", help="that S4 model (ours or original)")
    i.add_argument("--weights", default="", metavar="PATH", help="start from these weights (any of ours / original)")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for k, v in TASK_DEFAULTS[args.task].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.closer_flag:
        raise UserError("--closer_flag (visual-visual matching loss) is not implemented")
    if args.sa_loss_flag:
        args.masked_av_flag = True
        if args.sa_loss_stages is not None:
            args.masked_av_stages = args.sa_loss_stages
    if args.masked_av_flag and args.task == "ms3" and not (args.kl_flag or args.euclidean_flag):
        raise UserError("--masked_av_flag needs --kl_flag or --euclidean_flag (the original crashes without)")
    if args.load_s4_params and not args.trained_s4_model_path:
        raise UserError("--load_s4_params needs --trained_s4_model_path PATH")
    if args.trained_s4_model_path and not args.load_s4_params:  # the original reads it only then: no silent skip
        raise UserError("--trained_s4_model_path is read only with --load_s4_params (the original's pair): add it "
                        "to start from that S4 model")
    return args


def epoch_lr(args, base: float, epoch: int) -> float:
    """lr used during ``epoch`` (0-based): the scheduler was stepped once before it (original order)."""
    step = epoch + 1
    if args.task == "s4":  # CosineAnnealingLR(T_max = epochs)
        return cosine_lr(base, step, args.max_epoches)
    # torch_poly_lr_decay, max_decay_steps = epochs - 1
    return poly_lr(base, args.end_lr, step, max(args.max_epoches - 1, 1), args.poly_power)


def init_avs_weights(model, args, logger) -> None:
    """A new MED-VT++ run's initial weights: PVTv2's ImageNet file, then a trained S4 model or --weights
    (models.registry.init_weights is MED-VT's)."""
    if args.pvtv2_pretrained_path:
        n = load_pvt_pretrained(model, args.pvtv2_pretrained_path)
        logger.info(f"PVTv2 ImageNet weights: {n} tensors from {args.pvtv2_pretrained_path}")
    else:
        logger.warning("no --pvtv2_pretrained_path: the PVTv2 backbone starts from random weights")
    for flag, path in (("--trained_s4_model_path", args.trained_s4_model_path),
                       ("--weights", args.weights)):
        if path:
            ckpt = read_checkpoint(path)
            check_task(ckpt, "avs", f"{flag} {path}", TASKS["avs"].train)  # another task's file: said, not keys
            load_weights(model, ckpt, model.cfg, f"{flag} {path}")
            logger.info(f"initialised from {path} ({flag})")


class EpochSchedule:
    """The learning rate of every group is a pure function of the epoch (:func:`epoch_lr` of the group's
    ``initial_lr``, which the optimiser state keeps), so the epoch is the whole schedule position:
    :meth:`apply` at the start of each epoch, on a fresh or a resumed run, gives the same lr. The
    state dict (the checkpoint's ``lr_scheduler``) records it for inspection, and for uniformity
    with the other training scripts."""

    def __init__(self, args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> None:
        self.args, self.optimizer, self.last_epoch = args, optimizer, 0

    def apply(self, epoch: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = epoch_lr(self.args, g["initial_lr"], epoch)

    def step(self) -> None:  # an epoch is done
        self.last_epoch += 1

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "task": self.args.task, "max_epoches": self.args.max_epoches}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])


# Flags of this script that may change on --resume besides utils.resume.RESUME_FREE: a run name
# that nothing reads, the (moved) VGGish weights file, and --weights, which only initialises a new run.
AVS_RESUME_FREE = ("session_name", "vggish_weights", "weights")


# The flags that start a new run from weights (named when --resume is given a file of weights only).
INIT_FLAGS = "--weights (any MED-VT++ checkpoint), --load_s4_params --trained_s4_model_path, or --pvtv2_pretrained_path"
SPEC = RunSpec(task="avs", log_name="medvt.avs.train", metric="miou", row_key="val_miou", init_flags=INIT_FLAGS,
               epochs_flag="--max_epoches", free=AVS_RESUME_FREE, read_config=get_avs_config)


def input_paths(args: argparse.Namespace) -> dict[str, str | Path | None]:
    """What the run reads, by flag: --output_dir must stay apart from all of it."""
    return {"--avsbench_root": dataset_root("avsbench", args.avsbench_root),
            "--pvtv2_pretrained_path": args.pvtv2_pretrained_path, "--vggish_weights": args.vggish_weights,
            "--trained_s4_model_path": args.trained_s4_model_path or None,
            "--weights": args.weights or None}


def main(argv: list[str] | None = None) -> dict:
    args = resolve_defaults(get_args_parser().parse_args(argv))
    if args.task == "ms3":  # the S4 cosine decay does not use --end_lr
        check_end_lr(args)
    # The output folder's refusals first (an earlier run, --resume of another run, a file, inside an input,
    # --resume with --weights): they cost nothing and change nothing.
    check_run_dir(args.output_dir, args.resume, args.overwrite, inputs=input_paths(args),
                  init={"--weights": args.weights or None})
    task_dir(args.avsbench_root, args.task)  # fail early, naming the flag, before creating any folder
    return du.run_distributed(train, args, args.deterministic)


def train(args: argparse.Namespace, info: du.DistInfo) -> dict:
    """Everything the run reads (model, initial weights, data, the --resume file) is checked before the
    output folder is created or changed, so a mistake leaves nothing behind."""
    run = TrainingRun(SPEC, args, info, input_paths(args))
    device = info.device
    seed_everything(args.seed)  # the same initial model (and random VGGish) on every process
    model, vggish = build_model_and_audio(args, device)
    check_im_size(model, device, {"--train_im_size": args.train_im_size, "--val_im_size": args.val_im_size})
    if run.resume_from is None:
        init_avs_weights(model, args, run.early)
    criterion = AVSCriterion(task=args.task, masked_av=args.masked_av_flag, stages=list(args.masked_av_stages),
                             lambda_1=args.lambda_1, kl=args.kl_flag, euclidean=args.euclidean_flag,
                             norm_fea=args.norm_fea_flag, threshold=args.threshold_flag, pooling=args.mask_pooling_type)
    optimizer = torch.optim.AdamW(param_groups(model, args.lr, args.lr_backbone, "intended"),
                                  weight_decay=args.weight_decay)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    schedule = EpochSchedule(args, optimizer)
    kw = dict(audio=args.audio, allow_resample=args.allow_resample, allow_silent=args.allow_silent)
    train_set = AVSBenchDataset(args.avsbench_root, args.task, "train", args.train_im_size or None, **kw)
    val_set = AVSBenchDataset(args.avsbench_root, args.task, "val", args.val_im_size or None, **kw)
    run.read_resume(model.cfg)

    logger = run.open()
    # One sampler for one or many processes: the order is a function of (seed, epoch) only, so there
    # is no sampler state to checkpoint and a resumed run sees the same batches.
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=args.seed, drop_last=False)
    train_loader = DataLoader(train_set, batch_size=args.train_batch_size, sampler=sampler,
                              num_workers=args.num_workers, drop_last=False, pin_memory=device.type == "cuda")
    logger.info(f"MED-VT++ {args.task}: {model.cfg.name}, {sum(p.numel() for p in model.parameters()):,} parameters; "
                f"{len(train_set)} train / {len(val_set)} val clips on {device}, {info.world_size} process(es)")

    extra = run.restore(model, optimizer, schedule, None)
    if extra is not None:
        saved_epochs = getattr(extra.get("args"), "max_epoches", args.max_epoches)
        if saved_epochs != args.max_epoches:  # the schedule is a function of the epoch: it follows the new length
            logger.warning(f"--max_epoches {args.max_epoches} differs from the checkpoint's run ({saved_epochs}): "
                           f"from epoch {run.start_epoch} on the learning rate follows the schedule of "
                           f"{args.max_epoches} epochs")
    if run.start_epoch == 0:  # a new run
        seed_everything(args.seed + info.rank)  # training draws (dropout, workers) differ per process
    # find_unused_parameters: without the masked-AV loss (S4), or with it on some stages only, the audio
    # outputs of the fusion get no gradient, and without the flag DDP stops at the next step ("Expected to
    # have finished reduction"). Its warning that it found no unused parameters is a false positive: it
    # searches from the forward outputs, which include those audio features. Parameters that get no
    # gradient on any process keep grad None, so AdamW skips them as in one process.
    train_model = du.wrap_ddp(model, info, find_unused_parameters=True)

    def train_epoch(epoch: int) -> dict:
        schedule.apply(epoch)
        # No gradient clipping in the original AVS recipe (clip_max_norm 0). A non-finite loss stops
        # every process at the same step (utils.engine.NonFiniteLossError).
        return train_one_epoch(train_model, criterion, train_loader, optimizer, device, epoch, clip_max_norm=0.0,
                               max_steps=args.steps_per_epoch, logger=logger,
                               compute_losses=avs_losses(vggish, criterion, device))

    def validate(epoch: int) -> dict:
        du.broadcast_buffers(model)  # each process scores its share of the val batches with rank 0's statistics
        val = evaluate(model, vggish, val_set, args.val_batch_size, device, max_batches=args.val_max_batches,
                       num_workers=args.num_workers, desc=f"val {epoch}")
        return {"val_miou": val["miou"], "val_fscore": val["fscore"]}

    return run.fit((model.cfg, model, optimizer, schedule, None), sampler, train_epoch, validate, schedule.step)


def avs_losses(vggish: torch.nn.Module, criterion: torch.nn.Module, device: torch.device):
    """The engine's ``compute_losses`` for MED-VT++: frozen VGGish features, then the model and the loss."""
    def compute(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        audio = audio_features(vggish, batch["audio"].to(device))
        out = model(batch["frames"].to(device), audio)
        return criterion(out, batch["masks"].to(device), batch["mask_frames"].to(device))
    return compute


if __name__ == "__main__":
    run_main(main, resume=resume_hint)
