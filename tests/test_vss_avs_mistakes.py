"""User mistakes in VSS training/inference and AVS testing: one message naming the file or flag,
and nothing left behind (or an INCOMPLETE marker when a run stops part-way)."""
from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from PIL import Image

from datasets.avsbench import make_synthetic_avsbench
from datasets.vspw import VSPWTrainTransform, build_vspw_train_dataset, vspw_sequences
from utils.cli import UserError
from vss.losses import VSSCriterion
from tests.test_vss import K, _train_argv, write_vspw

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _vspw(root):
    return write_vspw(root, {"1_train_a": ("train", 4), "2_val_a": ("val", 4)})


# N1 ------------------------------------------------------------------------------------
def test_label_beyond_num_classes_names_the_class_and_flag():
    logits = torch.zeros(1, K, 2, 4, 4)
    masks = torch.full((1, 2, 4, 4), 255, dtype=torch.long)
    masks[0, 0, 0, 0] = K - 1
    assert VSSCriterion()({"pred_masks": logits}, masks)["loss"].isfinite()  # in range + ignore: fine
    masks[0, 1, 2, 3] = 8
    with pytest.raises(UserError, match=rf"class id 8 .*model has {K} classes.*--num_classes"):
        VSSCriterion()({"pred_masks": logits}, masks)



def test_validation_masks_of_a_class_beyond_num_classes_are_refused_not_left_out(tmp_path):
    """The VSPW scores count only ids below K: a model of 2 classes scored on masks holding ids up to 4
    got an inflated mIoU over 2 classes. Refused before the video is predicted, naming the flag."""
    from vss import inference_medvt_vss

    # the fourth video's square is raw label 4 (class id 3) on raw label 2 (id 1)
    root = write_vspw(tmp_path / "VSPW", {"a": ("train", 1), "b": ("train", 1), "c": ("train", 1),
                                          "d_val": ("val", 3)})
    with pytest.raises(UserError, match=r"VSPW video d_val: its masks hold class id 3 \(raw label 4\), but the "
                                        r"model has 2 classes.*--num_classes"):
        inference_medvt_vss.main(["--random_weights", "--model", "tiny", "--num_classes", "2", "--vspw_root",
                                  str(root), "--val_size", "48", "--device", "cpu", "--output_dir",
                                  str(tmp_path / "out")])


# N2 ------------------------------------------------------------------------------------
def test_training_mask_of_another_size_than_its_frame_names_both(tmp_path):
    root = _vspw(tmp_path / "vspw")
    mask = root / "data" / "1_train_a" / "mask" / "00000001.png"
    Image.open(mask).resize((40, 32), Image.NEAREST).save(mask)
    ds = build_vspw_train_dataset(root, num_frames=2, centre_step=1,
                                  transform=VSPWTrainTransform((48,), crop_hw=(48, 64), seed=0))
    ds[3]  # a clip without that frame is fine
    with pytest.raises(UserError, match=r"00000001\.png is 40x32 but its frame .*00000001\.jpg is 80x64"):
        ds[1]


# N4 ------------------------------------------------------------------------------------
def test_damaged_validation_mask_is_named_before_training(tmp_path, monkeypatch):
    from vss import train_medvt_vss

    root = _vspw(tmp_path / "vspw")
    bad = root / "data" / "2_val_a" / "mask" / "00000002.png"
    bad.write_text("not a png")
    with pytest.raises(UserError, match=r"2_val_a/mask/00000002\.png: not a readable image"):
        vspw_sequences(root, "val", need_masks=True)
    assert vspw_sequences(root, "val", need_masks=False)  # listing without masks reads none

    def trained(*a, **k):
        raise AssertionError("an epoch was trained before the damaged mask was named")

    monkeypatch.setattr(train_medvt_vss, "train_one_epoch", trained)
    with pytest.raises(UserError, match=r"00000002\.png"):
        train_medvt_vss.main(_train_argv(root, tmp_path / "run", "--epochs", "1"))
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()


