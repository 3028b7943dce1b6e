"""Shared pieces of the benchmark scripts: their common flags and checks, dtypes, device peaks, peak
memory, FLOP counting, timing, child processes and result files.

Nothing here is used by the models or the tests' numerics; the scripts only print figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from models.config import MODEL_CONFIGS, preset_name
from utils.cli import UserError, clip_frames, non_negative_int, positive_float, positive_int
from utils.logger import progress
from utils.outputs import check_output_file, write_whole

ROOT = Path(__file__).resolve().parents[1]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets: bf16/fp16 on tensor cores with
# fp32 accumulation; "tf32" the TF32 tensor-core rate (float32 convolutions take it by default,
# torch.backends.cudnn.allow_tf32); "fp32" is the plain fp32 rate, which is what float32 matmuls
# use unless torch.backends.cuda.matmul.allow_tf32 is set. Matched in order against
# torch.cuda.get_device_name(), so the more specific names come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
]


def preset(text: str) -> str:
    """``--config``: a model preset (a former name too), refused by argparse with the known names."""
    name = preset_name(text)
    if name not in MODEL_CONFIGS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a model preset; known: {', '.join(MODEL_CONFIGS)}")
    return name


def add_json_flags(p: argparse.ArgumentParser) -> None:
    """``--json`` and its ``--overwrite``: checked by :func:`check_json` before any measuring."""
    p.add_argument("--json", default=None,
                   help="also write the figures to this JSON file (a new file, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def check_json(args: argparse.Namespace, files: dict | None = None, folders: dict | None = None) -> None:
    """Refuse a ``--json`` that cannot be written or would replace something, before minutes of measuring:
    a folder, one in a missing folder, an existing file without ``--overwrite``, one of the input ``files``,
    or a file inside one of the input ``folders`` (flag -> path)."""
    if args.json is None:
        return
    check_output_file(args.json, "--json", files or {}, args.overwrite)
    for flag, folder in (folders or {}).items():
        if Path(os.path.realpath(args.json)).is_relative_to(os.path.realpath(folder)):
            raise UserError(f"--json {args.json} is inside {flag} {folder}: it would mix with the inputs, or replace "
                            "one; write it outside that folder")


def check_cuda(p: argparse.ArgumentParser, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to PyTorch")


def add_common_args(p: argparse.ArgumentParser, default_size: int) -> None:
    p.add_argument("--config", default="medvt_swinb_avos", type=preset,
                   help="model preset (models.config.MODEL_CONFIGS)")
    p.add_argument("--frames", type=clip_frames, default=6, help="frames per clip (T, at least 2)")
    p.add_argument("--size", type=positive_int, nargs="+", default=[default_size], metavar="S",
                   help="clip size: one value S for S x S, or two values H W")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                   help="where to run (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                   help="fp32, or autocast to bf16/fp16 (for CUDA; runs on CPU too)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (compile time is in the warm-up)")
    p.add_argument("--channels_last", action="store_true",
                   help="keep the 2-D conv weights in channels-last memory format")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first")
    p.add_argument("--iters", type=positive_int, default=3, help="timed runs")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--peak_tflops", type=positive_float, default=None,
                   help="device peak in TFLOP/s for the MFU figure (default: table for known GPUs; none on CPU)")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP-counting pass")
    add_json_flags(p)


def parse_checked(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` and refuse settings that cannot run or would overwrite a file, naming the flag."""
    args = p.parse_args(argv)
    if len(args.size) > 2:
        p.error(f"--size takes one value (S x S) or two (H W), not {len(args.size)}")
    check_cuda(p, args.device)
    check_json(args)
    return args


def setup(args: argparse.Namespace, model: torch.nn.Module) -> tuple[torch.device, int, int]:
    """Apply ``--threads``, move ``model`` to ``--device`` (channels-last if asked) and return the
    device and the clip's height and width from ``--size``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model.to(device)
    if args.channels_last:
        set_channels_last(model)
    h, w = (args.size * 2)[:2]
    return device, h, w


def throughput(args: argparse.Namespace, device: torch.device, flops: int | None, median_s: float) -> dict:
    """Device name, its peak for ``--dtype``, the achieved TFLOP/s and their ratio (MFU) where known."""
    name = device_name(device)
    peak = peak_tflops(name, args.dtype, args.peak_tflops)
    achieved = flops / median_s / 1e12 if flops else None
    return {"device": name, "achieved_tflops": achieved, "device_peak_tflops": peak,
            "mfu": achieved / peak if (achieved and peak) else None}


CPU_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def status_mib(field: str) -> float | None:
    """A size from this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set: ``VmHWM``, which is per address space and so starts afresh at exec,
    where ``ru_maxrss`` is inherited by a child from the process that started it (a parent at 600 MiB gives
    a 12 MiB child 611 MiB). ``ru_maxrss`` only where there is no /proc."""
    peak = status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict:
    """CPU model, core count, the vector/matrix extensions that matter for torch, and the load average."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "extensions": [e for e in CPU_EXTENSIONS if e in flags],
            "load_average": list(os.getloadavg())}


