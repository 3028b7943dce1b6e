"""A user's mistake in a training script ends in one message naming the flag (UserError / argparse,
exit 2 through utils.cli.run_main), before anything is created or changed: an earlier run stays
byte-identical, no output folder is left behind (tiny models, synthetic data, CPU)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inference_swin_medvt_avos as avos_inference
import train_swin_medvt_avos as avos_train
from actor_action import train_medvt_a2d
from avs import train_medvt as avs_train
from models import build_model, get_config
from models.convert import read_checkpoint
from tests.test_train import base_args, davis  # noqa: F401  (davis: the module's synthetic DAVIS fixture)
from utils.checkpoint import check_run_dir, prepare_output_dir, save_checkpoint
from utils.cli import USER_ERRORS, UserError
from vss import train_medvt_vss

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
QUICK = ("--epochs", "1", "--steps_per_epoch", "1", "--no_val")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes): equal snapshots = nothing changed or added."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_a(davis, tmp_path_factory) -> Path:  # noqa: F811
    """A finished tiny AVOS run (1 epoch, 1 step): its folder holds checkpoint_last.pth and history.json."""
    out = tmp_path_factory.mktemp("runs") / "run_a"
    avos_train.main(base_args(davis, out, *QUICK))
    return out


@pytest.fixture
def run_b(run_a, tmp_path) -> Path:
    """Another folder holding a run (a copy of run A), to check that a mistake leaves it as it was."""
    return Path(shutil.copytree(run_a, tmp_path / "run_b"))


# ----------------------------------------------------------------------- Finding 3: --resume and the folder
def test_resume_of_another_run_into_a_folder_holding_a_run_is_refused(davis, run_a, run_b):  # noqa: F811
    before_a, before_b = snapshot(run_a), snapshot(run_b)
    with pytest.raises(UserError, match=r"--resume .*run_a.*checkpoint_last.pth is not a checkpoint of the run in "
                                        r"--output_dir .*run_b.*its own folder.*empty --output_dir"):
        avos_train.main(base_args(davis, run_b, "--epochs", "2", "--steps_per_epoch", "1", "--no_val",
                                  "--resume", str(run_a / "checkpoint_last.pth")))
    assert snapshot(run_b) == before_b and snapshot(run_a) == before_a


def test_resume_into_a_new_folder_continues_a_copy(davis, run_a, tmp_path):  # noqa: F811
    before = snapshot(run_a)
    res = avos_train.main(base_args(davis, tmp_path / "copy", "--epochs", "2", "--steps_per_epoch", "1", "--no_val",
                                    "--resume", str(run_a / "checkpoint_last.pth")))
    assert [h["epoch"] for h in res["history"]] == [0, 1]  # the run's history, continued in the copy
    assert read_checkpoint(tmp_path / "copy" / "checkpoint_last.pth")["epoch"] == 1
    assert snapshot(run_a) == before


def test_resume_of_a_plain_state_dict_is_refused_naming_the_init_flags(davis, run_b, tmp_path):  # noqa: F811
    plain = run_b / "weights.pth"  # in the run's own folder, beside its checkpoint_last.pth
    torch.save({"model": build_model("tiny").state_dict()}, plain)
    before = snapshot(run_b)
    # there any file but checkpoint_last.pth is refused first (it would rewind the run), without reading it
    with pytest.raises(UserError, match=r"--resume .*weights.pth is not the latest checkpoint of the run"):
        avos_train.main(base_args(davis, run_b, "--epochs", "2", *QUICK[2:], "--resume", str(plain)))
    with pytest.raises(UserError, match=r"--resume .*weights.pth is not a training checkpoint of this script.*"
                                        r"--swin_pretrained"):
        avos_train.main(base_args(davis, tmp_path / "new", "--epochs", "2", *QUICK[2:], "--resume", str(plain)))
    assert snapshot(run_b) == before and not (tmp_path / "new").exists()


def test_resume_auto_with_overwrite_is_refused_naming_both(davis, run_b):  # noqa: F811
    before = snapshot(run_b)
    with pytest.raises(UserError, match=r"--resume auto and --overwrite contradict"):
        avos_train.main(base_args(davis, run_b, *QUICK, "--resume", "auto", "--overwrite"))
    assert snapshot(run_b) == before


def test_check_run_dir_rules(tmp_path):
    """The shared rules (all four scripts): own checkpoint or a new folder; --resume auto needs a checkpoint."""
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run, other):
        folder.mkdir()
        save_checkpoint({"epoch": 0}, folder / "checkpoint_last.pth")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    before = snapshot(tmp_path)
    check_run_dir(run, str(run / "checkpoint_last.pth"), False)  # its own checkpoint
    check_run_dir(run, str(run / ".." / "run" / "checkpoint_last.pth"), False)  # the same, spelt otherwise
    check_run_dir(run, "auto", False)
    check_run_dir(tmp_path / "new", str(other / "checkpoint_last.pth"), False)  # a copy continues there
    with pytest.raises(UserError, match="not a checkpoint of the run in --output_dir"):
        prepare_output_dir(run, str(other / "checkpoint_last.pth"), False)
    (run / "checkpoint_last.pth").unlink()
    with pytest.raises(UserError, match="--resume auto: .*no checkpoint_last.pth"):
        prepare_output_dir(run, "auto", False)
    with pytest.raises(UserError, match="--resume .* and --overwrite"):
        prepare_output_dir(other, str(other / "checkpoint_last.pth"), True)
    assert snapshot(tmp_path) == {k: v for k, v in before.items() if k != "run/checkpoint_last.pth"}


# ------------------------------------------------------------- Findings 7, 8: where the output folder may be
@pytest.mark.parametrize("where", ["root", "inside_root", "holds_pretrained"])
def test_output_dir_overlapping_an_input_is_refused(davis, tmp_path, where):  # noqa: F811
    weights = tmp_path / "w" / "swin.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not read")
    out, flag = {"root": (davis, "--davis16_root"), "inside_root": (davis / "JPEGImages" / "480p" / "newseq",
                                                                     "--davis16_root"),
                 "holds_pretrained": (weights.parent, "--swin_pretrained")}[where]
    before = snapshot(davis), snapshot(weights.parent)
    with pytest.raises(UserError, match=rf"--output_dir .* overlaps {flag}"):
        avos_train.main(base_args(davis, out, *QUICK, "--swin_pretrained", str(weights)))
    assert (snapshot(davis), snapshot(weights.parent)) == before and not (out / "train.log").exists()
    assert where != "inside_root" or not out.exists()


def test_output_dir_that_is_a_file_is_refused(davis, tmp_path):  # noqa: F811
    text = tmp_path / "text.txt"
    text.write_text("mine\n")
    with pytest.raises(UserError, match=r"--output_dir .*text.txt is a file"):
        avos_train.main(base_args(davis, text, *QUICK))
    assert text.read_text() == "mine\n"


@pytest.mark.parametrize("script", ["vss", "a2d", "avs"])
def test_other_scripts_refuse_an_output_dir_inside_their_data(tmp_path, script):
    root = tmp_path / "data"
    argv = {"vss": (train_medvt_vss.main, ["--model", "tiny", "--vspw_root", str(root)], "--vspw_root"),
            "a2d": (train_medvt_a2d.main, ["--model", "tiny", "--a2d_root", str(root)], "--a2d_root"),
            "avs": (avs_train.main, ["--config", "avs_tiny", "--avsbench_root", str(root)], "--avsbench_root")}
    main, args, flag = argv[script]
    with pytest.raises(UserError, match=rf"--output_dir .* overlaps {flag}"):
        main([*args, "--device", "cpu", "--output_dir", str(root / "out")])
    assert not root.exists()


# ---------------------------------------------- Finding 12: inputs checked before the folder is created
def test_bad_initial_weights_or_resume_file_leave_no_output_folder(davis, run_a, tmp_path):  # noqa: F811
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 8)
    other_model = tmp_path / "a2d_run.pth"  # a training checkpoint of another model config (e.g. an A2D run)
    ckpt = read_checkpoint(run_a / "checkpoint_last.pth")
    save_checkpoint({**ckpt, "config": get_config("medvt_swinb_a2d").to_dict(), "task": "a2d"}, other_model)
    cases = {"swin": (["--swin_pretrained", str(junk)], "junk.pth"),
             "vistr": (["--vistr_coco", str(junk)], "junk.pth"),
             "missing": (["--swin_pretrained", str(tmp_path / "none.pth")], "--swin_pretrained"),
             "other_model": (["--resume", str(other_model)], r"holds an A2D model \(80 classes\), but "
                                                             r"train_swin_medvt_avos\.py is for AVOS models; run it "
                                                             r"with actor_action/train_medvt_a2d\.py")}
    for name, (extra, text) in cases.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(USER_ERRORS, match=text):  # a missing file: FileNotFoundError, also one line
            avos_train.main(base_args(davis, out, *QUICK, *extra))
        assert not out.exists(), name


def test_other_scripts_check_initial_weights_before_creating_the_folder(tmp_path):
    """VSS, A2D, AVS: a bad initial-weights file is named before the output folder exists."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    vspw, a2d, avsb = tmp_path / "vspw", tmp_path / "a2d", tmp_path / "avsb"
    (vspw / "data").mkdir(parents=True)
    (a2d / "Release" / "Annotations" / "mat").mkdir(parents=True)
    (a2d / "Release" / "videoset.csv").write_text("")
    (a2d / "frames").mkdir()
    (avsb / "Single-source").mkdir(parents=True)
    (avsb / "Single-source" / "s4_meta_data.csv").write_text("name,start,category,split\n")
    runs = {"vss": (train_medvt_vss.main, ["--model", "tiny", "--num_classes", "3", "--vspw_root", str(vspw),
                                           "--init_from", str(junk)]),
            "a2d": (train_medvt_a2d.main, ["--model", "tiny", "--a2d_root", str(a2d), "--init_from", str(junk)]),
            "avs": (avs_train.main, ["--config", "avs_tiny", "--allow_random_vggish", "--avsbench_root", str(avsb),
                                     "--weights", str(junk)])}
    for name, (main, argv) in runs.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(UserError, match="junk.pth"):
            main([*argv, "--device", "cpu", "--num_workers", "0", "--output_dir", str(out)])
        assert not out.exists(), name