# N16 -----------------------------------------------------------------------------------
def _infer_argv(root, out):
    return ["--random_weights", "--model", "tiny", "--num_classes", str(K), "--vspw_root", str(root), "--split", "val",
            "--val_size", "48", "--clip_len", "2", "--device", "cpu", "--output_dir", str(out)]


def test_interrupted_vss_inference_leaves_the_incomplete_marker(tmp_path, monkeypatch):
    from vss import common, inference_medvt_vss

    root = _vspw(tmp_path / "vspw")
    write = common._write_frame
    calls = []

    def write_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(*a, **k)

    monkeypatch.setattr(common, "_write_frame", write_then_interrupt)
    out = tmp_path / "infer"
    with pytest.raises(KeyboardInterrupt):
        inference_medvt_vss.main(_infer_argv(root, out))
    assert (out / "INCOMPLETE").is_file() and not (out / "results.json").exists()
    assert len(list((out / "predictions" / "2_val_a").glob("*.png"))) == 2

    monkeypatch.setattr(common, "_write_frame", write)
    # running again into it: the refusal says the folder holds a run that did not finish
    with pytest.raises(UserError, match=r"infer already holds the partial outputs of a run that did not finish "
                                        r"\(its INCOMPLETE marker\); choose a new folder, or pass --overwrite"):
        inference_medvt_vss.main(_infer_argv(root, out))
    done = tmp_path / "done"
    assert "mIoU" in inference_medvt_vss.main(_infer_argv(root, done))
    assert not (done / "INCOMPLETE").exists() and (done / "results.json").is_file()

    # a truncated first mask (its header reads fine) is named; nothing was written, so no folder is left (its
    # lone INCOMPLETE marker made the corrected command refuse it)
    mask = root / "data" / "2_val_a" / "mask" / "00000000.png"
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(UserError, match=r"00000000\.png: not a readable image"):
        inference_medvt_vss.main(_infer_argv(root, tmp_path / "trunc"))
    assert not (tmp_path / "trunc").exists()


# N3 ------------------------------------------------------------------------------------
def make_avs_case(tmp_path_factory, task: str):
    """A tiny AVSBench tree of ``task`` (one train and val clip, two test clips) and an avs_tiny checkpoint."""
    from models.avs import build_avs_model

    root = make_synthetic_avsbench(tmp_path_factory.mktemp("avsb"), task, {"train": 1, "val": 1, "test": 2},
                                   size=32, seed=1)
    torch.manual_seed(0)
    model = build_avs_model("avs_tiny")
    ckpt = tmp_path_factory.mktemp("ck") / "avs.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    return root, ckpt


@pytest.fixture(scope="module")
def avs_case(tmp_path_factory):
    return make_avs_case(tmp_path_factory, "ms3")


def _avs_argv(root, ckpt, out):
    return ["--task", "ms3", "--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu", "--num_workers",
            "0", "--avsbench_root", str(root), "--weights", str(ckpt), "--test_im_size", "32",
            "--test_batch_size", "1", "--output_dir", str(out)]


@pytest.mark.parametrize("damage", ["truncated", "hostile"])
def test_avs_test_with_a_bad_log_mel_pickle_leaves_no_folder(avs_case, tmp_path, damage):
    from avs.test_medvt import main as test_main

    src, ckpt = avs_case
    root = tmp_path / "avsb"
    shutil.copytree(src, root)
    pkl = sorted(root.rglob("audio_log_mel/test/*.pkl"))[1]
    if damage == "truncated":
        pkl.write_bytes(pkl.read_bytes()[:100])
    else:
        pkl.write_bytes(pickle.dumps(shutil.rmtree))
    out = tmp_path / "test"
    with pytest.raises(UserError, match=rf"{pkl.name}: not a log-mel pickle"):
        test_main(_avs_argv(root, ckpt, out))
    assert not out.exists()


