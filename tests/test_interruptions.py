"""A run stopped from outside (SIGTERM, kill -9) or by the machine (a full disk, a file size limit, its
folder deleted): one line that says what happened and names the file, no process left behind, no file
that looks complete but is not. The signals and limits are real: each case runs in a child process."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, *, limit: int | None = None, **kw) -> subprocess.Popen:
    """``python -c code`` from the repository root; ``limit``: a file size limit in bytes (RLIMIT_FSIZE, with
    SIGXFSZ ignored, so that a write past it fails with EFBIG as on a full disk)."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=limited if limit else None, **kw)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return found


def wait_for(test, seconds: float = 30) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if test():
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------ SIGTERM
def test_sigterm_stops_a_script_as_ctrl_c_does_and_its_log_says_so(tmp_path):
    """SIGTERM (kill, timeout, a scheduler) ended every script with no message and no line in its log."""
    code = f"""
import logging, os, signal, time
from utils.cli import run_main
from utils.logger import setup_logger
def main():
    setup_logger({str(tmp_path)!r}, name="medvt.sigterm").info("started")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
run_main(main, prog="script.py")
"""
    code, _, err = finish(python(code))
    assert code == 143 and err.strip().splitlines()[-1] == "script.py: terminated (SIGTERM)", err
    assert (tmp_path / "train.log").read_text().strip().splitlines()[-1].endswith("ERROR stopped: terminated (SIGTERM)")


