"""Single-process or ``torchrun`` multi-process training, with the same code path.

Under ``torchrun`` (environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) the default
process group is initialised with NCCL on CUDA and Gloo on CPU, and each process uses the GPU
of its local rank. Without those variables everything runs in one process and the helpers
below are no-ops, so scripts never branch on "distributed or not" beyond wrapping the model.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from utils.cli import UserError
from utils.outputs import check_output_dir, incomplete_marker, new_run_folder
from utils.process import under_torchrun


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_flag(parser) -> None:
    """``--device`` of every script: None (not given) means CUDA if there is a GPU, else the CPU; under
    torchrun each process takes its local rank's GPU (:func:`process_group`)."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu; under torchrun the local "
                             "rank's GPU)")


def check_device(device_arg: str | None) -> torch.device:
    """``--device`` as a torch.device, or a :class:`~utils.cli.UserError` naming the flag: an unknown
    device name, CUDA without a visible GPU, or a GPU index beyond those visible."""
    try:
        device = torch.device(device_arg or default_device())
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device_arg}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device_arg} was requested but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {device_arg}: there are {torch.cuda.device_count()} visible GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


DIST_TIMEOUT_MIN = 60  # the process group's default timeout (--dist_timeout)


def one_process_only(flag: str | None, shared: str) -> None:
    """Refuse, in one line, a job of one process (``flag``: one ``--video``, ``--runtime onnx``; None
    when there is none) started by torchrun, which shares ``shared`` (a split's videos, ...) out."""
    if flag is not None and under_torchrun():
        raise UserError(f"{flag} runs in one process: start it without torchrun (torchrun shares {shared} out)")


def init_distributed(device_arg: str | None = None, timeout_min: int = DIST_TIMEOUT_MIN) -> DistInfo:
    """Set up the process group if launched by torchrun; return rank, world size and device.

    ``device_arg``: "cuda", "cuda:N" or "cpu" (None = cuda if available). Under torchrun with
    CUDA the device index is the local rank. The timeout (minutes, ``--dist_timeout``) is generous
    because a process that finishes its share of a validation waits in a collective for the others.
    """
    device = check_device(device_arg)
    if not under_torchrun():
        return DistInfo(0, 1, 0, device)
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not is_dist():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=timeout_min),
                                **kwargs)
    return DistInfo(rank, world, local_rank, device)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when this run has several processes (each on its own GPU,
    or on the CPU with Gloo), else ``model`` itself; the optimizer and checkpoints keep the bare model."""
    if not info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Every process's ``obj``, in rank order ([obj] in one process)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(n: int) -> range:
    """The indices of ``n`` work items (videos, annotated frames, batches) this process takes: every
    world-size-th, from its rank; all ``n`` in one process."""
    return range(get_rank(), n, get_world_size())


def gather_in_order(mine: dict) -> list:
    """Every process's results ``{item index: result}`` (of :func:`shard`'s indices), on every process,
    as one list in index order: what one process would have made, so scores accumulated from it in
    that order are the same to the last bit."""
    merged = {i: result for part in all_gather_object(mine) for i, result in part.items()}
    return [merged[i] for i in sorted(merged)]


def gather_throughput(speed: dict, log: Callable[[str], object] = print) -> dict:
    """The throughput of every process's share (:meth:`utils.logger.Throughput.close` of each), once all
    are done: frames summed over the longest wall time, also logged (one process: ``speed`` itself)."""
    shares = all_gather_object(speed)
    if len(shares) == 1:
        return speed
    frames, wall = sum(s["frames"] for s in shares), max(s["wall_s"] for s in shares)
    fps = frames / wall if wall > 0 else float("nan")
    log(f"{len(shares)} processes: {frames} frames in {wall:.1f} s: {fps:.2f} frames/s")
    return {"frames": frames, "wall_s": wall, "frames_per_s": fps}


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every process."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Every buffer of ``model`` (BatchNorm statistics, ...) as rank ``src`` has it. After a training
    step each process has updated its own; DDP copies rank 0's at its next forward, but a model used
    outside DDP (sharded validation) would otherwise score with its own."""
    if is_dist():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=src)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


@contextmanager
def process_group(device_arg: str | None = None, timeout_min: int = DIST_TIMEOUT_MIN) -> Iterator[DistInfo]:
    """This process's part of a run for the body: the group of :func:`init_distributed` (one process
    without torchrun), torn down afterwards, whatever happens."""
    info = init_distributed(device_arg, timeout_min)
    try:
        yield info
    finally:
        cleanup()


def default_run_folder(name: str, beside: str | Path | None, inputs: dict, overwrite: bool = False) -> Path:
    """The output folder of a run given no ``--output_dir``: :func:`utils.outputs.new_run_folder`'s as rank 0
    names it (the name holds the time), in every process, checked as ``check_output_dir`` checks."""
    out = broadcast_object(new_run_folder(name, beside))
    return check_output_dir(out, "--output_dir", inputs, overwrite, default=True)


@contextmanager
def shared_run_folder(out: str | Path, log: str | None = None) -> Iterator[Path]:
    """:func:`utils.outputs.incomplete_marker` for a run of several processes that write in one folder:
    rank 0 creates it, with its ``INCOMPLETE`` marker, once every process has checked it, and before
    any writes in it; the marker goes once every process has written its share (an error in any
    process leaves it in place). In one process it is ``incomplete_marker`` itself."""
    barrier()  # every process has checked the folder (empty or new) before one creates it
    with incomplete_marker(out, log) if is_main_process() else nullcontext(Path(out)):
        barrier()
        yield Path(out)
        barrier()


def run_distributed(train: Callable, args, deterministic: str = "auto"):
    """Run ``train(args, info)`` in this process of a (possibly one-process) run: the process group
    from :func:`init_distributed` (``torchrun``'s variables, else a single process on ``args.device``),
    deterministic kernels per ``deterministic`` ("on", "off", or "auto" = on except on CUDA, where
    they are slower), and the previous settings and the group torn down afterwards, whatever happens.
    ``args.dist_timeout`` (minutes, default :data:`DIST_TIMEOUT_MIN`) is the group's timeout."""
    device = str(args.device or default_device())
    on = deterministic == "on" or (deterministic == "auto" and not device.startswith("cuda"))
    if on and device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    with process_group(args.device, getattr(args, "dist_timeout", DIST_TIMEOUT_MIN)) as info:
        try:
            torch.use_deterministic_algorithms(on, warn_only=info.device.type == "cuda")
            return train(args, info)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
