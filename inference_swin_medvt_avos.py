#!/usr/bin/env python
"""MED-VT AVOS inference: DAVIS-16 val, YouTube-Objects, MoCA or any video, with the original protocol.

Examples (the original README's settings)::

    python inference_swin_medvt_avos.py --model_path ckpts/swin_medvt.pth --dataset davis --flip --msc
    python inference_swin_medvt_avos.py --model_path ckpts/resnet_medvt.pth --backbone resnet101 --dataset davis \\
        --flip --msc --lprop_scale 7.2
    python inference_swin_medvt_avos.py --model_path ckpts/swin_medvt.pth --dataset ytbo --val_size 360 --flip --msc
    python inference_swin_medvt_avos.py --model_path ckpts/swin_medvt.pth --dataset moca --flip
    python inference_swin_medvt_avos.py --model_path ckpts/swin_medvt.pth --video clip.mp4 --output_dir out/clip
    torchrun --nproc_per_node 4 inference_swin_medvt_avos.py --model_path ckpts/swin_medvt.pth --dataset all --msc

Under torchrun each process (one per GPU) predicts every N-th sequence of a dataset and writes its files;
rank 0 then scores them all, as one process would, and writes the logs and results.

The protocol is described in :mod:`avos.protocol`, the output files and metrics in :mod:`avos.inference`.
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import dataclasses
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from avos import inference as inf
from avos import model as avos_model
from avos import protocol as avos_protocol
from datasets import path_config
from datasets.davis16 import davis16_sequences
from datasets.moca import moca_sequences
from datasets.stream import require_video
from datasets.transforms import test_size
from datasets.video import image_size, require_same_size
from datasets.youtube_objects import youtube_objects_sequences
from models import read_checkpoint
from models.config import VARIANTS
from models.onnx_export import InputSizeError, runtime_record
from models.predictor import scaled_hw
from models.registry import model_state_dict
from models.tasks import TASKS
from utils.cli import (ArgumentParser, UserError, add_debug_flag, add_overlay_fps_flag, check_overlay_fps, clip_frames,
                       positive_float, positive_int, refuse_unused, run_main)
from utils.distributed import (DistInfo, add_device_flag, check_device, default_run_folder, one_process_only,
                               process_group, shared_run_folder)
from utils.engine import AMP_DTYPES, add_inference_amp_flag, add_runtime_flags, check_runtime_flags, frames_too_small
from utils.metrics import write_json
from utils.outputs import add_overwrite_flag, check_output_dir
from utils.visualize import check_gif_size


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Segment the primary moving object in videos with a MED-VT checkpoint, using the original "
                    "test protocol (every frame the centre of its own wrap-around clip, optional flip and "
                    "multi-scale), write probability maps, binary masks, overlays and metrics.")
    p.add_argument("--model_path", required=True, type=Path,
                   help="checkpoint: the authors' file (Swin-B or ResNet-101) or one saved by train_swin_medvt_avos.py")
    p.add_argument("--dataset", default="davis", choices=["davis", "ytbo", "moca", "all"],
                   help="evaluation set: DAVIS-16 val, YouTube-Objects, MoCA, or all three (each with its own "
                        "val size, in sub-folders of --output_dir) (default davis)")
    p.add_argument("--video", type=Path, default=None, metavar="PATH",
                   help="segment this video instead of a dataset: a video file (decoded with PyAV/FFmpeg) or a "
                        "folder of frames (natural order); streamed, so any length fits in memory; writes masks, "
                        "probability maps and an H.264 overlay video, no metrics")
    p.add_argument("--val_size", type=positive_int, default=None,
                   help="shorter input side (longer side capped at 1.8x); default the README's size per dataset: "
                        "473 DAVIS, MoCA and --video, 360 YouTube-Objects; --dataset all always uses those")
    p.add_argument("--flip", action="store_true",
                   help="also predict the mirrored clip; merged by mean (DAVIS, video) or max (YouTube-Objects, MoCA)")
    p.add_argument("--msc", action="store_true",
                   help="average several input scales (DAVIS 0.75-1.3, YouTube-Objects 0.95-1.15, ResNet DAVIS "
                        "0.75-1.15 with longer side <= 1.65x; MoCA: only for 2024 models, 0.9-1.1): one forward "
                        "per scale, 7 on DAVIS, twice that with --flip, at up to 1.3x the size: slow on a CPU")
    p.add_argument("--lprop_scale", type=positive_float, default=None,
                   help="label-propagation scale; default the model config's (8.0, the README's value for "
                        "Swin-B; its ResNet-101 runs use 7.2 DAVIS, 8.0 YouTube-Objects, 7.3 MoCA)")
    p.add_argument("--num_frames", type=clip_frames, default=6, help="frames per clip (default 6, as trained)")
    p.add_argument("--window", default="centre", choices=["centre", "chunk"],
                   help="centre: every frame the centre of its own wrap-around clip, one forward per frame (the "
                        "original protocol); chunk: consecutive clips, every frame of a clip kept, --num_frames "
                        "times fewer forwards (see the README's table of J and frames/s) (default centre)")
    p.add_argument("--batch_clips", type=positive_int, default=1, metavar="N",
                   help="clips stacked in one forward (2N with --flip); for GPUs; 1 reproduces the original's "
                        "numbers exactly (default 1)")
    p.add_argument("--output_dir", type=Path, default=None,
                   help="where outputs go: a new or empty folder (see --overwrite), outside the dataset and "
                        "--video; default a new folder "
                        "<model folder>/infer_<dataset><size><msc|ssc>lpp_mode<m>_sc<s>_<unix time> "
                        "(infer_video_<video name>_<size>... with --video)")
    add_overwrite_flag(p)
    p.add_argument("--model_version", default="auto", choices=["auto", *VARIANTS],
                   help="which original forward a Swin-B checkpoint needs: cvpr23 (555a462), 2024train (the 2024 "
                        "training code), 2024 (the 2024 inference code), or auto: the checkpoint's config if it has "
                        "one, else its saved training arguments (2024 scripts add use_flow, ...: 2024), else cvpr23 "
                        "(default auto)")
    p.add_argument("--backbone", default="swinB", choices=["swinB", "resnet101"],
                   help="backbone of an authors' checkpoint (ours record their config) (default swinB)")
    p.add_argument("--sequences", nargs="+", default=None, metavar="SEQ",
                   help="only these sequences (names, or path prefixes such as a YouTube-Objects class)")
    p.add_argument("--save_overlay", action="store_true",
                   help="also write overlay/<seq>/<frame>.png and one overlay video per sequence")
    p.add_argument("--overlay_format", default="mp4", choices=["mp4", "gif"],
                   help="container of the overlay videos (default mp4)")
    add_overlay_fps_flag(p, "a dataset's sequences or a --video folder")
    add_inference_amp_flag(p)
    add_runtime_flags(p)
    add_device_flag(p)
    p.add_argument("--davis16_split", default="val", choices=["train", "val"],
                   help="DAVIS-16 split to evaluate (default val)")
    p.add_argument("--davis16_seqs_file", type=Path, default=None,
                   help="DAVIS-16 sequence list (one name per line); default ImageSets of the root, else the "
                        "standard 20 val sequences")
    p.add_argument("--youtube_objects_list", type=Path, default=None,
                   help="YouTube-Objects list of sequence folders (frames/<class>/data/<vid>/shots/<shot>); "
                        "default <youtube_objects root>/val_seqs.txt")
    p.add_argument("--moca_list", type=Path, default=None,
                   help="MoCA list of video names; default <moca root>/val_seqs.txt")
    p.add_argument("--moca_annotations", type=Path, default=None,
                   help="MoCA annotation CSV; default <moca root>/annotations.csv")
    path_config.add_path_args(p, ["davis16", "youtube_objects", "moca"])
    add_debug_flag(p)
    return p


def load_sequences(args: argparse.Namespace, dataset: str) -> list:
    """The dataset's sequences (errors name the root flag when something is missing)."""
    if dataset == "davis":
        seqs = davis16_sequences(args.davis16_root, args.davis16_split, args.davis16_seqs_file, args.sequences,
                                 subset="--sequences NAME ... or --davis16_seqs_file")
    elif dataset == "ytbo":
        seqs = youtube_objects_sequences(args.youtube_objects_root, args.youtube_objects_list)
    else:
        seqs = moca_sequences(args.moca_root, args.moca_list, args.moca_annotations)
    seqs = inf.select_sequences(seqs, args.sequences)
    if not seqs:
        raise ValueError(f"{dataset}: no sequences to evaluate")
    for seq in seqs:  # headers only (~60 µs a frame): a frame of another size stops the run before it starts
        require_same_size(seq.frames, f"{dataset}: sequence {seq.name}")
    return seqs


