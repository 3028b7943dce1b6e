"""ONNX export of MED-VT / MED-VT++ and an ONNX Runtime session with the model's call contract.

Exporter: ``torch.export`` (the dynamo path of ``torch.onnx.export``), opset 19. The deformable
convolution of the pixel decoder needs nothing special: torchvision's ``deform_conv2d`` maps to
the standard ``DeformConv`` op (opset 19) and ONNX Runtime's CPU provider runs it (equal to
torchvision to float rounding; ``tests/test_onnx.py``), so no decomposition is used.

Shapes: the clip length T is fixed at export; batch, height and width are dynamic. Height and
width are dynamic from a floor on (:func:`min_dynamic_size`): below 225 pixels Video Swin shrinks its
window to the deepest map (a branch on the size), so a file exported at a smaller size is one
fixed-size file. The window code writes its padded sizes as whole windows and the label propagation
sizes its upsampling in integers, so the symbolic sizes stay small expressions and nothing
specialises them (both compute the same numbers as before). The file records its clip length and
size range (metadata ``medvt.*``); :class:`OnnxModel` refuses a clip outside it by name.

Traced with the math attention kernel: the CPU flash kernel's output strides make the exporter
record a ``view`` that its own decomposition then rejects; the ONNX graph is the same either way.
"""
from __future__ import annotations

import hashlib
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


# ResNet-101 and PVTv2 have no size branch; below this the deepest map (1/32) is a pixel or two.
MIN_SIZE = 64


def min_dynamic_size(model: nn.Module) -> int:
    """Smallest height and width from which one exported graph serves every size."""
    return max([MIN_SIZE] + [m.min_uniform_size for m in model.modules() if hasattr(m, "min_uniform_size")])


def weights_fingerprint(state_dict: dict[str, Tensor]) -> str:
    """A short hash of a model's floating-point weights (names, shapes, float32 values). An export
    records its model's, so inference can tell whether a checkpoint is the one the file came from."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if t.is_floating_point():
            digest.update(f"{name}{tuple(t.shape)}".encode())
            digest.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_onnx(model: nn.Module, example: tuple[Tensor, ...], path: str | Path, opset: int = OPSET) -> dict:
    """Export ``model`` (eval mode, float32) for inputs shaped like ``example``.

    The batch is dynamic; height and width are dynamic when the example is at least
    :func:`min_dynamic_size`, else fixed to the example's. Writes ``path`` (weights in
    ``<path>.data`` when the file would pass 2 GB) with its size range in the metadata and returns
    timings and that range. Raises :class:`UnexportableError` naming the module that cannot be traced.
    """
    if opset < 18:
        raise ValueError(f"opset {opset}: 18 or later is needed (DeformConv is opset 19)")
    path = Path(path)
    wrapper = LogitsOnly(model.eval()).eval()
    names = input_names(model)
    t, h, w = example[0].shape[1], example[0].shape[3], example[0].shape[4]
    floor = min_dynamic_size(model)
    dynamic_hw = min(h, w) >= floor
    batch = torch.export.Dim("batch", min=1, max=1024)
    # DYNAMIC, not a named Dim with a range: the exporter cannot prove the window arithmetic's guards
    # (true for every size from the floor on, as the tests check) and would refuse a named range.
    frames_dims = {0: batch, 3: torch.export.Dim.DYNAMIC, 4: torch.export.Dim.DYNAMIC} if dynamic_hw else {0: batch}
    dynamic = (frames_dims, {0: batch})[:len(names)]
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
    external = size >= TWO_GB - 2 ** 26  # leave room for the graph
    shape = {"frames": t, "min_height": floor if dynamic_hw else h, "min_width": floor if dynamic_hw else w,
             "max_height": 0 if dynamic_hw else h, "max_width": 0 if dynamic_hw else w}
    onnx_program.model.metadata_props.update({f"medvt.{k}": str(v) for k, v in shape.items()})
    onnx_program.model.metadata_props["medvt.weights"] = weights_fingerprint(model.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path), external_data=external)
    return {"trace_s": t1 - t0, "convert_s": t2 - t1, "save_s": time.perf_counter() - t2,
            "external_data": external, "dynamic_size": dynamic_hw, **shape}


def check_onnx(path: str | Path) -> None:
    """``onnx.checker`` on the written file (by path, so files with external data work too)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


