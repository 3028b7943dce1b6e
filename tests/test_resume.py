"""The shared resume policy (utils.resume.resume_training / save_training): each process gets its
own RNG state back, old single-state checkpoints still resume, the refusals; and for the VSS and A2D
scripts, 1 epoch + ``--resume auto`` for 1 more equals 2 epochs in one go (tiny models, CPU)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
from checkpoint_asserts import assert_run_starts, assert_same_training_state, run_torchrun
from torch import nn

from actor_action import train_medvt_a2d
from datasets.a2d import make_synthetic_a2d
from models import get_config
from models.convert import CheckpointMismatchError, read_checkpoint
from tests.test_vss import _train_argv as vss_argv
from tests.test_vss import write_vspw
from utils.checkpoint import (close_epoch, run_summary, save_checkpoint, save_training, tensorboard_writer,
                              training_state)
from utils.cli import UserError
from utils.distributed import DistInfo
from utils.engine import run_epochs
from utils.optim import PolyLR
from utils.resume import resume_training
from utils.rng import capture_rng, restore_rng, seed_everything
from vss import train_medvt_vss

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
LOG = logging.getLogger("medvt.test_resume")


# Bit-for-bit resume needs one thread and deterministic kernels (the conftest fixture) in every test.
pytestmark = pytest.mark.usefixtures("deterministic")


# ------------------------------------------------------------------------------ resume_training
class Net(nn.Linear):
    """A small stand-in model; ``cfg`` is what the training scripts record in ``config``."""

    def __init__(self, cfg=None):
        super().__init__(3, 2)
        self.cfg = cfg or get_config("tiny")


def _parts(cfg=None):
    model = Net(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, PolyLR(optimizer, max_steps=4, end_lr=1e-6, power=0.9)


def _args(**changes) -> argparse.Namespace:
    return argparse.Namespace(**{"lr": 1e-3, "seed": 42, "output_dir": "out", "note": "a", **changes})


def _rng_of(seed: int) -> dict:
    seed_everything(seed)
    return capture_rng()


def _draws() -> tuple:
    import random

    import numpy as np
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _checkpoint(path: Path, rng, epoch: int = 2, best=None, **extra) -> Path:
    model, optimizer, scheduler = _parts()
    optimizer.step()  # no gradients: nothing changes, but the scheduler may step
    for _ in range(epoch + 1):
        scheduler.step()
    state = training_state(_args(), model.cfg, model, optimizer, scheduler, None, epoch,
                           best or {"miou": 0.25, "epoch": 1}, rng, **extra)
    return save_checkpoint(state, path)


def _resume(path, info: DistInfo, args=None, **kw):
    model, optimizer, scheduler = _parts()
    return resume_training(path, args or _args(), model, optimizer, scheduler, None, info, LOG,
                           best={"miou": -1.0, "epoch": -1}, **kw), model, scheduler


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_takes_back_its_own_rng_from_the_list(tmp_path, rank, caplog):
    expected = [_rng_of(100), _rng_of(200)]
    out = tmp_path / "run"  # rank 0 rewrites the run's history.json from the checkpoint's history
    path = _checkpoint(out / "c.pth", expected, history=[{"epoch": 0}, {"epoch": 1}, {"epoch": 2}])
    seed_everything(0)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        (start, best, extra), model, scheduler = _resume(path, DistInfo(rank, 2, rank, CPU), _args(output_dir=str(out)))
    got = _draws()
    restore_rng(expected[rank])
    assert got == _draws()  # this process's state, not the other one's
    restore_rng(expected[1 - rank])
    assert got != _draws()
    assert start == 3 and best == {"miou": 0.25, "epoch": 1} and scheduler.last_epoch == 3
    assert [h["epoch"] for h in extra["history"]] == [0, 1, 2] and extra["args"].lr == 1e-3
    assert "different number of processes" not in caplog.text
    assert "resumed from" in caplog.text and "epoch 2 done, best val miou 0.2500 (epoch 1)" in caplog.text
    assert (json.loads((out / "history.json").read_text()) == extra["history"]) if rank == 0 else \
        not (out / "history.json").exists()


def test_old_single_rng_state_goes_to_rank_0(tmp_path, caplog):
    """A checkpoint written before every process's RNG was saved holds rank 0's state only."""
    old = _rng_of(300)
    path = _checkpoint(tmp_path / "old.pth", old)
    assert isinstance(read_checkpoint(path)["rng"], dict)
    seed_everything(0)
    (start, _, _), _, _ = _resume(path, DistInfo(0, 1, 0, CPU))
    got = _draws()
    restore_rng(old)
    assert start == 3 and got == _draws()  # one process: as exact as before

    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _resume(path, DistInfo(1, 2, 1, CPU))  # another rank: reseeded, per rank and epoch, with a warning
    got = _draws()
    seed_everything(1000 * 3 + 1 + 42)
    assert got == _draws() and "rank 0 only" in caplog.text


def test_other_process_count_warns_and_reseeds(tmp_path, caplog):
    path = _checkpoint(tmp_path / "c.pth", [_rng_of(1), _rng_of(2)])
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        _resume(path, DistInfo(0, 1, 0, CPU))
    got = _draws()
    seed_everything(1000 * 3 + 0 + 42)
    assert got == _draws() and "different number of processes" in caplog.text


def test_save_training_writes_every_process_rng_as_a_list(tmp_path):
    model, optimizer, scheduler = _parts()
    info = DistInfo(0, 1, 0, CPU)
    seed_everything(5)
    paths = save_training(tmp_path, True, info, _args(), model.cfg, model, optimizer, scheduler, None, 0,
                          {"miou": 0.5, "epoch": 0}, history=[{"epoch": 0}])
    assert set(paths) == {"checkpoint_last", "checkpoint_best"}
    ckpt = read_checkpoint(tmp_path / "checkpoint_last.pth")
    assert isinstance(ckpt["rng"], list) and len(ckpt["rng"]) == 1 and ckpt["history"] == [{"epoch": 0}]
    assert save_training(tmp_path / "other", True, DistInfo(1, 2, 1, CPU), _args(), model.cfg, model, optimizer,
                         scheduler, None, 0, {"miou": 0.5, "epoch": 0}) == {}  # rank 1 writes nothing
    assert not (tmp_path / "other").exists()


def test_run_epochs_validates_when_due_and_after_the_last_epoch_and_keeps_the_best():
    """The one epoch loop of the four trainers: with --val_every 2 over 5 epochs validation runs after
    epochs 1, 3 and 4 (the last, also in VSS and A2D, which skipped it before); the schedule steps
    after validation; the best keeps the best dict's own key; stop_after ends early."""
    calls, closed = [], []

    class Sampler:
        def set_epoch(self, epoch):
            calls.append(("sampler", epoch))

    scores = {1: 0.3, 3: 0.2, 4: 0.5}

    def validate(epoch):
        calls.append(("val", epoch))
        return {"val_miou": scores[epoch]}

    history: list[dict] = []
    best = run_epochs(0, 5, None, Sampler(), lambda e: {"loss": 1.0 / (e + 1)}, validate, 2, ("val_miou", "miou"),
                      {"miou": -1.0, "epoch": -1}, history, lambda: calls.append(("step",)),
                      lambda epoch, is_best, best, history: closed.append((epoch, is_best, dict(best), len(history))),
                      logging.getLogger("test"))
    assert [c[1] for c in calls if c[0] == "val"] == [1, 3, 4]
    assert calls[:4] == [("sampler", 0), ("step",), ("sampler", 1), ("val", 1)] and calls[4] == ("step",)
    assert best == {"miou": 0.5, "epoch": 4}
    assert [(e, b) for e, b, _, _ in closed] == [(0, False), (1, True), (2, False), (3, False), (4, True)]
    assert closed[3][2] == {"miou": 0.3, "epoch": 1} and closed[4][3] == 5
    assert history[1] == {"epoch": 1, "loss": 0.5, "val_miou": 0.3} and "val_miou" not in history[2]
    history = []  # a resumed run: epochs 3.. with stop_after 1 trains epoch 3 only; no validate: never
    run_epochs(3, 5, 1, Sampler(), lambda e: {}, None, 2, ("val_miou", "miou"), {"miou": -1.0, "epoch": -1}, history,
               lambda: None, lambda *a: None, logging.getLogger("test"))
    assert history == [{"epoch": 3}]


