"""Evaluate MED-VT on A2D actor-action segmentation (the original's protocol, spec a2d §A.8).

For every annotated test frame: the 6-frame clip around it (resized to 320 × 480), one forward
pass (no flip, no multi-scale), logits of the annotated frame upsampled bilinearly to the
annotation size, argmax over the 80 classes. Reported:

* ``miou_original`` — the authors' "mIoU" (README: 45.7 ResNet-101, 57.3 Swin-B): per-frame
  pixel-pooled class-aware foreground IoU, averaged per video, then over videos
  (``--protocol head``; ``555a462`` = last frame per video, the CVPR'23 code). Frames with neither
  GT nor predicted foreground are 0/0: skipped by default (``--nan_policy skip``), NaN as the
  original with ``--nan_policy nan``;
* ``class_miou`` — the standard mIoU over the 43 valid actor-action classes from a pixel
  confusion matrix, and a per-class IoU table (``per_class_iou.csv``).

Bugs of the original fixed here (spec a2d §A.10), with defaults that keep the published numbers:
the query-decoder scale count is read from the checkpoint's saved ``args`` (the original's
inference default 1 is used only when the checkpoint does not record it, #1); the near-end clip
keeps 6 frames including the annotated one (#2, ``--end_window original`` restores the
original's 3-frame clip, which the model cannot run); the NaN frames (#3) are handled explicitly;
the colour map is optional (#7; a built-in palette otherwise); CPU works (#11); no hard-coded paths.

Outputs in ``--output_dir``: ``results.json`` (summary), ``per_video.csv``, ``per_class_iou.csv``,
and with ``--save_pred`` ``viz/color_mask/<vid>/<frame>.png`` (palette PNG of the predicted ids)
and ``viz/pred_overlay/<vid>/<frame>.png`` (colours blended with alpha 0.8 on foreground);
``--save_gt_overlay`` adds ``viz/gt_overlay/<vid>/<frame>.png``.

Example::

    python actor_action/inference_medvt_a2d.py --backbone swinB --model_path swin_medvt_a2d.pth \\
        --a2d_root /data/A2D --output_dir out/a2d_swinb
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actor_action.metrics import NAN_POLICIES, PROTOCOLS, ConfusionMatrix, OriginalA2DMetric  # noqa: E402
from datasets.a2d import (CLIP_SIZE, NUM_CLASSES, A2DDataset, a2d_root, class_name, default_palette,  # noqa: E402
                          read_color_map)
from datasets.path_config import add_path_args  # noqa: E402
from models import build_model, read_checkpoint  # noqa: E402
from models.config import MODEL_CONFIGS, MedVTConfig, get_config  # noqa: E402
from models.convert import checkpoint_state_dict, convert_original_state_dict, load_state_dict_strict  # noqa: E402
from models.predictor import VideoPredictor  # noqa: E402
from utils.cli import UserError, add_debug_flag, non_negative_int, positive_float, positive_int, run_main  # noqa: E402
from utils.distributed import default_device  # noqa: E402

BACKBONE_PRESETS = {"swinB": "medvt_swinb_a2d", "resnet101": "medvt_r101_a2d"}
# Original flags (saved in the authors' checkpoints' args) that change our model config.
_ARG_FIELDS = {"query_decoder_scales": int, "lprop_mode": int, "lprop_scale": float, "dim_feedforward": int,
               "dec_layers": int, "num_queries": int, "num_classes": int}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model flags shared by the A2D train and inference scripts (the original's names)."""
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="swinB", choices=sorted(BACKBONE_PRESETS),
                   help="swinB → preset medvt_swinb_a2d, resnet101 → medvt_r101_a2d")
    g.add_argument("--model", default=None, choices=sorted(MODEL_CONFIGS),
                   help="model config preset, overriding --backbone (e.g. tiny for tests)")
    g.add_argument("--num_classes", type=positive_int, default=None, help="output classes (default 80 = raw A2D ids)")
    g.add_argument("--lprop_mode", type=int, default=None, choices=(0, 1, 2),
                   help="label propagation: 0 off (A2D default at HEAD), 1 unidirectional (last frame from the "
                        "earlier ones), 2 bidirectional many-to-many; the original's 3 crashes and is refused")
    g.add_argument("--lprop_scale", type=positive_float, default=None, help="label-map upsampling before the label encoder (A2D: 16)")
    g.add_argument("--query_decoder_scales", type=int, default=None, choices=(1, 2, 3),
                   help="memories the query decoder cycles over (train default 3; inference: the checkpoint's "
                        "saved value, else 1 as the original inference script)")


