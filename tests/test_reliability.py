"""Issue 15: no data lost, no silent wrong result, no code run from a data file (in-process checks;
tests/test_cli_errors.py runs the scripts themselves)."""
import argparse
import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import crf_davis16
import train_swin_medvt_avos as avos_train
from datasets.avsbench import AVSDataError, load_log_mel
from datasets.path_config import DatasetNotFoundError
from datasets.transforms import load_frames
from datasets.video import VideoSequence
from models import CheckpointMismatchError, build_model, load_checkpoint
from utils.checkpoint import save_checkpoint
from utils.cli import UserError, error_message, positive_int, run_main
from utils.engine import NonFiniteLossError, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the error boundary
def _exit_of(fn, monkeypatch, capsys, *argv, env=None):
    monkeypatch.setattr(sys, "argv", ["script.py", *argv])
    if env is None:
        monkeypatch.delenv("MEDVT_DEBUG", raising=False)
    else:
        monkeypatch.setenv("MEDVT_DEBUG", env)
    with pytest.raises(SystemExit) as exc:
        run_main(fn)
    return exc.value.code, capsys.readouterr().err


def test_user_errors_print_one_line_and_exit_2(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError("--model_path x.pth: file not found")
    code, err = _exit_of(missing, monkeypatch, capsys)
    assert code == 2 and err == "script.py: error: --model_path x.pth: file not found\n"


def test_debug_flag_or_variable_shows_the_traceback(monkeypatch, capsys):
    def missing():
        raise UserError("--video clip.mp4 is not there")
    for argv, env in ((["--debug"], None), ([], "1")):
        code, err = _exit_of(missing, monkeypatch, capsys, *argv, env=env)
        assert code == 2 and "Traceback" in err and err.endswith("error: --video clip.mp4 is not there\n")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def bug():
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(sys, "argv", ["script.py"])
    with pytest.raises(ZeroDivisionError):
        run_main(bug)


def test_error_from_a_dataloader_worker_is_cut_to_its_message():
    wrapped = FileNotFoundError("Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback "
                                "(most recent call last):\n  File \"x.py\", line 1\nFileNotFoundError: a2d: frame "
                                "f/00001.png is missing\n")
    assert error_message(wrapped) == "a2d: frame f/00001.png is missing"


def test_flag_validators_refuse_nonsense_values():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=positive_int)
    assert p.parse_args(["--epochs", "3"]).epochs == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(SystemExit):
            p.parse_args(["--epochs", bad])
    with pytest.raises(SystemExit):
        avos_train.get_args_parser().parse_args(["--val_size", "0"])


# --------------------------------------------------------------------------- data loss
def _logits_and_images(tmp_path):
    logits, images = tmp_path / "logits", tmp_path / "images"
    (logits / "seq").mkdir(parents=True)
    (images / "seq").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(logits / "seq" / "00000.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "seq" / "00000.jpg")
    return logits, images


@pytest.mark.parametrize("out", ["logits", "logits/crf", "."])
def test_crf_refuses_an_output_folder_overlapping_its_input(tmp_path, out):
    logits, images = _logits_and_images(tmp_path)
    before = (logits / "seq" / "00000.png").read_bytes()
    with pytest.raises(UserError, match="overlaps LOGITS_DIR"):
        crf_davis16.main([str(logits), str(tmp_path / out), "--images_dir", str(images), "--workers", "1"])
    assert (logits / "seq" / "00000.png").read_bytes() == before
    assert not (logits / "crf").exists()


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    from utils.checkpoint import prepare_output_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    (run / "checkpoint_last.pth").write_bytes(b"old")
    with pytest.raises(UserError, match=r"metrics.jsonl.*--resume auto.*--overwrite"):
        prepare_output_dir(run, None, False)
    prepare_output_dir(run, "auto", False)  # continuing it is fine
    assert (run / "metrics.jsonl").is_file()
    prepare_output_dir(run, None, True)
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoint_last.pth").exists()


def test_avos_training_refuses_a_finished_run_before_touching_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(UserError, match="--overwrite"):
        avos_train.main(["--backbone", "tiny", "--davis16_root", str(tmp_path / "nowhere"), "--no_ytvos",
                         "--device", "cpu", "--output_dir", str(run)])
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 0}\n' and not (run / "train.log").exists()


