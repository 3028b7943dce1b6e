"""MED-VT video semantic segmentation: inference and evaluation on VSPW.

Every frame of every video of the split is predicted. Predictions are saved as palette PNGs
``<output_dir>/predictions/<video>/<frame>.png`` whose pixel values are the class ids 0..K-1
(raw VSPW label − 1, the dataset README's convention) and whose palette colours them, so one
file is both the coloured picture and the label map. With ground truth (``val``), mIoU and
mVC8 / mVC16 are computed as the VSPW authors' scripts do (:mod:`vss.metrics`) and written per
video and overall to ``results.json`` / ``results.csv``.

Clips: ``--window chunk`` (default) cuts each video into consecutive clips of ``--clip_len``
frames (the last one shifted back inside the video) and keeps every frame's prediction, one
forward per ``clip_len`` frames; ``--window centre`` predicts each frame as the centre of its own
wrap-around clip (the AVOS protocol, ``clip_len`` times slower).

``--video`` segments any video instead (a file or a folder of frames, streamed): palette PNGs, an
overlay video ``overlays/<video>.mp4`` and ``summary.json``; no metrics.

Several GPUs: ``torchrun --nproc_per_node N vss/inference_medvt_vss.py ...`` predicts a split with N
processes, each on its own GPU taking every N-th video and writing its PNGs; the metrics are those of
one process (the videos' scores are added up in their order) and rank 0 writes them.

Examples::

    python vss/inference_medvt_vss.py --model_path out/vss/checkpoint_best.pth \\
        --vspw_root /data/VSPW_480p --split val --output_dir out/vss_val
    python vss/inference_medvt_vss.py --model_path out/vss/checkpoint_best.pth --video clip.mp4
    torchrun --nproc_per_node 4 vss/inference_medvt_vss.py --model_path out/vss/checkpoint_best.pth \\
        --vspw_root /data/VSPW_480p --split val --output_dir out/vss_val
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from pathlib import Path

import torch

from datasets.path_config import add_path_args, dataset_root
from datasets.stream import require_video
from datasets.vspw import vspw_root, vspw_sequences
from models.config import preset_name
from models.onnx_export import runtime_record
from utils.cli import (ArgumentParser, UserError, add_debug_flag, add_overlay_fps_flag, check_overlay_fps, clip_frames,
                       non_negative_int, positive_int, refuse_unused, run_main)
from utils.distributed import (DistInfo, add_device_flag, default_run_folder, one_process_only, process_group,
                               shared_run_folder)
from utils.engine import (AMP_DTYPES, add_inference_amp_flag, add_runtime_flags, autocast, check_runtime_flags,
                          frames_too_small)
from utils.metrics import write_json, write_results
from utils.outputs import add_overwrite_flag, check_output_dir
from vss.common import (build_from_args, evaluate_videos, format_summary, onnx_from_args, open_user_video,
                        segment_video)
from vss.config import DEFAULT_CONFIG, config_names


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--model_path", default=None,
                   help="checkpoint to evaluate (one written by vss/train_medvt_vss.py records its model config); "
                        "required unless --random_weights or --runtime onnx (given with it, it must be the checkpoint "
                        "--onnx_path was exported from)")
    p.add_argument("--random_weights", action="store_true", help="run without a checkpoint (smoke tests only)")
    p.add_argument("--model", default=DEFAULT_CONFIG, type=preset_name, choices=config_names(),
                   help="model config, used when the checkpoint does not record one")
    p.add_argument("--num_classes", type=positive_int, default=None, help="override the config's class count")
    add_path_args(p, ["vspw"])
    p.add_argument("--split", default="val",
                   help="split list <vspw_root>/<split>.txt; a split without masks (test) gets predictions only")
    p.add_argument("--videos", nargs="*", default=None, help="only these videos of the split")
    p.add_argument("--video", type=Path, default=None, metavar="PATH",
                   help="segment this video instead of a VSPW split: a video file (decoded with PyAV/FFmpeg) or a "
                        "folder of frames (natural order); streamed, so any length fits in memory; writes palette "
                        "PNGs, an overlay video and summary.json, no metrics")
    add_overlay_fps_flag(p)
    p.add_argument("--val_size", type=non_negative_int, default=480,
                   help="shorter side fed to the model; 0 = frame size")
    p.add_argument("--max_size", type=positive_int, default=None,
                   help="cap on the longer side fed to the model (none if not given)")
    p.add_argument("--clip_len", type=clip_frames, default=None,
                   help="frames per forward; default the clip length the checkpoint was trained on (--num_frames of "
                        "vss/train_medvt_vss.py), the ONNX file's, or else 6")
    p.add_argument("--window", default="chunk", choices=("chunk", "centre"),
                   help="chunk: consecutive clips, every frame kept; centre: each frame the centre of its own "
                        "wrap-around clip (see above)")
    p.add_argument("--batch_clips", type=positive_int, default=1, metavar="N",
                   help="clips stacked in one forward (2N with --flip), for GPUs (default 1)")
    p.add_argument("--flip", action="store_true", help="average the softmax with that of the mirrored clip")
    add_inference_amp_flag(p)
    add_runtime_flags(p)
    add_device_flag(p)
    p.add_argument("--output_dir", default=None,
                   help="where predictions/<video>/<frame>.png and results.{json,csv} (or, with --video, "
                        "summary.json) go: a new or empty folder (see --overwrite), outside --vspw_root and --video; "
                        "default a new folder <checkpoint (or --onnx_path) folder>/infer_vspw_<split>_<val_size>_"
                        "<unix time>, or infer_video_<video name>_<unix time> (under runs/ without either)")
    add_overwrite_flag(p)
    p.add_argument("--save_overlays", action="store_true", help="also write overlays/<video>/<frame>.jpg")
    p.add_argument("--no_save_predictions", action="store_true", help="compute metrics only, write no PNGs")
    add_debug_flag(p)
    return p


def split_videos(args: argparse.Namespace) -> list:
    """The videos of --split (only --videos, if given), checked before the model is built."""
    root = vspw_root(args.vspw_root)
    videos = vspw_sequences(root, args.split)
    if args.videos:
        missing = set(args.videos) - {v.name for v in videos}
        if missing:
            raise UserError(f"--videos not in {root / (args.split + '.txt')}: {', '.join(sorted(missing))}")
        videos = [v for v in videos if v.name in set(args.videos)]
    return videos


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_runtime_flags(parser, args, ("random_weights", "amp", "model", "num_classes"), argv)
    if args.random_weights and args.model_path:
        parser.error("--random_weights and --model_path contradict each other: pass one of them")
    if args.video is not None:
        refuse_unused(parser, args, ("vspw_root", "split", "videos", "save_overlays", "no_save_predictions"),
                      "to a VSPW split, not to --video (which always writes its predictions and an overlay video)",
                      argv)
    check_overlay_fps(parser, args, argv)
    one_process_only("--video" if args.video else "--runtime onnx" if args.runtime == "onnx" else None,
                     "a split's videos")
    # The output folder is checked before anything is read, so a mistake there costs nothing.
    inputs = {"--vspw_root": dataset_root("vspw", args.vspw_root) if args.video is None else None,
              "--model_path": args.model_path, "--onnx_path": args.onnx_path, "--video": args.video}
    if args.output_dir:
        check_output_dir(args.output_dir, "--output_dir", inputs, args.overwrite)
    if args.video is not None:  # before the checkpoint is read
        require_video(args.video)
    videos = split_videos(args) if args.video is None else []
    with process_group(args.device) as proc:  # under torchrun each process predicts every N-th video
        return predict(args, proc, inputs, videos)


def predict(args: argparse.Namespace, proc: DistInfo, inputs: dict, videos: list) -> dict:
    """The run once its flags and inputs are checked: the model, the output folder, the predictions."""
    say = print if proc.is_main else (lambda *_a, **_k: None)
    device = proc.device
    model, clip_len = onnx_from_args(args) if args.runtime == "onnx" else build_from_args(args, device)
    # A video is read through once now, so a file that cannot be decoded stops before any output exists.
    video = open_user_video(args.video, args.val_size, args.max_size, clip_len) if args.video else None
    if video is not None and args.runtime == "onnx":  # a one-size file and another video size: before any output
        model.check(clip_len, *video.size_hw)
    sizes = f"--val_size {args.val_size}" + (f" with --max_size {args.max_size}" if args.max_size else "")
    remedy = "use a larger --max_size" if args.max_size else "use a larger --val_size"
    if video is not None and args.runtime != "onnx":  # frames too small for the model: refused before any output
        with frames_too_small(sizes, remedy), torch.no_grad(), autocast(device, AMP_DTYPES[args.amp]):
            model(torch.zeros(1, 2, 3, *video.size_hw, device=device))
    say(f"clips of {clip_len} frames ({args.window} window{', flip' if args.flip else ''})"
        + (f"; {proc.world_size} processes, each predicting 1 video in {proc.world_size}" if proc.distributed
           else ""))
    source = args.onnx_path if args.runtime == "onnx" else args.model_path
    if args.output_dir:
        out = Path(args.output_dir)
    else:  # a new folder per run: running twice never mixes two runs (rank 0's name, in every process)
        out = default_run_folder(f"infer_video_{video.name}" if video else f"infer_vspw_{args.split}_{args.val_size}",
                                 source, inputs, args.overwrite)
    settings = {"val_size": args.val_size, "max_size": args.max_size, "clip_len": clip_len, "window": args.window,
                "flip": args.flip, "amp_dtype": AMP_DTYPES[args.amp], "batch_clips": args.batch_clips}
    ran = runtime_record(args.runtime, model)
    # left in place by an error or Ctrl-C: the outputs are partial
    with shared_run_folder(out), frames_too_small(sizes, remedy):
        if video is not None:
            result = {**segment_video(model, video, device, out, fps=args.fps, **settings), **ran}
            write_json(out / "summary.json", result)
        else:
            summary = evaluate_videos(model, videos, device, out, save_predictions=not args.no_save_predictions,
                                      save_overlays=args.save_overlays, **settings)
            if summary and proc.is_main:
                json_path, csv_path = write_results(summary, out, "results")
            if proc.is_main:  # what made the outputs, also for a split without ground truth (test)
                record = {"split": args.split, "videos": [v.name for v in videos], "model": str(source), **ran,
                          "settings": {k: str(v) if isinstance(v, torch.dtype) else v for k, v in settings.items()},
                          "metrics": "results.json" if summary else None}
                write_json(out / "summary.json", record)
    if video is not None:
        print(f"wrote {out / 'predictions' / video.name}/*.png and the overlay video {result['overlay_video']}")
        return result
    if not summary:
        say(f"no ground truth in split {args.split}: predictions written to {out / 'predictions'}")
        return {}
    if proc.is_main:
        print(f"{format_summary(summary)}; per video: {csv_path}, all: {json_path}")
    return summary


if __name__ == "__main__":
    run_main(main)
