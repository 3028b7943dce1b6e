"""MED-VT++ losses on AVSBench (spec a2d-avs-vss §B.6). The "IoU loss" of the original is plain BCE.

* S4: BCE(sigmoid(logits), gt) on the first frame of each clip only (the one annotated training
  frame), mean over pixels. Optional (``sa_loss``, off by default) the AVSBench audio/masked-visual
  cosine loss: pooled logits → sigmoid → > 0.5 → masked mean of each FPN map, L2-normalised, and
  −log(relu(cos) + 1e-6) with the audio feature, averaged over the chosen stages.
* MS3: BCE over all five frames + λ₁ · masked-AV loss when ``masked_av`` (README: on, KL, λ₁ 0.1):
  per stage, adaptive-pool the *logits* to the map size, sigmoid, multiply the map, mean over
  h·w (or ÷ the >0.5 area with ``threshold``), optionally L2-normalise (``norm_fea``), then
  ``kl_div(log softmax(v), softmax(a), reduction="sum")`` (``kl``) or the mean Euclidean distance
  (``euclidean``); averaged over the stages. Neither kl nor euclidean is an error here (the
  original crashes on an undefined name).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pool(logits: Tensor, size: tuple[int, int], kind: str) -> Tensor:
    if kind == "avg":
        return F.adaptive_avg_pool2d(logits, size)
    if kind == "max":
        return F.adaptive_max_pool2d(logits, size)
    raise ValueError(f"--mask_pooling_type must be avg or max, got {kind!r}")


def masked_av_loss(logits: Tensor, audio_feats: list[Tensor], maps: list[Tensor], stages: list[int],
                   pooling: str = "avg", norm_fea: bool = False, threshold: bool = False, kl: bool = True,
                   euclidean: bool = False) -> Tensor:
    """MS3's masked audio-visual matching loss. logits [N, 1, H, W]; audio_feats[s] [B, T, C];
    maps[s] [N, C, h, w] (N = B·T) → scalar."""
    if not stages:
        raise ValueError("--masked_av_stages is empty")
    if not (kl or euclidean):
        raise ValueError("the masked-AV loss needs --kl_flag or --euclidean_flag")
    total = logits.new_zeros(())
    for s in stages:
        a, v = audio_feats[s].reshape(-1, audio_feats[s].shape[-1]), maps[s]
        m = torch.sigmoid(_pool(logits, v.shape[-2:], pooling))
        if threshold:
            m = (m > 0.5).float()
            fea = (v * m).sum((-1, -2)) / (m.sum((-1, -2)) + 1e-6)
        else:
            fea = (v * m).mean((-1, -2))
        if norm_fea:
            a, fea = F.normalize(a, dim=-1), F.normalize(fea, dim=-1)
        if euclidean:
            total = total + F.pairwise_distance(a, fea, p=2).mean()
        else:
            total = total + F.kl_div(fea.softmax(-1).log(), a.softmax(-1), reduction="sum")
    return total / len(stages)


def audio_visual_cosine_loss(logits: Tensor, audio_feats: list[Tensor], maps: list[Tensor], stages: list[int],
                             pooling: str = "avg") -> Tensor:
    """S4's optional ``--sa_loss_flag`` loss (AVSBench Loss_AVM_AV, normalised features)."""
    total = logits.new_zeros(())
    for s in stages:
        a, v = audio_feats[s].reshape(-1, audio_feats[s].shape[-1]), maps[s]
        m = (_pool(torch.sigmoid(logits), v.shape[-2:], pooling) > 0.5).float()
        fea = F.normalize((v * m).sum((-1, -2)) / (m.sum((-1, -2)) + 1e-6), dim=-1)
        cos = (fea * F.normalize(a, dim=-1)).sum(-1)
        total = total + (-(F.relu(cos) + 1e-6).log()).mean()
    return total / max(len(stages), 1)


class AVSCriterion(nn.Module):
    """``criterion(outputs, masks [B, M, H, W], mask_frames [B, M])`` → dict(loss, bce, av).

    ``outputs`` is the model's dict (pred_masks [B, T, H, W], fpn_maps, audio_feats). The BCE
    uses the predicted frames named by ``mask_frames`` (S4 train: frame 0; MS3: all 5).
    ``masked_av`` adds ``lambda_1`` × the masked-AV loss over ``stages``: KL / Euclidean as
    :func:`masked_av_loss`; for S4 with neither, the AVSBench cosine loss (``--sa_loss_flag``).
    NaN logits (a diverged run) give a NaN ``bce`` and ``loss``, not BCELoss's error, so that
    :func:`utils.engine.train_one_epoch` stops the run in one line naming the epoch and step.
    """

    def __init__(self, task: str = "s4", masked_av: bool = False, stages: list[int] | None = None,
                 lambda_1: float = 0.0, kl: bool = False, euclidean: bool = False, norm_fea: bool = False,
                 threshold: bool = False, pooling: str = "avg") -> None:
        super().__init__()
        self.task, self.masked_av, self.lambda_1 = task, masked_av, lambda_1
        self.stages = list(stages) if stages is not None else [0, 1, 2, 3]
        self.kl, self.euclidean, self.norm_fea = kl, euclidean, norm_fea
        self.threshold, self.pooling = threshold, pooling

    def forward(self, outputs: dict, masks: Tensor, mask_frames: Tensor) -> dict[str, Tensor]:
        pred = outputs["pred_masks"]  # [B, T, H, W]
        picked = torch.gather(pred, 1, mask_frames[:, :, None, None].expand(-1, -1, *pred.shape[-2:]))
        # sigmoid then BCELoss as the original (BCELoss clamps log at -100)
        probs = torch.sigmoid(picked.float())
        if torch.isfinite(probs).all():
            bce = F.binary_cross_entropy(probs, masks.float())
        else:  # NaN logits (a diverged run): BCE would raise; a NaN loss, with the same keys on every process,
            bce = probs.new_full((), float("nan"))  # lets utils.engine stop training in one line naming the step
        av = pred.new_zeros(())
        if self.masked_av:
            logits = pred.flatten(0, 1).unsqueeze(1).float()
            if self.task == "s4" and not (self.kl or self.euclidean):
                av = audio_visual_cosine_loss(logits, outputs["audio_feats"], outputs["fpn_maps"], self.stages,
                                              self.pooling)
            else:
                av = masked_av_loss(logits, outputs["audio_feats"], outputs["fpn_maps"], self.stages, self.pooling,
                                    self.norm_fea, self.threshold, self.kl, self.euclidean)
        return {"loss": bce + self.lambda_1 * av, "bce": bce, "av": av}
