"""ONNX export of MED-VT / MED-VT++ and an ONNX Runtime session with the model's call contract.

Exporter: ``torch.export`` (the dynamo path of ``torch.onnx.export``), opset 19 to 25 (default 19). The deformable
convolution of the pixel decoder needs nothing special: torchvision's ``deform_conv2d`` maps to
the standard ``DeformConv`` op (opset 19) and ONNX Runtime's CPU provider runs it (equal to
torchvision to float rounding; ``tests/test_onnx.py``), so no decomposition is used.

Shapes: the clip length T is fixed at export; batch, height and width are dynamic. Height and
width are dynamic from a floor on (:func:`min_dynamic_size`): below 225 pixels Video Swin shrinks its
window to the deepest map (a branch on the size), so a file exported at a smaller size is one
fixed-size file. The window code writes its padded sizes as whole windows and the label propagation
sizes its upsampling in integers, so the symbolic sizes stay small expressions and nothing
specialises them (both compute the same numbers as before). The file records its clip length and
size range, its weights' fingerprint, its task and its model config (metadata ``medvt.*``: the config
holds the settings that change the graph but not the weights, such as the forward ``variant`` and
``lprop_scale``); :class:`OnnxModel` refuses a clip outside the range by name, and a file without that
metadata (one not written by :func:`export_onnx`) before it runs.

The file is written under a temporary name in its folder and moved onto ``path`` only once
``onnx.checker`` and ONNX Runtime accept it: a failed export never leaves a broken file, nor replaces
a good one.

Traced with the math attention kernel: the CPU flash kernel's output strides make the exporter
record a ``view`` that its own decomposition then rejects; the ONNX graph is the same either way.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from utils.cli import UserError, require_file
from utils.outputs import writing

from . import tasks

OPSET = 19  # DeformConv (the pixel decoder's deformable convolution) exists from opset 19 on
# torch.onnx builds the graph at opset 18 and converts it with onnxscript's version converter, which goes
# up to 25 (onnxscript >= 0.7, requirements.txt); above that it keeps opset 18 with newer ops in it (an
# invalid file). Exports at 19, 20, 22, 23 and 25 were checked against PyTorch.
MAX_OPSET = 25
TWO_GB = 2 ** 31
STALE_S = 3600  # a temporary export folder untouched this long was left by an export that was killed

# What a file is for (models.tasks): the inference script that runs it (AVOS, VSS), or the user's own code
# (A2D, AVS); "other": a multi-class MED-VT of no known task (neither VSPW's nor A2D's).
TASKS = (*tasks.TASKS, tasks.OTHER)
RUNS_ONNX = ("avos", "vss")  # the tasks whose inference script takes --runtime onnx
# The metadata every file written by export_onnx records (older files lack the task and config).
REQUIRED_METADATA = ("frames", "min_height", "min_width", "max_height", "max_width")


class UnexportableError(UserError, RuntimeError):
    """The model has a part ``torch.export`` cannot trace; the message names the part."""


class InputSizeError(UserError, ValueError):
    """A clip of another size than the ONNX file was exported for."""


class ExportCheckError(UserError):
    """The written file failed ``onnx.checker`` or ONNX Runtime's load; nothing was written at the path."""


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


