"""VSS on VSPW: loader on a generated VSPW-format sample, hand-checked metrics, a training step
and inference through the scripts (tiny model, 5 classes, CPU)."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint_asserts import assert_epoch_lines
from datasets.path_config import DatasetNotFoundError
from datasets.vspw import (VSPWClips, VSPWTrainTransform, build_vspw_train_dataset, raw_to_class, vspw_root,
                           vspw_sequences)
from models import build_model, get_config
from utils.cli import UserError
from vss.config import vss_config
from models.losses import softmax_focal_loss
from vss.losses import VSSCriterion
from vss.metrics import VSPWEvaluator, confusion_matrix, mean_iou, window_consistency

ROOT = Path(__file__).resolve().parents[1]
K = 5  # classes of the synthetic sample: raw labels 1..5, plus 0 (others) and 255 (void)


def write_vspw(root: Path, videos: dict[str, tuple[str, int]], size=(64, 80), seed=0) -> Path:
    """A VSPW-layout folder: {video: (split, n_frames)} with jpg frames, mode-L masks and split files.

    Each mask has a moving square of raw class 1 + (video index % K) on raw class 2 background, a
    column of "others" (0) and one of void (255), so both must end up ignored.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    splits: dict[str, list[str]] = {}
    for v, (name, (split, n)) in enumerate(videos.items()):
        splits.setdefault(split, []).append(name)
        for d in ("origin", "mask"):
            (root / "data" / name / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            mask = np.full((h, w), 2, np.uint8)
            y, x = 8 + i, 10 + 2 * i
            mask[y:y + 20, x:x + 24] = 1 + (v % K)
            img[mask == 1 + (v % K)] = (200, 40, 40)
            mask[:, 0], mask[:, 1] = 0, 255
            Image.fromarray(img).save(root / "data" / name / "origin" / f"{i:08d}.jpg")
            if split != "test":
                Image.fromarray(mask).save(root / "data" / name / "mask" / f"{i:08d}.png")
    for split, names in splits.items():
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def vspw(tmp_path_factory) -> Path:
    return write_vspw(tmp_path_factory.mktemp("VSPW_480p"),
                      {"1_train_a": ("train", 9), "2_train_b": ("train", 4), "3_val_a": ("val", 11),
                       "4_test_a": ("test", 3)})


# ------------------------------------------------------------------------------------- loader
def test_raw_labels_map_to_classes_with_others_and_void_ignored():
    raw = np.array([[0, 1, 2], [124, 255, 125]], np.uint8)
    assert raw_to_class(raw).tolist() == [[255, 0, 1], [123, 255, 255]]


def test_clamped_clips_stay_inside_the_video_and_wrap_only_when_too_short():
    from utils.clips import clamped_clip as clip_indices

    assert clip_indices(20, 10, 6) == [7, 8, 9, 10, 11, 12]
    assert clip_indices(20, 0, 6) == [0, 1, 2, 3, 4, 5]
    assert clip_indices(20, 19, 6) == [14, 15, 16, 17, 18, 19]
    assert clip_indices(20, 10, 3, stride=2) == [8, 10, 12]
    assert clip_indices(4, 0, 6) == [1, 2, 3, 0, 1, 2]


def test_loader_reads_splits_and_makes_training_clips(vspw):
    videos = vspw_sequences(vspw, "val")
    assert [v.name for v in videos] == ["3_val_a"] and videos[0].num_frames == 11
    assert all(m is not None and m.stem == f.stem for f, m in zip(videos[0].frames, videos[0].masks))
    assert all(m is None for m in vspw_sequences(vspw, "test")[0].masks)  # test split: frames only
    ds = build_vspw_train_dataset(vspw, num_frames=4, transform=VSPWTrainTransform((48,), None, None, seed=0))
    assert len(ds) == 3 + 1  # centres 0, 4, 8 of the 9-frame video and 0 of the 4-frame one
    item = ds[2]  # centre 8 of 9 frames: window shifted inside the video, frames 5..8
    assert item["name"] == "1_train_a" and item["centre"] == 8
    assert item["frames"].shape == (4, 3, 48, 60) and item["frames"].dtype == torch.float32
    assert item["masks"].shape == (4, 48, 60) and item["masks"].dtype == torch.long
    assert set(item["masks"].unique().tolist()) == {0, 1, 255}  # raw 0 and 255 ignored, raw 1/2 → 0/1
    # The moving square of frame 8 (raw label 1 at rows 16..35 of 64) survives resizing and the flip.
    assert (item["masks"][-1] == 0).sum() > 0 and (item["masks"][0] == 0).sum() > 0
    cropped = VSPWClips(ds.sequences, VSPWTrainTransform((48,), None, (40, 56), seed=0), num_frames=4)[1]
    assert cropped["frames"].shape == (4, 3, 40, 56) and cropped["masks"].shape == (4, 40, 56)
    padded = VSPWClips(ds.sequences, VSPWTrainTransform((32,), None, (48, 48), hflip=0.0), num_frames=2)[0]
    assert padded["masks"].shape == (2, 48, 48) and (padded["masks"][:, 32:] == 255).all()
    assert (padded["frames"][:, :, 32:] == 0).all()


def test_missing_dataset_names_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDVT_VSPW_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError, match="--vspw_root.*MEDVT_VSPW_ROOT"):
        vspw_root(tmp_path / "nowhere")
    (tmp_path / "data").mkdir()
    with pytest.raises(DatasetNotFoundError, match="val split list.*--vspw_root"):
        vspw_sequences(vspw_root(tmp_path), "val")
    (tmp_path / "val.txt").write_text("ghost\n")
    with pytest.raises(DatasetNotFoundError, match="frames of video ghost"):
        vspw_sequences(tmp_path, "val")


