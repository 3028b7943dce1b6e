"""Validation shared out under torchrun (utils.distributed.shard / gather_in_order) in the four tasks'
evaluators, in one process: each evaluator is called once as every rank of a two-process run, with
torch.distributed's gather stood in for. Each rank must score only its share, and with the shares
gathered every rank must get exactly what one process scoring everything gets. (The torchrun tests of
each trainer run the real thing, Gloo and all, and compare with one process the same way.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import utils.distributed as du
from utils.metrics import jsonable

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("deterministic")  # tests/conftest.py


def as_ranks(monkeypatch, world: int, evaluate) -> tuple[list, list]:
    """``evaluate()`` called as each rank of a ``world``-process run: first alone (every gather answered with
    the caller's own object: its share only), then with every gather answered by all ranks' objects of the
    first pass, as torch.distributed would. Returns (the first pass's results, the second's) by rank."""
    handed: list[list] = [[] for _ in range(world)]  # per rank, the objects it gathered, in call order

    def run(rank: int, answer) -> object:
        calls = iter(range(10**6))
        monkeypatch.setattr(du, "get_rank", lambda: rank)
        monkeypatch.setattr(du, "get_world_size", lambda: world)
        gather = lambda obj: answer(rank, next(calls), obj)  # noqa: E731
        monkeypatch.setattr(du, "all_gather_object", gather)
        monkeypatch.setattr("actor_action.common.all_gather_object", gather)
        return evaluate()

    def alone(rank, _call, obj):
        handed[rank].append(obj)
        return [obj]

    shares = [run(rank, alone) for rank in range(world)]
    gathered = [run(rank, lambda _rank, call, _obj: [handed[r][call] for r in range(world)]) for rank in range(world)]
    monkeypatch.undo()
    return shares, gathered


def test_shard_and_gather_in_one_process():
    assert list(du.shard(3)) == [0, 1, 2]
    assert du.gather_in_order({2: "c", 0: "a", 1: "b"}) == ["a", "b", "c"]


def test_vss_videos_are_shared_out_and_gathered_in_their_order(tmp_path, monkeypatch):
    from datasets.vspw import vspw_sequences
    from models import build_model
    from tests.test_vss import K, write_vspw
    from vss.common import evaluate_videos
    from vss.config import vss_config

    root = write_vspw(tmp_path / "VSPW", {"a_val": ("val", 10), "b_val": ("val", 9), "c_val": ("val", 12)})
    videos = vspw_sequences(root, "val", need_masks=True)
    torch.manual_seed(0)
    model = build_model(vss_config("tiny", K)).eval()

    def evaluate():
        return evaluate_videos(model, videos, CPU, progress=False, val_size=48, clip_len=2)

    alone = evaluate()
    shares, gathered = as_ranks(monkeypatch, 2, evaluate)
    assert [list(s["sequences"]) for s in shares] == [["a_val", "c_val"], ["b_val"]]
    for summary in gathered:
        assert list(summary["sequences"]) == ["a_val", "b_val", "c_val"]
        assert json.dumps(jsonable(summary)) == json.dumps(jsonable(alone))


def test_a2d_frames_are_shared_out_and_gathered_in_their_order(tmp_path, monkeypatch):
    from actor_action.common import evaluate_a2d
    from datasets.a2d import A2DDataset, make_synthetic_a2d
    from models import build_model, get_config

    root = make_synthetic_a2d(tmp_path / "a2d", num_train=1, num_test=2, num_frames=10, size_hw=(48, 64),
                              annotated=(2, 5, 9))
    dataset = A2DDataset(root, "test", 4, (32, 48))
    torch.manual_seed(0)
    model = build_model(get_config("tiny").replace(num_classes=80)).eval()

    def evaluate():
        summary, metric, cm = evaluate_a2d(model, dataset, CPU)
        return summary, dict(metric.frames), cm.mat

    alone = evaluate()
    shares, gathered = as_ranks(monkeypatch, 2, evaluate)
    assert len(dataset) == 6 and [s[0]["num_frames"] for s in shares] == [3, 3]
    assert [s[2].sum() for s in shares] != [alone[2].sum()] * 2  # each counted its own frames' pixels
    for summary, frames, mat in gathered:
        assert json.dumps(jsonable(summary)) == json.dumps(jsonable(alone[0]))
        assert frames == alone[1] and list(frames) == list(alone[1])  # videos, frames and scores in order
        assert torch.equal(mat, alone[2])


def test_avs_batches_are_shared_out_and_gathered_in_their_order(tmp_path, monkeypatch):
    from avs.common import evaluate
    from datasets.avsbench import AVSBenchDataset, make_synthetic_avsbench
    from models.audio import build_frozen_vggish
    from models.avs import build_avs_model

    root = make_synthetic_avsbench(tmp_path / "avs", "s4", {"train": 1, "val": 5, "test": 1}, size=32, seed=0)
    dataset = AVSBenchDataset(root, "s4", "val", 32)
    torch.manual_seed(0)
    model, vggish = build_avs_model("avs_tiny").eval(), build_frozen_vggish(None, allow_random=True)

    def run():
        return evaluate(model, vggish, dataset, 2, CPU, max_batches=3)

    alone = run()
    shares, gathered = as_ranks(monkeypatch, 2, run)
    assert alone["num_batches"] == 3 and alone["num_clips"] == 5
    assert [(s["num_batches"], s["num_clips"]) for s in shares] == [(2, 3), (1, 2)]  # batches 0 and 2; 1
    assert all(g == alone for g in gathered)
    assert np.isfinite(alone["miou"])


def test_avos_sequences_are_shared_out(tmp_path, monkeypatch):
    from avos.validation import evaluate_davis
    from datasets.davis16 import davis16_sequences
    from datasets.synthetic import make_synthetic_davis
    from models import build_model

    davis = make_synthetic_davis(tmp_path / "davis", num_train=1, num_val=3, num_frames=7, size_hw=(64, 96), seed=0)
    sequences = davis16_sequences(davis, "val")
    torch.manual_seed(0)
    model = build_model("tiny").eval()

    def evaluate():
        return evaluate_davis(model, sequences, CPU, val_size=64)

    alone = evaluate()
    shares, gathered = as_ranks(monkeypatch, 2, evaluate)
    assert [len(s["per_sequence"]) for s in shares] == [2, 1]
    assert all(g == alone for g in gathered) and list(gathered[0]["per_sequence"]) == [s.name for s in sequences]
