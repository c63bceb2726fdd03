"""Masked-frame interpolation baseline (video-LDM style): ``interpolation_unet`` variant ``masked_frame``.

The paper compares FusionFrames' interpolation (three frames per keyframe pair, groups on the batch axis) with
*masked frame interpolation*: a video UNet over the whole output sequence that is told which frames are known. This
module builds that baseline from the same image UNet with the same temporal layers, so that width and depth equal
the FusionFrames model's (:mod:`ff_lightning.models.interpolation`) and only the way frames are laid out differs:

- Rows are the ``T`` frames of each output sequence, folded ``(b t)`` (``T = 4K - 3`` for ``K`` keyframes).
- Input ``2c + 1`` channels per frame: ``[noisy latent c | known-frame latent c (zeros where unknown) | mask 1]``
  (mask 1 on known frames). The image model's input conv weights go to the noisy slice; the known-frame and mask
  slices start at zero, so the untrained model is the image model applied to every noisy frame (keyframes and mask
  have no effect until trained).
- Output ``c`` channels, the image model's output conv unchanged: every frame's prediction (v); the known frames'
  predictions are ignored (their latents are given).
- Temporal conv layers exactly as the FusionFrames interpolation UNet: in every ResNet stage after the spatial conv a
  zero-initialised Conv3d (3,1,1) merged as ``(1 - a) x + a conv(x)`` (``a`` init 0); here the temporal axis is the
  frames of the sequence.
- The same conditioning: skip-frame embedding (``te += a_s emb(s)``) and perturbation level of the known frames
  (``te = (1 - a_p) te + a_p emb_p(tp)``), ``a_s``, ``a_p`` learned, init 0; the null text context.

``forward(x, time, context, context_mask=None, *, num_frames, skip_frames, perturbation_time=None)``; build with
:func:`masked_interpolation_unet_from_t2i` (or the registry: ``interpolation_unet/masked_frame``).
"""

from __future__ import annotations

import copy as copylib
from typing import Any

import torch
from torch import nn

from ff_lightning.models.interpolation import NUM_SKIP_EMBEDDINGS
from ff_lightning.models.temporal import AlphaMerge, flatten_merge_keys
from ff_lightning.models.unet import Block, KandinskyUNet, UNetConditioning, time_mlp
from ff_lightning.models.unet_temporal import VideoUNet, add_temporal_conv, per_row
from ff_lightning.registry import register_variant

__all__ = [
    "MaskedInterpolationUNet",
    "masked_interpolation_unet_from_t2i",
    "build_masked_interpolation_unet",
    "pack_masked_input",
]


class MaskedInterpolationUNet(VideoUNet):
    """The masked-frame interpolation UNet (see the module docstring).

    ``forward``:

    - ``x``: ``(b t) (2c + 1) h w`` from :func:`pack_masked_input`, ``t = num_frames`` frames per video;
    - ``time``: ``(b t,)`` or ``(b,)`` raw timesteps; ``context`` / ``context_mask``: the null context;
    - ``skip_frames``: int or ``(b t,)`` / ``(b,)`` in ``[0, 20)``; ``perturbation_time``: noise level of the known
      frames (default 0).

    Returns ``(b t) c h w``: the prediction for every frame.
    """

    def __init__(self, image_unet: KandinskyUNet) -> None:
        cfg = image_unet.config
        ref = image_unet.in_layer.weight
        ted = cfg["time_embed_dim"]
        embeddings = {
            "perturbation_to_time_embed": time_mlp(cfg["init_channels"], ted).to(device=ref.device, dtype=ref.dtype),
            "skip_embeddings": nn.Embedding(NUM_SKIP_EMBEDDINGS, ted, device="cpu").to(ref.device, ref.dtype),
        }
        super().__init__(image_unet, embeddings)
        self.skip_merge = nn.Parameter(torch.zeros(1, device=ref.device, dtype=ref.dtype))
        self.time_embed_merge = AlphaMerge(0.0).to(device=ref.device, dtype=ref.dtype)
        flatten_merge_keys(self, ("time_embed_merge",))
        self.latent_channels = int(self.in_layer.in_channels)
        self.in_layer = _masked_input_conv(self.in_layer)
        for stage in [m for m in self.modules() if isinstance(m, Block)]:
            add_temporal_conv(stage, (3, 1, 1))
        self.config.update(num_channels=self.in_layer.in_channels, masked_frame=True)
        self.mark_inherited()

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        *,
        num_frames: int,
        skip_frames: int | torch.Tensor,
        perturbation_time: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows = x.shape[0]
        if rows % num_frames:
            raise ValueError(f"batch of {rows} rows is not a multiple of num_frames={num_frames}")
        time = per_row(time, rows, num_frames).to(x.device)
        if context is not None:
            context = per_row(context, rows, num_frames)
        if context_mask is not None:
            context_mask = per_row(context_mask, rows, num_frames)
        skip_frames = per_row(skip_frames, rows, num_frames).to(x.device).long()
        if perturbation_time is None:
            perturbation_time = torch.zeros(rows, device=x.device)
        perturbation_time = per_row(perturbation_time, rows, num_frames).to(x.device)

        time_embed = self.embed_time(time, context, context_mask)
        time_embed = self.time_embed_merge(time_embed, self.perturbation_to_time_embed(perturbation_time))
        time_embed = time_embed + self.skip_merge * self.skip_embeddings(skip_frames)
        return self.forward_features(x, UNetConditioning(time_embed, context, context_mask, num_frames=num_frames))


def _masked_input_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """``c -> init`` input conv -> ``2c + 1 -> init``: ``[noisy | known | mask]``, known and mask slices zero."""
    c = conv.in_channels
    w = conv.weight
    new = nn.Conv2d(
        2 * c + 1, conv.out_channels, conv.kernel_size, padding=conv.padding, device=w.device, dtype=w.dtype
    )
    if w.is_meta:
        return new
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :c].copy_(w)
        new.bias.copy_(conv.bias)
    return new


def pack_masked_input(noisy: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``noisy``, ``known`` ``(n, c, h, w)`` and ``mask`` ``(n,)`` or ``(n, 1, h, w)`` -> ``(n, 2c + 1, h, w)``."""
    if mask.ndim == 1:
        mask = mask.to(noisy.dtype)[:, None, None, None].expand(-1, 1, *noisy.shape[-2:])
    return torch.cat([noisy, known * mask, mask.to(noisy.dtype)], dim=1)


def masked_interpolation_unet_from_t2i(
    unet: KandinskyUNet, *, copy: bool = True, freeze_spatial: bool = False
) -> MaskedInterpolationUNet:
    """Convert an image UNet into the masked-frame interpolation UNet (``copy=False`` consumes ``unet``)."""
    source = copylib.deepcopy(unet) if copy else unet
    model = MaskedInterpolationUNet(source)
    model.freeze_inherited(freeze_spatial)
    return model


def build_masked_interpolation_unet(
    *, freeze_spatial: bool = False, noisy_init: str | None = None, **unet_config: Any
) -> MaskedInterpolationUNet:
    """Registry builder: a fresh image UNet of ``unet_config``, converted (``noisy_init`` accepted and ignored, so one
    config serves both interpolation variants)."""
    image = KandinskyUNet(**unet_config)
    return masked_interpolation_unet_from_t2i(image, copy=False, freeze_spatial=freeze_spatial)


register_variant(
    "interpolation_unet",
    "masked_frame",
    build_masked_interpolation_unet,
    description="masked-frame interpolation baseline: whole sequence (b t), [noisy | known | mask] input, temporal convs",
)
