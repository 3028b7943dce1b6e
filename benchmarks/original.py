"""Adapter to the authors' original MED-VT Swin-B AVOS model (rkyuca/medvt 555a462), for benchmarks.

Why: the GPU suite times the original next to ours on the same deterministic weights. The
original's code is never committed; ``benchmarks/extract_original.py`` puts its ``avos/`` package
into the git-ignored ``.orig/medvt/`` (plus a ``distutils`` stub in ``.orig/shims/``, Python 3.12
dropped it). Nothing here is used by the models or the tests.

What the original supports, read from its code at 555a462:

* one clip of exactly ``num_frames`` = 6 frames per forward, as a ``NestedTensor`` of
  ``[T, 3, H, W]`` frames with a ``[T, H, W]`` padding mask (False = valid). The Swin backbone is
  fed the whole tensor as a single video, so a batch of clips would be mixed into one clip, and
  in eval mode only the first 6 frames are used. The adapters therefore take our ``[B, T, 3, H, W]``
  layout, require T = 6 and run the B clips one after the other (the original's own loaders use
  ``batch_size`` 1), concatenating the outputs.
* output ``{"pred_masks": [1, T, H/8, W/8]}`` logits (leading dim = the one class); in training
  mode (``--aux_loss`` 0.5 by default) also ``aux_pred_masks``, the head's logits before label
  propagation, which is the dict layout ``models.losses.AVOSCriterion`` takes.
* no hard-coded CUDA in the model's forward: ``.to(device)`` works for CPU and CUDA.
"""
from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import torch
from torch import Tensor, nn

from tests.model_weights import FIXTURES, deterministic_value, read_key_list

# Model arguments shared by the original's inference_swin_medvt_avos.py and train_swin_medvt_avos.py
# (their argparse defaults at 555a462), plus the values their main() sets before building.
_DEFAULTS = dict(
    backbone="swinB", position_embedding="sine", enc_layers=(6, 1), encoder_cross_layer=True,
    dec_layers=9, dec_multiscale="yes", dim_feedforward=2048, hidden_dim=384, dropout=0.1, nheads=8,
    num_frames=6, num_queries=6, pre_norm=False, lprop_mode=2, lprop_scale=8.0, feat_loc="late",
    stacked_lprop=1, pretrain_settings=None, masks=True, num_classes=1, mask_loss_coef=1.0,
    dice_loss_coef=1.0, aux_loss_norm=0, device="cpu",
    # is_train: the inference script's 0, also for train=True. The training script's 1 only loads
    # Kinetics/COCO weight files (we have none; the deterministic weights overwrite them anyway) and
    # does not change the architecture, so these two paths are never read.
    is_train=0, swin_b_pretrained_path="", resnet101_coco_weights_path="",
)


def _paths(root: str | Path) -> tuple[Path, Path]:
    root = Path(root)
    return root / "medvt", root / "shims"


def available(root: str | Path = ".orig") -> bool:
    """Whether the original's code has been extracted under ``root``."""
    code, shims = _paths(root)
    return (code / "avos" / "models" / "medvt_swin.py").is_file() and (shims / "distutils").is_dir()


def _import_original(root: str | Path):
    code, shims = _paths(root)
    if not available(root):
        raise FileNotFoundError(f"no original code in {root} (python benchmarks/extract_original.py --mirror PATH)")
    if str(code.resolve()) not in sys.path:
        sys.path.insert(0, str(code.resolve()))
    if str(shims.resolve()) not in sys.path:
        sys.path.append(str(shims.resolve()))  # last: a real distutils (setuptools) wins
    from avos.models import medvt_swin

    return medvt_swin


def build_original_swinb(root: str | Path = ".orig", train: bool = False) -> nn.Module:
    """The original Swin-B AVOS model as its scripts build it, with deterministic weights.

    ``train`` selects the training script's ``--aux_loss`` 0.5 (adds ``aux_pred_masks``) over the
    inference script's 0; the architecture and the state-dict keys are the same. Every floating
    entry gets ``tests.model_weights.deterministic_value(name, shape)``, integer entries (Swin
    ``relative_position_index``) keep the model's own values. The keys are checked against
    ``tests/fixtures/avos/swinb_keys.tsv``. Returned on CPU, in train or eval mode as asked.
    """
    medvt_swin = _import_original(root)
    args = Namespace(**_DEFAULTS, aux_loss=0.5 if train else 0)
    model = medvt_swin.build_model_medvt_swinbackbone_without_criterion(args)
    sd = model.state_dict()
    expected = {name: shape for name, shape, _ in read_key_list(FIXTURES / "swinb_keys.tsv")}
    got = {name: tuple(v.shape) for name, v in sd.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))[:5]
        raise RuntimeError(f"original state_dict differs from swinb_keys.tsv, e.g. {diff}")
    for name, v in sd.items():
        if v.is_floating_point():
            sd[name] = deterministic_value(name, tuple(v.shape)).to(v.dtype)
    model.load_state_dict(sd, strict=True)
    return model.train(train)


def _clips(model: nn.Module, frames: Tensor):
    """Yield the original's input (``NestedTensor``) for each clip of ``frames`` [B, T, 3, H, W]."""
    from avos.utils.misc import NestedTensor

    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be [B, T, 3, H, W], got {list(frames.shape)}")
    if frames.shape[1] != model.num_frames:
        raise ValueError(f"the original takes exactly {model.num_frames} frames per clip, got T={frames.shape[1]}")
    for clip in frames:
        mask = torch.zeros((clip.shape[0], *clip.shape[-2:]), dtype=torch.bool, device=clip.device)
        yield NestedTensor(clip, mask)


def original_forward(model: nn.Module, frames: Tensor) -> Tensor:
    """Logits ``[B, T, H/8, W/8]`` (our ``pred_masks`` layout) of the original on ``[B, T, 3, H, W]``.

    Clips run one after the other (the original takes one clip per forward); in eval mode the
    original's forward itself runs under ``torch.no_grad``.
    """
    return torch.cat([model(s)["pred_masks"] for s in _clips(model, frames)], dim=0)


def original_train_outputs(model: nn.Module, frames: Tensor) -> dict[str, Tensor]:
    """Training forward (model in train mode) as ``AVOSCriterion`` takes it: ``pred_masks`` and
    ``aux_pred_masks``, each ``[B, T, H/8, W/8]``."""
    if not model.training:
        raise ValueError("original_train_outputs needs the model in train mode (build_original_swinb(train=True))")
    outs = [model(s) for s in _clips(model, frames)]
    return {k: torch.cat([o[k] for o in outs], dim=0) for k in ("pred_masks", "aux_pred_masks")}
