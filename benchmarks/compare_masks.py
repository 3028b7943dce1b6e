"""Agreement of two runs' binary masks, e.g. bf16 autocast against float32 inference.

Reads ``<dir>/<sequence>/<frame>.png`` from both folders (the ``bin_mask/`` output of
``inference_swin_medvt_avos.py``; any PNG with foreground > 0 works), pairs frames by relative
path, and prints the IoU pooled over all frames, the mean and minimum per-frame IoU, and the
per-sequence pooled IoU. A frame empty in both counts as IoU 1. Frames present in only one
folder are an error (the runs did not cover the same frames). ``--json`` also writes the figures
to a new file outside both folders (``--overwrite`` replaces an existing one).

Example::

    python inference_swin_medvt_avos.py --model_path ckpt.pth --dataset davis --output_dir runs/fp32
    python inference_swin_medvt_avos.py --model_path ckpt.pth --dataset davis --amp --output_dir runs/bf16
    python benchmarks/compare_masks.py runs/fp32/bin_mask runs/bf16/bin_mask
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import add_json_flags, check_json, write_json
from datasets.video import open_image
from utils.cli import ArgumentParser, UserError, run_main


def require_folder(path: Path, name: str) -> None:
    """A folder of masks given as ``name`` (reference, other), or the error a user reads."""
    if not path.exists():
        raise UserError(f"{name} folder {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{name} {path} is a file, not a folder of masks (give the run's bin_mask/ folder)")


def compare(a_dir: Path, b_dir: Path) -> dict:
    require_folder(a_dir, "reference")
    require_folder(b_dir, "other")
    a = {p.relative_to(a_dir) for p in a_dir.rglob("*.png")}
    b = {p.relative_to(b_dir) for p in b_dir.rglob("*.png")}
    if not a:
        raise UserError(f"no PNG masks under the reference folder {a_dir}")
    if a != b:
        only = sorted(str(p) for p in a ^ b)
        raise UserError(f"{len(only)} frames are in only one folder, e.g. {only[:3]}")
    per_frame, seq_sums = [], defaultdict(lambda: [0, 0])
    for rel in sorted(a):
        ma = np.asarray(open_image(a_dir / rel)) > 0  # a damaged file is named
        mb = np.asarray(open_image(b_dir / rel)) > 0
        if ma.shape != mb.shape:
            raise UserError(f"{rel}: sizes differ, {ma.shape} in {a_dir} vs {mb.shape} in {b_dir}")
        inter, union = int((ma & mb).sum()), int((ma | mb).sum())
        per_frame.append(inter / union if union else 1.0)
        seq = seq_sums[str(rel.parent)]
        seq[0] += inter
        seq[1] += union
    inter, union = sum(s[0] for s in seq_sums.values()), sum(s[1] for s in seq_sums.values())
    return {
        "frames": len(per_frame), "pooled_iou": inter / union if union else 1.0,
        "mean_frame_iou": float(np.mean(per_frame)), "min_frame_iou": float(np.min(per_frame)),
        "sequences": {k: (i / u if u else 1.0) for k, (i, u) in sorted(seq_sums.items())},
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("reference", type=Path, help="folder of reference masks (e.g. the float32 run's bin_mask/)")
    p.add_argument("other", type=Path, help="folder of masks to compare (e.g. the bf16 run's bin_mask/)")
    add_json_flags(p)
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    check_json(args, folders={"reference": args.reference, "other": args.other})  # not over, nor among, the masks
    res = compare(args.reference, args.other)
    for seq, iou in res["sequences"].items():
        print(f"{seq:>24}: IoU {iou:.4f}")
    print(f"{res['frames']} frames: pooled IoU {res['pooled_iou']:.4f}, mean per frame {res['mean_frame_iou']:.4f}, "
          f"min {res['min_frame_iou']:.4f}")
    write_json(res, args.json)
    return res


if __name__ == "__main__":
    run_main(main)
