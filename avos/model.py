"""The model an AVOS checkpoint needs (our config, or an authors' Swin-B / ResNet-101 release and its
forward), and why; built and loaded through :func:`models.registry.build_loaded`, or an exported ONNX
file run in its place."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models import MedVTConfig, get_config, infer_model_version
from models.config import VARIANTS
from models.registry import build_loaded
from models.tasks import TASKS, check_task
from utils.cli import UserError

logger = logging.getLogger("medvt.inference")  # the inference run's log (avos.inference)


@dataclass
class ModelInfo:
    config_name: str
    version: str  # the forward: a variant name, "cvpr23" | "2024train" | "2024" (models.config.MedVTConfig)
    reason: str
    config: MedVTConfig


def resolve_model_config(ckpt: dict, model_version: str = "auto", backbone: str = "swinB",
                         lprop_scale: float | None = None, source: str = "the checkpoint") -> ModelInfo:
    """Which model a checkpoint needs, and why.

    Our checkpoints carry ``config`` (``MedVTConfig.to_dict()``) and are rebuilt from it. The
    authors' files are Swin-B or ResNet-101 by ``backbone``; for Swin-B, ``model_version``
    "auto" reads the saved training arguments (:func:`models.convert.infer_model_version`).
    An explicit variant (:data:`models.config.VARIANTS`: ``cvpr23``, ``2024train``, ``2024``)
    always wins (Swin only: it selects the forward). ``source`` names the file in errors.
    """
    if model_version not in ("auto", *VARIANTS):
        raise UserError(f"--model_version must be auto, {', '.join(VARIANTS)}, not {model_version!r}")
    if backbone not in ("swinB", "resnet101"):
        raise UserError(f"--backbone must be swinB or resnet101, not {backbone!r}")
    check_task(ckpt, "avos", source, TASKS["avos"].infer)
    if isinstance(ckpt.get("config"), dict):
        try:
            cfg = MedVTConfig.from_dict(ckpt["config"])
        except UserError as e:
            raise UserError(f"{source}: {e}") from None
        name, reason = "checkpoint config", "the checkpoint records its model config"
        if model_version != "auto" and cfg.backbone == "swin" and model_version != cfg.variant:
            cfg = cfg.replace(variant=model_version)
            reason += f"; --model_version {model_version} sets the forward"
        version = cfg.variant
    elif backbone == "resnet101":
        if model_version not in ("auto", "cvpr23"):
            raise UserError(f"--model_version {model_version} exists only for the Swin-B model (--backbone swinB)")
        name, version, reason = "medvt_r101_avos", "cvpr23", "--backbone resnet101 (the CVPR'23 ResNet-101 model)"
        cfg = get_config(name)
    else:
        if model_version == "auto":
            version, why = infer_model_version(ckpt)
            reason = f"--model_version auto: {why}"
        else:
            version, reason = model_version, f"--model_version {model_version}"
        name = "medvt_swinb_avos" if version == "cvpr23" else f"medvt_swinb_avos_{version}"
        cfg = get_config(name)
    if lprop_scale is not None and lprop_scale != cfg.lprop_scale:
        cfg = cfg.replace(lprop_scale=float(lprop_scale))
        reason += f"; --lprop_scale {lprop_scale}"
    return ModelInfo(name, version, reason, cfg)


def log_model_choice(info: ModelInfo) -> None:
    logger.info("model: %s, forward %s, lprop_scale %.2f — %s", info.config_name, info.version,
                info.config.lprop_scale, info.reason)


def build_from_checkpoint(ckpt: dict, info: ModelInfo, source: str = "checkpoint",
                          device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build ``info.config`` and load the checkpoint's weights strictly (errors list bad keys; they are
    compared before the model is allocated: :func:`models.registry.build_loaded`)."""
    return build_loaded(ckpt, info.config, source).to(device).eval()


def load_onnx(path: str | Path) -> torch.nn.Module:
    """An exported model (``export_onnx.py``) as an ONNX Runtime session with the model's contract
    (``frames`` → ``{"pred_masks"}``), so the same predictor runs it."""
    from models.onnx_export import OnnxModel

    return OnnxModel(path)
