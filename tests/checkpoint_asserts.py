"""Shared by the training and resume tests: two checkpoints that must hold the same training state,
a training script run under torchrun, and the run starts a train.log records."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_torchrun(script: Path, args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``script`` under ``torchrun --standalone`` with ``nproc`` CPU processes (one thread each); it must succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           str(script), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def assert_run_starts(log: Path, *resumes: str) -> None:
    """``log`` (a train.log) marks the start of each run written to it, in order, with its --resume value."""
    starts = [line for line in log.read_text().splitlines() if "=== training started; arguments:" in line]
    assert [re.search(r" resume=(\S+)", line).group(1) for line in starts] == list(resumes), starts


def assert_same_training_state(a: dict, b: dict, epoch: int) -> None:
    """``a`` and ``b`` (checkpoint dicts) are at ``epoch`` with equal model and optimiser state."""
    assert a["epoch"] == b["epoch"] == epoch
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
