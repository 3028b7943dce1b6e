"""The one place where a video meets the model: windows, test-time augmentation, batching, streaming.

:class:`VideoPredictor` reads frames from a *frame source* in order and yields one prediction per
frame as soon as the clips that decide it have run, holding a bounded number of frames whatever
the video's length. A frame source (see :mod:`datasets.stream`) has ``len()``, an iterator of
``(frame [3, h, w] normalised, payload)`` from frame 0, and ``tail(k)``: its last ``k`` items.
The payload (e.g. the original RGB frame for an overlay) is handed back with the prediction.

Windows (which clips run, which of their frames are kept):

* ``centre`` — the original protocol (spec avos §6.1): every frame is the centre (position
  ``clip_len // 2``) of its own wrap-around clip, one forward per frame. The first frames' clips
  need the video's last frames (read up front with ``tail``) and the last frames' clips need the
  first ones (kept from the start): so the buffer holds ``2·clip_len + batch − 2`` frames at most.
* ``chunk`` — consecutive clips, every frame of a clip kept, the last clip aligned to the end of
  the video (a frame in two clips keeps the first prediction): ``clip_len``× fewer forwards.

Per kept frame and per input scale, the logits are resized (bilinear) to the frame's output
size and passed through ``activation`` (sigmoid for binary models, softmax for multi-class when
views are merged, none to keep raw logits); scales are averaged, and with ``flip`` the mirrored
clip (run in the same batch) is merged by mean or element-wise max. Binary models' ``[B, T, h, w]``
output is read as ``[B, 1, T, h, w]``: every prediction is ``[K, H, W]``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.clips import iter_chunk_clips, wraparound_clip

WINDOWS = ("centre", "chunk")
ACTIVATIONS = {"sigmoid": torch.sigmoid, "softmax": lambda x: x.softmax(1), "none": lambda x: x}
_CHUNK_VALUES = 1 << 25  # float32 values (128 MiB) of resized class maps per step of the arg-max
# Softmax's classes are resized all at once up to this many values (1 GiB; about 2.4 GiB at the peak):
# past it in steps, each class resized twice (:meth:`VideoPredictor._class_ids`), slower but bounded.
_SOFTMAX_AT_ONCE_VALUES = 1 << 28


class Job(NamedTuple):
    """One clip to run: the frame indices fed to the model, and frame → clip position to keep."""

    clip: list[int]
    keep: dict[int, int]


class Prediction(NamedTuple):
    index: int
    probs: Tensor  # [K, H, W] float32 on the CPU
    payload: Any


@dataclass(frozen=True)
class Window:
    """How a video of ``n`` frames is cut into clips (``kind`` in :data:`WINDOWS`)."""

    kind: str = "centre"
    clip_len: int = 6

    def __post_init__(self) -> None:
        if self.kind not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {self.kind!r}")
        if self.clip_len < 1:
            raise ValueError("clip_len must be at least 1")

    def jobs(self, n: int, wanted: Callable[[int], bool] | None = None) -> Iterator[Job]:
        """The clips to run, in order; frames not ``wanted`` are not kept (a clip keeping none is skipped)."""
        if self.kind == "centre":
            for i in range(n):
                if wanted is None or wanted(i):
                    yield Job(wraparound_clip(i, n, self.clip_len), {i: self.clip_len // 2})
            return
        done_until = 0  # chunks cover frames in order: frames below this already have a prediction
        for clip in iter_chunk_clips(n, self.clip_len):
            # {frame: position}: in a wrap-around clip of a short video the last position wins
            keep = {f: p for p, f in enumerate(clip) if (n < self.clip_len or f >= done_until)
                    and (wanted is None or wanted(f))}
            done_until = max(done_until, clip[-1] + 1)
            if keep:
                yield Job(clip, keep)

    def preload(self, n: int) -> range:
        """Frames needed before reading reaches them (a suffix of the video, read with ``tail``)."""
        if n < self.clip_len:
            return range(n)
        if self.kind == "centre":
            return range(n - self.clip_len // 2, n)
        return range(n, n)

    def pinned(self, n: int) -> range:
        """Frames kept from when they are read until the end (the last clips wrap around to them)."""
        if self.kind == "centre" and n >= self.clip_len:
            return range(0, self.clip_len - self.clip_len // 2 - 1)
        return range(0)

    def max_frames(self, batch: int = 1) -> int:
        """The most frames :meth:`VideoPredictor.stream` holds at once with ``batch`` clips per forward."""
        if self.kind == "centre":
            return 2 * self.clip_len + batch - 2
        return batch * self.clip_len


def scaled_hw(h: int, w: int, scale: float) -> tuple[int, int]:
    """The input size of an (h, w) clip at ``scale`` (multi-scale test), as the original truncates it."""
    return int(h * scale), int(w * scale)


class VideoPredictor:
    """Args:
        model: a MED-VT model (``pred_masks`` [B, T, h, w] binary or [B, K, T, h, w]).
        window: a :class:`Window` or its kind (``centre`` / ``chunk``).
        clip_len: frames per clip (6 as trained), when ``window`` is a kind.
        scales: input scales averaged together (``(1.0,)`` = single scale).
        flip: also predict the horizontally mirrored clip (in the same batch).
        flip_merge: ``"mean"`` or ``"max"``.
        activation: applied per view before merging: ``sigmoid``, ``softmax`` (over K) or ``none``.
        amp_dtype: autocast dtype (None = float32).
        batch_clips: clips stacked in one forward (2× with flip).
    """

    def __init__(self, model: nn.Module, window: Window | str = "centre", clip_len: int = 6,
                 scales: Sequence[float] = (1.0,), flip: bool = False, flip_merge: str = "mean",
                 activation: str = "sigmoid", amp_dtype: torch.dtype | None = None, batch_clips: int = 1) -> None:
        if flip_merge not in ("mean", "max"):
            raise ValueError("flip_merge must be 'mean' or 'max'")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if batch_clips < 1:
            raise ValueError("batch_clips must be at least 1")
        self.model = model.eval()
        self.window = window if isinstance(window, Window) else Window(window, clip_len)
        self.scales = tuple(scales)
        self.flip = flip
        self.flip_merge = flip_merge
        self.activation = activation
        self.amp_dtype = amp_dtype
        self.batch_clips = batch_clips
        self.max_held = 0  # the most frames held at once, for tests of the memory bound
        self.forwards = 0

    @property
    def clip_len(self) -> int:
        return self.window.clip_len

    @property
    def device(self) -> torch.device:
        # A model without parameters (an ONNX Runtime session, models.onnx_export.OnnxModel) takes CPU tensors.
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------------------------------- clips
    @torch.inference_mode()
    def predict_clips(self, clips: Tensor, keep: Sequence[dict[int, int]],
                      out_size: Callable[[int], tuple[int, int]], inputs: Sequence[Tensor] = (), ids: bool = False,
                      ) -> list[tuple[int, Tensor]]:
        """clips [B, T, 3, H, W] normalised; ``keep[b]`` frame → position of clip ``b`` →
        [(frame, probabilities [K, *out_size(frame)] float32 on the CPU)] in the order of ``keep``.
        ``inputs``: further model inputs with a batch dimension (MED-VT++'s audio features).
        ``ids``: each frame's arg-max class ids [*out_size(frame)] uint8 instead (:meth:`_class_ids`)."""
        x = clips.to(self.device)
        inputs = [t.to(self.device) for t in inputs]
        b = x.shape[0]
        if self.flip:
            x = torch.cat([x, x.flip(-1)])  # [2B, T, 3, H, W]: one forward for both views
            inputs = [torch.cat([t, t]) for t in inputs]
        h, w = x.shape[-2:]
        per_scale = []
        for s in self.scales:
            xs = x
            if s != 1:
                xs = F.interpolate(x.flatten(0, 1), size=scaled_hw(h, w, s), mode="bilinear",
                                   align_corners=False).unflatten(0, x.shape[:2])
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with ctx:
                logits = self.model(xs, *inputs)["pred_masks"].float()
            per_scale.append(logits[:, None] if logits.dim() == 4 else logits)  # [V·B, K, T, h', w']
        self.forwards += 1
        out = []
        for j, frames in enumerate(keep):
            views = [j, b + j] if self.flip else [j]
            for f, pos in frames.items():
                size = tuple(out_size(f))
                if ids:
                    out.append((f, self._class_ids(per_scale, views, pos, size).cpu()))
                else:
                    out.append((f, self._merged(per_scale, views, pos, size).cpu()))
        return out

    def _merged(self, per_scale: list[Tensor], views: list[int], pos: int, size: tuple[int, int],
                classes: slice = slice(None), log_sums: list[Tensor] | None = None) -> Tensor:
        """The ``classes`` of one kept frame: each view's logits at clip position ``pos`` resized to
        ``size``, activated, averaged over scales, the flipped view merged → [k, *size].

        ``log_sums`` (:meth:`_log_sum_exp`, one [views, *size] per scale) makes the activation the
        softmax over all classes for any subset of them: exp(logit − log Σ exp(logits))."""
        def act(x: Tensor, s: int) -> Tensor:  # x: a fresh resized map, so in place saves a full-size copy
            return x.sub_(log_sums[s][:, None]).exp_() if log_sums is not None else ACTIVATIONS[self.activation](x)

        p = [act(F.interpolate(lg[views, classes, pos], size=size, mode="bilinear", align_corners=False), s)
             for s, lg in enumerate(per_scale)]
        p = p[0] if len(p) == 1 else torch.stack(p).mean(0)  # the mean of one is itself, bit for bit
        if not self.flip:
            return p[0]
        a, m = p[0], p[1].flip(-1)
        return torch.maximum(a, m) if self.flip_merge == "max" else (a + m) / 2

    def _class_ids(self, per_scale: list[Tensor], views: list[int], pos: int, size: tuple[int, int]) -> Tensor:
        """The arg-max class of every pixel of one kept frame, [*size] uint8: ``_merged(...).argmax(0)``.

        The classes are resized a few at a time and a running maximum is kept: a 124-class 1080p frame
        needs about 0.1 GiB, not 1 GiB per view and scale (VSS ``--video`` on a 1080p video: 2.0 instead
        of 9.1 GB peak, twice the frames/s). Softmax couples the classes: up to
        ``_SOFTMAX_AT_ONCE_VALUES`` they are taken at once; past it a first pass sums them for each pixel
        (:meth:`_log_sum_exp`) and each class is resized twice (124 classes, two views at 1080p: 0.09x
        the memory for 1.3x the time; benchmarks/README.md).
        On the CPU a class resized in a smaller group can round differently in the last bit (the kernel
        vectorises over channels), so a pixel whose two best classes are within rounding may take the
        other one; on ties the earlier class is kept, as argmax does."""
        k = per_scale[0].shape[1]
        if k > 256:
            raise ValueError(f"class ids are stored as uint8: {k} classes do not fit")
        per_class = size[0] * size[1] * len(views) * len(per_scale)
        step = max(1, _CHUNK_VALUES // per_class)
        log_sums = None
        if self.activation == "softmax":  # a softmax over some of the classes needs the sums over all first
            if k * per_class <= _SOFTMAX_AT_ONCE_VALUES:
                step = k
            else:
                log_sums = self._log_sum_exp(per_scale, views, pos, size, step)
        best = ids = None
        for c in range(0, k, step):
            value, index = self._merged(per_scale, views, pos, size, slice(c, c + step), log_sums).max(0)
            if best is None:
                best, ids = value, index.to(torch.uint8)
            else:
                better = value > best
                best = torch.where(better, value, best)
                ids = torch.where(better, (index + c).to(torch.uint8), ids)
        return ids

    @staticmethod
    def _log_sum_exp(per_scale: list[Tensor], views: list[int], pos: int, size: tuple[int, int],
                     step: int) -> list[Tensor]:
        """log Σ_k exp(logit_k) of every pixel at ``size``, per scale ([views, *size] each), accumulated
        ``step`` resized classes at a time."""
        sums = []
        for lg in per_scale:
            total = None
            for c in range(0, lg.shape[1], step):
                part = F.interpolate(lg[views, c:c + step, pos], size=size, mode="bilinear",
                                     align_corners=False).logsumexp(1)
                total = part if total is None else torch.logaddexp(total, part)
            sums.append(total)
        return sums

    # ------------------------------------------------------------------------------- streaming
    def stream(self, source, out_size: tuple[int, int] | Callable[[int], tuple[int, int]],
               wanted: Callable[[int], bool] | None = None, ids: bool = False) -> Iterator[Prediction]:
        """Predictions of the ``wanted`` frames of ``source`` (all by default), in frame order.

        ``out_size``: one (H, W) or a function frame → (H, W). At most
        :meth:`Window.max_frames` frames are held (``self.max_held`` records the most seen).
        ``ids``: each prediction's ``probs`` is its arg-max class ids [H, W] uint8 (:meth:`predict_clips`).
        """
        n = len(source)
        if n == 0:
            raise ValueError("the video has no frames")
        size_of = out_size if callable(out_size) else (lambda _i: out_size)
        preload, pinned = self.window.preload(n), self.window.pinned(n)
        held: dict[int, tuple[Tensor, Any]] = {}
        if len(preload):
            held.update(zip(preload, source.tail(len(preload))))
        reader = enumerate(iter(source))
        next_read = 0
        jobs = _Peekable(self.window.jobs(n, wanted))
        while jobs.peek() is not None:
            batch = [jobs.next() for _ in range(self.batch_clips) if jobs.peek() is not None]
            need = {f for job in batch for f in job.clip}
            last = max((f for f in need if f not in preload), default=-1)
            while next_read <= last:  # read on to the batch's last frame, keeping what is needed
                i, item = next(reader)
                if i not in preload and (i in need or i in pinned):
                    held[i] = item
                next_read = i + 1
            self.max_held = max(self.max_held, len(held))
            missing = need - held.keys()
            if missing:
                raise RuntimeError(f"internal error: frames {sorted(missing)} were released too early")
            clips = torch.stack([torch.stack([held[f][0] for f in job.clip]) for job in batch])
            for f, probs in self.predict_clips(clips, [job.keep for job in batch], size_of, ids=ids):
                yield Prediction(f, probs, held[f][1])
            # Needs move forward in every window, so a frame the next clip does not need is never needed again.
            upcoming = set(jobs.peek().clip) if jobs.peek() is not None else set()
            for f in [f for f in held if f not in upcoming and f not in preload and f not in pinned]:
                del held[f]
        held.clear()

    def class_ids(self, source, out_size: tuple[int, int] | Callable[[int], tuple[int, int]],
                  ) -> Iterator[tuple[int, np.ndarray, Any]]:
        """:meth:`stream` of a multi-class model, each prediction as (frame index, arg-max class ids
        [H, W] uint8 numpy, payload)."""
        for pred in self.stream(source, out_size, ids=True):
            yield pred.index, pred.probs.numpy(), pred.payload


class _Peekable:
    def __init__(self, it: Iterator) -> None:
        self._it, self._next = it, next(it, None)

    def peek(self):
        return self._next

    def next(self):
        item, self._next = self._next, next(self._it, None)
        return item
