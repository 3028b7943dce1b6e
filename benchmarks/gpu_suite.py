"""The GPU figures in one command: inference, training steps, MFU, SDPA backends, CUDA tests.

A device machine is lent to a session rarely and briefly (15 minutes, all tries included), so the
whole measurement is one prepared command that writes ``suite.json`` and ``suite.md`` into
``--out``, rewritten after every job so that a run cut short still leaves its figures::

    python -m benchmarks.gpu_suite --device cuda --out $OUT                 # the real run
    python -m benchmarks.gpu_suite --device cpu --smoke --out runs/smoke    # every step, tiny, CPU

(as a module, from the repository root: where it is not pip-installed, that puts the root on
``sys.path``).

Every measurement ("job") runs in its own Python process with its own time limit: an
out-of-memory, a crash or a slow ``torch.compile`` ends that job alone, its peak memory is its
own, and the rest of the suite goes on. Jobs run in order of importance until ``--deadline_s``.
Ctrl-C (or SIGTERM) stops the running jobs and starts no others; the figures so far stay in ``--out``.

Jobs (full sizes; ``--smoke`` shrinks sizes and iterations and uses the ``tiny`` preset):

1. inference, Swin-B AVOS, 6×473×841: ours fp32, ours bf16, ours bf16 + ``torch.compile``, and
   the original (rkyuca/medvt 555a462, extracted by ``benchmarks/extract_original.py`` into the
   ignored ``.orig/``) in fp32 with the same deterministic weights; batch 1, then batches
   doubled until out of memory or ``--search_s``. Under the original's ``centre`` protocol each
   forward yields one frame per clip, so centre frames/s = clips/s.
2. one training step (forward, focal+dice, backward, clip 0.1, AdamW), 6×360×640: the original
   fp32, ours fp32, ours bf16, ours bf16 + gradient checkpointing; step time and peak memory.
3. FLOPs per clip/step (``benchmarks.common.count_flops``) → TFLOP/s and MFU against the dense
   peak of the run's dtype (fp32 runs also against the TF32 peak), plus a measured bf16 matmul.
4. which SDPA backend each attention call site takes, read from the profiler's op names.
5. the CUDA-relevant pytest files with ``--device cuda``.

Then ours-fp32 vs the original (max |Δ| of the logits on one seeded clip) and the bf16 masks vs
fp32 (IoU of logits > 0), and the issue's targets as ratios.
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.common import cpu_model, peak_tflops, preset
from benchmarks.gpu_jobs import JOBS, original_unavailable
from utils.cli import ArgumentParser, UserError, positive_float, positive_int, run_main
from utils.outputs import add_overwrite_flag, check_output_dir, write_whole

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- plan

def plan(args: argparse.Namespace) -> list[dict]:
    """The jobs in order of importance (a deadline drops the tail, not the head)."""
    smoke = args.smoke
    cfg = args.config or ("tiny" if smoke else "medvt_swinb_avos")
    inf = [6, 32, 48] if smoke else [6, 473, 841]
    trn = [6, 32, 48] if smoke else [6, 360, 640]
    it = {"warmup": 1, "iters": 1} if smoke else {"warmup": 2, "iters": 5}
    search = {"search_s": args.search_s, "max_batch": 2 if smoke else 64}
    base = {"config": cfg, "device": args.device, "orig_root": args.orig_root, **it}
    jobs = [
        {"kind": "calib", "name": "matmul calibration", "device": args.device, "n": 256 if smoke else 8192},
        {"kind": "infer", "name": "infer ours bf16", "impl": "ours", "dtype": "bf16", "shape": inf, **base,
         **search},
        {"kind": "trained", "name": "trained checkpoint bf16 vs fp32 masks", "device": args.device,
         "ckpt": args.trained_ckpt, "data": args.trained_data, "size": 96},
        {"kind": "infer", "name": "infer original fp32", "impl": "original", "dtype": "fp32", "shape": inf, **base,
         **search},
        {"kind": "infer", "name": "infer ours fp32", "impl": "ours", "dtype": "fp32", "shape": inf, **base,
         **search},
        {"kind": "train", "name": "train original fp32", "impl": "original", "dtype": "fp32", "ckpt": False,
         "shape": trn, **base, **search},
        {"kind": "train", "name": "train ours bf16 + ckpt", "impl": "ours", "dtype": "bf16", "ckpt": True,
         "shape": trn, **base, **search},
        {"kind": "train", "name": "train ours fp32", "impl": "ours", "dtype": "fp32", "ckpt": False, "shape": trn,
         **base},
        {"kind": "train", "name": "train ours bf16", "impl": "ours", "dtype": "bf16", "ckpt": False, "shape": trn,
         **base},
        {"kind": "kernels", "name": "kernel profile ours bf16", "impl": "ours", "dtype": "bf16", "shape": inf,
         **base},
        {"kind": "sdpa", "name": "SDPA backends", "config": cfg, "device": args.device, "infer_shape": inf,
         "train_shape": trn},
        {"kind": "pytest", "name": "pytest --device " + args.device, "device": args.device, "smoke": smoke},
        {"kind": "infer", "name": "infer ours bf16 + compile", "impl": "ours", "dtype": "bf16", "compile": True,
         "compile_backend": "eager" if smoke else "inductor", "shape": inf, **base, "search_s": 0},
    ]
    for job in jobs:
        job["no_tf32"] = args.no_tf32
    for job in jobs:  # the original takes one clip per forward: a "batch" is a loop, not worth searching
        if job["kind"] == "infer" and job.get("impl") == "original":
            job["search_s"] = 0
    if not (args.trained_ckpt and args.trained_data):
        jobs = [j for j in jobs if j["kind"] != "trained"]
    timeouts = {"calib": 60, "infer": 150, "train": 150, "sdpa": 120, "pytest": 240, "trained": 120, "kernels": 90}
    for job in jobs:
        job["timeout_s"] = 300 if job.get("compile") else timeouts[job["kind"]]
        if smoke:
            job["timeout_s"] = 300
    return jobs


# ----------------------------------------------------------------------------- orchestration

def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "unknown (nvidia-smi failed)"
    else:
        env["gpu"] = "cpu"
    env["peaks_tflops"] = {d: peak_tflops(env["gpu"], d, None) for d in ("bf16", "tf32", "fp32")}
    return env


class JobProcesses:
    """The jobs' child processes, started through :meth:`run` (as ``subprocess.run``): :meth:`stop` kills the
    running ones and refuses new ones, so that an interrupted suite ends now, not when its running jobs end
    (a worker thread cannot be interrupted, and the interpreter's exit waits for it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the suite was stopped before this job started")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
            self._running.add(proc)
        try:
            with proc:
                try:
                    stdout, stderr = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    stdout, stderr = proc.communicate()
                    raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr) from None
        finally:
            with self._lock:
                self._running.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in self._running:  # kill, not terminate: a job inside a long CUDA call would answer late
                proc.kill()


