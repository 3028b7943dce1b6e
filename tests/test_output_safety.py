"""No output overwrites an input or an earlier run, and a mistake there is one line naming the flag.

Every inference script (AVOS, VSS, A2D, AVS), the CRF, the ONNX export and the demo: a second run
into a folder holding an earlier one is refused (its files stay byte-identical) unless --overwrite;
an output folder that is a file, or lies in / holds an input folder, is refused before anything is
read or written. Tiny models on the synthetic sets of the scripts' own tests (their fixtures).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import crf_davis16
import export_onnx
import inference_swin_medvt_avos as avos_script
from actor_action import inference_medvt_a2d
from avs import test_medvt as avs_test
from models import build_model
from tests.test_a2d import a2d_dir  # noqa: F401  (fixture)
from tests.test_avs import avs_root  # noqa: F401  (fixture)
from tests.test_crf import write_davis
from tests.test_inference import setup  # noqa: F401  (fixture: tiny AVOS checkpoint + synthetic DAVIS)
from tests.test_vss import K, vspw  # noqa: F401  (fixture)
from utils import demo
from utils.cli import UserError
from vss import inference_medvt_vss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models run faster with one thread on a shared machine."""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the md5 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(call, match: str = "--output_dir") -> str:
    with pytest.raises(UserError, match=match) as err:
        call()
    return str(err.value)


def check_second_run_and_overwrite(run, out: Path) -> None:
    """(a) a second run into ``out`` is refused and leaves the first run's files as they were;
    (b) with --overwrite it runs."""
    before = snapshot(out)
    assert before
    text = refused(lambda: run(out))
    assert "already holds files" in text and "--overwrite" in text
    assert snapshot(out) == before
    run(out, "--overwrite")


def check_bad_folders(run, tmp_path: Path, inside: Path) -> None:
    """(c) a folder inside an input folder and (d) a file are refused; nothing is created."""
    before = snapshot(inside)
    refused(lambda: run(inside / "new_out"))
    refused(lambda: run(inside))
    assert not (inside / "new_out").exists() and snapshot(inside) == before
    a_file = tmp_path / "text.txt"
    a_file.write_text("not a folder")
    assert "is a file" in refused(lambda: run(a_file))
    assert a_file.read_text() == "not a folder"


# ------------------------------------------------------------------------------------------- AVOS
def test_avos_inference_refuses_an_earlier_run_and_input_folders(setup, tmp_path):  # noqa: F811
    def run(out: Path, *extra: str) -> dict:
        return avos_script.main(["--model_path", str(setup["ckpt"]), "--davis16_root", str(setup["davis"]),
                                 "--val_size", "48", "--sequences", "synth-val-00", "--output_dir", str(out),
                                 "--device", "cpu", *extra])

    out = tmp_path / "run"
    run(out)
    check_second_run_and_overwrite(run, out)
    assert not (out / "INCOMPLETE").exists() and (out / "summary.json").is_file()
    check_bad_folders(run, tmp_path, setup["davis"] / "Annotations" / "480p")
    # the output check comes before the checkpoint is read: a bad folder is named even with no checkpoint
    refused(lambda: avos_script.main(["--model_path", str(tmp_path / "none.pth"), "--davis16_root",
                                      str(setup["davis"]), "--output_dir", str(out)]))
    # a folder where the run would write over the checkpoint
    ckpt_dir = tmp_path / "ck"
    (ckpt_dir / "logits").mkdir(parents=True)
    (ckpt_dir / "logits" / "model.pth").write_bytes(setup["ckpt"].read_bytes())
    assert "--model_path" in refused(lambda: avos_script.main([
        "--model_path", str(ckpt_dir / "logits" / "model.pth"), "--davis16_root", str(setup["davis"]),
        "--output_dir", str(ckpt_dir), "--overwrite"]))


def test_avos_video_folder_as_output_and_default_folder_per_run(setup, tmp_path):  # noqa: F811
    frames = setup["davis"] / "JPEGImages" / "480p" / "synth-val-00"
    before = snapshot(frames)
    assert "--video" in refused(lambda: avos_script.main(["--model_path", str(setup["ckpt"]), "--video", str(frames),
                                                          "--output_dir", str(frames), "--overwrite"]))
    assert snapshot(frames) == before
    help_text = avos_script.get_args_parser().format_help()
    assert "--overwrite" in help_text and "unix time" in help_text


