"""Optimiser parameter groups and the per-epoch polynomial learning-rate schedule of MED-VT.

Parameter groups (spec avos §4.2). The original Swin training script *meant* to train
everything except the backbone at ``--lr`` and the backbone at ``--lr_backbone``, but a later
branch always overwrote that list (``hasattr(args, 'pretrain_settings')`` is always true), so
what actually ran — and produced the released Swin checkpoint — is:

* ``original``: ``label_propagator.*`` at ``--lr`` (1e-4); **everything else**, backbone and
  transformer included, at ``--lr_backbone`` (1e-5).
* ``intended``: everything except ``backbone.*`` at ``--lr``; ``backbone.*`` at ``--lr_backbone``.
  The original ResNet-101 script used this split (with ``--lr_backbone 1e-6``).

Schedule (``PolynomialLRDecay`` of the original, stepped once per epoch after validation):
``lr_e = (base − end) · (1 − e / (E − 1)) ** power + end`` for epoch e = 0 … E − 1, so epoch 0
trains at the base rate and the last epoch at ``end``.

:class:`WarmupDecayLR`: the original A2D script's ``--use_lr_warmup`` (a linear warm-up before a
poly, step or cosine decay), as that script ran it.
"""
from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

LR_GROUPS = ("original", "intended")


def param_groups(model: nn.Module, lr: float, lr_backbone: float, mode: str = "original") -> list[dict]:
    """AdamW parameter groups; see the module docstring for ``mode``. Frozen parameters are left out."""
    if mode not in LR_GROUPS:
        raise ValueError(f"--lr_groups must be one of {LR_GROUPS}, got {mode!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mode == "original":
        fast = [p for n, p in named if n.startswith("label_propagator.")]
        slow = [p for n, p in named if not n.startswith("label_propagator.")]
        groups = [{"params": fast, "lr": lr, "name": "label_propagator"},
                  {"params": slow, "lr": lr_backbone, "name": "rest"}]
    else:
        fast = [p for n, p in named if not n.startswith("backbone.")]
        slow = [p for n, p in named if n.startswith("backbone.")]
        groups = [{"params": fast, "lr": lr, "name": "non_backbone"},
                  {"params": slow, "lr": lr_backbone, "name": "backbone"}]
    return [g for g in groups if g["params"]]


def poly_lr(base: float, end_lr: float, step: int, max_steps: int, power: float) -> float:
    """Polynomial decay from ``base`` at step 0 to ``end_lr`` at ``max_steps`` (and after)."""
    return (base - end_lr) * (1 - min(step, max_steps) / max_steps) ** power + end_lr


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine decay from ``base`` at step 0 to 0 at ``steps`` (``CosineAnnealingLR``, eta_min 0)."""
    return base * (1 + math.cos(math.pi * step / steps)) / 2


class PolyLR(LRScheduler):
    """Polynomial decay from each group's base lr to ``end_lr`` over ``max_steps`` steps (then constant)."""

    def __init__(self, optimizer: Optimizer, max_steps: int, end_lr: float = 1e-6, power: float = 0.9,
                 last_epoch: int = -1) -> None:
        self.max_steps = max(int(max_steps), 1)  # a one-epoch run has nothing to decay over
        self.end_lr = end_lr
        self.power = power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def lr_at(self, base: float, step: int) -> float:
        return poly_lr(base, self.end_lr, max(step, 0), self.max_steps, self.power)


DECAYS = ("poly", "step", "cosine")


class WarmupDecayLR(LRScheduler):
    """Per-epoch linear warm-up from 0 over ``warmup_epochs``, then a ``poly``, ``step`` or ``cosine`` decay.

    The sequence is the one the original A2D script (``--use_lr_warmup``) got from its
    ``GradualWarmupScheduler`` (multiplier 1) wrapped around the decay scheduler and stepped with
    ``step(epoch=e)`` after epoch e: the ramp ``k / W`` is indexed by the epoch just trained, so, with
    W = ``warmup_epochs``, epochs 0 and 1 both train at lr 0, epoch e ≤ W + 1 at base · (e − 1) / W,
    epoch W + 2 at the decay's step 0 and epoch e ≥ W + 3 at its step e − 1 − W (step 1 is skipped).
    Decays, with E = ``epochs``: poly from base to ``end_lr`` over E − 1 − W steps (the original crashes
    when its ramp ends with poly; this is what it was written to do), step ×``gamma`` every ``step_size``
    steps, cosine from base to 0 over E − W steps. Stepped once per epoch, after it.
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: int, decay: str, epochs: int, *, end_lr: float = 1e-6,
                 power: float = 0.9, step_size: int = 5, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if warmup_epochs < 1:
            raise ValueError("a warm-up needs warmup_epochs >= 1")
        self.warmup_epochs, self.decay, self.epochs = int(warmup_epochs), decay, int(epochs)
        self.end_lr, self.power, self.step_size, self.gamma = end_lr, power, int(step_size), gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.lr_at(base, self.last_epoch) for base in self.base_lrs]

    def lr_at(self, base: float, epoch: int) -> float:
        """The learning rate of a group with base rate ``base`` during ``epoch`` (0-based)."""
        w, k = self.warmup_epochs, epoch - 1  # k: the epoch the original's scheduler was last stepped with
        if k <= w:
            return base * max(k, 0) / w
        step = 0 if k == w + 1 else k - w
        if self.decay == "poly":
            return poly_lr(base, self.end_lr, step, max(self.epochs - 1 - w, 1), self.power)
        if self.decay == "step":
            return base * self.gamma ** (step // self.step_size)
        return cosine_lr(base, step, max(self.epochs - w, 1))