def input_paths(args: argparse.Namespace, datasets: list[str]) -> dict:
    """Every input folder or file of this run, by flag, for the output check (the checkpoint, but
    not its folder: the default output lives there)."""
    roots = {"davis": "davis16", "ytbo": "youtube_objects", "moca": "moca"}
    inputs: dict = {}
    for ds in datasets:
        name = roots[ds]
        inputs[path_config.flag_name(name)] = path_config.dataset_root(name, getattr(args, f"{name}_root"))
    inputs.update({"--video": args.video, "--model_path": args.model_path,
                   "--onnx_path": args.onnx_path if args.runtime == "onnx" else None})
    if "davis" in datasets:
        inputs["--davis16_seqs_file"] = args.davis16_seqs_file
    if "ytbo" in datasets:
        inputs["--youtube_objects_list"] = args.youtube_objects_list
    if "moca" in datasets:
        inputs.update({"--moca_list": args.moca_list, "--moca_annotations": args.moca_annotations})
    return inputs


# Flags of a dataset run, refused with --video when given (a dataset root from
# the environment or path_config is not a flag, and stays unread).
DATASET_ONLY = ("dataset", "sequences", "davis16_split", "davis16_seqs_file", "youtube_objects_list", "moca_list",
                "moca_annotations", "davis16_root", "youtube_objects_root", "moca_root")


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    inf.setup_logging()  # messages before out.log exists (the model tried, when its weights do not fit) reach stdout
    check_device(args.device)  # a mistaken --device: before anything is read
    check_runtime_flags(parser, args, ("amp",), argv)
    if args.video is not None:
        refuse_unused(parser, args, DATASET_ONLY, "to a dataset run, not to --video", argv)
        check_overlay_fps(parser, args, argv, datasets_too=True)
    one_process_only("--video" if args.video else "--runtime onnx" if args.runtime == "onnx" else None,
                     "a dataset's sequences")
    datasets = [] if args.video else (list(avos_protocol.DATASETS) if args.dataset == "all" else [args.dataset])
    if args.video is not None:  # before the checkpoint is read
        require_video(args.video)
    # The output folder is checked before anything is read, so a mistake there costs nothing.
    if args.output_dir is not None:
        check_output_dir(args.output_dir, "--output_dir", input_paths(args, datasets), args.overwrite)
    # Read every dataset index first: a missing folder stops before the model is loaded.
    sequences = {ds: load_sequences(args, ds) for ds in datasets}

    ckpt = read_checkpoint(args.model_path)
    onnx_model = load_onnx_model(args) if args.runtime == "onnx" else None
    info = model_info(args, ckpt, onnx_model)
    tasks = datasets or ["video"]
    protocols = {ds: avos_protocol.make_protocol(ds, info.config, info.version,
                                       None if args.dataset == "all" else args.val_size, args.msc, args.flip)
                 for ds in tasks}
    # A video is read through once now, so a file that cannot be decoded stops before any output exists.
    video = inf.open_user_video(args.video, protocols["video"], args.num_frames) if args.video else None
    with process_group(args.device) as proc:  # under torchrun each process predicts every N-th sequence
        if not proc.is_main:
            inf.logger.setLevel(logging.WARNING)
        # The model is built before the output folder exists: weights that do not fit leave nothing behind.
        model = inference_model(args, ckpt, info, protocols, proc.device, onnx_model)
        del ckpt
        # frames the model cannot take: refused before the output folder exists
        first_hw = first_frame_sizes([seq for seqs in sequences.values() for seq in seqs])
        check_input_sizes(model, [(protocols[task], frame_sizes(task, video, sequences.get(task, []), first_hw))
                                  for task in tasks], args, proc.device)
        check_gif_overlays(args, video, sequences, first_hw)
        return run_tasks(args, argv, model, info, protocols, sequences, video, proc)


