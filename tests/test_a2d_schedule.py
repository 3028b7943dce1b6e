"""A2D learning-rate schedules (--scheduler_type, --use_lr_warmup) against the original's sequences.

The original (rkyuca/medvt actor_action/train_medvt_a2d.py) steps its scheduler once after each epoch;
with --use_lr_warmup it wraps the decay in GradualWarmupScheduler(multiplier 1) and calls
``step(epoch=e)``. The literal values below were measured by running the original's scheduler classes
with torch 2.14 on a two-group AdamW (lr 1e-4, backbone 1e-5), 30 epochs, warmup_epochs 5, lr_drop 5;
the formulas are written here independently of utils.optim.
"""
import math

import pytest
import torch

from actor_action import train_medvt_a2d
from checkpoint_asserts import assert_same_training_state
from datasets.a2d import make_synthetic_a2d
from models.convert import read_checkpoint
from utils.checkpoint import save_checkpoint
from utils.optim import PolyLR

LR, LR_BACKBONE = 1e-4, 1e-5


def _args(*flags: str):
    return train_medvt_a2d.get_args_parser().parse_args(list(flags))


def _optimizer():
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": LR, "name": "non_backbone"},
                              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": LR_BACKBONE, "name": "backbone"}])


def _run(args, epochs=None, optimizer=None, scheduler=None, start=0):
    """(non-backbone lr, backbone lr) during each epoch, driven as the training script drives them."""
    optimizer = optimizer or _optimizer()
    scheduler = scheduler or train_medvt_a2d.build_scheduler(optimizer, args)
    seen = []
    for epoch in range(start, epochs or args.epochs):
        if not args.use_lr_warmup:
            train_medvt_a2d.set_backbone_lr(optimizer, epoch, args.lr_backbone)
        seen.append(tuple(g["lr"] for g in optimizer.param_groups))
        optimizer.step()
        scheduler.step()
    return seen


