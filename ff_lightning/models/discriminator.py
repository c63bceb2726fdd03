"""PatchGAN discriminator (the MoVQGAN / taming recipe: hinge loss, 2 layers by default).

Input images ``(N, C, H, W)`` in [-1, 1] (video frames folded as ``(b t)``); output patch logits ``(N, 1, h, w)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Conv(4, stride 2) + LeakyReLU, then ``n_layers - 1`` strided conv/BN/LeakyReLU stages, one stride-1 stage and
    a 1-channel conv. BatchNorm as in the original PatchGAN; weights ~ N(0, 0.02), BN weights ~ N(1, 0.02)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