def test_sigterm_to_the_demo_ends_its_running_step(tmp_path):
    """The demo died at once, and the step it ran (training) went on to the end under PID 1. The step is
    stopped as it would be on its own (SIGTERM: it cleans up), not killed."""
    child, ended = tmp_path / "child.pid", tmp_path / "ended"
    step_code = (f"import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: (open({str(ended)!r}, 'w'), "
                 f"sys.exit(143))); open({str(child)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    code = f"""
from utils import demo
from utils.cli import run_main
run_main(lambda: demo.run("-c", [{step_code!r}]))
"""
    proc = python(code)
    assert wait_for(lambda: child.is_file() and child.read_text().strip()), "the step did not start"
    step = int(child.read_text())
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143 and "terminated (SIGTERM)" in err
    assert wait_for(lambda: not alive(step), 10), "the demo's step outlived it"
    assert ended.is_file()  # it got SIGTERM, and ran its clean-up


def _crf_with_workers(tmp_path, sizes: tuple = ((120, 160),) * 200, **kw) -> subprocess.Popen:
    """crf_davis16.py --workers 2 on frames of noise of these sizes (200 small ones: a few minutes of work)."""
    logits, images = tmp_path / "logits" / "seq", tmp_path / "images" / "seq"
    logits.mkdir(parents=True)
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, hw in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, hw, dtype=np.uint8)).save(logits / f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(images / f"{i:05d}.jpg")
    return subprocess.Popen([sys.executable, "crf_davis16.py", str(tmp_path / "logits"), str(tmp_path / "out"),
                             "--images_dir", str(tmp_path / "images"), "--workers", "2"], cwd=ROOT, **kw)


def test_crf_workers_leave_ctrl_c_to_their_parent(tmp_path):
    """Ctrl-C reaches the whole process group: each CRF worker printed its own KeyboardInterrupt traceback
    (and, its inherited handler ignoring SIGTERM from then on, could outlive a parent killed later)."""
    # a large frame and a small one: one worker busy, the other soon waiting for work (it printed the traceback)
    proc = _crf_with_workers(tmp_path, ((480, 854), (60, 80)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    assert wait_for(lambda: len(children(proc.pid)) >= 2, 60), "the workers did not start"
    time.sleep(1)  # frames under way
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130 and err.strip().splitlines()[-1] == "crf_davis16.py: interrupted", err
    assert "Traceback" not in err, err


def test_crf_workers_end_with_a_killed_parent(tmp_path):
    """crf_davis16.py --workers 2 killed with kill -9: its workers stayed, blocked, for good."""
    proc = _crf_with_workers(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(children(proc.pid)) >= 2, 60), "the workers did not start"
        workers = children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: not any(alive(w) for w in workers), 15), "workers outlived their parent"


# ------------------------------------------------------------------ a full disk, a size limit
WRITERS = {
    "png": ("from avos.inference import save_png; import numpy as np; "
            "save_png(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8), OUT / 'a.png')",
            "a.png"),
    "label_png": ("from utils.visualize import save_label_png; import numpy as np; "
                  "save_label_png(np.random.default_rng(0).integers(0, 9, (300, 300)), "
                  "np.random.default_rng(1).integers(0, 255, (256, 3), dtype=np.uint8), OUT / 'l.png')", "l.png"),
    "json": ("from utils.metrics import write_json; write_json(OUT / 'r.json', list(range(20000)))", "r.json"),
    "checkpoint": ("import torch; from utils.checkpoint import save_checkpoint; "
                   "save_checkpoint({'model': {'w': torch.zeros(100000)}}, OUT / 'checkpoint_last.pth')",
                   "checkpoint_last.pth"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_past_a_size_limit_is_one_line_naming_the_file(writer, tmp_path):
    """A full disk or a file size limit: a traceback (from torch.save two, chained) that named no file;
    OpenCV's imwrite even reported success for a PNG cut short, and the run ended well."""
    write, name = WRITERS[writer]
    code = f"from pathlib import Path\nfrom utils.cli import run_main\nOUT = Path({str(tmp_path)!r})\n" \
           f"def main():\n    {write}\nrun_main(main, prog='w')"
    code, _, err = finish(python(code, limit=4096))
    assert code == 1 and err.strip() == f"w: error: file too large (a file size limit?) writing {tmp_path / name} " \
                                        "([Errno 27]); free space or choose another output folder", err
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


# ------------------------------------------------------------------ the folders of a run
def test_a_run_folder_deleted_mid_run_stops_the_run(tmp_path):
    """save_checkpoint made the deleted folder again, and the run ended well with its log and best gone."""
    from models import build_model
    from utils.checkpoint import save_training
    from utils.cli import UserError
    from utils.distributed import DistInfo
    from utils.optim import PolyLR

    model = build_model("tiny")
    optimizer = torch.optim.AdamW(model.parameters())
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    with pytest.raises(UserError, match=r"--output_dir .*gone disappeared during the run \(deleted or moved\?\): "
                                        r"stopped at the end of epoch 3 without saving it"):
        save_training(tmp_path / "gone", False, info, None, model.cfg, model, optimizer,
                      PolyLR(optimizer, max_steps=2), None, 3, {"miou": -1.0, "epoch": -1})
    assert not (tmp_path / "gone").exists()


def test_the_stop_line_of_a_deleted_log_does_not_hide_the_error(tmp_path):
    """log_stop read the log it appends to: with it deleted, the error boundary raised FileNotFoundError."""
    import shutil

    from utils.logger import log_stop, setup_logger

    setup_logger(tmp_path / "run", name="medvt.deleted").info("started")
    shutil.rmtree(tmp_path / "run")
    log_stop("interrupted (Ctrl-C or SIGINT)")


def test_an_output_file_in_a_folder_this_user_cannot_write_is_refused_first(tmp_path, monkeypatch):
    """export_onnx.py --output there failed after the whole export, naming its temporary folder. (As root
    every folder is writable, so the permission test is made to say no.)"""
    from utils.cli import UserError
    from utils.outputs import check_output_file

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=rf"^--output {tmp_path / 'm.onnx'} cannot be written: {tmp_path} is not "
                                        "writable for this user; choose another folder$"):
        check_output_file(tmp_path / "m.onnx", "--output", {})


