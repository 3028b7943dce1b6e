"""AVOS inference with the original test protocol (spec avos §6) and the outputs it writes.

One run = one model + one dataset (DAVIS-16 val, YouTube-Objects, MoCA) or one unlabelled video.
Every frame is predicted as the centre of its own wrap-around clip by
:class:`models.predictor.VideoPredictor` (scales averaged, flip merged); this module picks the
per-dataset protocol, loads the frames, writes the files and computes the metrics:

========  =========  ==================================  ============  ===========
dataset   val size   scales with ``--msc``               flip merge    foreground
========  =========  ==================================  ============  ===========
davis     473        0.75 0.8 0.9 1 1.1 1.2 1.3          mean          p > 0.5
ytbo      360        0.95 1 1.05 1.1 1.15                max           p ≥ 0.5
moca      473        CVPR'23: none; 2024: 0.9 … 1.1      max           p > 0.5
video     473        as davis                            mean          p > 0.5
========  =========  ==================================  ============  ===========

ResNet-101 on DAVIS uses 0.75 0.8 0.9 1 1.1 1.15 and, with ``--msc``, caps the longer input side
at 1.65·val_size instead of 1.8·val_size (the original's ``davis_msc_scales`` and
``davis_input_max_sc``). Logits are resized to the output size (DAVIS and YouTube-Objects: the
ground-truth size; MoCA: the resized input size; a video: its frame size) before the sigmoid.

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
* ``overlay/<seq>/<frame>.png`` and ``overlay/<seq>.mp4`` (or ``.gif``) with ``--save_overlay``
  (always for a video); ``out.log``.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from datasets.transforms import load_frames, test_size, to_tensor
from datasets.video import VideoSequence, list_frame_files, open_image, require_same_size
from models import MedVTConfig, build_model, get_config, infer_model_version, read_checkpoint
from models.convert import checkpoint_state_dict, convert_original_state_dict, load_state_dict_strict
from models.predictor import VideoPredictor, wraparound_clip
from utils import metrics
from utils.cli import UserError
from utils.visualize import overlay, write_video

logger = logging.getLogger("medvt.inference")

DATASETS = ("davis", "ytbo", "moca")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# ------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """How one dataset is evaluated (spec avos §6.1)."""

    dataset: str
    val_size: int
    scales: tuple[float, ...]
    flip: bool
    flip_merge: str  # "mean" | "max"
    inclusive: bool  # foreground is p ≥ 0.5 (YouTube-Objects) instead of p > 0.5
    max_ratio: float = 1.8
    notes: tuple[str, ...] = field(default=())

    def binarize(self, prob: np.ndarray) -> np.ndarray:
        """[H, W] probability → bool foreground."""
        return prob >= 0.5 if self.inclusive else prob > 0.5

    def describe(self) -> str:
        return (f"{self.dataset}: val_size {self.val_size} (longer side ≤ {self.max_ratio}·size), "
                f"scales {list(self.scales)}, flip {'on (' + self.flip_merge + ')' if self.flip else 'off'}, "
                f"foreground p {'≥' if self.inclusive else '>'} 0.5")


DEFAULT_VAL_SIZE = {"davis": 473, "ytbo": 360, "moca": 473, "video": 473}
MSC_SCALES = {
    "davis": (0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
    "ytbo": (0.95, 1.0, 1.05, 1.1, 1.15),
    "moca": (0.9, 0.95, 1.0, 1.05, 1.1),  # HEAD only; 555a462 forces msc off on MoCA
    "video": (0.75, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
}
RESNET_DAVIS_SCALES = (0.75, 0.8, 0.9, 1.0, 1.1, 1.15)
RESNET_DAVIS_MAX_RATIO = 1.65


def make_protocol(dataset: str, cfg: MedVTConfig, version: str, val_size: int | None = None,
                  msc: bool = False, flip: bool = False) -> Protocol:
    """The original's settings for ``dataset`` ("davis", "ytbo", "moca" or "video")."""
    size = DEFAULT_VAL_SIZE[dataset] if val_size is None else val_size
    notes = []
    scales: tuple[float, ...] = (1.0,)
    max_ratio = 1.8
    if msc:
        if dataset == "moca" and version == "cvpr23":
            notes.append("--msc ignored on MoCA: the CVPR'23 code forces single scale there "
                         "(the 2024 code uses 0.9…1.1)")
        elif dataset in ("davis", "video") and cfg.backbone == "resnet101":
            scales, max_ratio = RESNET_DAVIS_SCALES, RESNET_DAVIS_MAX_RATIO
        else:
            scales = MSC_SCALES[dataset]
    merge = "max" if dataset in ("ytbo", "moca") else "mean"
    return Protocol(dataset, size, scales, flip, merge, inclusive=dataset == "ytbo", max_ratio=max_ratio,
                    notes=tuple(notes))