class OnnxModel(nn.Module):
    """An ONNX Runtime session with the model's contract: ``(frames[, audio])`` → ``{"pred_masks"}``.

    Drop-in for :class:`models.predictor.VideoPredictor` (no parameters: it reports the CPU as its
    device). ``threads`` sets ONNX Runtime's intra-op threads (0 = its default). A clip of another
    length, or of a size outside the file's range, is refused with :class:`InputSizeError`.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist (set it with --onnx_path)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's InvalidProtobuf, Fail, ... (their base is Exception)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"--onnx_path {path} is not a readable ONNX model ({first}); give a file written by "
                            "export_onnx.py") from None
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        shape = self.session.get_inputs()[0].shape  # [batch, T, 3, H, W]; H, W named when dynamic
        fixed = [d if isinstance(d, int) else 0 for d in shape[3:]]
        self.frames = int(meta.get("medvt.frames", shape[1]))
        self.min_size = (int(meta.get("medvt.min_height", fixed[0])), int(meta.get("medvt.min_width", fixed[1])))
        self.max_size = (int(meta.get("medvt.max_height", fixed[0])), int(meta.get("medvt.max_width", fixed[1])))
        self.weights = meta.get("medvt.weights")  # None: exported before fingerprints were recorded
        logits = self.session.get_outputs()[0].shape  # [batch, T, h, w] binary, [batch, K, T, h, w] classes
        self.num_classes = logits[1] if len(logits) == 5 else 1

    @property
    def dynamic_size(self) -> bool:
        return self.max_size == (0, 0)

    def describe(self) -> str:
        size = (f"height and width from {self.min_size[0]}" if self.dynamic_size else
                f"{self.min_size[0]}x{self.min_size[1]} only")
        return f"clips of {self.frames} frames, {size}"

    def check_weights(self, state_dict: dict[str, Tensor], model_path) -> None:
        """Refuse a ``--model_path`` other than the checkpoint this file was exported from (``state_dict``:
        its weights in our names): the run's outputs and log name that checkpoint, so they would describe a
        model that did not run. A file exported before fingerprints were recorded is not checked."""
        if self.weights and self.weights != weights_fingerprint(state_dict):
            raise UserError(f"--onnx_path {self.path} was exported from other weights than --model_path "
                            f"{model_path}; give the checkpoint it was exported from")

    def check_clip_length(self, t: int, flag: str) -> None:
        """Refuse ``flag``'s clip length before any output when it is not the file's (known at load)."""
        if t != self.frames:
            raise InputSizeError(f"{flag} {t}: --onnx_path {self.path} takes clips of {self.frames} frames; pass "
                                 f"{flag} {self.frames}, or export it again with export_onnx.py --num_frames {t}")

    def check_scales(self, n: int, flag: str) -> None:
        """Refuse ``n`` > 1 input scales (``flag``: --msc) at load when the file takes one size only: a
        multi-scale run would stop at its second scale, with its outputs half written."""
        if n > 1 and not self.dynamic_size:
            raise InputSizeError(f"{flag} feeds {n} input sizes per frame, but --onnx_path {self.path} takes "
                                 f"{self.describe()}; leave out {flag}, or export a file that takes any size "
                                 "(export_onnx.py --height/--width of 225 or more)")

    def check(self, t: int, h: int, w: int) -> None:
        inside = all(lo <= n and (hi == 0 or n <= hi) for n, lo, hi in zip((h, w), self.min_size, self.max_size))
        if t != self.frames or not inside:
            again = ("export it again at this size (export_onnx.py --num_frames/--height/--width)"
                     if not self.dynamic_size or t != self.frames else "use a larger input size")
            raise InputSizeError(f"{self.path} takes {self.describe()}; got a clip of {t} frames at {h}x{w}: {again}")

    def forward(self, frames: Tensor, *audio: Tensor) -> dict[str, Tensor]:
        self.check(frames.shape[1], frames.shape[3], frames.shape[4])
        feed = {n: x.detach().float().cpu().numpy() for n, x in zip(self.inputs, (frames, *audio))}
        return {"pred_masks": torch.from_numpy(self.session.run(None, feed)[0]).to(frames.device)}
