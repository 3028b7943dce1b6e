"""Shared by the resume tests: two checkpoints that must hold the same training state."""
from __future__ import annotations

import torch


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
