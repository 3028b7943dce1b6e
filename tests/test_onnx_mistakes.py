"""Mistakes with ONNX files, without exporting a MED-VT model: graphs built with the ``onnx`` helper API
(milliseconds) that keep the contract of ``export_onnx.py``'s files (inputs, output, ``medvt.*``
metadata), and a toy module exported through the real exporter (seconds).

A failed export leaves ``--output`` as it was; ``--opset``, ``--threads`` and ``--num_frames`` take only
values that work; a file not written by ``export_onnx.py`` is refused at load in one line; a file of
another task is named as such; the AVOS script runs, logs and records the file's own forward and
lprop_scale and refuses flags that differ; both inference scripts record the runtime and the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

import export_onnx
import inference_swin_medvt_avos as avos_script
from models import build_model
from models.config import get_config
from models.onnx_export import OnnxModel, export_onnx as export
from utils.cli import UserError
from vss import inference_medvt_vss
from vss.common import onnx_from_args
from vss.config import vss_config


def medvt_like(path: Path, task: str | None = "avos", classes: int = 1, frames: int = 6, audio: bool = False,
               model_cfg=None, **meta: str | None) -> Path:
    """An ONNX file with the contract of an export (frames [B, T, 3, H, W] → logits [B, T, H, W] or
    [B, K, T, H, W], the mean over the colours) and its metadata, ``model_cfg`` (default ``tiny`` with
    ``classes``) as medvt.config; ``meta`` replaces ``medvt.*`` entries (None drops one)."""
    x = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["B", frames, 3, "H", "W"])
    inputs = [x] + ([helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["B", frames, 128])] if audio else [])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    if classes == 1:
        nodes = [helper.make_node("ReduceMean", ["frames", "axes"], ["logits"], keepdims=0)]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", frames, "H", "W"])
        inits = [axes]
    else:  # [B, T, 1, H, W] → [B, 1, T, H, W] → K copies
        nodes = [helper.make_node("ReduceMean", ["frames", "axes"], ["m"], keepdims=1),
                 helper.make_node("Transpose", ["m"], ["t"], perm=[0, 2, 1, 3, 4]),
                 helper.make_node("Expand", ["t", "k"], ["logits"])]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", classes, frames, "H", "W"])
        inits = [axes, helper.make_tensor("k", TensorProto.INT64, [5], [1, classes, 1, 1, 1])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [out], inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    cfg = model_cfg if model_cfg is not None else get_config("tiny").replace(num_classes=classes)
    entries = {"frames": str(frames), "min_height": "64", "min_width": "64", "max_height": "0", "max_width": "0",
               "task": task, "num_classes": str(classes), "config": json.dumps(cfg.to_dict()), **meta}
    helper.set_model_props(model, {f"medvt.{k}": v for k, v in entries.items() if v is not None})
    onnx.save(model, str(path))
    return path


def identity_5d(path: Path) -> Path:
    """A 5-D identity [B, 6, 3, H, W] without medvt.* metadata (it ran, and failed inside the predictor)."""
    x = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["B", 6, 3, "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 6, 3, "H", "W"])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["frames"], ["logits"])], "g", [x],
                                                  [y]), opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny AVOS checkpoint (the AVOS script needs one); the files below record no weights fingerprint."""
    torch.manual_seed(0)
    model = build_model("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, path)
    return path


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video") / "clip"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def test_files_not_written_by_export_onnx_are_refused_at_load(tmp_path):
    """A 4-D image model, a 5-D graph without medvt.* metadata (it ran, then failed inside the predictor
    and aborted the process), and damaged metadata: one line each, before anything runs."""
    x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y4 = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    four = tmp_path / "four.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x4], [y4]),
                                opset_imports=[helper.make_opsetid("", 19)]), str(four))
    five = identity_5d(tmp_path / "five.onnx")
    cases = {four: r"not a file written by export_onnx.py \(its inputs are x",
             five: r"not a file written by export_onnx.py \(no medvt\.\* metadata\)",
             medvt_like(tmp_path / "f.onnx", frames="six"): r"medvt\.frames is 'six', not a whole number",
             medvt_like(tmp_path / "t.onnx", task="segmentation"): r"medvt\.task is 'segmentation', not one of",
             medvt_like(tmp_path / "c.onnx", config="{"): r"model config \(metadata medvt\.config\) is damaged",
             medvt_like(tmp_path / "k.onnx", num_classes="80"): r"medvt\.num_classes is 80, not 1, the class count",
             medvt_like(tmp_path / "n.onnx", max_width=None): r"\(no medvt\.max_width metadata\)"}
    for path, match in cases.items():
        with pytest.raises(UserError, match=match) as err:
            OnnxModel(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    with pytest.raises(IsADirectoryError, match="--onnx_path .* is a folder, not a file"):
        OnnxModel(tmp_path)
    assert OnnxModel(medvt_like(tmp_path / "ok.onnx")).task == "avos"


def test_avos_script_refuses_a_foreign_file_before_any_output(tiny_ckpt, frames_dir, tmp_path):
    foreign = identity_5d(tmp_path / "foreign.onnx")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="not a file written by export_onnx.py"):
        avos_script.main(["--model_path", str(tiny_ckpt), "--video", str(frames_dir), "--val_size", "64",
                          "--runtime", "onnx", "--onnx_path", str(foreign), "--output_dir", str(out)])
    assert not out.exists()


