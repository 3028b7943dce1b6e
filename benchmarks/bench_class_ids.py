"""The arg-max of a multi-class prediction at the frame size: all classes at once against a few at a time.

VSS and A2D write each frame's class ids at the frame's own size, so the logits of every class are
resized to it first: 124 classes at 1080p are 1 GiB of float32 per view and scale.
:meth:`models.predictor.VideoPredictor._class_ids` resizes a few classes at a time and keeps a
running maximum. This script times both on the same random logits, side by side in one process
(one untimed round of both first, so that neither pays the one-time costs; then alternating,
``--iters`` times each), and prints per frame: the median time, the memory each adds at its peak
(CUDA ``max_memory_allocated``, or on the CPU the peak resident set, ``VmHWM`` cleared before each;
minus what was in use before it started), and the share of pixels whose class differs (float
rounding between two nearly equal classes).

Example::

    python benchmarks/bench_class_ids.py --classes 124 --size 1080 1920 --threads 2
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import statistics
import time

import torch

from benchmarks.common import PeakMemory, check_cuda, machine_info, machine_line, status_mib
from models.predictor import VideoPredictor
from utils.cli import ArgumentParser, positive_int, run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--classes", type=positive_int, default=124, help="classes K (VSPW 124, A2D 80)")
    p.add_argument("--size", type=positive_int, nargs=2, default=[1080, 1920], metavar=("H", "W"),
                   help="frame size the class ids are written at")
    p.add_argument("--logit_size", type=positive_int, nargs=2, default=[60, 107], metavar=("H", "W"),
                   help="the model's output size (a quarter of a 240x426 input)")
    p.add_argument("--flip", action="store_true", help="two views merged by their mean")
    p.add_argument("--activation", default="none", choices=["none", "softmax"],
                   help="per view before the merge: none (VSS and A2D without --flip) or softmax (VSS --flip, "
                        "whose sums over the classes take a first pass) (default none)")
    p.add_argument("--iters", type=positive_int, default=3, help="timed frames per method")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default torch's)")
    return p


def in_use_mib(device: torch.device) -> float:
    """Memory in use now: CUDA tensors, or the CPU process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return status_mib("VmRSS") or 0.0


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_cuda(parser, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    views = [0, 1] if args.flip else [0]
    predictor = VideoPredictor(torch.nn.Identity(), "chunk", 1, flip=args.flip, activation=args.activation)
    logits = [torch.randn(len(views), args.classes, 1, *args.logit_size, generator=torch.Generator().manual_seed(0))
              .to(device)]
    size = tuple(args.size)
    methods = {"all classes": lambda: predictor._merged(logits, views, 0, size).argmax(0).to(torch.uint8),
               "a few at a time": lambda: predictor._class_ids(logits, views, 0, size)}
    memory = PeakMemory(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, float] = {name: 0.0 for name in methods}
    for run in methods.values():  # untimed: one-time costs (allocations, kernels' first use) charged to neither
        run()
    ids = {}
    for _ in range(args.iters):
        for name, run in methods.items():  # alternating, so a drift in the machine's load hits both
            ids.pop(name, None)
            memory.reset()
            before = in_use_mib(device)
            t0 = time.perf_counter()
            ids[name] = run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], memory.mib() - before)
    differ = (ids["all classes"] != ids["a few at a time"]).float().mean().item()
    info = machine_info()
    print(f"{machine_line(info)}; torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    print(f"{args.classes} classes, logits {args.logit_size[0]}x{args.logit_size[1]} -> {size[0]}x{size[1]}, "
          f"{len(views)} view(s), activation {args.activation}; memory added at the peak: {memory.kind}")
    for name in methods:
        print(f"  {name:16s} median {statistics.median(times[name]):.3f} s/frame, peak +{peaks[name]:,.0f} MiB")
    ratio = statistics.median(times["all classes"]) / statistics.median(times["a few at a time"])
    # small sizes add no measurable memory (the resident set grows by pages the process already has)
    memory_ratio = (f"{peaks['a few at a time'] / peaks['all classes']:.2f}x" if peaks["all classes"] > 0
                    else "no measurable difference in")
    print(f"  a few at a time: {ratio:.2f}x the speed, {memory_ratio} the peak memory; pixels whose class differs: "
          f"{100 * differ:.4f}%")
    return {"times": times, "peak_mib": peaks, "memory_kind": memory.kind, "differ": differ, "machine": info}


if __name__ == "__main__":
    run_main(main)