def _warmup_lr(base, epoch, decay, w=5, epochs=30, drop=5):
    """The original's warm-up as it ran: ramp indexed by the epoch just trained, decay step 1 skipped."""
    k = epoch - 1
    if k <= w:
        return base * max(k, 0) / w
    s = 0 if k == w + 1 else k - w
    return base * 0.1 ** (s // drop) if decay == "step" else base * (1 + math.cos(math.pi * s / (epochs - w))) / 2


def test_default_is_the_poly_decay_as_before():
    args = _args()
    assert (args.scheduler_type, args.use_lr_warmup, args.warmup_epochs, args.lr_drop) == ("poly", False, 5, 5)
    opt = _optimizer()
    before = PolyLR(_optimizer(), max_steps=30 - 1 - 5, end_lr=1e-6, power=0.9)  # what the script built until now
    assert _run(args) == _run(args, optimizer=before.optimizer, scheduler=before)
    seen = _run(args, optimizer=opt)
    poly = [(LR - 1e-6) * (1 - min(e, 24) / 24) ** 0.9 + 1e-6 for e in range(30)]
    assert [s[0] for s in seen] == pytest.approx(poly, rel=1e-12)
    assert [s[1] for s in seen[:2]] == [0.0, LR_BACKBONE]
    # the original: epochs 1, 2, 23, 24 and 29
    assert seen[1][0] == pytest.approx(9.627964e-05, rel=1e-6) and seen[2][1] == pytest.approx(9.322098e-06, rel=1e-6)
    assert seen[23] == pytest.approx((6.668199e-06, 1.515291e-06), rel=1e-6)
    assert seen[24] == seen[29] == pytest.approx((1e-6, 1e-6))


@pytest.mark.parametrize("decay", ["step", "cosine"])
def test_warmup_then_decay_matches_the_original(decay):
    seen = _run(_args("--use_lr_warmup", "--scheduler_type", decay))
    for base, group in ((LR, 0), (LR_BACKBONE, 1)):
        assert [s[group] for s in seen] == pytest.approx([_warmup_lr(base, e, decay) for e in range(30)], rel=1e-9)
    assert seen[0] == seen[1] == (0.0, 0.0)  # no backbone-only zero: every group ramps from 0
    assert seen[2] == pytest.approx((2e-5, 2e-6)) and seen[6] == seen[7] == pytest.approx((LR, LR_BACKBONE))
    if decay == "step":
        assert [seen[e][0] for e in (10, 11, 16, 29)] == pytest.approx([1e-4, 1e-5, 1e-6, 1e-8])
    else:
        assert seen[8][0] == pytest.approx(9.842916e-05, rel=1e-6)
        assert seen[29] == pytest.approx((1.570842e-06, 1.570842e-07), rel=1e-6)


def test_poly_after_warmup_decays_to_end_lr():
    # The original crashes when its ramp ends with poly (PolynomialLRDecay has no _last_lr); this is the
    # same hand-over with the poly decay of 30 - 1 - 5 steps.
    seen = _run(_args("--use_lr_warmup"))
    assert seen[6][0] == seen[7][0] == pytest.approx(LR)
    assert seen[8][0] == pytest.approx((LR - 1e-6) * (1 - 2 / 24) ** 0.9 + 1e-6)


def test_step_and_cosine_without_warmup_match_the_original():
    step = _run(_args("--scheduler_type", "step"))
    assert step[0] == (LR, 0.0) and step[4] == (LR, LR_BACKBONE)
    assert step[5] == pytest.approx((1e-5, 1e-6)) and step[29] == pytest.approx((1e-9, 1e-10))
    cos = _run(_args("--scheduler_type", "cosine"))
    assert [c[0] for c in cos[:26]] == pytest.approx([LR * (1 + math.cos(math.pi * e / 25)) / 2 for e in range(26)])
    # the backbone's lr continues recursively from the epoch-1 reset, as in the original
    assert cos[2][1] == pytest.approx(9.881877e-06, rel=1e-6) and cos[24][1] == pytest.approx(3.958255e-08, rel=1e-6)
    assert cos[29] == pytest.approx((6.184666e-06, 6.184666e-07), rel=1e-6)


@pytest.mark.parametrize("flags", [("--use_lr_warmup", "--scheduler_type", "cosine"), ("--scheduler_type", "step"),
                                   ("--scheduler_type", "cosine")])
def test_schedule_state_resumes_exactly(flags, tmp_path):
    """What save_training writes (optimizer and lr_scheduler state dicts, read back with weights_only)
    continues the sequence exactly."""
    args = _args(*flags)
    full = _run(args)
    opt = _optimizer()
    sched = train_medvt_a2d.build_scheduler(opt, args)
    first = _run(args, epochs=8, optimizer=opt, scheduler=sched)
    save_checkpoint({"optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict()}, tmp_path / "c.pth")
    ckpt = read_checkpoint(tmp_path / "c.pth")
    opt2 = _optimizer()
    sched2 = train_medvt_a2d.build_scheduler(opt2, args)
    opt2.load_state_dict(ckpt["optimizer"])
    sched2.load_state_dict(ckpt["lr_scheduler"])
    assert first + _run(args, optimizer=opt2, scheduler=sched2, start=8) == full


def test_warmup_run_stopped_and_resumed_equals_uninterrupted(tmp_path, deterministic):
    root = make_synthetic_a2d(tmp_path / "a2d", num_train=2, num_test=1, num_frames=10, size_hw=(48, 64),
                              annotated=(2, 5, 9))
    argv = ["--model", "tiny", "--a2d_root", str(root), "--clip_size", "32", "48", "--device", "cpu",
            "--num_workers", "0", "--epochs", "5", "--val_every", "0", "--use_lr_warmup", "--warmup_epochs", "1",
            "--scheduler_type", "cosine"]
    full = train_medvt_a2d.main(argv + ["--output_dir", str(tmp_path / "full")])
    # W = 1: 0, 0, the base rate, the cosine's step 0, then its step 2 of E - W = 4 (cos(pi/2): half)
    assert [h["lr"] for h in full["history"]] == pytest.approx([0.0, 0.0, LR, LR, LR / 2])
    train_medvt_a2d.main(argv + ["--output_dir", str(tmp_path / "part"), "--stop_after", "3"])
    resumed = train_medvt_a2d.main(argv + ["--output_dir", str(tmp_path / "part"), "--resume", "auto"])
    def same(history):
        return [{k: v for k, v in h.items() if k != "step_time"} for h in history]

    assert same(resumed["history"]) == same(full["history"])
    a, b = (read_checkpoint(tmp_path / run / "checkpoint_last.pth") for run in ("full", "part"))
    assert_same_training_state(a, b, epoch=4)
    assert a["lr_scheduler"] == b["lr_scheduler"]


def test_help_explains_both_flags():
    text = " ".join(train_medvt_a2d.get_args_parser().format_help().split())
    assert "--scheduler_type {poly,step,cosine}" in text and "--use_lr_warmup" in text
    assert "×0.1 every --lr_drop epochs" in text and "cosine: to 0" in text
    assert "linear warm-up" in text and "base·(e−1)/warmup_epochs" in text


def test_warmup_needs_warmup_epochs():
    from utils.cli import UserError
    with pytest.raises(UserError, match="--warmup_epochs"):
        train_medvt_a2d.main(["--use_lr_warmup", "--warmup_epochs", "0"])


@pytest.mark.parametrize("flags,hint", [
    (["--epochs", "3"], "poly decay would run over -3 epochs.*--warmup_epochs 1 or less"),
    (["--epochs", "3", "--scheduler_type", "cosine"], "cosine decay would run over -2 epochs.*--warmup_epochs 2 or"),
    (["--epochs", "2", "--use_lr_warmup"], "epochs 0 and 1 at lr 0")])
def test_an_epoch_count_the_schedule_has_no_room_for_is_refused(flags, hint):
    """--epochs 3 with the default --warmup_epochs 5 trained epochs 1 and 2 at --end_lr, without a word."""
    from utils.cli import UserError
    with pytest.raises(UserError, match=hint):
        train_medvt_a2d.check_schedule_length(_args(*flags))
    train_medvt_a2d.check_schedule_length(_args("--epochs", "3", "--warmup_epochs", "1"))  # a decay of 1 epoch
    train_medvt_a2d.check_schedule_length(_args("--epochs", "1"))  # one epoch at --lr: nothing to decay


@pytest.mark.parametrize("schedule", [[], ["--scheduler_type", "cosine"]])
def test_lr_drop_without_the_step_decay_is_refused(schedule, capsys):
    """--lr_drop is the step decay's period: with the poly (default) or cosine decay it did nothing, silently."""
    with pytest.raises(SystemExit) as stop:
        train_medvt_a2d.main([*schedule, "--lr_drop", "3"])
    assert stop.value.code == 2
    assert "--lr_drop applies to --scheduler_type step only (its period)" in capsys.readouterr().err
