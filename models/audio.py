"""VGGish, the audio network of MED-VT++ (torch); its log-mel input is :mod:`datasets.audio`.

VGGish: VGG (conv64-M-conv128-M-conv256×2-M-conv512×2-M, 3×3 convs + ReLU) on [N, 1, 96, 64] →
[N, 512, 6, 4] → flattened in (6, 4, 512) order → 4096 → 4096 → 128, ReLU after each → 128-d,
non-negative. Parameter names follow the torchvggish release (``features.*``, ``embeddings.*``),
so its ``vggish-10086976.pth`` loads directly from a local file. It is frozen in MED-VT++
(eval mode, no gradients, not in the optimiser) and PCA post-processing is off.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn


class VGGish(nn.Module):
    """VGGish embedding network (module docstring): [N, 1, 96, 64] log-mel → [N, 128] (≥ 0)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 6 * 4, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).permute(0, 2, 3, 1).flatten(1)  # (6, 4, 512) order, as TF-VGGish
        return self.embeddings(x)


def build_frozen_vggish(weights: str | Path | None, allow_random: bool = False) -> VGGish:
    """VGGish in eval mode with gradients off, weights from a local torchvggish file.

    ``weights=None`` raises unless ``allow_random`` (tests and smoke runs only: a random VGGish
    gives meaningless audio features).
    """
    net = VGGish()
    if weights is None or str(weights) == "":
        if not allow_random:
            raise FileNotFoundError("VGGish weights are needed: pass --vggish_weights <vggish-10086976.pth> "
                                    "(the torchvggish release, a local file; nothing is downloaded)")
    else:
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"--vggish_weights {p}: file not found")
        from .convert import CheckpointMismatchError, check_finite, read_checkpoint
        sd = read_checkpoint(p)
        check_finite(sd, str(p))
        sd = {k: v for k, v in sd.items() if not k.startswith("pproc.")}  # PCA parameters: post-processing off
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError:  # another model's file: torch lists every key; one line says what it is not
            ours = net.state_dict()
            fits = sum(k in ours and tuple(ours[k].shape) == tuple(getattr(v, "shape", ())) for k, v in sd.items())
            raise CheckpointMismatchError(f"--vggish_weights {p} is not torchvggish's VGGish (vggish-10086976.pth): "
                                          f"{fits} of its {len(sd)} tensors fit VGGish's {len(ours)}") from None
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net