def test_close_epoch_writes_history_json_and_the_epochs_scalars(tmp_path, fake_tensorboard):
    """Every task's epoch end: the checkpoint holds the history, history.json is that history, and
    --tensorboard's writer gets the epoch's numbers (not its epoch, flags or names), flushed."""
    model, optimizer, scheduler = _parts()
    history = [{"epoch": 0, "loss": 0.5}, {"epoch": 1, "loss": 0.25, "val_miou": 0.5, "steps": 3, "nan": False,
                                           "split": "val"}]
    info = DistInfo(0, 1, 0, CPU)
    writer = tensorboard_writer(_args(tensorboard=True, output_dir=str(tmp_path)), info)
    close_epoch(tmp_path, info, _args(), model.cfg, model, optimizer, scheduler, None, writer, 1, False,
                {"miou": 0.5, "epoch": 1}, history)
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert read_checkpoint(tmp_path / "checkpoint_last.pth")["history"] == history
    [tb] = fake_tensorboard
    assert tb["scalars"] == {("loss", 1): 0.25, ("val_miou", 1): 0.5, ("steps", 1): 3} and tb["flushes"] == 1
    summary = run_summary(history, {"miou": 0.5, "epoch": 1}, tmp_path)
    assert summary["checkpoint_last"] == str(tmp_path / "checkpoint_last.pth") and "checkpoint_best" not in summary
    assert summary["epochs_done"] == 2 and summary["loss"] == 0.25


