"""Audit of the resume path (AVOS trainer, tiny model, synthetic DAVIS, CPU): an epoch's files stay
consistent when the process is killed between them (checkpoint_last.pth is the commit point and
--resume repairs history.json), --resume of another file of a run's folder is refused before
anything changes, a continued copy says where the best epoch's weights are, a checkpoint of another
task is named as such, and a changed --num_workers is warned about."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import train_swin_medvt_avos as avos_train
import utils.checkpoint as checkpoint
from models import get_config
from models.convert import CheckpointMismatchError, read_checkpoint
from tests.test_train import base_args, davis  # noqa: F401  (davis: the module's synthetic DAVIS fixture)
from tests.test_train_mistakes import snapshot
from utils.checkpoint import save_checkpoint, training_state
from utils.cli import UserError
from utils.distributed import DistInfo
from utils.metrics import jsonable
from utils.optim import PolyLR
from utils.resume import read_resume_checkpoint, resume_training

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# Two epochs, validated only after the last (--val_every above --epochs): epoch 1 is then the best.
TWO = ("--epochs", "2", "--steps_per_epoch", "1", "--val_every", "5")
CPU = torch.device("cpu")


class Killed(BaseException):
    """Stands for kill -9: nothing after the raise runs (not even the trainer's except clauses)."""


@pytest.fixture(scope="module")
def full_run(davis, tmp_path_factory) -> Path:  # noqa: F811
    """The uninterrupted run: 2 epochs, best = epoch 1. One thread, as the tests (one_thread, which a
    module fixture precedes): another thread count sums in another order, so the weights would differ."""
    out = tmp_path_factory.mktemp("runs") / "full"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        avos_train.main(base_args(davis, out, *TWO))
    finally:
        torch.set_num_threads(threads)
    assert read_checkpoint(out / "checkpoint_best.pth")["epoch"] == 1
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    ma, mb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


# ------------------------------------------------------------------ 1: crash consistency of an epoch
@pytest.mark.parametrize("killed_after", [1, 2])
def test_a_kill_between_the_files_of_an_epoch_is_repaired_by_resume(davis, full_run, tmp_path,  # noqa: F811
                                                                    monkeypatch, killed_after):
    """Killed after the first (killed_after=1) or both (2) checkpoint files of the last epoch:
    --resume auto leaves checkpoint_best.pth = the best epoch's weights (those of the uninterrupted
    run) and a complete history.json."""
    out = tmp_path / "run"
    real_save, saved = checkpoint.save_checkpoint, []

    def save_then_die(state, path):
        real_save(state, path)
        if state["epoch"] == 1:
            saved.append(Path(path).name)
            if len(saved) == killed_after:
                raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        avos_train.main(base_args(davis, out, *TWO))
    monkeypatch.undo()
    assert len(json.loads((out / "history.json").read_text())) == 1  # the kill left history.json behind

    res = avos_train.main(base_args(davis, out, *TWO, "--resume", "auto"))
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1 and res["best"]["epoch"] == 1
    assert read_checkpoint(out / "checkpoint_best.pth")["epoch"] == 1
    _assert_same_weights(out / "checkpoint_best.pth", full_run / "checkpoint_best.pth")
    history = json.loads((out / "history.json").read_text())
    assert history == jsonable(read_checkpoint(out / "checkpoint_last.pth")["history"])
    assert [h["epoch"] for h in history] == [0, 1] and "val_miou" in history[1]


def test_a_kill_between_the_first_epochs_files_resumes_from_its_best(davis, tmp_path, monkeypatch):  # noqa: F811
    """Stopped after epoch 0's checkpoint_best.pth, before its checkpoint_last.pth: --resume auto said "no
    checkpoint_last.pth to continue it from" and a plain rerun "pass --resume auto", so a job script that
    always passes --resume auto could not go on. checkpoint_best.pth holds epoch 0's whole state: the run
    continues from it, as the uninterrupted one."""
    every = ("--epochs", "2", "--steps_per_epoch", "1", "--val_every", "1")  # epoch 0 validated: its best
    full = tmp_path / "full"
    avos_train.main(base_args(davis, full, *every, "--resume", "auto"))  # as a job script would: a new folder
    assert f"--resume auto: no checkpoint in {full} to continue, so a new run starts" in \
        (full / "train.log").read_text()
    out = tmp_path / "run"
    real_save = checkpoint.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        avos_train.main(base_args(davis, out, *every))
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_best.pth", "train.log"]
    with pytest.raises(UserError, match="pass --resume auto to continue it"):
        avos_train.main(base_args(davis, out, *every))
    from utils import training

    def die_before_saving(state, path):  # that continuation stopped in epoch 1, before saving it
        raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", die_before_saving)
    with pytest.raises(Killed):
        avos_train.main(base_args(davis, out, *every, "--resume", "auto"))
    monkeypatch.undo()
    # that continuation wrote history.json as it started: the folder could then be neither continued nor
    # started again ("holds a training run but no checkpoint_last.pth"), and the hint said to start again
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_best.pth", "train.log"]
    assert training.resume_hint() == "to continue, run the same command with --resume auto (without --overwrite)"
    res = avos_train.main(base_args(davis, out, *every, "--resume", "auto"))
    assert res["epochs_done"] == 2 and f"resumed from {out / 'checkpoint_best.pth'}: epoch 0 done" in \
        (out / "train.log").read_text()
    _assert_same_weights(out / "checkpoint_last.pth", full / "checkpoint_last.pth")
    def numbers(run):  # the epochs' numbers, but their timing
        return [{k: v for k, v in row.items() if k != "train_step_time"}
                for row in json.loads((run / "history.json").read_text())]
    assert numbers(out) == numbers(full)


def test_resume_auto_takes_a_lone_checkpoint_best_only_of_a_first_epoch(davis, full_run, tmp_path):  # noqa: F811
    """A folder left with a later epoch's checkpoint_best.pth alone (checkpoint_last.pth and history.json
    deleted) is not continued from it: that would rewind the run without a word."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(full_run / "checkpoint_best.pth", run)  # epoch 1
    before = snapshot(run)
    with pytest.raises(UserError, match=r"^--resume auto: --output_dir .* holds checkpoint_best\.pth of epoch 1 but "
                                        r"no checkpoint_last\.pth or history\.json \(deleted\?\), so it is not "
                                        r"continued from; pass --overwrite"):
        avos_train.main(base_args(davis, run, *TWO, "--resume", "auto"))
    assert snapshot(run) == before


# --------------------------------------------------- 2: --resume of another file of the run's own folder
def test_resume_of_checkpoint_best_beside_checkpoint_last_is_refused_naming_both(davis, full_run,  # noqa: F811
                                                                                tmp_path):
    run = Path(shutil.copytree(full_run, tmp_path / "run"))
    before = snapshot(run)
    best, last = run / "checkpoint_best.pth", run / "checkpoint_last.pth"
    with pytest.raises(UserError, match=rf"--resume {best} is not the latest checkpoint of the run in --output_dir "
                                        rf"{run}, which is {last}: .*Resume {last} \(or --resume auto\), or continue "
                                        rf"from {best} in another --output_dir"):
        avos_train.main(base_args(davis, run, *TWO[2:], "--epochs", "3", "--resume", str(best)))
    assert snapshot(run) == before
    other = run / "epoch1.pth"  # any file of the folder but checkpoint_last.pth, however named
    shutil.copy(last, other)
    with pytest.raises(UserError, match="is not the latest checkpoint"):
        checkpoint.check_run_dir(run, str(other), False)
    checkpoint.check_run_dir(run, str(run / ".." / "run" / "checkpoint_last.pth"), False)  # its own, spelt otherwise


# ---------------------------------------------------------------- 3: a continued copy and its best
def test_continuing_a_copy_logs_where_the_best_checkpoint_is(davis, full_run, tmp_path):  # noqa: F811
    copy = tmp_path / "copy"
    avos_train.main(base_args(davis, copy, *TWO, "--resume", str(full_run / "checkpoint_last.pth")))
    log = (copy / "train.log").read_text()
    assert f"best epoch 1's weights are in {full_run / 'checkpoint_best.pth'}" in log
    # nothing left to train: the copy got no epoch of its own, so no run files (the same command starts it again)
    assert not (copy / "history.json").exists()


def _ckpt(path: Path, epoch: int = 2, best_epoch: int = 1, **args) -> Path:
    model = torch.nn.Linear(3, 2)
    model.cfg = get_config("tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = training_state(argparse.Namespace(lr=1e-3, **args), model.cfg, model, optimizer,
                           PolyLR(optimizer, max_steps=4, end_lr=1e-6, power=0.9), None, epoch,
                           {"miou": 0.5, "epoch": best_epoch}, [checkpoint.capture_rng()],
                           history=[{"epoch": e} for e in range(epoch + 1)])
    return save_checkpoint(state, path)


def _resume(path: Path, out: Path, caplog, rank: int = 0, **args) -> str:
    model = torch.nn.Linear(3, 2)
    model.cfg = get_config("tiny")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medvt.test_resume_safety"):
        resume_training(path, argparse.Namespace(lr=1e-3, output_dir=str(out), **args), model, optimizer,
                        PolyLR(optimizer, max_steps=4, end_lr=1e-6, power=0.9), None, DistInfo(rank, 2, rank, CPU),
                        logging.getLogger("medvt.test_resume_safety"), best={"miou": -1.0, "epoch": -1})
    return caplog.text


def test_where_the_best_of_a_copy_is_said_in_each_case(tmp_path, caplog):
    src = tmp_path / "src"
    path = _ckpt(src / "checkpoint_last.pth")
    text = _resume(path, tmp_path / "copy", caplog)
    assert "best epoch 1's weights are not in" in text and "no checkpoint_best.pth" in text
    save_checkpoint({"epoch": 1}, src / "checkpoint_best.pth")
    assert f"best epoch 1's weights are in {src / 'checkpoint_best.pth'}" in _resume(path, tmp_path / "copy", caplog)
    (src / "checkpoint_best.pth").unlink()
    last_is_best = _ckpt(src / "checkpoint_last.pth", best_epoch=2)
    assert f"are in {last_is_best}, the file resumed" in _resume(last_is_best, tmp_path / "copy", caplog)
    assert "continuing a copy" not in _resume(path, src, caplog)  # its own folder: nothing to say
    # only rank 0 writes history.json and says it
    assert "continuing a copy" not in _resume(path, tmp_path / "rank1", caplog, rank=1)
    assert not (tmp_path / "rank1").exists()
    # history.json is repaired in the run's own folder; a copy gets one with its first epoch
    assert json.loads((src / "history.json").read_text()) == [{"epoch": e} for e in range(3)]
    assert not (tmp_path / "copy" / "history.json").exists()


# ---------------------------------------------------------------- 4: a checkpoint of another task
def test_resume_of_another_tasks_checkpoint_says_so(davis, full_run, tmp_path):  # noqa: F811
    """A VSS run (tiny, --num_classes 5) given to the AVOS trainer, which has no --num_classes flag."""
    vss = tmp_path / "vss_run.pth"
    ckpt = {k: v for k, v in read_checkpoint(full_run / "checkpoint_last.pth").items() if k != "task"}  # as before
    save_checkpoint({**ckpt, "config": get_config("tiny").replace(num_classes=5).to_dict()}, vss)  # tasks were kept
    out = tmp_path / "out"
    with pytest.raises(CheckpointMismatchError, match=rf"--resume {vss} is a checkpoint of another task: its model "
                                                      r"has 5 classes, this script's model has 1\. Resume it with "
                                                      r"the training script of its task$") as e:
        avos_train.main(base_args(davis, out, *TWO, "--resume", str(vss)))
    assert "model flags" not in str(e.value) and not out.exists()


def test_checkpoints_record_their_task_and_resume_refuses_another_by_its_trainer(davis, full_run, tmp_path):  # noqa: F811
    """utils.training records the trainer's task (models.tasks) in every checkpoint; --resume of a file
    that records another task names that task's trainer, before anything is created."""
    ckpt = read_checkpoint(full_run / "checkpoint_last.pth")
    assert ckpt["task"] == "avos"
    vss = tmp_path / "vss_run.pth"
    save_checkpoint({**ckpt, "task": "vss"}, vss)  # the same model: only the record says VSS
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"^--resume {vss} holds a VSS model \(1 class\), but "
                                        r"train_swin_medvt_avos\.py is for AVOS models; run it with "
                                        r"vss/train_medvt_vss\.py$"):
        avos_train.main(base_args(davis, out, *TWO, "--resume", str(vss)))
    assert not out.exists()


