"""Evaluate MED-VT on A2D actor-action segmentation (the original's protocol, spec a2d §A.8), or
segment a user's video into actor-action classes (``--video``).

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
original's 3-frame clip without the annotated frame); the NaN frames (#3) are handled explicitly;
the colour map is optional (#7; a built-in palette otherwise); CPU works (#11); no hard-coded paths.

Outputs in ``--output_dir``: ``results.json`` (summary), ``per_video.csv``, ``per_class_iou.csv``,
and with ``--save_pred`` ``viz/color_mask/<vid>/<frame>.png`` (palette PNG of the predicted ids)
and ``viz/pred_overlay/<vid>/<frame>.png`` (colours blended with alpha 0.8 on foreground);
``--save_gt_overlay`` adds ``viz/gt_overlay/<vid>/<frame>.png``.

``--video PATH`` segments any video instead (a video file or a folder of frames, streamed in
bounded memory, no A2D data needed): consecutive clips of ``--num_frames`` frames resized to
``--clip_size``, every frame's classes as a palette PNG ``predictions/<video>/<frame>.png`` at the
frame size, an overlay video ``overlays/<video>.mp4``, and ``summary.json`` with the speed and the
share of pixels of each predicted actor-action class; no metrics.

Examples::

    python actor_action/inference_medvt_a2d.py --backbone swinB --model_path swin_medvt_a2d.pth \\
        --a2d_root /data/A2D --output_dir out/a2d_swinb
    python actor_action/inference_medvt_a2d.py --model_path swin_medvt_a2d.pth --video dog_running.mp4
    torchrun --nproc_per_node 4 actor_action/inference_medvt_a2d.py --model_path swin_medvt_a2d.pth \\
        --a2d_root /data/A2D --output_dir out/a2d_swinb

Under torchrun each process (one per GPU) scores every N-th annotated frame and writes its pictures;
the scores are gathered in the frames' order, so the numbers are one process's, and rank 0 writes them.
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from pathlib import Path

import numpy as np
import torch

from actor_action.common import (BACKBONE_PRESETS, MODEL_FLAGS, add_model_args, evaluate_a2d, format_shares,
                                 format_summary, model_config, open_user_video, segment_video, write_tables)
from actor_action.metrics import NAN_POLICIES, PROTOCOLS
from datasets.a2d import CLIP_SIZE, NUM_CLASSES, A2DDataset, a2d_root, class_name, default_palette, read_color_map
from datasets.path_config import add_path_args, dataset_root
from models import CheckpointMismatchError, MedVTConfig, read_checkpoint
from models.registry import build_loaded, flags_do_not_fit
from models.tasks import TASKS, check_task
from utils.cli import (ArgumentParser, UserError, add_debug_flag, add_overlay_fps_flag, check_overlay_fps, clip_frames,
                       non_negative_int, positive_int, refuse_unused, require_file, run_main)
from utils.distributed import (DistInfo, add_device_flag, default_run_folder, one_process_only, process_group,
                               shared_run_folder)
from utils.engine import AMP_DTYPES, add_inference_amp_flag, check_frame_size
from utils.metrics import write_json
from utils.outputs import add_overwrite_flag, check_output_dir, incomplete_marker


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    p.add_argument("--model_path", required=True, metavar="PATH",
                   help="checkpoint: the authors' A2D release or ours (train_medvt_a2d.py)")
    g = p.add_argument_group("data")
    add_path_args(g, ["a2d"])
    g.add_argument("--video", type=Path, default=None, metavar="PATH",
                   help="segment this video instead of an A2D split: a video file (decoded with PyAV/FFmpeg) or a "
                        "folder of image frames (in natural order: frame2 before frame10); writes palette PNGs, an "
                        "overlay video and summary.json, no metrics")
    add_overlay_fps_flag(g)
    g.add_argument("--split", default="test", choices=("train", "test"), help="videoset.csv split to evaluate")
    g.add_argument("--num_frames", type=clip_frames, default=6,
                   help="clip length: around each annotated frame (with --video: consecutive clips)")
    g.add_argument("--clip_size", type=positive_int, nargs=2, default=list(CLIP_SIZE), metavar=("H", "W"),
                   help="clip resize (the original: 320 480, aspect ratio not kept)")
    g.add_argument("--end_window", default="clamp", choices=("clamp", "original"),
                   help="clip near a video's end: clamp = 6 frames inside the video (default); original = the "
                        "authors' half-length clip of the frames before the annotated one, whose last frame's "
                        "prediction is scored against the annotation")
    g.add_argument("--max_items", type=non_negative_int, default=0,
                   help="evaluate the first N annotated frames only (0 = all)")
    g = p.add_argument_group("metric and output")
    g.add_argument("--nan_policy", default="skip", choices=NAN_POLICIES,
                   help="frames with no foreground in GT nor prediction: skip (default) or nan (the original)")
    g.add_argument("--protocol", default="head", choices=PROTOCOLS,
                   help="per-video averaging: head = all annotated frames (README 45.7/57.3); 555a462 = last frame")
    g.add_argument("--output_dir", default=None,
                   help="results.json, CSV tables, viz/ (with --video: predictions/, overlays/, summary.json): a new "
                        "or empty folder (see --overwrite), outside the data; default a new folder next to "
                        "--model_path, a2d_inference_<unix time> or a2d_video_<video name>_<unix time>")
    add_overwrite_flag(g)
    g.add_argument("--save_pred", action="store_true", help="write colour masks and prediction overlays")
    g.add_argument("--save_gt_overlay", action="store_true", help="write ground-truth overlays")
    g.add_argument("--color_map", default=None, metavar="PATH",
                   help="the original's color_map.txt for names and colours (default: <a2d_root>/color_map.txt "
                        "if present, else a built-in palette)")
    add_device_flag(g)
    add_inference_amp_flag(g)
    add_debug_flag(p)
    return p


# Flags of a split evaluation, refused with --video when given.
SPLIT_ONLY = ("a2d_root", "split", "end_window", "max_items", "nan_policy", "protocol", "save_pred", "save_gt_overlay")


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.video is not None:
        refuse_unused(parser, args, SPLIT_ONLY, "to an A2D split, not to --video (which always writes its predictions "
                      "and an overlay video)", argv)
        one_process_only("--video", "a split's annotated frames")
    check_overlay_fps(parser, args, argv)
    inputs = {"--a2d_root": dataset_root("a2d", args.a2d_root) if args.video is None else None,
              "--color_map": args.color_map, "--model_path": args.model_path, "--video": args.video}
    # The output folder is checked before anything is read, so a mistake there costs nothing; without
    # --output_dir every run gets a new folder, so running twice never mixes two runs.
    if args.output_dir:
        check_output_dir(args.output_dir, "--output_dir", inputs, args.overwrite)
    # A video is read through once now, before the checkpoint: a file that cannot be decoded stops at once.
    video = open_user_video(args.video, args.clip_size, args.num_frames) if args.video is not None else None
    root = a2d_root(args.a2d_root) if video is None else None
    with process_group(args.device) as proc:  # under torchrun each process scores every N-th annotated frame
        return predict(args, proc, inputs, video, root)


def predict(args: argparse.Namespace, proc: DistInfo, inputs: dict, video, root: Path | None) -> dict:
    """The run once its flags and inputs are checked: the model, the output folder, the predictions."""
    device, say = proc.device, print if proc.is_main else (lambda *_a: None)
    model, cfg, source = load_a2d_model(args, device)
    names, palette = class_colours(args, dataset_root("a2d", args.a2d_root))
    out = Path(args.output_dir) if args.output_dir else \
        default_run_folder(f"a2d_video_{video.name}" if video else "a2d_inference", args.model_path, inputs,
                           args.overwrite)
    described = (f"model from {source} ({cfg.backbone} backbone, query_decoder_scales {cfg.query_decoder_scales}, "
                 f"lprop_mode {cfg.lprop_mode}) on {device}")
    if video is not None:
        print(f"{video.name}: {len(video)} frames, clips of {args.num_frames} at {args.clip_size[0]}x"
              f"{args.clip_size[1]}; {described}")
        with incomplete_marker(out):  # left in place by an error or Ctrl-C: the outputs are partial
            result = segment_video(model, video, device, out, args.num_frames, palette, names, AMP_DTYPES[args.amp],
                                   fps=args.fps)
            result["settings"] = {"num_frames": args.num_frames, "clip_size": list(args.clip_size), "amp": args.amp}
            write_json(out / "summary.json", result)
        print(f"{format_shares(result)}\nwrote {out / 'predictions' / video.name}/*.png and the overlay video "
              f"{result['overlay_video']}")
        return result
    dataset = A2DDataset(root, args.split, args.num_frames, tuple(args.clip_size), args.end_window)
    say(f"A2D {args.split}: {len(dataset)} annotated frames; {described}"
        + (f"; {proc.world_size} processes, each scoring 1 frame in {proc.world_size}" if proc.distributed else ""))
    if dataset.shortfall:
        say(f"warning: {dataset.shortfall}")
    with shared_run_folder(out):  # left in place by an error or Ctrl-C: the outputs are partial
        summary, metric, cm = evaluate_a2d(model, dataset, device, args.nan_policy, args.protocol, args.max_items,
                                           out / "viz" if args.save_pred or args.save_gt_overlay else None,
                                           args.save_gt_overlay, palette, AMP_DTYPES[args.amp])
        if proc.is_main:
            write_tables(out, summary, metric, cm, names)
    say(format_summary(summary))
    return {**summary, "output_dir": str(out), "query_decoder_scales": cfg.query_decoder_scales}


def load_a2d_model(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, MedVTConfig, str]:
    """The model of --model_path (its own config, else the --backbone preset with the original's saved
    arguments), checked to take --clip_size; returns (model, config, where the config came from)."""
    ckpt = read_checkpoint(args.model_path)
    check_task(ckpt, "a2d", f"--model_path {args.model_path}", TASKS["a2d"].infer, args.num_classes is not None)
    try:
        cfg = model_config(args, ckpt, inference=True)
    except UserError as e:  # e.g. a MED-VT++ (AVS) checkpoint: name the file
        raise UserError(f"--model_path {args.model_path}: {e}") from None
    # Name what was actually built: our checkpoints carry their own config, whatever --backbone says.
    source = ("the checkpoint's own config" if isinstance(ckpt.get("config"), dict)
              else f"preset {args.model or BACKBONE_PRESETS[args.backbone]}")
    try:
        model = build_loaded(ckpt, cfg, str(args.model_path))
    except CheckpointMismatchError:
        recorded = model_config(args, ckpt, inference=True, flags=False)
        flags = flags_do_not_fit({k: getattr(args, k, None) for k in MODEL_FLAGS}, recorded,
                                 f"--model_path {args.model_path}")
        if flags is None:
            raise
        raise flags from None
    model.to(device)
    check_frame_size(model, device, {"--clip_size": tuple(args.clip_size)}, f"the model of {args.model_path}")
    return model, cfg, source


def class_colours(args: argparse.Namespace, root: Path) -> tuple[list[str], np.ndarray]:
    """Class names and colours: --color_map, else <a2d_root>/color_map.txt when there is one, else built in."""
    cmap = require_file(args.color_map, "--color_map") if args.color_map else root / "color_map.txt"
    if args.color_map or cmap.is_file():
        return read_color_map(cmap)
    return [class_name(i) for i in range(NUM_CLASSES)], default_palette()


if __name__ == "__main__":
    run_main(main)