def test_each_trainer_names_its_own_flag_for_a_missing_or_misplaced_pretrained_file(tmp_path):
    """AVOS, VSS and A2D share one initialiser (models.registry.init_weights): a missing pretrained
    file is named by the trainer's own flag (not --model_path), and a Video Swin file for a ResNet
    model is refused, both before the output folder exists."""
    vspw, a2d, missing = tmp_path / "vspw", tmp_path / "a2d", str(tmp_path / "none.pth")
    (vspw / "data").mkdir(parents=True)
    (a2d / "Release" / "Annotations" / "mat").mkdir(parents=True)
    (a2d / "Release" / "videoset.csv").write_text("")
    (a2d / "frames").mkdir()
    vss = ["--model", "tiny", "--num_classes", "3", "--vspw_root", str(vspw)]
    runs = {"vss_swin": (train_medvt_vss.main, [*vss, "--swin_pretrained", missing], "--swin_pretrained: file"),
            "vss_vistr": (train_medvt_vss.main, [*vss, "--vistr_coco", missing], "--vistr_coco: file"),
            "a2d_vistr": (train_medvt_a2d.main, ["--model", "tiny", "--a2d_root", str(a2d),
                                                 "--resnet101_coco_weights_path", missing],
                          "--resnet101_coco_weights_path: file"),
            "a2d_resnet": (train_medvt_a2d.main, ["--backbone", "resnet101", "--a2d_root", str(a2d),
                                                  "--swin_b_pretrained_path", missing],
                           "--swin_b_pretrained_path is a Video Swin file, but this model's backbone is resnet101")}
    for name, (main, argv, text) in runs.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(USER_ERRORS, match=text):
            main([*argv, "--device", "cpu", "--num_workers", "0", "--output_dir", str(out)])
        assert not out.exists(), name