def test_another_class_count_names_num_classes_where_the_script_has_it(tmp_path):
    """A script with --num_classes (VSS) may be given a run of its own task with another count."""
    path = _ckpt(tmp_path / "c.pth")
    cfg = get_config("tiny").replace(num_classes=3)
    with pytest.raises(CheckpointMismatchError, match=r"another task: its model has 1 classes, this script's model "
                                                      r"has 3.*if it is a run of this task, pass --num_classes 1"):
        read_resume_checkpoint(path, argparse.Namespace(lr=1e-3, num_classes=3), cfg)
    with pytest.raises(CheckpointMismatchError, match=r"another model config: lprop_key_dim 8 \(the run used 32\)"):
        read_resume_checkpoint(path, argparse.Namespace(lr=1e-3), get_config("tiny").replace(lprop_key_dim=8))
    # a file known to be of this task (recorded, or by the trainer's data flag): no talk of another task
    a2d_run = save_checkpoint({**read_checkpoint(path), "config": get_config("tiny").replace(num_classes=5).to_dict(),
                               "task": "a2d"}, tmp_path / "a2d.pth")
    with pytest.raises(CheckpointMismatchError, match=rf"^--resume {a2d_run} is a run of this task with 5 classes, "
                                                      r"this script's model has 80: pass --num_classes 5$"):
        read_resume_checkpoint(a2d_run, argparse.Namespace(lr=1e-3, num_classes=None),
                               get_config("tiny").replace(num_classes=80), task="a2d")