def machine_line(info: dict) -> str:
    """:func:`machine_info` in one printed line: CPU figures depend on the CPU's model, extensions and load."""
    return (f"machine: {info['cpu']} ({info['cores']} cores; {', '.join(info['extensions']) or 'no AVX'}); "
            f"load average {' '.join(f'{x:.2f}' for x in info['load_average'])}")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_tflops(name: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks.get(dtype)
    return None


class PeakMemory:
    """Peak memory of the measured runs.

    CUDA: ``torch.cuda.max_memory_allocated`` since :meth:`reset` (tensors only, not the caching
    allocator's reserve). CPU: the process's peak resident set. Linux's ``ru_maxrss`` is a
    process-lifetime peak (model building and the FLOP pass included), so :meth:`reset` first
    tries to clear the kernel's high-water mark (``/proc/self/clear_refs`` ← 5) and reads
    ``VmHWM`` afterwards; where that is not allowed the figure is the lifetime peak, and
    :attr:`kind` says which one it is.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "ru_maxrss (process lifetime)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.kind = "VmHWM since reset (peak RSS of the timed runs)"
        except OSError:
            pass

    def mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind.startswith("VmHWM"):
            return peak_rss_mib()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _deform_conv(x, w, *args, out_shape=None, **kwargs) -> int:
    # Counted as the 3x3 conv it computes (2·N·Cout·H'·W'·Cin·kh·kw); the bilinear sampling is extra.
    n, _, h, wd = out_shape
    return 2 * n * h * wd * math.prod(w)


def _deform_conv_backward(grad, x, w, *args, out_shape=None, **kwargs) -> int:
    n, c_out, h, wd = grad
    return 2 * 2 * n * h * wd * c_out * math.prod(w[1:])  # grad input + grad weight


def flop_mapping() -> dict:
    """Formulas for ops ``FlopCounterMode`` does not know: the fused CPU attention kernel (the
    CUDA ones are built in) and torchvision's deformable convolution."""
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
    }
    try:
        import torchvision  # noqa: F401  (registers the torchvision ops)

        mapping[torch.ops.torchvision.deform_conv2d] = _deform_conv
        mapping[torch.ops.torchvision._deform_conv2d_backward] = _deform_conv_backward
    except (ImportError, AttributeError, RuntimeError):
        pass
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (multiply-add = 2), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        fn()
    return counter.get_total_flops()


def time_runs(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
              memory: PeakMemory) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` untimed ones; peak memory is
    reset after the warm-up so it covers the timed calls only (where the platform allows). A progress
    bar counts the calls (a Swin-B step on a CPU takes a minute); it is drawn outside the timed span."""
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    with progress(total=warmup + iters, desc=f"{warmup} warm-up + {iters} timed", unit="run") as bar:
        for _ in range(warmup):
            once()
            bar.update()
        memory.reset()
        times = []
        for _ in range(iters):
            times.append(once())
            bar.update()
    return times


def latency_stats(times: list[float], prefix: str) -> dict:
    med = statistics.median(times)
    return {
        f"{prefix}_median": med, f"{prefix}_min": min(times), f"{prefix}_max": max(times),
        f"{prefix}_spread_pct": 100 * (max(times) - min(times)) / med,
    }


def set_channels_last(model: torch.nn.Module) -> None:
    """2-D conv weights to channels-last (4-D parameters only; the 3-D convs keep their layout)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.to(memory_format=torch.channels_last)


def report(res: dict, json_path: str | None) -> None:
    for k, v in res.items():
        print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
    write_json(res, json_path)


def write_json(res: dict, json_path: str | None) -> None:
    """The figures to ``--json`` (checked by :func:`check_json` before the work), whole or not at all."""
    if json_path:
        write_whole(json_path, json.dumps(res, indent=2, default=str))
        print(f"wrote {json_path}")


def run_module(module: str, argv: list[str], what: str, threads: int) -> str:
    """Run ``python -m module argv`` from the repository root with ``threads`` CPU threads and return its
    standard output; say first what runs (a child runs for minutes, its output captured). As a module from
    the root: a script run by its path has its own folder on ``sys.path``, not the root, so the top-level
    scripts (``inference_swin_medvt_avos``) could not be imported. A failed child is one line naming it,
    with the last line of its standard error (its own one-line error, or its exception)."""
    print(f"  running {what} ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise UserError(f"{what} failed (exit status {proc.returncode}): {last}")
    return proc.stdout
