"""VSPW prediction and evaluation, used by ``vss/inference_medvt_vss.py`` and the per-epoch
validation of ``vss/train_medvt_vss.py``: the model from a checkpoint, every frame of a video
through the shared streaming predictor, palette PNGs and overlays written as predictions arrive,
and the VSPW metrics (:mod:`vss.metrics`)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.stream import ImageFiles, Prefetch, VideoFile, open_video
from datasets.video import VideoSequence, image_size, open_image
from datasets.vspw import check_raw_labels, raw_to_class, read_raw_mask, require_all_masks, resized_hw
from models import build_model, load_model
from models.convert import read_checkpoint
from models.predictor import VideoPredictor, Window
from models.registry import model_state_dict, resolve_config, saved_args
from models.tasks import TASKS, check_task
from utils.background import BackgroundWorker
from utils.cli import UserError
from utils.distributed import gather_in_order, gather_throughput, is_main_process, shard
from utils.logger import Throughput
from utils.visualize import save_label_png, write_label_video
from vss.config import vss_config
from vss.metrics import VSPWEvaluator

DEFAULT_CLIP_LEN = 6  # the AVOS training clip, which VSS training keeps


# --------------------------------------------------------------------------------- colours
def vspw_palette(num: int = 256) -> np.ndarray:
    """[num, 3] uint8 colours: the bit-interleaved PASCAL-VOC scheme, distinct for 256 ids.

    Class c gets the VOC colour of c + 1, so class 0 is not black (black reads as "nothing").
    """
    pal = np.zeros((num, 3), np.uint8)
    for i in range(num):
        c, r, g, b = i + 1, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        pal[i] = (r, g, b)
    pal[255] = (0, 0, 0)  # ignore / void
    return pal


PALETTE = vspw_palette()


def overlay_colors(frame: Path | np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame (a file, resized to the labels, or an RGB array of their size) blended with the class
    colours, HxWx3 uint8."""
    if isinstance(frame, Path):  # read as the model reads it: a 16-bit frame rescaled, not clipped to white
        frame = np.asarray(open_image(frame, "RGB").resize(labels.shape[::-1], Image.BILINEAR))
    return ((1 - alpha) * frame + alpha * PALETTE[labels]).astype(np.uint8)