def test_training_with_missing_data_creates_no_output_folder(tmp_path):
    from actor_action.train_medvt_a2d import main as a2d_main
    from avs.train_medvt import main as avs_main
    from vss.train_medvt_vss import main as vss_main

    nowhere = str(tmp_path / "nowhere")
    runs = [(avos_train.main, ["--backbone", "tiny", "--davis16_root", nowhere, "--no_ytvos", "--device", "cpu"]),
            (vss_main, ["--model", "tiny", "--num_classes", "3", "--vspw_root", nowhere, "--device", "cpu"]),
            (a2d_main, ["--a2d_root", nowhere, "--device", "cpu"]),
            (avs_main, ["--config", "avs_tiny", "--avsbench_root", nowhere, "--device", "cpu"])]
    for i, (main, argv) in enumerate(runs):
        out = tmp_path / f"out{i}"
        with pytest.raises(DatasetNotFoundError, match="nowhere"):
            main(argv + ["--output_dir", str(out)])
        assert not out.exists(), main.__module__


def test_a_temporary_file_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    stale = tmp_path / ".checkpoint_last.pth.x1y2.tmp"  # what save_checkpoint's mkstemp names look like
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.tmp"
    other.write_text("not ours")
    save_checkpoint({"epoch": 0}, tmp_path / "checkpoint_last.pth")
    assert not stale.exists() and other.exists()


def test_non_finite_loss_stop_is_written_to_the_log(tmp_path):
    from models.losses import AVOSCriterion

    class Echo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, frames):
            m = frames.mean(2) * self.w
            return {"pred_masks": m, "aux_pred_masks": m}

    log = logging.getLogger("medvt.test_nonfinite")
    handler = logging.FileHandler(tmp_path / "train.log")
    log.addHandler(handler)
    bad = {"frames": torch.full((1, 2, 3, 4, 4), float("nan")), "masks": torch.ones(1, 2, 4, 4), "name": ["seq-x"]}
    model = Echo()
    with pytest.raises(NonFiniteLossError) as e:
        train_one_epoch(model, AVOSCriterion(), [bad], torch.optim.SGD(model.parameters(), lr=0.1),
                        torch.device("cpu"), epoch=0, logger=log)
    assert "try a lower --lr, or check" in str(e.value)  # no --amp hint for a run without autocast (A2D has none)
    with pytest.raises(NonFiniteLossError, match="try a lower --lr, --amp none, or check"):
        train_one_epoch(model, AVOSCriterion(), [bad], torch.optim.SGD(model.parameters(), lr=0.1),
                        torch.device("cpu"), epoch=0, amp_dtype=torch.bfloat16, logger=log)
    handler.close()
    log.removeHandler(handler)
    assert "non-finite loss at epoch 0, step 0" in (tmp_path / "train.log").read_text()


_NAN_OFFSETS = """
import torch
from models import build_model
model = build_model("tiny").eval()
frames = torch.randn(1, 2, 3, 64, 96)
with torch.no_grad():
    model.pixel_decoder.conv_offset.bias.fill_(float("nan"))  # every offset NaN, the input finite
    out = model(frames)["pred_masks"]
print("all-nan" if out.isnan().all() else "not-nan")
"""