# ------------------------------------------------------------------------------------ metrics
def test_miou_counts_only_classes_present_in_ground_truth():
    gt = np.array([[0, 0], [1, 255]])
    pred = np.array([[0, 1], [1, 2]])  # the 2 falls on a void pixel: not counted
    conf = confusion_matrix(gt, pred, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert mean_iou(conf) == pytest.approx(0.5)  # IoU0 = 1/2, IoU1 = 1/2
    # Class 2 only predicted: left out (a nanmean over classes with a union would give 0.25).
    assert mean_iou(confusion_matrix(np.array([0, 0]), np.array([0, 2]), 3)) == pytest.approx(0.5)
    assert math.isnan(mean_iou(confusion_matrix(np.array([255]), np.array([0]), 3)))
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0]), np.array([3]), 3)


def test_video_consistency_by_hand():
    # Two pixels (a, b), 4 frames, n = 2 → windows start at 0 and 1 (range(4 - 2)); window 2 skipped.
    gt = np.array([[1, 1], [1, 2], [1, 2], [1, 2]])[:, None, :]
    pred = np.array([[5, 3], [5, 3], [6, 3], [6, 3]])[:, None, :]
    values, common, consistent = window_consistency(gt, pred, 2, gt - 1, 2)
    # w0: common {a}, a consistent → 1; w1: common {a, b}, only b consistent → 1/2.
    assert values == [1.0, 0.5]
    assert common.tolist() == [2, 1] and consistent.tolist() == [1, 1]  # per class of the window's 1st frame
    assert window_consistency(gt, pred, 4)[0] == []  # videos with ≤ n frames are skipped
    flicker = np.array([0, 1, 0, 1])[:, None, None]
    assert math.isnan(window_consistency(flicker, flicker, 2)[0][0])  # no common pixel: NaN, later skipped


def test_video_consistency_equals_pairwise_definition_on_random_labels():
    rng = np.random.default_rng(1)
    gt, pred = rng.integers(0, 2, (12, 5, 6)), rng.integers(0, 2, (12, 5, 6))
    for n in (2, 3, 8):
        expected = []
        for i in range(len(gt) - n):
            g = np.all([gt[i] == gt[i + j] for j in range(1, n)], axis=0)
            p = np.all([pred[i] == pred[i + j] for j in range(1, n)], axis=0)
            expected.append((g & p).sum() / g.sum() if g.sum() else math.nan)
        got = window_consistency(gt, pred, n)[0]
        assert np.allclose(got, expected, equal_nan=True)


def test_evaluator_pools_windows_over_videos():
    ev = VSPWEvaluator(num_classes=2, vc_lengths=(2,))
    gt = np.array([[1, 1], [1, 2], [1, 2], [1, 2]])[:, None, :]
    pred = np.array([[5, 3], [5, 3], [6, 3], [6, 3]])[:, None, :] % 2
    ev.add_video("a", raw_to_class(gt.astype(np.uint8)), pred, gt)
    ev.add_video("b", np.zeros((3, 1, 2), np.uint8), np.zeros((3, 1, 2), np.uint8))  # 1 window, VC 1
    s = ev.summary()
    assert s["mVC2"] == pytest.approx((1 + 0.5 + 1) / 3)  # official: mean over windows, not over videos
    assert s["mVC2_video_mean"] == pytest.approx((0.75 + 1) / 2)
    assert s["sequences"]["a"]["VC2"] == pytest.approx(0.75)
    assert set(s) >= {"mIoU", "mVC2", "mVC2_class", "class_VC2", "class_IoU"}