def run_jobs(start: Callable[[dict], dict], jobs: list[dict], workers: int, record: Callable[[dict, dict], None],
             stop: Callable[[], None]) -> None:
    """``start(job)`` for each job, ``workers`` at a time, and ``record(job, result)`` in plan order, each as
    soon as it and those before it are done. On an error or an interruption (Ctrl-C, SIGTERM), the jobs not
    started are cancelled and ``stop()`` ends the running ones before it propagates: leaving the pool would
    otherwise wait for every queued job, minutes of the device's time."""
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        running = [(job, pool.submit(start, job)) for job in jobs]
        for job, future in running:
            record(job, future.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop()
        raise
    finally:
        pool.shutdown(wait=True)  # at once after stop(): the running jobs' threads end with their processes


def read_result(path: Path) -> dict:
    """A job's result file; a damaged one (a job killed while writing it, a full disk) is that job's error
    row, not the suite's end."""
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"error": f"damaged result file {path.name}: {e}"}
    return res if isinstance(res, dict) else {"error": f"damaged result file {path.name}: not a JSON object"}


def trained_unavailable(job: dict) -> str | None:
    """Why the trained-checkpoint job cannot run ("not run: ..."), or None. Its row says so and the other jobs
    run: a refused suite would cost the lent device a restart (it is given back after 30 s idle)."""
    if job["kind"] != "trained":
        return None
    if not Path(job["ckpt"]).is_file():
        return f"not run: --trained_ckpt {job['ckpt']} is not a file (prepare .gpu_suite: benchmarks/README.md)"
    if not Path(job["data"]).is_dir():
        return f"not run: --trained_data {job['data']} is not a folder (prepare .gpu_suite: benchmarks/README.md)"
    return None


