"""Test MED-VT++ on AVSBench S4 / MS3: mIoU and F-score as AVSBench defines them (spec §B.9).

The clips are resized to ``--test_im_size`` (384, as the original test scripts: frames and masks
stored at 224 are upsampled, so the metrics are computed on 384 × 384 masks), the frozen VGGish
turns each frame's 0.96 s log-mel example into 128-d, and the metrics are computed per batch of
``--test_batch_size`` clips and averaged over batches. ``--weights`` takes the authors' released
checkpoint (a bare ``Pred_endecoder`` state dict, converted on the fly) or one of ours.

``--video PATH`` segments a video of your own instead, with its sound (the file's sound track, or
``--wav``; a folder of frames needs ``--wav`` and ``--fps``): every frame's mask as a 0/255 PNG
``masks/<video>/<frame>.png`` at the frame size, an overlay video ``overlays/<video>.mp4`` that plays
the sound the model heard (16 kHz mono, AAC) and ``summary.json``; no metrics. Clips of 5 frames one
second apart with their log-mel examples, as AVSBench's (see ``avs/video.py``).

Examples::

    python avs/test_medvt.py --task s4 --avsbench_root /data/AVSBench --weights S4_best.pth \\
        --vggish_weights vggish-10086976.pth --tpavi_va_flag --save_pred_mask --output_dir out/s4_test
    python avs/test_medvt.py --task s4 --weights S4_best.pth --vggish_weights vggish-10086976.pth \\
        --tpavi_va_flag --video guitar.mp4

Under torchrun (``torchrun --nproc_per_node N avs/test_medvt.py ...``) each process (one per GPU)
scores every N-th batch; the batch scores are averaged in their order, so the numbers are one
process's, and rank 0 writes them.
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from pathlib import Path

import torch

from avs.common import add_model_args, check_im_size, evaluate, model_config
from avs.video import open_user_video, segment_video
from datasets.avsbench import NATIVE_SIZE, AVSBenchDataset, load_log_mel
from datasets.path_config import add_path_args, dataset_root
from datasets.video import image_size
from models import load_model, read_checkpoint
from models.audio import build_frozen_vggish
from models.avs import MEDVTPlusPlus
from models.tasks import TASKS, check_task
from utils.cli import (ArgumentParser, UserError, non_negative_int, positive_float, positive_int, refuse_unused,
                       require_file, run_main, typed_option)
from utils.distributed import DistInfo, default_run_folder, one_process_only, process_group, shared_run_folder
from utils.logger import format_metrics, setup_logger
from utils.metrics import write_json
from utils.outputs import add_overwrite_flag, check_output_dir, incomplete_marker, new_run_folder


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_model_args(p)
    add_path_args(p, ["avsbench"])
    p.add_argument("--model_path", "--weights", dest="model_path", required=True, metavar="PATH",
                   help="trained model: the authors' S4/MS3 release or a checkpoint of avs/train_medvt.py "
                        "(--weights, the original's name, also works)")
    p.add_argument("--video", type=Path, default=None, metavar="PATH",
                   help="segment this video instead of an AVSBench split: a video file with a sound track (decoded "
                        "with PyAV/FFmpeg) or a folder of frames (with --wav and --fps); writes masks, an overlay "
                        "video and summary.json, no metrics")
    p.add_argument("--wav", type=Path, default=None, metavar="PATH",
                   help="the sound of --video as a 16-bit PCM wav of any rate and channel count (default: the "
                        "video file's sound track)")
    p.add_argument("--fps", type=positive_float, default=None,
                   help="frame rate of a --video folder of frames (a video file has its own)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate")
    p.add_argument("--test_im_size", default=384, type=non_negative_int,
                   help="square evaluation size; 0 = each file's own size (AVSBench's: 224x224), one for all")
    p.add_argument("--test_batch_size", default=4, type=positive_int,
                   help="clips per batch; the F-score threshold is chosen per batch, so this matters (original: 4)")
    p.add_argument("--save_pred_mask", action="store_true",
                   help="write binary predictions to <output_dir>/pred_masks/<category>/<name>/<name>_<i>.png, i "
                        "from 0 (AVSBench's ground truth counts from 1)")
    p.add_argument("--output_dir", default=None,
                   help="folder for the log, results JSON and masks (with --video: masks/, overlays/, summary.json): "
                        "a new or empty folder (see --overwrite), outside the data; default a new folder next to "
                        "--model_path, avs_test_<unix time> or avs_video_<video name>_<unix time>")
    add_overwrite_flag(p)
    p.add_argument("--max_batches", default=None, type=positive_int, help="stop after this many batches (smoke tests)")
    return p


def check_clips(ds: AVSBenchDataset, clips) -> None:
    """Read what is cheap to read of every clip to be evaluated before the output folder is made: the
    header of each frame and mask, and the log-mel pickle (small) where the audio comes from one. A
    damaged or hostile file is then named without leaving a folder behind (wavs are still read in
    the loop, under the INCOMPLETE marker)."""
    first = None  # at their own size (--test_im_size 0), a batch's frames and masks are stacked: one size
    for clip in clips:
        for path in (*clip.frames, *clip.masks):
            size = image_size(path)
            first = first or (path, size)
            if ds.im_size is None and size != first[1]:
                raise UserError(f"{path} is {size[0]}x{size[1]}, {first[0]} is {first[1][0]}x{first[1][1]}: at "
                                "--test_im_size 0 every frame and mask must have one size; give a --test_im_size "
                                "to resize them (the original's is 384)")
        if ds.audio == "log_mel" or (ds.audio == "auto" and clip.log_mel.is_file()):
            load_log_mel(clip.log_mel)


# Flags of a split evaluation, refused with --video when given.
SPLIT_ONLY = ("avsbench_root", "split", "test_batch_size", "save_pred_mask", "max_batches", "audio", "allow_resample",
              "allow_silent")


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    args.model_flag = typed_option(parser, "model_path", argv)  # --weights too, the original's name
    if args.video is not None:
        refuse_unused(parser, args, SPLIT_ONLY, "to an AVSBench split, not to --video (whose sound is always "
                      "resampled to 16 kHz and must not be silent)", argv)
    elif args.wav is not None or args.fps is not None:
        parser.error("--wav and --fps describe a --video; an AVSBench split brings its own audio and frames")
    one_process_only("--video" if args.video else None, "a split's batches")
    inputs = {"--avsbench_root": dataset_root("avsbench", args.avsbench_root) if args.video is None else None,
              "--vggish_weights": args.vggish_weights, args.model_flag: args.model_path, "--video": args.video,
              "--wav": args.wav}
    # The output folder is checked before anything is read, and created only once every input is
    # read; without --output_dir every run gets a new folder, so running twice never mixes two runs.
    if args.output_dir:
        check_output_dir(args.output_dir, "--output_dir", inputs, args.overwrite)
    else:  # where the default folder goes (beside --model_path) is checked now; run_folder names it later
        check_output_dir(new_run_folder("avs_video" if args.video else "avs_test", args.model_path), "--output_dir",
                         inputs, args.overwrite, default=True)
    size = args.test_im_size or NATIVE_SIZE
    # A video and its sound are read through once now: a file that cannot be decoded stops at once.
    video, sound, fps = open_user_video(args.video, args.wav, args.fps, size) if args.video else (None, None, None)
    with process_group(args.device) as proc:  # under torchrun each process scores every N-th batch
        return predict(args, proc, inputs, video, sound, fps)


def predict(args: argparse.Namespace, proc: DistInfo, inputs: dict, video, sound, fps) -> dict:
    """The run once its flags and inputs are checked: the models, the output folder, the predictions."""
    device, size = proc.device, args.test_im_size or NATIVE_SIZE
    torch.manual_seed(0)  # a random VGGish (--allow_random_vggish) is the same in every process and run
    vggish = build_frozen_vggish(args.vggish_weights, args.allow_random_vggish).to(device)
    model, reason = load_avs_model(args, device)
    check_im_size(model, device, {"--test_im_size": args.test_im_size})
    if video is not None:
        print(f"{video.name}: {len(video)} frames at {fps:g} frames/s, {sound.seconds:.1f} s of sound; "
              f"{model.cfg.name} ({reason}) on {device}")
        out = run_folder(args, inputs, video)
        with incomplete_marker(out):  # left in place by an error or Ctrl-C: the outputs are partial
            result = segment_video(model, vggish, video, sound, fps, device, out)
            result["settings"] = {"task": args.task, "test_im_size": size, "weights": str(args.model_path)}
            write_json(out / "summary.json", result)
        sound_note = "with its sound" if result["overlay_sound"] else "without sound (this FFmpeg has no AAC encoder)"
        print(f"a sounding object in {100 * result['frames_with_a_source']:.1f}% of the frames; wrote "
              f"{out / 'masks' / video.name}/*.png and the overlay video {result['overlay_video']} {sound_note}")
        return result
    ds = AVSBenchDataset(args.avsbench_root, args.task, args.split, args.test_im_size or None, args.audio,
                         args.allow_resample, args.allow_silent)
    clips = ds.clips if args.max_batches is None else ds.clips[:args.max_batches * args.test_batch_size]
    partly = next((c for c in clips if len(c.masks) < len(c.frames)), None)
    if partly is not None:  # S4's train split annotates the first frame of each clip only
        raise UserError(f"--split {args.split}: clip {partly.name} has {len(partly.masks)} mask(s) for "
                        f"{len(partly.frames)} frames, and evaluation needs one per frame; evaluate --split val "
                        "or test")
    check_clips(ds, clips)
    out = run_folder(args, inputs, None)
    # what is still read lazily (e.g. wavs) may fail mid-run: the folder says so
    with shared_run_folder(out):
        logger = setup_logger(out, proc.is_main, name="medvt.avs.test", filename="test.log")
        logger.info(f"loaded {args.model_path}: {model.cfg.name}, config from {reason}"
                    + (f"; {proc.world_size} processes, each scoring 1 batch in {proc.world_size}"
                       if proc.distributed else ""))
        res = evaluate(model, vggish, ds, args.test_batch_size, device,
                       out / "pred_masks" if args.save_pred_mask else None, args.max_batches, args.num_workers,
                       desc=f"{args.task} {args.split}")
        res.update(task=args.task, split=args.split, weights=str(args.model_path), im_size=args.test_im_size)
        logger.info(f"{args.task} {args.split}: {format_metrics({'mIoU': res['miou'], 'F': res['fscore']})} "
                    f"({res['num_clips']} clips)")
        if proc.is_main:
            write_json(out / "results.json", res)
    return res


def run_folder(args: argparse.Namespace, inputs: dict, video) -> Path:
    """--output_dir, else a new folder ``avs_test_<unix time>`` or ``avs_video_<video>_<unix time>`` beside
    --model_path. Named right before it is created: a name taken by then (another run started in the same
    second) gets ``_2``, ``_3`` (utils.outputs.new_run_folder); named before VGGish and the model load, two
    runs could both take one name and write in one folder."""
    if args.output_dir:
        return Path(args.output_dir)
    return default_run_folder(f"avs_video_{video.name}" if video else "avs_test", args.model_path, inputs,
                              args.overwrite)


def load_avs_model(args: argparse.Namespace, device: torch.device) -> tuple[MEDVTPlusPlus, str]:
    """The MED-VT++ of --model_path (ours record their model; the model flags describe an authors'
    release) and where its config came from; another task's model is refused by name (models.tasks)."""
    ckpt = read_checkpoint(require_file(args.model_path, args.model_flag))
    check_task(ckpt, "avs", f"{args.model_flag} {args.model_path}", TASKS["avs"].infer)
    loaded = load_model(args.model_path, preset=model_config(args), device=device, checkpoint=ckpt)
    return loaded.model, loaded.reason


if __name__ == "__main__":
    run_main(main)