def check_gif_overlays(args: argparse.Namespace, video, sequences: dict, first_hw: dict) -> None:
    """A GIF overlay holds its frames until it is written: one too long for memory is refused up front."""
    if args.overlay_format != "gif":
        return
    if video is not None:  # a video's overlay is always written
        check_gif_size(len(video), *video.frame_hw, f"--video {video.name}")
    elif args.save_overlay:
        for seq in (seq for seqs in sequences.values() for seq in seqs):
            check_gif_size(seq.num_frames, *first_hw[seq.frames[0]], f"sequence {seq.name}")


def first_frame_sizes(seqs: list) -> dict[Path, tuple[int, int]]:
    """Each sequence's frame size (h, w) by its first frame, from that frame's header (a sequence's frames
    have one size: load_sequences), read once for the size checks."""
    return {seq.frames[0]: image_size(seq.frames[0])[::-1] for seq in seqs}


def frame_sizes(task: str, video, seqs: list, first_hw: dict) -> dict[str, tuple[int, int]]:
    """The frame sizes (h, w) of a run, each named by the first sequence that has it (or the --video)."""
    if task == "video":
        return {f"--video {video.name}": video.frame_hw}
    named: dict[tuple[int, int], str] = {}
    for seq in seqs:
        named.setdefault(first_hw[seq.frames[0]], f"sequence {seq.name}")
    return {what: hw for hw, what in named.items()}


