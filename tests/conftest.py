"""Shared pytest setup: tests run from the repository root on CPU, with few threads."""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# CI has 2 cores; more threads than that only slows the small tensors of the tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))
