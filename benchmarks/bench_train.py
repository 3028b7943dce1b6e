"""One training step (forward, loss, backward, optimizer step) of a MED-VT config: speed and memory.

Example::

    python benchmarks/bench_train.py --config medvt_swinb_avos --frames 6 --size 360 --device cuda --dtype bf16
    python benchmarks/bench_train.py --config tiny --size 128 --grad_checkpointing
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_inference import DTYPES, peak_memory_mb  # noqa: E402
from models import MODEL_CONFIGS, build_model  # noqa: E402
from models.losses import AVOSCriterion  # noqa: E402


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="medvt_swinb_avos", choices=sorted(MODEL_CONFIGS), help="model preset")
    p.add_argument("--frames", type=int, default=6, help="frames per clip")
    p.add_argument("--size", type=int, nargs="+", default=[360], help="clip side, or H W")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype")
    p.add_argument("--grad_checkpointing", action="store_true", help="recompute backbone activations in backward")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--iters", type=int, default=3, help="timed steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = (args.size * 2)[:2]
    model = build_model(args.config).to(device).train()
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    criterion = AVOSCriterion()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = torch.randn(1, args.frames, 3, h, w, device=device)
    y = torch.rand(1, args.frames, h, w, device=device) > 0.5
    amp = torch.autocast(device.type, dtype=DTYPES[args.dtype]) if args.dtype != "fp32" else nullcontext()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            loss = criterion(model(x), y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(args.iters)]
    med = statistics.median(times)
    res = {
        "config": args.config, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "grad_checkpointing": args.grad_checkpointing, "input": [1, args.frames, 3, h, w],
        "step_s_median": med, "step_s_min": min(times), "step_s_max": max(times),
        "peak_memory_mb": peak_memory_mb(device),
    }
    for k, v in res.items():
        print(f"{k:>18}: {v:.4g}" if isinstance(v, float) else f"{k:>18}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
