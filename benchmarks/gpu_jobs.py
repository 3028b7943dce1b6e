"""The measurements of the GPU suite (``benchmarks/gpu_suite.py``), one function per job kind.

Each ``job_*(job, out)`` runs in its own child process (``gpu_suite.child``): it builds what it
measures from the job's dict (see ``gpu_suite.plan``), may write files into ``out`` (logits for the
comparisons, logs) and returns a JSON-able dict of figures.
"""
from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import PeakMemory, count_flops, time_runs

ROOT = Path(__file__).resolve().parents[1]

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



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def original_unavailable(job: dict) -> str | None:
    """Why a job of the original cannot run here ("not run: ..."), or None."""
    from benchmarks import original

    if job["config"] != "medvt_swinb_avos":
        return f"not run: the original is only wired for medvt_swinb_avos, not {job['config']}"
    if not original.available(job["orig_root"]):
        return f"not run: no original code in {job['orig_root']} (python benchmarks/extract_original.py --mirror PATH)"
    return None


def build(job: dict, train: bool) -> tuple[torch.nn.Module, Callable]:
    """(model, fn) where ``fn(frames [B, T, 3, H, W])`` returns the outputs dict of the model.

    Ours and the original get the same deterministic weights (a function of each original
    parameter name, ``tests/model_weights.py``), so their logits can be compared directly.
    """
    device = torch.device(job["device"])
    if job["impl"] == "original":
        from benchmarks import original

        reason = original_unavailable(job)
        if reason:
            raise RuntimeError(reason)
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


def _timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> tuple[list[float], float]:
    """(timed seconds, peak MiB of the timed calls): ``benchmarks.common.time_runs`` and its memory."""
    memory = PeakMemory(device)
    return time_runs(fn, device, warmup, iters, memory), memory.mib()


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
    times, peak = _timed(lambda: forward(x), device, job["warmup"], job["iters"])
    res = {**_figures(times, peak, 1, t, flops), "gflops_per_clip": flops / 1e9 if flops else None,
           "first_call_s": first_call}

    def at_batch(b: int) -> dict:
        xb = torch.randn((b, t, 3, h, w), device=device)
        tb, pb = _timed(lambda: forward(xb), device, 1, 2)
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
    times, peak = _timed(lambda: losses.append(float(step(x, y))), device, job["warmup"], job["iters"])
    res = {**_figures(times, peak, 1, t, flops), "gflops_per_step": flops / 1e9 if flops else None,
           "losses": losses}

    def at_batch(b: int) -> dict:
        xb, yb = data(b)
        tb, pb = _timed(lambda: step(xb, yb), device, 1, 2)
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
    modes = (("inference fp32", None), ("inference bf16", torch.bfloat16), ("training bf16", torch.bfloat16))
    for mode, dtype in modes:
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
        times, _ = _timed(lambda a=a, b=b: a @ b, device, 3, 10)
        res[label + "_tflops"] = 2 * n**3 / statistics.mean(times) / 1e12
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return res


JOBS = {"infer": job_infer, "train": job_train, "sdpa": job_sdpa, "pytest": job_pytest, "calib": job_calib,
        "trained": job_trained_masks, "kernels": job_kernels}
