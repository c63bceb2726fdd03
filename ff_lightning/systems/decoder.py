"""``DecoderModule``: fine-tunes a video MoVQ decoder (a Table 3 row) over a frozen image MoVQ encoder.

The image MoVQ comes from ``module.movq_ckpt`` (ours, or the official ``movqgan_270M.ckpt``); it is converted to the
``model.variant`` video decoder by :func:`~ff_lightning.models.video_decoder.video_decoder_from_image` (2D weights
bit-exact, temporal parameters at their identity init), optionally loaded from ``module.decoder_ckpt`` (a released
video decoder), and trained under ``module.policy``: ``temporal`` (only added parameters), ``decoder`` (the whole
decoder) or ``none`` (nothing trains: evaluate as is). Encoder, quantizer and the 1x1 convs are always frozen.

Each step: clips ``(B, T, C, H, W)`` -> frozen ``latent = quant_conv(encoder(x))`` per frame -> video decoder over
the T frames of each clip (``num_frames=T``) -> loss against the input frames. Kandinsky decodes un-quantized
latents, so by default so do we (``decode_quantized: true`` decodes the codebook lookup instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from omegaconf import DictConfig
from torch import nn

from ff_lightning import registry
from ff_lightning.config import ConfigError
from ff_lightning.models.video_decoder import apply_finetune_policy, video_decoder_from_image
from ff_lightning.systems.autoencoder import AutoencoderLossConfig, AutoencoderSystem

__all__ = ["DecoderSystemConfig", "DecoderModule", "build_video_movq", "check_config"]

POLICIES = ("decoder", "temporal", "none")


@dataclass
class DecoderSystemConfig(AutoencoderLossConfig):
    movq_ckpt: str | None = None  # the frozen image MoVQ (required unless allow_random_movq)
    allow_random_movq: bool = False  # tests only: a randomly initialised image MoVQ
    decoder_ckpt: str | None = None  # start the video decoder from this state dict (e.g. a released one)
    policy: str = "decoder"  # decoder | temporal | none
    decode_quantized: bool = False
    eval_chunk_frames: int | None = None  # decode long held-out videos in chunks of this many frames


def check_config(cfg: DictConfig) -> None:
    """The checks of a composed decoder config that need no weights (``ff ablate`` runs them on every row first)."""
    m = cfg.module
    if m.policy not in POLICIES:
        raise ConfigError(f"unknown module.policy {m.policy!r}; valid choices: {', '.join(POLICIES)}")
    if cfg.model.component != "decoder":
        raise ConfigError(f"the decoder system needs model.component=decoder, got {cfg.model.component!r}")
    if m.policy == "temporal" and cfg.model.variant == "image":
        raise ConfigError(
            "module.policy=temporal trains only added temporal layers and model.variant=image has none; use "
            "module.policy=decoder or none, or a video variant"
        )


def build_video_movq(cfg: DictConfig) -> nn.Module:
    """The image MoVQ at ``cfg.model.preset`` (weights from ``module.movq_ckpt``) with its decoder converted to
    ``cfg.model.variant`` and the fine-tuning policy applied."""
    check_config(cfg)
    m = cfg.module
    movq = registry.build("movq", "movqgan", cfg.model.preset, **cfg.model.overrides)
    if m.movq_ckpt:
        from ff_lightning.interop.movq import load_weights

        load_weights(movq, m.movq_ckpt)
    elif not m.allow_random_movq:
        raise ConfigError(
            "module.movq_ckpt is not set: the video decoder extends a trained image MoVQ. Pass module.movq_ckpt="
            "/path/to/movq (ours, or the official movqgan_270M.ckpt from the ai-forever/MoVQGAN release for "
            "model.preset=paper), or run `make ablate-decoder`, which trains and caches a tiny one."
        )
    video = video_decoder_from_image(movq, cfg.model.variant)
    if m.decoder_ckpt:
        from ff_lightning.interop.movq import VIDEO_DECODER_DOWNLOAD_HINT, load_weights

        load_weights(video.decoder, m.decoder_ckpt, hint=VIDEO_DECODER_DOWNLOAD_HINT)
    if m.policy == "none":
        video.requires_grad_(False)
    else:
        apply_finetune_policy(video, m.policy)
    return video


class DecoderModule(AutoencoderSystem):
    check_config = staticmethod(check_config)

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        self.movq = build_video_movq(cfg)
        self.train()  # Lightning (2.2+) never calls train(): put the frozen parts in eval mode from the start

    def train(self, mode: bool = True) -> DecoderModule:
        super().train(mode)
        for frozen in (self.movq.encoder, self.movq.quantize, self.movq.quant_conv):
            frozen.eval()  # always frozen: keep them in inference mode too
        return self

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: frames ``(b t) 3 H W`` -> latents ``(b t) 4 h w`` (quantized if ``decode_quantized``)."""
        with torch.no_grad():
            latent = self.movq.encode(frames)
            if self.m.decode_quantized:
                latent = self.movq.quantize(latent)[0]
        return latent

    def reconstruct(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, t = video.shape[:2]
        x = rearrange(video, "b t c h w -> (b t) c h w")  # frames folded into the batch
        pred = self.movq.decode(self.encode(x), num_frames=t)  # (b t) c h w
        return pred, x, {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.movq.parameters() if p.requires_grad]

    def last_layer(self) -> nn.Parameter:
        return self.movq.last_layer
