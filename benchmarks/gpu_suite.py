"""The GPU figures in one command: inference, training steps, MFU, SDPA backends, CUDA tests.

A device machine is lent to a session rarely and briefly (15 minutes, all tries included), so the
whole measurement is one prepared command that writes ``suite.json`` and ``suite.md`` into
``--out``, rewritten after every job so that a run cut short still leaves its figures::

    python benchmarks/gpu_suite.py --device cuda --out $OUT                 # the real run
    python benchmarks/gpu_suite.py --device cpu --smoke --out runs/smoke    # every step, tiny, CPU

Every measurement ("job") runs in its own Python process with its own time limit: an
out-of-memory, a crash or a slow ``torch.compile`` ends that job alone, its peak memory is its
own, and the rest of the suite goes on. Jobs run in order of importance until ``--deadline_s``.

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

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import PeakMemory, count_flops, peak_tflops  # noqa: E402

PYTEST_FILES = ["tests/test_amp.py", "tests/test_speed_paths.py", "tests/test_equivalence.py",
                "tests/test_parity_stats.py"]
SDPA_BACKENDS = {  # profiler op name → backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


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
        {"kind": "infer", "name": "infer ours bf16", "impl": "ours", "dtype": "bf16", "shape": inf, **base, **search},
        {"kind": "trained", "name": "trained checkpoint bf16 vs fp32 masks", "device": args.device,
         "ckpt": args.trained_ckpt, "data": args.trained_data, "size": 96},
        {"kind": "infer", "name": "infer original fp32", "impl": "original", "dtype": "fp32", "shape": inf, **base, **search},
        {"kind": "infer", "name": "infer ours fp32", "impl": "ours", "dtype": "fp32", "shape": inf, **base, **search},
        {"kind": "train", "name": "train original fp32", "impl": "original", "dtype": "fp32", "ckpt": False, "shape": trn, **base, **search},
        {"kind": "train", "name": "train ours bf16 + ckpt", "impl": "ours", "dtype": "bf16", "ckpt": True, "shape": trn, **base, **search},
        {"kind": "train", "name": "train ours fp32", "impl": "ours", "dtype": "fp32", "ckpt": False, "shape": trn, **base},
        {"kind": "train", "name": "train ours bf16", "impl": "ours", "dtype": "bf16", "ckpt": False, "shape": trn, **base},
        {"kind": "kernels", "name": "kernel profile ours bf16", "impl": "ours", "dtype": "bf16", "shape": inf, **base},
        {"kind": "sdpa", "name": "SDPA backends", "config": cfg, "device": args.device, "infer_shape": inf, "train_shape": trn},
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


# ----------------------------------------------------------------------------- models

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(job: dict, train: bool) -> tuple[torch.nn.Module, Callable]:
    """(model, fn) where ``fn(frames [B, T, 3, H, W])`` returns the outputs dict of the model.

    Ours and the original get the same deterministic weights (a function of each original
    parameter name, ``tests/model_weights.py``), so their logits can be compared directly.
    """
    device = torch.device(job["device"])
    if job["impl"] == "original":
        from benchmarks import original

        if job["config"] != "medvt_swinb_avos":
            raise RuntimeError(f"not run: the original is only wired for medvt_swinb_avos, not {job['config']}")
        if not original.available(job["orig_root"]):
            raise RuntimeError(f"not run: no original code in {job['orig_root']} "
                               "(python benchmarks/extract_original.py --mirror PATH)")
        model = original.build_original_swinb(job["orig_root"], train=train).to(device)
        fn = (lambda x: original.original_train_outputs(model, x)) if train else \
            (lambda x: {"pred_masks": original.original_forward(model, x)})
    else:
        from models import build_model, convert_original_state_dict
        from models.convert import load_state_dict_strict
        from tests.model_weights import original_state_dict

        torch.manual_seed(0)
        model = build_model(job["config"])
        if job["config"] == "medvt_swinb_avos":
            sd = original_state_dict("swinb_keys.tsv", model, job["config"])
            load_state_dict_strict(model, convert_original_state_dict(sd, job["config"]))
        model = model.to(device)
        # --smoke compiles with the eager backend: the graph capture is checked without minutes of codegen
        fn = torch.compile(model, backend=job.get("compile_backend", "inductor")) if job.get("compile") else model
    return model.train(train), fn


def _amp(job: dict):
    from utils.engine import autocast

    return autocast(torch.device(job["device"]), torch.bfloat16 if job["dtype"] == "bf16" else None)


def _timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> tuple[list[float], float, list[float]]:
    """(timed seconds, peak MiB of the timed calls, warm-up seconds)."""
    def once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    warm = [once() for _ in range(warmup)]
    memory = PeakMemory(device)
    memory.reset()
    times = [once() for _ in range(iters)]
    return times, memory.mib(), warm


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _figures(times: list[float], peak: float, batch: int, frames: int, flops: float | None) -> dict:
    med = statistics.median(times)
    return {"batch": batch, "latency_s": med, "min_s": min(times), "max_s": max(times),
            "clips_per_s": batch / med, "centre_frames_per_s": batch / med, "chunk_frames_per_s": batch * frames / med,
            "peak_mib": peak, "tflops": flops * batch / med / 1e12 if flops else None}


def _batch_search(job: dict, run_at: Callable[[int], dict]) -> dict:
    """Double the batch from 2 until out of memory, ``max_batch`` or ``search_s`` seconds."""
    device = torch.device(job["device"])
    t0, b, tried, best = time.perf_counter(), 2, [], None
    while job.get("search_s", 0) > 0 and b <= job["max_batch"] and time.perf_counter() - t0 < job["search_s"]:
        try:
            best = run_at(b)
            tried.append(b)
        except Exception as e:  # noqa: BLE001  (only OOM ends the search quietly)
            if not _is_oom(e):
                raise
            tried.append(f"{b}: out of memory")
            break
        finally:
            _free(device)
        b *= 2
    return {"tried": tried, "search_s": round(time.perf_counter() - t0, 1), "largest": best}


def job_infer(job: dict, out: Path) -> dict:
    device = torch.device(job["device"])
    t, h, w = job["shape"]
    model, fn = build(job, train=False)
    amp = _amp(job)

    def forward(x: torch.Tensor, amp=amp) -> torch.Tensor:
        with torch.inference_mode(), amp:
            return fn(x)["pred_masks"]

    x = torch.randn((1, t, 3, h, w), generator=torch.Generator().manual_seed(0)).to(device)
    t0 = time.perf_counter()
    logits = forward(x).float().cpu()
    first_call = time.perf_counter() - t0  # with --compile: the compile time
    torch.save(logits, out / f"logits_{job['impl']}_{job['dtype']}{'_compile' if job.get('compile') else ''}.pt")
    # FLOPs do not depend on the dtype; counted in float32 (the counter's dispatch mode and CPU
    # autocast disagree on one mixed-dtype einsum that runs fine outside it).
    flops = None if job.get("compile") else count_flops(lambda: forward(x, contextlib.nullcontext()))
    times, peak, warm = _timed(lambda: forward(x), device, job["warmup"], job["iters"])
    res = {**_figures(times, peak, 1, t, flops), "gflops_per_clip": flops / 1e9 if flops else None,
           "warmup_s": warm, "first_call_s": first_call}

    def at_batch(b: int) -> dict:
        xb = torch.randn((b, t, 3, h, w), device=device)
        tb, pb, _ = _timed(lambda: forward(xb), device, 1, 2)
        return _figures(tb, pb, b, t, flops)

    res["batch_search"] = _batch_search(job, at_batch)
    return res


def job_train(job: dict, out: Path) -> dict:
    from models.losses import AVOSCriterion

    device = torch.device(job["device"])
    t, h, w = job["shape"]
    model, fn = build(job, train=True)
    criterion = AVOSCriterion()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    amp = _amp(job)

    def data(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        return (torch.randn((b, t, 3, h, w), generator=g).to(device),
                (torch.rand((b, t, h, w), generator=g) > 0.5).float().to(device))

    def forward_backward(x, y, amp=amp) -> torch.Tensor:
        with amp:
            loss = criterion(fn(x), y)["loss"]
        loss.backward()
        return loss.detach()

    def step(x, y) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(x, y)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return loss

    x, y = data(1)
    # model FLOPs, in float32 (as for inference) and before any recomputation
    flops = count_flops(lambda: forward_backward(x, y, contextlib.nullcontext()))
    opt.zero_grad(set_to_none=True)
    if job.get("ckpt"):
        model.set_grad_checkpointing(True)
    losses = []
    times, peak, warm = _timed(lambda: losses.append(float(step(x, y))), device, job["warmup"], job["iters"])
    res = {**_figures(times, peak, 1, t, flops), "gflops_per_step": flops / 1e9 if flops else None,
           "warmup_s": warm, "losses": losses}

    def at_batch(b: int) -> dict:
        xb, yb = data(b)
        tb, pb, _ = _timed(lambda: step(xb, yb), device, 1, 2)
        return _figures(tb, pb, b, t, flops)

    res["batch_search"] = _batch_search(job, at_batch)
    return res


def _site_hooks(model: torch.nn.Module) -> list:
    """Wrap each attention call site's module in a profiler range named after the site."""
    from models.attention import MultiheadAttention
    from models.backbone import SDPAWindowAttention3d
    from models.label_propagation import LabelPropagator

    def site(name: str, mod: torch.nn.Module) -> str | None:
        if isinstance(mod, SDPAWindowAttention3d):
            return "swin window attention"
        if isinstance(mod, LabelPropagator):
            return "label propagation"
        if isinstance(mod, MultiheadAttention):
            if name.startswith("query_decoder"):
                return "query decoder"
            if "cross" in name:
                return "encoder between-scale"
            return "encoder" if name.startswith("encoder") else "other: " + name
        return None

    handles = []
    for name, mod in model.named_modules():
        label = site(name, mod)
        if label is None:
            continue

        def pre(m, a, label=label):
            m._site_range = torch.profiler.record_function("site:" + label)
            m._site_range.__enter__()

        def post(m, a, o):
            m._site_range.__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def _backends(prof) -> dict[str, dict[str, int]]:
    """{site: {backend: calls}} from the profiler's events (the innermost ``site:`` range above each op)."""
    found: dict[str, dict[str, int]] = {}
    for ev in prof.events():
        backend = SDPA_BACKENDS.get(ev.name)
        if backend is None:
            continue
        parent, label = ev.cpu_parent, "outside any site"
        while parent is not None:
            if parent.name.startswith("site:"):
                label = parent.name[5:]
                break
            parent = parent.cpu_parent
        found.setdefault(label, {}).setdefault(backend, 0)
        found[label][backend] += 1
    return found


