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


def assert_epoch_lines(log: Path, epochs: int, best: dict, shown: str) -> None:
    """``log`` (a train.log) ends each of ``epochs`` epochs with the trainers' one line (utils.logger.epoch_line):
    its number out of the run's, its time, its numbers (``shown`` among them) and ``best`` (the run's result;
    none before a validation has scored)."""
    lines = [line for line in log.read_text().splitlines() if re.search(r"epoch \d+/\d+ done in [\d.]+ s: ", line)]
    assert [re.search(r"epoch (\d+)/", line).group(1) for line in lines] == [str(e) for e in range(epochs)], lines
    assert all(f"/{epochs - 1} done in" in line and f" {shown} " in line for line in lines), lines
    name = next(k for k in best if k != "epoch")
    if best["epoch"] < 0:
        assert "(best" not in lines[-1], lines[-1]
        return
    assert lines[-1].endswith(f"(best {name} {best[name]:.4f} @ epoch {best['epoch']})"), lines[-1]


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