def run_job(job: dict, out: Path, budget_s: float, log, threads: int = 0,
            processes: JobProcesses | None = None) -> dict:
    """Run one job in a child process (with ``threads`` CPU threads, 0 = torch's default; started through
    ``processes``, so that an interrupted suite can stop it); its result, or why there is none."""
    result_file = out / f"job_{re.sub(r'[^a-z0-9]+', '_', job['name'].lower()).strip('_')}.json"
    result_file.unlink(missing_ok=True)
    timeout = max(10.0, min(job["timeout_s"], budget_s))
    # as a module from the repository root: some jobs import tests.model_weights, which is not installed
    cmd = [sys.executable, "-m", "benchmarks.gpu_suite", "--out", str(out), "--_job", json.dumps(job),
           "--_result", str(result_file)]
    t0 = time.perf_counter()
    try:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
        proc = (processes or JobProcesses()).run(cmd, timeout, cwd=ROOT, env=env)
        log.write(f"\n===== {job['name']} (rc {proc.returncode})\n{proc.stdout}{proc.stderr}")
        if result_file.exists():
            res = read_result(result_file)
        else:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            res = {"error": f"exit {proc.returncode}: {tail}"}
    except subprocess.TimeoutExpired as e:
        log.write(f"\n===== {job['name']}: killed after {timeout:.0f} s\n{e.stdout or ''}{e.stderr or ''}")
        res = {"error": f"timed out after {timeout:.0f} s"}
    log.flush()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def child(job_json: str, result: str) -> None:
    job = json.loads(job_json)
    out = Path(result).parent
    if job.get("no_tf32"):  # plain float32 convolutions and matmuls (cuDNN convs take TF32 by default)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        res = JOBS[job["kind"]](job, out)
    except Exception as e:  # noqa: BLE001  (recorded, and the suite goes on)
        import traceback

        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    write_whole(result, json.dumps(res, indent=1, default=str))


def compare(out: Path) -> dict:
    """max |Δ| ours-fp32 vs the original, and IoU of the bf16 masks vs fp32 (logits > 0)."""
    def load(name: str) -> torch.Tensor | None:
        p = out / f"logits_{name}.pt"
        try:
            return torch.load(p, weights_only=True) if p.exists() else None
        except Exception:  # noqa: BLE001  (cut short by a job killed while saving: no comparison, the suite goes on)
            return None

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a > 0, b > 0
        union = (a | b).sum().item()
        return (a & b).sum().item() / union if union else 1.0

    ours, orig, bf16, comp = load("ours_fp32"), load("original_fp32"), load("ours_bf16"), load("ours_bf16_compile")
    res = {}
    if ours is not None and orig is not None:
        res["max_abs_diff_ours_fp32_vs_original"] = (ours - orig).abs().max().item()
    if ours is not None and bf16 is not None:
        res["mask_iou_bf16_vs_fp32"] = iou(bf16, ours)
        res["max_abs_diff_bf16_vs_fp32"] = (bf16 - ours).abs().max().item()
    if ours is not None and comp is not None:
        res["mask_iou_bf16_compile_vs_fp32"] = iou(comp, ours)
    return res


def _mfu(r: dict, dtype: str, peaks: dict) -> str:
    if not r.get("tflops"):
        return "—"
    keys = ["bf16"] if dtype == "bf16" else ["fp32", "tf32"]
    parts = [f"{100 * r['tflops'] / peaks[k]:.1f}% of {k}" for k in keys if peaks.get(k)]
    return ", ".join(parts) or "peak unknown"


def _row(name: str, r: dict, dtype: str, peaks: dict) -> str:
    gf = r.get("gflops_per_clip") or r.get("gflops_per_step")
    gf = f"{gf:.4g}" if gf else "—"
    tf = f"{r['tflops']:.3g}" if r.get("tflops") else "—"
    return (f"| {name} | {r['batch']} | {r['latency_s']:.4f} | {r['clips_per_s']:.2f} | "
            f"{r['centre_frames_per_s']:.2f} | "
            f"{r['peak_mib'] / 1024:.2f} | {gf} | {tf} | {_mfu(r, dtype, peaks)} |")