def test_a_stopped_trainer_says_how_to_continue(tmp_path, monkeypatch):
    """Every trainer: Ctrl-C or SIGTERM ends with how to continue, from what its folder holds by then: "--resume
    auto" was said also where it would continue an old run the user was replacing (stopped before --overwrite
    touched the folder) or start anew (a copy continued in a new folder, stopped before its first epoch)."""
    code = """
import os, signal, sys
sys.argv = ["train_swin_medvt_avos.py"]
import train_swin_medvt_avos as t
t.run_main(lambda: os.kill(os.getpid(), signal.SIGINT), resume=t.resume_hint)
"""
    code, _, err = finish(python(code))
    assert code == 130 and err.strip().splitlines()[-1] == \
        "train_swin_medvt_avos.py: interrupted; nothing was written: run the same command again", err
    from utils import training

    monkeypatch.setattr(training, "_run_folder", tmp_path)  # opened; no epoch saved (train.log only)
    monkeypatch.setattr(training, "_folder_start", 0)  # a new run's (an earlier test's run set it)
    (tmp_path / "train.log").write_text("")
    assert training.resume_hint() == "no epoch was saved: run the same command again"
    (tmp_path / "checkpoint_best.pth").write_bytes(b"")  # stopped between its first epoch's two checkpoints
    assert training.resume_hint() == "to continue, run the same command with --resume auto (without --overwrite)"
    # the same, in a copy continued here from epoch 3: --resume auto refuses a lone checkpoint_best.pth of epoch 4
    monkeypatch.setattr(training, "_folder_start", 4)
    best = tmp_path / "checkpoint_best.pth"
    assert training.resume_hint() == (f"its one saved epoch is in {best} only: continue from it with --resume {best} "
                                      "and another --output_dir")
    (tmp_path / "checkpoint_last.pth").write_bytes(b"")
    assert training.resume_hint() == "to continue, run the same command with --resume auto (without --overwrite)"
    import train_swin_medvt_avos
    from actor_action import train_medvt_a2d
    from avs import train_medvt
    from vss import train_medvt_vss

    for module in (train_swin_medvt_avos, train_medvt_vss, train_medvt_a2d, train_medvt):
        assert "run_main(main, resume=resume_hint)" in Path(module.__file__).read_text()


def test_a_gif_overlay_too_long_for_memory_is_refused_before_any_output(tmp_path, monkeypatch):
    """A GIF holds its frames until it is written: an hour of 720p asked ~100 GB at the end of the run."""
    import inference_swin_medvt_avos as script
    import utils.visualize
    from models import build_model
    from utils.cli import UserError

    frames = tmp_path / "clip"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(frames / f"{i:05d}.png")
    model = build_model("tiny")
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, tmp_path / "tiny.pth")
    monkeypatch.setattr(utils.visualize, "GIF_MAX_BYTES", 6 * 64 * 80 - 1)
    argv = ["--model_path", str(tmp_path / "tiny.pth"), "--video", str(frames), "--val_size", "64", "--device", "cpu"]
    with pytest.raises(UserError, match=r"^--overlay_format gif: --video clip has 6 frames of 80x64, which a GIF holds "
                                        r"in memory until it is written .*; use mp4"):
        script.main([*argv, "--overlay_format", "gif", "--output_dir", str(tmp_path / "gif")])
    assert not (tmp_path / "gif").exists()
    monkeypatch.setattr(utils.visualize, "GIF_MAX_BYTES", 6 * 64 * 80)
    script.main([*argv, "--overlay_format", "gif", "--output_dir", str(tmp_path / "gif")])
    assert (tmp_path / "gif" / "overlay" / "clip.gif").is_file()


def test_an_error_raised_while_stopping_is_reported_as_the_stop():
    """SIGTERM to a process group kills DataLoader workers too, and the parent raised RuntimeError ("worker
    killed by signal") while unwinding the stop: two chained tracebacks and status 1."""
    code = """
from utils.cli import run_main
from utils.process import Terminated
def main():
    try:
        raise Terminated()
    finally:
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
run_main(main, prog="p")
"""
    code, _, err = finish(python(code))
    assert code == 143 and err.strip() == "p: terminated (SIGTERM)", err