# ---------------------------------------------------------------- 5: another --num_workers
def test_changed_num_workers_resumes_with_a_warning(tmp_path, caplog):
    path = _ckpt(tmp_path / "run" / "checkpoint_last.pth", num_workers=0)
    text = _resume(path, tmp_path / "run", caplog, num_workers=2)
    assert "WARNING" in text and "--num_workers 2 differs from the run's (0)" in text and "bit for bit" in text
    assert "differs from the run" not in _resume(path, tmp_path / "run", caplog, num_workers=0)


def test_a_copy_stopped_between_its_first_epochs_checkpoints_is_told_a_way_that_works(davis, full_run, tmp_path,  # noqa: F811
                                                                                     monkeypatch):
    """A run continued in a new folder (from epoch 1 of another) and stopped after its first epoch's
    checkpoint_best.pth, before checkpoint_last.pth: the stop said "--resume auto", which refuses a lone
    checkpoint_best.pth of epoch 2 (a plain rerun is refused too). The hint now offers what works."""
    from utils import training

    copy, real_save = tmp_path / "copy", checkpoint.save_checkpoint
    start = tmp_path / "start.pth"  # full_run's last epoch, its best score lowered: the copy's epoch 2 is its best
    save_checkpoint({**read_checkpoint(full_run / "checkpoint_last.pth"), "best": {"miou": -1.0, "epoch": -1}}, start)

    def save_then_die(state, path):
        real_save(state, path)
        raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    three = ("--epochs", "3", *TWO[2:])
    with pytest.raises(Killed):
        avos_train.main(base_args(davis, copy, *three, "--resume", str(start)))
    monkeypatch.undo()
    assert sorted(p.name for p in copy.iterdir()) == ["checkpoint_best.pth", "train.log"]
    hint = training.resume_hint()
    assert hint.endswith(f"continue from it with --resume {copy / 'checkpoint_best.pth'} and another --output_dir")
    with pytest.raises(UserError, match="holds checkpoint_best.pth of epoch 2"):
        avos_train.main(base_args(davis, copy, *three, "--resume", "auto"))
    nxt = tmp_path / "next"  # the way the hint offers: epoch 3 trained after the stopped copy's epoch 2
    res = avos_train.main(base_args(davis, nxt, "--epochs", "4", *TWO[2:], "--resume",
                                    str(copy / "checkpoint_best.pth")))
    assert res["epochs_done"] == 4 and read_checkpoint(nxt / "checkpoint_last.pth")["epoch"] == 3
