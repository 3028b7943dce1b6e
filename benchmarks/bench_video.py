"""Streaming video inference: memory against video length, window speed and accuracy, I/O overhead.

Every figure comes from ``inference_swin_medvt_avos.py --video`` (or ``--dataset davis``) run in a
child process of its own (peak RSS = the child's ``VmHWM``, its own peak: ``ru_maxrss`` would include
this process's, which a child inherits), side by side in one run:

1. **Memory vs length** — synthetic 854x480 H.264 videos of ``--rss_frames`` (default 300 and
   3000) frames, the ``tiny`` model: peak RSS of each run and their ratio (target ≤ 1.1).
2. **Windows** — ``centre`` and ``chunk`` on one synthetic video of ``--speed_frames`` frames at
   the same size: end-to-end frames/s and their ratio (target chunk ≥ 5× centre).
3. **I/O overhead** — the model alone on one clip of the same size (``bench_inference.py``):
   frames/s of the forward passes a window needs (centre: one clip per frame; chunk: one per
   ``T`` frames) against the end-to-end rate (target end-to-end ≥ 0.8× model-only).
4. **Accuracy** — with ``--demo_dir`` (the folder ``make demo`` writes: ``train/checkpoint_best.pth``
   and ``data/``), J and F of each window on the demo's held-out set, with flip as the demo runs it.

Example (about 15 minutes on a 2-core CPU)::

    python benchmarks/bench_video.py --threads 2 --demo_dir demo_output
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (add_json_flags, check_json, machine_info, machine_line, peak_rss_mib, preset,
                               run_module, write_json)
from utils.cli import ArgumentParser, UserError, clip_frames, positive_int, require_folder, run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default="tiny", type=preset, help="model preset for parts 1-3 (random weights)")
    p.add_argument("--val_size", type=positive_int, default=473,
                   help="shorter side fed to the model (the README's 473)")
    p.add_argument("--num_frames", type=clip_frames, default=6, help="clip length T")
    p.add_argument("--rss_frames", type=positive_int, nargs="+", default=[300, 3000],
                   help="video lengths for part 1: two or more different ones (the shortest and the longest "
                        "are compared)")
    p.add_argument("--rss_window", default="chunk", choices=["centre", "chunk"],
                   help="window of the memory runs (chunk: the 3000-frame run takes minutes, not an hour)")
    p.add_argument("--rss_val_size", type=positive_int, default=240,
                   help="model input size of the memory runs (the video stays 854x480; a small model input "
                        "keeps the run short and makes any per-frame growth stand out more)")
    p.add_argument("--speed_frames", type=positive_int, default=96, help="video length for parts 2-3")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads in every child")
    p.add_argument("--demo_dir", type=Path, default=None, help="a `make demo` output folder for part 4")
    p.add_argument("--skip", nargs="*", default=[], choices=["rss", "speed", "accuracy"], help="parts to leave out")
    add_json_flags(p)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------- children
def child(argv_json: str) -> None:
    """Run the inference script in this process; print its result and this process's peak RSS."""
    import torch

    import inference_swin_medvt_avos as script

    spec = json.loads(argv_json)
    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    res = script.main(spec["argv"])
    wall = time.perf_counter() - t0
    print(json.dumps({"result": res, "peak_rss_mib": peak_rss_mib(), "command_s": wall}, default=str))


def run_child(argv: list[str], threads: int, what: str) -> dict:
    """``inference_swin_medvt_avos.py argv`` in a child process (:func:`child`); its result and peak RSS."""
    spec = json.dumps({"argv": argv, "threads": threads})
    out = run_module("benchmarks.bench_video", ["--_child", spec], what, threads)
    return json.loads(out.strip().splitlines()[-1])