def test_the_stop_line_on_a_full_disk_is_not_a_logging_traceback(tmp_path):
    """The log on the disk that just filled up: logging printed its own 30-line traceback before the line."""
    code = f"""
from utils.cli import UserError, run_main
from utils.logger import setup_logger
def main():
    setup_logger({str(tmp_path)!r}, name="medvt.full").info("x" * 3900)
    raise OSError(28, "No space left on device", {str(tmp_path / "r.json")!r})
run_main(main, prog="p")
"""
    code, _, err = finish(python(code, limit=4000))
    assert code == 1 and err.strip() == f"p: error: no space left on the device writing {tmp_path / 'r.json'} " \
                                        "([Errno 28]); free space or choose another output folder", err


def test_sighup_stops_as_sigterm_and_other_ranks_leave_the_line_to_rank_0(tmp_path):
    """SIGHUP (the terminal closed, ssh dropped) killed a run with no line; under torchrun every rank printed
    the stop line (rank 0's is enough; each log still gets its stop line)."""
    code = """
import os, signal
from utils.cli import run_main
run_main(lambda: os.kill(os.getpid(), signal.SIGHUP), prog="p")
"""
    code_, _, err = finish(python(code))
    assert code_ == 143 and err.strip() == "p: terminated (SIGHUP)", err
    code_, _, err = finish(python(code, env={**os.environ, "RANK": "1"}))
    assert code_ == 143 and err.strip() == "", err


def test_a_process_ends_with_its_killed_parent(tmp_path):
    """kill -9 of a torchrun launcher (or of the demo) left its workers training on, under PID 1, beside the
    run restarted in the same folder; utils.distributed.run_distributed and the demo's steps arm this."""
    pid = tmp_path / "child.pid"
    child = f"import os, time; from utils.process import end_with_parent; end_with_parent(); " \
            f"open({str(pid)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = python(f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
                    "time.sleep(60)")
    assert wait_for(lambda: pid.is_file() and pid.read_text().strip(), 30), "the child did not start"
    child_pid = int(pid.read_text())
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not alive(child_pid), 10), "the child outlived its parent"


@pytest.mark.parametrize("sig, says, status", [(signal.SIGINT, "interrupted", 130),
                                               (signal.SIGTERM, "terminated (SIGTERM)", 143)])
