"""More user mistakes in the training scripts (audit 2: N5-N8b, N11, N12, --end_lr, messages): each ends
in one message naming the flag or file (UserError or an OSError of utils.cli.USER_ERRORS, exit 2
through utils.cli.run_main) before anything is created or changed; --overwrite deletes what a run
wrote and nothing else (tiny models, synthetic data, CPU)."""
from __future__ import annotations

import logging

import pytest
import torch

import train_swin_medvt_avos as avos_train
from actor_action import train_medvt_a2d
from avs import train_medvt as avs_train
from models import build_model
from models.convert import read_checkpoint
from tests.test_train import base_args, davis  # noqa: F401  (davis: the module's synthetic DAVIS fixture)
from tests.test_train_mistakes import QUICK, run_a, run_b, snapshot  # noqa: F401  (run_a, run_b: fixtures)
from utils.checkpoint import check_not_finished, check_run_dir, prepare_output_dir, save_checkpoint
from utils.cli import USER_ERRORS, UserError
from vss import train_medvt_vss

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
# The other scripts' refusals below come before their data is read: a data root need not exist.
OTHER = {"vss": (train_medvt_vss.main, ["--model", "tiny", "--vspw_root", "/nonexistent/vspw"], "--init_from"),
         "a2d": (train_medvt_a2d.main, ["--model", "tiny", "--a2d_root", "/nonexistent/a2d"], "--init_from"),
         "avs": (avs_train.main, ["--config", "avs_tiny", "--avsbench_root", "/nonexistent/avsb"], "--weights")}


# ---------------------------------------------------------------- N5, N6: --init_from that does not fit
def test_init_from_with_nothing_that_fits_is_refused(davis, tmp_path):  # noqa: F811
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.ones(3), "bar.bias": torch.zeros(2)}, unrelated)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"--init_from .*unrelated.pth: none of its 2 entries fit this model.*"
                                        r"another model"):
        avos_train.main(base_args(davis, out, *QUICK, "--init_from", str(unrelated)))
    assert not out.exists()


def test_init_from_with_nan_weights_is_refused_by_name(davis, run_a, tmp_path):  # noqa: F811
    ckpt = read_checkpoint(run_a / "checkpoint_last.pth")
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    nan = tmp_path / "nan.pth"
    save_checkpoint(ckpt, nan)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"--init_from .*nan.pth holds non-finite .*{name.replace('.', '[.]')}"):
        avos_train.main(base_args(davis, out, *QUICK, "--init_from", str(nan)))
    assert not out.exists()


# ------------------------------------------------------------------------ N7: --init_from with --resume
def test_avos_init_from_with_resume_is_refused_naming_both(davis, run_a, run_b, tmp_path):  # noqa: F811
    before = snapshot(run_b)
    resume = str(run_b / "checkpoint_last.pth")
    with pytest.raises(UserError, match=rf"--resume {resume} and --init_from .*contradict"):
        avos_train.main(base_args(davis, run_b, "--epochs", "2", *QUICK[2:], "--resume", resume,
                                  "--init_from", str(run_a / "checkpoint_last.pth")))
    assert snapshot(run_b) == before
    # --resume auto with --init_from (a job script that always passes both): no run to continue in a new
    # folder, so a new run starts from the weights
    out = tmp_path / "requeued"
    weights = str(run_a / "checkpoint_last.pth")
    avos_train.main(base_args(davis, out, *QUICK, "--resume", "auto", "--init_from", weights))
    assert "tensors from" in (out / "train.log").read_text()


@pytest.mark.parametrize("script", ["vss", "a2d", "avs"])
def test_other_scripts_refuse_init_weights_with_resume(tmp_path, script):
    main, argv, flag = OTHER[script]
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"never read")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"--resume .*r.pth and {flag} .*w.pth contradict"):
        main([*argv, "--device", "cpu", "--output_dir", str(out), "--resume", str(tmp_path / "r.pth"), flag,
              str(weights)])
    assert not out.exists()


@pytest.mark.parametrize("script", ["avos", "vss", "a2d", "avs"])
def test_a_missing_initial_weights_file_is_refused_before_the_data_is_read(tmp_path, script):
    """A mistyped --init_from (--weights) was found only after the data and the model were built (a minute
    on a large data set, the same on every process); it is now refused with the output folder's checks."""
    main, argv, flag = OTHER[script] if script != "avos" else (
        avos_train.main, ["--model_config", "tiny", "--davis16_root", "/nonexistent/davis"], "--init_from")
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=rf"^{flag}: file .*typo.pth does not exist"):
        main([*argv, "--device", "cpu", "--output_dir", str(out), flag, str(tmp_path / "typo.pth")])
    assert not out.exists()


def test_a_missing_initial_weights_file_is_no_matter_when_the_run_continues(tmp_path):
    """--resume auto with --init_from (a job script passing both) continues the folder's run and never reads
    the initial weights: that their file is gone does not stop it."""
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint({"epoch": 0}, run / "checkpoint_last.pth")
    missing = {"--init_from": str(tmp_path / "gone.pth")}
    check_run_dir(run, "auto", False, init=missing)
    with pytest.raises(FileNotFoundError, match="--init_from: file .*gone.pth does not exist"):
        check_run_dir(run, None, True, init=missing)  # --overwrite: a new run, from the weights
    with pytest.raises(FileNotFoundError, match="--init_from: file .*gone.pth does not exist"):
        check_run_dir(tmp_path / "new", "auto", False, init=missing)  # nothing to continue: a new run