def run_name(dataset: str, val_size: int, msc: bool, cfg: MedVTConfig) -> str:
    """The original's output folder name, without its unix-time suffix."""
    return f"infer_{dataset}{val_size}{'msc' if msc else 'ssc'}lpp_mode{cfg.lprop_mode}_sc{cfg.lprop_scale:.2f}"


# ------------------------------------------------------------------------------------- model
@dataclass
class ModelInfo:
    config_name: str
    version: str  # "cvpr23" | "2024"
    reason: str
    config: MedVTConfig


def resolve_model_config(ckpt: dict, model_version: str = "auto", backbone: str = "swinB",
                         lprop_scale: float | None = None) -> ModelInfo:
    """Which model a checkpoint needs, and why.

    Our checkpoints carry ``config`` (``MedVTConfig.to_dict()``) and are rebuilt from it. The
    authors' files are Swin-B or ResNet-101 by ``backbone``; for Swin-B, ``model_version``
    "auto" reads the saved training arguments (:func:`models.convert.infer_model_version`).
    An explicit ``cvpr23``/``2024`` always wins (Swin only: it selects the forward variant).
    """
    if model_version not in ("auto", "cvpr23", "2024"):
        raise UserError(f"--model_version must be auto, cvpr23 or 2024, not {model_version!r}")
    if backbone not in ("swinB", "resnet101"):
        raise UserError(f"--backbone must be swinB or resnet101, not {backbone!r}")
    if isinstance(ckpt.get("config"), dict):
        cfg = MedVTConfig.from_dict(ckpt["config"])
        if cfg.num_classes != 1:
            raise UserError(f"the checkpoint holds a {cfg.num_classes}-class model (A2D: 80, VSS: 124); AVOS "
                            "inference needs a binary (1-class) MED-VT checkpoint")
        name, reason = "checkpoint config", "the checkpoint records its model config"
        if model_version != "auto" and cfg.backbone == "swin":
            variant = "v1" if model_version == "cvpr23" else "v3"
            if variant != cfg.variant:
                cfg = cfg.replace(variant=variant)
                reason += f"; --model_version {model_version} sets the forward variant {variant}"
        version = "cvpr23" if cfg.variant == "v1" else "2024"
    elif backbone == "resnet101":
        if model_version == "2024":
            raise UserError("--model_version 2024 exists only for the Swin-B model (--backbone swinB)")
        name, version, reason = "medvt_r101_avos", "cvpr23", "--backbone resnet101 (the CVPR'23 ResNet-101 model)"
        cfg = get_config(name)
    else:
        if model_version == "auto":
            version, why = infer_model_version(ckpt)
            reason = f"--model_version auto: {why}"
        else:
            version, reason = model_version, f"--model_version {model_version}"
        name = "medvt_swinb_avos" if version == "cvpr23" else "medvt_swinb_avos_2024"
        cfg = get_config(name)
    if lprop_scale is not None and lprop_scale != cfg.lprop_scale:
        cfg = cfg.replace(lprop_scale=float(lprop_scale))
        reason += f"; --lprop_scale {lprop_scale}"
    return ModelInfo(name, version, reason, cfg)


def log_model_choice(info: ModelInfo) -> None:
    logger.info("model: %s, forward %s (variant %s), lprop_scale %.2f — %s", info.config_name, info.version,
                info.config.variant, info.config.lprop_scale, info.reason)


