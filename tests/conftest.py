"""Shared pytest setup: tests run from the repository root on CPU, with few threads.

``--device cuda`` runs the model/op tests that take the ``device`` fixture on the GPU instead;
tests that check CPU-only behaviour stay on CPU and say so.
"""
import os

import pytest
import torch

# CI has 2 cores; more threads than that only slows the small tensors of the tests. Under pytest-xdist
# (`make test` runs two workers, TEST_WORKERS) each takes an equal share of the two threads, so the workers
# share the cores instead of spinning against each other.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))


def pytest_addoption(parser):
    parser.addoption("--device", choices=("cpu", "cuda"), default="cpu",
                     help="device for the tests that take the `device` fixture (default: cpu)")


def pytest_configure(config):
    if config.getoption("device") == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: no CUDA device is visible to torch")
        # TF32 rounds matmul/conv inputs to 10 mantissa bits (~1e-3 relative), which would make
        # the float32 bounds (1e-4 against the original's logits, 1e-5 for the fast paths)
        # meaningless; with it off CUDA float32 is compared under the same terms as CPU.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return torch.device(pytestconfig.getoption("device"))


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads can make a tiny
    training step many times slower when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def deterministic():
    """One intra-op thread (fast on a shared 2-core machine) and deterministic kernels: a resumed run
    equals an uninterrupted one bit for bit only if backward accumulates in a fixed order."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])


@pytest.fixture
def fake_tensorboard(monkeypatch):
    """``torch.utils.tensorboard`` stood in for (the tensorboard package is not a dependency): each
    SummaryWriter made is recorded with its folder and the scalars it was given, as
    ``[{"dir": str, "scalars": {(key, step): value}, "flushes": int, "closed": bool}]``."""
    import sys
    import types

    writers = []

    class SummaryWriter:
        def __init__(self, log_dir):
            self.record = {"dir": log_dir, "scalars": {}, "flushes": 0, "closed": False}
            writers.append(self.record)

        def add_scalar(self, key, value, step):
            self.record["scalars"][key, step] = value

        def flush(self):
            self.record["flushes"] += 1

        def close(self):
            self.record["closed"] = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    return writers
