"""The benchmark scripts as a user meets them: a mistake ends in one line (``<script>: error: ...``, status 2,
no traceback) before any measuring, a result file never replaces a file unasked, and Ctrl-C is one line.
Also the parts that minutes of measuring would otherwise be needed to see: a child process started as the
benchmark starts it, the jobs of an interrupted GPU suite, a child's own peak memory. No timing is asserted.

Most cases call a script's ``main`` in this process inside :func:`utils.cli.run_main`, as its ``__main__``
does (a process per case would spend seconds importing torch); each case's arguments are tiny, so that a
check that is missing costs seconds, not a Swin-B run.
"""
from __future__ import annotations

import importlib
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import bench_video, common, gpu_suite
from utils.cli import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["bench_inference", "bench_train", "bench_video", "bench_onnx", "bench_class_ids", "compare_masks",
           "extract_original", "gpu_suite"]
FIRST_IMPORTS = ["from __future__ import annotations",
                 "import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)"]
# Each script's smallest run, for the flags a case does not set (a later flag overrides an earlier one).
TINY = ["--config", "tiny", "--size", "32", "--frames", "2", "--device", "cpu", "--warmup", "0", "--iters", "1",
        "--no_flops"]
BASE = {
    "bench_inference": TINY,
    "bench_train": TINY,
    "bench_video": ["--skip", "speed", "--rss_frames", "4", "8", "--rss_val_size", "32", "--num_frames",
                    "2", "--threads", "1"],
    "bench_onnx": ["--config", "tiny", "--size", "32", "--frames", "2", "--warmup", "0", "--iters", "1", "--threads",
                   "1"],
    "bench_class_ids": ["--classes", "2", "--size", "8", "8", "--logit_size", "4", "4", "--iters", "1"],
}


def error_line(capsys, script: str, argv: list[str]) -> str:
    """``benchmarks.<script>`` on ``argv``, run in this process as its ``__main__`` runs it: the one line it
    ends with (status 2, no traceback), before it printed anything (its machine line, a part's figures)."""
    module = importlib.import_module(f"benchmarks.{script}")
    # run_main ignores Ctrl-C after an error; it leaves it so when it takes the process for a script's (the
    # repository's .venv holds pytest): put this session's handlers back
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as stop:
            run_main(lambda: module.main(argv), prog=f"{script}.py")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert ": error: " in lines[0] and out == "", (out, err)
    return lines[0]


def write_mask(path: Path, mask) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(path)


@pytest.fixture
def masks(tmp_path) -> tuple[Path, Path]:
    """Two runs' bin_mask folders of one frame each."""
    a, b = tmp_path / "fp32", tmp_path / "bf16"
    write_mask(a / "seq1" / "00000.png", [[1, 1, 0, 0]])
    write_mask(b / "seq1" / "00000.png", [[1, 0, 0, 0]])
    return a, b


# ----------------------------------------------------------------------------------- every script
def test_every_benchmark_script_imports_utils_startup_first_and_runs_in_run_main():
    """Ctrl-C printed a traceback in every benchmark (and a user's mistake, where one was raised)."""
    scripts = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                     if 'if __name__ == "__main__":' in p.read_text())
    assert scripts == sorted(SCRIPTS)
    for script in scripts:
        text = (ROOT / "benchmarks" / f"{script}.py").read_text()
        imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
        assert imports[:2] == FIRST_IMPORTS, script
        assert text.rstrip().endswith('if __name__ == "__main__":\n    run_main(main)'), script


def test_ctrl_c_is_one_line():
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_class_ids", "--classes", "8", "--size", "256",
                             "256", "--logit_size", "16", "16", "--iters", "100000", "--threads", "1"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # importing torch, or timing: either way one line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "bench_class_ids.py: interrupted\n")


def test_a_mistake_run_as_a_user_runs_it_is_one_line(tmp_path, masks):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare_masks", str(masks[0]), str(tmp_path / "nowhere")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, f"compare_masks.py: error: other folder {tmp_path / 'nowhere'} "
                                                 "does not exist\n")