# ------------------------------------------------------- N8, N8b: --overwrite deletes what a run wrote
def test_overwrite_deletes_everything_a_run_wrote_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "tb" / "sub").mkdir(parents=True)
    (run / "tb" / "events.out.tfevents.1").write_text("old")
    (run / "tb" / "sub" / "events.out.tfevents.2").write_text("old")
    written = ["checkpoint_last.pth", "checkpoint_best.pth", "metrics.jsonl", "history.json", "train.log",
               "val_epoch000.csv", "val_epoch000.json", "val_epoch012.json", ".checkpoint_last.pth.abc123.tmp"]
    mine = ["notes.txt", "val_epoch_notes.txt", "val_epoch001.txt", "tboard.txt", "mydata/checkpoint_last.pth"]
    for name in written + mine:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    prepare_output_dir(run, None, True)
    assert sorted(snapshot(run)) == sorted(mine) and not (run / "tb").exists()


def test_avos_overwrite_removes_the_old_tensorboard_folder(davis, run_b):  # noqa: F811
    (run_b / "tb").mkdir()
    (run_b / "tb" / "events.out.tfevents.old").write_text("old run")
    (run_b / "notes.txt").write_text("mine")
    avos_train.main(base_args(davis, run_b, *QUICK, "--overwrite"))
    assert not (run_b / "tb").exists() and (run_b / "notes.txt").read_text() == "mine"
    assert (run_b / "checkpoint_last.pth").is_file()


# ------------------------------------------------------------------- N11: checkpoint_last.pth a folder
@pytest.mark.parametrize("resume", [None, "auto"])
def test_run_file_that_is_a_folder_is_named_as_a_folder(davis, tmp_path, resume):  # noqa: F811
    out = tmp_path / "run"
    (out / "checkpoint_last.pth").mkdir(parents=True)
    extra = ("--resume", resume) if resume else ()
    with pytest.raises(UserError, match=r"--output_dir .*run: checkpoint_last.pth in it is a folder, not a file"):
        avos_train.main(base_args(davis, out, *QUICK, *extra))
    with pytest.raises(UserError, match="is a folder"):  # --overwrite does not delete it either
        check_run_dir(out, None, True)
    assert [p.name for p in out.iterdir()] == ["checkpoint_last.pth"]


# ------------------------------------------------------------------ N12: a finished run, --resume auto
def test_resume_auto_of_a_finished_run_says_there_is_nothing_to_do(davis, run_b):  # noqa: F811
    before = {k: v for k, v in snapshot(run_b).items() if k != "train.log"}
    res = avos_train.main(base_args(davis, run_b, *QUICK, "--resume", "auto"))
    assert res is not None
    log = (run_b / "train.log").read_text()
    assert "the run has already trained its 1 epochs; nothing to do — raise --epochs to train more" in log
    assert {k: v for k, v in snapshot(run_b).items() if k != "train.log"} == before


def test_check_not_finished_names_the_scripts_flag(caplog):
    logger = logging.getLogger("test.not_finished")
    with caplog.at_level(logging.WARNING, logger="test.not_finished"):
        assert check_not_finished(3, 5, logger)
        assert not caplog.records
        assert not check_not_finished(5, 5, logger, "--max_epoches")
        assert not check_not_finished(5, 2, logger)
    assert "already trained its 5 epochs; nothing to do — raise --max_epoches" in caplog.records[0].getMessage()
    assert "--epochs 2 but the run has already trained 5 epochs" in caplog.records[1].getMessage()


# ---------------------------------------------------------------------------- --end_lr larger than --lr
@pytest.mark.parametrize("script", ["avos", "vss", "a2d", "avs_ms3"])
def test_end_lr_above_lr_is_refused_naming_both(davis, tmp_path, script):  # noqa: F811
    out = tmp_path / "out"
    lrs = ["--lr", "1e-4", "--end_lr", "1e-3"]
    if script == "avos":
        call = lambda: avos_train.main(base_args(davis, out, *QUICK, *lrs))  # noqa: E731
    elif script == "avs_ms3":
        main, argv, _ = OTHER["avs"]
        call = lambda: main([*argv, "--task", "ms3", "--device", "cpu", "--output_dir", str(out), *lrs])  # noqa: E731
    else:
        main, argv, _ = OTHER[script]
        call = lambda: main([*argv, "--device", "cpu", "--output_dir", str(out), *lrs])  # noqa: E731
    with pytest.raises(UserError, match=r"--end_lr 0.001 is larger than --lr 0.0001"):
        call()
    assert not out.exists()


# ------------------------------------------------------------------------------------- messages
def test_resume_of_an_avs_checkpoint_names_the_file_and_flag(davis, run_a, tmp_path):  # noqa: F811
    ckpt = read_checkpoint(run_a / "checkpoint_last.pth")
    avs = tmp_path / "avs_run.pth"
    save_checkpoint({**ckpt, "config": {**ckpt["config"], "audio_dim": 128}, "task": "avs"}, avs)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"--resume .*avs_run.pth holds an AVS model .*run it with avs/train_medvt"):
        avos_train.main(base_args(davis, out, *QUICK, "--resume", str(avs)))
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--vistr_coco", "--init_from", "--swin_pretrained", "--resume"])
def test_a_folder_given_for_a_file_is_called_a_folder(davis, tmp_path, flag):  # noqa: F811
    folder = tmp_path / "adir.pth"
    folder.mkdir()
    out = tmp_path / "out"
    with pytest.raises(USER_ERRORS, match=rf"{flag} .*adir.pth is a folder"):
        avos_train.main(base_args(davis, out, *QUICK, flag, str(folder)))
    assert not out.exists()


def test_vss_init_from_a_folder_is_called_a_folder(tmp_path):
    model = build_model("tiny")
    folder = tmp_path / "adir.pth"
    folder.mkdir()
    from models.convert import init_from_checkpoint
    with pytest.raises(IsADirectoryError, match=r"--init_from .*adir.pth is a folder"):
        init_from_checkpoint(model, folder)
