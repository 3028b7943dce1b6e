"""A2D pieces shared by ``actor_action/train_medvt_a2d.py`` and ``inference_medvt_a2d.py``: the model flags
and config (the checkpoint's own, else the preset with the original's saved arguments and its
inference defaults), evaluation over the annotated frames through the shared predictor, the
tables and pictures written, and a user's video segmented."""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from actor_action.metrics import ConfusionMatrix, OriginalA2DMetric, frame_score
from datasets.a2d import NUM_CLASSES, A2DDataset, default_palette
from datasets.stream import ImageFiles, Prefetch, VideoFile, open_video
from datasets.video import open_image
from models.config import MODEL_CONFIGS, MedVTConfig, get_config, preset_name
from models.predictor import VideoPredictor, Window
from models.registry import saved_arg_changes, saved_args
from utils.cli import positive_float, positive_int
from utils.distributed import all_gather_object, gather_in_order, is_main_process, shard
from utils.logger import progress
from utils.metrics import write_json
from utils.outputs import writing
from utils.visualize import label_image, write_label_video

BACKBONE_PRESETS = {"swinB": "medvt_swinb_a2d", "resnet101": "medvt_r101_a2d"}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model flags shared by the A2D train and inference scripts (the original's names)."""
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="swinB", choices=sorted(BACKBONE_PRESETS),
                   help="swinB → preset medvt_swinb_a2d, resnet101 → medvt_r101_a2d")
    g.add_argument("--model", default=None, type=preset_name, choices=sorted(MODEL_CONFIGS),
                   help="model config preset, overriding --backbone (e.g. tiny for tests)")
    g.add_argument("--num_classes", type=positive_int, default=None, help="output classes (default 80 = raw A2D ids)")
    g.add_argument("--lprop_mode", type=int, default=None, choices=(0, 1, 2),
                   help="label propagation: 0 off (A2D default at HEAD), 1 unidirectional (last frame from the "
                        "earlier ones), 2 bidirectional many-to-many; the original's 3 crashes and is refused")
    g.add_argument("--lprop_scale", type=positive_float, default=None,
                   help="label-map upsampling before the label encoder (A2D: 16)")
    g.add_argument("--query_decoder_scales", type=int, default=None, choices=(1, 2, 3),
                   help="memories the query decoder cycles over (train default 3; inference: the checkpoint's "
                        "saved value, else 1 as the original inference script)")


MODEL_FLAGS = ("num_classes", "lprop_mode", "lprop_scale", "query_decoder_scales")  # config fields set by flags


def model_config(args: argparse.Namespace, ckpt: dict | None = None, inference: bool = False,
                 flags: bool = True) -> MedVTConfig:
    """The model config: the checkpoint's own (ours) or the preset + the original's saved args, then
    (``flags``) the model flags given."""
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        cfg = MedVTConfig.from_dict(ckpt["config"])
    else:
        cfg = get_config(args.model or BACKBONE_PRESETS[args.backbone])
        changes = saved_arg_changes(ckpt, cfg) if ckpt is not None else {}
        saved = saved_args(ckpt) if ckpt is not None else {}
        if saved.get("query_decoder_scales") is None and inference and cfg.backbone == "swin":
            changes["query_decoder_scales"] = 1  # the original inference script's default (spec §A.10 #1)
        if cfg.backbone != "swin":
            changes.pop("query_decoder_scales", None)  # hard-coded 3 in the original ResNet model
        cfg = cfg.replace(**changes)
    given = {k: getattr(args, k) for k in MODEL_FLAGS if flags and getattr(args, k, None) is not None}
    if cfg.num_classes == 1 and "num_classes" not in given:
        given["num_classes"] = NUM_CLASSES
    return cfg.replace(**given)