class _SkipSplitFolding(logging.Filter):
    """Drops onnxscript's "Skipping constant folding for op Split with multiple outputs" (36 lines a
    MED-VT export): the optimizer leaves those Splits as they are, which is what it should do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Skipping constant folding for op %s with multiple outputs")


@contextmanager
def _quiet_split_folding():
    logger = logging.getLogger("onnxscript.optimizer._constant_folding")
    noise = _SkipSplitFolding()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def config_metadata(model: nn.Module, task: str | None) -> dict[str, str]:
    """The model's settings for the file's metadata: its config (every field, so also those that change
    the graph without changing the weights: ``variant``, ``lprop_scale``, ``lprop_mode``, ...), its class
    count (of the logits) and, when known, its task (:data:`TASKS`)."""
    cfg = model.cfg
    meta = {"config": json.dumps(cfg.to_dict(), sort_keys=True), "num_classes": str(getattr(cfg, "num_classes", 1))}
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        meta["task"] = task
    return meta


def export_onnx(model: nn.Module, example: tuple[Tensor, ...], path: str | Path, opset: int = OPSET,
                task: str | None = None) -> dict:
    """Export ``model`` (eval mode, float32) for inputs shaped like ``example``.

    The batch is dynamic; height and width are dynamic when the example is at least
    :func:`min_dynamic_size`, else fixed to the example's. Writes ``path`` (weights in
    ``<path>.data`` when the file would pass 2 GB) with its size range, config and ``task`` in the
    metadata, once ``onnx.checker`` and ONNX Runtime accept it (:class:`ExportCheckError` if not; ``path``
    is then left as it was), and returns timings and that range. Raises :class:`UnexportableError`
    naming the module that cannot be traced.
    """
    if not OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset}: from {OPSET} (DeformConv) to {MAX_OPSET} (the exporter's highest)")
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
    meta = config_metadata(model, task)
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
        with _quiet_split_folding():
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, input_names=names,
                                             output_names=["logits"], optimize=True, verbose=False)
    t2 = time.perf_counter()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    external = size >= TWO_GB - 2 ** 26  # leave room for the graph
    shape = {"frames": t, "min_height": floor if dynamic_hw else h, "min_width": floor if dynamic_hw else w,
             "max_height": 0 if dynamic_hw else h, "max_width": 0 if dynamic_hw else w}
    onnx_program.model.metadata_props.update({f"medvt.{k}": str(v) for k, v in {**shape, **meta}.items()})
    onnx_program.model.metadata_props["medvt.weights"] = weights_fingerprint(model.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written and checked in a folder of its own beside ``path`` (same file system: the move is a rename),
    # under its final name, so that external data keeps its relative name <name>.data.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):  # left by an export that was killed
        if time.time() - stale.stat().st_mtime > STALE_S:  # a younger one may be another export's, running
            shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        with writing(path):
            onnx_program.save(str(work / path.name), external_data=external)
        try:
            check_written(work / path.name)
        except ExportCheckError as e:
            raise ExportCheckError(f"{e}; {path} was left as it was") from e.__cause__
        # the weights file first: the .onnx never points at a missing or older one
        for f in sorted(work.iterdir(), key=lambda f: f.name == path.name):
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"trace_s": t1 - t0, "convert_s": t2 - t1, "save_s": time.perf_counter() - t2,
            "external_data": external, "dynamic_size": dynamic_hw, **shape}


def check_onnx(path: str | Path) -> None:
    """``onnx.checker`` on the written file (by path, so files with external data work too)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def check_written(path: Path) -> None:
    """The checks of a file just exported, as one line each (:class:`ExportCheckError`): ``onnx.checker``,
    then ONNX Runtime's load and :class:`OnnxModel`'s reading of its metadata."""
    import onnx

    try:
        check_onnx(path)
    except onnx.checker.ValidationError as e:
        raise ExportCheckError(f"the exported graph fails onnx.checker: {_first_line(e)}") from e
    try:
        OnnxModel(path, flag="the exported file")
    except UserError as e:
        raise ExportCheckError(f"ONNX Runtime refused it: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:300]


class OnnxModel(nn.Module):
    """An ONNX Runtime session with the model's contract: ``(frames[, audio])`` → ``{"pred_masks"}``.

    Drop-in for :class:`models.predictor.VideoPredictor` (no parameters: it reports the CPU as its
    device). ``threads`` sets ONNX Runtime's intra-op threads (0 = its default). A clip of another
    length, or of a size outside the file's range, is refused with :class:`InputSizeError`.
    """

    def __init__(self, path: str | Path, threads: int = 0, flag: str = "--onnx_path") -> None:
        super().__init__()
        import onnxruntime as ort

        path = require_file(path, flag)
        self.path, self.named = path, f"{flag} {path}"  # ``flag``: what the messages call the file
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's InvalidProtobuf, Fail, ... (their base is Exception)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{self.named} is not a readable ONNX model ({first}); give a file written by "
                            "export_onnx.py") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._read_contract(self.session.get_modelmeta().custom_metadata_map)

    def _not_ours(self, why: str) -> UserError:
        return UserError(f"{self.named} is not a file written by export_onnx.py ({why})")

    def _read_contract(self, meta: dict[str, str]) -> None:
        """The inputs, output and ``medvt.*`` metadata of a file written by :func:`export_onnx`, checked
        before anything runs: any other ONNX model (a 4-D image model, a graph without our metadata)
        would fail later inside the predictor, or in ONNX Runtime's threads (the process aborts)."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if self.inputs not in (["frames"], ["frames", "audio"]):
            raise self._not_ours(f"its inputs are {', '.join(self.inputs) or 'none'}, not frames [and audio]")
        frames = inputs[0].shape  # [batch, T, 3, H, W]; H, W named when dynamic
        if len(frames) != 5 or isinstance(frames[2], int) and frames[2] != 3:
            raise self._not_ours(f"frames is {_shape(frames)}, not [batch, T, 3, H, W]")
        if len(self.inputs) == 2 and len(inputs[1].shape) != 3:
            raise self._not_ours(f"audio is {_shape(inputs[1].shape)}, not [batch, T, 128]")
        logits = outputs[0].shape if len(outputs) == 1 else []  # [batch, T, h, w] binary, [batch, K, T, h, w]
        if len(logits) not in (4, 5):
            raise self._not_ours(f"its outputs are {', '.join(_shape(o.shape) for o in outputs)}, not one "
                                 "[batch, T, h, w] or [batch, K, T, h, w]")
        missing = [f"medvt.{k}" for k in REQUIRED_METADATA if f"medvt.{k}" not in meta]
        if missing:
            none = not any(k.startswith("medvt.") for k in meta)
            raise self._not_ours(f"no {'medvt.*' if none else ', '.join(missing)} metadata")
        self.frames = self._meta_int(meta, "frames", 2)
        self.min_size = (self._meta_int(meta, "min_height", 1), self._meta_int(meta, "min_width", 1))
        self.max_size = (self._meta_int(meta, "max_height", 0), self._meta_int(meta, "max_width", 0))
        if isinstance(frames[1], int) and frames[1] != self.frames:
            raise self._damaged("frames", meta["medvt.frames"], f"{frames[1]}, the clip length of its input")
        self.weights = meta.get("medvt.weights")  # None: exported before fingerprints were recorded
        self.num_classes = logits[1] if len(logits) == 5 else 1
        if not isinstance(self.num_classes, int):
            raise self._not_ours(f"its class count (logits {_shape(logits)}) is not fixed")
        # None: exported before tasks and configs were recorded (the callers' older checks apply)
        self.task = meta.get("medvt.task")
        if self.task is not None and self.task not in TASKS:
            raise self._damaged("task", self.task, f"one of {', '.join(TASKS)}")
        self.config = self._meta_config(meta.get("medvt.config"))
        in_config = getattr(self.config, "num_classes", 1) if self.config is not None else self.num_classes
        if in_config != self.num_classes:
            raise self._damaged("config", f"num_classes {in_config}", f"{self.num_classes}, the class count of its "
                                                                      "logits")
        if "medvt.num_classes" in meta and self._meta_int(meta, "num_classes", 1) != self.num_classes:
            raise self._damaged("num_classes", int(meta["medvt.num_classes"]), f"{self.num_classes}, the class "
                                                                               "count of its logits")

    def _damaged(self, key: str, value, expected: str) -> UserError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return UserError(f"{self.named}: its metadata medvt.{key} is {shown}, not {expected}; export the file "
                         "again with export_onnx.py")

    def _meta_int(self, meta: dict[str, str], key: str, low: int) -> int:
        text = meta[f"medvt.{key}"]
        if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) >= low):
            raise self._damaged(key, text, f"a whole number of at least {low}")
        return int(text)

    def _meta_config(self, text: str | None):
        """The model config recorded at export (:func:`config_metadata`), checked field by field as a
        checkpoint's is; None for a file exported before configs were recorded."""
        if text is None:
            return None
        from models.registry import config_from_dict

        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            return config_from_dict(d)
        except (ValueError, RecursionError, UserError) as e:
            raise UserError(f"{self.named}: its recorded model config (metadata medvt.config) is damaged "
                            f"({_first_line(e)}); export the file again with export_onnx.py") from None

    @property
    def variant(self) -> str | None:
        """The forward recorded at export (MED-VT's ``variant``); None when the file records none."""
        return getattr(self.config, "variant", None)

    @property
    def lprop_scale(self) -> float | None:
        return getattr(self.config, "lprop_scale", None)

    def what(self) -> str:
        """What the file holds, by its recorded task, for messages: "a VSS export (124 classes)"."""
        if self.task is None:
            classes = "1 class" if self.num_classes == 1 else f"{self.num_classes} classes"
            return f"an export that records no task (made before tasks were recorded), of {classes}"
        return {"avos": "an AVOS export (binary masks)", "vss": f"a VSS export ({self.num_classes} classes)",
                "a2d": f"an A2D export ({self.num_classes} actor-action classes)",
                "avs": "an AVS export (MED-VT++: frames and VGGish audio)",
                "other": f"an export of a {self.num_classes}-class model of no known task"}[self.task]

    def check_task(self, task: str, script: str) -> None:
        """Refuse a file whose recorded task is not ``task`` (the one ``script`` runs), naming what it is;
        a file exported before tasks were recorded passes (the caller's older checks apply)."""
        if self.task is not None and self.task != task:
            own = (f"run it with {tasks.TASKS[self.task].infer}" if self.task in RUNS_ONNX else
                   "no script here runs it: it is for ONNX Runtime in your own code (README, ONNX export)")
            raise UserError(f"{self.named} is {self.what()}, but {script} runs {task.upper()} exports; {own}, "
                            f"or give a file exported from {tasks.article(task)} {task.upper()} checkpoint with "
                            "export_onnx.py")

    def record(self) -> dict:
        """What the file records, for a run's summary: the settings that ran, whatever the flags said."""
        return {"task": self.task, "num_classes": self.num_classes, "frames": self.frames,
                "sizes": self.describe(), "weights": self.weights, "variant": self.variant,
                "lprop_scale": self.lprop_scale,
                "config": self.config.to_dict() if self.config is not None else None}

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
            raise UserError(f"{self.named} was exported from other weights than --model_path "
                            f"{model_path}; give the checkpoint it was exported from")

    def check_clip_length(self, t: int, flag: str) -> None:
        """Refuse ``flag``'s clip length before any output when it is not the file's (known at load)."""
        if t != self.frames:
            raise InputSizeError(f"{flag} {t}: {self.named} takes clips of {self.frames} frames; pass "
                                 f"{flag} {self.frames}, or export it again with export_onnx.py --num_frames {t}")

    def check_scales(self, n: int, flag: str) -> None:
        """Refuse ``n`` > 1 input scales (``flag``: --msc) at load when the file takes one size only: a
        multi-scale run would stop at its second scale, with its outputs half written."""
        if n > 1 and not self.dynamic_size:
            raise InputSizeError(f"{flag} feeds {n} input sizes per frame, but {self.named} takes "
                                 f"{self.describe()}; leave out {flag}, or export a file that takes any size "
                                 "(export_onnx.py --height/--width of 225 or more)")

    def fits(self, t: int, h: int, w: int) -> bool:
        """Whether the file takes a clip of ``t`` frames at ``h`` x ``w``."""
        inside = all(lo <= n and (hi == 0 or n <= hi) for n, lo, hi in zip((h, w), self.min_size, self.max_size))
        return t == self.frames and inside

    def check(self, t: int, h: int, w: int) -> None:
        if not self.fits(t, h, w):
            again = ("export it again at this size (export_onnx.py --num_frames/--height/--width)"
                     if not self.dynamic_size or t != self.frames else "use a larger input size")
            raise InputSizeError(f"{self.path} takes {self.describe()}; got a clip of {t} frames at {h}x{w}: {again}")

    def forward(self, frames: Tensor, *audio: Tensor) -> dict[str, Tensor]:
        self.check(frames.shape[1], frames.shape[3], frames.shape[4])
        feed = {n: x.detach().float().cpu().numpy() for n, x in zip(self.inputs, (frames, *audio))}
        return {"pred_masks": torch.from_numpy(self.session.run(None, feed)[0]).to(frames.device)}


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def runtime_record(runtime: str, model: nn.Module) -> dict:
    """An inference run's record (summary.json) of what ran: the runtime and, for ``onnx``, the file
    (``model``: its :class:`OnnxModel`) and the settings it records."""
    if runtime != "onnx":
        return {"runtime": runtime, "onnx_path": None}
    return {"runtime": runtime, "onnx_path": str(model.path), "onnx": model.record()}