# ------------------------------------------------------------------------------ config, loss
def test_vss_config_is_the_avos_model_with_124_classes():
    cfg = get_config("medvt_swinb_vss")
    assert cfg == get_config("medvt_swinb_avos").replace(num_classes=124)
    assert cfg.num_queries == 6 and cfg.lprop_mode == 2 and vss_config() == cfg
    assert vss_config("tiny", 5).num_classes == 5
    with pytest.raises(UserError, match="--model tiny has num_classes=1; VSS needs a multi-class"):
        vss_config("tiny")  # a flag mistake: one line, not a traceback


def test_loss_ignores_void_and_is_finite_on_all_void():
    logits = torch.randn(1, 3, 2, 4, 4, requires_grad=True)
    masks = torch.randint(0, 3, (1, 2, 8, 8))
    masks[..., :4] = 255
    crit = VSSCriterion(aux_weight=0.0)
    out = crit({"pred_masks": logits}, masks)
    up = torch.nn.functional.interpolate(logits.detach().flatten(1, 2), size=(8, 8), mode="bilinear")
    up = up.view(1, 3, 2, 8, 8)
    ref = torch.nn.functional.cross_entropy(up, masks, ignore_index=255)
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert softmax_focal_loss(up, masks, gamma=0.0, ignore_index=255).item() == pytest.approx(ref.item(), rel=1e-5)
    assert VSSCriterion(loss="focal")({"pred_masks": logits}, torch.full_like(masks, 255))["loss"].item() == 0.0


# ------------------------------------------------------------------------------- scripts
def _train_argv(vspw, out, *extra):
    return ["--model", "tiny", "--num_classes", str(K), "--vspw_root", str(vspw), "--num_frames", "2",
            "--train_sizes", "48", "--crop", "48", "64", "--steps_per_epoch", "2", "--num_workers", "0",
            "--val_size", "48", "--device", "cpu", "--output_dir", str(out), *extra]