# ------------------------------------------------------------------- Findings 7, 13: flag values
@pytest.mark.parametrize("flag", ["--val_size", "--train_size"])
def test_frame_size_below_the_model_minimum_is_refused_before_training(davis, tmp_path, flag):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"{flag} 8 is too small for --model_config tiny: .*at least (\d+)") as e:
        avos_train.main(base_args(davis, out, "--epochs", "1", "--steps_per_epoch", "1", flag, "8"))
    assert not out.exists()
    smallest = int(str(e.value).split("at least ")[1].split()[0])
    model = build_model("tiny").eval()
    with torch.no_grad():
        model(torch.zeros(1, 2, 3, smallest, smallest))  # the size it names is accepted
        with pytest.raises(ValueError, match="spatial element"):
            model(torch.zeros(1, 2, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
def test_unusable_device_names_the_flag(davis, tmp_path, device):  # noqa: F811
    out = tmp_path / "out"
    with pytest.raises(UserError, match=rf"--device {device}"):
        avos_train.main(base_args(davis, out, *QUICK, "--device", device))
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_names_the_flag(davis, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="--device cuda was requested but CUDA is not available"):
        avos_train.main(base_args(davis, tmp_path / "out", *QUICK, "--device", "cuda"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["nosuch", "avs_tiny", "medvt_swinb_vss"])
def test_model_config_not_an_avos_preset_is_refused_listing_them(davis, tmp_path, capsys, name):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        avos_train.main(base_args(davis, tmp_path / "out", *QUICK, "--model_config", name))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--model_config" in err and "medvt_swinb_avos" in err and "tiny" in err
    assert "medvt_swinb_vss'" not in err.split("choose from")[1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("main", [avos_train.main, train_medvt_vss.main, train_medvt_a2d.main, avos_inference.main],
                         ids=["avos", "vss", "a2d", "avos_inference"])
def test_num_frames_1_is_refused(tmp_path, capsys, main):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["--num_frames", "1", "--device", "cpu", "--output_dir", str(out)])
    assert e.value.code == 2 and "argument --num_frames: 1 is not a clip length: at least 2" in capsys.readouterr().err
    assert not out.exists()


def test_command_line_prints_one_line_and_exits_2(davis, run_b, tmp_path):  # noqa: F811
    """The same refusal from the command line (utils.cli.run_main): one line naming the flags, exit 2."""
    before = snapshot(run_b)
    r = subprocess.run([sys.executable, str(ROOT / "train_swin_medvt_avos.py"),
                        *base_args(davis, run_b, *QUICK, "--resume", "auto", "--overwrite")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--resume auto and --overwrite" in r.stderr and snapshot(run_b) == before


def test_avos_val_every_0_means_never_as_in_the_other_trainers(davis, tmp_path):  # noqa: F811
    """--val_every 0 is "never" in VSS and A2D; AVOS refused it ("not a positive integer")."""
    res = avos_train.main(base_args(davis, tmp_path / "out", "--epochs", "1", "--steps_per_epoch", "1",
                                    "--val_every", "0"))
    assert "val_miou" not in res["history"][0] and not (tmp_path / "out" / "checkpoint_best.pth").exists()
