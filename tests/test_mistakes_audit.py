"""User mistakes found by an audit of every script: each ends in one line naming the flag or file,
before any output is written (or, for sizes only known per video, with the error as the last line)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from datasets.a2d import make_synthetic_a2d
from models import build_model, get_config
from utils.checkpoint import check_run_dir
from utils.cli import UserError, random_seed
from utils.outputs import check_output_dir, check_output_file
from tests.test_vss import ROOT, write_vspw
from tests.test_vss_avs_mistakes import make_avs_case

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("script,parser", [
    ("train_swin_medvt_avos", "get_args_parser"), ("vss.train_medvt_vss", "get_args_parser"),
    ("actor_action.train_medvt_a2d", "get_args_parser"), ("avs.train_medvt", "get_args_parser"),
    ("export_onnx", "get_args_parser")])
def test_a_seed_numpy_cannot_take_is_refused_by_argparse(script, parser, capsys):
    """numpy's generator takes seeds in [0, 2**32): -5 ended in its ValueError traceback mid-setup."""
    import importlib

    from utils import demo

    parse = getattr(importlib.import_module(script), parser)().parse_args
    for parse_args in (parse, demo.parse_args):
        for bad in ("-5", str(2**32)):
            with pytest.raises(SystemExit):
                parse_args(["--seed", bad])
            assert "argument --seed" in capsys.readouterr().err
    assert random_seed("0") == 0 and random_seed(str(2**31)) == 2**31


def test_an_output_path_with_a_literal_tilde_is_refused(tmp_path, monkeypatch):
    """``--output_dir=~/runs``: the shell leaves the ~, and the outputs went to ./~/runs."""
    monkeypatch.chdir(tmp_path)
    for check in (lambda: check_output_dir("~/runs", "--output_dir", {}),
                  lambda: check_output_file("~/m.onnx", "--output", {}),
                  lambda: check_run_dir("~/runs", None, False)):
        with pytest.raises(UserError, match=r"~/.* starts with a literal ~ .*with a space instead of '='"):
            check()
    assert not (tmp_path / "~").exists()
    assert check_output_dir("runs~/a", "--output_dir", {}).name == "a"  # a ~ elsewhere is a plain name


def test_vss_inference_frames_too_small_end_in_one_last_line(tmp_path):
    """The frame size depends on each video, so it is found at the first forward: the error is one
    line and the last one printed (the progress bar, left open by the error, used to redraw after it),
    and, nothing being written, no folder is left (a lone INCOMPLETE marker made the corrected command refuse it)."""
    root = write_vspw(tmp_path / "vspw", {"2_val_a": ("val", 2)})
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, str(ROOT / "vss" / "inference_medvt_vss.py"), "--model", "tiny",
                        "--num_classes", "5", "--random_weights", "--vspw_root", str(root), "--split", "val",
                        "--val_size", "8",
                        "--clip_len", "2", "--device", "cpu", "--output_dir", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert last.startswith("inference_medvt_vss.py: error: --val_size 8 is too small for this model"), r.stderr
    assert not out.exists()


def test_a2d_inference_refuses_a_clip_size_too_small_before_any_output(tmp_path):
    from actor_action import inference_medvt_a2d

    root = make_synthetic_a2d(tmp_path / "a2d", num_train=1, num_test=1, num_frames=8, size_hw=(32, 32))
    cfg = get_config("tiny").replace(num_classes=80, lprop_mode=2)
    torch.manual_seed(0)
    ckpt = tmp_path / "a2d.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, ckpt)
    out = tmp_path / "inf"
    with pytest.raises(UserError, match=r"--clip_size 8 8 is too small for the model of .*a2d\.pth: .*at least \d+"):
        inference_medvt_a2d.main(["--a2d_root", str(root), "--model_path", str(ckpt), "--clip_size", "8", "8",
                                  "--device", "cpu", "--output_dir", str(out)])
    assert not out.exists()


@pytest.fixture(scope="module")
def s4_case(tmp_path_factory):
    return make_avs_case(tmp_path_factory, "s4")


def _avs_test_argv(root, ckpt, out, *extra):
    return ["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu", "--num_workers", "0",
            "--avsbench_root", str(root), "--model_path", str(ckpt), "--test_batch_size", "1",
            "--output_dir", str(out), *extra]