def test_avs_test_at_the_files_own_size_refuses_files_of_another_size_before_any_output(avs_case, tmp_path):
    """--test_im_size 0 evaluates each file at its own size: one mask (or frame) of another size stopped the
    run mid-way with torch.stack's traceback, leaving a partial folder."""
    from avs.test_medvt import main as test_main

    src, ckpt = avs_case
    root = tmp_path / "avsb"
    shutil.copytree(src, root)
    mask = sorted(root.rglob("gt_masks/test/**/*.png"))[-1]
    Image.open(mask).resize((64, 64)).save(mask)
    out = tmp_path / "test"
    argv = _avs_argv(root, ckpt, out)
    argv[argv.index("--test_im_size") + 1] = "0"
    with pytest.raises(UserError, match=rf"^{mask} is 64x64, .* 32x32: at --test_im_size 0 every frame and mask must "
                                        "have one size; give a --test_im_size"):
        test_main(argv)
    assert not out.exists()


def test_avs_test_failing_mid_run_leaves_the_incomplete_marker(avs_case, tmp_path, monkeypatch):
    import avs.test_medvt as script

    root, ckpt = avs_case

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "evaluate", interrupted)
    out = tmp_path / "test"
    with pytest.raises(KeyboardInterrupt):
        script.main(_avs_argv(root, ckpt, out))
    assert (out / "INCOMPLETE").is_file() and not (out / "results.json").exists()
    monkeypatch.undo()
    done = tmp_path / "done"
    res = script.main(_avs_argv(root, ckpt, done))
    assert res["num_clips"] == 2 and (done / "results.json").is_file() and not (done / "INCOMPLETE").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    from tests.test_vss import ROOT

    root = _vspw(tmp_path / "vspw")
    (root / "data" / "2_val_a" / "mask" / "00000001.png").write_text("oops")
    r = subprocess.run([sys.executable, str(ROOT / "vss" / "inference_medvt_vss.py"),
                        *_infer_argv(root, tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("inference_medvt_vss.py: error: ") and "00000001.png" in r.stderr
    assert not (tmp_path / "o").exists()


# A frame size the model cannot take: named before the first epoch, not as a traceback after it
@pytest.mark.parametrize("flag,values", [("--val_size", ["8"]), ("--crop", ["8", "8"])])
def test_vss_training_refuses_a_frame_size_too_small_before_any_epoch(tmp_path, flag, values):
    from vss import train_medvt_vss

    root = _vspw(tmp_path / "vspw")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=rf"{flag} {' '.join(values)} is too small for --model tiny: .*at least \d+"):
        train_medvt_vss.main(_train_argv(root, out, "--epochs", "1", flag, *values))
    assert not out.exists()


def test_a2d_training_refuses_a_clip_size_too_small_before_any_epoch(tmp_path):
    from actor_action import train_medvt_a2d
    from datasets.a2d import make_synthetic_a2d

    root = make_synthetic_a2d(tmp_path / "a2d", num_train=1, num_test=1, num_frames=8, size_hw=(32, 32))
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"--clip_size 8 12 is too small for --model tiny: .*at least \d+ pixels"):
        train_medvt_a2d.main(["--model", "tiny", "--lprop_mode", "2", "--a2d_root", str(root), "--clip_size", "8",
                              "12", "--device", "cpu", "--num_workers", "0", "--epochs", "1",
                              "--output_dir", str(out)])
    assert not out.exists()


def test_vss_training_goes_on_when_its_stdout_reader_ends(tmp_path):
    """`train_medvt_vss.py ... | head -1`: the validation's frames/s line was printed, not logged, so the first
    validation ended the run (stdout closed) before its first checkpoint; the other trainers went on."""
    import subprocess
    import sys

    from tests.test_vss import ROOT

    vspw = write_vspw(tmp_path / "VSPW", {"a": ("train", 4), "b": ("val", 4)})
    out = tmp_path / "run"
    argv = _train_argv(vspw, out, "--epochs", "1")
    proc = subprocess.Popen([sys.executable, "vss/train_medvt_vss.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()  # as head -1 does
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err, err[-2000:]
    assert (out / "checkpoint_last.pth").is_file() and "epoch 0 val: " in (out / "train.log").read_text()
