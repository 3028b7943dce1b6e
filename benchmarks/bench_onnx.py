"""ONNX Runtime (CPU) against PyTorch eager (CPU) on one clip, same threads, side by side.

Exports the config with fresh weights (or takes ``--onnx_path``), then runs each runtime in its
own child process, so each peak RSS is that runtime's alone (model loading included: the
child's ``VmHWM``), and prints latency (median, min, max of ``--iters`` after
``--warmup``) and peak memory per runtime, and the ratios. ``--profile`` also prints ONNX
Runtime's profiler's top operators by total time.

Example::

    python benchmarks/bench_onnx.py --config medvt_swinb_avos --frames 6 --size 473 --threads 2
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.common import machine_info, machine_line, peak_rss_mib, preset, run_module
from models import build_model
from utils.cli import ArgumentParser, UserError, clip_frames, non_negative_int, positive_int, run_main


def run_child(args: argparse.Namespace) -> dict:
    """One runtime, in this process: build or load, warm up, time; returns figures."""
    torch.set_num_threads(args.threads)
    x = torch.randn(1, args.frames, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    if args.child == "torch":
        torch.manual_seed(0)
        model = build_model(args.config).eval()

        def step():
            with torch.inference_mode():
                return model(x)["pred_masks"]
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        if args.profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(args.workdir) / "ort_profile")
        session = ort.InferenceSession(args.onnx_path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}

        def step():
            return session.run(None, feed)[0]
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    res = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "peak_rss_mib": peak_rss_mib()}
    if args.child == "onnx" and args.profile:
        res["profile"] = session.end_profiling()
    return res


def top_ops(profile: str, n: int = 10) -> list[tuple[str, float, float]]:
    """(op type, total ms, share of node time) from an ONNX Runtime profile, largest first."""
    events = json.loads(Path(profile).read_text())
    total: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            total[e.get("args", {}).get("op_name", "?")] += e["dur"] / 1000
    all_ms = sum(total.values()) or 1.0
    return [(k, v, v / all_ms) for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:n]]


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="medvt_swinb_avos", type=preset, help="model preset (fresh weights)")
    p.add_argument("--frames", type=clip_frames, default=6, help="frames per clip")
    p.add_argument("--size", type=positive_int, default=473, help="square input side (default 473)")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads of PyTorch and of ONNX Runtime")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first")
    p.add_argument("--iters", type=positive_int, default=3, help="timed runs")
    p.add_argument("--onnx_path", default=None,
                   help="an exported file of this config and size (default: export one into a temporary folder)")
    p.add_argument("--profile", action="store_true", help="print ONNX Runtime's top operators")
    p.add_argument("--child", choices=["torch", "onnx"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return p


def check_onnx_file(path: str, frames: int, size: int, config: str) -> None:
    """Refuse an ``--onnx_path`` that is missing, not an export of ours, not for this clip, or of another model
    than ``--config`` (the two runtimes would time different models), before the PyTorch child's minutes of
    timing. A file exported before configs were recorded is taken as it is."""
    from models.config import MODEL_CONFIGS
    from models.onnx_export import OnnxModel

    onnx = OnnxModel(path, threads=1)
    onnx.check(frames, size, size)
    want = MODEL_CONFIGS[config]
    if onnx.config is not None and onnx.config != want:
        preset = next((name for name, cfg in MODEL_CONFIGS.items() if cfg == onnx.config), None)
        a, b = onnx.config.to_dict(), want.to_dict()
        differ = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
        raise UserError(f"--onnx_path {path} is an export of {f'preset {preset}' if preset else 'another model'} "
                        f"({', '.join(f'{k} {a[k]}' for k in differ[:4])}{' …' if len(differ) > 4 else ''}), not "
                        f"of --config {config}: the two runtimes would time different models; pass its --config, "
                        "or leave --onnx_path out to export this one")


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    if args.onnx_path is not None:
        check_onnx_file(args.onnx_path, args.frames, args.size, args.config)
    print(machine_line(machine_info()))

    with tempfile.TemporaryDirectory() as tmp:
        # the children run in the repository's root: a relative path would name another file there
        onnx_path = str(Path(args.onnx_path).absolute()) if args.onnx_path else None
        if onnx_path is None:
            from models.onnx_export import export_onnx

            torch.set_num_threads(args.threads)
            torch.manual_seed(0)
            onnx_path = str(Path(tmp) / f"{args.config}.onnx")
            print(f"exporting {args.config} to ONNX (minutes for Swin-B; --onnx_path takes an exported file) ...",
                  flush=True)
            t0 = time.perf_counter()
            export_onnx(build_model(args.config).eval(),
                        (torch.randn(2, args.frames, 3, args.size, args.size),), onnx_path)
            print(f"exported {args.config} [B, {args.frames}, 3, {args.size}, {args.size}] in "
                  f"{time.perf_counter() - t0:.0f} s")
        res = {}
        for child, label in (("torch", "PyTorch eager"), ("onnx", "ONNX Runtime")):
            argv = ["--child", child, "--onnx_path", onnx_path, "--workdir", tmp, "--config", args.config,
                    "--frames", str(args.frames), "--size", str(args.size), "--threads", str(args.threads),
                    "--warmup", str(args.warmup), "--iters", str(args.iters)] + (["--profile"] if args.profile else [])
            out = run_module("benchmarks.bench_onnx", argv, f"{label} ({args.warmup} warm-up + {args.iters} timed)",
                             args.threads)
            res[child] = json.loads(out.strip().splitlines()[-1])
        load = os.getloadavg()
        print(f"{args.config}, one {args.frames}x{args.size}x{args.size} clip, {args.threads} threads, {args.warmup} "
              f"warm-up + {args.iters} timed runs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'':>14} {'median s':>9} {'min s':>8} {'max s':>8} {'peak RSS MiB':>13}")
        for k, label in (("torch", "PyTorch eager"), ("onnx", "ONNX Runtime")):
            r = res[k]
            print(f"{label:>14} {r['median_s']:9.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} {r['peak_rss_mib']:13.0f}")
        print(f"ONNX Runtime / PyTorch: latency {res['onnx']['median_s'] / res['torch']['median_s']:.2f}x, "
              f"peak RSS {res['onnx']['peak_rss_mib'] / res['torch']['peak_rss_mib']:.2f}x")
        if args.profile:
            print("ONNX Runtime top operators (total over warm-up and timed runs):")
            for op, ms, share in top_ops(res["onnx"]["profile"]):
                print(f"  {op:<24} {ms:10.1f} ms  {100 * share:5.1f} %")


if __name__ == "__main__":
    run_main(main)
