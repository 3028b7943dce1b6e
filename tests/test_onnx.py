"""ONNX export (export_onnx.py, models.onnx_export): ONNX Runtime equals PyTorch, DeformConv is
exported natively and equals torchvision, a part that cannot be traced is named, and
``inference_swin_medvt_avos.py --runtime onnx`` writes the masks the PyTorch run writes.

The full-size presets take one and a half to three minutes each to export at the test sizes below
(232×264 for Swin, 64×96 for the others) on two CPU cores, so by
default the suite exports the two test presets, ``tiny`` (Swin, deformable convolution, encoder,
decoder and label propagation: the code every MED-VT preset shares) and ``avs_tiny`` (MED-VT++'s
PVT, audio input and fusion). ``MEDVT_ONNX_PRESETS=all`` adds the five full-size presets
(ResNet-101, Swin-B, A2D, MED-VT++ S4).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.ops import DeformConv2d

import export_onnx
import inference_swin_medvt_avos as infer_script
from datasets.davis16 import davis16_sequences
from datasets.synthetic import make_synthetic_davis
from models import build_model
from models.avs import build_avs_model
from models.avs_config import AVS_CONFIGS
from models.onnx_export import (InputSizeError, OnnxModel, UnexportableError, check_onnx, min_dynamic_size,
                                weights_fingerprint)
from models.onnx_export import export_onnx as export
from utils.cli import UserError

# CI's 15 minutes take no full-size preset (at SIZES, ResNet-101 alone exports in about 1.5 minutes, Swin-B 2.5).
DEFAULT_PRESETS = ["tiny", "avs_tiny"]
ALL_PRESETS = DEFAULT_PRESETS + ["medvt_r101_avos", "medvt_swinb_avos", "medvt_swinb_avos_2024", "medvt_r101_a2d",
                                 "medvtpp_s4"]
PRESETS = ALL_PRESETS if os.environ.get("MEDVT_ONNX_PRESETS") == "all" else DEFAULT_PRESETS


def _inputs(model: nn.Module, b: int, t: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, 3, h, w, generator=g)
    if hasattr(model, "av_fusion"):
        return frames, torch.randn(b, t, model.cfg.audio_dim, generator=g)
    return (frames,)


# Two sizes per preset, both at or above its floor (Swin 225, others 64), odd and even, neither a
# multiple of 7 nor of 32: one file must serve both (dynamic height and width really work).
SIZES = {"swin": ((232, 264), (263, 241)), "other": ((64, 96), (83, 121))}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """``tiny`` (seed 0) saved as a checkpoint and exported through the CLI at 232x264 (dynamic): shared by
    the tests below, since one dynamic export takes a minute or two on two cores."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    folder = tmp_path_factory.mktemp("tiny_onnx")
    ckpt, path = folder / "tiny.pth", folder / "tiny.onnx"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(), "args": argparse.Namespace(lr=1e-4)}, ckpt)
    (h, w), _ = SIZES["swin"]
    res = export_onnx.main(["--model_path", str(ckpt), "--output", str(path), "--height", str(h), "--width", str(w)])
    return model, ckpt, path, res


