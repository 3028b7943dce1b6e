"""Test MED-VT++ on AVSBench S4 / MS3: mIoU and F-score as AVSBench defines them (spec §B.9).

The clips are resized to ``--test_im_size`` (384, as the original test scripts: frames and masks
stored at 224 are upsampled, so the metrics are computed on 384 × 384 masks), the frozen VGGish
turns each frame's 0.96 s log-mel example into 128-d, and the metrics are computed per batch of
``--test_batch_size`` clips and averaged over batches. ``--weights`` takes the authors' released
checkpoint (a bare ``Pred_endecoder`` state dict, converted on the fly) or one of ours.

Example::

    python avs/test_medvt.py --task s4 --avsbench_root /data/AVSBench --weights S4_best.pth \\
        --vggish_weights vggish-10086976.pth --tpavi_va_flag --save_pred_mask --output_dir out/s4_test
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from avs.common import add_model_args, check_im_size, evaluate, model_config
from datasets.avsbench import AVSBenchDataset, load_log_mel
from datasets.path_config import add_path_args, dataset_root
from datasets.video import image_size
from models import load_model
from models.audio import build_frozen_vggish
from models.avs import MEDVTPlusPlus
from utils.cli import (HelpFormatter, UserError, add_overwrite_flag, check_output_dir, incomplete_marker,
                       new_run_folder, non_negative_int, positive_int, run_main)
from utils.distributed import default_device
from utils.logger import format_metrics, setup_logger
from utils.metrics import jsonable


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    add_path_args(p, ["avsbench"])
    p.add_argument("--model_path", "--weights", dest="model_path", required=True, metavar="PATH",
                   help="trained model: the authors' S4/MS3 release or a checkpoint of avs/train_medvt.py "
                        "(--weights, the original's name, also works)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate")
    p.add_argument("--test_im_size", default=384, type=non_negative_int, help="square evaluation size (0 = native 224)")
    p.add_argument("--test_batch_size", default=4, type=positive_int,
                   help="clips per batch; the F-score threshold is chosen per batch, so this matters (original: 4)")
    p.add_argument("--save_pred_mask", action="store_true",
                   help="write binary predictions to <output_dir>/pred_masks/<category>/<name>/<name>_<i>.png, i "
                        "from 0 (AVSBench's ground truth counts from 1)")
    p.add_argument("--output_dir", default=None,
                   help="folder for the log, results JSON and masks: a new or empty folder (see --overwrite), "
                        "outside the data; default a new folder avs_test_<unix time> next to --model_path")
    add_overwrite_flag(p)
    p.add_argument("--max_batches", default=None, type=positive_int, help="stop after this many batches (smoke tests)")
    return p


def check_clips(ds: AVSBenchDataset, clips) -> None:
    """Read what is cheap to read of every clip to be evaluated before the output folder is made: the
    header of each frame and mask, and the log-mel pickle (small) where the audio comes from one. A
    damaged or hostile file is then named without leaving a folder behind (wavs are still read in
    the loop, under the INCOMPLETE marker)."""
    for clip in clips:
        for path in (*clip.frames, *clip.masks):
            image_size(path)
        if ds.audio == "log_mel" or (ds.audio == "auto" and clip.log_mel.is_file()):
            load_log_mel(clip.log_mel)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device or default_device())
    # The output folder is checked before anything is read, and created only once every input is
    # read; without --output_dir every run gets a new folder, so running twice never mixes two runs.
    out = Path(args.output_dir) if args.output_dir else new_run_folder("avs_test", args.model_path)
    check_output_dir(out, "--output_dir", {"--avsbench_root": dataset_root("avsbench", args.avsbench_root),
                                           "--vggish_weights": args.vggish_weights, "--model_path": args.model_path},
                     args.overwrite, default=not args.output_dir)
    vggish = build_frozen_vggish(args.vggish_weights, args.allow_random_vggish).to(device)
    # Our checkpoints record the model they hold; the model flags describe an authors' release.
    loaded = load_model(args.model_path, preset=model_config(args), device=device)
    model = loaded.model
    if not isinstance(model, MEDVTPlusPlus):
        raise UserError(f"--model_path {args.model_path} is not a MED-VT++ (AVS) checkpoint: it holds "
                        f"{type(model).__name__}; give one written by avs/train_medvt.py or the authors' "
                        "S4/MS3 release")
    ds = AVSBenchDataset(args.avsbench_root, args.task, args.split, args.test_im_size or None, args.audio,
                         args.allow_resample, args.allow_silent)
    clips = ds.clips if args.max_batches is None else ds.clips[:args.max_batches * args.test_batch_size]
    partly = next((c for c in clips if len(c.masks) < len(c.frames)), None)
    if partly is not None:  # S4's train split annotates the first frame of each clip only
        raise UserError(f"--split {args.split}: clip {partly.name} has {len(partly.masks)} mask(s) for "
                        f"{len(partly.frames)} frames, and evaluation needs one per frame; evaluate --split val "
                        "or test")
    check_im_size(model, device, {"--test_im_size": args.test_im_size})
    check_clips(ds, clips)
    with incomplete_marker(out):  # what is still read lazily (e.g. wavs) may fail mid-run: the folder says so
        logger = setup_logger(out, True, name="medvt.avs.test", filename="test.log")
        logger.info(f"loaded {args.model_path}: {model.cfg.name}, config from {loaded.reason}")
        loader = DataLoader(ds, batch_size=args.test_batch_size, shuffle=False, num_workers=args.num_workers)
        res = evaluate(model, vggish, loader, device, out / "pred_masks" if args.save_pred_mask else None,
                       args.max_batches, desc=f"{args.task} {args.split}")
        res.update(task=args.task, split=args.split, weights=str(args.model_path), im_size=args.test_im_size)
        logger.info(f"{args.task} {args.split}: {format_metrics({'mIoU': res['miou'], 'F': res['fscore']})} "
                    f"({res['num_clips']} clips)")
        (out / "results.json").write_text(json.dumps(jsonable(res), indent=2))
    return res


if __name__ == "__main__":
    run_main(main)
