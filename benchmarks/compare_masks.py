"""Agreement of two runs' binary masks, e.g. bf16 autocast against float32 inference.

Reads ``<dir>/<sequence>/<frame>.png`` from both folders (the ``bin_mask/`` output of
``inference_swin_medvt_avos.py``; any PNG with foreground > 0 works), pairs frames by relative
path, and prints the IoU pooled over all frames, the mean and minimum per-frame IoU, and the
per-sequence pooled IoU. A frame empty in both counts as IoU 1. Frames present in only one
folder are an error (the runs did not cover the same frames).

Example::

    python inference_swin_medvt_avos.py --model_path ckpt.pth --dataset davis --output_dir runs/fp32
    python inference_swin_medvt_avos.py --model_path ckpt.pth --dataset davis --amp --output_dir runs/bf16
    python benchmarks/compare_masks.py runs/fp32/bin_mask runs/bf16/bin_mask
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from utils.cli import ArgumentParser


def compare(a_dir: Path, b_dir: Path) -> dict:
    a = {p.relative_to(a_dir) for p in a_dir.rglob("*.png")}
    b = {p.relative_to(b_dir) for p in b_dir.rglob("*.png")}
    if not a:
        raise SystemExit(f"no PNG masks under {a_dir}")
    if a != b:
        only = sorted(str(p) for p in a ^ b)
        raise SystemExit(f"{len(only)} frames are in only one folder, e.g. {only[:3]}")
    per_frame, seq_sums = [], defaultdict(lambda: [0, 0])
    for rel in sorted(a):
        ma = np.asarray(Image.open(a_dir / rel)) > 0
        mb = np.asarray(Image.open(b_dir / rel)) > 0
        if ma.shape != mb.shape:
            raise SystemExit(f"{rel}: sizes differ, {ma.shape} vs {mb.shape}")
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
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    res = compare(args.reference, args.other)
    for seq, iou in res["sequences"].items():
        print(f"{seq:>24}: IoU {iou:.4f}")
    print(f"{res['frames']} frames: pooled IoU {res['pooled_iou']:.4f}, mean per frame {res['mean_frame_iou']:.4f}, "
          f"min {res['min_frame_iou']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
