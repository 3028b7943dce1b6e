"""MED-VT video semantic segmentation: inference and evaluation on VSPW.

Every frame of every video of the split is predicted. Predictions are saved as palette PNGs
``<output_dir>/predictions/<video>/<frame>.png`` whose pixel values are the class ids 0..K-1
(raw VSPW label − 1, the dataset README's convention) and whose palette colours them, so one
file is both the coloured picture and the label map. With ground truth (``val``), mIoU and
mVC8 / mVC16 are computed as the VSPW authors' scripts do (:mod:`vss.metrics`) and written per
video and overall to ``results.json`` / ``results.csv``.

Clips: ``--window chunk`` (default) cuts each video into consecutive clips of ``--clip_len``
frames (the last one shifted back inside the video) and keeps every frame's prediction, one
forward per ``clip_len`` frames; ``--window centre`` predicts each frame as the centre of its own
wrap-around clip (the AVOS protocol, ``clip_len`` times slower).

Example::

    python vss/inference_medvt_vss.py --model_path out/vss/checkpoint_best.pth \\
        --vspw_root /data/VSPW_480p --split val --output_dir out/vss_val
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.path_config import add_path_args  # noqa: E402
from datasets.stream import ImageFiles, Prefetch  # noqa: E402
from datasets.video import VideoSequence  # noqa: E402
from datasets.vspw import raw_to_class, read_raw_mask, resized_hw, vspw_root, vspw_sequences  # noqa: E402
from models import MedVTConfig, build_model, load_checkpoint, read_checkpoint  # noqa: E402
from models.predictor import VideoPredictor, Window  # noqa: E402
from utils.background import BackgroundWorker  # noqa: E402
from utils.cli import UserError, add_debug_flag, non_negative_int, positive_int, run_main  # noqa: E402
from utils.logger import Throughput  # noqa: E402
from utils.metrics import write_results  # noqa: E402
from vss.config import DEFAULT_CONFIG, VSPW_NUM_CLASSES, config_names, vss_config  # noqa: E402
from vss.metrics import VSPWEvaluator  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None,
                   help="checkpoint to evaluate (one written by vss/train_medvt_vss.py records its model config); "
                        "required unless --random_weights")
    p.add_argument("--random_weights", action="store_true", help="run without a checkpoint (smoke tests only)")
    p.add_argument("--model", default=DEFAULT_CONFIG, choices=config_names(),
                   help="model config, used when the checkpoint does not record one")
    p.add_argument("--num_classes", type=positive_int, default=None, help="override the config's class count")
    add_path_args(p, ["vspw"])
    p.add_argument("--split", default="val",
                   help="split list <vspw_root>/<split>.txt; a split without masks (test) gets predictions only")
    p.add_argument("--videos", nargs="*", default=None, help="only these videos of the split")
    p.add_argument("--val_size", type=non_negative_int, default=480, help="shorter side fed to the model; 0 = frame size")
    p.add_argument("--max_size", type=positive_int, default=None, help="cap on the longer side fed to the model")
    p.add_argument("--clip_len", type=positive_int, default=6, help="frames per forward (the trained clip length)")
    p.add_argument("--window", default="chunk", choices=("chunk", "centre"),
                   help="chunk: consecutive clips, every frame kept; centre: each frame the centre of its own "
                        "wrap-around clip (see above)")
    p.add_argument("--batch_clips", type=positive_int, default=1, metavar="N",
                   help="clips stacked in one forward (2N with --flip), for GPUs (default 1)")
    p.add_argument("--flip", action="store_true", help="average the softmax with that of the mirrored clip")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (meant for CUDA; runs, slowly, on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--output_dir", default=None,
                   help="where predictions/<video>/<frame>.png and results.{json,csv} go; default "
                        "<checkpoint folder>/infer_vspw_<split>_<val_size> (runs/medvt_vss_random/... without one)")
    p.add_argument("--save_overlays", action="store_true", help="also write overlays/<video>/<frame>.jpg")
    p.add_argument("--no_save_predictions", action="store_true", help="compute metrics only, write no PNGs")
    add_debug_flag(p)
    return p


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


def save_label_png(labels: np.ndarray, path: Path) -> None:
    """Class ids HxW → palette PNG (values = ids, colours = :data:`PALETTE`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    img.putpalette(PALETTE.flatten().tolist())
    img.save(path)


def overlay_colors(frame_path: Path, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame (resized to the labels) blended with the class colours, HxWx3 uint8."""
    frame = np.asarray(Image.open(frame_path).convert("RGB").resize(labels.shape[::-1], Image.BILINEAR))
    return ((1 - alpha) * frame + alpha * PALETTE[labels]).astype(np.uint8)


# ------------------------------------------------------------------------------ prediction
def video_predictions(model: torch.nn.Module, video: VideoSequence, out_hw: tuple[int, int], device: torch.device,
                      val_size: int | None = 480, max_size: int | None = None, clip_len: int = 6,
                      window: str = "chunk", flip: bool = False, amp: bool = False, batch_clips: int = 1,
                      ) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, class ids [*out_hw] uint8) for every frame of ``video``, in order, streamed.

    Logits [B, K, T, h, w] are upsampled (bilinear) one kept frame at a time to ``out_hw`` and
    argmax'ed; with ``flip`` the two softmaxes are averaged (:class:`models.predictor.VideoPredictor`).
    """
    if model.cfg.num_classes < 2:
        raise ValueError(f"expected a multi-class model (num_classes > 1), got {model.cfg.num_classes} class")
    predictor = VideoPredictor(model.to(device), Window(window, clip_len), flip=flip,
                               activation="softmax" if flip else "none",
                               amp_dtype=torch.bfloat16 if amp else None, batch_clips=batch_clips)
    source = ImageFiles(video.frames, lambda h, w: resized_hw(h, w, val_size or None, max_size), name=video.name)
    for pred in predictor.stream(Prefetch(source, 8), out_hw):
        yield pred.index, pred.probs.argmax(0).to(torch.uint8).numpy()


def predict_video(model: torch.nn.Module, video: VideoSequence, out_hw: tuple[int, int], device: torch.device,
                  **kwargs) -> np.ndarray:
    """Class ids [N, *out_hw] uint8 of every frame (:func:`video_predictions` collected)."""
    preds = np.zeros((video.num_frames, *out_hw), np.uint8)
    for i, labels in video_predictions(model, video, out_hw, device, **kwargs):
        preds[i] = labels
    return preds


def evaluate_videos(model: torch.nn.Module, videos: list[VideoSequence], device: torch.device,
                    output_dir: Path | None = None, save_predictions: bool = True, save_overlays: bool = False,
                    progress: bool = True, **predict_kwargs) -> dict:
    """Predict ``videos``, write PNGs/overlays under ``output_dir`` (in a background thread, as
    predictions arrive), return :meth:`VSPWEvaluator.summary`.

    Predictions are made at the mask size (where metrics are taken), else at the frame size; a
    video's predictions are only collected when it has masks (video consistency needs them all).
    The summary is ``{}`` when no video has masks.
    """
    num_classes = model.cfg.num_classes
    evaluator = VSPWEvaluator(num_classes)
    evaluated = False
    speed = Throughput(sum(v.num_frames for v in videos), "VSPW", print if progress else (lambda _line: None),
                       disable=not progress)
    with BackgroundWorker(depth=16, name="writer") as writer:
        for video in videos:
            speed.bar.set_postfix_str(video.name)
            w0, h0 = Image.open(video.frames[0]).size
            raw = None
            if any(m is not None for m in video.masks):
                raw = np.stack([read_raw_mask(m, (h0, w0)) for m in video.masks])
                h0, w0 = raw.shape[1:]
            preds = np.zeros((video.num_frames, h0, w0), np.uint8) if raw is not None else None
            for i, labels in video_predictions(model, video, (h0, w0), device, **predict_kwargs):
                if preds is not None:
                    preds[i] = labels
                if output_dir is not None:
                    writer.submit(_write_frame, output_dir, video, i, labels, save_predictions, save_overlays)
                speed.update()
            if raw is not None:
                # VC compares the raw masks, as the official script does; mIoU uses classes 0..K-1.
                evaluator.add_video(video.name, raw_to_class(raw), preds, raw)
                evaluated = True
    speed.close()
    return evaluator.summary() if evaluated else {}


def _write_frame(output_dir: Path, video: VideoSequence, i: int, labels: np.ndarray, save_predictions: bool,
                 save_overlays: bool) -> None:
    frame = video.frames[i]
    if save_predictions:
        save_label_png(labels, output_dir / "predictions" / video.name / f"{frame.stem}.png")
    if save_overlays:
        path = output_dir / "overlays" / video.name / f"{frame.stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(overlay_colors(frame, labels)).save(path, quality=90)


def check_vss_checkpoint(ckpt: dict, cfg: MedVTConfig, args: argparse.Namespace) -> None:
    """Refuse a checkpoint of another task (e.g. A2D's 80 classes) before it is scored on VSPW's
    124: its class ids would be read as VSPW's without a word. Our VSS runs record --vspw_root."""
    saved = ckpt.get("args")
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    trained_on_vspw = isinstance(saved, dict) and "vspw_root" in saved
    if cfg.num_classes != VSPW_NUM_CLASSES and not trained_on_vspw and args.num_classes is None:
        task = "an AVOS (binary)" if cfg.num_classes == 1 else f"a {cfg.num_classes}-class"
        raise UserError(f"--model_path {args.model_path} holds {task} model not trained by "
                        f"vss/train_medvt_vss.py, but VSPW has {VSPW_NUM_CLASSES} classes; give a VSS checkpoint")


def build_from_args(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The model from the checkpoint's recorded config, else from --model / --num_classes."""
    cfg = None
    if args.model_path:
        ckpt = read_checkpoint(args.model_path)
        if isinstance(ckpt.get("config"), dict):
            cfg = MedVTConfig.from_dict(ckpt["config"])
            check_vss_checkpoint(ckpt, cfg, args)
            if args.num_classes is not None:
                cfg = cfg.replace(num_classes=args.num_classes)
    elif not args.random_weights:
        raise UserError("give --model_path CHECKPOINT (or --random_weights for a smoke test)")
    model = build_model(cfg or vss_config(args.model, args.num_classes))
    if args.model_path:
        load_checkpoint(model, args.model_path)
    return model.to(device).eval()


def format_summary(summary: dict) -> str:
    """One line: mIoU, mVC8, mVC16 (a VC without any window, e.g. short videos, is left out)."""
    parts = [f"mIoU {summary['mIoU']:.4f}"]
    parts += [f"{k} {summary[k]:.4f}" for k in ("mVC8", "mVC16") if not math.isnan(summary.get(k, math.nan))]
    return "  ".join(parts) + f"  ({len(summary['sequences'])} videos)"


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    root = vspw_root(args.vspw_root)
    videos = vspw_sequences(root, args.split)
    if args.videos:
        missing = set(args.videos) - {v.name for v in videos}
        if missing:
            raise UserError(f"--videos not in {root / (args.split + '.txt')}: {', '.join(sorted(missing))}")
        videos = [v for v in videos if v.name in set(args.videos)]
    model = build_from_args(args, device)
    out = Path(args.output_dir) if args.output_dir else (
        (Path(args.model_path).parent if args.model_path else Path("runs/medvt_vss_random"))
        / f"infer_vspw_{args.split}_{args.val_size}")
    summary = evaluate_videos(model, videos, device, out, save_predictions=not args.no_save_predictions,
                              save_overlays=args.save_overlays, val_size=args.val_size, max_size=args.max_size,
                              clip_len=args.clip_len, window=args.window, flip=args.flip, amp=args.amp,
                              batch_clips=args.batch_clips)
    if not summary:
        print(f"no ground truth in split {args.split}: predictions written to {out / 'predictions'}")
        return {}
    json_path, csv_path = write_results(summary, out, "results")
    print(f"{format_summary(summary)}; per video: {csv_path}, all: {json_path}")
    return summary


if __name__ == "__main__":
    run_main(main)