def model_only(config: str, frames: int, h: int, w: int, threads: int, tmp: Path) -> dict:
    result = tmp / "model_only.json"
    run_module("benchmarks.bench_inference",
               ["--config", config, "--frames", str(frames), "--size", str(h), str(w), "--device", "cpu", "--threads",
                str(threads), "--no_flops", "--warmup", "2", "--iters", "5", "--json", str(result)],
               f"the model alone (bench_inference, {config} at {w}x{h})", threads)
    return json.loads(result.read_text())


# ------------------------------------------------------------------------------------- data
def synthetic_video(path: Path, n: int, hw: tuple[int, int] = (480, 854), fps: int = 30) -> Path:
    """An H.264 video of a bright disc moving over a textured background."""
    from utils.visualize import VideoWriter

    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    background = ((np.sin(xx / 23.0) + np.cos(yy / 17.0)) * 40 + 100).astype(np.uint8)
    with VideoWriter(path, fps) as writer:
        for t in range(n):
            frame = np.repeat(background[..., None], 3, axis=2)
            cx, cy = int(w / 2 + w / 3 * np.sin(t / 15)), int(h / 2 + h / 4 * np.cos(t / 20))
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < 60 ** 2] = (230, 80, 60)
            writer.write(frame)
    return path


def tiny_checkpoint(path: Path, config: str) -> Path:
    import torch

    from models import build_model

    torch.manual_seed(0)
    model = build_model(config)
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, path)
    return path


# ------------------------------------------------------------------------------------- parts
def part_rss(args, tmp: Path, ckpt: Path) -> dict:
    rows = {}
    for n in args.rss_frames:
        video = synthetic_video(tmp / f"rss_{n}.mp4", n)
        t0 = time.perf_counter()
        r = run_child(["--model_path", str(ckpt), "--video", str(video), "--val_size", str(args.rss_val_size),
                       "--window", args.rss_window, "--num_frames", str(args.num_frames), "--device", "cpu",
                       "--output_dir", str(tmp / f"out_rss_{n}")], args.threads, f"a {n}-frame video")
        rows[n] = {"peak_rss_mib": r["peak_rss_mib"], "frames_per_s": r["result"]["video"]["frames_per_s"],
                   "wall_s": time.perf_counter() - t0, "max_frames_held": r["result"]["video"]["max_frames_held"]}
        print(f"  {n:>5} frames ({args.rss_window}, input {args.rss_val_size}): "
              f"peak RSS {rows[n]['peak_rss_mib']:.0f} MiB, "
              f"{rows[n]['frames_per_s']:.2f} frames/s end to end, at most {rows[n]['max_frames_held']} frames held")
    lo, hi = min(args.rss_frames), max(args.rss_frames)
    ratio = rows[hi]["peak_rss_mib"] / rows[lo]["peak_rss_mib"]
    print(f"  peak RSS {hi} / {lo} frames: {ratio:.3f}x (target <= 1.1)")
    return {"runs": rows, "ratio": ratio}


def part_speed(args, tmp: Path, ckpt: Path) -> dict:
    from datasets.transforms import test_size

    video = synthetic_video(tmp / "speed.mp4", args.speed_frames)
    h, w = test_size(480, 854, args.val_size)
    res, command = {}, {}
    for window in ("centre", "chunk"):
        r = run_child(["--model_path", str(ckpt), "--video", str(video), "--val_size", str(args.val_size),
                       "--window", window, "--num_frames", str(args.num_frames), "--device", "cpu",
                       "--output_dir", str(tmp / f"out_{window}")], args.threads, f"the {window} window")
        res[window] = r["result"]["video"]["frames_per_s"]  # decode, resize, forwards, writing: the frame loop
        command[window] = args.speed_frames / r["command_s"]  # also loading the model and checking the file
    model = model_only(args.config, args.num_frames, h, w, args.threads, tmp)
    clips_per_s = model["clips_per_s"]
    need = {"centre": clips_per_s, "chunk": clips_per_s * args.num_frames}  # model-only frames/s per window
    print(f"  {args.speed_frames} frames at {w}x{h}, {args.config}: model alone {clips_per_s:.3f} clips/s "
          f"(latency {model['latency_s_median']:.3f} s)")
    for window in ("centre", "chunk"):
        print(f"  {window:>6}: end to end {res[window]:.2f} frames/s (whole command {command[window]:.2f}); "
              f"model-only {need[window]:.2f} frames/s; ratio {res[window] / need[window]:.2f} (target >= 0.8), "
              f"whole command {command[window] / need[window]:.2f}")
    print(f"  chunk / centre: {res['chunk'] / res['centre']:.2f}x (target >= 5)")
    return {"input_hw": [h, w], "end_to_end_fps": res, "whole_command_fps": command, "model_only_fps": need,
            "overhead_ratio": {k: res[k] / need[k] for k in res}, "chunk_over_centre": res["chunk"] / res["centre"]}


