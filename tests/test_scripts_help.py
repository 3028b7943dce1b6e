"""Every user-facing script starts and explains its flags (`--help` exits 0 and lists usage).

Each case is its own process, which spends most of its ~3 s importing torch: one module fixture
starts them all, a few at a time, and each test checks its own (as tests/test_cli_errors.py does)."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
# One script per task folder: run by path and as a module from a folder outside the repository, with no
# PYTHONPATH, the packages come only from the installed project (`make setup`: pip install -e .).
TASK_SCRIPTS = ["vss/train_medvt_vss.py", "avs/test_medvt.py", "actor_action/train_medvt_a2d.py"]
ANY_FOLDER = [(script, form) for script in TASK_SCRIPTS for form in ("path", "module")]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    outside = tmp_path_factory.mktemp("outside")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(case):
        if case in SCRIPTS:
            return subprocess.run([sys.executable, str(ROOT / case), "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)
        script, form = case
        target = [str(ROOT / script)] if form == "path" else ["-m", script[:-3].replace("/", ".")]
        return subprocess.run([sys.executable, *target, "--help"], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=120)

    cases = SCRIPTS + ANY_FOLDER
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(run, cases)))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, results):
    res = results[script]
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage:") and "--" in res.stdout


@pytest.mark.parametrize("script,form", ANY_FOLDER)
def test_task_script_runs_from_any_folder(script, form, results):
    res = results[(script, form)]
    assert res.returncode == 0, f"{script} ({form}): is the project installed (make setup)?\n{res.stderr[-2000:]}"
    assert res.stdout.startswith("usage:")