# Every preset takes frames whose shorter side is 17 pixels or more (label propagation needs more than one
# token a frame; ResNet-101: 9): above this side the forward pass that checks it (18-26 s for Swin-B on a
# 2-core CPU) is not made.
CHECKED_BELOW = 64


def check_input_sizes(model, runs: list[tuple[object, dict[str, tuple[int, int]]]], args: argparse.Namespace,
                      device) -> None:
    """Refuse, before the output folder exists, a run whose frames the model cannot take at its protocol's
    size and scales. ``runs``: (protocol, frame sizes) per dataset or video, each frame size (h, w) named by
    what has it. Too small for the PyTorch model: one forward pass of two frames at the smallest input of
    all (when its shorter side is below CHECKED_BELOW); outside the ONNX file's sizes: arithmetic only,
    naming the smallest --val_size that fits a file that takes any size from a floor."""
    def inputs(protocol, val_size: int, h: int, w: int) -> list[tuple[int, int]]:
        rh, rw = test_size(h, w, val_size, protocol.max_ratio)
        return sorted({scaled_hw(rh, rw, s) for s in protocol.scales})

    def given(protocol) -> str:
        if args.dataset == "all" and not args.video:  # --val_size is not used: each dataset's own size
            return f"--dataset all ({protocol.dataset} at its size {protocol.val_size})"
        return f"--val_size {protocol.val_size}" + (" with --msc" if len(protocol.scales) > 1 else "")

    if args.runtime == "onnx":
        for protocol, frames_hw in runs:
            for what, (h, w) in frames_hw.items():
                size = next((x for x in inputs(protocol, protocol.val_size, h, w)
                             if not model.fits(args.num_frames, *x)), None)
                if size is None:
                    continue
                fed = f"{given(protocol)}: {what} ({h}x{w}) is fed to the model at {size[0]}x{size[1]}, but " \
                      f"{model.named} takes {model.describe()}"
                if not model.dynamic_size:
                    raise InputSizeError(f"{fed}; export a file that takes any size (export_onnx.py --height/--width "
                                         "of 225 or more), or run it with --runtime torch")
                larger = next((v for v in range(protocol.val_size + 1, 4 * protocol.val_size)
                               if all(model.fits(args.num_frames, *x) for x in inputs(protocol, v, h, w))), None)
                if larger is None:
                    raise InputSizeError(f"{fed}; its frames are too narrow for the file at any --val_size up to "
                                         f"{4 * protocol.val_size}: run it with --runtime torch")
                how = f"run {protocol.dataset} on its own with" if args.dataset == "all" and not args.video else "pass"
                raise InputSizeError(f"{fed}; {how} --val_size {larger} or more")
        return
    protocol, smallest = min(((p, x) for p, frames_hw in runs for h, w in frames_hw.values()
                              for x in inputs(p, p.val_size, h, w)), key=lambda px: min(px[1]))
    if min(smallest) < CHECKED_BELOW:
        with frames_too_small(given(protocol), "use a larger --val_size"), torch.no_grad():
            model(torch.zeros(1, 2, 3, *smallest, device=device))