def job_sdpa(job: dict, out: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from models import build_model
    from models.losses import AVOSCriterion
    from utils.engine import autocast

    device = torch.device(job["device"])
    torch.manual_seed(0)
    model = build_model(job["config"]).to(device)
    _site_hooks(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    res = {}
    for mode, dtype in (("inference fp32", None), ("inference bf16", torch.bfloat16), ("training bf16", torch.bfloat16)):
        train = mode.startswith("training")
        t, h, w = job["train_shape" if train else "infer_shape"]
        x = torch.randn((1, t, 3, h, w), device=device)
        model.train(train)
        with profile(activities=activities) as prof:
            if train:
                with autocast(device, dtype):
                    loss = AVOSCriterion()(model(x), (torch.rand((1, t, h, w), device=device) > 0.5).float())["loss"]
                loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode(), autocast(device, dtype):
                    model(x)
            _sync(device)
        res[mode] = _backends(prof)
    return res


def job_kernels(job: dict, out: Path) -> dict:
    """Where a bf16 batch-1 forward of ours spends its time: the top kernels by device time, and
    the device-busy share of the wall time (a low share means launch/CPU overhead bounds it)."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(job["device"])
    model, fn = build(job, train=False)
    t, h, w = job["shape"]
    x = torch.randn((1, t, 3, h, w), device=device)
    amp = _amp(job)

    def forward() -> None:
        with torch.inference_mode(), amp:
            fn(x)

    for _ in range(2):
        forward()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        forward()
        _sync(device)
    wall = time.perf_counter() - t0
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"] if device.type == "cuda" else \
        [e for e in prof.key_averages() if e.key.startswith("aten::")]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels.sort(key=lambda e: getattr(e, attr), reverse=True)
    busy = sum(getattr(e, attr) for e in kernels) / 1e6
    return {"wall_s_profiled": wall, "device_busy_s": busy, "busy_share": busy / wall,
            "launches": sum(e.count for e in kernels),
            "top": [{"name": e.key[:120], "ms": getattr(e, attr) / 1e3, "calls": e.count} for e in kernels[:12]]}


def job_pytest(job: dict, out: Path) -> dict:
    files = PYTEST_FILES if not job["smoke"] else ["tests/test_speed_paths.py", "-k", "multihead"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "--device", job["device"]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=job["timeout_s"] - 10)
    (out / "pytest.log").write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "failed": failed}


def job_trained_masks(job: dict, out: Path) -> dict:
    """bf16 against fp32 masks of a trained checkpoint, through the real inference script.

    Random weights give logits near 0 everywhere, where any rounding flips a pixel; a trained
    model's masks are what users see. The suite takes the ``make demo`` checkpoint (tiny, trained on
    the synthetic set) and its held-out videos, runs ``inference_swin_medvt_avos.py`` twice
    (``--amp`` off and on, flip TTA) and compares the written masks (``benchmarks/compare_masks``).
    """
    from benchmarks.compare_masks import compare

    res = {}
    for label, extra in (("fp32", []), ("bf16", ["--amp"])):
        run_dir = out / f"trained_{label}"
        cmd = [sys.executable, "inference_swin_medvt_avos.py", "--model_path", job["ckpt"], "--dataset", "davis",
               "--davis16_root", job["data"], "--val_size", str(job["size"]), "--flip", "--device", job["device"],
               "--output_dir", str(run_dir), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=job["timeout_s"] / 2)
        if proc.returncode:
            raise RuntimeError(f"inference ({label}) exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        summary = json.loads((run_dir / "summary.json").read_text())["davis"]
        res[label] = {"J_mean": summary.get("J_mean"), "F_mean": summary.get("F_mean"),
                      "wall_s": round(time.perf_counter() - t0, 1)}
    masks = {label: next((out / f"trained_{label}").rglob("bin_mask")) for label in ("fp32", "bf16")}
    iou = compare(masks["fp32"], masks["bf16"])
    res.update({k: iou[k] for k in ("frames", "pooled_iou", "mean_frame_iou", "min_frame_iou")})
    return res


def job_calib(job: dict, out: Path) -> dict:
    """Measured matmul TFLOP/s: the practical ceiling next to the datasheet peak."""
    device, n = torch.device(job["device"]), job["n"]
    res = {"n": n}
    for label, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                               ("fp32", torch.float32, False)):
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        times, _, _ = _timed(lambda: a @ b, device, 3, 10)
        res[label + "_tflops"] = 2 * n**3 / statistics.mean(times) / 1e12
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return res


JOBS = {"infer": job_infer, "train": job_train, "sdpa": job_sdpa, "pytest": job_pytest, "calib": job_calib,
        "trained": job_trained_masks, "kernels": job_kernels}


# ----------------------------------------------------------------------------- orchestration

def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_model(),
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_job(job: dict, out: Path, budget_s: float, log) -> dict:
    """Run one job in a child process; its result, or why there is none."""
    result_file = out / f"job_{re.sub(r'[^a-z0-9]+', '_', job['name'].lower()).strip('_')}.json"
    result_file.unlink(missing_ok=True)
    timeout = max(10.0, min(job["timeout_s"], budget_s))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--_job", json.dumps(job),
           "--_result", str(result_file)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        log.write(f"\n===== {job['name']} (rc {proc.returncode})\n{proc.stdout}{proc.stderr}")
        if result_file.exists():
            res = json.loads(result_file.read_text())
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
    Path(result).write_text(json.dumps(res, indent=1, default=str))


def compare(out: Path) -> dict:
    """max |Δ| ours-fp32 vs the original, and IoU of the bf16 masks vs fp32 (logits > 0)."""
    def load(name: str) -> torch.Tensor | None:
        p = out / f"logits_{name}.pt"
        return torch.load(p, weights_only=True) if p.exists() else None

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
    return (f"| {name} | {r['batch']} | {r['latency_s']:.4f} | {r['clips_per_s']:.2f} | {r['centre_frames_per_s']:.2f} | "
            f"{r['peak_mib'] / 1024:.2f} | {gf} | {tf} | {_mfu(r, dtype, peaks)} |")


def markdown(report: dict) -> str:
    env, peaks = report["environment"], report["environment"]["peaks_tflops"]
    lines = [f"# GPU suite: {env['gpu']}", "",
             f"torch {env['torch']}, torchvision {env.get('torchvision')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"driver {env.get('driver')}, Python {env['python']}, CPU {env['cpu']} ({env['cpu_count']} cores). "
             f"Smoke: {report['smoke']}. TF32 off: {report.get('no_tf32')}. Datasheet dense peaks (TFLOP/s): {peaks}.", "",
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
        lines += ["", f"Measured matmul ({calib['n']}³): bf16 {calib['bf16_tflops']:.3g}, TF32 {calib['tf32_tflops']:.3g}, "
                      f"fp32 {calib['fp32_tflops']:.3g} TFLOP/s."]
    sdpa = report["jobs"].get("SDPA backends", {})
    if sdpa and "error" not in sdpa:
        lines += ["", "| SDPA call site | " + " | ".join(k for k in sdpa if k != "wall_s") + " |",
                  "|---|" + "---|" * (len(sdpa) - 1)]
        sites = sorted({s for k, v in sdpa.items() if k != "wall_s" for s in v})
        for s in sites:
            cells = [", ".join(f"{b} ×{n}" for b, n in sdpa[k].get(s, {}).items()) or "—" for k in sdpa if k != "wall_s"]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    kp = report["jobs"].get("kernel profile ours bf16", {})
    if "top" in kp:
        lines += ["", f"Kernel profile, ours bf16 batch 1: device busy {kp['device_busy_s'] * 1e3:.1f} ms of "
                      f"{kp['wall_s_profiled'] * 1e3:.1f} ms wall ({100 * kp['busy_share']:.0f}%), {kp['launches']} kernels.", "",
                  "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| `{k['name']}` | {k['ms']:.2f} | {k['calls']} |" for k in kp["top"]]
    tm = report["jobs"].get("trained checkpoint bf16 vs fp32 masks", {})
    if "pooled_iou" in tm:
        lines += ["", f"Trained checkpoint ({tm['frames']} held-out frames, flip TTA): bf16 vs fp32 mask IoU pooled "
                      f"{tm['pooled_iou']:.4f}, mean per frame {tm['mean_frame_iou']:.4f}, min {tm['min_frame_iou']:.4f}; "
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


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="where to measure")
    p.add_argument("--out", required=True, help="folder for suite.json, suite.md, suite.log and the logits")
    p.add_argument("--smoke", action="store_true", help="every job at tiny sizes (checks the suite itself, on CPU)")
    p.add_argument("--config", default=None, help="model preset (default medvt_swinb_avos; tiny with --smoke)")
    p.add_argument("--orig_root", default=str(ROOT / ".orig"), help="the extracted original (extract_original.py)")
    p.add_argument("--trained_ckpt", default=None,
                   help="a trained AVOS checkpoint (e.g. make demo's checkpoint_best.pth) for the bf16-vs-fp32 masks")
    p.add_argument("--trained_data", default=None, help="its DAVIS-format held-out set (make demo's data/ folder)")
    p.add_argument("--search_s", type=float, default=120.0, help="seconds of batch doubling per searched job")
    p.add_argument("--deadline_s", type=float, default=450.0, help="start no job after this many seconds")
    p.add_argument("--only", default=None,
                   help="comma-separated texts: run only the jobs whose name contains one of them")
    p.add_argument("--no_tf32", action="store_true",
                   help="float32 convolutions without TF32 (cuDNN's default is TF32), e.g. to compare with the original")
    p.add_argument("--_job", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._job is None and args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to PyTorch (use --device cpu --smoke to check the suite)")
    return args


def main(argv=None) -> dict | None:
    args = get_args(argv)
    if args._job:
        child(args._job, args._result)
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"environment": environment(args.device), "smoke": args.smoke, "no_tf32": args.no_tf32,
              "jobs": {}, "targets": {}}
    only = [o for o in (args.only or "").split(",") if o]
    jobs = [j for j in plan(args) if not only or any(o in j["name"] for o in only)]
    with open(out / "suite.log", "a") as log:
        for job in jobs:
            left = args.deadline_s - (time.perf_counter() - t0)
            if left <= 0:
                report["jobs"][job["name"]] = {"error": "not started: --deadline_s reached", "wall_s": 0}
                continue
            print(f"[{time.perf_counter() - t0:6.0f} s] {job['name']} ...", flush=True)
            res = run_job(job, out, left + 60, log)  # a started job may run a minute past the deadline
            report["jobs"][job["name"]] = res
            print(f"          {res.get('error') or 'done'} ({res['wall_s']} s)", flush=True)
            report["targets"] = targets(report["jobs"], compare(out))
            (out / "suite.json").write_text(json.dumps(report, indent=1, default=str))
            (out / "suite.md").write_text(markdown(report))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    (out / "suite.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "suite.md").write_text(markdown(report))
    print((out / "suite.md").read_text())
    return report


if __name__ == "__main__":
    main()