def model_config(args: argparse.Namespace, ckpt: dict | None = None, inference: bool = False) -> MedVTConfig:
    """The model config: the checkpoint's own (ours) or the preset + the original's saved args, then flags."""
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        cfg = MedVTConfig.from_dict(ckpt["config"])
    else:
        cfg = get_config(args.model or BACKBONE_PRESETS[args.backbone])
        saved = ckpt.get("args") if ckpt is not None else None
        saved = vars(saved) if isinstance(saved, argparse.Namespace) else (saved or {})
        changes = {k: t(saved[k]) for k, t in _ARG_FIELDS.items() if k in saved and saved[k] is not None}
        if "query_decoder_scales" not in changes and inference and cfg.backbone == "swin":
            changes["query_decoder_scales"] = 1  # the original inference script's default (spec §A.10 #1)
        if cfg.backbone != "swin":
            changes.pop("query_decoder_scales", None)  # hard-coded 3 in the original ResNet model
        cfg = cfg.replace(**changes)
    flags = {k: getattr(args, k) for k in ("num_classes", "lprop_mode", "lprop_scale", "query_decoder_scales")
             if getattr(args, k, None) is not None}
    if cfg.num_classes == 1 and "num_classes" not in flags:
        flags["num_classes"] = NUM_CLASSES
    return cfg.replace(**flags)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--model_path", required=True, metavar="PATH",
                   help="checkpoint: the authors' A2D release or ours (train_medvt_a2d.py)")
    g = p.add_argument_group("data")
    add_path_args(g, ["a2d"])
    g.add_argument("--split", default="test", choices=("train", "test"), help="videoset.csv split to evaluate")
    g.add_argument("--num_frames", type=positive_int, default=6, help="clip length around each annotated frame")
    g.add_argument("--clip_size", type=positive_int, nargs=2, default=list(CLIP_SIZE), metavar=("H", "W"),
                   help="clip resize (the original: 320 480, aspect ratio not kept)")
    g.add_argument("--end_window", default="clamp", choices=("clamp", "original"),
                   help="clip near a video's end: clamp = 6 frames inside the video (default); original = the "
                        "authors' 3-frame clip without the annotated frame (the model cannot run it)")
    g.add_argument("--max_items", type=non_negative_int, default=0, help="evaluate the first N annotated frames only (0 = all)")
    g = p.add_argument_group("metric and output")
    g.add_argument("--nan_policy", default="skip", choices=NAN_POLICIES,
                   help="frames with no foreground in GT nor prediction: skip (default) or nan (the original)")
    g.add_argument("--protocol", default="head", choices=PROTOCOLS,
                   help="per-video averaging: head = all annotated frames (README 45.7/57.3); 555a462 = last frame")
    g.add_argument("--output_dir", default="outputs/medvt_a2d", help="results.json, CSV tables, viz/")
    g.add_argument("--save_pred", action="store_true", help="write colour masks and prediction overlays")
    g.add_argument("--save_gt_overlay", action="store_true", help="write ground-truth overlays")
    g.add_argument("--color_map", default=None, metavar="PATH",
                   help="the original's color_map.txt for names and colours (default: <a2d_root>/color_map.txt "
                        "if present, else a built-in palette)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_debug_flag(p)
    return p


def colorize(ids: np.ndarray, palette: np.ndarray) -> Image.Image:
    """[H, W] label ids → palette PNG."""
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(palette.astype(np.uint8).reshape(-1).tolist() + [0] * (768 - palette.size))
    return img


def blend(frame: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.8) -> np.ndarray:
    """Colour the foreground pixels of ``frame`` [H, W, 3] uint8 with alpha ``alpha``, as the original."""
    out = frame.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * palette[ids[fg]].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate_a2d(model: torch.nn.Module, dataset: A2DDataset, device: torch.device, nan_policy: str = "skip",
                 protocol: str = "head", max_items: int = 0, viz_dir: Path | None = None, save_gt: bool = False,
                 palette: np.ndarray | None = None) -> tuple[dict, OriginalA2DMetric, ConfusionMatrix]:
    """Run the model over ``dataset`` (test items) and score it; returns (summary, original metric, confusion)."""
    # One clip per annotated frame (the dataset's clip), its logits at the label size: the shared predictor.
    predictor = VideoPredictor(model, "chunk", dataset.num_frames, activation="none")
    metric, cm = OriginalA2DMetric(nan_policy, protocol), ConfusionMatrix()
    palette = default_palette() if palette is None else palette
    n = len(dataset) if max_items <= 0 else min(max_items, len(dataset))
    for i in tqdm(range(n), desc="A2D eval", dynamic_ncols=True, leave=False):
        item = dataset[i]
        label = item["label"]
        [(_, logits)] = predictor.predict_clips(item["frames"][None], [{0: item["gt_index"]}],
                                                lambda _f: tuple(label.shape))
        pred = logits.argmax(0)
        metric.update(item["name"], item["frame"], pred, label)
        cm.update(pred, label)
        if viz_dir is not None:
            _save_viz(viz_dir, dataset, item, pred.numpy(), label.numpy(), palette, save_gt)
    summary = {**metric.compute(), **cm.compute()}
    return summary, metric, cm


def _save_viz(viz_dir: Path, dataset: A2DDataset, item: dict, pred: np.ndarray, gt: np.ndarray,
              palette: np.ndarray, save_gt: bool) -> None:
    vid, fid = item["name"], f"{item['frame']:05d}"
    frame = Image.open(dataset.frame_root / vid / f"{fid}.png").convert("RGB").resize(pred.shape[::-1], Image.BILINEAR)
    frame = np.asarray(frame)
    for sub, img in (("color_mask", colorize(pred, palette)), ("pred_overlay", Image.fromarray(blend(frame, pred, palette)))) \
            + ((("gt_overlay", Image.fromarray(blend(frame, gt, palette))),) if save_gt else ()):
        path = viz_dir / sub / vid / f"{fid}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)


def write_tables(out: Path, summary: dict, metric: OriginalA2DMetric, cm: ConfusionMatrix, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                  for k, v in summary.items()}, indent=2) + "\n")
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
    return (f"A2D mIoU (original protocol) {100 * s['miou_original']:.2f}  class mIoU (43 classes) "
            f"{100 * s['class_miou']:.2f}  over {s['num_frames']} frames / {s['num_videos']} videos "
            f"({s['num_nan_frames']} frames without foreground)")


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device or default_device())
    root = a2d_root(args.a2d_root)
    ckpt = read_checkpoint(args.model_path)
    saved_classes = ckpt["config"].get("num_classes") if isinstance(ckpt.get("config"), dict) else None
    if saved_classes not in (None, NUM_CLASSES) and args.num_classes is None:
        task = "an AVOS (binary)" if saved_classes == 1 else f"a {saved_classes}-class"
        raise UserError(f"--model_path {args.model_path} holds {task} model, but A2D inference expects "
                        f"{NUM_CLASSES} classes; give an A2D checkpoint (train_medvt_a2d.py or the authors')")
    cfg = model_config(args, ckpt, inference=True)
    # Name what was actually built: our checkpoints carry their own config, whatever --backbone says.
    source = ("the checkpoint's own config" if saved_classes is not None
              else f"preset {args.model or BACKBONE_PRESETS[args.backbone]}")
    model = build_model(cfg)
    load_state_dict_strict(model, convert_original_state_dict(checkpoint_state_dict(ckpt), cfg), source=args.model_path)
    model.to(device)
    names = [class_name(i) for i in range(NUM_CLASSES)]
    palette = default_palette()
    cmap = Path(args.color_map) if args.color_map else root / "color_map.txt"
    if args.color_map or cmap.is_file():
        names, palette = read_color_map(cmap)
    dataset = A2DDataset(root, args.split, args.num_frames, tuple(args.clip_size), args.end_window)
    out = Path(args.output_dir)
    print(f"A2D {args.split}: {len(dataset)} annotated frames; model from {source} ({cfg.backbone} backbone, "
          f"query_decoder_scales {cfg.query_decoder_scales}, lprop_mode {cfg.lprop_mode}) on {device}")
    summary, metric, cm = evaluate_a2d(model, dataset, device, args.nan_policy, args.protocol, args.max_items,
                                       out / "viz" if args.save_pred or args.save_gt_overlay else None,
                                       args.save_gt_overlay, palette)
    write_tables(out, summary, metric, cm, names)
    print(format_summary(summary))
    return {**summary, "output_dir": str(out), "query_decoder_scales": cfg.query_decoder_scales}


if __name__ == "__main__":
    run_main(main)