def load_onnx_model(args: argparse.Namespace):
    """--onnx_path, refused when it records another task than AVOS (a file exported before tasks were
    recorded meets the checks that follow: clip length, weights)."""
    model = avos_model.load_onnx(args.onnx_path)
    model.check_task("avos", TASKS["avos"].infer)
    return model


def model_info(args: argparse.Namespace, ckpt: dict, onnx_model) -> avos_model.ModelInfo:
    """The model that runs, and why: the checkpoint's with --model_version / --lprop_scale, or with
    --runtime onnx the forward and lprop_scale the file was exported with, which its graph holds (the
    flags cannot change them: one that differs is refused). A file exported before these were recorded
    is described by the flags, as before."""
    source = f"--model_path {args.model_path}"
    info = avos_model.resolve_model_config(ckpt, args.model_version, args.backbone, args.lprop_scale, source)
    if onnx_model is None or onnx_model.variant is None:
        return info
    variant, scale = onnx_model.variant, onnx_model.lprop_scale
    if args.model_version not in ("auto", variant):
        raise UserError(f"--model_version {args.model_version}: {onnx_model.named} was exported with the {variant} "
                        f"forward, which its graph holds; leave out --model_version, or export the checkpoint again "
                        f"with export_onnx.py --model_version {args.model_version}")
    if args.lprop_scale is not None and args.lprop_scale != scale:
        raise UserError(f"--lprop_scale {args.lprop_scale}: {onnx_model.named} was exported with lprop_scale {scale}, "
                        "which its graph holds; leave out --lprop_scale, or run the checkpoint with --runtime torch")
    if (info.version, info.config.lprop_scale) == (variant, scale):
        return info
    ran = avos_model.resolve_model_config(ckpt, variant, args.backbone, scale, source)
    return dataclasses.replace(ran, reason=f"{info.reason}; the ONNX file's forward {variant} and lprop_scale "
                                           f"{scale}, recorded at export")