def test_avos_dataset_run_refuses_sizes_the_file_does_not_take_before_any_output(tiny_ckpt, tmp_path):
    """A dataset run's sizes are known from its frames' headers: a --val_size whose smallest --msc scale is
    below the file's floor was refused only when the first sequence reached the model, leaving a partial
    folder, in a message naming no flag. Now before any output, with the smallest --val_size that fits."""
    from datasets.synthetic import make_synthetic_davis

    root = make_synthetic_davis(tmp_path / "DAVIS", num_train=1, num_val=2, num_frames=6, size_hw=(48, 80))
    onnx_file = medvt_like(tmp_path / "f.onnx", min_height="96", min_width="96")
    argv = ["--model_path", str(tiny_ckpt), "--dataset", "davis", "--davis16_root", str(root), "--msc",
            "--runtime", "onnx", "--onnx_path", str(onnx_file), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match=r"^--val_size 100 with --msc: sequence synth-val-00 \(48x80\) is fed to the "
                                        r"model at 75x124, but .*f\.onnx takes .*; pass --val_size 128 or more$"):
        avos_script.main([*argv, "--val_size", "100"])
    assert not (tmp_path / "out").exists()
    avos_script.main([*argv, "--val_size", "128"])  # the size it gave runs
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.parametrize("task,classes,audio,says", [
    ("vss", 124, False, "is a VSS export (124 classes), but inference_swin_medvt_avos.py runs AVOS exports; run it "
                        "with vss/inference_medvt_vss.py"),
    ("avs", 1, True, "is an AVS export (MED-VT++: frames and VGGish audio), but inference_swin_medvt_avos.py runs "
                     "AVOS exports; no script here runs it"),
    ("a2d", 80, False, "is an A2D export (80 actor-action classes), but inference_swin_medvt_avos.py")])