# ----------------------------------------------------------------------------------- numbers and names
BAD_FLAGS = [
    *[(script, argv, flag) for script in ("bench_inference", "bench_train") for argv, flag in [
        (["--frames", "0"], "--frames"), (["--frames", "-1"], "--frames"), (["--frames", "1"], "--frames"),
        (["--size", "0"], "--size"), (["--size", "-32"], "--size"), (["--size", "32", "32", "32"], "--size"),
        (["--iters", "0"], "--iters"), (["--threads", "-2"], "--threads"), (["--threads", "0"], "--threads"),
        (["--warmup", "-1"], "--warmup"), (["--peak_tflops", "-1"], "--peak_tflops")]],
    ("bench_video", ["--config", "nosuch"], "--config"),
    ("bench_video", ["--rss_frames", "0", "6"], "--rss_frames"),
    ("bench_video", ["--rss_frames", "6"], "--rss_frames"),  # one length: a meaningless 1.000x
    ("bench_video", ["--rss_frames", "6", "6"], "--rss_frames"),
    ("bench_video", ["--speed_frames", "0"], "--speed_frames"),
    ("bench_video", ["--rss_val_size", "0"], "--rss_val_size"),
    ("bench_video", ["--num_frames", "0"], "--num_frames"),
    ("bench_video", ["--threads", "0"], "--threads"),
    ("bench_onnx", ["--iters", "0"], "--iters"),
    ("bench_onnx", ["--threads", "0"], "--threads"),
    ("bench_onnx", ["--size", "0"], "--size"),
    ("bench_onnx", ["--frames", "-2"], "--frames"),
    ("bench_class_ids", ["--device", "gpu"], "--device"),
]


@pytest.mark.parametrize("script,argv,flag", BAD_FLAGS, ids=[f"{s}:{' '.join(a)}" for s, a, _ in BAD_FLAGS])
def test_a_bad_value_is_refused_naming_its_flag(script, argv, flag, capsys):
    assert flag in error_line(capsys, script, [*BASE[script], *argv])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_cuda_device_is_refused(capsys):
    line = error_line(capsys, "bench_class_ids", [*BASE["bench_class_ids"], "--device", "cuda"])
    assert "--device cuda: no CUDA device" in line


def test_a_size_too_small_for_the_model_is_one_line(capsys):
    line = error_line(capsys, "bench_inference", [*TINY, "--size", "1"])
    assert "--size 1 1 is too small for this model" in line


# ----------------------------------------------------------------------------------- --json
def json_args(script: str, tmp_path: Path) -> list[str]:
    if script == "compare_masks":
        a, b = tmp_path / "a", tmp_path / "b"
        write_mask(a / "s" / "00000.png", [[1, 0]])
        write_mask(b / "s" / "00000.png", [[1, 0]])
        return [str(a), str(b)]
    return BASE[script]


@pytest.mark.parametrize("script", ["bench_inference", "bench_train", "bench_video", "compare_masks"])
def test_json_is_checked_before_the_work_and_an_existing_one_is_kept(script, tmp_path, capsys):
    argv = json_args(script, tmp_path)
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"an earlier run": 1}')
    line = error_line(capsys, script, [*argv, "--json", str(earlier)])
    assert f"--json {earlier} already exists; pass --overwrite" in line
    assert earlier.read_text() == '{"an earlier run": 1}'
    assert "is a folder" in error_line(capsys, script, [*argv, "--json", str(tmp_path)])
    assert "does not exist" in error_line(capsys, script, [*argv, "--json", str(tmp_path / "no" / "r.json")])


def test_overwrite_replaces_the_json(tmp_path, capsys):
    earlier = tmp_path / "earlier.json"
    earlier.write_text("{}")
    importlib.import_module("benchmarks.bench_inference").main([*TINY, "--json", str(earlier), "--overwrite"])
    res = json.loads(earlier.read_text())
    assert res["config"] == "tiny" and res["input"] == [1, 2, 3, 32, 32] and res["iters"] == 1
    assert f"wrote {earlier}" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- compare_masks
def test_compare_masks_json_never_goes_into_an_input_folder(masks, capsys):
    a, b = masks
    frame = b / "seq1" / "00000.png"
    before = frame.read_bytes()
    line = error_line(capsys, "compare_masks", [str(a), str(b), "--json", str(frame), "--overwrite"])
    assert f"--json {frame} is inside other {b}" in line
    assert frame.read_bytes() == before
    assert "is inside reference" in error_line(capsys, "compare_masks", [str(a), str(b), "--json", str(a / "r.json")])
    assert not (a / "r.json").exists()


def test_compare_masks_names_a_missing_folder_a_file_and_a_damaged_mask(masks, tmp_path, capsys):
    a, b = masks
    line = error_line(capsys, "compare_masks", [str(a), str(tmp_path / "nowhere")])
    assert line.endswith(f"other folder {tmp_path / 'nowhere'} does not exist")
    frame = a / "seq1" / "00000.png"
    assert f"reference {frame} is a file, not a folder" in error_line(capsys, "compare_masks", [str(frame), str(b)])
    (b / "seq1" / "00000.png").write_bytes(frame.read_bytes()[:40])  # cut short
    assert f"{b / 'seq1' / '00000.png'}: not a readable image" in error_line(capsys, "compare_masks", [str(a), str(b)])
    (b / "seq1" / "00000.png").unlink()
    assert "1 frames are in only one folder" in error_line(capsys, "compare_masks", [str(a), str(b)])