def inference_model(args: argparse.Namespace, ckpt: dict, info, protocols: dict, device, onnx_model=None):
    """The PyTorch model of the checkpoint on ``device``, or the checked ONNX file of --runtime onnx."""
    if onnx_model is not None:
        model = onnx_model
        model.check_clip_length(args.num_frames, "--num_frames")
        model.check_scales(max(len(p.scales) for p in protocols.values()), "--msc")
        model.check_weights(model_state_dict(ckpt, info.config, str(args.model_path)), args.model_path)
        return model
    try:
        return avos_model.build_from_checkpoint(ckpt, info, str(args.model_path), device)
    except Exception:
        avos_model.log_model_choice(info)  # the model that was tried explains a key mismatch
        raise


def run_tasks(args: argparse.Namespace, argv: list[str] | None, model, info, protocols: dict, sequences: dict,
              video, proc: DistInfo) -> dict:
    """Predict and score each dataset (or the video) into the output folder; its summary.json."""
    datasets, tasks, device = list(sequences), list(protocols), proc.device
    out_dir = args.output_dir
    if out_dir is None:  # a new folder per run: running twice never mixes two runs (rank 0's name in every process)
        # with the video's name, as in VSS: infer_video_<name>_473ssclpp_mode..._<unix time>
        label = "all" if len(tasks) > 1 else f"video_{video.name}_" if video else tasks[0]
        size = protocols[tasks[0]].val_size
        out_dir = default_run_folder(avos_protocol.run_name(label, size, args.msc, info.config), args.model_path,
                                     input_paths(args, datasets), args.overwrite)
    # Until the run ends well, a marker says the outputs are partial (an error or Ctrl-C leaves it in place).
    with shared_run_folder(out_dir, log="out.log"), \
            inf.log_file(out_dir / "out.log") if proc.is_main else nullcontext():
        log = inf.logger
        log.info("command: python %s %s", Path(__file__).name, " ".join(sys.argv[1:] if argv is None else argv))
        avos_model.log_model_choice(info)
        if args.runtime == "onnx":
            log.info("runtime: ONNX Runtime (CPU) with %s (%s, %s)", args.onnx_path, model.what(), model.describe())
            if model.variant is None:
                log.warning("%s records no forward or lprop_scale (exported before they were recorded): the model "
                            "line above gives the checkpoint's and the flags', which the file may not hold; export "
                            "it again to have them checked", args.onnx_path)
        log.info("device: %s%s; output: %s", device, f", {args.amp} autocast" if args.amp != "none" else "", out_dir)
        if proc.distributed:
            log.info("%d processes, each predicting 1 sequence in %d; rank 0 scores them", proc.world_size,
                     proc.world_size)
        if args.dataset == "all" and args.val_size and not video:
            log.warning("--val_size %d ignored: --dataset all uses 473 (DAVIS, MoCA) and 360 (YouTube-Objects)",
                        args.val_size)
        if args.amp != "none" and device.type != "cuda":
            log.warning("--amp %s on %s: autocast is meant for CUDA and is slow here", args.amp, device)
        results: dict = {"output_dir": str(out_dir),
                         "model": {"config": info.config_name, "version": info.version, "reason": info.reason,
                                   "variant": info.config.variant, "lprop_scale": info.config.lprop_scale},
                         **runtime_record(args.runtime, model)}
        for task in tasks:
            protocol = protocols[task]
            sub = (out_dir / avos_protocol.run_name(task, protocol.val_size, args.msc, info.config) if len(tasks) > 1
                   else out_dir)
            opts = inf.RunOptions(sub, args.num_frames, args.save_overlay, args.overlay_format, args.fps,
                                  AMP_DTYPES[args.amp], args.window, args.batch_clips)
            run = {"davis": inf.run_davis, "ytbo": inf.run_youtube_objects, "moca": inf.run_moca}.get(task)
            with frames_too_small(f"--val_size {protocol.val_size}", "use a larger --val_size"):
                results[task] = run(model, sequences[task], protocol, opts) if run else \
                    inf.run_video(model, video, protocol, opts)
            results[task]["output_dir"] = str(sub)
        if proc.is_main:
            write_json(out_dir / "summary.json", results)
        return results


if __name__ == "__main__":
    run_main(main)
