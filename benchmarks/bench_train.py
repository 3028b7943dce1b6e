"""One training step of a MED-VT config: speed and memory (batch 1 clip, as the original trains).

A step is forward, the AVOS loss (focal + dice with the aux term), backward, gradient clipping
(0.1) and an AdamW step, on a random clip and random masks. ``--warmup`` untimed steps (they
also create the optimizer state), then ``--iters`` timed ones. Printed: step latency median /
min / max and spread, clips/s and frames/s of training, peak memory of the timed steps (CUDA
``max_memory_allocated``; on CPU the peak RSS, see ``benchmarks/common.PeakMemory``), FLOPs per
step (forward + backward, counted without recomputation so that ``--grad_checkpointing`` runs
report the same model FLOPs) and the MFU where the device's peak is known.

Run it twice to compare gradient checkpointing of the backbone and encoder::

    python benchmarks/bench_train.py --config medvt_swinb_avos --frames 6 --size 360 --device cuda --dtype bf16
    python benchmarks/bench_train.py --config medvt_swinb_avos --frames 6 --size 360 --device cuda --dtype bf16 \\
        --grad_checkpointing
    python benchmarks/bench_train.py --config tiny --size 128 --device cpu
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
from models.losses import AVOSCriterion
from utils.cli import ArgumentParser, run_main
from utils.engine import autocast, frames_too_small


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    add_common_args(p, default_size=360)
    p.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute backbone and encoder activations in backward (less memory, more time)")
    return p


def main(argv=None) -> dict:
    args = parse_checked(get_args_parser(), argv)
    model = build_model(args.config).train()
    device, h, w = setup(args, model)
    criterion = AVOSCriterion()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = torch.randn(1, args.frames, 3, h, w, device=device)
    y = (torch.rand(1, args.frames, h, w, device=device) > 0.5).float()
    amp = autocast(device, DTYPES[args.dtype] if args.dtype != "fp32" else None)

    def forward_backward(m, amp=amp) -> None:
        with amp:
            loss = criterion(m(x), y)["loss"]
        loss.backward()

    def step(m) -> None:
        opt.zero_grad(set_to_none=True)
        forward_backward(m)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()

    flops = None
    memory = PeakMemory(device)
    with frames_too_small(f"--size {h} {w}", "give a larger --size"):  # torch's error, found at the first forward
        if not args.no_flops:  # model FLOPs: no recomputation, so both settings report the same figure
            flops = count_flops(lambda: forward_backward(model, contextlib.nullcontext()))  # float32, as inference
            opt.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(args.grad_checkpointing)
        run = torch.compile(model) if args.compile else model
        times = time_runs(lambda: step(run), device, args.warmup, args.iters, memory)
    med = statistics.median(times)
    res = {
        "config": args.config, "dtype": args.dtype, "compile": args.compile,
        "grad_checkpointing": args.grad_checkpointing, "channels_last": args.channels_last,
        "input": [1, args.frames, 3, h, w], "threads": torch.get_num_threads(), "iters": args.iters,
        **latency_stats(times, "step_s"), "clips_per_s": 1 / med, "frames_per_s": args.frames / med,
        "peak_memory_mib": memory.mib(), "peak_memory_kind": memory.kind,
        "gflops_per_step": flops / 1e9 if flops else None, **throughput(args, device, flops, med),
    }
    res["machine"] = machine_info()  # CPU figures depend on the CPU's model, matrix units and load
    report(res, args.json)
    return res


if __name__ == "__main__":
    run_main(main)