def demo_inputs(demo_dir: Path) -> tuple[Path, Path]:
    """The checkpoint and held-out set of a ``make demo`` folder, refused before any part runs."""
    ckpt, data = demo_dir / "train" / "checkpoint_best.pth", demo_dir / "data"
    require_folder(demo_dir, "--demo_dir", "give the folder make demo writes")
    if not ckpt.is_file() or not data.is_dir():
        raise UserError(f"--demo_dir {demo_dir}: expected train/checkpoint_best.pth and data/ in it (run make demo)")
    return ckpt, data


def part_accuracy(args, tmp: Path) -> dict:
    ckpt, data = demo_inputs(args.demo_dir)
    from utils.demo import SIZE_HW

    res = {}
    for window in ("centre", "chunk"):
        r = run_child(["--model_path", str(ckpt), "--dataset", "davis", "--davis16_root", str(data), "--val_size",
                       str(min(SIZE_HW)), "--flip", "--window", window, "--device", "cpu",
                       "--output_dir", str(tmp / f"out_demo_{window}")], args.threads,
                      f"the {window} window on the demo")
        d = r["result"]["davis"]
        res[window] = {"J": d["J_mean"], "F": d["F_mean"], "JF": d["JF_mean"]}
        print(f"  {window:>6}: J {d['J_mean']:.4f}  F {d['F_mean']:.4f}  J&F {d['JF_mean']:.4f}")
    delta = res["chunk"]["J"] - res["centre"]["J"]
    print(f"  J chunk - centre: {delta:+.4f} (target |delta| <= 0.02)")
    return {**res, "J_delta": delta}


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args._child:
        child(args._child)
        return {}
    if "rss" not in args.skip and len(set(args.rss_frames)) < 2:  # one length has no ratio to compare
        parser.error(f"--rss_frames needs two different video lengths (e.g. 300 3000), not {args.rss_frames}")
    accuracy = "accuracy" not in args.skip and args.demo_dir is not None
    if accuracy:  # before parts 1-3, which take minutes
        args.demo_dir = args.demo_dir.absolute()  # read by child processes that run in the repository
        demo_inputs(args.demo_dir)
    check_json(args, {"--demo_dir checkpoint": args.demo_dir / "train" / "checkpoint_best.pth"} if accuracy else {})
    info = machine_info()
    print(f"{machine_line(info)}; torch threads {args.threads}")
    out: dict = {"machine": info, "config": args.config, "val_size": args.val_size, "clip_len": args.num_frames}
    with tempfile.TemporaryDirectory(prefix="bench_video_") as d:
        tmp = Path(d)
        ckpt = tiny_checkpoint(tmp / "model.pth", args.config)
        if "rss" not in args.skip:
            print("1. peak memory against video length")
            out["rss"] = part_rss(args, tmp, ckpt)
        if "speed" not in args.skip:
            print("2-3. windows and I/O overhead")
            out["speed"] = part_speed(args, tmp, ckpt)
        if accuracy:
            print("4. accuracy of each window on the demo's held-out set")
            out["accuracy"] = part_accuracy(args, tmp)
    out["load_average_after"] = list(os.getloadavg())
    write_json(out, args.json)
    return out


if __name__ == "__main__":
    run_main(main)