@pytest.mark.parametrize("name", PRESETS)
def test_onnx_runtime_equals_pytorch(name, tmp_path, request):
    """One file exported at one size, run at two sizes and batches 1 and 3: logits within 1e-4 (MED-VT++:
    as close to float64 as PyTorch's float32, below); DeformConv is in the graph."""
    torch.manual_seed(0)
    avs = name in AVS_CONFIGS
    t = 5 if avs else 6
    if name == "tiny":
        model, _, path, _ = request.getfixturevalue("tiny_file")
    else:
        model = (build_avs_model(name) if avs else build_model(name)).eval()
    (h, w), second = SIZES["swin" if min_dynamic_size(model) > 64 else "other"]
    if name != "tiny":
        path = tmp_path / f"{name}.onnx"
        assert export(model, _inputs(model, 2, t, h, w, 0), path)["dynamic_size"]
    check_onnx(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert "DeformConv" in {n.op_type for n in graph.node}
    assert [i.name for i in graph.input] == (["frames", "audio"] if avs else ["frames"])
    session = OnnxModel(path)
    assert session.dynamic_size and session.frames == t
    for b, (hh, ww) in ((1, (h, w)), (3, second)):
        x = _inputs(model, b, t, hh, ww, b)
        with torch.inference_mode():
            ref = model(*x)["pred_masks"]
        out = session(*x)["pred_masks"]
        assert out.shape == ref.shape
        diff = (out - ref).abs().max().item()
        print(f"{name} [{b}, {t}, 3, {hh}, {ww}]: max |ONNX Runtime − PyTorch| {diff:.3g}")
        if not avs:
            assert diff <= 1e-4, name
            continue
        # MED-VT++ is deep enough that float32 rounding alone moves its logits by ~1e-3 (README: the
        # original in float32 vs float64 differs by up to 5e-4), so the two float32 runtimes are each
        # held to the float64 result: ONNX Runtime may be off by at most twice PyTorch's error + 1e-4.
        with torch.inference_mode():
            exact = model.double()(*(v.double() for v in x))["pred_masks"]
        model.float()
        err_torch = (ref.double() - exact).abs().max().item()
        err_onnx = (out.double() - exact).abs().max().item()
        print(f"  vs float64: PyTorch float32 {err_torch:.3g}, ONNX Runtime {err_onnx:.3g}")
        assert err_onnx <= 2 * err_torch + 1e-4, name
    # below the floor the graph would differ (Swin shrinks its window): refused by name, not run
    with pytest.raises(InputSizeError, match=f"height and width from {session.min_size[0]}"):
        session(*_inputs(model, 1, t, session.min_size[0] - 1, w, 0))
    with pytest.raises(InputSizeError, match=f"clips of {t} frames"):
        session(*_inputs(model, 1, t + 1, h, w, 0))


def test_deform_conv_exports_natively_and_equals_torchvision(tmp_path):
    """DeformConv (opset 19) in ONNX Runtime's CPU provider = torchvision's deform_conv2d within 1e-5,
    with offsets that reach outside the map, at two sizes of one file."""
    class Deform(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dcn = DeformConv2d(8, 16, 3, padding=1, bias=False)

        def forward(self, x, offset):
            return self.dcn(x, offset)

    torch.manual_seed(0)
    m = Deform().eval()
    dims = {0: torch.export.Dim("b"), 2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}
    x, off = torch.randn(2, 8, 10, 12), 4 * torch.randn(2, 18, 10, 12)
    program = torch.onnx.export(m, (x, off), dynamo=True, opset_version=19, input_names=["x", "offset"],
                                dynamic_shapes={"x": dims, "offset": dims}, verbose=False)
    path = tmp_path / "deform.onnx"
    program.save(str(path))
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["DeformConv"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape, scale in (((2, 10, 12), 4.0), ((1, 23, 17), 10.0)):
        x = torch.randn(shape[0], 8, *shape[1:])
        off = scale * torch.randn(shape[0], 18, *shape[1:])
        out = session.run(None, {"x": x.numpy(), "offset": off.numpy()})[0]
        assert np.abs(out - m(x, off).detach().numpy()).max() <= 1e-5


class _DataDependentHead(nn.Module):
    """A head with a branch on tensor values: torch.export cannot trace it."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.inner = head

    def forward(self, x):
        y = self.inner(x)
        return y if y.mean() > 0 else -y


def test_unexportable_part_is_named(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    model.head = _DataDependentHead(model.head)
    with pytest.raises(UnexportableError, match=r"cannot export head \(_DataDependentHead\)"):
        export(model, (torch.randn(2, 6, 3, 64, 64),), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_refuses_existing_output_and_missing_source(tmp_path, capsys):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(SystemExit):
        export_onnx.main(["--config", "tiny", "--output", str(existing)])
    assert "exists" in capsys.readouterr().err and existing.read_bytes() == b"keep"
    with pytest.raises(SystemExit):
        export_onnx.main(["--output", str(tmp_path / "n.onnx")])
    assert "--model_path" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):  # one line through run_main, exit 2
        export_onnx.main(["--model_path", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "n.onnx")])


def _iou(a_dir: Path, b_dir: Path) -> float:
    inter = union = 0
    files = sorted(a_dir.rglob("*.png"))
    assert files
    for f in files:
        a = np.asarray(Image.open(f)) > 0
        b = np.asarray(Image.open(b_dir / f.relative_to(a_dir))) > 0
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / max(union, 1)


def test_runtime_onnx_writes_the_pytorch_masks(tiny_file, tmp_path, capsys):
    """A checkpoint exported through the CLI (the inference loader) at one size, then DAVIS inference with
    --runtime onnx and with PyTorch at seven scales with flip (--msc: inputs from 225x300 to 390x520, all
    from the one file): masks with IoU ≥ 0.999, probabilities ±1/255."""
    _, ckpt, onnx_path, res = tiny_file
    assert res["dynamic_size"] and len(res["checked_sizes"]) == 2 and res["max_abs_diff"] <= 1e-4
    # the file records its task and its model's config (forward, lprop_scale, ...), which inference checks
    session = OnnxModel(onnx_path)
    assert (res["task"], session.task, session.config) == ("avos", "avos", tiny_file[0].cfg)
    davis = make_synthetic_davis(tmp_path / "DAVIS", num_train=0, num_val=2, num_frames=6, size_hw=(300, 400))
    common = ["--model_path", str(ckpt), "--davis16_root", str(davis), "--val_size", "300", "--flip", "--msc",
              "--window", "chunk", "--device", "cpu"]
    infer_script.main(common + ["--output_dir", str(tmp_path / "torch")])
    infer_script.main(common + ["--output_dir", str(tmp_path / "onnx"), "--runtime", "onnx", "--onnx_path",
                                str(onnx_path)])
    assert _iou(tmp_path / "torch" / "bin_mask", tmp_path / "onnx" / "bin_mask") >= 0.999
    ran = {d: json.loads((tmp_path / d / "summary.json").read_text()) for d in ("torch", "onnx")}
    assert (ran["torch"]["runtime"], ran["torch"]["onnx_path"]) == ("torch", None)
    assert (ran["onnx"]["runtime"], ran["onnx"]["onnx_path"]) == ("onnx", str(onnx_path))
    assert ran["onnx"]["onnx"]["variant"] == ran["onnx"]["model"]["variant"] == "cvpr23"
    for f in sorted((tmp_path / "torch" / "logits").rglob("*.png")):
        a = np.asarray(Image.open(f)).astype(int)
        b = np.asarray(Image.open(tmp_path / "onnx" / "logits" / f.relative_to(tmp_path / "torch" / "logits")))
        assert np.abs(a - b.astype(int)).max() <= 1
    OnnxModel(onnx_path).check_scales(7, "--msc")  # a file that takes any size from its floor on takes --msc
    # a size below the file's floor ends in a message naming the range, not a wrong result
    with pytest.raises(InputSizeError, match="height and width from 225"):
        OnnxModel(onnx_path)(torch.randn(1, 6, 3, 200, 300))
    with pytest.raises(SystemExit):
        infer_script.main(common + ["--runtime", "onnx"])
    assert "--onnx_path" in capsys.readouterr().err
    # a clip length the file does not take: refused at load, before any output (it came at the first forward)
    with pytest.raises(InputSizeError, match=r"--num_frames 4: --onnx_path .* takes clips of 6 frames; pass"):
        infer_script.main(common + ["--runtime", "onnx", "--onnx_path", str(onnx_path), "--num_frames", "4",
                                    "--output_dir", str(tmp_path / "four")])
    assert not (tmp_path / "four").exists()
    # a --video below the file's floor: refused before its output folder exists (it came at the first forward)
    frames = davis16_sequences(davis, "val")[0].frames[0].parent
    with pytest.raises(InputSizeError, match="height and width from 225"):
        infer_script.main(["--model_path", str(ckpt), "--video", str(frames), "--val_size", "200", "--runtime",
                           "onnx", "--onnx_path", str(onnx_path), "--device", "cpu", "--output_dir",
                           str(tmp_path / "small_video")])
    assert not (tmp_path / "small_video").exists()
    # a checkpoint of other weights than the file's (the run ran; its results named this checkpoint)
    assert OnnxModel(onnx_path).weights == weights_fingerprint(tiny_file[0].state_dict())
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save({"model": build_model("tiny").state_dict(), "config": tiny_file[0].cfg.to_dict()}, other)
    with pytest.raises(UserError, match=r"--onnx_path .*tiny\.onnx was exported from other weights than --model_path"):
        infer_script.main(common[2:] + ["--model_path", str(other), "--runtime", "onnx", "--onnx_path",
                                        str(onnx_path), "--output_dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()


def test_vss_runtime_onnx_writes_the_pytorch_labels(tiny_file, tmp_path):
    """The VSS script shares the predictor: --runtime onnx with a file exported from a 5-class checkpoint
    writes the PyTorch run's labels. 48x60 is below the Swin floor, where the window shrinks to the map:
    the file is fixed to that size (equal to PyTorch there) and refuses any other."""
    from tests.test_vss import write_vspw
    from vss import inference_medvt_vss
    from vss.config import vss_config

    torch.manual_seed(0)
    model = build_model(vss_config("tiny", 5))
    ckpt = tmp_path / "vss.pth"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict(),
                "args": argparse.Namespace(vspw_root="synthetic")}, ckpt)
    root = write_vspw(tmp_path / "VSPW", {"v1": ("val", 7)})
    onnx_path = tmp_path / "vss.onnx"
    # our VSS checkpoint records its config: no --config needed (it was refused as "not an AVOS model")
    res = export_onnx.main(["--model_path", str(ckpt), "--output", str(onnx_path),
                            "--num_frames", "4", "--height", "48", "--width", "60"])
    assert not res["dynamic_size"] and res["max_abs_diff"] <= 1e-4
    session = OnnxModel(onnx_path)
    assert not session.dynamic_size and session.describe() == "clips of 4 frames, 48x60 only"
    assert (res["task"], session.task, session.num_classes) == ("vss", "vss", 5)  # trained on VSPW (--vspw_root)
    # several scales (AVOS --msc) cannot run on a one-size file: refused at load, not at the second scale
    with pytest.raises(InputSizeError, match=r"--msc feeds 7 input sizes per frame, but --onnx_path .*48x60 only"):
        session.check_scales(7, "--msc")
    session.check_scales(1, "--msc")
    x = _inputs(model.eval(), 3, 4, 48, 60, 1)
    with torch.inference_mode():
        assert (session(*x)["pred_masks"] - model(*x)["pred_masks"]).abs().max().item() <= 1e-4
    with pytest.raises(InputSizeError, match="48x60 only; got a clip of 4 frames at 48x61"):
        session(*_inputs(model, 1, 4, 48, 61, 0))
    common = ["--vspw_root", str(root), "--val_size", "48", "--clip_len", "4", "--flip", "--device", "cpu"]
    torch_run = inference_medvt_vss.main(common + ["--model_path", str(ckpt), "--num_classes", "5",
                                                   "--output_dir", str(tmp_path / "torch")])
    onnx_run = inference_medvt_vss.main(common + ["--runtime", "onnx", "--onnx_path", str(onnx_path),
                                                  "--output_dir", str(tmp_path / "onnx")])
    pngs = sorted((tmp_path / "torch" / "predictions").rglob("*.png"))
    assert len(pngs) == 7
    for f in pngs:
        a = np.asarray(Image.open(f))
        b = np.asarray(Image.open(tmp_path / "onnx" / f.relative_to(tmp_path / "torch")))
        assert (a == b).mean() >= 0.999
    assert onnx_run["mIoU"] == pytest.approx(torch_run["mIoU"], abs=1e-3)
    # before any output: another clip length, and an AVOS file (by its recorded task; one that records none is
    # refused by its class count: tests/test_onnx_mistakes.py), which failed mid-run as a ValueError
    plain = ["--vspw_root", str(root), "--val_size", "48", "--device", "cpu"]
    with pytest.raises(InputSizeError, match=r"--clip_len 6: --onnx_path .*vss\.onnx takes clips of 4 frames"):
        inference_medvt_vss.main(plain + ["--clip_len", "6", "--runtime", "onnx", "--onnx_path", str(onnx_path),
                                          "--output_dir", str(tmp_path / "six")])
    with pytest.raises(UserError, match=r"tiny\.onnx is an AVOS export \(binary masks\), but vss/inference_medvt_vss"):
        inference_medvt_vss.main(plain + ["--clip_len", "6", "--runtime", "onnx", "--onnx_path", str(tiny_file[2]),
                                          "--output_dir", str(tmp_path / "avos")])
    # a --video whose input size the one-size file does not take: refused before the folder is made
    with pytest.raises(InputSizeError, match=r"48x60 only; got a clip of 4 frames at 40x50"):
        inference_medvt_vss.main(["--val_size", "40", "--device", "cpu", "--runtime", "onnx", "--onnx_path",
                                  str(onnx_path), "--video", str(root / "data" / "v1" / "origin"),
                                  "--output_dir", str(tmp_path / "video")])
    assert not (tmp_path / "video").exists()
    # a checkpoint given with the file must be the one it was exported from (it names the outputs)
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save({"model": build_model(vss_config("tiny", 5)).state_dict(), "config": model.cfg.to_dict()}, other)
    with pytest.raises(UserError, match=r"--onnx_path .*vss\.onnx was exported from other weights than --model_path"):
        inference_medvt_vss.main(plain + ["--clip_len", "4", "--runtime", "onnx", "--onnx_path", str(onnx_path),
                                          "--model_path", str(other), "--output_dir", str(tmp_path / "other")])
    assert not (tmp_path / "six").exists() and not (tmp_path / "avos").exists() and not (tmp_path / "other").exists()
    inference_medvt_vss.main(plain + ["--clip_len", "4", "--runtime", "onnx", "--onnx_path", str(onnx_path),
                                      "--model_path", str(ckpt), "--output_dir", str(tmp_path / "same"),
                                      "--no_save_predictions"])
