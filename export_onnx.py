#!/usr/bin/env python
"""Export a MED-VT / MED-VT++ model to ONNX and check the file against PyTorch in ONNX Runtime.

Examples::

    python export_onnx.py --model_path ckpts/swin_medvt.pth --output swin_medvt.onnx     # authors' file or ours
    python export_onnx.py --model_path ckpts/resnet_medvt.pth --backbone resnet101 --output r101.onnx
    python export_onnx.py --config tiny --height 96 --width 160 --output tiny.onnx           # a preset, fresh weights
    python export_onnx.py --config medvtpp_s4 --model_path s4.pth --height 224 --width 224 --output s4.onnx

Inputs ``frames [B, T, 3, H, W]`` (MED-VT++ also ``audio [B, T, 128]``), output ``logits`` (the
model's ``pred_masks``). T is fixed; the batch is dynamic, and so are H and W when --height and
--width are at least the model's floor (225 for Swin, 64 otherwise; see :mod:`models.onnx_export`).
"""
from __future__ import annotations

import utils.startup  # noqa: F401  (first: Ctrl-C while torch imports ends in one line)

import argparse
import time
from pathlib import Path

import torch

from models import PRESETS, CheckpointMismatchError, build_model, read_checkpoint
from models.config import VARIANTS, preset_name
from models.registry import build_loaded, resolve_config
from models.tasks import checkpoint_task
from models.onnx_export import (MAX_OPSET, OPSET, OnnxModel, UnexportableError, export_onnx, input_names,
                                min_dynamic_size)
