"""avs/train_medvt.py: exact resume, the output-folder and changed-settings guards, a non-finite loss,
and two processes under torchrun (Gloo, CPU); tiny model on a synthetic AVSBench tree."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import avs.train_medvt as train_script
from datasets.avsbench import make_synthetic_avsbench
from models.avs import build_avs_model
from models.avs_convert import load_avs_checkpoint
from models.convert import read_checkpoint
from utils.cli import UserError, run_main
from utils.engine import NonFiniteLossError
from checkpoint_asserts import assert_epoch_lines, assert_run_starts, assert_same_training_state, run_torchrun

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def avs_root(tmp_path_factory) -> Path:
    # 4 train clips: 2 steps per epoch in one process, and 2 per process with two processes.
    return make_synthetic_avsbench(tmp_path_factory.mktemp("avsbench"), "s4", {"train": 4, "val": 2, "test": 1},
                                   size=32, seed=0)


def base_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu", "--num_workers", "0",
            "--avsbench_root", str(root), "--output_dir", str(out), "--train_im_size", "32", "--val_im_size", "32",
            "--train_batch_size", "1", "--steps_per_epoch", "2", "--val_max_batches", "1", "--max_epoches", "2",
            *extra]


def test_resume_equals_uninterrupted(avs_root, tmp_path, fake_tensorboard):
    """2 epochs in one go == 1 epoch, stop, --resume auto for the second: weights, optimiser, schedule,
    best and history. The first part also checks that --resume auto in an empty folder starts a run
    (as train_swin_medvt_avos.py)."""
    full = train_script.main(base_args(avs_root, tmp_path / "full", "--tensorboard"))
    assert [fake_tensorboard[0]["scalars"][("val_miou", e)] for e in (0, 1)] == [h["val_miou"] for h in full["history"]]
    assert_epoch_lines(tmp_path / "full" / "train.log", 2, full["best"], "val_miou")
    part = train_script.main(base_args(avs_root, tmp_path / "part", "--resume", "auto", "--stop_after", "1"))
    assert part["epochs_done"] == 1 and [h["epoch"] for h in part["history"]] == [0]
    assert read_checkpoint(tmp_path / "part" / "checkpoint_last.pth")["epoch"] == 0
    resumed = train_script.main(base_args(avs_root, tmp_path / "part", "--resume", "auto"))
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]  # the run's history, continued
    assert "resumed from" in (tmp_path / "part" / "train.log").read_text()
    assert_run_starts(tmp_path / "part" / "train.log", "auto", "auto")

    a = read_checkpoint(tmp_path / "full" / "checkpoint_last.pth")
    b = read_checkpoint(tmp_path / "part" / "checkpoint_last.pth")
    assert {"model", "optimizer", "lr_scheduler", "epoch", "args", "config", "rng", "best", "history"} <= set(a)
    assert_same_training_state(a, b, epoch=1)
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 2
    assert a["best"] == b["best"] == full["best"]
    drop = lambda hs: [{k: v for k, v in h.items() if k != "step_time"} for h in hs]  # noqa: E731
    assert drop(a["history"]) == drop(b["history"]) == drop(full["history"]) == drop(resumed["history"])
    assert len(json.loads((tmp_path / "part" / "history.json").read_text())) == 2
    # the test script's loader still reads the checkpoint
    load_avs_checkpoint(build_avs_model("avs_tiny"), tmp_path / "part" / "checkpoint_best.pth")


def test_guards_on_the_output_folder_and_resume(avs_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="--resume .*nowhere.pth"):
        train_script.main(base_args(avs_root, out, "--resume", str(tmp_path / "nowhere.pth")))
    train_script.main(base_args(avs_root, out, "--stop_after", "1"))
    # a folder that holds a run: refused without --resume / --overwrite, in one line on the command line
    monkeypatch.setattr(sys, "argv", ["train_medvt.py", *base_args(avs_root, out)])
    with pytest.raises(SystemExit) as e:
        run_main(train_script.main)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already holds a training run" in err and "--resume auto" in err
    # changed training settings on --resume: refused, naming them
    with pytest.raises(UserError, match=r"--lr 0.0005 \(the run used 0.0001\).*--seed 7 \(the run used 123\)"):
        train_script.main(base_args(avs_root, out, "--resume", "auto", "--lr", "5e-4", "--seed", "7"))
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 0  # untouched
    # --overwrite starts again
    res = train_script.main(base_args(avs_root, out, "--overwrite", "--stop_after", "1", "--lr", "5e-4"))
    assert [h["epoch"] for h in res["history"]] == [0]
    assert read_checkpoint(out / "checkpoint_last.pth")["args"].lr == 5e-4


def test_non_finite_loss_stops_at_the_step(avs_root, tmp_path, monkeypatch):
    class NaNAtStep1(train_script.AVSCriterion):
        calls = 0

        def forward(self, *a, **k):
            losses = super().forward(*a, **k)
            NaNAtStep1.calls += 1
            if NaNAtStep1.calls == 2:
                losses["loss"] = losses["loss"] * float("nan")
            return losses

    monkeypatch.setattr(train_script, "AVSCriterion", NaNAtStep1)
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 1"):
        train_script.main(base_args(avs_root, tmp_path / "nan"))
    assert not (tmp_path / "nan" / "checkpoint_last.pth").exists()
    assert "non-finite loss at epoch 0, step 1" in (tmp_path / "nan" / "train.log").read_text()


def test_diverging_run_stops_in_one_line_naming_the_step(avs_root, tmp_path, monkeypatch, capsys):
    """A learning rate that makes the logits NaN: the criterion's BCE would raise ("all elements of input
    should be between 0 and 1"), a traceback; it returns a NaN bce instead, so the engine's check stops
    the run in one line (exit 2) naming the epoch and step, also written to train.log."""
    out = tmp_path / "diverged"
    monkeypatch.setattr(sys, "argv", ["train_medvt.py", *base_args(avs_root, out, "--lr", "1e8", "--lr_backbone",
                                                                    "1e8")])
    with pytest.raises(SystemExit) as e:
        run_main(train_script.main)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(r"non-finite loss at epoch 0, step \d+: .*bce nan", err), err
    assert re.search(r"non-finite loss at epoch 0, step \d+", (out / "train.log").read_text())
    assert not (out / "checkpoint_last.pth").exists()


def test_criterion_returns_nan_bce_for_nan_logits_with_the_same_keys():
    """Every process returns the same keys (the engine reduces them over processes); finite logits keep
    their loss, and logits of ±inf (probabilities 0 and 1) are finite probabilities, still scored."""
    crit = train_script.AVSCriterion("s4")
    pred = torch.zeros(1, 5, 2, 2)
    frames, gt = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, 2, 2)
    ok = crit({"pred_masks": pred}, gt, frames)
    pred[0, 0, 0, 0] = float("nan")
    bad = crit({"pred_masks": pred}, gt, frames)
    assert set(bad) == set(ok) == {"loss", "bce", "av"}
    assert bad["bce"].isnan() and bad["loss"].isnan() and bad["av"].item() == 0
    assert ok["bce"].item() == pytest.approx(math.log(2))
    pred[0, 0, 0, 0] = float("inf")
    assert crit({"pred_masks": pred}, gt, frames)["bce"].isfinite()


def test_val_every(avs_root, tmp_path):
    """--max_epoches 3 --val_every 2 validates after epochs 1 and 2 (due, and the last) only, as the other
    trainers; --val_every 0 never (no checkpoint_best.pth); it may change on --resume (RESUME_FREE), and
    the resumed run equals the uninterrupted one."""
    full = tmp_path / "full"
    train_script.main(base_args(avs_root, full, "--max_epoches", "3", "--val_every", "2"))
    rows = json.loads((full / "history.json").read_text())
    assert [h["epoch"] for h in rows] == [0, 1, 2]
    assert ["val_miou" in h for h in rows] == [False, True, True]
    assert (full / "checkpoint_best.pth").is_file()
    part = tmp_path / "part"
    train_script.main(base_args(avs_root, part, "--max_epoches", "3", "--val_every", "0", "--stop_after", "1"))
    assert "val_miou" not in json.loads((part / "history.json").read_text())[0]
    assert not (part / "checkpoint_best.pth").exists()
    train_script.main(base_args(avs_root, part, "--max_epoches", "3", "--val_every", "2", "--resume", "auto"))
    drop = lambda hs: [{k: v for k, v in h.items() if k != "step_time"} for h in hs]  # noqa: E731
    assert drop(json.loads((part / "history.json").read_text())) == drop(rows)


def test_torchrun_two_processes_and_resume(avs_root, tmp_path, deterministic):
    """DDP on CPU (Gloo): two processes with 2 steps each (unused audio-branch parameters included),
    one RNG state per process in the checkpoint, validation shared out (two batches of one val clip:
    one per process) with exactly the scores of one process, then --resume auto under torchrun."""
    from avs.common import build_model_and_audio, evaluate
    from datasets.avsbench import AVSBenchDataset
    from utils.rng import seed_everything

    out = tmp_path / "ddp"
    argv = [*base_args(avs_root, out), "--val_max_batches", "2", "--val_batch_size", "1"]
    r = run_torchrun(ROOT / "avs" / "train_medvt.py", [*argv, "--stop_after", "1"])
    assert "2 process(es)" in r.stdout
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and len(ckpt["rng"]) == 2 and ckpt["task"] == "avs"  # one RNG state per process
    assert ckpt["history"][0]["steps"] == 2 and (out / "checkpoint_best.pth").is_file()

    args = train_script.resolve_defaults(train_script.get_args_parser().parse_args(argv))
    seed_everything(args.seed)  # the trainer's random VGGish
    model, vggish = build_model_and_audio(args, torch.device("cpu"))
    load_avs_checkpoint(model, out / "checkpoint_last.pth")
    val_set = AVSBenchDataset(avs_root, "s4", "val", args.val_im_size, audio=args.audio,
                              allow_resample=args.allow_resample, allow_silent=args.allow_silent)
    alone = evaluate(model, vggish, val_set, 1, torch.device("cpu"), max_batches=2)
    assert alone["num_batches"] == 2
    assert (ckpt["history"][0]["val_miou"], ckpt["history"][0]["val_fscore"]) == (alone["miou"], alone["fscore"])

    # the test script under torchrun: each process scores 1 batch in 2 and writes its masks
    import avs.test_medvt as test_script

    test = ["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu", "--num_workers", "0",
            "--avsbench_root", str(avs_root), "--weights", str(out / "checkpoint_last.pth"), "--split", "val",
            "--test_im_size", "32", "--test_batch_size", "1", "--save_pred_mask"]
    r = run_torchrun(ROOT / "avs" / "test_medvt.py", [*test, "--output_dir", str(tmp_path / "two")])
    assert "2 processes, each scoring 1 batch in 2" in r.stdout
    alone = test_script.main([*test, "--output_dir", str(tmp_path / "one")])
    two, one = tmp_path / "two", tmp_path / "one"
    masks = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(masks) == 2 * 5 and sorted(p.relative_to(two) for p in two.rglob("*.png")) == masks
    assert all((two / m).read_bytes() == (one / m).read_bytes() for m in masks)
    assert json.loads((two / "results.json").read_text()) == json.loads(json.dumps(alone))
    assert not (two / "INCOMPLETE").exists()

    r = run_torchrun(ROOT / "avs" / "train_medvt.py", [*argv, "--resume", "auto"])
    assert "resumed from" in r.stdout and "different number of processes" not in r.stdout + r.stderr
    assert read_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1