def markdown(report: dict) -> str:
    env, peaks = report["environment"], report["environment"]["peaks_tflops"]
    lines = [f"# GPU suite: {env['gpu']}", "",
             f"torch {env['torch']}, torchvision {env.get('torchvision')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, driver {env.get('driver')}, Python {env['python']}, CPU {env['cpu']} "
             f"({env['cpu_count']} cores). Smoke: {report['smoke']}. TF32 off: {report.get('no_tf32')}. "
             f"Datasheet dense peaks (TFLOP/s): {peaks}.", "",
             "| run | batch | latency s | clips/s | centre frames/s | peak GiB | GFLOP | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    other = []
    for name, r in report["jobs"].items():
        if "error" in r:
            other.append(f"- **{name}**: {r['error']} ({r['wall_s']} s)")
            continue
        if "latency_s" in r:
            dtype = "bf16" if "bf16" in name else "fp32"
            lines.append(_row(name, r, dtype, peaks))
            big = (r.get("batch_search") or {}).get("largest")
            if big:
                lines.append(_row(name + " (largest batch)", big, dtype, peaks))
    lines += ["", "Batch searches (batches tried; the largest that ran is the second row above):"]
    for name, r in report["jobs"].items():
        if r.get("batch_search", {}).get("tried"):
            lines.append(f"- {name}: {r['batch_search']['tried']} in {r['batch_search']['search_s']} s")
    calib = report["jobs"].get("matmul calibration", {})
    if "bf16_tflops" in calib:
        lines += ["", f"Measured matmul ({calib['n']}³): bf16 {calib['bf16_tflops']:.3g}, "
                      f"TF32 {calib['tf32_tflops']:.3g}, fp32 {calib['fp32_tflops']:.3g} TFLOP/s."]
    sdpa = report["jobs"].get("SDPA backends", {})
    if sdpa and "error" not in sdpa:
        lines += ["", "| SDPA call site | " + " | ".join(k for k in sdpa if k != "wall_s") + " |",
                  "|---|" + "---|" * (len(sdpa) - 1)]
        sites = sorted({s for k, v in sdpa.items() if k != "wall_s" for s in v})
        for s in sites:
            cells = [", ".join(f"{b} ×{n}" for b, n in sdpa[k].get(s, {}).items()) or "—"
                     for k in sdpa if k != "wall_s"]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    kp = report["jobs"].get("kernel profile ours bf16", {})
    if "top" in kp:
        lines += ["", f"Kernel profile, ours bf16 batch 1: device busy {kp['device_busy_s'] * 1e3:.1f} ms of "
                      f"{kp['wall_s_profiled'] * 1e3:.1f} ms wall ({100 * kp['busy_share']:.0f}%), "
                      f"{kp['launches']} kernels.", "",
                  "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms']:.2f} | {k['calls']} |" for k in kp["top"]]
    tm = report["jobs"].get("trained checkpoint bf16 vs fp32 masks", {})
    if "pooled_iou" in tm:
        lines += ["", f"Trained checkpoint ({tm['frames']} held-out frames, flip TTA): bf16 vs fp32 mask IoU pooled "
                      f"{tm['pooled_iou']:.4f}, mean per frame {tm['mean_frame_iou']:.4f}, "
                      f"min {tm['min_frame_iou']:.4f}; "
                      f"J fp32 {tm['fp32']['J_mean']:.3f}, bf16 {tm['bf16']['J_mean']:.3f}."]
    for name, r in report["jobs"].items():
        if name.startswith("pytest") and "error" not in r:
            lines += ["", f"`{r['command']}`: {r['summary']}"] + [f"- {f}" for f in r["failed"]]
    lines += ["", "| comparison / target | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report["targets"].items()]
    if other:
        lines += ["", "Jobs without figures:"] + other
    return "\n".join(lines) + "\n"


def targets(jobs: dict, comparison: dict) -> dict:
    """The issue's targets as measured ratios (absent where a job has no figures)."""
    def get(name: str, key: str, largest: bool = False):
        r = jobs.get(name, {})
        if largest:
            r = (r.get("batch_search") or {}).get("largest") or r
        return r.get(key)

    res = dict(comparison)
    for largest in (False, True):
        sfx = " (largest batches)" if largest else " (batch 1)"
        ours, orig = get("infer ours bf16", "clips_per_s", largest), get("infer original fp32", "clips_per_s", largest)
        if ours and orig:
            res["bf16 frames/s ÷ original fp32" + sfx + ", target ≥ 3"] = ours / orig
    comp, orig = get("infer ours bf16 + compile", "clips_per_s"), get("infer original fp32", "clips_per_s")
    if comp and orig:
        res["bf16+compile frames/s ÷ original fp32 (batch 1)"] = comp / orig
    ours, orig = get("train ours bf16 + ckpt", "peak_mib"), get("train original fp32", "peak_mib")
    if ours and orig:
        res["train peak bf16+ckpt ÷ original fp32 (batch 1), target ≤ 0.5"] = ours / orig
    trained = jobs.get("trained checkpoint bf16 vs fp32 masks", {}).get("pooled_iou")
    if trained is not None:
        res["trained checkpoint: mask IoU bf16 vs fp32, target ≥ 0.99"] = trained
    if "mask_iou_bf16_vs_fp32" in res:
        res["mask_iou_bf16_vs_fp32"] = res.pop("mask_iou_bf16_vs_fp32")  # random weights: logits near 0
        res["random weights: mask IoU bf16 vs fp32 ≥ 0.99"] = res["mask_iou_bf16_vs_fp32"] >= 0.99
    return res


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="where to measure")
    p.add_argument("--out", required=True, help="folder for suite.json, suite.md, suite.log and the logits: new "
                                                "or empty (see --overwrite)")
    p.add_argument("--smoke", action="store_true", help="every job at tiny sizes (checks the suite itself, on CPU)")
    p.add_argument("--config", default=None, type=preset,
                   help="model preset (default medvt_swinb_avos; tiny with --smoke)")
    p.add_argument("--orig_root", default=str(ROOT / ".orig"), help="the extracted original (extract_original.py)")
    p.add_argument("--trained_ckpt", default=None,
                   help="a trained AVOS checkpoint (e.g. make demo's checkpoint_best.pth) for the bf16-vs-fp32 masks")
    p.add_argument("--trained_data", default=None, help="its DAVIS-format held-out set (make demo's data/ folder)")
    p.add_argument("--search_s", type=positive_float, default=120.0, help="seconds of batch doubling per searched job")
    p.add_argument("--deadline_s", type=positive_float, default=450.0, help="start no job after this many seconds")
    p.add_argument("--only", default=None,
                   help="comma-separated texts: run only the jobs whose name contains one of them")
    p.add_argument("--no_tf32", action="store_true",
                   help="float32 convolutions without TF32 (cuDNN's default is TF32), e.g. to compare with the "
                        "original")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run N jobs at once: only to check the suite quickly (--smoke on CPU), since their times "
                        "and memory then overlap")
    add_overwrite_flag(p, "--out")
    p.add_argument("--_job", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p


def get_args(argv=None) -> argparse.Namespace:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args._job is not None:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to PyTorch (use --device cpu --smoke to check the suite)")
    # found here, not as a failed (or silently dropped) job after minutes of the device's time
    if (args.trained_ckpt is None) != (args.trained_data is None):
        p.error("--trained_ckpt and --trained_data go together (a checkpoint and its held-out set): give both or "
                "neither")
    for name in ("trained_ckpt", "trained_data", "orig_root"):  # read by jobs that run in the repository
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).absolute()))
    return args