def build_from_checkpoint(ckpt: dict, info: ModelInfo, source: str = "checkpoint",
                          device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build ``info.config`` and load the checkpoint's weights strictly (errors list bad keys)."""
    model = build_model(info.config)
    state = convert_original_state_dict(checkpoint_state_dict(ckpt), info.config)
    load_state_dict_strict(model, state, source=source)
    return model.to(device).eval()


def load_model(model_path: str | Path, model_version: str = "auto", backbone: str = "swinB",
               lprop_scale: float | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    """Build the right model for a checkpoint file and load it strictly; logs which model and why."""
    ckpt = read_checkpoint(model_path)
    info = resolve_model_config(ckpt, model_version, backbone, lprop_scale)
    log_model_choice(info)
    return build_from_checkpoint(ckpt, info, str(model_path), device), info


def load_onnx(path: str | Path) -> torch.nn.Module:
    """An exported model (``export_onnx.py``) as an ONNX Runtime session with the model's contract
    (``frames`` → ``{"pred_masks"}``), so the same predictor runs it."""
    from models.onnx_export import OnnxModel

    return OnnxModel(path)


# ------------------------------------------------------------------------------------- frames
def mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def to_uint8_png(prob: np.ndarray) -> np.ndarray:
    """Probability → uint8 probability·255, truncated as the original's ``astype(np.uint8)``."""
    return (prob.astype(np.float32) * 255).astype(np.uint8)


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def load_sequence_frames(seq: VideoSequence, protocol: Protocol) -> tuple[Tensor, tuple[int, int]]:
    """All frames of ``seq`` at the test size → ([N, 3, h, w] normalised, original (H, W))."""
    with Image.open(seq.frames[0]) as first:
        w, h = first.size
    return load_frames(seq.frames, test_size(h, w, protocol.val_size, protocol.max_ratio)), (h, w)


def predict_frames(predictor: VideoPredictor, frames: Tensor, indices: Iterable[int],
                   out_size: Sequence[tuple[int, int]] | tuple[int, int], progress: tqdm | None = None,
                   ) -> Iterable[tuple[int, np.ndarray]]:
    """Yield (frame index, probability [H, W] float32) for each index, each the centre of its clip.

    ``frames``: [N, 3, h, w] normalised; ``out_size``: one (H, W) or one per frame.
    """
    n, centre = frames.shape[0], predictor.clip_len // 2
    for i in indices:
        size = out_size if isinstance(out_size[0], int) else out_size[i]
        prob = predictor.predict_clip(frames[wraparound_clip(i, n, predictor.clip_len)], tuple(size))[centre]
        if progress is not None:
            progress.update(1)
        yield i, prob.float().cpu().numpy()


@dataclass
class OverlayWriter:
    """Collects per-frame overlays of one sequence and writes the PNGs and the video."""

    out_dir: Path
    fmt: str = "mp4"
    fps: int = 10
    frames: list[np.ndarray] = field(default_factory=list)

    def add(self, rgb: np.ndarray, mask: np.ndarray, name: str) -> None:
        if mask.shape != rgb.shape[:2]:  # e.g. MoCA masks at input size: show them on the original frame
            mask = cv2.resize(mask.astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        image = overlay(rgb, mask.astype(bool))
        save_png(image, self.out_dir / f"{name}.png")
        self.frames.append(image)

    def close(self) -> Path | None:
        if not self.frames:
            return None
        path = write_video(self.frames, self.out_dir.with_name(f"{self.out_dir.name}.{self.fmt}"), self.fps)
        self.frames = []
        return path


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


def _predictor(model: torch.nn.Module, protocol: Protocol, opts: RunOptions) -> VideoPredictor:
    return VideoPredictor(model, clip_len=opts.num_frames, scales=protocol.scales, flip=protocol.flip,
                          flip_merge=protocol.flip_merge, amp_dtype=opts.amp_dtype)


def _log_protocol(protocol: Protocol, sequences: Sequence[VideoSequence], n_frames: int) -> None:
    logger.info("protocol %s", protocol.describe())
    for note in protocol.notes:
        logger.info("note: %s", note)
    logger.info("%d sequences, %d frames to predict", len(sequences), n_frames)


def _mask_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def predict_dense(model: torch.nn.Module, sequences: Sequence[VideoSequence], protocol: Protocol,
                  opts: RunOptions, annotated_only: bool = False,
                  on_frame: Callable[[VideoSequence, int, np.ndarray], None] | None = None) -> None:
    """Write ``logits/`` and ``bin_mask/`` (and overlays) for every (annotated) frame.

    Output size per frame: its mask's size, else the original frame size. ``on_frame(seq, i,
    foreground [H, W] bool)`` is called per predicted frame (metrics computed on the fly, so no
    dataset-sized array is kept).
    """
    predictor = _predictor(model, protocol, opts)
    todo = {seq.name: [i for i in range(seq.num_frames) if not annotated_only or seq.masks[i] is not None]
            for seq in sequences}
    _log_protocol(protocol, sequences, sum(map(len, todo.values())))
    with tqdm(total=sum(map(len, todo.values())), desc=protocol.dataset, unit="frame") as bar:
        for seq in sequences:
            if not todo[seq.name]:
                continue
            bar.set_postfix_str(seq.name)
            frames, orig = load_sequence_frames(seq, protocol)
            sizes = [_mask_size(m) if m is not None else orig for m in seq.masks]
            writer = OverlayWriter(opts.out_dir / "overlay" / seq.name, opts.overlay_format, opts.fps)
            for i, prob in predict_frames(predictor, frames, todo[seq.name], sizes, bar):
                stem = seq.frames[i].stem
                fg = protocol.binarize(prob)
                save_png(to_uint8_png(prob), opts.out_dir / "logits" / seq.name / f"{stem}.png")
                save_png(fg.astype(np.uint8) * 255, opts.out_dir / "bin_mask" / seq.name / f"{stem}.png")
                if on_frame is not None:
                    on_frame(seq, i, fg)
                if opts.save_overlay:
                    writer.add(np.asarray(seq.read_image(i)), fg, stem)
            writer.close()


def run_davis(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions) -> dict:
    """DAVIS-16: predict every annotated frame, then J/F and the original's mIoU on ``bin_mask/``."""
    predict_dense(model, sequences, protocol, opts)
    gt_dirs = {seq.masks[0].parent.parent for seq in sequences}
    if len(gt_dirs) != 1:
        raise ValueError(f"DAVIS sequences come from several annotation folders: {sorted(map(str, gt_dirs))}")
    results = metrics.evaluate_sequences(opts.out_dir / "bin_mask", gt_dirs.pop(), [s.name for s in sequences])
    for name, row in results["sequences"].items():
        logger.info("video_name:%s iou:%.3f J:%.3f F:%.3f", name, row["mIoU_all_frames"], row["J_mean"], row["F_mean"])
    logger.info("Davis Videos Mean IOU: %.3f   J&F %.3f (J %.3f, F %.3f; first/last frames excluded)",
                results["mIoU"], results["JF_mean"], results["J_mean"], results["F_mean"])
    metrics.write_results(results, opts.out_dir, "davis_results")
    return results


def run_youtube_objects(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions,
                        mask_threshold: int = 80) -> dict:
    """YouTube-Objects: predict frames with a GT mask; IoU against GT ≥ ``mask_threshold``.

    Score = mean over classes of the mean over the class's videos (shots pooled) of the frame IoUs.
    Sequences without any mask are reported with no IoU and left out of the means (the original
    turned them into NaN).
    """
    per_seq: dict[str, list[float]] = {seq.name: [] for seq in sequences}

    def score(seq: VideoSequence, i: int, fg: np.ndarray) -> None:
        per_seq[seq.name].append(metrics.jaccard(fg, seq.read_mask(i, threshold=mask_threshold - 1)))

    predict_dense(model, sequences, protocol, opts, annotated_only=True, on_frame=score)
    rows = {}
    for seq in sequences:
        ious = per_seq[seq.name]
        rows[seq.name] = {"class": seq.meta.get("class", seq.name.split("/")[0]), "IoU": mean_or_nan(ious),
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
    return results


def run_moca(model, sequences: Sequence[VideoSequence], protocol: Protocol, opts: RunOptions) -> dict:
    """MoCA: predict annotated frames, save 0/255 masks at input size, then the box IoU protocol."""
    predictor = _predictor(model, protocol, opts)
    n_total = sum(len(seq.meta["annotated"]) for seq in sequences)
    _log_protocol(protocol, sequences, n_total)
    with tqdm(total=n_total, desc="moca", unit="frame") as bar:
        for seq in sequences:
            if not seq.meta["annotated"]:
                continue
            bar.set_postfix_str(seq.name)
            frames, _ = load_sequence_frames(seq, protocol)
            writer = OverlayWriter(opts.out_dir / "overlay" / seq.name, opts.overlay_format, opts.fps)
            for i, prob in predict_frames(predictor, frames, seq.meta["annotated"], tuple(frames.shape[-2:]), bar):
                fg = protocol.binarize(prob)
                save_png(fg.astype(np.uint8) * 255, opts.out_dir / seq.name / f"{seq.frames[i].stem}.png")
                if opts.save_overlay:
                    writer.add(np.asarray(seq.read_image(i)), fg, seq.frames[i].stem)
            writer.close()
    results = evaluate_moca(opts.out_dir, sequences)
    logger.info("dataset: MoCA mean_iou:%.3f  success rates %s", results["mean_iou"],
                ", ".join(f"{k}: {v:.3f}" for k, v in results["success_rates"].items()))
    metrics.write_results(results, opts.out_dir, "MoCA_results")
    return results


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
        row = {"All_motion_IoU": mean_or_nan(ious)}
        for key, label in (("0", "Locomotion"), ("1", "Deformation"), ("2", "Static")):
            row[f"{label}_IoU"] = mean_or_nan(by_motion[key])
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


def run_video(model, name: str, images: Sequence[Image.Image], protocol: Protocol, opts: RunOptions) -> dict:
    """An unlabelled video (PIL frames): masks, probability maps and an overlay video; no metrics.

    Every frame is kept in memory (decoded and resized): fine for clips, not for hour-long videos.
    Masks are written at the frame size, foreground p > 0.5, flips merged by mean (DAVIS settings).
    """
    w, h = images[0].size
    size = test_size(h, w, protocol.val_size, protocol.max_ratio)
    frames = torch.stack([to_tensor(im.resize((size[1], size[0]), Image.BILINEAR) if im.size != (size[1], size[0])
                                    else im) for im in images])
    predictor = _predictor(model, protocol, opts)
    logger.info("protocol %s", protocol.describe())
    logger.info("video %s: %d frames of %dx%d, run at %dx%d", name, len(images), w, h, size[1], size[0])
    writer = OverlayWriter(opts.out_dir / "overlay" / name, opts.overlay_format, opts.fps)
    areas = []
    with tqdm(total=len(images), desc=name, unit="frame") as bar:
        for i, prob in predict_frames(predictor, frames, range(len(images)), (h, w), bar):
            fg = protocol.binarize(prob)
            save_png(to_uint8_png(prob), opts.out_dir / "logits" / name / f"{i:05d}.png")
            save_png(fg.astype(np.uint8) * 255, opts.out_dir / "bin_mask" / name / f"{i:05d}.png")
            writer.add(np.asarray(images[i].convert("RGB")), fg, f"{i:05d}")
            areas.append(float(fg.mean()))
    video_path = writer.close()
    logger.info("wrote masks to %s and the overlay video %s", opts.out_dir / "bin_mask" / name, video_path)
    return {"name": name, "n_frames": len(images), "overlay_video": str(video_path),
            "mean_foreground_fraction": float(np.mean(areas))}


def read_video(path: str | Path) -> tuple[str, list[Image.Image]]:
    """A video file (OpenCV) or a folder of image files (sorted by name) → (name, RGB frames)."""
    path = Path(path)
    if path.is_dir():
        files = list_frame_files(path, "--video")
        images = [open_image(p, "RGB") for p in files]
        require_same_size(images, files, f"--video {path}")
        logger.info("--video %s: %d frames in natural order, %s … %s", path, len(files), files[0].name, files[-1].name)
        return path.name, images
    if not path.is_file():
        raise FileNotFoundError(f"--video {path} is neither a video file nor a folder of frames")
    capture = cv2.VideoCapture(str(path))
    images = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            images.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
    finally:
        capture.release()
    if not images:
        raise UserError(f"--video {path}: OpenCV read no frames (unsupported codec or not a video)")
    require_same_size(images, [f"frame {i}" for i in range(len(images))], f"--video {path}")
    return path.stem, images


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


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (it may be replaced, e.g. by pytest's capture)."""

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


def add_log_file(path: Path) -> logging.Handler:
    """Also log to ``path`` (the run's ``out.log``); returns the handler to remove afterwards."""
    setup_logging()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return handler
