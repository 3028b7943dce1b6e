"""Deterministic weights by original parameter name, as the reference fixtures were made.

For every floating-point entry, a float64 normal draw seeded by crc32(name), scaled by its role
(see tests/fixtures/README.md); integer entries (index buffers, BN counters) keep our model's own
values.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

import torch

from models import convert_original_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "avos"


def read_key_list(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype))
    return rows


def deterministic_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    if name.endswith("running_var"):
        v = 1 + 0.1 * r.abs()
    elif name.endswith("running_mean"):
        v = 0.1 * r
    elif len(shape) >= 2:
        v = r / math.sqrt(math.prod(shape[1:]))
    elif name.endswith("weight"):
        v = 1 + 0.1 * r
    else:
        v = 0.02 * r
    return v.float()


def original_state_dict(key_file: str, model: torch.nn.Module, config: str) -> dict[str, torch.Tensor]:
    """The original-named state dict of the fixtures; integer entries are taken from ``model``."""
    own = model.state_dict()
    sd = {}
    for name, shape, dtype in read_key_list(FIXTURES / key_file):
        if dtype.startswith("float"):
            sd[name] = deterministic_value(name, shape)
        else:
            (ours,) = convert_original_state_dict({name: torch.zeros(())}, config)
            sd[name] = own[ours].clone() if ours in own else torch.zeros(shape, dtype=torch.int64)
    return sd


def fill_deterministic(model: torch.nn.Module, salt: str = "") -> torch.nn.Module:
    """Set every floating-point parameter and buffer of ``model`` to ``deterministic_value(salt + name)``:
    the same weights under every torch and torchvision release, whose own initialisers draw
    differently from one release to the next (torchvision 0.24 and 0.29 give Swin other weights
    for the same seed)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(deterministic_value(salt + name, tuple(t.shape)))
    return model
