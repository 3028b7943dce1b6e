"""AVOS inference with the original test protocol (spec avos §6) and the outputs it writes.

One run = one model + one dataset (DAVIS-16 val, YouTube-Objects, MoCA) or one unlabelled video.
Frames stream through :class:`models.predictor.VideoPredictor` (``--window centre``: every frame the
centre of its own wrap-around clip, as the original; ``chunk``: one forward per clip, every frame
kept; scales averaged, flip merged), read a few frames ahead in a background thread and written in
another as predictions arrive, so memory does not grow with a video's length. This module writes
the files and computes the metrics.

The per-dataset settings (size, scales, flip merge, foreground) are :mod:`avos.protocol`'s; the model a
checkpoint needs is :mod:`avos.model`'s.

Outputs under the run folder:

* DAVIS and videos: ``logits/<seq>/<frame>.png`` (uint8 of probability·255, truncated — what
  ``crf_davis16.py`` reads), ``bin_mask/<seq>/<frame>.png`` (0/255), ``davis_results.{csv,json}``
  (J/F statistics per sequence and overall, and the original's all-frame "mIoU").
* YouTube-Objects: the same ``logits/`` and ``bin_mask/`` folders with ``<seq>`` =
  ``<class>/data/<vid>/shots/<shot>`` and ``<frame>`` = ``frameNNNN``;
  ``youtube_objects_results.{csv,json}`` (per sequence) and ``youtube_objects_classes.{csv,json}``
  (per class; the reported number is the mean over classes).
* MoCA: ``<video>/<frame>.png`` (0/255 at the input resolution, as the original) and
  ``MoCA_results.{csv,json}`` (per-video box IoU by motion type, success rates).
* ``overlay/<seq>/<frame>.png`` and ``overlay/<seq>.mp4`` (H.264; or ``.gif``) with ``--save_overlay``;
  for a video the overlay video is always written, its frames as PNGs only with ``--save_overlay``;
  ``out.log``.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from avos.protocol import Protocol
from datasets.stream import ImageFiles, Prefetch, cut_short_warning, open_video
from datasets.transforms import test_size
from datasets.video import VideoSequence, image_size
from datasets.youtube_objects import MASK_THRESHOLD
from models.predictor import VideoPredictor, Window
from utils import metrics
from utils.background import BackgroundWorker
from utils.cli import UserError, stop_line
from utils.distributed import gather_in_order, gather_throughput, is_main_process, shard
from utils.logger import ConsoleHandler, Throughput, log_stop
from utils.outputs import writing
from utils.visualize import VideoWriter, overlay

logger = logging.getLogger("medvt.inference")


# ------------------------------------------------------------------------------------- frames
def to_uint8_png(prob: np.ndarray) -> np.ndarray:
    """Probability → uint8 probability·255, truncated as the original's ``astype(np.uint8)``."""
    return (prob.astype(np.float32) * 255).astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    """uint8 HxW or HxWx3 RGB → PNG (OpenCV's encoder: about 3× Pillow's speed at its default level).
    Encoded in memory and written by Python: ``cv2.imwrite`` reported success for a file cut short by a
    full disk, so a run could end well with unreadable PNGs; a failed write now raises, naming the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError(f"OpenCV could not encode {path} (an array of shape {array.shape}, {array.dtype})")
    with writing(path):
        path.write_bytes(encoded.tobytes())


class OverlayWriter:
    """Overlays of one sequence: ``<out_dir>/<frame>.png`` (optional) and ``<out_dir>.<fmt>``, written as
    frames arrive (the video under a temporary name until :meth:`close`)."""

    def __init__(self, out_dir: Path, fmt: str = "mp4", fps: float = 10, save_frames: bool = True,
                 sound=None, times=None) -> None:
        self.out_dir, self.fmt, self.fps, self.save_frames = out_dir, fmt, fps, save_frames
        self.sound = sound  # a source's sound track to play along (VideoWriter's ``sound``; not for GIFs)
        self.times = times  # a video file's frame times (VideoWriter's ``times``)
        self.video: VideoWriter | None = None

    def add(self, rgb: np.ndarray, mask: np.ndarray, name: str) -> None:
        if mask.shape != rgb.shape[:2]:  # e.g. MoCA masks at input size: show them on the original frame
            mask = cv2.resize(mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        image = overlay(rgb, mask.astype(bool))
        if self.save_frames:
            save_png(image, self.out_dir / f"{name}.png")
        if self.video is None:
            self.video = VideoWriter(self.out_dir.with_name(f"{self.out_dir.name}.{self.fmt}"), self.fps,
                                     sound=self.sound, times=self.times)
        self.video.write(image)

    def close(self) -> Path | None:
        if self.video is None:
            if self.sound is not None:
                self.sound.close()
            return None
        return self.video.close()

    def abort(self) -> None:
        """A run stopped: the unfinished video is deleted (an mp4 cut short has no index, so no player
        opens it; the frames' PNGs stay) and the sound track closed. Harmless after :meth:`close`."""
        if self.video is not None:
            self.video.abort()
        elif self.sound is not None:
            self.sound.close()


@contextmanager
def _aborted_on_error() -> Iterator[Callable[[OverlayWriter], OverlayWriter]]:
    """``opened(writer)`` registers an overlay writer; if the block fails (or is interrupted), every one
    registered is aborted after it, once the writer thread that fills them has stopped (so enter this
    before the BackgroundWorker): no unfinished ``.partial`` video is left behind."""
    writers: list[OverlayWriter] = []
    try:
        yield lambda w: writers.append(w) or w
    except BaseException:
        for w in writers:
            w.abort()
        raise


# ------------------------------------------------------------------------------------- runs
@dataclass
class RunOptions:
    """What every dataset run needs besides the model and the data."""

    out_dir: Path
    num_frames: int = 6
    save_overlay: bool = False
    overlay_format: str = "mp4"
    fps: int = 10
    amp_dtype: torch.dtype | None = None
    window: str = "centre"
    batch_clips: int = 1
    prefetch: int = 8  # frames decoded ahead by the background reader


def make_predictor(model: torch.nn.Module, protocol: Protocol, opts: RunOptions) -> VideoPredictor:
    return VideoPredictor(model, Window(opts.window, opts.num_frames), scales=protocol.scales, flip=protocol.flip,
                          flip_merge=protocol.flip_merge, activation="sigmoid", amp_dtype=opts.amp_dtype,
                          batch_clips=opts.batch_clips)


def _log_protocol(protocol: Protocol, opts: RunOptions, sequences: Sequence[VideoSequence], n_frames: int) -> None:
    logger.info("protocol %s; window %s of %d frames, %d clip(s) per forward", protocol.describe(), opts.window,
                opts.num_frames, opts.batch_clips)
    for note in protocol.notes:
        logger.info("note: %s", note)
    logger.info("%d sequences, %d frames to predict", len(sequences), n_frames)


def _mask_size(path: Path) -> tuple[int, int]:
    w, h = image_size(path)  # a damaged annotation is named
    return h, w


def sequence_source(seq: VideoSequence, protocol: Protocol, keep_rgb: bool = False) -> ImageFiles:
    """The frames of ``seq`` at the protocol's test size, read as they are needed."""
    return ImageFiles(seq.frames, lambda h, w: test_size(h, w, protocol.val_size, protocol.max_ratio),
                      keep_rgb=keep_rgb, name=seq.name)


def stream_predictions(predictor: VideoPredictor, source, out_size, wanted: Callable[[int], bool] | None,
                       handle: Callable[..., None], writer: BackgroundWorker, progress: Throughput,
                       prefetch: int = 8) -> None:
    """Run ``predictor`` over ``source`` (decoded ``prefetch`` frames ahead in a background thread)
    and hand every ``(index, probability [H, W] float32, payload)`` to ``handle`` in ``writer``'s
    thread, so neither decoding nor writing holds up the model."""
    source = Prefetch(source, prefetch) if prefetch else source
    for pred in predictor.stream(source, out_size, wanted):
        writer.submit(handle, pred.index, pred.probs[0].numpy(), pred.payload)
        progress.update()


def predict_dense(model: torch.nn.Module, sequences: Sequence[VideoSequence], protocol: Protocol,
                  opts: RunOptions, annotated_only: bool = False,
                  on_frame: Callable[[VideoSequence, int, np.ndarray], None] | None = None) -> dict:
    """Write ``logits/`` and ``bin_mask/`` (and overlays) for every (annotated) frame.

    Output size per frame: its mask's size, else the original frame size. ``on_frame(seq, i,
    foreground [H, W] bool)`` is called per predicted frame, in order (metrics computed on the fly,
    so no dataset-sized array is kept). Returns the throughput summary.
    """
    predictor = make_predictor(model, protocol, opts)
    counts = {seq.name: sum(1 for m in seq.masks if m is not None) if annotated_only else seq.num_frames
              for seq in sequences}
    _log_protocol(protocol, opts, sequences, sum(counts.values()))
    mine = [sequences[i] for i in shard(len(sequences))]  # under torchrun: every N-th sequence
    progress = Throughput(sum(counts[seq.name] for seq in mine), protocol.dataset, logger.info,
                          disable=not is_main_process())
    with _aborted_on_error() as opened, BackgroundWorker(depth=16, name="writer") as writer:
        for seq in mine:
            if not counts[seq.name]:
                continue
            progress.bar.set_postfix_str(seq.name)
            source = sequence_source(seq, protocol, keep_rgb=opts.save_overlay)
            orig = source.frame_hw
            overlays = opened(OverlayWriter(opts.out_dir / "overlay" / seq.name, opts.overlay_format, opts.fps))

            def handle(i: int, prob: np.ndarray, rgb, seq=seq, overlays=overlays) -> None:
                stem = seq.frames[i].stem
                fg = protocol.binarize(prob)
                save_png(to_uint8_png(prob), opts.out_dir / "logits" / seq.name / f"{stem}.png")
                save_png(fg.astype(np.uint8) * 255, opts.out_dir / "bin_mask" / seq.name / f"{stem}.png")
                if on_frame is not None:
                    on_frame(seq, i, fg)
                if opts.save_overlay:
                    overlays.add(rgb, fg, stem)

            wanted = (lambda i, seq=seq: seq.masks[i] is not None) if annotated_only else None
            out_size = lambda i, seq=seq, orig=orig: _mask_size(seq.masks[i]) if seq.masks[i] else orig  # noqa: E731
            stream_predictions(predictor, source, out_size, wanted, handle, writer, progress, opts.prefetch)
            writer.submit(overlays.close)
    return gather_throughput(progress.close(), logger.info)


def run_davis(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions) -> dict:
    """DAVIS-16: predict every annotated frame, then J/F and the original's mIoU on ``bin_mask/``. The
    returned dict adds the run's frames, wall time and frames/s (``summary.json``) to the results files'."""
    speed = predict_dense(model, sequences, protocol, opts)
    if not is_main_process():  # rank 0 scores every process's files
        return speed
    gt_dirs = {seq.masks[0].parent.parent for seq in sequences}
    if len(gt_dirs) != 1:
        raise ValueError(f"DAVIS sequences come from several annotation folders: {sorted(map(str, gt_dirs))}")
    results = metrics.evaluate_sequences(opts.out_dir / "bin_mask", gt_dirs.pop(), [s.name for s in sequences])
    for name, row in results["sequences"].items():
        logger.info("video_name:%s iou:%.3f J:%.3f F:%.3f", name, row["mIoU_all_frames"], row["J_mean"], row["F_mean"])
    logger.info("Davis Videos Mean IOU: %.3f   J&F %.3f (J %.3f, F %.3f; first/last frames excluded)",
                results["mIoU"], results["JF_mean"], results["J_mean"], results["F_mean"])
    metrics.write_results(results, opts.out_dir, "davis_results")
    return {**results, **speed}


def run_youtube_objects(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions,
                        mask_threshold: int = MASK_THRESHOLD) -> dict:
    """YouTube-Objects: predict frames with a GT mask; IoU against GT ≥ ``mask_threshold``.

    Score = mean over classes of the mean over the class's videos (shots pooled) of the frame IoUs.
    Sequences without any mask are reported with no IoU and left out of the means (the original
    turned them into NaN).
    """
    per_seq: dict[str, list[float]] = {seq.name: [] for seq in sequences}

    def score(seq: VideoSequence, i: int, fg: np.ndarray) -> None:
        per_seq[seq.name].append(metrics.jaccard(fg, seq.read_mask(i, threshold=mask_threshold - 1)))

    speed = predict_dense(model, sequences, protocol, opts, annotated_only=True, on_frame=score)
    scored = gather_in_order({i: per_seq[sequences[i].name] for i in shard(len(sequences))})  # all processes'
    per_seq = {seq.name: ious for seq, ious in zip(sequences, scored)}
    if not is_main_process():
        return speed
    rows = {}
    for seq in sequences:
        ious = per_seq[seq.name]
        rows[seq.name] = {"class": seq.meta.get("class", seq.name.split("/")[0]), "IoU": metrics.mean_or_nan(ious),
                          "n_frames": len(ious)}
        if not ious:
            logger.warning("%s has no ground-truth masks; it is left out of the class means", seq.name)
    summary = metrics.youtube_objects_miou({k: v for k, v in per_seq.items() if v})
    for cls, iou in summary["classes"].items():
        logger.info("IoU reported for %s is %.3f", cls, iou)
    logger.info("Youtube Objects Average IoU : %.3f", summary["mIoU"])
    results = {"sequences": rows, "classes": summary["classes"], "mIoU": summary["mIoU"],
               "n_frames": sum(r["n_frames"] for r in rows.values())}
    metrics.write_results(results, opts.out_dir, "youtube_objects_results")
    metrics.write_results({"sequences": {c: {"IoU": v} for c, v in summary["classes"].items()},
                           "mIoU": summary["mIoU"]}, opts.out_dir, "youtube_objects_classes")
    return {**results, **speed}


def run_moca(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions) -> dict:
    """MoCA: predict annotated frames, save 0/255 masks at input size, then the box IoU protocol."""
    predictor = make_predictor(model, protocol, opts)
    n_total = sum(len(seq.meta["annotated"]) for seq in sequences)
    _log_protocol(protocol, opts, sequences, n_total)
    mine = [sequences[i] for i in shard(len(sequences))]  # under torchrun: every N-th sequence
    progress = Throughput(sum(len(seq.meta["annotated"]) for seq in mine), "moca", logger.info,
                          disable=not is_main_process())
    with _aborted_on_error() as opened, BackgroundWorker(depth=16, name="writer") as writer:
        for seq in mine:
            if not seq.meta["annotated"]:
                continue
            progress.bar.set_postfix_str(seq.name)
            source = sequence_source(seq, protocol, keep_rgb=opts.save_overlay)
            overlays = opened(OverlayWriter(opts.out_dir / "overlay" / seq.name, opts.overlay_format, opts.fps))

            def handle(i: int, prob: np.ndarray, rgb, seq=seq, overlays=overlays) -> None:
                fg = protocol.binarize(prob)
                save_png(fg.astype(np.uint8) * 255, opts.out_dir / seq.name / f"{seq.frames[i].stem}.png")
                if opts.save_overlay:
                    overlays.add(rgb, fg, seq.frames[i].stem)

            stream_predictions(predictor, source, source.size_hw, set(seq.meta["annotated"]).__contains__,
                               handle, writer, progress, opts.prefetch)
            writer.submit(overlays.close)
    speed = gather_throughput(progress.close(), logger.info)
    if not is_main_process():  # rank 0 scores every process's files
        return speed
    results = evaluate_moca(opts.out_dir, sequences)
    logger.info("dataset: MoCA mean_iou:%.3f  success rates %s", results["mean_iou"],
                ", ".join(f"{k}: {v:.3f}" for k, v in results["success_rates"].items()))
    metrics.write_results(results, opts.out_dir, "MoCA_results")
    return {**results, **speed}


def evaluate_moca(pred_dir: Path, sequences: Sequence[VideoSequence]) -> dict:
    """Box IoU of the saved ``<pred_dir>/<video>/<frame>.png`` masks, keyed by frame file name.

    Each annotated frame's mask is read from the file named after that frame (HEAD's
    evaluator), not the ff-th file of the folder (555a462's index bug). The original frame size
    (for rescaling the box) is that of the video's first frame. Per video: mean IoU over all
    annotated frames ("All_motion_IoU") and per motion type, and success counts at IoU > t.
    """
    per_video: dict[str, list[float]] = {}
    rows = {}
    for seq in sequences:
        with Image.open(seq.frames[0]) as first:
            orig = (first.size[1], first.size[0])
        by_motion: dict[str, list[float]] = {m: [] for m in ("0", "1", "2")}
        ious = []
        for i in seq.meta["annotated"]:
            path = pred_dir / seq.name / f"{seq.frames[i].stem}.png"
            if not path.is_file():
                raise FileNotFoundError(f"MoCA prediction {path} is missing")
            box = seq.meta["boxes"][seq.frames[i].stem]
            iou = metrics.moca_box_iou(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), box.box, orig)
            ious.append(iou)
            by_motion.setdefault(box.motion, []).append(iou)
        per_video[seq.name] = ious
        row = {"All_motion_IoU": metrics.mean_or_nan(ious)}
        for key, label in (("0", "Locomotion"), ("1", "Deformation"), ("2", "Static")):
            row[f"{label}_IoU"] = metrics.mean_or_nan(by_motion[key])
            row[f"{label.lower()}_num"] = len(by_motion[key])
        for t in metrics.MOCA_THRESHOLDS:
            row[f"All_motion_S_{t:.1f}"] = int(sum(v > t for v in ious))
        rows[seq.name] = row
    summary = metrics.moca_summary(per_video)
    results = {"sequences": rows, "mean_iou": summary["mean_iou"], "n_frames": summary["n_frames"],
               "success_rates": summary["success_rates"]}
    for t, v in summary["success_rates"].items():
        results[f"SR_{t}"] = v
    return results


