"""Every user-facing script on bad input, run as a user runs it (a subprocess): non-zero exit, no
traceback, and the offending path or flag named (issue 15).

All cases start at once (a few at a time) in one module fixture, since each process spends
most of its ~3 s importing torch; each test then checks its own case.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import make_synthetic_davis

ROOT = Path(__file__).resolve().parents[1]


def _layouts(tmp: Path) -> dict:
    """Minimal dataset folders that pass each script's root check, and bad files."""
    (tmp / "junk.pth").write_text("101 not a checkpoint\n")
    (tmp / "clip.mp4").write_bytes(b"not decoded: --fps is refused first")
    a2d = tmp / "a2d"
    (a2d / "Release" / "Annotations" / "mat").mkdir(parents=True)
    (a2d / "frames").mkdir()
    (a2d / "Release" / "videoset.csv").write_text("")
    vspw = tmp / "vspw"
    (vspw / "data" / "v1" / "origin").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(vspw / "data" / "v1" / "origin" / "00000000.jpg")
    (vspw / "test.txt").write_text("v1\n")
    avs = tmp / "avsbench"
    (avs / "Single-source").mkdir(parents=True)
    (avs / "Single-source" / "s4_meta_data.csv").write_text("name,start,category,split\n")
    logits = tmp / "logits"
    (logits / "seq").mkdir(parents=True)
    run = tmp / "finished_run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    davis = make_synthetic_davis(tmp / "davis", num_train=1, num_val=1, num_frames=3, size_hw=(32, 32), seed=0)
    return {"tmp": tmp, "a2d": a2d, "vspw": vspw, "avs": avs, "logits": logits, "run": run, "davis": davis}


AVOS = ["--backbone", "tiny", "--no_ytvos", "--device", "cpu", "--num_workers", "0", "--train_size", "32",
        "--val_size", "32", "--small_aug"]
AVS = ["--config", "avs_tiny", "--allow_random_vggish", "--device", "cpu", "--num_workers", "0"]

