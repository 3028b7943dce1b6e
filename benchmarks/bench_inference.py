"""Inference speed and memory of a MED-VT config on one device.

Prints clips/s, frames/s, latency (median and spread), peak memory (CUDA max allocated, or the
process's peak RSS on CPU) and FLOPs per clip (``torch.utils.flop_counter``) with the achieved
fraction of the device's peak where known. Example::

    python benchmarks/bench_inference.py --config medvt_swinb_avos --frames 6 --size 473 --device cpu
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import MODEL_CONFIGS, build_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of devices we have measured on; fp32 non-tensor-core.
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="medvt_swinb_avos", choices=sorted(MODEL_CONFIGS), help="model preset")
    p.add_argument("--frames", type=int, default=6, help="frames per clip")
    p.add_argument("--size", type=int, nargs="+", default=[473], help="clip side, or H W")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (CUDA) or fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--iters", type=int, default=3, help="timed runs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def count_flops(model, x) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops()


def main(argv=None) -> dict:
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (args.size * 2)[:2]
    model = build_model(args.config).to(device).eval()
    x = torch.randn(1, args.frames, 3, h, w, device=device)
    flops = count_flops(model, x)
    run = torch.compile(model) if args.compile else model
    amp = torch.autocast(device.type, dtype=DTYPES[args.dtype]) if args.dtype != "fp32" else nullcontext()

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode(), amp:
            run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [once() for _ in range(args.iters)]
    med = statistics.median(times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v[args.dtype] for k, v in PEAK_TFLOPS.items() if k in name), None)
    res = {
        "config": args.config, "device": name, "dtype": args.dtype, "compile": args.compile,
        "input": [1, args.frames, 3, h, w], "threads": torch.get_num_threads(),
        "latency_s_median": med, "latency_s_min": min(times), "latency_s_max": max(times),
        "clips_per_s": 1 / med, "frames_per_s": args.frames / med,
        "peak_memory_mb": peak_memory_mb(device), "gflops_per_clip": flops / 1e9,
        "achieved_tflops": flops / med / 1e12,
        "mfu": (flops / med / 1e12 / peak) if peak else None,
        "params": sum(p.numel() for p in model.parameters()),
    }
    for k, v in res.items():
        print(f"{k:>18}: {v:.4g}" if isinstance(v, float) else f"{k:>18}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
