"""`make demo` wiring: synthetic set → train → inference → CRF → metrics.json and overlays.

A two-step training run only checks that every stage runs and writes what the next one reads;
the demo's segmentation quality is a property of the full run (README), not of this test.
"""
import json

from utils import demo


def test_demo_pipeline_writes_metrics_and_overlays(tmp_path, monkeypatch):
    """Run from another folder with a relative --output_dir (the steps, which run in the repository,
    looked for the data there)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    metrics = demo.main(["--output_dir", "demo", "--epochs", "1", "--steps_per_epoch", "2",
                         "--train_sequences", "1", "--val_sequences", "1", "--frames", "6"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for stage in ("before_crf", "after_crf"):
        assert set(saved[stage]) == {"J_mean", "F_mean", "JF_mean"}
        assert all(0.0 <= v <= 1.0 for v in saved[stage].values())
    assert (out / "train" / "checkpoint_last.pth").is_file()
    assert len(list((out / "inference" / "logits" / "synth-val-00").glob("*.png"))) == 6
    assert len(list((out / "crf" / "synth-val-00").glob("*.png"))) == 6
    assert list((out / "inference" / "overlay").glob("synth-val-00.*"))  # the per-video mp4/GIF


def test_a_step_stopped_by_a_signal_is_said_so(monkeypatch):
    """A step killed by SIGTERM printed nothing, yet the demo said "(its message is above)"."""
    import signal
    import subprocess

    import pytest

    from utils.cli import UserError

    monkeypatch.setattr(demo, "_run_step", lambda command, env: subprocess.CompletedProcess(command, -signal.SIGTERM))
    with pytest.raises(UserError, match=r"^the demo stopped: train\.py was stopped by SIGTERM$"):
        demo.run("train.py", [])
    monkeypatch.setattr(demo, "_run_step", lambda command, env: subprocess.CompletedProcess(command, 2))
    with pytest.raises(UserError, match=r"exited with status 2 \(its message is above\)$"):
        demo.run("train.py", [])