def test_refusals_changed_settings_config_and_weights_only(tmp_path, caplog):
    path = _checkpoint(tmp_path / "c.pth", [_rng_of(1)])
    info = DistInfo(0, 1, 0, CPU)
    with pytest.raises(UserError, match=r"--lr 0.5 \(the run used 0.001\)"):
        _resume(path, info, _args(lr=0.5))
    (start, _, _), _, _ = _resume(path, info, _args(note="b"), free=("note",))  # a script's free flag
    assert start == 3
    with pytest.raises(UserError, match="note"):
        _resume(path, info, _args(note="b"))
    with pytest.raises(CheckpointMismatchError, match=r"another task: its model has 1 classes, this script's model "
                                                      r"has 3"):
        model, optimizer, scheduler = _parts(get_config("tiny").replace(num_classes=3))
        resume_training(path, _args(), model, optimizer, scheduler, None, info, LOG, best={"miou": -1.0, "epoch": -1})
    with pytest.raises(CheckpointMismatchError, match="refused by the script"):
        def refuse(ckpt):
            raise CheckpointMismatchError("refused by the script")
        _resume(path, info, check=refuse)

    weights = tmp_path / "weights.pth"
    torch.save({"model": Net().state_dict()}, weights)
    with pytest.raises(CheckpointMismatchError, match="not a training checkpoint.*optimizer.*use --init_from"):
        _resume(weights, info, init_flags="--init_from")


# ------------------------------------------------------------------ VSS and A2D: resume == no stop
def _assert_same_run(a: dict, b: dict) -> None:
    assert_same_training_state(a, b, epoch=1)
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert isinstance(a["rng"], list) and len(a["rng"]) == 1
    drop = lambda hs: [{k: v for k, v in h.items() if k != "step_time"} for h in hs]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"])


