"""``MoVQModule``: trains the image MoVQ autoencoder (encoder, quantizer, decoder) on frames.

The loss is the shared autoencoder loss (:mod:`ff_lightning.systems.autoencoder`) plus the codebook/commitment loss
(weight ``codebook_weight``, beta inside the quantizer). Frames of a clip are treated as independent images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from omegaconf import DictConfig
from torch import nn

from ff_lightning import registry
from ff_lightning.systems.autoencoder import AutoencoderLossConfig, AutoencoderSystem

__all__ = ["MoVQSystemConfig", "MoVQModule"]


@dataclass
class MoVQSystemConfig(AutoencoderLossConfig):
    codebook_weight: float = 1.0
    init_ckpt: str | None = None  # start from this MoVQ state dict (ours or the official movqgan_270M.ckpt)


class MoVQModule(AutoencoderSystem):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        mc = cfg.model
        self.movq = registry.build(mc.component, mc.variant, mc.preset, **mc.overrides)
        if self.m.init_ckpt:
            from ff_lightning.interop.movq import load_weights

            load_weights(self.movq, self.m.init_ckpt)

    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x = rearrange(video, "b t c h w -> (b t) c h w")  # frames as independent images
        out = self.movq(x)
        return out.sample, x, {"codebook_loss": self.m.codebook_weight * out.codebook_loss}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.movq.parameters() if p.requires_grad]

    def last_layer(self) -> nn.Parameter:
        return self.movq.last_layer