def test_nan_deformable_offsets_give_nan_not_a_crash():
    """torchvision's CPU deformable conv reads out of bounds at NaN offsets (a diverging run had
    the training script die with SIGSEGV before its loss check); the output must be NaN instead."""
    import subprocess

    run = subprocess.run([sys.executable, "-c", _NAN_OFFSETS], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip() == "all-nan"


def test_training_clip_with_a_mask_of_another_size_names_both_files(tmp_path):
    from datasets.video import ClipDataset

    for i, size in enumerate([(16, 12), (16, 12)]):
        Image.new("RGB", size).save(tmp_path / f"{i}.jpg")
    Image.new("L", (16, 12)).save(tmp_path / "0.png")
    Image.new("L", (12, 16)).save(tmp_path / "1.png")  # transposed
    seq = VideoSequence("s", [tmp_path / "0.jpg", tmp_path / "1.jpg"], [tmp_path / "0.png", tmp_path / "1.png"])
    data = ClipDataset([(seq, 0)], lambda images, masks: (images, masks), num_frames=2)
    with pytest.raises(UserError, match=r"1.png is 12x16 but its frame .*1.jpg is 16x12"):
        data[0]


# --------------------------------------------------------------------------- untrusted data files
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_log_mel_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "clip.pkl"
    with open(path, "wb") as f:
        pickle.dump([RunsCode(marker), torch.zeros(5, 1, 96, 64)], f)
    with pytest.raises(AVSDataError, match=r"clip.pkl.*posix.system|clip.pkl.*os.system"):
        load_log_mel(path)
    assert not marker.exists()


def test_checkpoint_that_would_run_code_is_refused_without_unsafe_advice(tmp_path, recwarn):
    """os.system in a torch.save file or a plain pickle: refused by name, nothing run, and the message
    does not pass on torch's advice to turn the safe reader off; a folder is called a folder."""
    from models import read_checkpoint

    marker = tmp_path / "pwned"
    torch.save({"model": {}, "x": RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointMismatchError, match=r"evil.pth holds objects other than tensors .*system"):
        read_checkpoint(tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": RunsCode(marker)}, f, protocol=4)
    with pytest.raises(CheckpointMismatchError, match=r"evil.pkl is not a readable .*plain pickle") as e:
        read_checkpoint(tmp_path / "evil.pkl")
    assert "weights_only" not in str(e.value) and not marker.exists()
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(IsADirectoryError, match="dir.pth is a folder"):
        read_checkpoint(tmp_path / "dir.pth")


def test_log_mel_pickles_of_tensors_and_arrays_still_load(tmp_path):
    x = torch.randn(5, 1, 96, 64)
    for name, obj in (("t.pkl", x), ("a.pkl", x.numpy())):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f)
        assert torch.equal(load_log_mel(tmp_path / name), x)
    with open(tmp_path / "d.pkl", "wb") as f:
        pickle.dump({"x": 1}, f)
    with pytest.raises(AVSDataError, match="d.pkl: holds a dict"):
        load_log_mel(tmp_path / "d.pkl")


# --------------------------------------------------------------------------- damaged files
def test_non_finite_weights_are_refused_with_their_names(tmp_path):
    model = build_model("tiny")
    sd = model.state_dict()
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 1)
    sd[name] = sd[name].clone()
    sd[name][0] = float("nan")
    torch.save({"model": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointMismatchError, match=rf"nan.pth holds non-finite.*{name}"):
        load_checkpoint(build_model("tiny"), tmp_path / "nan.pth")


def test_empty_text_and_truncated_checkpoints_name_the_file(tmp_path):
    torch.save({"model": {"w": torch.randn(4096)}}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("101 this is a text file\n")
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    for name in ("empty.pth", "text.pth", "cut.pth"):
        with pytest.raises(CheckpointMismatchError, match=name):
            load_checkpoint(build_model("tiny"), tmp_path / name)


def test_truncated_images_name_the_path(tmp_path):
    from datasets.video import ImageReadError

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.png").write_bytes(b"not a png")
    seq = VideoSequence("s", [tmp_path / "cut.jpg", tmp_path / "junk.png"])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        seq.read_image(0)
    with pytest.raises(ImageReadError, match="junk.png"):
        load_frames([tmp_path / "junk.png"])


def test_a2d_label_ids_out_of_range_name_the_file(tmp_path):
    from scipy.io import savemat

    from datasets.a2d import read_annotation

    labels = np.zeros((4, 4))
    labels[0, 0] = 101
    savemat(tmp_path / "00025.mat", {"reS_id": labels})
    with pytest.raises(UserError, match=r"00025.mat has label ids \[101\]"):
        read_annotation(tmp_path / "00025.mat")


# --------------------------------------------------------------------------- frame folders
def test_frame_folders_sort_naturally(tmp_path):
    from datasets.video import list_frame_files

    for i in range(12):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [p.stem for p in list_frame_files(tmp_path)] == [f"frame{i}" for i in range(12)]


def test_frames_of_different_sizes_are_refused(tmp_path):
    from datasets.video import require_same_size

    files = [tmp_path / f"f{i}.png" for i in range(3)]
    for f, size in zip(files, [(64, 48), (64, 48), (32, 24)]):
        Image.new("RGB", size).save(f)
    with pytest.raises(UserError, match=r"f2.png is 32x24"):
        require_same_size(files, "--video clip")
    require_same_size(files[:2], "--video clip")


def test_video_folder_is_read_in_natural_order_and_mixed_sizes_are_refused(tmp_path):
    from PIL import Image

    from datasets.stream import open_video
    from utils.cli import UserError

    for i in (0, 1, 2, 10, 11):  # plain sorting would give 0, 1, 10, 11, 2
        Image.new("RGB", (16, 12), (i * 20, 0, 0)).save(tmp_path / f"frame{i}.png")
    frames = [rgb for _, rgb in open_video(tmp_path, None, keep_rgb=True)]
    assert [int(rgb[0, 0, 0]) for rgb in frames] == [0, 20, 40, 200, 220]
    Image.new("RGB", (8, 8)).save(tmp_path / "frame12.png")
    with pytest.raises(UserError, match="frame12.png"):
        open_video(tmp_path, None)


# --------------------------------------------------------------------------- checkpoints of another task
def test_avos_inference_refuses_a_checkpoint_of_another_task():
    from avos.model import resolve_model_config
    from models import build_model
    from utils.cli import UserError

    model = build_model("tiny", num_classes=3)
    with pytest.raises(UserError, match="3-class model"):
        resolve_model_config({"model": model.state_dict(), "config": model.cfg.to_dict()}, "auto", "swinB", None)
    avs = build_model("avs_tiny")  # was a KeyError('swin') traceback
    with pytest.raises(UserError, match=r"^--model_path a\.pth holds an AVS model .*run it with avs/test_medvt\.py$"):
        resolve_model_config({"model": {}, "config": avs.cfg.to_dict()}, source="--model_path a.pth")
    with pytest.raises(UserError, match=r"not a MED-VT config \(unknown fields \['foo'\]"):
        resolve_model_config({"model": {}, "config": {"foo": 1}})


@pytest.mark.parametrize("script", [avos_train, "vss", "a2d", "avs"])
def test_dist_timeout_is_the_process_groups_and_may_change_on_resume(monkeypatch, script, tmp_path):
    """Every trainer has --dist_timeout (minutes; a process that finishes its share of the validation
    waits for the others); the process group gets it, and a resumed run may change it (it computes nothing)."""
    from datetime import timedelta

    import torch.distributed as dist

    from actor_action import train_medvt_a2d
    from avs import train_medvt
    from utils.resume import check_resume_args
    from utils.distributed import run_distributed
    from vss import train_medvt_vss

    module = {"vss": train_medvt_vss, "a2d": train_medvt_a2d, "avs": train_medvt}.get(script, script)
    parser = module.get_args_parser()
    assert parser.parse_args([]).dist_timeout == 60 and parser.parse_args(["--dist_timeout", "240"]).dist_timeout == 240
    with pytest.raises(SystemExit):
        parser.parse_args(["--dist_timeout", "0"])
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    info = run_distributed(lambda _args, info: info, argparse.Namespace(device="cpu", dist_timeout=240))
    assert seen["timeout"] == timedelta(minutes=240) and seen["backend"] == "gloo" and info.rank == 1
    old, new = parser.parse_args([]), parser.parse_args(["--dist_timeout", "240"])
    check_resume_args(tmp_path / "checkpoint_last.pth", old, new)  # no difference that matters


LOST_PEER_SCRIPT = """
import argparse, torch, torch.distributed as dist
from utils.cli import UserError, run_main
from utils.distributed import run_distributed

def train(args, info):  # as the training scripts run: the process group set up and torn down around it
    dist.all_reduce(torch.ones(1))  # an epoch under way on both
    if info.rank == {failing}:
        raise UserError("frame f/00007.jpg is damaged")  # found mid-epoch by one process
    dist.all_reduce(torch.ones(1))  # the others wait for it in a collective

run_main(lambda: run_distributed(train, argparse.Namespace(device="cpu")), prog="train.py")
"""


@pytest.mark.parametrize("failing", [0, 1])
def test_when_one_process_stops_the_others_say_so_in_one_line(tmp_path, failing):
    """Two Gloo processes (as torchrun starts them): one stops on a user error and says it (rank 1's error was
    printed nowhere when only rank 0 spoke: it has no log file); the other, waiting in a collective, gets
    Gloo's lost connection and prints one line pointing at that error, not a traceback."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "train.py"
    script.write_text(LOST_PEER_SCRIPT.replace("{failing}", str(failing)))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("MEDVT_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    stopped, other = procs[failing], procs[1 - failing]
    assert stopped.returncode == 2 and errs[failing] == "train.py: error: frame f/00007.jpg is damaged\n", errs
    assert other.returncode == 1 and "Traceback" not in errs[1 - failing], errs[1 - failing][-3000:]
    assert errs[1 - failing].strip().splitlines()[-1] == (
        f"train.py: error: rank {1 - failing}: another process of this run stopped (see its message, or the "
        "launcher's summary if it was killed); stopping too")


def test_a2d_annotations_that_are_not_matlab_files_are_found_before_training(tmp_path):
    """Every annotation's header is checked when the dataset is built (training draws one random
    annotated frame per video per epoch, so a damaged file would otherwise stop some later epoch)."""
    from datasets.a2d import A2DDataset, make_synthetic_a2d

    root = make_synthetic_a2d(tmp_path / "a2d", num_train=2, num_test=1, num_frames=8, size_hw=(32, 32))
    for split in ("train", "test"):
        ds = A2DDataset(root, split)
        video, frame = ds.items[-1]
        bad = ds.gt_root / video.vid / f"{frame:05d}.mat"
        good = bad.read_bytes()
        for content in (b"", b"101 not a mat file\n", bytes(200)):
            bad.write_bytes(content)
            with pytest.raises(UserError, match=f"annotation {bad} is not a MATLAB file"):
                A2DDataset(root, split)
        bad.write_bytes(good)


def test_a_run_stopped_by_an_error_or_ctrl_c_says_so_at_the_end_of_its_log(tmp_path, monkeypatch):
    """train.log of a run stopped by a user error found mid-run (a damaged frame) or by Ctrl-C just
    ended; the error boundary now appends why, once (a non-finite loss, logged where it was found, is
    not repeated)."""
    from utils.cli import UserError, run_main
    from utils.logger import setup_logger

    monkeypatch.setattr(sys, "argv", ["train_x.py"])

    def stop_with(error, log_it=False):
        def main():
            log = setup_logger(tmp_path, name="medvt.test_stop")
            log.info("epoch 0 step 1")
            if log_it:
                log.error(str(error))
            raise error
        with pytest.raises(SystemExit) as e:
            run_main(main)
        for h in list(logging.getLogger("medvt.test_stop").handlers):
            h.close()
        return e.value.code, (tmp_path / "train.log").read_text().splitlines()[-1]

    code, last = stop_with(UserError("frame 00003.jpg: not a readable image"))
    assert code == 2 and last.endswith("ERROR stopped: error: frame 00003.jpg: not a readable image")
    code, last = stop_with(KeyboardInterrupt())
    assert code == 130 and last.endswith("ERROR stopped: interrupted (Ctrl-C or SIGINT)")
    code, last = stop_with(NonFiniteLossError("non-finite loss at epoch 0, step 1"), log_it=True)
    assert code == 2 and last.endswith("ERROR non-finite loss at epoch 0, step 1")  # not written twice


def test_progress_bars_redirected_to_a_file_write_a_line_now_and_then(monkeypatch):
    """A bar on a terminal redraws itself with carriage returns; in a file (``> run.out 2>&1``) each
    redraw was kept, megabytes in an hour. There a bar now writes whole lines, at most one per
    FILE_PROGRESS_S, and none for a loop that ends sooner."""
    import io
    import time

    import utils.logger as logger_mod

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def run(stream, steps, pause=0.0):
        bar = logger_mod.progress(range(steps), desc="epoch 0", file=stream)
        for i in bar:
            bar.set_postfix(loss=f"{i:.4f}")  # as the trainers do each step (tqdm redraws for it)
            time.sleep(pause)
        return stream.getvalue()

    assert "\r" in run(Terminal(), 50)  # a terminal keeps tqdm's redraws
    assert run(io.StringIO(), 2000) == ""  # shorter than FILE_PROGRESS_S: nothing written
    monkeypatch.setattr(logger_mod, "FILE_PROGRESS_S", 0.05)
    text = run(io.StringIO(), 8, pause=0.02)
    lines = text.splitlines()
    assert text and "\r" not in text and text.endswith("\n")
    assert 1 <= len(lines) <= 6 and all(line.startswith("epoch 0:") for line in lines)
    stream = io.StringIO()  # a bar within a bar moves the cursor up: not in a file
    with logger_mod.progress(total=2, desc="reading", file=stream) as outer:
        run(stream, 4, pause=0.02)
        outer.update(2)
        time.sleep(0.06)
    assert "\x1b" not in stream.getvalue() and "reading" in stream.getvalue()