def open_user_video(path: str | Path, protocol: Protocol, clip_len: int = 6):
    """``--video``: a video file or a folder of frames, checked completely before anything is written
    (one-line errors for unreadable, empty or one-frame input), decoded lazily at the test size."""
    return open_video(path, lambda h, w: test_size(h, w, protocol.val_size, protocol.max_ratio), keep_rgb=True,
                      flag="--video", min_frames=2, tail_keep=clip_len, warn=None)  # run_video logs it to out.log


def run_video(model, source, protocol: Protocol, opts: RunOptions) -> dict:
    """An unlabelled video (a frame source from :func:`open_user_video`): masks, probability maps and an
    overlay video, written as predictions arrive; no metrics. Memory does not grow with the video's
    length. Masks are at the frame size, foreground p > 0.5, flips merged by mean (DAVIS settings)."""
    name, (h, w), n = source.name, source.frame_hw, len(source)
    predictor = make_predictor(model, protocol, opts)
    logger.info("protocol %s; window %s of %d frames, %d clip(s) per forward", protocol.describe(), opts.window,
                opts.num_frames, opts.batch_clips)
    rate = f" at {source.fps:.2f}".rstrip("0").rstrip(".") + " fps" if source.fps else ""  # 29.97, not 30
    logger.info("video %s: %d frames of %dx%d%s, run at %dx%d", name, n, w, h, rate, source.size_hw[1],
                source.size_hw[0])
    listed = getattr(source, "listed_frames", None)  # video files only
    if cut_short_warning(source):
        logger.warning(cut_short_warning(source))
    fps = source.fps or opts.fps
    overlays = OverlayWriter(opts.out_dir / "overlay" / name, opts.overlay_format, fps, save_frames=opts.save_overlay,
                             sound=source.sound() if opts.overlay_format != "gif" else None, times=source.times)
    area = [0.0]

    def handle(i: int, prob: np.ndarray, rgb: np.ndarray) -> None:
        stem = source.frame_name(i)
        fg = protocol.binarize(prob)
        save_png(to_uint8_png(prob), opts.out_dir / "logits" / name / f"{stem}.png")
        save_png(fg.astype(np.uint8) * 255, opts.out_dir / "bin_mask" / name / f"{stem}.png")
        overlays.add(rgb, fg, stem)
        area[0] += float(fg.mean())

    progress = Throughput(n, name, logger.info)
    with _aborted_on_error() as opened:
        opened(overlays)
        with BackgroundWorker(depth=16, name="writer") as writer:
            stream_predictions(predictor, source, (h, w), None, handle, writer, progress, opts.prefetch)
        video_path = overlays.close()
    speed = progress.close()
    logger.info("wrote masks to %s and the overlay video %s (%s, %s)", opts.out_dir / "bin_mask" / name,
                video_path, opts.overlay_format, overlays.video.codec if overlays.video else "-")
    return {"name": name, "n_frames": n, "frames_listed_but_not_decoded": (listed or n) - n,
            "overlay_video": str(video_path),
            "overlay_codec": overlays.video.codec if overlays.video else None,
            "overlay_sound": overlays.video.sound_codec if overlays.video else None,
            "mean_foreground_fraction": area[0] / n, "max_frames_held": predictor.max_held, **speed}