def test_avos_video_runs_in_one_second_get_their_own_default_folders(setup, tmp_path, monkeypatch):  # noqa: F811
    """Two --video runs in the same second collided: the second stopped with "the default output folder
    ... already holds files". The folder now names the video, as VSS's does, and a taken name gets _2."""
    from types import SimpleNamespace

    from utils import outputs

    monkeypatch.setattr(outputs, "time", SimpleNamespace(time=lambda: 1700000000.7))  # every run in one second
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(setup["ckpt"].read_bytes())
    frames = setup["davis"] / "JPEGImages" / "480p" / "synth-val-00"
    for _ in range(2):
        avos_script.main(["--model_path", str(ckpt), "--video", str(frames), "--val_size", "48", "--device", "cpu"])
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2 and runs[0].startswith("infer_video_synth-val-00_48ssc"), runs
    assert runs[0].endswith("_1700000000") and runs[1] == runs[0] + "_2"
    assert all((tmp_path / r / "summary.json").is_file() for r in runs)


def test_avos_inference_names_an_onnx_path_that_is_not_onnx(setup, tmp_path):  # noqa: F811
    bad = tmp_path / "random.onnx"
    bad.write_bytes(os.urandom(512))
    out = tmp_path / "out"
    text = refused(lambda: avos_script.main(["--model_path", str(setup["ckpt"]), "--davis16_root", str(setup["davis"]),
                                             "--val_size", "48", "--runtime", "onnx", "--onnx_path", str(bad),
                                             "--output_dir", str(out), "--device", "cpu"]), "--onnx_path")
    assert "not a readable ONNX model" in text and "\n" not in text
    assert not out.exists()  # the model is loaded before the output folder is made


# -------------------------------------------------------------------------------------------- VSS
def test_vss_inference_refuses_an_earlier_run_and_input_folders(vspw, tmp_path):  # noqa: F811
    def run(out: Path, *extra: str) -> dict:
        return inference_medvt_vss.main(["--random_weights", "--model", "tiny", "--num_classes", str(K),
                                         "--vspw_root", str(vspw), "--split", "test", "--val_size", "48",
                                         "--device", "cpu", "--output_dir", str(out), *extra])

    out = tmp_path / "run"
    run(out)
    assert len(list((out / "predictions" / "4_test_a").glob("*.png"))) == 3
    check_second_run_and_overwrite(run, out)
    check_bad_folders(run, tmp_path, vspw / "data")
    assert "--overwrite" in inference_medvt_vss.get_args_parser().format_help()


# -------------------------------------------------------------------------------------------- A2D
@pytest.fixture(scope="module")
def a2d_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=80)
    path = tmp_path_factory.mktemp("a2d_ckpt") / "a2d_tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, path)
    return path


def test_a2d_inference_refuses_an_earlier_run_and_input_folders(a2d_dir, a2d_ckpt, tmp_path):  # noqa: F811
    def run(out: Path, *extra: str) -> dict:
        return inference_medvt_a2d.main(["--a2d_root", str(a2d_dir), "--model_path", str(a2d_ckpt), "--clip_size",
                                         "32", "48", "--max_items", "1", "--device", "cpu", "--output_dir",
                                         str(out), *extra])

    out = tmp_path / "run"
    run(out)
    assert (out / "results.json").is_file()
    check_second_run_and_overwrite(run, out)
    check_bad_folders(run, tmp_path, a2d_dir / "frames")
    # without --output_dir: a new folder next to the checkpoint, as AVOS and VSS inference do
    ckpt = tmp_path / "models" / a2d_ckpt.name
    ckpt.parent.mkdir()
    shutil.copy(a2d_ckpt, ckpt)
    res = inference_medvt_a2d.main(["--a2d_root", str(a2d_dir), "--model_path", str(ckpt), "--clip_size", "32", "48",
                                    "--max_items", "1", "--device", "cpu"])
    made = list(ckpt.parent.glob("a2d_inference_*"))
    assert made == [Path(res["output_dir"])] and (made[0] / "results.json").is_file()


# -------------------------------------------------------------------------------------------- AVS
@pytest.fixture(scope="module")
def avs_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("avs_tiny")
    path = tmp_path_factory.mktemp("avs_ckpt") / "avs_tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, path)
    return path


def test_avs_test_refuses_an_earlier_run_input_folders_and_an_avos_checkpoint(avs_root, avs_ckpt, setup,  # noqa: F811
                                                                               tmp_path):
    common = ["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu",
              "--num_workers", "0", "--avsbench_root", str(avs_root), "--test_im_size", "64",
              "--test_batch_size", "1", "--max_batches", "1"]

    def run(out: Path, *extra: str, model: Path = avs_ckpt) -> dict:
        return avs_test.main([*common, "--model_path", str(model), "--output_dir", str(out), *extra])

    out = tmp_path / "run"
    run(out)
    assert (out / "results.json").is_file()
    check_second_run_and_overwrite(run, out)
    check_bad_folders(run, tmp_path, avs_root / "s4")
    avos_out = tmp_path / "avos"
    text = refused(lambda: run(avos_out, model=setup["ckpt"]), "--model_path")
    assert "holds an AVOS model (binary masks), but avs/test_medvt.py is for AVS models; run it with " \
           "inference_swin_medvt_avos.py" in text
    assert not avos_out.exists()  # the folder is made only once every input is read
    # without --output_dir: a new folder next to the checkpoint, as AVOS and VSS inference do
    ckpt = tmp_path / "models" / avs_ckpt.name
    ckpt.parent.mkdir()
    shutil.copy(avs_ckpt, ckpt)
    avs_test.main([*common, "--model_path", str(ckpt)])
    made = list(ckpt.parent.glob("avs_test_*"))
    assert len(made) == 1 and (made[0] / "results.json").is_file()