# ----------------------------------------------------------------------------------- extract_original
def test_extract_original_refuses_a_folder_with_files_and_the_test_fixtures(tmp_path, capsys):
    out = tmp_path / "orig"
    (out / "medvt").mkdir(parents=True)
    (out / "medvt" / "mine.py").write_text("kept")
    line = error_line(capsys, "extract_original", ["--mirror", str(tmp_path / "mirror"), "--out", str(out)])
    assert f"--out {out} already holds files" in line and "--overwrite" in line
    assert (out / "medvt" / "mine.py").read_text() == "kept"
    inside = ROOT / "tests" / "fixtures" / "orig_by_a_test"
    line = error_line(capsys, "extract_original", ["--mirror", str(tmp_path / "mirror"), "--out", str(inside)])
    assert "inside the repository's tests/fixtures" in line and not inside.exists()
    line = error_line(capsys, "extract_original", ["--mirror", str(tmp_path / "mirror"), "--out",
                                                   str(tmp_path / "new")])
    assert f"--mirror {tmp_path / 'mirror'}: folder does not exist" in line and not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------- bench_video, bench_onnx
def test_bench_video_child_runs_the_inference_script(tmp_path, capsys):
    """The child was started by its path, where ``import inference_swin_medvt_avos`` fails: here the script
    itself answers (a missing video), and a failed child is one line with the child's own."""
    with pytest.raises(UserError) as error:
        bench_video.run_child(["--model_path", str(tmp_path / "none.pth"), "--video", str(tmp_path / "none.mp4"),
                               "--device", "cpu", "--output_dir", str(tmp_path / "out")], 1, "a trivial run")
    assert str(error.value) == (f"a trivial run failed (exit status 2): bench_video.py: error: --video "
                                f"{tmp_path / 'none.mp4'} does not exist (give a video file or a folder of frames)")
    assert "running a trivial run" in capsys.readouterr().out  # what runs now, said before it runs


def test_bench_video_checks_demo_dir_before_measuring(tmp_path, capsys):
    line = error_line(capsys, "bench_video", [*BASE["bench_video"], "--demo_dir", str(tmp_path / "demo")])
    assert f"--demo_dir {tmp_path / 'demo'}: folder does not exist" in line


def test_bench_onnx_checks_the_onnx_file_before_measuring(tmp_path, capsys):
    line = error_line(capsys, "bench_onnx", [*BASE["bench_onnx"], "--onnx_path", str(tmp_path / "none.onnx")])
    assert f"--onnx_path: file {tmp_path / 'none.onnx'} does not exist" in line
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    assert "is not a readable ONNX model" in error_line(capsys, "bench_onnx", [*BASE["bench_onnx"], "--onnx_path",
                                                                               str(junk)])


def test_bench_onnx_refuses_an_export_of_another_model_than_config(monkeypatch):
    """An --onnx_path exported from another preset was timed against --config's PyTorch model: two models.
    (The file as OnnxModel reads it is stood in for: an export takes half a minute on 2 cores.)"""
    import models.onnx_export
    from benchmarks.bench_onnx import check_onnx_file
    from models.config import get_config

    class Export:  # what OnnxModel says of a file exported from tiny, or from before configs were recorded
        config = get_config("tiny")

        def __init__(self, path, threads=0):
            pass

        def check(self, frames, h, w):
            pass

    monkeypatch.setattr(models.onnx_export, "OnnxModel", Export)
    check_onnx_file("tiny.onnx", 2, 32, "tiny")  # its own config: taken
    with pytest.raises(UserError, match=r"^--onnx_path tiny.onnx is an export of preset tiny \(.*\), not of --config "
                                        r"medvt_r101_avos: the two runtimes would time different models"):
        check_onnx_file("tiny.onnx", 2, 32, "medvt_r101_avos")
    Export.config = None
    check_onnx_file("old.onnx", 2, 32, "medvt_r101_avos")  # no recorded config: nothing to compare