# id: (script, argv with {placeholders} from _layouts, texts the error must contain)
CASES = {
    "avos_train_missing_data": ("train_swin_medvt_avos.py", [*AVOS, "--davis16_root", "{tmp}/nowhere",
                                                             "--output_dir", "{tmp}/o1"],
                                ["nowhere", "--davis16_root"]),
    "avos_train_epochs_0": ("train_swin_medvt_avos.py", ["--epochs", "0"], ["--epochs"]),
    "avos_train_junk_resume": ("train_swin_medvt_avos.py", [*AVOS, "--davis16_root", "{davis}", "--resume",
                                                            "{tmp}/junk.pth", "--output_dir", "{tmp}/o2"],
                               ["junk.pth"]),
    "avos_train_finished_run": ("train_swin_medvt_avos.py", [*AVOS, "--davis16_root", "{davis}", "--output_dir",
                                                             "{run}"], ["finished_run", "--overwrite"]),
    "avos_inference_junk_checkpoint": ("inference_swin_medvt_avos.py", ["--model_path", "{tmp}/junk.pth",
                                                                        "--davis16_root", "{davis}", "--device",
                                                                        "cpu"], ["junk.pth"]),
    "avos_inference_val_size_0": ("inference_swin_medvt_avos.py", ["--model_path", "x", "--val_size", "0"],
                                  ["--val_size"]),
    "avos_inference_missing_video": ("inference_swin_medvt_avos.py", ["--model_path", "{tmp}/junk.pth", "--video",
                                                                      "{tmp}/no_such_dir", "--device", "cpu"],
                                     ["no_such_dir", "--video"]),
    "avos_inference_fps_for_a_video_file": ("inference_swin_medvt_avos.py", ["--model_path", "{tmp}/junk.pth",
                                                                             "--video", "{tmp}/clip.mp4", "--fps", "5"],
                                            ["--fps", "clip.mp4", "own frame rate"]),
    "avos_inference_amp_for_onnx": ("inference_swin_medvt_avos.py", ["--model_path", "{tmp}/junk.pth", "--runtime",
                                                                     "onnx", "--onnx_path", "{tmp}/junk.pth", "--amp",
                                                                     "bf16"], ["--amp", "--runtime onnx"]),
    "vss_inference_onnx_path_a_folder": ("vss/inference_medvt_vss.py", ["--runtime", "onnx", "--onnx_path", "{tmp}"],
                                         ["--onnx_path", "is a folder, not a file"]),
    "vss_inference_onnx_path_without_runtime": ("vss/inference_medvt_vss.py", ["--random_weights", "--onnx_path",
                                                                               "{tmp}/junk.pth"],
                                                ["--onnx_path", "junk.pth", "--runtime onnx"]),
    "vss_inference_random_weights_for_onnx": ("vss/inference_medvt_vss.py", ["--runtime", "onnx", "--onnx_path",
                                                                             "{tmp}/junk.pth", "--random_weights",
                                                                             "--num_classes", "7"],
                                              ["--random_weights", "--num_classes", "--runtime onnx"]),
    "vss_inference_fps_for_a_video_file": ("vss/inference_medvt_vss.py", ["--random_weights", "--video",
                                                                          "{tmp}/clip.mp4", "--fps", "5"],
                                           ["--fps", "clip.mp4", "own frame rate"]),
    "a2d_inference_fps_for_a_split": ("actor_action/inference_medvt_a2d.py", ["--a2d_root", "{a2d}", "--model_path",
                                                                             "{tmp}/junk.pth", "--fps", "5"],
                                      ["--fps", "--video"]),
    "crf_missing_logits": ("crf_davis16.py", ["{tmp}/no_logits", "{tmp}/crf_out"], ["no_logits"]),
    "crf_output_is_input": ("crf_davis16.py", ["{logits}", "{logits}", "--images_dir", "{tmp}"],
                            ["overlaps", "logits"]),
    "crf_workers_0": ("crf_davis16.py", ["{logits}", "{tmp}/crf_out", "--workers", "0"], ["--workers"]),
    "vss_train_missing_data": ("vss/train_medvt_vss.py", ["--vspw_root", "{tmp}/nowhere", "--output_dir", "{tmp}/o3"],
                               ["nowhere", "--vspw_root"]),
    "vss_train_val_size_negative": ("vss/train_medvt_vss.py", ["--val_size", "-1"], ["--val_size"]),
    "vss_inference_junk_checkpoint": ("vss/inference_medvt_vss.py", ["--model_path", "{tmp}/junk.pth", "--vspw_root",
                                                                     "{vspw}", "--split", "test", "--device", "cpu"],
                                      ["junk.pth"]),
    "vss_inference_clip_len_0": ("vss/inference_medvt_vss.py", ["--clip_len", "0"], ["--clip_len"]),
    "a2d_train_missing_data": ("actor_action/train_medvt_a2d.py", ["--a2d_root", "{tmp}/nowhere", "--output_dir",
                                                                  "{tmp}/o4"], ["nowhere", "--a2d_root"]),
    "a2d_train_epochs_0": ("actor_action/train_medvt_a2d.py", ["--epochs", "0"], ["--epochs"]),
    "a2d_inference_junk_checkpoint": ("actor_action/inference_medvt_a2d.py", ["--a2d_root", "{a2d}", "--model_path",
                                                                             "{tmp}/junk.pth"], ["junk.pth"]),
    "a2d_inference_missing_checkpoint": ("actor_action/inference_medvt_a2d.py", ["--a2d_root", "{a2d}",
                                                                                "--model_path", "{tmp}/none.pth"],
                                         ["none.pth"]),
    "avs_train_missing_data": ("avs/train_medvt.py", [*AVS, "--avsbench_root", "{tmp}/nowhere", "--output_dir",
                                                      "{tmp}/o5"], ["nowhere", "--avsbench_root"]),
    "avs_train_epochs_0": ("avs/train_medvt.py", ["--max_epoches", "0"], ["--max_epoches"]),
    "avs_test_junk_weights": ("avs/test_medvt.py", [*AVS, "--avsbench_root", "{avs}", "--weights", "{tmp}/junk.pth",
                                                    "--output_dir", "{tmp}/o6"], ["junk.pth"]),
    "avs_test_missing_vggish": ("avs/test_medvt.py", ["--config", "avs_tiny", "--device", "cpu", "--vggish_weights",
                                                      "{tmp}/vggish.pth", "--weights", "{tmp}/junk.pth",
                                                      "--output_dir", "{tmp}/o7"], ["vggish.pth"]),
    "avs_preprocess_missing_data": ("avs/preprocess_audio.py", ["--avsbench_root", "{tmp}/nowhere"],
                                    ["nowhere", "--avsbench_root"]),
    "demo_epochs_0": ("utils/demo.py", ["--epochs", "0"], ["--epochs"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    paths = _layouts(tmp_path_factory.mktemp("cli"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVT_")}
    env.update(MEDVT_DATA_ROOT=str(paths["tmp"] / "no_data_root"), OMP_NUM_THREADS="1")

    def run(case):
        script, argv, _ = CASES[case]
        argv = [a.format(**paths) for a in argv]
        return case, subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=paths["tmp"], env=env,
                                    capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES)) | {"_paths": paths}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_error(results, case):
    res = results[case]
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], res.stderr[-3000:]  # one line, argparse's usage errors too
    for text in CASES[case][2]:
        assert text in res.stderr, (text, res.stderr[-3000:])


def test_refused_runs_leave_no_output_folder(results):
    tmp = results["_paths"]["tmp"]
    for out in ("o1", "o3", "o4", "o5"):
        assert not (tmp / out).exists(), out
    assert not (tmp / "runs").exists() and not (tmp / "outputs").exists()
    assert (results["_paths"]["run"] / "metrics.jsonl").read_text() == '{"epoch": 0}\n'


@pytest.mark.parametrize("module, argv, flag", [
    ("inference_swin_medvt_avos", ["--model_path", "m.pth", "--video", "clip.mp4"], "--video"),
    ("inference_swin_medvt_avos", ["--model_path", "m.pth", "--runtime", "onnx", "--onnx_path", "m.onnx"],
     "--runtime onnx"),
    ("vss.inference_medvt_vss", ["--random_weights", "--video", "clip.mp4"], "--video"),
    ("vss.inference_medvt_vss", ["--runtime", "onnx", "--onnx_path", "m.onnx"], "--runtime onnx"),
    ("actor_action.inference_medvt_a2d", ["--model_path", "m.pth", "--video", "clip.mp4"], "--video"),
    ("avs.test_medvt", ["--weights", "m.pth", "--video", "clip.mp4"], "--video"),
])
def test_one_process_jobs_are_refused_under_torchrun(monkeypatch, tmp_path, module, argv, flag):
    """Under torchrun the scripts share a dataset out; one video, or ONNX Runtime, is one process's job:
    refused in one line, before anything is read or written."""
    import importlib

    from utils.cli import UserError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=f"^{flag} runs in one process: start it without torchrun"):
        importlib.import_module(module).main(argv)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
