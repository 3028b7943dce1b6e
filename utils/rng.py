"""The state of every random number generator training draws from (Python, NumPy, torch CPU and CUDA):
captured into a checkpoint, checked and restored on resume, and seeded at the start of a run."""
from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng() -> dict:
    """The state of every RNG training draws from (Python, NumPy, torch CPU and CUDA).

    Stored as tensors / ints / lists so that ``weights_only`` loading accepts it.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def check_rng_state(state) -> None:
    """Raise (TypeError, ValueError, KeyError, ...) unless :func:`restore_rng` takes ``state``: it is tried
    on this process's generators, which are then put back as they were. The CUDA states are only checked
    to be byte tensors, not set: that would start CUDA on every device, from every process."""
    if not isinstance(state, dict):
        raise TypeError(f"a {type(state).__name__}, not a dict of generator states")
    cuda = state.get("cuda", [])
    if not (isinstance(cuda, (list, tuple))
            and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8 and c.dim() == 1 for c in cuda)):
        raise TypeError("its CUDA states are not byte tensors")
    now = capture_rng()
    try:
        restore_rng({k: v for k, v in state.items() if k != "cuda"})
    finally:
        restore_rng(now)


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # different GPU count: restore what matches
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) as the original (seed = 42 + rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
