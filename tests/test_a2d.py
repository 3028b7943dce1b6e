"""A2D actor-action segmentation: presets and converter, equality with the original, loader, loss,
metrics, and the train/inference scripts on a tiny generated A2D-format set."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from actor_action import common as a2d_common
from actor_action import inference_medvt_a2d, train_medvt_a2d
from actor_action.losses import A2DCriterion
from actor_action.metrics import ConfusionMatrix, OriginalA2DMetric, frame_score
from checkpoint_asserts import assert_epoch_lines
from datasets.a2d import (IGNORE_INDEX, VALID_IDS, A2DDataset, a2d_root, class_name, clip_frame_ids, make_synthetic_a2d,
                          read_annotation, read_videoset)
from datasets.path_config import DatasetNotFoundError
from models import CheckpointMismatchError, build_model, convert_original_state_dict
from models.convert import load_state_dict_strict, read_checkpoint
from tests.model_weights import deterministic_value, read_key_list

A2D_FIXTURES = Path(__file__).parent / "fixtures" / "a2d"


def _original_sd(key_file: str, model) -> dict[str, torch.Tensor]:
    """Deterministic original-named state dict (tests/fixtures/a2d/README.md); ints from ``model``."""
    own = model.state_dict()
    sd = {}
    for name, shape, dtype in read_key_list(A2D_FIXTURES / key_file):
        if "float" in dtype:
            sd[name] = deterministic_value(name, shape)
        else:
            (ours,) = convert_original_state_dict({name: torch.zeros(())}, model.cfg)
            sd[name] = own[ours].clone() if ours in own else torch.zeros(shape, dtype=torch.int64)
    return sd


def _logits(model, reference: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.randn((6, 3, *size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(frames[None])["pred_masks"][0]  # [80, T, h, w]: the original's layout without batch
    return out, torch.load(A2D_FIXTURES / reference, weights_only=True)["pred_masks"]


def _check_keys_and_load(model, keys: str, original_params: int, entries: int) -> None:
    """Every original key maps onto ours with equal shapes; equal parameter counts; load the weights."""
    rows = read_key_list(A2D_FIXTURES / keys)
    assert len(rows) == entries
    sd = _original_sd(keys, model)
    converted = convert_original_state_dict(sd, model.cfg)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k].shape for k in own)
    assert sum(p.numel() for p in model.parameters()) == original_params
    load_state_dict_strict(model, converted)


# Reference logits: tests/fixtures/a2d/README.md. Figures of spec a2d §A.2: parameters, entries.
def test_swinb_a2d_keys_and_logits_match_original():
    model = build_model("medvt_swinb_a2d").eval()
    _check_keys_and_load(model, "swinb_keys.tsv", 127_499_434, 649)
    out, expected = _logits(model, "swinb_q3_T6_128x192_seed0.pt", (128, 192))
    assert out.shape == expected.shape == (80, 6, 16, 24)
    assert (out - expected).abs().max().item() < 1e-4
    # The inference script's default (--query_decoder_scales 1): same weights, deepest memory only.
    model.cfg = model.cfg.replace(query_decoder_scales=1)
    out1, expected1 = _logits(model, "swinb_q1_T6_128x192_seed0.pt", (128, 192))
    assert (out1 - expected1).abs().max().item() < 1e-4
    # With these weights the two settings differ by only ~2e-4 (the decoder barely moves the logits).
    assert (out1 - out).abs().max().item() > 1e-5


def test_r101_a2d_keys_and_logits_match_original():
    model = build_model("medvt_r101_a2d").eval()
    _check_keys_and_load(model, "r101_keys.tsv", 84_279_586, 830)
    out, expected = _logits(model, "r101_T6_64x96_seed0.pt", (64, 96))
    assert out.shape == expected.shape == (80, 6, 16, 24)
    assert (out - expected).abs().max().item() < 1e-4


# ----------------------------------------------------------------------------- loader


def test_label_space():
    assert len(VALID_IDS) == 43 and 67 in VALID_IDS and 0 not in VALID_IDS
    assert class_name(11) == "adult-climbing" and class_name(79) == "dog-none" and class_name(0) == "background"
    assert class_name(14) == "adult-flying"  # a name exists, but 14 is not a valid A2D pair
    assert 14 not in VALID_IDS


def test_clip_sampling_around_annotated_frame():
    assert clip_frame_ids(2, 40) == ([2, 3, 4, 5, 6, 7], 0)  # g ≤ 3: starts at g
    assert clip_frame_ids(10, 40) == ([7, 8, 9, 10, 11, 12], 3)  # the 4th frame is annotated
    assert clip_frame_ids(37, 40) == ([34, 35, 36, 37, 38, 39], 3)
    # Near the end the original gives 3 frames without the annotated one; we keep 6 inside the video.
    assert clip_frame_ids(39, 40, end_window="original") == ([36, 37, 38], -1)
    assert clip_frame_ids(39, 40) == ([35, 36, 37, 38, 39, 40], 4)
    assert clip_frame_ids(2, 4) == ([2, 3, 4, 4, 4, 4], 0)  # very short video: last frame repeated


@pytest.fixture(scope="module")
def a2d_dir(tmp_path_factory):
    return make_synthetic_a2d(tmp_path_factory.mktemp("a2d"), num_train=2, num_test=2, num_frames=10,
                              size_hw=(48, 64), annotated=(2, 5, 9))


def test_loader_reads_a2d_layout(a2d_dir, monkeypatch):
    monkeypatch.setenv("MEDVT_A2D_ROOT", str(a2d_dir))
    assert a2d_root() == a2d_dir
    assert [v.vid for v in read_videoset(a2d_dir / "Release/videoset.csv", "train")] == ["vid000", "vid001"]
    assert [v.vid for v in read_videoset(a2d_dir / "Release/videoset.csv", "test")] == ["vid002", "vid003"]
    test = A2DDataset(a2d_dir, "test", size=(32, 48))
    assert len(test) == 6  # one item per annotated frame
    item = test[1]  # vid002, frame 5
    assert item["name"] == "vid002" and item["frame"] == 5 and item["gt_index"] == 3
    assert item["frames"].shape == (6, 3, 32, 48)
    assert item["masks"].shape == (6, 48, 64)  # test labels keep the annotation size
    label = item["label"]
    assert set(label.unique().tolist()) == {0, VALID_IDS[14]}
    assert torch.equal(item["masks"][3], label) and (item["masks"][[0, 1, 2, 4, 5]] == IGNORE_INDEX).all()
    assert torch.equal(label, torch.from_numpy(read_annotation(a2d_dir / "Release/Annotations/mat/vid002/00005.mat")))
    # Frames: ImageNet-normalised pixels; the square is where the label is (frame 5 = clip index 3).
    raw = test[1]["frames"]
    assert raw.mean() < 0  # dark noise, normalised
    train = A2DDataset(a2d_dir, "train", size=(32, 48), seed=0)
    assert len(train) == 2  # one item per video
    it = train[0]
    assert it["masks"].shape == (6, 32, 48) and it["frame"] in (2, 5, 9)
    assert (it["masks"] != IGNORE_INDEX).sum() == 32 * 48


def test_loader_errors_name_the_path_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVT_A2D_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="--a2d_root"):
        a2d_root()
    root = make_synthetic_a2d(tmp_path / "a2d", num_train=1, num_test=1, num_frames=8, size_hw=(32, 32))
    (root / "frames/vid001/00004.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="00004.png"):
        A2DDataset(root, "test", size=None)[0]


# ----------------------------------------------------------------------------- loss and metrics


def test_focal_loss_on_annotated_frame_by_hand():
    # 2 classes, logits (0, log 3) → p = (1/4, 3/4) at every pixel of a 1×1 map.
    logits = torch.zeros(1, 2, 2, 1, 1)
    logits[:, 1] = math.log(3)
    masks = torch.tensor([[[[1, 0]], [[IGNORE_INDEX, IGNORE_INDEX]]]])  # frame 0 annotated: pixels 1 and 0
    out = A2DCriterion()({"pred_masks": logits, "aux_pred_masks": logits}, masks)
    # upsampled to 1×2; pixel class 1: −(1/4)² log(3/4), pixel class 0: −(3/4)² log(1/4)
    expected = (-(0.25 ** 2) * math.log(0.75) - (0.75 ** 2) * math.log(0.25)) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert "loss_aux" not in out  # the same tensor: no label propagation, no aux term
    crit = A2DCriterion(aux_weight=0.5)
    crit.epoch_scale = math.exp(-0.2)
    out2 = crit({"pred_masks": logits, "aux_pred_masks": logits.clone()}, masks)
    assert out2["loss"].item() == pytest.approx(1.5 * expected * math.exp(-0.2), rel=1e-6)


def test_original_metric_is_pixel_pooled_and_handles_nan():
    gt = torch.zeros(10, 11, dtype=torch.long)
    gt[:, :10] = 11  # 100 px of 11
    gt[:, 10] = 22  # 10 px of 22
    pred = torch.where(gt > 0, torch.tensor(11), gt)
    assert frame_score(pred, gt) == pytest.approx(100 / 110)  # spec §A.8 example: 0.909
    cm = ConfusionMatrix()
    cm.update(pred, gt)
    iou = cm.iou()
    assert iou[11] == pytest.approx(1.0 * 100 / 110) and iou[22] == 0.0
    assert cm.compute()["class_miou"] == pytest.approx((100 / 110 + 0) / 2)  # 0.455
    assert cm.compute()["num_classes_scored"] == 2
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert math.isnan(frame_score(empty, empty))
    m = OriginalA2DMetric()
    m.update("a", 1, pred, gt)
    m.update("a", 2, empty, empty)  # NaN frame: skipped by default
    m.update("b", 1, empty, empty)  # a video with only NaN frames: out of the mean
    m.update("c", 1, torch.full((2, 2), 11), torch.full((2, 2), 12))  # all wrong: 0
    r = m.compute()
    assert r["miou_original"] == pytest.approx((100 / 110 + 0) / 2)
    assert r["num_nan_frames"] == 2 and r["num_videos"] == 3
    nan = OriginalA2DMetric(nan_policy="nan")
    nan.frames = m.frames
    assert math.isnan(nan.compute()["miou_original"])
    last = OriginalA2DMetric(protocol="555a462")
    last.update("a", 1, pred, gt)
    last.update("a", 2, torch.full((2, 2), 11), torch.full((2, 2), 11))
    assert last.compute()["miou_original"] == 1.0  # only the last evaluated frame counts
    table = cm.table()
    assert len(table) == 43 and table[0]["name"] == "adult-climbing"


# ----------------------------------------------------------------------------- scripts
def test_train_step_then_inference_with_metrics_and_overlays(a2d_dir, tmp_path, fake_tensorboard):
    out = tmp_path / "train"
    common = ["--model", "tiny", "--a2d_root", str(a2d_dir), "--clip_size", "32", "48", "--device", "cpu"]
    res = train_medvt_a2d.main(common + ["--lprop_mode", "2", "--lprop_scale", "4", "--epochs", "1",
                                         "--num_workers", "0", "--val_items", "2", "--output_dir", str(out),
                                         "--tensorboard"])
    assert fake_tensorboard[0]["scalars"][("loss_aux", 0)] == res["loss_aux"] and fake_tensorboard[0]["closed"]
    assert_epoch_lines(out / "train.log", 1, res["best"], "loss_aux")
    assert res["epochs_done"] == 1 and math.isfinite(res["loss"]) and res["loss_aux"] > 0
    assert 0.0 <= res["miou_original"] <= 1.0 or math.isnan(res["miou_original"])
    ckpt = read_checkpoint(out / "checkpoint_last.pth")
    assert ckpt["config"]["num_classes"] == 80 and ckpt["config"]["lprop_mode"] == 2 and ckpt["task"] == "a2d"
    assert res["history"][0]["lr"] == pytest.approx(1e-4)  # non-backbone group during epoch 0

    inf = tmp_path / "inf"
    r = inference_medvt_a2d.main(common[2:] + ["--model_path", str(out / "checkpoint_last.pth"), "--output_dir",
                                               str(inf), "--save_pred", "--save_gt_overlay"])
    assert r["num_frames"] == 6 and r["num_videos"] == 2
    assert math.isfinite(r["class_miou"]) or r["num_classes_scored"] == 0
    assert (inf / "results.json").is_file() and (inf / "per_class_iou.csv").read_text().count("\n") == 44
    assert len(list((inf / "viz" / "pred_overlay").rglob("*.png"))) == 6
    assert len(list((inf / "viz" / "gt_overlay").rglob("*.png"))) == 6
    assert Image.open(next((inf / "viz" / "color_mask").rglob("*.png"))).size == (64, 48)
    # a model flag whose model the weights do not fit is named in one line (it was the key mismatch list)
    with pytest.raises(CheckpointMismatchError, match=r"^--num_classes 81 \(the file's model has 80\): the weights of "
                                                      r"--model_path .* do not fit the model these flags make; leave "
                                                      r"them out$"):
        inference_medvt_a2d.main(common[2:] + ["--model_path", str(out / "checkpoint_last.pth"), "--num_classes",
                                               "81", "--output_dir", str(tmp_path / "inf81")])
    with pytest.raises(SystemExit):  # a clip of one frame: refused as in VSS (the model attends across frames)
        inference_medvt_a2d.main(common[2:] + ["--model_path", str(out / "checkpoint_last.pth"), "--num_frames", "1"])


def test_inference_reads_query_decoder_scales_from_original_args():
    get_args_parser, model_config = inference_medvt_a2d.get_args_parser, a2d_common.model_config
    args = get_args_parser().parse_args(["--model_path", "x.pth"])
    assert model_config(args, {"model": {}}, inference=True).query_decoder_scales == 1  # original inference default
    saved = {"model": {}, "args": argparse.Namespace(query_decoder_scales=3, lprop_mode=0, dim_feedforward=1024)}
    assert model_config(args, saved, inference=True).query_decoder_scales == 3
    r101 = get_args_parser().parse_args(["--model_path", "x.pth", "--backbone", "resnet101"])
    cfg = model_config(r101, {"model": {}}, inference=True)
    assert cfg.backbone == "resnet101" and cfg.query_decoder_scales == 3 and cfg.num_classes == 80


def test_backbone_lr_is_zero_in_epoch_0_then_lr_backbone():
    set_backbone_lr = train_medvt_a2d.set_backbone_lr
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-4, "name": "non_backbone"},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-5, "name": "backbone"}])
    set_backbone_lr(opt, 0, 1e-5)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 0.0]
    set_backbone_lr(opt, 1, 1e-5)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-5]


def test_matlab_v73_annotation_is_read_with_h5py_and_transposed(tmp_path):
    # MATLAB v7.3 = HDF5 after a 512-byte header, arrays stored column-major (axes reversed).
    import h5py  # in requirements.txt: A2D ships its annotations as MATLAB v7.3 files
    label = np.zeros((4, 6), np.float64)  # [H, W] as MATLAB sees it
    label[1, 4] = 11
    label[3, 0] = 79
    path = tmp_path / "00025.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["reS_id"] = label.T
    with open(path, "r+b") as f:  # MATLAB's header: 116 bytes of text, 8 of subsystem offset, version 2, "IM"
        f.write(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + bytes(8) + b"\x00\x02IM")
    out = read_annotation(path)
    assert out.dtype == np.int64 and out.shape == (4, 6)
    assert out[1, 4] == 11 and out[3, 0] == 79 and out.sum() == 90


def test_unidirectional_label_propagation_matches_original():
    # lprop_mode 1 (spec a2d §A.4): the last frame's labels from the earlier frames; its WV value
    # projections are used (unlike mode 2), so every original entry but samp_w_pred maps onto ours.
    model = build_model("medvt_swinb_a2d", lprop_mode=1).eval()
    rows = read_key_list(A2D_FIXTURES / "swinb_lprop1_keys.tsv")
    unused = {n for n, _, _ in rows if "samp_w_pred" in n}
    _check_keys_and_load(model, "swinb_lprop1_keys.tsv", 127_885_202 - sum(math.prod(s) for n, s, _ in rows
                                                                            if n in unused), 687)
    out, expected = _logits(model, "swinb_lprop1_T6_128x192_seed0.pt", (128, 192))
    assert out.shape == expected.shape == (80, 6, 16, 24)
    assert (out - expected).abs().max().item() < 1e-4


def test_video_input_segments_every_frame_as_the_model_computes_it(a2d_dir, tmp_path, monkeypatch, capsys):
    """--video (a frame folder or a video file, no A2D data) streams a user's video in consecutive clips:
    each frame's palette PNG is the arg-max of the model's logits for the clip that keeps it, upsampled
    to the frame size; the overlay video has every frame, summary.json names the classes."""
    import json

    import av
    import torch.nn.functional as F

    from datasets.stream import ImageFiles
    from models.config import get_config

    monkeypatch.setenv("MEDVT_A2D_ROOT", str(tmp_path / "no_a2d_here"))
    torch.manual_seed(0)
    model = build_model(get_config("tiny").replace(num_classes=80)).eval()
    ckpt = tmp_path / "a2d.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    frames = sorted((a2d_dir / "frames" / "vid002").glob("*.png"))
    common = ["--model_path", str(ckpt), "--clip_size", "32", "48", "--device", "cpu"]
    res = inference_medvt_a2d.main(common + ["--video", str(frames[0].parent), "--output_dir", str(tmp_path / "out")])
    pngs = sorted((tmp_path / "out" / "predictions" / "vid002").glob("*.png"))
    assert [p.name for p in pngs] == [f.name for f in frames] and len(pngs) == 10
    # chunks of 6: frames 0-5 from the first clip, 6-9 from the last one (frames 4-9)
    items = torch.stack([x for x, _ in ImageFiles(frames, lambda h, w: (32, 48))])
    with torch.no_grad():
        first, last = (model(items[None, a:a + 6])["pred_masks"][0] for a in (0, 4))  # [80, 6, h, w]

    def ids(logits: torch.Tensor, pos: int) -> np.ndarray:
        up = F.interpolate(logits[None, :, pos], size=(48, 64), mode="bilinear", align_corners=False)
        return up[0].argmax(0).numpy()

    expected = [ids(first, i) for i in range(6)] + [ids(last, i) for i in range(2, 6)]
    got = [np.asarray(Image.open(p)) for p in pngs]
    assert Image.open(pngs[0]).mode == "P" and got[0].shape == (48, 64)
    assert len(np.unique(np.stack(got))) > 1  # not a trivially constant prediction
    for i, (e, g) in enumerate(zip(expected, got)):
        assert np.array_equal(e, g), f"frame {i}"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 10 and abs(sum(summary["class_shares"].values()) - 1) < 1e-6
    assert summary["class_names"] == {str(c): class_name(c) for c in res["class_shares"]}
    assert summary["settings"] == {"num_frames": 6, "clip_size": [32, 48], "amp": "none"}
    with av.open(res["overlay_video"]) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
    printed = capsys.readouterr().out
    assert "10 frames, clips of 6 at 32x48" in printed and ("most pixels: " in printed or "no actor" in printed)
    # a video file: one PNG per decoded frame; the overlay plays its sound
    from tests.test_stream_io import _dominant_hz, _tone, encode_voiced, read_sound

    mp4 = encode_voiced(tmp_path / "clip.mp4", [np.asarray(Image.open(f).convert("RGB")) for f in frames],
                        _tone(1.0, 440, 22050))
    res = inference_medvt_a2d.main(common + ["--video", str(mp4), "--output_dir", str(tmp_path / "file")])
    assert res["frames"] == 10 and len(list((tmp_path / "file" / "predictions" / "clip").glob("*.png"))) == 10
    codec, rate, seconds, sound = read_sound(res["overlay_video"])
    assert res["overlay_sound"] == codec == "aac" and seconds == pytest.approx(1.0, abs=0.06)
    assert _dominant_hz(sound[2205:], rate) == pytest.approx(440, abs=10)
    # flags of a split evaluation are refused, not ignored; a missing video stops before any folder is made
    with pytest.raises(SystemExit):
        inference_medvt_a2d.main(common + ["--video", str(mp4), "--save_pred", "--max_items", "3"])
    assert "--max_items, --save_pred apply to an A2D split, not to --video" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference_medvt_a2d.main(common + ["--video", str(mp4), "--a2d_root", str(a2d_dir)])
    assert "--a2d_root applies to an A2D split, not to --video" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # written at its default value: still a flag that does nothing here
        inference_medvt_a2d.main(common + ["--video", str(mp4), "--split", "test", "--nan_policy=skip"])
    assert "--split, --nan_policy apply to an A2D split, not to --video" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--video .*none.mp4 does not exist"):
        inference_medvt_a2d.main(common + ["--video", str(tmp_path / "none.mp4"), "--output_dir",
                                           str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