# -------------------------------------------------------------------------------------------- CRF
def test_crf_refuses_an_earlier_run_and_a_file(tmp_path):
    logits = write_davis(tmp_path / "DAVIS", sequences=("seq-a",), n_frames=3)

    def run(out: Path, *extra: str):
        return crf_davis16.main([str(logits), str(out), "--davis16_root", str(tmp_path / "DAVIS"), "--workers",
                                 "1", *extra])

    out = tmp_path / "crf"
    run(out)
    assert (out / "metrics.json").is_file() and not (out / "INCOMPLETE").exists()
    before = snapshot(out)
    assert "OUT_DIR" in refused(lambda: run(out), "already holds files")
    assert snapshot(out) == before
    run(out, "--overwrite")
    a_file = tmp_path / "text.txt"
    a_file.write_text("x")
    assert "OUT_DIR" in refused(lambda: run(a_file), "is a file")
    refused(lambda: run(tmp_path / "DAVIS" / "Annotations" / "480p" / "crf"), "overlaps --gt_dir")


def test_crf_names_an_output_folder_under_a_file_or_one_the_os_refuses(tmp_path, monkeypatch):
    """A file as a parent of OUT_DIR was reported as "not writable", and an OS refusal to create the
    folder (/sys, /proc, a read-only disk) as a bare "[Errno 1] Operation not permitted: '/sys/x'"."""
    import errno

    logits = write_davis(tmp_path / "DAVIS", sequences=("seq-a",), n_frames=2)

    def run(out: Path):
        return crf_davis16.main([str(logits), str(out), "--davis16_root", str(tmp_path / "DAVIS"), "--workers", "1"])

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    text = refused(lambda: run(a_file / "sub"), "OUT_DIR")
    assert text == f"OUT_DIR {a_file / 'sub'}: {a_file} is a file, not a folder; choose another folder"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):  # ro/ cannot be created (a read-only disk): the message names it
        if self.name == "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = tmp_path / "ro" / "crf"
    text = refused(lambda: run(out), "OUT_DIR")
    assert text == f"OUT_DIR {out}: cannot create this folder ({tmp_path / 'ro'}): {os.strerror(errno.EROFS)}; " \
                   "choose another folder"
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    if Path("/proc/self").is_dir():  # a real refusal: ENOENT for root, not writable for other users
        assert refused(lambda: run(Path("/proc/medvt_out")), "^OUT_DIR /proc/medvt_out[: ]")


@pytest.mark.parametrize("mistake", ["missing_gt_folder", "missing_logits_frame", "empty_sequence", "text_png",
                                     "gt_of_another_size"])
def test_crf_checks_every_sequence_before_writing_a_mask(tmp_path, mistake):
    """A bad sequence (here the last one) stops the run before any mask is written."""
    from PIL import Image

    root = tmp_path / "DAVIS"
    logits = write_davis(root, sequences=("seq-a", "seq-b"), n_frames=3)
    gt = root / "Annotations" / "480p" / "seq-b"
    if mistake == "missing_gt_folder":
        for p in gt.iterdir():
            p.unlink()
        gt.rmdir()
    elif mistake == "missing_logits_frame":
        (logits / "seq-b" / "00001.png").unlink()
    elif mistake == "empty_sequence":
        for p in (logits / "seq-b").iterdir():
            p.unlink()
    elif mistake == "text_png":
        (logits / "seq-b" / "00002.png").write_text("not a png")
    else:
        Image.new("L", (20, 10)).save(gt / "00000.png")
    out = tmp_path / "crf"
    with pytest.raises((UserError, FileNotFoundError)) as err:
        crf_davis16.main([str(logits), str(out), "--davis16_root", str(root), "--workers", "1"])
    assert "seq-b" in str(err.value)
    assert not out.exists() or not list(out.rglob("*.png"))