def test_avs_sizes_too_small_are_refused_before_any_output(s4_case, tmp_path):
    """A pooling kernel larger than the downsampled frame: torch's RuntimeError came mid-run."""
    from avs import test_medvt, train_medvt

    root, ckpt = s4_case
    out = tmp_path / "test"
    with pytest.raises(UserError, match=r"--test_im_size 8 is too small for config avs_tiny: .*at least (\d+) pix"):
        test_medvt.main(_avs_test_argv(root, ckpt, out, "--test_im_size", "8"))
    assert not out.exists()
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"--val_im_size 16 is too small for config avs_tiny"):
        train_medvt.main(["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu",
                          "--num_workers", "0", "--avsbench_root", str(root), "--output_dir", str(run),
                          "--train_im_size", "32", "--val_im_size", "16", "--max_epoches", "1"])
    assert not run.exists()


def test_avs_test_of_the_s4_train_split_is_refused_before_any_output(s4_case, tmp_path):
    """--help offers --split train, whose S4 clips have one mask for five frames."""
    from avs import test_medvt

    root, ckpt = s4_case
    out = tmp_path / "test"
    with pytest.raises(UserError, match=r"--split train: clip .* has 1 mask\(s\) for 5 frames.*--split val or test"):
        test_medvt.main(_avs_test_argv(root, ckpt, out, "--test_im_size", "32", "--split", "train"))
    assert not out.exists()