# ------------------------------------------------------------------------------ prediction
def video_predictions(model: torch.nn.Module, video: VideoSequence | ImageFiles | VideoFile, out_hw: tuple[int, int],
                      device: torch.device, val_size: int | None = 480, max_size: int | None = None,
                      clip_len: int = DEFAULT_CLIP_LEN, window: str = "chunk", flip: bool = False,
                      amp_dtype: torch.dtype | None = None, batch_clips: int = 1,
                      ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(frame index, class ids [*out_hw] uint8, the frame's RGB or None) for every frame of ``video`` (a
    VSPW video, or an opened frame source: :func:`open_user_video`), in order, streamed.

    Logits [B, K, T, h, w] are upsampled (bilinear) one kept frame at a time to ``out_hw`` and
    argmax'ed; with ``flip`` the two softmaxes are averaged (:class:`models.predictor.VideoPredictor`).
    """
    if model.num_classes < 2:
        raise ValueError(f"expected a multi-class model (num_classes > 1), got {model.num_classes} class")
    predictor = VideoPredictor(model.to(device), Window(window, clip_len), flip=flip,
                               activation="softmax" if flip else "none",
                               amp_dtype=amp_dtype, batch_clips=batch_clips)
    source = video if not isinstance(video, VideoSequence) else \
        ImageFiles(video.frames, lambda h, w: resized_hw(h, w, val_size or None, max_size), name=video.name)
    yield from predictor.class_ids(Prefetch(source, 8), out_hw)


def predict_video(model: torch.nn.Module, video: VideoSequence, out_hw: tuple[int, int], device: torch.device,
                  **kwargs) -> np.ndarray:
    """Class ids [N, *out_hw] uint8 of every frame (:func:`video_predictions` collected)."""
    preds = np.zeros((video.num_frames, *out_hw), np.uint8)
    for i, labels, _ in video_predictions(model, video, out_hw, device, **kwargs):
        preds[i] = labels
    return preds


def evaluate_videos(model: torch.nn.Module, videos: list[VideoSequence], device: torch.device,
                    output_dir: Path | None = None, save_predictions: bool = True, save_overlays: bool = False,
                    progress: bool = True, log: Callable[[str], object] = print, **predict_kwargs) -> dict:
    """Predict ``videos``, write PNGs/overlays under ``output_dir`` (in a background thread, as
    predictions arrive), return :meth:`VSPWEvaluator.summary`; the frames/s line goes to ``log`` (a
    trainer's logger: its stdout may be gone, as under ``| head``, while it writes train.log).

    Predictions are made at the mask size (where metrics are taken), else at the frame size; a
    video's predictions are only collected when it has masks (video consistency needs them all), and a video
    with some but not all of its masks is refused before anything is predicted.
    The summary is ``{}`` when no video has masks. Under torchrun every process must call it: each
    predicts every world-size-th video, and all get the summary of one process predicting them all.
    """
    evaluator = VSPWEvaluator(model.num_classes)  # MEDVT or an ONNX Runtime session (--runtime onnx)
    for video in videos:  # a partly annotated video would be scored on what is left; refused before any predicting
        annotated = [m for m in video.masks if m is not None]
        if annotated:
            require_all_masks(video, annotated[0].parent)
    mine = {}  # video index → (name, its share of the scores)
    indices = shard(len(videos))
    progress = progress and is_main_process()
    speed = Throughput(sum(videos[i].num_frames for i in indices), "VSPW", log if progress else (lambda _line: None),
                       disable=not progress)
    with BackgroundWorker(depth=16, name="writer") as writer:
        for i in indices:
            video = videos[i]
            speed.bar.set_postfix_str(video.name)
            annotated = [m for m in video.masks if m is not None]
            # Predicted at the masks' size, else the frames'; scored a frame at a time as predictions
            # arrive (vss.metrics.VideoScore): no stack of the video's masks or predictions is held.
            w0, h0 = image_size(annotated[0] if annotated else video.frames[0])
            score = evaluator.video_score(video.num_frames) if annotated else None
            for f, labels, _ in video_predictions(model, video, (h0, w0), device, **predict_kwargs):
                if score is not None:
                    raw = read_raw_mask(video.masks[f], (h0, w0))
                    if raw.shape != (h0, w0):  # vspw_sequences checks this only where masks are required
                        raise UserError(f"VSPW video {video.name}: mask {video.masks[f]} is {raw.shape[1]}x"
                                        f"{raw.shape[0]}, but its first is {w0}x{h0}; a video's masks have one size")
                    # a raw label the model has no class for is refused, naming the mask, not read as void
                    check_raw_labels(raw, evaluator.num_classes, video.name, video.masks[f])
                    gt = raw_to_class(raw, evaluator.num_classes)
                    # VC compares the raw masks, as the official script does; mIoU uses classes 0..K-1.
                    score.add_frame(gt, labels, raw)
                if output_dir is not None:
                    writer.submit(_write_frame, output_dir, video, f, labels, save_predictions, save_overlays)
                speed.update()
            if score is not None:
                mine[i] = (video.name, score.share())
    gather_throughput(speed.close(), print if progress else (lambda _line: None))
    shares = gather_in_order(mine)
    for name, share in shares:
        evaluator.add(name, share)
    return evaluator.summary() if shares else {}


def open_user_video(path: Path, val_size: int | None, max_size: int | None, clip_len: int) -> ImageFiles | VideoFile:
    """``--video``: a video file or a folder of frames, checked completely before anything is written
    (one-line errors for unreadable, empty or one-frame input), decoded lazily at the model's size."""
    return open_video(path, lambda h, w: resized_hw(h, w, val_size or None, max_size), keep_rgb=True,
                      flag="--video", min_frames=2, tail_keep=clip_len)


def segment_video(model: torch.nn.Module, source: ImageFiles | VideoFile, device: torch.device, output_dir: Path,
                  fps: float = 10, **predict_kwargs) -> dict:
    """An unlabelled video (:func:`open_user_video`): every frame's class ids as a palette PNG at the frame
    size and the coloured overlay as one video (:func:`utils.visualize.write_label_video`). No metrics:
    the result has the frames, speed, settings and the share of pixels per predicted class."""
    predictions = video_predictions(model, source, source.frame_hw, device, **predict_kwargs)
    result = write_label_video(predictions, source, output_dir, PALETTE, model.num_classes, overlay_colors, fps)
    settings = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in predict_kwargs.items()}
    return {**result, "settings": settings}


def _write_frame(output_dir: Path, video: VideoSequence, i: int, labels: np.ndarray, save_predictions: bool,
                 save_overlays: bool) -> None:
    frame = video.frames[i]
    if save_predictions:
        save_label_png(labels, PALETTE, output_dir / "predictions" / video.name / f"{frame.stem}.png")
    if save_overlays:
        path = output_dir / "overlays" / video.name / f"{frame.stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay_colors(frame, labels)).save(path, quality=90)


def clip_length(given: int | None, ckpt: dict) -> int:
    """Frames per forward: ``--clip_len`` if given, else the clip length the checkpoint was trained on
    (its saved ``--num_frames``), else 6. A given length other than the trained one is warned about."""
    trained = saved_args(ckpt).get("num_frames")
    trained = trained if isinstance(trained, int) else None
    if given is None:
        return trained or DEFAULT_CLIP_LEN
    if trained is not None and given != trained:
        print(f"warning: --clip_len {given}, but the checkpoint was trained on clips of {trained} frames")
    return given


def build_from_args(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, int]:
    """The model of --model_path (its recorded config, else --model / --num_classes), or with
    --random_weights a fresh one; and the clip length to run it on (:func:`clip_length`)."""
    if args.model_path:
        # another task's file (e.g. A2D's 80 classes) is refused before its class ids are read as VSPW's; an
        # authors' file (no config) by the config its saved arguments make of --model
        ckpt, preset, source = read_checkpoint(args.model_path), vss_config(args.model, args.num_classes), \
            f"--model_path {args.model_path}"
        resolved, _ = resolve_config(ckpt, preset, source=source, num_classes=args.num_classes)
        check_task(ckpt, "vss", source, TASKS["vss"].infer, args.num_classes is not None, resolved)
        loaded = load_model(args.model_path, preset=preset, device=device, checkpoint=ckpt,
                            num_classes=args.num_classes)
        if is_main_process():
            print(f"loaded {args.model_path}: config from {loaded.reason}")
        return loaded.model, clip_length(args.clip_len, loaded.checkpoint)
    if not args.random_weights:
        raise UserError("give --model_path CHECKPOINT (or --random_weights for a smoke test)")
    torch.manual_seed(0)  # the same fresh model in every process of a torchrun run, and in every run
    return build_model(vss_config(args.model, args.num_classes)).to(device).eval(), clip_length(args.clip_len, {})


def onnx_from_args(args: argparse.Namespace) -> tuple[torch.nn.Module, int]:
    """The exported model of --onnx_path, as the predictor runs it, and its clip length (the file's own
    unless --clip_len says otherwise: then refused). A --model_path given with it is read only to check
    that the file was exported from it (the outputs are named after it)."""
    from models.onnx_export import OnnxModel

    model = OnnxModel(args.onnx_path)
    # a file of another task is refused as its checkpoint is (models.tasks, by the task recorded at export);
    # a file that records none, by its class count only
    model.check_task("vss", TASKS["vss"].infer)
    if model.task is None and model.num_classes < 2:
        raise UserError(f"--onnx_path {args.onnx_path} holds a model of {model.num_classes} class (an AVOS "
                        "export?); VSS needs a multi-class one: export a VSS checkpoint with export_onnx.py")
    model.check_clip_length(args.clip_len or model.frames, "--clip_len")
    if args.model_path:
        ckpt = read_checkpoint(args.model_path)
        cfg, _ = resolve_config(ckpt, vss_config(args.model, args.num_classes),
                                source=f"--model_path {args.model_path}")
        model.check_weights(model_state_dict(ckpt, cfg, str(args.model_path)), args.model_path)
    print(f"runtime: ONNX Runtime (CPU) with {args.onnx_path} ({model.what()}, {model.describe()})")
    return model, model.frames


def format_summary(summary: dict) -> str:
    """One line: mIoU, mVC8, mVC16 (a VC without any window, e.g. short videos, is left out)."""
    parts = [f"mIoU {summary['mIoU']:.4f}"]
    parts += [f"{k} {summary[k]:.4f}" for k in ("mVC8", "mVC16") if not math.isnan(summary.get(k, math.nan))]
    return "  ".join(parts) + f"  ({len(summary['sequences'])} videos)"