from utils.cli import ArgumentParser, UserError, add_debug_flag, clip_frames, positive_int, random_seed, run_main
from utils.outputs import check_output_file


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Export a MED-VT model to ONNX (opset 19, DeformConv native), validate "
                                   "it with onnx.checker and ONNX Runtime, and compare ONNX Runtime with PyTorch "
                                   "once; --output is written only once the file passes these checks.")
    p.add_argument("--model_path", type=Path, default=None,
                   help="checkpoint: the authors' file or one of ours (read with the project's safe loader)")
    p.add_argument("--config", default=None, type=preset_name, choices=list(PRESETS),
                   help="preset to build; alone it exports fresh weights, with --model_path it names the model of a "
                        "file that records none (the authors'; ours record their config, of any task); without "
                        "it, an authors' AVOS checkpoint is resolved as in inference")
    p.add_argument("--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output if it exists (never --model_path: the checkpoint is an input)")
    p.add_argument("--num_frames", type=clip_frames, default=None, help="clip length T (default 6; MED-VT++ 5)")
    p.add_argument("--height", type=int, default=473,
                   help="height of the example clip traced (default 473); at or above the model's floor (225 for "
                        "Swin, 64 otherwise) the file takes any height from the floor on, below it only this one")
    p.add_argument("--width", type=int, default=473, help="width of the example clip, as --height (default 473)")
    p.add_argument("--opset", type=int, default=OPSET, choices=range(OPSET, MAX_OPSET + 1), metavar="N",
                   help=f"ONNX opset, {OPSET} (DeformConv's first) to {MAX_OPSET} (the highest the exporter "
                        f"converts to) (default {OPSET})")
    p.add_argument("--model_version", default="auto", choices=["auto", *VARIANTS],
                   help="forward of an authors' Swin-B checkpoint, as in inference_swin_medvt_avos.py (default auto)")
    p.add_argument("--backbone", default="swinB", choices=["swinB", "resnet101"],
                   help="backbone of an authors' AVOS checkpoint (default swinB)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads of ONNX Runtime and PyTorch for the check (default: their defaults)")
    p.add_argument("--seed", type=random_seed, default=0,
                   help="seed of the fresh weights and the check's input (default 0)")
    add_debug_flag(p)
    return p


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The model named by the flags, in eval mode on the CPU, and its checkpoint ({} for fresh weights)."""
    torch.manual_seed(args.seed)
    if args.model_path is None:
        return build_model(args.config).eval(), {}
    ckpt = read_checkpoint(args.model_path)
    avos = checkpoint_task(ckpt, f"--model_path {args.model_path}") in (None, "avos")  # None: an authors' file
    if args.config is not None or not avos:  # either family (our VSS, A2D, MED-VT++ files): the file's config wins
        cfg, reason = resolve_config(ckpt, args.config, source=f"--model_path {args.model_path}")
        model = build_loaded(ckpt, cfg, str(args.model_path))
        print(f"model: config from {reason}")
        return model.eval(), ckpt
    from avos import model as avos_model  # an AVOS checkpoint: the inference script's model choice

    info = avos_model.resolve_model_config(ckpt, args.model_version, args.backbone,
                                           source=f"--model_path {args.model_path}")
    print(f"model: {info.config_name} ({info.reason})")
    return avos_model.build_from_checkpoint(ckpt, info, str(args.model_path)), ckpt


def model_task(model: torch.nn.Module, ckpt: dict, source: str) -> str:
    """The task the file records (:mod:`models.tasks`, the inference scripts' rule for checkpoints), so that
    inference can refuse a file of another task in words: the checkpoint's, read with the config built."""
    return checkpoint_task({**ckpt, "config": model.cfg.to_dict()}, source)


def example_inputs(model: torch.nn.Module, batch: int, t: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, t, 3, h, w, generator=g)
    if input_names(model) == ["frames", "audio"]:
        return frames, torch.randn(batch, t, model.cfg.audio_dim, generator=g)
    return (frames,)


def main(argv: list[str] | None = None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.model_path is None and args.config is None:
        parser.error("give --model_path CHECKPOINT or --config NAME (fresh weights)")
    try:  # before any export work: not a folder, not the checkpoint itself, new unless --overwrite
        check_output_file(args.output, "--output", {"--model_path": args.model_path}, args.overwrite)
    except UserError as e:
        parser.error(str(e))
    if min(args.height, args.width) < 32:
        parser.error("--height and --width must be at least 32 (the deepest map is at 1/32)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, ckpt = load(args)
        task = model_task(model, ckpt, f"--model_path {args.model_path}")
        del ckpt
        t = args.num_frames if args.num_frames is not None else getattr(model.cfg, "max_frames", 6)  # MED-VT++: audio
        example = example_inputs(model, 2, t, args.height, args.width, args.seed)
        floor = min_dynamic_size(model)
        dims = (f"batch, height and width (from {floor}) dynamic" if min(args.height, args.width) >= floor else
                f"batch dynamic, height and width fixed (dynamic from {floor} on)")
        print(f"exporting {type(model).__name__} ({task.upper()}) for {' + '.join(input_names(model))} "
              f"[B, {t}, 3, {args.height}, {args.width}], {dims}, opset {args.opset} → {args.output}")
        times = export_onnx(model, example, args.output, args.opset, task)
        session = OnnxModel(args.output, args.threads or 0, flag="--output")
        print(f"export: trace {times['trace_s']:.1f} s, ONNX conversion {times['convert_s']:.1f} s; "
              f"onnx.checker passed{' (weights in external data)' if times['external_data'] else ''}; "
              f"the file takes {session.describe()}")
        sizes = [(args.height, args.width)]
        if times["dynamic_size"]:  # show that another size runs too: odd, and not a multiple of 32 or 7
            sizes.append((args.height + 37, args.width + 19))
        reports = []
        for i, (h, w) in enumerate(sizes):
            clip = example if i == 0 else example_inputs(model, 1, t, h, w, args.seed + 1)
            reports.append(compare(model, session, clip))
            r = reports[-1]
            print(f"ONNX Runtime vs PyTorch, clip [{clip[0].shape[0]}, {t}, 3, {h}, {w}]: max |Δ| "
                  f"{r['max_abs_diff']:.3g}; one call each (the first includes warm-up; benchmarks/bench_onnx.py "
                  f"times them): PyTorch {r['torch_s']:.3f} s, ONNX Runtime {r['onnx_s']:.3f} s")
    except (ValueError, KeyError, CheckpointMismatchError, UnexportableError) as e:
        # One line through run_main (exit status 2, as every script); a missing file is already one.
        if isinstance(e, KeyError) and args.model_path is not None:
            raise UserError(f"--model_path {args.model_path}: its model cannot be read (no entry {e}); is it a "
                            "checkpoint of another model family? Name its preset with --config") from e
        raise UserError(str(e)) from e
    report = {**reports[0], "max_abs_diff": max(r["max_abs_diff"] for r in reports), "checked_sizes": sizes}
    return {**times, **report, "output": str(args.output), "task": task}


def compare(model: torch.nn.Module, session: OnnxModel, example: tuple[torch.Tensor, ...]) -> dict:
    """Run both once on ``example``; max |Δ| of the logits and the wall time of each."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = model(*example)["pred_masks"]
        t1 = time.perf_counter()
        out = session(*example)["pred_masks"]
        t2 = time.perf_counter()
    return {"max_abs_diff": (out - ref).abs().max().item(), "torch_s": t1 - t0, "onnx_s": t2 - t1}


if __name__ == "__main__":
    run_main(main)
