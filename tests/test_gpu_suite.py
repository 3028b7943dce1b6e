"""The GPU suite cannot rot while no GPU is lent: ``--device cpu --smoke`` runs every job of it.

Each job of the suite runs in its own process and records an error instead of stopping the suite,
so the test reads the report and requires figures from every job; only the original model's jobs
may be absent, with the suite's own "not run" reason (its code is never in a clone, and the
``tiny`` preset used by --smoke is not the original's Swin-B).
"""
import json

import torch

from benchmarks import gpu_suite
from datasets.synthetic import make_synthetic_davis
from models import build_model

SITES = {"swin window attention", "encoder", "encoder between-scale", "query decoder", "label propagation"}


def test_smoke_runs_every_job_and_writes_the_report(tmp_path, monkeypatch):
    """Run from another folder with relative paths: the jobs run in the repository, where a relative
    --out or --trained_ckpt would name other files."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model("tiny")
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, ckpt)
    data = make_synthetic_davis(tmp_path / "DAVIS", num_train=0, num_val=1, num_frames=6, size_hw=(64, 96))
    out = tmp_path / "suite"
    gpu_suite.main(["--device", "cpu", "--smoke", "--out", "suite", "--search_s", "5",
                    "--orig_root", "no_original", "--trained_ckpt", ckpt.name,
                    "--trained_data", data.name, "--deadline_s", "3000",  # a loaded machine must not drop jobs
                    "--jobs", "2"])  # each job is mostly its process's imports: two at a time on 2 cores

    report = json.loads((out / "suite.json").read_text())
    jobs = report["jobs"]
    assert len(jobs) == 13
    for name, res in jobs.items():
        if "original" in name:
            assert res["error"].startswith("RuntimeError: not run"), (name, res)
        else:
            assert "error" not in res, (name, res["error"])

    for name in ("infer ours fp32", "infer ours bf16", "train ours fp32", "train ours bf16", "train ours bf16 + ckpt"):
        res = jobs[name]
        assert res["latency_s"] > 0 and res["peak_mib"] > 0 and res["batch"] == 1, name
        assert res["tflops"] > 0, name  # FLOPs were counted
    assert jobs["infer ours fp32"]["batch_search"]["largest"]["batch"] == 2  # --smoke caps the search at 2
    assert jobs["infer ours bf16 + compile"]["latency_s"] > 0
    assert all(v > 0 for k, v in jobs["matmul calibration"].items() if k.endswith("_tflops"))

    for mode in ("inference fp32", "inference bf16", "training bf16"):
        sites = jobs["SDPA backends"][mode]
        assert set(sites) == SITES, mode  # every call site seen, none outside the hooked modules
        assert all(sum(backends.values()) > 0 for backends in sites.values())

    kernels = jobs["kernel profile ours bf16"]
    assert kernels["launches"] > 0 and len(kernels["top"]) == 12 and 0 < kernels["busy_share"] <= 1.5

    assert "1 passed" in jobs["pytest --device cpu"]["summary"]
    trained = jobs["trained checkpoint bf16 vs fp32 masks"]
    assert trained["frames"] == 6 and 0 <= trained["pooled_iou"] <= 1

    targets = report["targets"]
    assert 0 < targets["mask_iou_bf16_vs_fp32"] <= 1 and targets["max_abs_diff_bf16_vs_fp32"] > 0
    assert "trained checkpoint: mask IoU bf16 vs fp32, target ≥ 0.99" in targets
    md = (out / "suite.md").read_text()
    assert "| infer ours bf16 | 1 |" in md and "| swin window attention |" in md


def test_the_suite_refuses_an_earlier_output_folder_and_a_job_filter_matching_nothing(tmp_path, capsys):
    """Before any job or folder: --out holding files (e.g. a training run) would be written over; an
    --only that matches nothing ran nothing and exited 0."""
    import pytest

    from utils.cli import UserError

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pth").write_bytes(b"weights")
    with pytest.raises(UserError, match=r"--out .*run already holds files"):
        gpu_suite.main(["--device", "cpu", "--smoke", "--out", str(run), "--only", "matmul"])
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_last.pth"]
    with pytest.raises(UserError, match=r"--only typo_job names no job; the jobs are: .*matmul calibration"):
        gpu_suite.main(["--device", "cpu", "--smoke", "--out", str(tmp_path / "new"), "--only", "typo_job"])
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit):
        gpu_suite.main(["--device", "cpu", "--smoke", "--out", str(tmp_path / "new"), "--jobs", "0"])
    assert "argument --jobs" in capsys.readouterr().err