def main(argv=None) -> dict | None:
    args = get_args(argv)
    if args._job:
        child(args._job, args._result)
        return None
    only = [o for o in (args.only or "").split(",") if o]
    jobs = [j for j in plan(args) if not only or any(o in j["name"] for o in only)]
    if not jobs:
        raise UserError(f"--only {args.only} names no job; the jobs are: {', '.join(j['name'] for j in plan(args))}")
    out = check_output_dir(args.out, "--out", {"--trained_ckpt": args.trained_ckpt, "--trained_data": args.trained_data,
                                               "--orig_root": args.orig_root}, args.overwrite).absolute()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"environment": environment(args.device), "smoke": args.smoke, "no_tf32": args.no_tf32,
              "jobs": {}, "targets": {}}

    processes = JobProcesses()

    def start(job: dict, log) -> dict:
        left = args.deadline_s - (time.perf_counter() - t0)
        if left <= 0:
            return {"error": "not started: --deadline_s reached", "wall_s": 0}
        reason = original_unavailable(job) if job.get("impl") == "original" else trained_unavailable(job)
        if reason:  # said here: a process started only to say so costs seconds of imports
            return {"error": f"RuntimeError: {reason}", "wall_s": 0}
        print(f"[{time.perf_counter() - t0:6.0f} s] {job['name']} ...", flush=True)
        # a started job may run a minute past the deadline; jobs at once share the cores, not oversubscribe them
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
        return run_job(job, out, left + 60, log, threads, processes)

    def save() -> None:  # whole files: a run stopped mid-write keeps the previous jobs' figures
        write_whole(out / "suite.json", json.dumps(report, indent=1, default=str))
        write_whole(out / "suite.md", markdown(report))

    def record(job: dict, res: dict) -> None:
        report["jobs"][job["name"]] = res
        print(f"          {job['name']}: {res.get('error') or 'done'} ({res['wall_s']} s)", flush=True)
        report["targets"] = targets(report["jobs"], compare(out))
        save()

    with open(out / "suite.log", "a") as log:
        run_jobs(lambda job: start(job, log), jobs, args.jobs, record, processes.stop)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print((out / "suite.md").read_text())
    return report


if __name__ == "__main__":
    run_main(main)