def blend(frame: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour the foreground pixels of ``frame`` [H, W, 3] uint8 with alpha ``alpha``, as the original."""
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * palette[ids[fg]].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate_a2d(model: torch.nn.Module, dataset: A2DDataset, device: torch.device, nan_policy: str = "skip",
                 protocol: str = "head", max_items: int = 0, viz_dir: Path | None = None, save_gt: bool = False,
                 palette: np.ndarray | None = None, amp_dtype: torch.dtype | None = None,
                 ) -> tuple[dict, OriginalA2DMetric, ConfusionMatrix]:
    """Run the model over ``dataset`` (test items) and score it; returns (summary, original metric, confusion)."""
    # One clip per annotated frame (the dataset's clip), its logits at the label size: the shared predictor.
    predictor = VideoPredictor(model, "chunk", dataset.num_frames, activation="none", amp_dtype=amp_dtype)
    metric, cm = OriginalA2DMetric(nan_policy, protocol), ConfusionMatrix()
    palette = default_palette() if palette is None else palette
    n = len(dataset) if max_items <= 0 else min(max_items, len(dataset))
    scores = {}  # item index → (video, frame, score); under torchrun each process takes its share
    for i in progress(shard(n), desc="A2D eval", disable=not is_main_process()):
        item = dataset[i]
        label = item["label"]
        [(_, logits)] = predictor.predict_clips(item["frames"][None], [{0: item["gt_index"]}],
                                                lambda _f, hw=tuple(label.shape): hw)
        pred = logits.argmax(0)
        scores[i] = (item["name"], item["frame"], frame_score(pred, label))
        cm.update(pred, label)
        if viz_dir is not None:
            _save_viz(viz_dir, dataset, item, pred.numpy(), label.numpy(), palette, save_gt)
    for video, frame, score in gather_in_order(scores):  # in item order: the per-video means of one process
        metric.add(video, frame, score)
    cm.mat = sum(all_gather_object(cm.mat))  # pixel counts: the same sum in any order
    summary = {**metric.compute(), **cm.compute()}
    return summary, metric, cm


def open_user_video(path: Path, clip_size: tuple[int, int], num_frames: int) -> ImageFiles | VideoFile:
    """``--video``: a video file or a folder of frames, checked completely before anything is written,
    decoded lazily and resized to ``clip_size`` (H, W; the aspect ratio is not kept, as in training)."""
    return open_video(path, lambda _h, _w: tuple(clip_size), keep_rgb=True, flag="--video", min_frames=2,
                      tail_keep=num_frames)


@torch.no_grad()
def segment_video(model: torch.nn.Module, source: ImageFiles | VideoFile, device: torch.device, output_dir: Path,
                  num_frames: int, palette: np.ndarray, names: list[str], amp_dtype: torch.dtype | None = None,
                  fps: float = 10) -> dict:
    """Every frame of a user's video (:func:`open_user_video`) segmented into actor-action classes: clips
    of ``num_frames`` consecutive frames (``chunk`` window: one forward per clip, every frame kept), the
    logits upsampled to the frame size and arg-maxed; palette PNGs and an overlay video coloured as the
    evaluation's overlays (:func:`utils.visualize.write_label_video`). The result adds the names of the
    classes predicted."""
    predictor = VideoPredictor(model.to(device), Window("chunk", num_frames), activation="none", amp_dtype=amp_dtype)
    predictions = predictor.class_ids(Prefetch(source, 8), source.frame_hw)
    result = write_label_video(predictions, source, output_dir, palette, model.num_classes,
                               lambda rgb, ids: blend(rgb, ids, palette), fps)
    return {**result, "class_names": {c: names[c] if c < len(names) else str(c) for c in result["class_shares"]}}


def format_shares(result: dict, top: int = 5) -> str:
    """The ``top`` actor-action classes by share of the video's pixels, background left out."""
    fg = sorted(((share, c) for c, share in result["class_shares"].items() if c != 0), reverse=True)
    if not fg:
        return "no actor found: every pixel is background"
    return "most pixels: " + ", ".join(f"{result['class_names'][c]} {100 * share:.1f}%" for share, c in fg[:top])


def _save_viz(viz_dir: Path, dataset: A2DDataset, item: dict, pred: np.ndarray, gt: np.ndarray,
              palette: np.ndarray, save_gt: bool) -> None:
    vid, fid = item["name"], f"{item['frame']:05d}"
    # open_image as the model's input: PIL's own convert clips a 16-bit frame at 255 (a washed-out overlay)
    frame = open_image(dataset.frame_root / vid / f"{fid}.png", "RGB").resize(pred.shape[::-1], Image.BILINEAR)
    frame = np.asarray(frame)
    pictures = [("color_mask", label_image(pred, palette)),
                ("pred_overlay", Image.fromarray(blend(frame, pred, palette)))]
    if save_gt:
        pictures.append(("gt_overlay", Image.fromarray(blend(frame, gt, palette))))
    for sub, img in pictures:
        path = viz_dir / sub / vid / f"{fid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with writing(path):
            img.save(path)


def write_tables(out: Path, summary: dict, metric: OriginalA2DMetric, cm: ConfusionMatrix, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", summary)
    with open(out / "per_video.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "score", "frames"])
        for vid, score in metric.video_scores().items():
            w.writerow([vid, f"{score:.6f}", " ".join(f"{fr}:{s:.4f}" for fr, s in metric.frames[vid])])
    with open(out / "per_class_iou.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "iou", "gt_pixels", "pred_pixels"])
        for row in cm.table():
            w.writerow([row["id"], names[row["id"]], f"{row['iou']:.6f}", row["gt_pixels"], row["pred_pixels"]])


def format_summary(s: dict) -> str:
    """One line, in percent as the paper prints them (results.json keeps fractions)."""
    return (f"A2D mIoU (original protocol) {100 * s['miou_original']:.2f}%  class mIoU (43 classes) "
            f"{100 * s['class_miou']:.2f}%  over {s['num_frames']} frames / {s['num_videos']} videos "
            f"({s['num_nan_frames']} frames without foreground)")