def select_sequences(sequences: list[VideoSequence], wanted: Sequence[str] | None, flag: str = "--sequences",
                     ) -> list[VideoSequence]:
    """Keep the sequences named in ``wanted`` (a name or a path prefix such as a class)."""
    if not wanted:
        return sequences
    keep = [s for s in sequences if any(s.name == w or s.name.startswith(w.rstrip("/") + "/") for w in wanted)]
    unknown = [w for w in wanted if not any(s.name == w or s.name.startswith(w.rstrip("/") + "/") for s in sequences)]
    if unknown:
        raise UserError(f"{flag}: unknown sequence(s) {', '.join(unknown)}; available: "
                         f"{', '.join(s.name for s in sequences[:30])}{' …' if len(sequences) > 30 else ''}")
    return keep


class _StdoutHandler(ConsoleHandler):
    """Writes to whatever ``sys.stdout`` is now (it may be replaced, e.g. by pytest's capture); a reader gone
    away (``| head``) leaves the run going on, its ``out.log`` complete."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    """Log INFO messages of this module to stdout (once per process)."""
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        stream = _StdoutHandler()
        stream.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(stream)


@contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Also log to ``path`` (the run's ``out.log``) for the body's duration."""
    setup_logging()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield path
    except (KeyboardInterrupt, Exception) as e:  # out.log says why it ends (the INCOMPLETE marker points to it)
        log_stop(stop_line(e))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
