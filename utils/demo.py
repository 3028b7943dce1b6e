"""``make demo``: the whole AVOS job on a built-in synthetic video set, on the CPU, in minutes.

1. write a synthetic DAVIS-2016-format set (:mod:`datasets.synthetic`);
2. train the ``tiny`` MED-VT with ``train_swin_medvt_avos.py`` (validation keeps the best checkpoint);
3. run ``inference_swin_medvt_avos.py`` with that checkpoint on the held-out sequences (flip TTA,
   probability maps, masks, overlays and an mp4 per video);
4. refine the probability maps with ``crf_davis16.py``;
5. write ``<output_dir>/metrics.json`` (J, F, J&F before and after the CRF, timings).

Each step runs the script as a user would (a child process with the same flags; they are printed),
so the demo also checks the command lines the README shows.
The demo's recipe differs from the paper's on purpose (a 1M-parameter model trained from
scratch for 8 epochs of 240 clips: 1,920 steps): a higher learning rate on every group and smaller, scaled
augmentation sizes.
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from datasets.synthetic import make_synthetic_davis
from utils.cli import ArgumentParser, UserError, add_debug_flag, positive_float, positive_int, random_seed, run_main
from utils.metrics import write_json
from utils.outputs import check_output_dir
from utils.process import Terminated, end_with_parent

ROOT = Path(__file__).resolve().parents[1]

SIZE_HW = (96, 160)

# Everything the demo writes in its output folder: deleted before a run with --overwrite, so no
# frame, logits or checkpoint of an earlier demo mixes into the new one.
DEMO_OUTPUTS = ("data", "train", "inference", "crf", "metrics.json")
# Written first into the output folder: --overwrite deletes DEMO_OUTPUTS only where a demo wrote them.
DEMO_MARK = ".medvt_demo"


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a folder that holds files unless ``overwrite``; with it, delete the demo's
    own outputs of an earlier run (a link is removed, not followed), and only in a folder that a demo
    marked as its own: a user's folder that happens to hold a data/ or train/ is left alone."""
    check_output_dir(out, "--output_dir", {}, overwrite, deletes=True)
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_MARK).is_file():
        raise UserError(f"--output_dir {out} holds files that no demo wrote (it has no {DEMO_MARK}); --overwrite "
                        "only replaces an earlier demo: choose a new folder")
    for name in DEMO_OUTPUTS if out.is_dir() else ():
        path = out / name
        if path.is_dir() and not path.is_symlink():
            print(f"=== --overwrite: deleting {path} of an earlier demo")
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            print(f"=== --overwrite: deleting {path} of an earlier demo")
            path.unlink()


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m utils.demo", description=__doc__)
    p.add_argument("--output_dir", type=Path, default=Path("demo_output"),
                   help="where everything is written: a new or empty folder (see --overwrite) (default demo_output)")
    p.add_argument("--overwrite", action="store_true",
                   help="run in an --output_dir that already holds files (an earlier demo): what a demo writes "
                        f"there ({', '.join(DEMO_OUTPUTS)}) is deleted first, nothing else")
    p.add_argument("--epochs", type=positive_int, default=8,
                   help="training epochs (each visits every training frame once)")
    p.add_argument("--steps_per_epoch", type=positive_int, default=None,
                   help="cap on the clips per epoch (default: all)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate of every parameter group")
    p.add_argument("--train_sequences", type=positive_int, default=12, help="synthetic training videos")
    p.add_argument("--val_sequences", type=positive_int, default=3, help="synthetic held-out videos")
    p.add_argument("--frames", type=positive_int, default=20, help="frames per synthetic video")
    p.add_argument("--seed", type=random_seed, default=0, help="seed of the synthetic set and of training")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    add_debug_flag(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args.frames < 3:
        p.error(f"--frames {args.frames}: give 3 or more (the DAVIS metrics leave out each video's first and last "
                "frames)")
    return args


def run(script: str, argv: list[str], threads: int | None = None) -> None:
    """Run ``python <script> <argv>`` from the repository root; a failure stops the demo naming the step.
    The command is printed with the script's full path, so that it can be run again from any folder."""
    print(f"\n=== {script}: python {shlex.join([str(ROOT / script), *argv])}", flush=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    t0 = time.perf_counter()
    done = _run_step([sys.executable, script, *argv], env)
    if done.returncode < 0:  # killed by a signal (Ctrl-C, a scheduler's SIGTERM): the step printed nothing
        name = next((s.name for s in signal.Signals if s == -done.returncode), f"signal {-done.returncode}")
        raise UserError(f"the demo stopped: {script} was stopped by {name}")
    if done.returncode:
        raise UserError(f"the demo stopped: {script} exited with status {done.returncode} (its message is above)")
    print(f"=== {script} took {time.perf_counter() - t0:.1f} s", flush=True)


def _run_step(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run one step; when the demo is stopped (Ctrl-C, SIGTERM), the step is stopped as it would be on its
    own (SIGTERM: its temporary files removed, its log's last line), and killed only if it does not end."""
    # a demo killed ends its step too (its pid taken here: the step's parent may be gone by the time it asks)
    with subprocess.Popen(command, cwd=ROOT, env=env, preexec_fn=partial(end_with_parent, os.getpid())) as step:
        try:
            return subprocess.CompletedProcess(command, step.wait())
        except BaseException as stop:
            ways = [step.terminate, step.kill]  # each given 30 s
            if not isinstance(stop, Terminated):  # Ctrl-C in a terminal reached the step too: it may end by itself
                ways.insert(0, lambda: None)
            for way in ways:
                way()
                try:
                    step.wait(timeout=30)
                    break
                except subprocess.TimeoutExpired:
                    pass
            raise


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(os.path.abspath(args.output_dir))  # the steps run in the repository: a relative path would point there
    prepare_output_dir(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("written by python -m utils.demo; its --overwrite replaces the demo outputs here\n")
    data, train_dir, infer_dir, crf_dir = out / "data", out / "train", out / "inference", out / "crf"
    t_start = time.perf_counter()

    print(f"=== writing the synthetic DAVIS-2016-format set to {data}")
    make_synthetic_davis(data, num_train=args.train_sequences, num_val=args.val_sequences,
                         num_frames=args.frames, size_hw=SIZE_HW, seed=args.seed)
    short = str(min(SIZE_HW))
    t0 = time.perf_counter()
    run("train_swin_medvt_avos.py", [
        "--model_config", "tiny", "--davis16_root", str(data), "--no_ytvos", "--train_size", short, "--small_aug",
        "--lr_groups", "intended", "--lr", str(args.lr), "--lr_backbone", str(args.lr), "--end_lr", str(args.lr / 20),
        "--epochs", str(args.epochs), "--val_size", short,
        "--num_workers", "0", "--seed", str(args.seed), "--device", "cpu", "--log_every", "50",
        "--output_dir", str(train_dir), "--overwrite"]
        + (["--steps_per_epoch", str(args.steps_per_epoch)] if args.steps_per_epoch else []), args.threads)
    train_s = time.perf_counter() - t0
    ckpt = train_dir / "checkpoint_best.pth"
    if not ckpt.is_file():
        ckpt = train_dir / "checkpoint_last.pth"

    run("inference_swin_medvt_avos.py", [
        "--model_path", str(ckpt), "--dataset", "davis", "--davis16_root", str(data), "--val_size", short,
        "--flip", "--save_overlay", "--device", "cpu", "--output_dir", str(infer_dir)], args.threads)
    run("crf_davis16.py", [str(infer_dir / "logits"), str(crf_dir), "--davis16_root", str(data)], args.threads)
    crf = json.loads((crf_dir / "metrics.json").read_text())

    keys = ("J_mean", "F_mean", "JF_mean")
    metrics = {
        "before_crf": {k: crf["before_crf"][k] for k in keys} if crf and "before_crf" in crf else None,
        "after_crf": {k: crf["after_crf"][k] for k in keys} if crf and "after_crf" in crf else None,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "checkpoint": str(ckpt),
    }
    if metrics["before_crf"]:
        metrics.update(metrics["before_crf"])
    write_json(out / "metrics.json", metrics)
    print(f"\n=== demo done in {metrics['total_seconds']} s; {out / 'metrics.json'}:")
    print(json.dumps(metrics, indent=2))
    print(f"overlays: {infer_dir / 'overlay'}")
    return metrics


if __name__ == "__main__":
    run_main(main)