def test_peak_rss_is_the_child_processs_own():
    """A child's ``ru_maxrss`` starts at its parent's peak: a parent holding 1 GiB gave a small child more than
    1 GiB. ``VmHWM`` is the child's own."""
    held = np.ones(2**30 // 8)  # 1 GiB, written
    parent = common.peak_rss_mib()
    out = subprocess.run([sys.executable, "-c", "from benchmarks.common import peak_rss_mib; print(peak_rss_mib())"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    child = float(out.stdout.strip().splitlines()[-1])
    assert 0 < child < parent - 700, (child, parent)
    del held


def test_bench_class_ids_times_neither_method_on_its_first_call(monkeypatch, capsys):
    """One-time costs went to the first method timed: each now runs once untimed before the timed calls."""
    from models.predictor import VideoPredictor

    calls = []
    real = VideoPredictor._class_ids
    monkeypatch.setattr(VideoPredictor, "_class_ids", lambda self, *a: calls.append(1) or real(self, *a))
    importlib.import_module("benchmarks.bench_class_ids").main(BASE["bench_class_ids"])
    assert len(calls) == 2  # --iters 1, after one untimed call


# ----------------------------------------------------------------------------------- gpu_suite
def test_the_suite_checks_its_inputs_before_any_job(tmp_path, capsys):
    out = tmp_path / "suite"
    argv = ["--device", "cpu", "--smoke", "--out", str(out), "--only", "matmul"]
    assert "--config" in error_line(capsys, "gpu_suite", [*argv, "--config", "nosuch"])
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"weights")
    assert "go together" in error_line(capsys, "gpu_suite", [*argv, "--trained_ckpt", str(ckpt)])
    assert not out.exists()


def test_missing_trained_files_are_the_trained_jobs_row_not_the_suites_end(tmp_path):
    """A --trained_ckpt / --trained_data that is not there (.gpu_suite not prepared or not carried) is said in
    that job's row before it starts, and the other jobs run: a refused suite costs the device a restart."""
    from benchmarks.gpu_suite import trained_unavailable

    (tmp_path / "data").mkdir()
    (tmp_path / "ckpt.pth").write_bytes(b"weights")
    job = {"kind": "trained", "ckpt": str(tmp_path / "none.pth"), "data": str(tmp_path / "data")}
    assert trained_unavailable(job).startswith(f"not run: --trained_ckpt {tmp_path / 'none.pth'} is not a file")
    job.update(ckpt=str(tmp_path / "ckpt.pth"), data=str(tmp_path / "no"))
    assert trained_unavailable(job).startswith(f"not run: --trained_data {tmp_path / 'no'} is not a folder")
    assert trained_unavailable({**job, "data": str(tmp_path / "data")}) is None
    assert trained_unavailable({"kind": "infer"}) is None


def test_an_interrupted_suite_cancels_its_queued_jobs():
    """Leaving the pool waited for every queued job after Ctrl-C (minutes of the device's time)."""
    started, stopped = [], []

    def start(job: dict) -> dict:
        started.append(job["name"])
        time.sleep(0.2)
        return {"wall_s": 0.2}

    def record(job: dict, res: dict) -> None:
        raise KeyboardInterrupt  # Ctrl-C as the first job's figures are recorded

    with pytest.raises(KeyboardInterrupt):
        gpu_suite.run_jobs(start, [{"name": f"job {i}"} for i in range(20)], 2, record, lambda: stopped.append(1))
    assert len(started) <= 4 and stopped == [1]


def test_stopping_the_jobs_kills_the_running_process_and_starts_no_other():
    processes = gpu_suite.JobProcesses()
    done = {}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    thread = threading.Thread(target=lambda: done.update(proc=processes.run(sleeper, timeout=120)))
    thread.start()
    for _ in range(200):
        if processes._running:
            break
        time.sleep(0.05)
    processes.stop()
    thread.join(timeout=20)
    assert not thread.is_alive() and done["proc"].returncode == -signal.SIGKILL
    with pytest.raises(RuntimeError, match="stopped"):
        processes.run(sleeper, timeout=120)


def test_a_damaged_job_result_is_that_jobs_failed_row(tmp_path):
    class Damaging(gpu_suite.JobProcesses):
        def run(self, cmd, timeout, **kwargs):  # the job wrote half of its result, then was killed
            Path(cmd[cmd.index("--_result") + 1]).write_text('{"latency_s": 0.1, "pea')
            return subprocess.CompletedProcess(cmd, -9, "", "")

    res = gpu_suite.run_job({"name": "infer ours fp32", "timeout_s": 10}, tmp_path, 10, io.StringIO(),
                            processes=Damaging())
    assert res["error"].startswith("damaged result file job_infer_ours_fp32.json") and "wall_s" in res
    for name in ("ours_fp32", "ours_bf16"):  # logits saved by jobs killed mid-write: no comparison, no stop
        (tmp_path / f"logits_{name}.pt").write_bytes(b"PK\x03\x04 cut short")
    assert gpu_suite.compare(tmp_path) == {}
