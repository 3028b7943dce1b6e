"""inference_swin_medvt_avos.py: DAVIS outputs and metrics, --flip/--msc, --video, model selection
and error messages, with a tiny model on synthetic DAVIS data."""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import inference_swin_medvt_avos as script
from avos import inference as inf
from avos import model as avos_model
from avos import protocol as avos_protocol
from datasets.davis16 import davis16_sequences
from datasets.path_config import DatasetNotFoundError
from datasets.synthetic import make_synthetic_davis
from datasets.transforms import load_frames, test_size
from models import CheckpointMismatchError, build_model, get_config
from models.predictor import VideoPredictor, wraparound_clip
from utils.metrics import evaluate_sequences

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = base / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(),
                "args": argparse.Namespace(lr=1e-4)}, ckpt)
    davis = make_synthetic_davis(base / "DAVIS", num_train=0, num_val=2, num_frames=5, size_hw=(H, W))
    return {"base": base, "ckpt": ckpt, "davis": davis, "model": model}


def run(setup, out: Path, *extra: str) -> dict:
    return script.main(["--model_path", str(setup["ckpt"]), "--davis16_root", str(setup["davis"]),
                        "--val_size", "48", "--output_dir", str(out), "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def davis_run(setup) -> tuple[Path, dict]:
    out = setup["base"] / "davis_out"
    return out, run(setup, out, "--save_overlay")


def test_davis_output_layout_and_metrics(setup, davis_run):
    out, res = davis_run
    seqs = davis16_sequences(setup["davis"], "val")
    for seq in seqs:
        stems = [f.stem for f in seq.frames]
        for folder in ("logits", "bin_mask", "overlay"):
            assert sorted(p.stem for p in (out / folder / seq.name).glob("*.png")) == stems
        assert (out / "overlay" / f"{seq.name}.mp4").stat().st_size > 0
    # metrics: per-sequence rows + overall in CSV and JSON, equal to evaluating bin_mask/ again
    saved = json.loads((out / "davis_results.json").read_text())
    assert set(saved["sequences"]) == {s.name for s in seqs}
    again = evaluate_sequences(out / "bin_mask", setup["davis"] / "Annotations" / "480p")
    assert saved["mIoU"] == pytest.approx(again["mIoU"]) and res["davis"]["J_mean"] == pytest.approx(again["J_mean"])
    rows = list(csv.DictReader((out / "davis_results.csv").open()))
    assert [r["sequence"] for r in rows] == [s.name for s in seqs] + ["Overall"]
    assert float(rows[-1]["mIoU"]) == pytest.approx(again["mIoU"])
    log = (out / "out.log").read_text()
    assert "Davis Videos Mean IOU" in log and "checkpoint config" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["version"] == "cvpr23"
    # the run's speed, as a --video run records it (dataset runs dropped it)
    assert summary["davis"]["frames"] == sum(s.num_frames for s in seqs) and summary["davis"]["frames_per_s"] > 0


def test_davis_values_follow_the_protocol(setup, davis_run):
    """logits/ = uint8(p·255) of the centre frame of a wrap-around clip at the GT size; bin_mask/ = p > 0.5."""
    out, _ = davis_run
    seq = davis16_sequences(setup["davis"], "val")[0]
    frames = load_frames(seq.frames, test_size(H, W, 48))
    assert frames.shape[-2:] == (48, 72)
    predictor = VideoPredictor(setup["model"], clip_len=6)
    for i in (0, 4):  # first and last frames: their clips wrap around the video
        clip = frames[wraparound_clip(i, seq.num_frames)]
        [(_, prob)] = predictor.predict_clips(clip[None], [{i: 3}], lambda _f: (H, W))
        prob = prob[0].numpy()
        logits = np.asarray(Image.open(out / "logits" / seq.name / f"{seq.frames[i].stem}.png"))
        binary = np.asarray(Image.open(out / "bin_mask" / seq.name / f"{seq.frames[i].stem}.png"))
        assert logits.shape == binary.shape == (H, W) and logits.dtype == np.uint8
        assert np.abs(logits.astype(int) - (prob * 255).astype(np.uint8).astype(int)).max() <= 1
        assert set(np.unique(binary)) <= {0, 255}
        np.testing.assert_array_equal(binary == 255, prob > 0.5)
    # the rule crf_davis16.py uses: PNG ≥ 128 is foreground (127 is the truncation band of p ∈ (0.5, 0.502))
    for png in (out / "logits" / seq.name).glob("*.png"):
        logits = np.asarray(Image.open(png))
        binary = np.asarray(Image.open(out / "bin_mask" / seq.name / png.name)) == 255
        clear = logits != 127
        np.testing.assert_array_equal(binary[clear], logits[clear] >= 128)


def test_davis_flip_and_msc_run(setup, tmp_path):
    davis = make_synthetic_davis(tmp_path / "DAVIS", num_train=0, num_val=1, num_frames=2, size_hw=(H, W))
    common = ["--model_path", str(setup["ckpt"]), "--davis16_root", str(davis), "--val_size", "48", "--device", "cpu",
              "--sequences", "synth-val-00"]
    script.main(common + ["--output_dir", str(tmp_path / "plain")])
    res = script.main(common + ["--output_dir", str(tmp_path / "msc"), "--flip", "--msc", "--lprop_scale", "7.2"])
    assert list(res["davis"]["sequences"]) == ["synth-val-00"]
    assert res["model"]["lprop_scale"] == 7.2
    log = (tmp_path / "msc" / "out.log").read_text()
    assert "scales [0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3], flip on (mean)" in log
    pngs = sorted((tmp_path / "msc" / "logits" / "synth-val-00").glob("*.png"))
    assert len(pngs) == 2
    assert any(not np.array_equal(np.asarray(Image.open(p)),
                                  np.asarray(Image.open(tmp_path / "plain" / "logits" / "synth-val-00" / p.name)))
               for p in pngs)


def test_protocol_table():
    swin, r101 = get_config("medvt_swinb_avos"), get_config("medvt_r101_avos")
    p = avos_protocol.make_protocol("ytbo", swin, "cvpr23", msc=True, flip=True)
    assert (p.val_size, p.scales, p.flip_merge, p.inclusive) == (360, (0.95, 1.0, 1.05, 1.1, 1.15), "max", True)
    assert avos_protocol.make_protocol("moca", swin, "cvpr23", msc=True).scales == (1.0,)  # CVPR'23: msc off on MoCA
    assert avos_protocol.make_protocol("moca", swin, "2024", msc=True).scales == (0.9, 0.95, 1.0, 1.05, 1.1)
    p = avos_protocol.make_protocol("davis", r101, "cvpr23", msc=True)
    assert (p.scales, p.max_ratio) == ((0.75, 0.8, 0.9, 1.0, 1.1, 1.15), 1.65)
    assert avos_protocol.make_protocol("davis", r101, "cvpr23").max_ratio == 1.8
    p = avos_protocol.make_protocol("davis", swin, "cvpr23", val_size=473)
    assert (p.flip_merge, p.inclusive) == ("mean", False)
    assert test_size(480, 854, p.val_size, p.max_ratio) == (473, 841)
    prob = np.array([0.5, 0.50001])
    assert avos_protocol.make_protocol("ytbo", swin, "cvpr23").binarize(prob).tolist() == [True, True]
    assert p.binarize(prob).tolist() == [False, True]


def test_video_folder_and_mp4(setup, tmp_path):
    seq = davis16_sequences(setup["davis"], "val")[0]
    folder = tmp_path / "my_clip"
    folder.mkdir()
    rgb = [np.asarray(seq.read_image(i)) for i in range(seq.num_frames)]
    for i, frame in enumerate(rgb):
        Image.fromarray(frame).save(folder / f"img_{i:03d}.png")
    res = script.main(["--model_path", str(setup["ckpt"]), "--video", str(folder), "--val_size", "48",
                       "--output_dir", str(tmp_path / "out_dir"), "--device", "cpu"])["video"]
    out = tmp_path / "out_dir"
    assert res["n_frames"] == 5 and res["frames"] == 5 and res["frames_per_s"] > 0
    # a folder's outputs are named after its frames
    names = sorted(p.name for p in (out / "bin_mask" / "my_clip").glob("*.png"))
    assert names == [f"img_{i:03d}.png" for i in range(5)]
    assert np.asarray(Image.open(out / "logits" / "my_clip" / "img_003.png")).shape == (H, W)
    assert Path(res["overlay_video"]) == out / "overlay" / "my_clip.mp4" and Path(res["overlay_video"]).is_file()
    assert res["overlay_codec"] == "h264" and not (out / "INCOMPLETE").exists()
    assert not list((out / "overlay").glob("*partial*"))

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for frame in rgb:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    res = script.main(["--model_path", str(setup["ckpt"]), "--video", str(video), "--val_size", "48",
                       "--output_dir", str(tmp_path / "out_mp4"), "--device", "cpu", "--overlay_format", "gif"])
    assert res["video"]["n_frames"] == 5
    assert sorted(p.name for p in (tmp_path / "out_mp4" / "bin_mask" / "clip").glob("*.png")) == \
        [f"{i:05d}.png" for i in range(5)]
    assert (tmp_path / "out_mp4" / "overlay" / "clip.gif").is_file()
    # chunk window, two clips per forward: same files, fewer forwards
    res = script.main(["--model_path", str(setup["ckpt"]), "--video", str(video), "--val_size", "48",
                       "--output_dir", str(tmp_path / "out_chunk"), "--device", "cpu", "--window", "chunk",
                       "--batch_clips", "2", "--num_frames", "2"])
    assert res["video"]["n_frames"] == 5 and res["video"]["max_frames_held"] <= 4
    assert len(list((tmp_path / "out_chunk" / "bin_mask" / "clip").glob("*.png"))) == 5
    assert res["video"]["overlay_sound"] is None  # the file has no sound track
    # a file with sound: the overlay video plays it
    from tests.test_stream_io import _dominant_hz, _tone, encode_voiced, read_sound

    voiced = encode_voiced(tmp_path / "voiced.mp4", rgb, _tone(0.5, 440, 22050))
    res = script.main(["--model_path", str(setup["ckpt"]), "--video", str(voiced), "--val_size", "48",
                       "--output_dir", str(tmp_path / "out_voiced"), "--device", "cpu"])["video"]
    codec, rate, seconds, sound = read_sound(res["overlay_video"])
    assert res["overlay_sound"] == codec == "aac" and seconds == pytest.approx(0.5, abs=0.06)
    assert _dominant_hz(sound[2205:], rate) == pytest.approx(440, abs=10)
    with pytest.raises(FileNotFoundError, match="--video"):
        script.main(["--model_path", str(setup["ckpt"]), "--video", str(tmp_path / "none.mp4")])


def test_video_refuses_the_flags_of_a_dataset_run(capsys):
    """--dataset, --sequences and the dataset lists did nothing with --video (the help said "ignored"):
    now they stop the run before anything is read."""
    with pytest.raises(SystemExit):
        script.main(["--model_path", "none.pth", "--video", "none.mp4", "--dataset", "moca"])
    assert "--dataset applies to a dataset run, not to --video" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--model_path", "none.pth", "--video", "none.mp4", "--sequences", "a", "--moca_list", "l.txt"])
    assert "--sequences, --moca_list apply to a dataset run, not to --video" in capsys.readouterr().err


def test_model_version_auto_reads_checkpoint_arguments():
    info = avos_model.resolve_model_config({"model": {}, "args": argparse.Namespace(use_flow=0, lr=1e-4)})
    assert (info.config_name, info.version, info.config.variant) == ("medvt_swinb_avos_2024", "2024", "2024")
    assert "use_flow" in info.reason
    info = avos_model.resolve_model_config({"model": {}, "args": argparse.Namespace(lr=1e-4)})
    assert (info.config_name, info.version) == ("medvt_swinb_avos", "cvpr23")
    info = avos_model.resolve_model_config({"model": {}, "args": argparse.Namespace(use_flow=0)}, "cvpr23")
    assert info.config_name == "medvt_swinb_avos"  # an explicit flag wins
    info = avos_model.resolve_model_config({"model": {}}, backbone="resnet101", lprop_scale=7.2)
    assert (info.config_name, info.config.lprop_scale) == ("medvt_r101_avos", 7.2)
    ours = {"model": {}, "config": get_config("tiny").to_dict(), "args": argparse.Namespace(use_flow=0)}
    assert avos_model.resolve_model_config(ours).config == get_config("tiny")  # our config wins over the args
    assert avos_model.resolve_model_config(ours, "2024").config.variant == "2024"


def test_auto_2024_checkpoint_end_to_end_reports_model_and_key_errors(setup, tmp_path, capsys):
    """An authors'-style file (no config) with 2024 arguments: Swin-B 2024 is chosen and printed;
    its (tiny) weights do not fit, and the error names the preset they fit."""
    ckpt = tmp_path / "orig.pth"
    torch.save({"model": setup["model"].state_dict(), "args": argparse.Namespace(use_flow=0)}, ckpt)
    with pytest.raises(CheckpointMismatchError, match="they fit preset tiny"):
        script.main(["--model_path", str(ckpt), "--davis16_root", str(setup["davis"]),
                     "--output_dir", str(tmp_path / "o"), "--device", "cpu"])
    assert "medvt_swinb_avos_2024, forward 2024" in capsys.readouterr().out


def test_wrong_keys_error_lists_them(setup, tmp_path):
    sd = dict(setup["model"].state_dict())
    sd["head.extra.weight"] = torch.zeros(1)
    del sd["query_decoder.query_embed.weight"]
    ckpt = tmp_path / "bad.pth"
    torch.save({"model": sd, "config": get_config("tiny").to_dict()}, ckpt)
    with pytest.raises(CheckpointMismatchError) as err:
        script.main(["--model_path", str(ckpt), "--davis16_root", str(setup["davis"]),
                     "--output_dir", str(tmp_path / "o"), "--device", "cpu"])
    assert "query_decoder.query_embed.weight" in str(err.value) and "head.extra.weight" in str(err.value)


def test_missing_dataset_names_the_flag(setup, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="--davis16_root"):
        script.main(["--model_path", str(setup["ckpt"]), "--davis16_root", str(tmp_path / "no_davis"),
                     "--output_dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="--model_path"):
        script.main(["--model_path", str(tmp_path / "none.pth"), "--davis16_root", str(setup["davis"]),
                     "--output_dir", str(tmp_path / "o")])


def test_help():
    proc = subprocess.run([sys.executable, str(ROOT / "inference_swin_medvt_avos.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--model_path", "--dataset", "--flip", "--msc", "--video", "--model_version", "--amp",
                 "--davis16_root", "--youtube_objects_root", "--moca_root", "--save_overlay"):
        assert flag in proc.stdout


def test_a_run_that_fails_midway_is_marked_incomplete(setup, tmp_path, monkeypatch):
    """An error after some outputs were written (here: the disk fails on the 4th PNG) leaves the
    INCOMPLETE marker and no overlay video under its final name; a good run removes the marker."""
    real, calls = inf.save_png, [0]

    def failing(array, path):
        calls[0] += 1
        if calls[0] == 4:
            raise OSError(f"could not write {path}")
        real(array, path)

    monkeypatch.setattr(inf, "save_png", failing)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="could not write"):
        run(setup, out, "--save_overlay")
    assert "see out.log" in (out / "INCOMPLETE").read_text() and not (out / "summary.json").exists()
    assert "stopped: error: could not write" in (out / "out.log").read_text().splitlines()[-1]  # why it ends there
    assert not list((out / "overlay").glob("*.mp4")) if (out / "overlay").exists() else True
    # nor an unfinished video under its temporary name (an mp4 cut short, which no player opens)
    assert not [p.name for p in out.rglob("*") if "partial" in p.name]
    # A video long enough for the encoder to have written part of the overlay when the 150th PNG fails
    frames = sorted(next((setup["davis"] / "JPEGImages" / "480p").iterdir()).iterdir())
    long = tmp_path / "long"
    long.mkdir()
    for i in range(80):
        shutil.copy(frames[i % len(frames)], long / f"{i:05d}.jpg")
    calls[0] = -146
    with pytest.raises(OSError, match="could not write"):
        script.main(["--model_path", str(setup["ckpt"]), "--video", str(long), "--val_size", "48",
                     "--output_dir", str(tmp_path / "video"), "--device", "cpu", "--window", "chunk"])
    assert not [p.name for p in (tmp_path / "video").rglob("*") if "partial" in p.name]
    monkeypatch.setattr(inf, "save_png", real)
    run(setup, tmp_path / "out2", "--save_overlay")
    assert not (tmp_path / "out2" / "INCOMPLETE").exists() and (tmp_path / "out2" / "summary.json").is_file()


def test_sequences_need_only_the_named_ones_on_disk(setup, tmp_path):
    """--sequences reads the named sequences only: a partial copy of DAVIS (the others' folders
    absent) works, and a name outside the split is refused with the split's names."""
    import shutil

    from utils.cli import UserError

    names = [s.name for s in davis16_sequences(setup["davis"], "val")]
    partial = tmp_path / "DAVIS"
    shutil.copytree(setup["davis"], partial)
    for other in names[1:]:
        shutil.rmtree(partial / "Annotations" / "480p" / other)
    with pytest.raises(FileNotFoundError, match=names[1]):
        davis16_sequences(partial, "val")
    assert [s.name for s in davis16_sequences(partial, "val", only=[names[0]])] == [names[0]]
    with pytest.raises(UserError, match=rf"--sequences: nosuch not in the DAVIS-16 val split .*{names[0]}"):
        davis16_sequences(partial, "val", only=["nosuch"])


def test_missing_sequence_list_names_the_list_not_the_root(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val sequence list .*nope.txt does not exist") as e:
        davis16_sequences(setup["davis"], "val", tmp_path / "nope.txt")
    assert "--davis16_root" not in str(e.value)


def test_too_small_val_size_and_empty_annotation_are_named(setup, tmp_path):
    """Frames too small for the model's label propagation (torch: "more than 1 spatial element")
    name --val_size; a zero-byte annotation names its file (both were tracebacks)."""
    import shutil

    from utils.cli import UserError

    with pytest.raises(UserError, match=r"--val_size 8 is too small for this model"):
        run(setup, tmp_path / "small", "--val_size", "8")
    assert not (tmp_path / "small").exists()  # the sequences' sizes are read from their headers up front
    # so is a --video's: refused before its output folder exists
    with pytest.raises(UserError, match=r"--val_size 8 is too small for this model .*; use a larger --val_size"):
        script.main(["--model_path", str(setup["ckpt"]), "--video", str(davis16_sequences(setup["davis"], "val")[0]
                                                                          .frames[0].parent),
                     "--val_size", "8", "--output_dir", str(tmp_path / "small_video"), "--device", "cpu"])
    assert not (tmp_path / "small_video").exists()
    davis = tmp_path / "DAVIS"
    shutil.copytree(setup["davis"], davis)
    seq = davis16_sequences(davis, "val")[0]
    seq.masks[2].write_bytes(b"")
    with pytest.raises(UserError, match=rf"{seq.masks[2].name}: not a readable image"):
        script.main(["--model_path", str(setup["ckpt"]), "--davis16_root", str(davis), "--val_size", "48",
                     "--output_dir", str(tmp_path / "empty_gt"), "--device", "cpu"])


def test_frame_folders_need_no_pyav(setup, tmp_path):
    """PyAV is imported only for video files: DAVIS frame folders, with GIF overlays, run where it is not
    installed (the GPU machine's image has none, and its suite runs this script). A new process, since
    this one has imported every module already; ``sys.modules["av"] = None`` makes ``import av`` fail."""
    out = tmp_path / "no_av"
    argv = ["inference_swin_medvt_avos.py", "--model_path", str(setup["ckpt"]), "--davis16_root",
            str(setup["davis"]), "--val_size", "48", "--output_dir", str(out), "--device", "cpu", "--save_overlay",
            "--overlay_format", "gif", "--sequences", "synth-val-00"]
    code = ("import runpy, sys; sys.modules['av'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path('inference_swin_medvt_avos.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, *argv], cwd=Path(script.__file__).parent, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "overlay" / "synth-val-00.gif").is_file() and (out / "davis_results.json").is_file()


def test_input_sizes_are_checked_by_arithmetic_or_one_small_forward():
    """A fixed-size ONNX file is not told to take a larger --val_size (no size but its own fits); the
    PyTorch model is run once, at the smallest input, and only when that is small enough to matter (the
    check cost a Swin-B forward per dataset on every run: 18-26 s on a 2-core CPU)."""
    from models.onnx_export import InputSizeError

    cfg = get_config("tiny")
    args = argparse.Namespace(runtime="onnx", num_frames=6, dataset="davis", video=None)

    class Fixed:
        named, dynamic_size = "--onnx_path f.onnx", False

        def fits(self, t, h, w):
            return (h, w) == (64, 64)

        def describe(self):
            return "clips of 6 frames of 64x64 only"

    with pytest.raises(InputSizeError, match=r"^--val_size 100: sequence a \(48x80\) is fed to the model at 100x166, "
                                             r"but --onnx_path f\.onnx takes clips of 6 frames of 64x64 only; export "
                                             r"a file that takes any size"):
        script.check_input_sizes(Fixed(), [(avos_protocol.make_protocol("davis", cfg, "cvpr23", val_size=100),
                                            {"sequence a": (48, 80)})], args, torch.device("cpu"))
    calls = []
    args.runtime = "torch"
    for val_size in (100, 20):
        protocol = avos_protocol.make_protocol("davis", cfg, "cvpr23", val_size=val_size, msc=True)
        script.check_input_sizes(calls.append, [(protocol, {"sequence a": (480, 854)}),
                                                (protocol, {"sequence b": (480, 640)})], args, torch.device("cpu"))
    assert [tuple(x.shape) for x in calls] == [(1, 2, 3, 15, 26)]  # 0.75 × (20, 35): at 100 none was needed
