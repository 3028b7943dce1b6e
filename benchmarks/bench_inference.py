"""Inference speed and memory of a MED-VT config on one device (one clip per forward, batch 1).

Builds the model with its random initialisation (speed does not depend on the weights), runs
``--warmup`` untimed forwards and ``--iters`` timed ones under ``torch.inference_mode`` (and
autocast for ``--dtype bf16|fp16``), and prints:

* clips/s, frames/s, latency median / min / max and the spread ((max − min) / median);
* peak memory of the timed runs: CUDA ``max_memory_allocated``, or on CPU the peak resident set
  (``VmHWM`` after clearing it; where that is refused, ``ru_maxrss``, which is a process-lifetime
  peak that includes building the model — the output says which);
* FLOPs per clip from ``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2; the fused
  CPU attention kernel and the deformable conv counted with the formulas in ``benchmarks/common.py``)
  and, where the device's peak is known (table of common GPUs, or ``--peak_tflops``), the
  achieved fraction of it (MFU). CPU peaks are unknown unless given.

Examples::

    python benchmarks/bench_inference.py --config medvt_swinb_avos --frames 6 --size 473 --device cpu --threads 2
    python benchmarks/bench_inference.py --config medvt_swinb_avos --size 473 --device cuda --dtype bf16 --compile
    python benchmarks/bench_inference.py --config tiny --size 128 --iters 5 --json runs/bench.json
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import contextlib
import statistics

import torch

from benchmarks.common import (DTYPES, PeakMemory, add_common_args, count_flops, latency_stats, machine_info,
                               parse_checked, report, setup, throughput, time_runs)
from models import build_model
from utils.cli import ArgumentParser, run_main
from utils.engine import autocast, frames_too_small


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_common_args(p, default_size=473)
    return p


def main(argv=None) -> dict:
    args = parse_checked(get_args_parser(), argv)
    model = build_model(args.config).eval()
    device, h, w = setup(args, model)
    x = torch.randn(1, args.frames, 3, h, w, device=device)
    amp = autocast(device, DTYPES[args.dtype] if args.dtype != "fp32" else None)

    def forward(m, amp=amp) -> None:
        with torch.inference_mode(), amp:
            m(x)

    memory = PeakMemory(device)
    with frames_too_small(f"--size {h} {w}", "give a larger --size"):  # torch's error, found at the first forward
        # FLOPs do not depend on the dtype: counted in float32 (the counter and CPU autocast disagree on
        # one mixed-dtype einsum that runs fine outside the counter)
        flops = None if args.no_flops else count_flops(lambda: forward(model, contextlib.nullcontext()))
        run = torch.compile(model) if args.compile else model
        times = time_runs(lambda: forward(run), device, args.warmup, args.iters, memory)
    med = statistics.median(times)
    res = {
        "config": args.config, "dtype": args.dtype, "compile": args.compile,
        "channels_last": args.channels_last, "input": [1, args.frames, 3, h, w], "threads": torch.get_num_threads(),
        "iters": args.iters, **latency_stats(times, "latency_s"),
        "clips_per_s": 1 / med, "frames_per_s": args.frames / med,
        "peak_memory_mib": memory.mib(), "peak_memory_kind": memory.kind,
        "gflops_per_clip": flops / 1e9 if flops else None, **throughput(args, device, flops, med),
        "params": sum(p.numel() for p in model.parameters()),
    }
    res["machine"] = machine_info()  # CPU figures depend on the CPU's model, matrix units and load
    report(res, args.json)
    return res


if __name__ == "__main__":
    run_main(main)
