"""ONNX export of MED-VT / MED-VT++ and an ONNX Runtime session with the model's call contract.

Exporter: ``torch.export`` (the dynamo path of ``torch.onnx.export``), opset 19. The deformable
convolution of the pixel decoder needs nothing special: torchvision's ``deform_conv2d`` maps to
the standard ``DeformConv`` op (opset 19) and ONNX Runtime's CPU provider runs it (equal to
torchvision to float rounding; ``tests/test_onnx.py``), so no decomposition is used.

Shapes: the clip length T and the height and width are fixed at export; the batch is dynamic.
Height and width cannot be dynamic today: Video Swin clamps its window to the feature map when
the map is smaller than the window (a branch on the size) and pads every stage to whole windows;
with symbolic sizes ``torch.export`` either specialises those branches (wrong results at other
sizes) or spends many minutes in symbolic simplification (tiny did not finish in 15 minutes on
two CPU cores, torch 2.14). Export one file per input size instead.

Traced with the math attention kernel: the CPU flash kernel's output strides make the exporter
record a ``view`` that its own decomposition then rejects; the ONNX graph is the same either way.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from utils.cli import UserError

OPSET = 19
TWO_GB = 2 ** 31


class UnexportableError(UserError, RuntimeError):
    """The model has a part ``torch.export`` cannot trace; the message names the part."""


class InputSizeError(UserError, ValueError):
    """A clip of another size than the ONNX file was exported for."""


class LogitsOnly(nn.Module):
    """``frames [B, T, 3, H, W]`` (and ``audio [B, T, 128]`` for MED-VT++) → logits ``pred_masks``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, audio: Tensor | None = None) -> Tensor:
        out = self.model(frames) if audio is None else self.model(frames, audio)
        return out["pred_masks"]


def input_names(model: nn.Module) -> list[str]:
    """MED-VT takes frames; MED-VT++ (``models.avs``) frames and one VGGish vector per frame."""
    return ["frames", "audio"] if hasattr(model, "av_fusion") else ["frames"]


@contextmanager
def _track_modules(model: nn.Module, stack: list[str]):
    """Keep ``stack`` = the names of the modules being run, innermost last (to name a failing part)."""
    def leave(module, args, output) -> None:  # a forward hook that returned a value would replace the output
        stack.pop()

    handles = []
    for name, mod in model.named_modules():
        label = f"{name or 'model'} ({type(mod).__name__})"
        handles.append(mod.register_forward_pre_hook(lambda m, a, label=label: stack.append(label)))
        handles.append(mod.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def export_onnx(model: nn.Module, example: tuple[Tensor, ...], path: str | Path, opset: int = OPSET) -> dict:
    """Export ``model`` (eval mode, float32) for inputs shaped like ``example``, batch dynamic.

    Writes ``path`` (with its weights in ``<path>.data`` when the file would pass 2 GB) and
    returns timings. Raises :class:`UnexportableError` naming the module that cannot be traced.
    """
    if opset < 18:
        raise ValueError(f"opset {opset}: 18 or later is needed (DeformConv is opset 19)")
    path = Path(path)
    wrapper = LogitsOnly(model.eval()).eval()
    names = input_names(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = tuple({0: batch} for _ in names)
    stack: list[str] = []
    t0 = time.perf_counter()
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        try:
            with _track_modules(model, stack):
                program = torch.export.export(wrapper, tuple(example), dynamic_shapes=dynamic, strict=False)
        except Exception as e:  # noqa: BLE001 — any tracing failure is reported with the part's name
            part = stack[-1] if stack else "the model"
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise UnexportableError(f"cannot export {part}: {type(e).__name__}: {first[:300]}") from e
        t1 = time.perf_counter()
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=names,
                                         output_names=["logits"], optimize=True, verbose=False)
    t2 = time.perf_counter()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path), external_data=size >= TWO_GB - 2 ** 26)  # leave room for the graph
    return {"trace_s": t1 - t0, "convert_s": t2 - t1, "save_s": time.perf_counter() - t2,
            "external_data": size >= TWO_GB - 2 ** 26}


def check_onnx(path: str | Path) -> None:
    """``onnx.checker`` on the written file (by path, so files with external data work too)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class OnnxModel(nn.Module):
    """An ONNX Runtime session with the model's contract: ``(frames[, audio])`` → ``{"pred_masks"}``.

    Drop-in for :class:`models.predictor.VideoPredictor` (no parameters: it reports the CPU as its
    device). ``threads`` sets ONNX Runtime's intra-op threads (0 = its default).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist (set it with --onnx_path)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.shape = self.session.get_inputs()[0].shape  # ["batch", T, 3, H, W]

    def forward(self, frames: Tensor, *audio: Tensor) -> dict[str, Tensor]:
        if list(frames.shape[1:]) != list(self.shape[1:]):
            raise InputSizeError(f"{self.path} was exported for clips of {self.shape[1:]} (T, 3, H, W); got "
                             f"{list(frames.shape[1:])}: export it again at this size (export_onnx.py "
                             f"--num_frames/--height/--width) or run without multi-scale")
        feed = {n: x.detach().float().cpu().numpy() for n, x in zip(self.inputs, (frames, *audio))}
        return {"pred_masks": torch.from_numpy(self.session.run(None, feed)[0]).to(frames.device)}
