"""Video inference with the original test protocol (spec avos §6.1).

Every frame is predicted as the centre of its own clip: list positions [f-3 … f+2] modulo the
video length (wrap-around), for a clip of 6. For each scale the normalised clip is resized
(bilinear, no antialias), segmented, its logits resized to the output size and passed through a
sigmoid; scales are averaged. With ``flip`` the mirrored clip is predicted too (in the same
batch) and merged by mean (DAVIS) or element-wise max (YouTube-Objects, MoCA).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def wraparound_clip(center: int, num_frames: int, clip_len: int = 6) -> list[int]:
    """Frame indices of the clip centred (at position clip_len // 2) on ``center``."""
    half = clip_len // 2
    return [(center + k) % num_frames for k in range(-half, clip_len - half)]


class VideoPredictor:
    """Args:
        model: a MED-VT model (binary, ``pred_masks`` [B, T, h, w]).
        clip_len: frames per clip (6 as trained).
        scales: input scales averaged together (``(1.0,)`` = single scale).
        flip: also predict the horizontally mirrored clip.
        flip_merge: ``"mean"`` or ``"max"``.
        amp_dtype: autocast dtype on CUDA (None = float32).
    """

    def __init__(self, model: nn.Module, clip_len: int = 6, scales: Sequence[float] = (1.0,), flip: bool = False,
                 flip_merge: str = "mean", amp_dtype: torch.dtype | None = None) -> None:
        if flip_merge not in ("mean", "max"):
            raise ValueError("flip_merge must be 'mean' or 'max'")
        self.model = model.eval()
        self.clip_len = clip_len
        self.scales = tuple(scales)
        self.flip = flip
        self.flip_merge = flip_merge
        self.amp_dtype = amp_dtype

    @property
    def device(self) -> torch.device:
        # A model without parameters (an ONNX Runtime session, models.onnx_export.OnnxModel) takes CPU tensors.
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.inference_mode()
    def predict_clip(self, clip: Tensor, out_size: tuple[int, int]) -> Tensor:
        """clip [T, 3, H, W] normalised → foreground probabilities [T, *out_size] (float32)."""
        x = clip.to(self.device)[None]
        if self.flip:
            x = torch.cat([x, x.flip(-1)])  # [2, T, 3, H, W]: one forward for both
        h, w = x.shape[-2:]
        probs = []
        for s in self.scales:
            xs = x
            if s != 1:
                xs = F.interpolate(x.flatten(0, 1), size=(int(h * s), int(w * s)), mode="bilinear",
                                   align_corners=False).unflatten(0, x.shape[:2])
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with ctx:
                logits = self.model(xs)["pred_masks"].float()  # [B, T, h', w']
            probs.append(F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False).sigmoid())
        p = torch.stack(probs).mean(0)
        if self.flip:
            a, b = p[0], p[1].flip(-1)
            return torch.maximum(a, b) if self.flip_merge == "max" else (a + b) / 2
        return p[0]

    def predict_video(self, frames: Tensor, out_size: tuple[int, int],
                      indices: Sequence[int] | None = None) -> Iterator[tuple[int, Tensor]]:
        """frames [N, 3, H, W] normalised → yields (frame index, probability [*out_size]) per frame."""
        n = frames.shape[0]
        centre = self.clip_len // 2
        for i in (range(n) if indices is None else indices):
            clip = frames[wraparound_clip(i, n, self.clip_len)]
            yield i, self.predict_clip(clip, out_size)[centre].cpu()