@pytest.fixture(scope="module")
def vspw(tmp_path_factory) -> Path:
    return write_vspw(tmp_path_factory.mktemp("VSPW_480p"), {"1_train_a": ("train", 9), "2_train_b": ("train", 4),
                                                             "3_val_a": ("val", 5)})


def test_vss_stop_and_resume_equals_uninterrupted(vspw, tmp_path):
    def run(out, *extra):
        return train_medvt_vss.main(vss_argv(vspw, out, "--epochs", "2", "--val_every", "0", *extra))

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", "--stop_after", "1")
    assert part["epochs_done"] == 1 and read_checkpoint(tmp_path / "part" / "checkpoint_last.pth")["epoch"] == 0
    resumed = run(tmp_path / "part", "--resume", "auto")
    assert [h["epoch"] for h in resumed["history"]] == [0, 1] and resumed["loss"] == full["loss"]
    assert "resumed from" in (tmp_path / "part" / "train.log").read_text()
    assert_run_starts(tmp_path / "part" / "train.log", "None", "auto")
    _assert_same_run(read_checkpoint(tmp_path / "full" / "checkpoint_last.pth"),
                     read_checkpoint(tmp_path / "part" / "checkpoint_last.pth"))


@pytest.fixture(scope="module")
def a2d_dir(tmp_path_factory) -> Path:
    return make_synthetic_a2d(tmp_path_factory.mktemp("a2d"), num_train=2, num_test=1, num_frames=10,
                              size_hw=(48, 64), annotated=(2, 5, 9))


def _a2d_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "tiny", "--a2d_root", str(root), "--clip_size", "32", "48", "--device", "cpu",
            "--num_workers", "0", "--epochs", "2", "--warmup_epochs", "0", "--val_every", "0",
            "--output_dir", str(out), *extra]