def test_avos_script_names_the_task_of_another_file(task, classes, audio, says, tiny_ckpt, frames_dir, tmp_path):
    """It said "pass --num_frames 5" for an AVS file and "exported from other weights" for a VSS one."""
    path = medvt_like(tmp_path / f"{task}.onnx", task=task, classes=classes, audio=audio, frames=6)
    with pytest.raises(UserError, match=f"--onnx_path .*{task}.onnx " + re.escape(says)):
        avos_script.main(["--model_path", str(tiny_ckpt), "--video", str(frames_dir), "--val_size", "64",
                          "--runtime", "onnx", "--onnx_path", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _vss_args(path: Path) -> argparse.Namespace:
    return argparse.Namespace(onnx_path=path, clip_len=None, model_path=None, model="tiny", num_classes=None)


def test_vss_refuses_a_file_of_another_task_as_it_refuses_the_checkpoint(tmp_path):
    """An A2D file (80 classes) was run on VSPW's classes; by the recorded task it is refused as the A2D
    checkpoint is. A file that records no task keeps the earlier rule (more than one class)."""
    with pytest.raises(UserError, match=r"a2d\.onnx is an A2D export \(80 actor-action classes\), but "
                                        r"vss/inference_medvt_vss.py runs VSS exports; no script here runs it"):
        onnx_from_args(_vss_args(medvt_like(tmp_path / "a2d.onnx", task="a2d", classes=80)))
    with pytest.raises(UserError, match=r"avs\.onnx is an AVS export .* but vss/inference_medvt_vss.py runs VSS"):
        onnx_from_args(_vss_args(medvt_like(tmp_path / "avs.onnx", task="avs", audio=True, frames=5)))
    with pytest.raises(UserError, match=r"other\.onnx is an export of a 7-class model of no known task"):
        onnx_from_args(_vss_args(medvt_like(tmp_path / "other.onnx", task="other", classes=7)))
    old = medvt_like(tmp_path / "old.onnx", task=None, classes=80, config=None, num_classes=None)
    assert onnx_from_args(_vss_args(old))[0].num_classes == 80  # exported before tasks were recorded: as before
    old_avos = medvt_like(tmp_path / "old_avos.onnx", task=None, config=None, num_classes=None)
    with pytest.raises(UserError, match=r"holds a model of 1 class \(an AVOS export\?\)"):
        onnx_from_args(_vss_args(old_avos))
    model, clip = onnx_from_args(_vss_args(medvt_like(tmp_path / "vss.onnx", task="vss", classes=5,
                                                      model_cfg=vss_config("tiny", 5))))
    assert (model.task, model.num_classes, clip) == ("vss", 5, 6)


def test_avos_onnx_runs_and_records_the_settings_of_the_file(tiny_ckpt, frames_dir, tmp_path):
    """The file's forward and lprop_scale are what ran: logged and recorded (summary.json, with the runtime
    and the file), and a --lprop_scale or --model_version that differs is refused (it was recorded as if
    it had run, while the masks were the file's)."""
    cfg = get_config("tiny").replace(variant="2024", lprop_scale=7.2)
    path = medvt_like(tmp_path / "m2024.onnx", model_cfg=cfg)
    common = ["--model_path", str(tiny_ckpt), "--video", str(frames_dir), "--val_size", "64", "--runtime", "onnx",
              "--onnx_path", str(path)]
    for flags, says in ((["--lprop_scale", "8"], r"--lprop_scale 8.0: --onnx_path .*m2024.onnx was exported with "
                                                  r"lprop_scale 7.2, which its graph holds"),
                        (["--model_version", "cvpr23"], r"--model_version cvpr23: --onnx_path .*m2024.onnx was "
                                                        r"exported with the 2024 forward")):
        with pytest.raises(UserError, match=says):
            avos_script.main(common + flags + ["--output_dir", str(tmp_path / "refused")])
        assert not (tmp_path / "refused").exists()
    res = avos_script.main(common + ["--lprop_scale", "7.2", "--output_dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for record in (res, summary):
        assert record["model"]["version"] == record["model"]["variant"] == "2024"
        assert record["model"]["lprop_scale"] == 7.2
        assert record["runtime"] == "onnx" and record["onnx_path"] == str(path)
        assert record["onnx"]["task"] == "avos" and record["onnx"]["variant"] == "2024"
    log = (tmp_path / "out" / "out.log").read_text()
    assert "forward 2024, lprop_scale 7.20" in log and "an AVOS export" in log
    torch_run = avos_script.main(["--model_path", str(tiny_ckpt), "--video", str(frames_dir), "--val_size", "64",
                                  "--output_dir", str(tmp_path / "torch")])
    assert torch_run["runtime"] == "torch" and torch_run["onnx_path"] is None


def test_vss_summary_records_the_runtime_and_the_file(frames_dir, tmp_path):
    path = medvt_like(tmp_path / "vss.onnx", task="vss", classes=5, model_cfg=vss_config("tiny", 5))
    res = inference_medvt_vss.main(["--video", str(frames_dir), "--val_size", "64", "--runtime", "onnx",
                                    "--onnx_path", str(path), "--output_dir", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for record in (res, summary):
        assert record["runtime"] == "onnx" and record["onnx_path"] == str(path)
        assert record["onnx"]["task"] == "vss" and record["onnx"]["num_classes"] == 5


class Toy(nn.Module):
    """A module with the model's contract (``cfg``, ``pred_masks``) that exports in seconds; its
    ``chunk`` of a weight becomes the Split that onnxscript's constant folding skips with a warning."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = get_config("tiny")
        self.w = nn.Parameter(torch.arange(4.0))

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b = self.w.chunk(2)
        return {"pred_masks": frames.mean(2) * a.sum() + b.sum()}


def test_a_failed_export_leaves_the_earlier_file(tmp_path, monkeypatch, caplog):
    """A file that fails onnx.checker (or ONNX Runtime's load) after it was saved replaced the earlier good
    file, even without --overwrite: now it is written beside it under a temporary name and moved onto
    --output only once both accept it. The exporter's 36 "Skipping constant folding for op Split" lines
    are not printed."""
    import models.onnx_export as onnx_export

    out = tmp_path / "keep.onnx"
    out.write_bytes(b"an earlier good file")
    monkeypatch.setattr(export_onnx, "build_model", lambda name: Toy())

    def fails(path):
        raise onnx.checker.ValidationError("No Op registered for DeformConv with domain_version of 18\n\n==> Context")

    monkeypatch.setattr(onnx_export, "check_onnx", fails)
    with pytest.raises(UserError, match=r"fails onnx\.checker: No Op registered for DeformConv .*keep\.onnx was "
                                        "left as it was") as err:
        export_onnx.main(["--config", "tiny", "--output", str(out), "--overwrite", "--height", "64", "--width", "64"])
    assert "\n" not in str(err.value)
    assert out.read_bytes() == b"an earlier good file" and [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]
    monkeypatch.undo()
    monkeypatch.setattr(export_onnx, "build_model", lambda name: Toy())
    with caplog.at_level(logging.WARNING):
        res = export_onnx.main(["--config", "tiny", "--output", str(out), "--overwrite", "--height", "64",
                                "--width", "64", "--num_frames", "3", "--opset", "25", "--threads", "1"])
    assert not [r for r in caplog.records if "Skipping constant folding" in r.getMessage()]
    assert res["task"] == "avos" and res["max_abs_diff"] <= 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]
    written = OnnxModel(out)
    assert (written.frames, written.task, written.config) == (3, "avos", get_config("tiny"))
    assert [(o.domain, o.version) for o in onnx.load(str(out)).opset_import if o.domain == ""] == [("", 25)]


def test_export_writes_the_task_and_config_of_the_model(tmp_path):
    old, young = tmp_path / ".m.onnx.killed.partial", tmp_path / ".m.onnx.running.partial"
    old.mkdir()
    young.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # a killed export's, two hours ago
    export(Toy(), (torch.randn(2, 6, 3, 64, 64),), tmp_path / "m.onnx", task="vss")
    assert not old.exists() and young.exists()  # the younger one may be another export's, running
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["medvt.task"] == "vss" and meta["medvt.num_classes"] == "1"
    assert json.loads(meta["medvt.config"])["variant"] == "cvpr23"


@pytest.mark.parametrize("flags,says", [
    (["--opset", "18"], "invalid choice: 18"), (["--opset", "30"], "invalid choice: 30"),
    (["--threads", "-1"], "-1 is not a positive integer"), (["--threads", "0"], "0 is not a positive integer"),
    (["--num_frames", "0"], "0 is not a clip length"), (["--num_frames", "1"], "1 is not a clip length")])
def test_export_flags_take_only_values_that_work(flags, says, tmp_path, capsys, monkeypatch):
    """--opset 18 failed after the export (DeformConv needs 19), 30 wrote an invalid file; --threads -1 was a
    traceback; --num_frames 0 exported clips of 6. Refused before any work, in one line."""
    monkeypatch.setattr(export_onnx, "build_model", lambda name: Toy())  # should a value pass: seconds, not minutes
    with pytest.raises(SystemExit):
        export_onnx.main(["--config", "tiny", "--output", str(tmp_path / "m.onnx")] + flags)
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