def test_a_stop_while_the_script_imports_is_one_line(sig, says, status):
    """The first seconds of every script import torch: a Ctrl-C there printed the traceback of whatever was
    importing (a SIGTERM ended it without a word). utils.startup, imported first by every script, makes it
    one line. The signal is sent as soon as the script has imported utils.startup (its first import)."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "train_swin_medvt_avos.py", "--help"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # -X importtime reports each import as it ends
        lines.append(line)
        if line.rstrip().endswith("utils.startup"):
            break
    proc.send_signal(sig)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    printed = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert printed == [f"train_swin_medvt_avos.py: {says}"], printed[-20:]
    assert proc.returncode == status  # as later in the run (a SIGTERM here exited with status 1)
    assert "torch" not in "".join(lines)  # it was stopped before torch was imported


def test_every_script_imports_utils_startup_first():
    scripts = [p for p in ROOT.glob("**/*.py") if ".venv" not in p.parts and "tests" not in p.parts
               and not {".orig", ".gpu_suite"} & set(p.parts)
               and 'if __name__ == "__main__":' in p.read_text()]
    assert len(scripts) >= 12
    for path in scripts:
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert imports[:2] == ["from __future__ import annotations", "import utils.startup  # noqa: F401  (first: "
                               "Ctrl-C while torch imports ends in one line)"], path


def test_a_second_ctrl_c_or_sigterm_does_not_cut_the_clean_up_short(tmp_path):
    """Ctrl-C pressed twice (or a scheduler's SIGTERM, then another): the second raised inside the clean-up
    of the first (a DataLoader's shutdown, temporary files) and, in a script's process, in the interpreter's
    exit, each with a traceback. The first stop now ignores the signals until the process ends."""
    done = tmp_path / "cleaned"
    code = f"""
import atexit, os, signal, sys
from utils.cli import run_main
from utils.process import handle_stops
handle_stops(script=True)  # as utils.startup does where a script is the process
sys.argv = ["train_x.py"]
atexit.register(lambda: os.kill(os.getpid(), signal.{{}}))  # the second signal, during the exit
def main():
    try:
        os.kill(os.getpid(), signal.{{}})
    finally:  # the clean-up: a second signal arrives in the middle of it
        os.kill(os.getpid(), signal.{{}})
        open({str(done)!r}, "w").write("done")
run_main(main)
"""
    for sig, status, says in (("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated (SIGTERM)")):
        done.unlink(missing_ok=True)
        code_, out, err = finish(python(code.format(sig, sig, sig)))
        assert (code_, err) == (status, f"train_x.py: {says}\n") and done.read_text() == "done", (code_, err)


def test_a_closed_stdout_ends_the_run_quietly_and_keeps_its_log(tmp_path):
    """`script | head -1`: the first print after the reader left raised BrokenPipeError (a traceback, and
    another at exit), and every log line after it printed logging's own traceback to stderr. The log file
    now keeps every line, a print ends the run with status 1 and no message, as a pipe's writer ends."""
    code = f"""
import sys
from utils.cli import run_main
from utils.logger import setup_logger
def main():
    log = setup_logger({str(tmp_path)!r}, name="medvt.pipe")
    for i in range(20000):
        log.info(f"line {{i}}")
    print("the summary")
sys.argv = ["train_x.py"]
run_main(main)
"""
    proc = python(code)
    assert proc.stdout.readline().strip().endswith("line 0")
    proc.stdout.close()  # the reader leaves, as head does
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert (proc.returncode, err) == (1, "")
    log = (tmp_path / "train.log").read_text().splitlines()
    assert log[-2].endswith("line 19999") and log[-1].endswith("stopped: error: its standard output was closed "
                                                               "(the reader of a pipe ended)")


def test_avos_inference_piped_to_head_goes_on_and_keeps_its_log(tmp_path):
    """`inference_swin_medvt_avos.py ... | head -1`: its console handler printed logging's traceback to stderr
    for every line after the reader left (the trainers' did not). It now goes on, as training does, and
    out.log keeps every line."""
    code = f"""
import sys
from pathlib import Path
from avos.inference import log_file, logger
from utils.cli import run_main
def main():
    with log_file(Path({str(tmp_path / "out.log")!r})):
        for i in range(20000):
            logger.info(f"line {{i}}")
sys.argv = ["inference_swin_medvt_avos.py"]
run_main(main)
"""
    proc = python(code)
    assert proc.stdout.readline().strip() == "line 0"
    proc.stdout.close()  # the reader leaves, as head does
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert (tmp_path / "out.log").read_text().splitlines()[-1].endswith("line 19999")


def test_a_stop_line_that_cannot_be_printed_still_ends_with_the_stops_status(monkeypatch):
    """A closed terminal (SIGHUP) takes no stop line: printing it raised EIO, which escaped with status 1;
    a RANK that is not a number is read as 0, not a traceback."""
    from utils.cli import run_main

    class Gone:
        def write(self, text):
            raise OSError(5, "Input/output error")

        def flush(self):
            raise OSError(5, "Input/output error")

    def main():
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stderr", Gone())
    monkeypatch.setattr(sys, "argv", ["train_x.py"])
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(SystemExit) as stop:
        run_main(main)
    assert stop.value.code == 130


def test_a_test_session_run_from_the_repositorys_environment_keeps_its_own_ctrl_c(tmp_path):
    """pytest run as .venv/bin/pytest (or python -m pytest from .venv) is a file inside the repository: it was
    taken for one of its scripts, and after any in-process run_main error Ctrl-C was ignored for the rest of
    the session. A tool of an environment (pyvenv.cfg, site-packages) is not a script."""
    from utils.startup import repository_script

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for path, ours in [("train_x.py", True), ("vss/infer.py", True), ("venv/bin/pytest", False),
                       ("lib/python3.11/site-packages/pytest/__main__.py", False)]:
        assert repository_script(str(tmp_path / path), root=tmp_path) is ours, path
    assert not repository_script(str(ROOT / "x.py"), root=tmp_path) and not repository_script(None, root=tmp_path)
