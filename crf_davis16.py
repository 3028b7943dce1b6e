#!/usr/bin/env python
"""Dense-CRF post-processing of DAVIS-16 predictions (spec §7).

Reads ``LOGITS_DIR/<seq>/<frame>.png`` (uint8 probability·255, the ``logits/`` folder that
inference writes), refines each frame with :func:`utils.crf.dense_crf` against its RGB frame
and writes ``OUT_DIR/<seq>/<frame>.png`` (0/255). When ground truth is found it reports
J, F, J&F and the original's mIoU before the CRF (PNG ≥ 128, i.e. p ≥ 128/255: the PNG keeps
p truncated to steps of 1/255, so pixels with 0.5 < p < 0.502 count as background here) and after
it, and writes them to ``OUT_DIR/metrics.json``. The "before" figures can therefore differ from
inference's own, computed on p > 0.5: in the fourth digit for a trained model, by more for one
barely trained, whose probabilities crowd around 0.5 (a 4-step ``make demo`` run: F 0.1005 here
against 0.1037).

Example::

    python crf_davis16.py results/davis/logits results/davis/logits_crf --davis16_root data/DAVIS
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from datasets import path_config
from datasets.video import image_size
from utils import crf
from utils.cli import ArgumentParser, UserError, add_debug_flag, positive_int, run_main
from utils.logger import progress
from utils.metrics import evaluate_sequences, sequence_frames, write_json
from utils.outputs import add_overwrite_flag, check_output_dir, incomplete_marker
from utils.process import end_with_parent

SUMMARY_KEYS = ("J_mean", "F_mean", "JF_mean", "mIoU")


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Refine DAVIS-16 probability maps with a fully connected CRF and evaluate them.")
    parser.add_argument("logits_dir", metavar="LOGITS_DIR", type=Path,
                        help="folder of <seq>/<frame>.png probability maps (uint8, probability*255); "
                             "every sub-folder is a sequence")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path,
                        help="where <seq>/<frame>.png CRF masks (0/255) and metrics.json are written: a new or "
                             "empty folder (see --overwrite), apart from the inputs; an INCOMPLETE file marks it "
                             "while the run has not finished")
    add_overwrite_flag(parser, "OUT_DIR")
    parser.add_argument("--images_dir", type=Path, default=None,
                        help="folder of <seq>/<frame>.jpg RGB frames; default <davis16 root>/JPEGImages/480p")
    parser.add_argument("--gt_dir", type=Path, default=None,
                        help="folder of <seq>/<frame>.png annotations for the metrics; default "
                             "<davis16 root>/Annotations/480p when it exists, otherwise metrics are skipped")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="processes refining frames in parallel (1 = run in this process); default: the CPU count")
    parser.add_argument("--sequences", nargs="+", default=None, metavar="SEQ",
                        help="only these sequences (sub-folders of LOGITS_DIR); default all of them")
    path_config.add_path_args(parser, ["davis16"])
    add_debug_flag(parser)
    return parser


def list_sequences(logits_dir: Path, wanted: list[str] | None) -> list[str]:
    """Sequence names: the sub-folders of ``logits_dir``, or the requested subset of them."""
    if not logits_dir.is_dir():
        raise FileNotFoundError(f"logits folder {logits_dir} does not exist")
    available = sorted(p.name for p in logits_dir.iterdir() if p.is_dir())
    if wanted is None:
        if not available:
            raise FileNotFoundError(f"logits folder {logits_dir} has no <seq>/ sub-folders")
        return available
    missing = [seq for seq in wanted if seq not in available]
    if missing:
        raise FileNotFoundError(f"sequence folder(s) {', '.join(str(logits_dir / s) for s in missing)} do not exist")
    return list(wanted)


def resolve_images_dir(args: argparse.Namespace) -> Path:
    if args.images_dir is not None:
        if not args.images_dir.is_dir():
            raise FileNotFoundError(f"images folder {args.images_dir} (given by --images_dir) does not exist")
        return args.images_dir
    root = path_config.dataset_root("davis16", args.davis16_root)
    try:
        return path_config.require(root / "JPEGImages" / "480p", "davis16", "RGB frames JPEGImages/480p/<seq>/*.jpg")
    except path_config.DatasetNotFoundError as e:  # e.g. the probability maps of a --video run of one's own
        raise path_config.DatasetNotFoundError(
            f"{e} For predictions of other frames (a --video of your own), give --images_dir: a folder of "
            "<seq>/<frame>.jpg or .png named as the probability maps (a video file's frames: ffmpeg -i VIDEO "
            "-fps_mode passthrough -start_number 0 DIR/<seq>/%05d.png)") from None


def resolve_gt_dir(args: argparse.Namespace) -> Path | None:
    """Explicit --gt_dir must exist; the default is used only if present (metrics are optional)."""
    if args.gt_dir is not None:
        if args.gt_dir.is_file():
            raise NotADirectoryError(f"--gt_dir {args.gt_dir} is a file; give the folder of <sequence>/<frame>.png "
                                     "annotations")
        if not args.gt_dir.is_dir():
            raise FileNotFoundError(f"ground-truth folder {args.gt_dir} (given by --gt_dir) does not exist")
        return args.gt_dir
    default = path_config.dataset_root("davis16", args.davis16_root) / "Annotations" / "480p"
    return default if default.is_dir() else None


def check_inputs(args: argparse.Namespace, sequences: list[str], images_dir: Path,
                 gt_dir: Path | None) -> list[tuple[Path, Path, Path]]:
    """Every (logits, RGB frame, output) job, after checking all of the inputs, so that a bad
    sequence stops the run before any mask is written: each sequence has frames, each frame an RGB
    frame of its size, and (with ground truth) each annotation a prediction of its size."""
    jobs = []
    for seq in sequences:
        seq_jobs = crf.sequence_jobs(args.logits_dir / seq, images_dir / seq, args.out_dir / seq)
        if not seq_jobs:
            raise UserError(f"logits folder {args.logits_dir / seq} has no <frame>.png probability maps")
        crf.check_jobs(seq_jobs)
        if gt_dir is not None:
            for pred_path, gt_path in sequence_frames(args.logits_dir / seq, gt_dir / seq):
                pred_size, gt_size = image_size(pred_path), image_size(gt_path)
                if pred_size != gt_size:
                    raise UserError(f"{pred_path} is {pred_size[0]}x{pred_size[1]} but its annotation {gt_path} "
                                    f"is {gt_size[0]}x{gt_size[1]}")
        jobs += seq_jobs
    return jobs


def refine_all(jobs: list[tuple[Path, Path, Path]], workers: int) -> None:
    """Run every frame's CRF, in parallel over frames when ``workers`` > 1."""
    bar = progress(total=len(jobs), desc="CRF", unit="frame", leave=True)
    if workers <= 1:
        for _ in crf.run_jobs(jobs):
            bar.update()
    else:
        # One frame per task: a frame's CRF takes about a second, far more than sending it, and the
        # bar (and its time estimate) moves with every frame instead of in chunks.
        with ProcessPoolExecutor(max_workers=workers, initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
            try:
                for _ in crf.run_jobs(jobs, executor=pool):
                    bar.update()
            except BaseException:  # an error, Ctrl-C, SIGTERM: stop at the frames in flight, not after all of them
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()


def _end_with_parent(parent: int) -> None:
    """A worker's start: it gets SIGTERM when the parent dies, so one killed with ``kill -9`` leaves no
    workers blocked forever on their task queue, and SIGTERM ends it outright (the parent's handler,
    inherited, would raise in its queue's lock and leave it hanging there). Ctrl-C, which reaches the
    whole group, is the parent's to handle: it cancels the frames not started and waits for those under
    way (a second each); in a worker, the inherited handler printed a traceback and ignored SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    end_with_parent(parent)


def summary_line(name: str, results: dict) -> str:
    """The figures in percent, as papers print them (metrics.json keeps fractions)."""
    return f"{name:>10}: " + "  ".join(f"{k} {results[k] * 100:.2f}%" for k in SUMMARY_KEYS)


def main(argv: list[str] | None = None) -> dict | None:
    """Run the CRF; returns the metrics written to metrics.json (None without ground truth)."""
    args = get_args_parser().parse_args(argv)
    sequences = list_sequences(args.logits_dir, args.sequences)
    images_dir = resolve_images_dir(args)
    gt_dir = resolve_gt_dir(args)
    # Checked before anything is read back: OUT_DIR = LOGITS_DIR would replace the probability maps
    # with masks and then score the CRF output as the "before CRF" result; an OUT_DIR holding an
    # earlier run would be overwritten.
    check_output_dir(args.out_dir, "OUT_DIR", {"LOGITS_DIR": args.logits_dir, "--images_dir": images_dir,
                                               "--gt_dir": gt_dir}, args.overwrite)
    # Every input is checked first, so a missing frame or annotation stops before any CRF work.
    jobs = check_inputs(args, sequences, images_dir, gt_dir)
    print(f"{len(sequences)} sequences, {len(jobs)} frames from {args.logits_dir}")
    with incomplete_marker(args.out_dir, flag="OUT_DIR"):  # left in place by an error or Ctrl-C
        return refine_and_score(args, jobs, sequences, gt_dir)


def refine_and_score(args: argparse.Namespace, jobs: list[tuple[Path, Path, Path]], sequences: list[str],
                     gt_dir: Path | None) -> dict | None:
    refine_all(jobs, min(args.workers, len(jobs), os.cpu_count() or 1))  # more would only wait
    if gt_dir is None:
        print("no ground truth found (give --gt_dir or --davis16_root); metrics skipped")
        return None
    metrics = {"before_crf": evaluate_sequences(args.logits_dir, gt_dir, sequences, threshold=127),
               "after_crf": evaluate_sequences(args.out_dir, gt_dir, sequences)}
    for name, results in (("before CRF", metrics["before_crf"]), ("after CRF", metrics["after_crf"])):
        print(summary_line(name, results))
    out_path = args.out_dir / "metrics.json"
    write_json(out_path, metrics)
    print(f"metrics written to {out_path}")
    return metrics


if __name__ == "__main__":
    run_main(main)