def test_train_resume_then_inference_writes_colored_predictions_and_results(vspw, tmp_path, fake_tensorboard):
    from models.convert import read_checkpoint
    from vss import inference_medvt_vss, train_medvt_vss

    train_out = tmp_path / "train"
    stats = train_medvt_vss.main(_train_argv(vspw, train_out, "--epochs", "1", "--tensorboard"))
    assert fake_tensorboard[0]["scalars"][("mIoU", 0)] == stats["mIoU"] and fake_tensorboard[0]["closed"]
    assert_epoch_lines(train_out / "train.log", 1, stats["best"], "mIoU")
    assert math.isfinite(stats["loss"]) and stats["steps"] == 2 and stats["epochs_done"] == 1
    assert 0 <= stats["history"][0]["mIoU"] <= 1 and stats["best"]["epoch"] == 0  # validated on 3_val_a
    ckpt = read_checkpoint(train_out / "checkpoint_last.pth")  # weights_only: plain types only
    assert ckpt["epoch"] == 0 and ckpt["config"]["num_classes"] == K and ckpt["args"].model == "tiny"
    assert ckpt["task"] == "vss"  # models.tasks: what inference and --resume of other tasks refuse by name
    assert (train_out / "checkpoint_best.pth").is_file() and (train_out / "val_epoch000.csv").is_file()
    assert not list(train_out.glob(".*.tmp"))  # atomic save leaves no temporary file

    resumed = train_medvt_vss.main(_train_argv(vspw, train_out, "--epochs", "2", "--resume", "auto",
                                               "--val_every", "0"))
    assert resumed["epochs_done"] == 2 and [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert read_checkpoint(train_out / "checkpoint_last.pth")["epoch"] == 1

    out = tmp_path / "infer"
    summary = inference_medvt_vss.main([
        "--model_path", str(train_out / "checkpoint_last.pth"), "--vspw_root", str(vspw), "--split", "val",
        "--val_size", "48", "--clip_len", "4", "--device", "cpu", "--output_dir", str(out), "--save_overlays"])
    pngs = sorted((out / "predictions" / "3_val_a").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:08d}" for i in range(11)]
    assert len(list((out / "overlays" / "3_val_a").glob("*.jpg"))) == 11
    png = Image.open(pngs[0])
    assert png.mode == "P" and png.size == (80, 64) and np.asarray(png).max() < K  # label ids, coloured
    assert png.getpalette()[:6] != [0] * 6  # class 0 has a visible colour
    result = json.loads((out / "results.json").read_text())
    assert set(result["sequences"]) == {"3_val_a"} and 0 <= summary["mIoU"] <= 1
    assert 0 <= result["mVC8"] <= 1 and result["mVC16"] is None  # 11 frames: no 16-frame window
    assert "3_val_a" in (out / "results.csv").read_text()

    test_out = tmp_path / "test_split"  # no masks: predictions only
    assert inference_medvt_vss.main(["--random_weights", "--model", "tiny", "--num_classes", str(K),
                                     "--vspw_root", str(vspw), "--split", "test", "--val_size", "48",
                                     "--device", "cpu", "--output_dir", str(test_out)]) == {}
    assert len(list((test_out / "predictions" / "4_test_a").glob("*.png"))) == 3
    record = json.loads((test_out / "summary.json").read_text())  # what made them: it wrote nothing else
    assert record["split"] == "test" and record["videos"] == ["4_test_a"] and record["metrics"] is None
    assert record["settings"]["val_size"] == 48 and record["model"]


def test_torchrun_shares_validation_and_scores_as_one_process(tmp_path, deterministic):
    """Two processes (Gloo, CPU) train a step each, then validate 3 videos (one process predicts two,
    the other one): the val results equal one process predicting all three with the saved weights,
    to the last bit and with the videos in their order."""
    from checkpoint_asserts import run_torchrun
    from datasets.vspw import vspw_sequences
    from models import MedVTConfig
    from models.convert import read_checkpoint
    from utils.metrics import jsonable
    from vss.common import evaluate_videos

    root = write_vspw(tmp_path / "VSPW", {"1_train_a": ("train", 4), "2_train_b": ("train", 4),
                                          "3_val_a": ("val", 10), "4_val_b": ("val", 9), "5_val_c": ("val", 12)})
    out = tmp_path / "ddp"
    r = run_torchrun(ROOT / "vss" / "train_medvt_vss.py", _train_argv(root, out, "--epochs", "1",
                                                                      "--steps_per_epoch", "1"))
    assert "2 process(es)" in r.stdout
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and len(ckpt["rng"]) == 2
    model = build_model(MedVTConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    alone = evaluate_videos(model, vspw_sequences(root, "val", need_masks=True), torch.device("cpu"),
                            save_predictions=False, progress=False, val_size=48, clip_len=2)
    saved = json.loads((out / "val_epoch000.json").read_text())
    assert list(saved["sequences"]) == ["3_val_a", "4_val_b", "5_val_c"]
    assert saved == json.loads(json.dumps(jsonable(alone)))
    assert ckpt["history"][0]["mIoU"] == alone["mIoU"] and ckpt["history"][0]["mVC8"] == alone["mVC8"]

    # inference under torchrun: each process writes its videos' PNGs; the results are one process's
    infer = ["--model_path", str(out / "checkpoint_last.pth"), "--vspw_root", str(root), "--split", "val",
             "--val_size", "48", "--device", "cpu"]
    r = run_torchrun(ROOT / "vss" / "inference_medvt_vss.py", [*infer, "--output_dir", str(tmp_path / "ddp_infer")])
    assert "2 processes, each predicting 1 video in 2" in r.stdout and r.stdout.count("loaded ") == 1
    assert "2 processes: 31 frames in " in r.stdout  # the speed line counts both shares
    one = subprocess.run([sys.executable, str(ROOT / "vss" / "inference_medvt_vss.py"), *infer,
                          "--output_dir", str(tmp_path / "one")], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = tmp_path / "ddp_infer", tmp_path / "one"
    assert (two / "results.json").read_text() == (single / "results.json").read_text()
    pngs = sorted(p.relative_to(single) for p in single.rglob("*.png"))
    assert len(pngs) == 31 and sorted(p.relative_to(two) for p in two.rglob("*.png")) == pngs
    assert all((two / p).read_bytes() == (single / p).read_bytes() for p in pngs)
    # no INCOMPLETE; the summary written once, by rank 0, as one process writes it
    assert sorted(p.name for p in two.iterdir()) == ["predictions", "results.csv", "results.json", "summary.json"]
    assert (two / "summary.json").read_text() == (single / "summary.json").read_text()


def test_chunk_clips_cover_every_frame_once_inside_the_video():
    from utils.clips import chunk_clips

    assert chunk_clips(11, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [7, 8, 9, 10]]
    assert chunk_clips(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert chunk_clips(3, 4) == [[1, 2, 0, 1]]  # shorter than a clip: wraps


@pytest.mark.parametrize("module", ["train_medvt_vss", "inference_medvt_vss"])
def test_scripts_explain_every_flag_and_name_missing_data(module, tmp_path, monkeypatch, capsys):
    import importlib

    script = importlib.import_module(f"vss.{module}")
    parser = script.get_args_parser()
    undocumented = [a.dest for a in parser._actions if a.dest != "help" and not a.help]
    assert not undocumented
    with pytest.raises(SystemExit):
        script.main(["--help"])
    assert "--vspw_root" in capsys.readouterr().out
    monkeypatch.delenv("MEDVT_VSPW_ROOT", raising=False)
    argv = ["--vspw_root", str(tmp_path / "none"), "--model", "tiny", "--num_classes", "3", "--device", "cpu",
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(DatasetNotFoundError, match="none.*--vspw_root.*MEDVT_VSPW_ROOT"):
        script.main(argv + (["--random_weights"] if module.startswith("inference") else []))


def test_train_script_cli_reports_missing_dataset(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "vss" / "train_medvt_vss.py"), "--vspw_root",
                          str(tmp_path / "none"), "--device", "cpu", "--output_dir", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and "MEDVT_VSPW_ROOT" in run.stderr


def test_init_from_another_checkpoint_skips_class_dependent_layers(tmp_path):
    from models.convert import init_from_checkpoint
    from utils.checkpoint import save_checkpoint

    source = build_model(vss_config("tiny", 3))
    save_checkpoint({"model": source.state_dict()}, tmp_path / "src.pth")
    target = build_model(vss_config("tiny", K))
    loaded, skipped = init_from_checkpoint(target, str(tmp_path / "src.pth"))
    assert skipped and all(k.startswith(("head.", "label_propagator.")) for k in skipped)
    assert "backbone.patch_embed.proj.weight" in loaded
    assert torch.equal(target.state_dict()["query_decoder.query_embed.weight"],
                       source.state_dict()["query_decoder.query_embed.weight"])


def test_predict_video_centre_window_with_flip(vspw):
    from models import build_model
    from vss.common import predict_video

    torch.manual_seed(0)
    model = build_model(vss_config("tiny", K)).eval()
    video = vspw_sequences(vspw, "test")[0]  # 3 frames
    preds = predict_video(model, video, (64, 80), torch.device("cpu"), val_size=48, clip_len=2, window="centre",
                          flip=True)
    assert preds.shape == (3, 64, 80) and preds.dtype == np.uint8 and preds.max() < K
    with pytest.raises(ValueError, match="window"):
        predict_video(model, video, (64, 80), torch.device("cpu"), window="sliding")


def test_inference_clip_length_defaults_to_the_trained_one(capsys):
    """A model trained on 2-frame clips was run on 6-frame clips without a word: the default came from
    nowhere, and --num_frames' help called it the model's query count."""
    from vss.common import clip_length

    trained = {"args": argparse.Namespace(num_frames=2)}
    assert clip_length(None, trained) == 2 and clip_length(None, {}) == 6
    assert capsys.readouterr().out == ""
    assert clip_length(4, trained) == 4 and "--clip_len 4, but the checkpoint was trained on clips of 2 frames" in \
        capsys.readouterr().out


def test_video_input_writes_the_split_run_labels_and_an_overlay_video(vspw, tmp_path, monkeypatch, capsys):
    """--video (a frame folder or a video file) streams a user's video through the same predictor: the
    labels of a folder holding a VSPW video's frames are those of the split run, at the frame size, and
    the overlay video has every frame."""
    import av

    from vss import inference_medvt_vss
    from vss.config import vss_config

    torch.manual_seed(0)
    model = build_model(vss_config("tiny", K))
    ckpt = tmp_path / "vss.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    common = ["--model_path", str(ckpt), "--num_classes", str(K), "--val_size", "48", "--clip_len", "4",
              "--flip", "--device", "cpu"]
    inference_medvt_vss.main(common + ["--vspw_root", str(vspw), "--split", "val", "--output_dir",
                                       str(tmp_path / "split")])
    frames = vspw / "data" / "3_val_a" / "origin"
    res = inference_medvt_vss.main(common + ["--video", str(frames), "--fps", "5", "--output_dir",
                                             str(tmp_path / "folder")])
    split_pngs = sorted((tmp_path / "split" / "predictions" / "3_val_a").glob("*.png"))
    video_pngs = sorted((tmp_path / "folder" / "predictions" / "origin").glob("*.png"))
    assert [p.name for p in video_pngs] == [p.name for p in split_pngs] and len(video_pngs) == 11
    for a, b in zip(split_pngs, video_pngs):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert Image.open(video_pngs[0]).size == (80, 64) and Image.open(video_pngs[0]).mode == "P"
    assert res["frames"] == 11 and abs(sum(res["class_shares"].values()) - 1) < 1e-6
    assert res["settings"]["clip_len"] == 4 and res["settings"]["window"] == "chunk" and res["settings"]["flip"]
    assert json.loads((tmp_path / "folder" / "summary.json").read_text())["overlay_video"] == res["overlay_video"]
    with av.open(res["overlay_video"]) as container:  # a folder's frames at --fps (it was always 10)
        assert sum(1 for _ in container.decode(video=0)) == 11 and container.streams.video[0].average_rate == 5
    # a video file: one PNG per decoded frame, named by frame number; the overlay plays its sound
    from tests.test_stream_io import _dominant_hz, _tone, encode_voiced, read_sound

    mp4 = encode_voiced(tmp_path / "clip.mp4", [np.asarray(Image.open(f).convert("RGB"))
                                                for f in sorted(frames.glob("*.jpg"))], _tone(1.1, 440, 22050))
    res = inference_medvt_vss.main(common + ["--video", str(mp4), "--output_dir", str(tmp_path / "file")])
    assert res["frames"] == 11 and len(list((tmp_path / "file" / "predictions" / "clip").glob("*.png"))) == 11
    codec, rate, seconds, sound = read_sound(res["overlay_video"])
    assert res["overlay_sound"] == codec == "aac" and seconds == pytest.approx(1.1, abs=0.06)
    assert _dominant_hz(sound[2205:], rate) == pytest.approx(440, abs=10)
    # `.` is named after the folder it means; hidden files (macOS ._ metadata) are not frames
    dot = tmp_path / "dot_frames"
    shutil.copytree(frames, dot)
    (dot / "._00000000.jpg").write_bytes(b"\x00\x05\x16\x07")
    monkeypatch.chdir(dot)
    res = inference_medvt_vss.main(common + ["--video", ".", "--output_dir", str(tmp_path / "dot")])
    assert res["name"] == "dot_frames" and len(list((tmp_path / "dot" / "predictions" / "dot_frames").glob("*"))) == 11
    # options of a split run are refused with --video, not ignored
    with pytest.raises(SystemExit):
        inference_medvt_vss.main(common + ["--video", str(frames), "--videos", "a", "--no_save_predictions"])
    assert "--videos, --no_save_predictions apply to a VSPW split, not to --video" in capsys.readouterr().err
    # a model input too small for the model, or a MED-VT++ (audio-visual) checkpoint: one line, no folder
    with pytest.raises(UserError, match="--val_size 8 is too small for this model .*; use a larger --val_size"):
        inference_medvt_vss.main(["--model_path", str(ckpt), "--num_classes", str(K), "--val_size", "8", "--device",
                                  "cpu", "--video", str(mp4), "--output_dir", str(tmp_path / "none")])
    from models.avs import build_avs_model

    avs = build_avs_model("avs_tiny")
    torch.save({"model": avs.state_dict(), "config": avs.cfg.to_dict()}, tmp_path / "avs.pth")
    with pytest.raises(UserError, match=r"avs.pth holds an AVS model .*run it with avs/test_medvt\.py$"):
        inference_medvt_vss.main(["--model_path", str(tmp_path / "avs.pth"), "--video", str(mp4), "--device", "cpu",
                                  "--output_dir", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
    # a missing video stops before the checkpoint is read or a folder made
    with pytest.raises(FileNotFoundError, match="--video .*none.mp4 does not exist"):
        inference_medvt_vss.main(common + ["--video", str(tmp_path / "none.mp4"), "--output_dir",
                                           str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