def test_avs_stage_flags_name_the_stages_that_exist(capsys):
    from avs import common, train_medvt

    parser = train_medvt.get_args_parser()
    for argv in (["--masked_av_flag", "--masked_av_stages", "7"], ["--sa_loss_flag", "--sa_loss_stages", "9"],
                 ["--mm_context", "tpavi", "--tpavi_va_flag", "--tpavi_stages", "9"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "invalid choice" in capsys.readouterr().err
    args = parser.parse_args(["--mm_context", "tpavi", "--tpavi_stages", "1"])
    with pytest.raises(UserError, match=r"--tpavi_stages needs --tpavi_va_flag and/or --tpavi_vv_flag"):
        common.model_config(args)


def test_two_frames_of_one_name_are_refused(tmp_path):
    """00001.jpg and 00001.png: their masks, named by the stem, overwrote each other."""
    import numpy as np
    from PIL import Image

    from datasets.video import list_frame_files

    frame = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for name in ("00000.jpg", "00001.png"):
        frame.save(tmp_path / name)
    assert len(list_frame_files(tmp_path)) == 2
    frame.save(tmp_path / "00001.jpg")
    with pytest.raises(UserError, match=r"holds 00001\.jpg and 00001\.png: two frames of one name"):
        list_frame_files(tmp_path)


def test_crf_refuses_a_16_bit_probability_map(tmp_path):
    """Read as probability·255, a 16-bit map gave probabilities up to 257 and a wrong before-CRF mIoU."""
    import numpy as np
    from PIL import Image

    from tests.test_crf import write_davis
    from utils.crf import check_jobs, sequence_jobs

    logits = write_davis(tmp_path, sequences=("seq-a",), n_frames=2)
    jobs = sequence_jobs(logits / "seq-a", tmp_path / "JPEGImages" / "480p" / "seq-a", tmp_path / "out")
    check_jobs(jobs)
    first = logits / "seq-a" / "00001.png"
    wide = np.asarray(Image.open(first)).astype(np.uint16) * 257
    Image.fromarray(wide).save(first)
    assert Image.open(first).mode.startswith("I")
    with pytest.raises(UserError, match=r"00001\.png is a 'I(;16)?' image, not an 8-bit probability·255 PNG"):
        check_jobs(jobs)


def test_a_checkpoint_without_model_weights_is_named_with_what_it_holds(tmp_path):
    """A Lightning-style {"state_dict": ...} file: the error did not say which file, nor what it held."""
    from models import load_model

    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(UserError, match=r"lightning\.ckpt has no 'model' state dict of tensors \(its entries: epoch, "
                                        r"state_dict\) \(a PyTorch Lightning checkpoint\?"):
        load_model(path, preset="tiny")


def test_validation_sequences_that_are_also_trained_on_are_warned_about(tmp_path):
    """--davis16_train_seqs_file naming the val list trained on the val set without a word."""
    import train_swin_medvt_avos as script
    from datasets.davis16 import split_sequences
    from datasets.synthetic import make_synthetic_davis
    from utils.logger import DeferredLog

    root = make_synthetic_davis(tmp_path / "DAVIS", num_train=2, num_val=2, num_frames=3, size_hw=(16, 16))
    args = script.get_args_parser().parse_args(["--davis16_root", str(root)])
    val_names = split_sequences(root, "val")
    log = DeferredLog()
    assert script.warn_trained_val_sequences(args, val_names, log) == [] and not log.records
    listed = tmp_path / "train_list.txt"
    listed.write_text("\n".join(val_names) + "\n")
    args = script.get_args_parser().parse_args(["--davis16_root", str(root), "--davis16_train_seqs_file", str(listed)])
    assert script.warn_trained_val_sequences(args, val_names, log) == val_names
    assert "2 of the 2 validation sequences are also trained on" in log.records[0][1]


def test_small_contradictions_and_sizes_are_refused(tmp_path, capsys):
    from utils import demo
    from vss import inference_medvt_vss

    with pytest.raises(SystemExit):
        demo.parse_args(["--frames", "2"])
    assert "--frames 2: give 3 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference_medvt_vss.main(["--random_weights", "--model_path", str(tmp_path / "x.pth"),
                                  "--output_dir", str(tmp_path / "o")])
    assert "--random_weights and --model_path contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_integer_values_for_a_float_weight_are_refused(tmp_path):
    """An int64 tensor for a float weight was cast silently on load and gave empty masks (J 0.000)."""
    from models import load_model
    from models.convert import CheckpointMismatchError

    torch.manual_seed(0)
    model = build_model("tiny")
    sd = model.state_dict()
    name = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    sd[name] = sd[name].round().long()
    path = tmp_path / "int.pth"
    torch.save({"model": sd, "config": model.cfg.to_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"integer / floating-point mismatches \(1\): {name}: "
                                                      r"checkpoint torch\.int64 vs model torch\.float32"):
        load_model(path)


def test_a_checkpoint_of_the_other_model_family_is_named(s4_case, tmp_path):
    """An AVS (MED-VT++) checkpoint given to A2D inference, and a MED-VT one to AVS --resume: the first
    did not name the file, the second ended in "AVSConfig.__init__() got an unexpected keyword argument"."""
    from actor_action import inference_medvt_a2d
    from avs import train_medvt

    root, avs_ckpt = s4_case
    a2d = make_synthetic_a2d(tmp_path / "a2d", num_train=1, num_test=1, num_frames=8, size_hw=(32, 32))
    with pytest.raises(UserError, match=r"--model_path .*avs\.pth holds an AVS model .*with avs/test_medvt\.py$"):
        inference_medvt_a2d.main(["--a2d_root", str(a2d), "--model_path", str(avs_ckpt), "--device", "cpu",
                                  "--output_dir", str(tmp_path / "a2d_out")])
    cfg = get_config("tiny")
    medvt = tmp_path / "medvt.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict(), "epoch": 0}, medvt)
    with pytest.raises(UserError, match=r"--resume .*medvt\.pth holds an AVOS model .*avs/train_medvt\.py is for AVS "
                                        r"models; run it with train_swin_medvt_avos\.py$"):
        train_medvt.main(["--task", "s4", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu",
                          "--num_workers", "0", "--avsbench_root", str(root), "--output_dir", str(tmp_path / "run"),
                          "--train_im_size", "32", "--val_im_size", "32", "--resume", str(medvt)])
    assert not (tmp_path / "a2d_out").exists() and not (tmp_path / "run").exists()


def test_a_flag_that_changes_the_recorded_model_is_named_when_the_weights_do_not_fit(tmp_path):
    """VSS --num_classes 7 with a 5-class checkpoint: the key list never named the flag; now one line names it
    (the key list, when the flag is why, says nothing more)."""
    from models import load_model
    from models.convert import CheckpointMismatchError

    cfg = get_config("tiny").replace(num_classes=5)
    path = tmp_path / "five.pth"
    torch.save({"model": build_model(cfg).state_dict(), "config": cfg.to_dict()}, path)
    expected = r"^--num_classes 7 \(the file's model has 5\): the weights of \S*five\.pth do not fit the model these "
    with pytest.raises(CheckpointMismatchError, match=expected + r"flags make; leave them out$"):
        load_model(path, num_classes=7)
    assert load_model(path, num_classes=5).config.num_classes == 5  # the recorded value is fine


def test_a_16_bit_grey_frame_is_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: such frames came out almost all white."""
    import numpy as np
    from PIL import Image

    from datasets.video import open_image

    grey = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").mode.startswith("I")
    assert np.asarray(open_image(tmp_path / "f.png", "RGB"))[0, :, 0].tolist() == [0, 128, 255]


def test_a_bare_state_dict_is_told_which_preset_it_fits_and_how_to_save_it(tmp_path):
    """``torch.save(model.state_dict())`` of a tiny model: read as an authors' Swin-B release, it ended in
    hundreds of missing and mis-shaped keys with no word on what to do."""
    import re

    from avos import model as inf
    from models import load_model
    from models.convert import CheckpointMismatchError, read_checkpoint
    from models.registry import get_preset

    model = build_model("tiny")
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    advice = r"bare\.pth records no model config.*they fit preset tiny \(a state_dict saved on its own\?\)"
    with pytest.raises(CheckpointMismatchError, match=advice) as err:  # a preset it does not fit (and is quick)
        load_model(bare, preset=get_config("tiny").replace(num_classes=3))
    assert "\n" not in str(err.value) and "torch.save({'model': weights, 'config': get_preset('tiny')" in str(err.value)
    ckpt = read_checkpoint(bare)
    with pytest.raises(CheckpointMismatchError, match=advice):
        inf.build_from_checkpoint(ckpt, inf.resolve_model_config(ckpt), str(bare))
    # Following the advice loads it, on both paths.
    fixed = tmp_path / "fixed.pth"
    torch.save({"model": ckpt, "config": get_preset("tiny").to_dict()}, fixed)
    assert load_model(fixed, preset="medvt_swinb_avos").config == get_preset("tiny")
    ckpt = read_checkpoint(fixed)
    inf.build_from_checkpoint(ckpt, inf.resolve_model_config(ckpt), str(fixed))
    # A preset at another class count (a VSS or A2D model): the advice names the count, and following it loads.
    five = tmp_path / "five.pth"
    torch.save(build_model(get_config("tiny").replace(num_classes=5)).state_dict(), five)
    with pytest.raises(CheckpointMismatchError, match=r"they fit preset tiny with 5 classes .*'config': "
                                                      r"get_preset\('tiny'\)\.replace\(num_classes=5\)\.to_dict\(\)"):
        load_model(five, preset=get_config("tiny").replace(num_classes=3))
    torch.save({"model": read_checkpoint(five), "config": get_preset("tiny").replace(num_classes=5).to_dict()}, fixed)
    assert load_model(fixed, preset="medvt_swinb_vss").config.num_classes == 5
    # Weights that fit no preset keep the key list.
    torch.save({k: v for k, v in model.state_dict().items() if not re.match(r"backbone\.features\.0\.", k)},
               tmp_path / "cut.pth")
    with pytest.raises(CheckpointMismatchError, match=r"cut\.pth does not fit the model .*\n  missing keys"):
        load_model(tmp_path / "cut.pth", preset="tiny")


def test_an_unwritable_or_taken_default_folder_says_to_pass_output_dir(tmp_path, monkeypatch):
    """Without --output_dir, inference writes next to the checkpoint: a read-only folder there ended in a
    bare "[Errno 13] Permission denied" (A2D: after the whole evaluation), and a taken one advised
    --overwrite, which would mix two runs."""
    import os
    from pathlib import Path

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr("utils.outputs.os.access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    with pytest.raises(UserError, match=r"^the default output folder .*ro/run_1 \(no --output_dir given\) cannot be "
                                        r"written: .*ro is not writable for this user; pass --output_dir"):
        check_output_dir(ro / "run_1", "--output_dir", {}, default=True)
    with pytest.raises(UserError, match=r"^--output_dir .*ro/x/y cannot be written: .*choose another folder"):
        check_output_dir(ro / "x" / "y", "--output_dir", {})
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.json").write_text("{}")
    with pytest.raises(UserError, match=r"^the default output folder .*taken \(no --output_dir given\) already holds "
                                        r"files \(an earlier run\?\); pass --output_dir$"):
        check_output_dir(taken, "--output_dir", {}, default=True)
