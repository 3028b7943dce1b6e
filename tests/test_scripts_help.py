"""Every user-facing script starts and explains its flags (`--help` exits 0 and lists usage)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "train_swin_medvt_avos.py", "inference_swin_medvt_avos.py", "crf_davis16.py",
    "vss/train_medvt_vss.py", "vss/inference_medvt_vss.py",
    "actor_action/train_medvt_a2d.py", "actor_action/inference_medvt_a2d.py",
    "avs/train_medvt.py", "avs/test_medvt.py", "avs/preprocess_audio.py",
    "benchmarks/bench_inference.py", "benchmarks/bench_train.py", "benchmarks/compare_masks.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    res = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage:") and "--" in res.stdout


# One script per task folder: run by path and as a module from a folder outside the repository, with no
# PYTHONPATH, the packages come only from the installed project (`make setup`: pip install -e .).
TASK_SCRIPTS = ["vss/train_medvt_vss.py", "avs/test_medvt.py", "actor_action/train_medvt_a2d.py"]


@pytest.mark.parametrize("form", ["path", "module"])
@pytest.mark.parametrize("script", TASK_SCRIPTS)
def test_task_script_runs_from_any_folder(script, form, tmp_path):
    target = [str(ROOT / script)] if form == "path" else ["-m", script[:-3].replace("/", ".")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, *target, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"{script} ({form}): is the project installed (make setup)?\n{res.stderr[-2000:]}"
    assert res.stdout.startswith("usage:")