def test_a2d_stop_and_resume_equals_uninterrupted(a2d_dir, tmp_path):
    full = train_medvt_a2d.main(_a2d_argv(a2d_dir, tmp_path / "full"))
    part = train_medvt_a2d.main(_a2d_argv(a2d_dir, tmp_path / "part", "--stop_after", "1"))
    assert part["epochs_done"] == 1
    resumed = train_medvt_a2d.main(_a2d_argv(a2d_dir, tmp_path / "part", "--resume", "auto"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1] and resumed["loss"] == full["loss"]
    assert_run_starts(tmp_path / "part" / "train.log", "None", "auto")
    _assert_same_run(read_checkpoint(tmp_path / "full" / "checkpoint_last.pth"),
                     read_checkpoint(tmp_path / "part" / "checkpoint_last.pth"))


def test_a2d_torchrun_saves_and_resumes_every_process_rng(a2d_dir, tmp_path, deterministic):
    """Two processes (Gloo, CPU): one RNG state per process in the checkpoint, validation shared out
    (3 annotated frames: one process scores two, the other one) with exactly the scores of one
    process, and --resume auto under torchrun gives each process its own RNG back (no reseeding warning)."""
    from actor_action.common import evaluate_a2d
    from datasets.a2d import A2DDataset
    from models import MedVTConfig, build_model

    out = tmp_path / "ddp"
    argv = [*_a2d_argv(a2d_dir, out), "--val_every", "1"]
    r = run_torchrun(ROOT / "actor_action" / "train_medvt_a2d.py", [*argv, "--stop_after", "1"])
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and len(ckpt["rng"]) == 2  # one RNG state per process
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # seeds 42 and 43

    args = train_medvt_a2d.get_args_parser().parse_args(argv)
    model = build_model(MedVTConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    val_set = A2DDataset(a2d_dir, "test", args.num_frames, tuple(args.clip_size), args.end_window)
    alone, metric, _ = evaluate_a2d(model, val_set, torch.device("cpu"))
    assert len(val_set) == 3 and alone["num_frames"] == 3
    saved = ckpt["history"][0]
    assert (saved["miou_original"], saved["class_miou"]) == (alone["miou_original"], alone["class_miou"])

    # inference under torchrun: each process scores and draws its frames; the tables are one process's
    from actor_action import inference_medvt_a2d

    infer = ["--model_path", str(out / "checkpoint_last.pth"), "--a2d_root", str(a2d_dir), "--clip_size", "32", "48",
             "--device", "cpu", "--save_pred"]
    r = run_torchrun(ROOT / "actor_action" / "inference_medvt_a2d.py", [*infer, "--output_dir", str(tmp_path / "two")])
    assert "2 processes, each scoring 1 frame in 2" in r.stdout
    inference_medvt_a2d.main([*infer, "--output_dir", str(tmp_path / "one")])
    two, one = tmp_path / "two", tmp_path / "one"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) == files
    assert sum(f.suffix == ".png" for f in files) == 2 * 3  # colour masks and overlays of the 3 frames
    assert all((two / f).read_bytes() == (one / f).read_bytes() for f in files)

    r = run_torchrun(ROOT / "actor_action" / "train_medvt_a2d.py", [*argv, "--resume", "auto"])
    log = r.stdout + r.stderr
    assert "resumed from" in log and "different number of processes" not in log and "rank 0 only" not in log
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1


def test_flags_newer_than_a_checkpoint_are_checked_at_the_value_its_run_had(tmp_path):
    """A2D checkpoints from before --scheduler_type ran the poly decay: resuming one with --scheduler_type
    step would load a poly state into a StepLR, so it is refused; poly (the old behaviour) is accepted."""
    from utils.resume import check_resume_args

    old_run = argparse.Namespace(lr=1e-4, epochs=10)  # no schedule flags recorded
    now = argparse.Namespace(lr=1e-4, epochs=10, scheduler_type="step", use_lr_warmup=False, lr_drop=5)
    with pytest.raises(UserError, match=r"--scheduler_type step \(the run used poly\)"):
        check_resume_args(tmp_path / "old.pth", old_run, now, added=train_medvt_a2d.SCHEDULE_BEFORE_FLAGS)
    check_resume_args(tmp_path / "old.pth", old_run, now)  # without `added` the change went unnoticed
    now.scheduler_type = "poly"
    check_resume_args(tmp_path / "old.pth", old_run, now, added=train_medvt_a2d.SCHEDULE_BEFORE_FLAGS)


def test_read_resume_checkpoint_refuses_before_any_model_is_built(tmp_path):
    """The early check of --resume (every training script, before the output folder is created): a file of
    weights only names --resume and the script's initialisation flags; another model config and changed
    settings are refused as resume_training refuses them; a good file is returned, for resume_training."""
    from utils.resume import read_resume_checkpoint

    path = _checkpoint(tmp_path / "c.pth", [_rng_of(1)])
    weights = tmp_path / "weights.pth"
    torch.save({"model": Net().state_dict()}, weights)
    cfg = get_config("tiny")
    with pytest.raises(UserError, match=r"--resume .*weights.pth is not a training checkpoint.*use --init_from"):
        read_resume_checkpoint(weights, _args(), cfg, init_flags="--init_from")
    with pytest.raises(CheckpointMismatchError, match="another task: its model has 1 classes"):
        read_resume_checkpoint(path, _args(), cfg.replace(num_classes=3))
    with pytest.raises(UserError, match=r"--lr 0.5 \(the run used 0.001\)"):
        read_resume_checkpoint(path, _args(lr=0.5), cfg)
    ckpt = read_resume_checkpoint(path, _args(), cfg)
    model, optimizer, scheduler = _parts()
    start, _, _ = resume_training(path, _args(), model, optimizer, scheduler, None, DistInfo(0, 1, 0, CPU), LOG,
                                  best={"miou": -1.0, "epoch": -1}, ckpt=ckpt)
    assert start == 3