# ----------------------------------------------------------------------------------------- export
def test_export_never_replaces_its_checkpoint(setup, tmp_path, capsys):  # noqa: F811
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(setup["ckpt"].read_bytes())
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit) as err:
        export_onnx.main(["--model_path", str(ckpt), "--output", str(ckpt), "--overwrite", "--height", "64",
                          "--width", "64"])
    assert err.value.code == 2 and ckpt.read_bytes() == before
    assert "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:  # a folder: refused at once, not after the export
        export_onnx.main(["--model_path", str(ckpt), "--output", str(tmp_path), "--overwrite", "--height", "64",
                          "--width", "64"])
    assert err.value.code == 2 and "is a folder" in capsys.readouterr().err


def test_export_errors_exit_2_in_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVT_")}
    res = subprocess.run([sys.executable, str(ROOT / "export_onnx.py"), "--model_path", str(junk), "--output",
                          str(tmp_path / "m.onnx"), "--height", "64", "--width", "64"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert lines[-1].startswith("export_onnx.py: error: ") and "junk.pth" in lines[-1]
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------- demo
def test_demo_refuses_a_folder_holding_files_unless_overwrite(tmp_path):
    out = tmp_path / "demo"
    for name in ("data/DAVIS/x.png", "train/checkpoint_best.pth", "inference/logits/s/0.png", "crf/s/0.png",
                 "notes.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    (out / "metrics.json").write_text("{}")
    before = snapshot(out)
    refused(lambda: demo.main(["--output_dir", str(out), "--epochs", "1"]))
    assert snapshot(out) == before
    a_file = tmp_path / "text.txt"
    a_file.write_text("x")
    assert "is a file" in refused(lambda: demo.main(["--output_dir", str(a_file)]))
    # --overwrite deletes nothing in a folder no demo marked: a user's own data/ and train/ stay
    assert "no demo wrote" in refused(lambda: demo.main(["--output_dir", str(out), "--overwrite"]))
    assert snapshot(out) == before
    # in a demo's folder it deletes the demo's own outputs only (the full demo run is tests/test_demo.py's)
    (out / demo.DEMO_MARK).write_text("")
    demo.prepare_output_dir(out, overwrite=True)
    assert sorted(os.listdir(out)) == [demo.DEMO_MARK, "notes.txt"]
    assert "--overwrite" in (ROOT / "Makefile").read_text().split("demo: setup", 1)[1].splitlines()[1]


def test_a_symbolic_link_loop_as_output_or_input_folder_is_one_line(tmp_path):
    """An output folder or input root that is a link to itself: the overlap check raised RuntimeError
    "Symlink loop" (Path.resolve); now the folder's own one-line error comes where it is used."""
    from utils.cli import UserError
    from utils.outputs import check_output_dir

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match=r"--output_dir .*loop"):
        check_output_dir(loop, "--output_dir", {"--video": tmp_path / "clip.mp4"})
    assert check_output_dir(tmp_path / "out", "--output_dir", {"--davis16_root": loop}) == tmp_path / "out"


def test_overwrite_says_that_files_this_run_does_not_write_stay(tmp_path, capsys):
    """--overwrite into a stopped run's folder: a 300-frame video's predictions beyond a 20-frame one's
    stayed beside the new run's without a word, the folder looking complete. The run now says so first
    (the trainers and the demo, which delete their earlier outputs themselves, do not)."""
    from utils.outputs import check_output_dir

    out = tmp_path / "out"
    (out / "predictions" / "long").mkdir(parents=True)
    (out / "INCOMPLETE").write_text("")
    check_output_dir(out, "--output_dir", {}, overwrite=True)
    assert capsys.readouterr().err == (
        f"note: --output_dir {out} holds the partial outputs of a run that did not finish (its INCOMPLETE marker): "
        "--overwrite replaces the files this run writes and deletes none, so any others stay beside them\n")
    check_output_dir(out, "--output_dir", {}, overwrite=True, deletes=True)
    check_output_dir(tmp_path / "new", "--output_dir", {}, overwrite=True)
    assert capsys.readouterr().err == ""


def test_a_run_stopped_before_writing_anything_leaves_its_folder_as_it_found_it(tmp_path):
    """A refusal met in the run (a damaged first mask) left a folder holding INCOMPLETE alone, which made the
    corrected command refuse it ("already holds the partial outputs of a run"); partial outputs keep it."""
    from utils.outputs import incomplete_marker

    def run(out, write=False):
        with pytest.raises(UserError), incomplete_marker(out):
            if write:
                (out / "frame.png").write_bytes(b"x")
            raise UserError("mask 00000.png: not a readable image")

    run(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()  # given empty: stays, empty
    run(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []
    run(tmp_path / "partial", write=True)
    assert sorted(p.name for p in (tmp_path / "partial").iterdir()) == ["INCOMPLETE", "frame.png"]
