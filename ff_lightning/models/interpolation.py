"""Interpolation UNet (Kandinsky Video 1.0): three frames between each pair of keyframes (``interpolation_unet``).

:func:`interpolation_unet_from_t2i` converts a Kandinsky 3 image UNet (released layout, keys as released):

- Input: 20 channels ``[left keyframe 4 | three noisy frames 3x4 | right keyframe 4]`` (for a 4-channel latent).
  The image model's input-conv weights are shared by the three noisy-frame slices, each getting ``W / 3``
  (``noisy_init="mean"``, default): the untrained model sees the mean of the three noisy frames, so three equal noisy
  frames give exactly the image model's features. ``noisy_init="middle"`` puts ``W`` on the middle frame alone (the
  image model applied to the middle frame; the input noise level then matches the timestep exactly, where the mean of
  three independently noised frames has less noise). The keyframe slices start at zero (no effect until trained);
  the bias is copied.
- Output: 12 channels, three frames ``(3 c)``; the output conv's weight and bias are the image model's replicated
  three times, so the untrained model predicts three identical frames.
- Inside every ResNet stage, after the spatial conv (before any down-sampling conv): a zero-initialised Conv3d
  (3,1,1) merged as ``(1 - a) x + a conv(x)`` (``temporal_projection`` / ``temporal_merge``, ``a`` init 0). Its time
  axis is the sequence of interpolation groups of a video (``num_temporal_groups``, one group per keyframe pair), not
  the three frames inside a group.
- Conditioning: ``te = (1 - a_p) te + a_p emb_p(tp)`` with ``emb_p`` a sinusoidal MLP of the perturbation level ``tp``
  (``perturbation_to_time_embed``, ``time_embed_merge``), then ``te += a_s skip_embeddings(s)`` for the skip-frame
  count ``s`` (``Embedding(20, time_embed_dim)``, ``skip_merge``); ``a_p``, ``a_s`` learned, init 0.
- No text: the context is the text encoder's null embedding; :func:`null_context` builds it as the release does (one
  null token and one masked padding token). The model holds no null embedding (the released one does not either).

The converted model equals the image model at initialisation in the sense above (three copies of its output for the
noisy frames, keyframes ignored). ``freeze_spatial`` (default False: the release fine-tunes the whole UNet) freezes the
inherited weights; the re-shaped in/out convs, temporal convs, embeddings and merges stay trainable.
"""

from __future__ import annotations

import copy as copylib
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from ff_lightning.models.temporal import AlphaMerge, flatten_merge_keys
from ff_lightning.models.unet import UNET_PRESETS, Block, KandinskyUNet, UNetConditioning, time_mlp
from ff_lightning.models.unet_temporal import VideoUNet, add_temporal_conv, per_row
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "NUM_SKIP_EMBEDDINGS",
    "NOISY_INIT",
    "InterpolationUNet",
    "interpolation_unet_from_t2i",
    "pack_interpolation_input",
    "unpack_frames",
    "null_context",
]

NUM_SKIP_EMBEDDINGS = 20
FRAMES_PER_GROUP = 3
NOISY_INIT = ("mean", "middle")


class InterpolationUNet(VideoUNet):
    """The interpolation UNet; build with :func:`interpolation_unet_from_t2i`.

    ``forward(x, time, context, context_mask=None, *, num_temporal_groups, skip_frames, perturbation_time=None)``:

    - ``x``: ``(b g) (5 c) h w``, one row per interpolation group (see :func:`pack_interpolation_input`), ``g =
      num_temporal_groups`` consecutive groups per video.
    - ``time``: ``(b g,)`` or ``(b,)`` raw timesteps; ``context`` / ``context_mask``: the null embedding
      (:func:`null_context`), per row or per video.
    - ``skip_frames``: int or ``(b g,)`` / ``(b,)`` in ``[0, 20)``: frames skipped between neighbouring outputs.
    - ``perturbation_time``: noise level of the conditioning keyframes (``(b g,)``, ``(b,)`` or scalar; default 0,
      what the release feeds at inference).

    Returns ``(b g) (3 c) h w``, the three middle frames of each group (:func:`unpack_frames`).
    :meth:`forward_official` takes the release's signature.
    """

    def __init__(self, image_unet: KandinskyUNet, noisy_init: str = "mean") -> None:
        if noisy_init not in NOISY_INIT:
            raise ValueError(f"noisy_init must be one of {NOISY_INIT}, not {noisy_init!r}")
        cfg = image_unet.config
        ref = image_unet.in_layer.weight
        ted = cfg["time_embed_dim"]
        embeddings = {
            "perturbation_to_time_embed": time_mlp(cfg["init_channels"], ted).to(device=ref.device, dtype=ref.dtype),
            # built on CPU, then moved: normal_ on a meta tensor would import torch._dynamo (seconds)
            "skip_embeddings": nn.Embedding(NUM_SKIP_EMBEDDINGS, ted, device="cpu").to(ref.device, ref.dtype),
        }
        super().__init__(image_unet, embeddings)
        self.skip_merge = nn.Parameter(torch.zeros(1, device=ref.device, dtype=ref.dtype))  # a_s, additive gate
        self.time_embed_merge = AlphaMerge(0.0).to(device=ref.device, dtype=ref.dtype)  # a_p
        flatten_merge_keys(self, ("time_embed_merge",))
        self.in_layer = _grouped_input_conv(self.in_layer, noisy_init)
        self.out_layer[2] = _replicated_output_conv(self.out_layer[2])
        for stage in [m for m in self.modules() if isinstance(m, Block)]:
            add_temporal_conv(stage, (3, 1, 1))
        self.config.update(
            num_channels=self.in_layer.in_channels, out_channels=self.out_layer[2].out_channels, interpolation=True,
            noisy_init=noisy_init,
        )  # fmt: skip
        self.mark_inherited()

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        *,
        num_temporal_groups: int,
        skip_frames: int | torch.Tensor,
        perturbation_time: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        rows, groups = x.shape[0], num_temporal_groups
        if rows % groups:
            raise ValueError(f"batch of {rows} rows is not a multiple of num_temporal_groups={groups}")
        time = per_row(time, rows, groups).to(x.device)
        if context is not None:
            context = per_row(context, rows, groups)
        if context_mask is not None:
            context_mask = per_row(context_mask, rows, groups)
        skip_frames = per_row(skip_frames, rows, groups).to(x.device).long()
        if perturbation_time is None:
            perturbation_time = torch.zeros(rows, device=x.device)
        perturbation_time = per_row(perturbation_time, rows, groups).to(x.device)

        time_embed = self.embed_time(time, context, context_mask)
        time_embed = self.time_embed_merge(time_embed, self.perturbation_to_time_embed(perturbation_time))
        time_embed = time_embed + self.skip_merge * self.skip_embeddings(skip_frames)
        cond = UNetConditioning(time_embed, context, context_mask, num_frames=groups)
        return self.forward_features(x, cond)

    def forward_official(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        temporal_embed: torch.Tensor | None = None,
        skip_frames: torch.Tensor | None = None,
        num_temporal_groups: int | None = None,
    ) -> torch.Tensor:
        """The release's call (``temporal_embed`` is keyframe-only; the perturbation level is 0 as released)."""
        if temporal_embed is not None:
            raise ValueError("temporal_embed (frame positions) belongs to the keyframe UNet")
        if skip_frames is None or num_temporal_groups is None:
            raise ValueError("the interpolation UNet needs skip_frames and num_temporal_groups")
        return self.forward(
            x, time, context, context_mask, num_temporal_groups=num_temporal_groups, skip_frames=skip_frames
        )


def _grouped_input_conv(conv: nn.Conv2d, noisy_init: str) -> nn.Conv2d:
    """``c -> init`` input conv -> ``5c -> init``: ``[left | noisy x3 | right]``, keyframe slices zero."""
    c = conv.in_channels
    w = conv.weight
    new = nn.Conv2d(5 * c, conv.out_channels, conv.kernel_size, padding=conv.padding, device=w.device, dtype=w.dtype)
    if w.is_meta:  # shapes only (arithmetic on meta tensors would import torch._dynamo, which takes seconds)
        return new
    with torch.no_grad():
        new.weight.zero_()
        if noisy_init == "mean":
            for frame in range(FRAMES_PER_GROUP):
                new.weight[:, c * (1 + frame) : c * (2 + frame)].copy_(w / FRAMES_PER_GROUP)
        else:  # middle
            new.weight[:, 2 * c : 3 * c].copy_(w)
        new.bias.copy_(conv.bias)
    return new


def _replicated_output_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """``init -> c`` output conv -> ``init -> 3c`` with its weight and bias repeated for the three frames."""
    w = conv.weight
    out = FRAMES_PER_GROUP * conv.out_channels
    new = nn.Conv2d(conv.in_channels, out, conv.kernel_size, padding=conv.padding, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(repeat(w, "o i kh kw -> (f o) i kh kw", f=FRAMES_PER_GROUP))  # frame-major output channels
        new.bias.copy_(repeat(conv.bias, "o -> (f o)", f=FRAMES_PER_GROUP))  # same layout as the weight
    return new


def pack_interpolation_input(left: torch.Tensor, noisy: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``left`` / ``right`` keyframes ``(n, c, h, w)`` and ``noisy`` frames ``(n, 3, c, h, w)`` -> ``(n, 5c, h, w)``."""
    return torch.cat([left, rearrange(noisy, "n f c h w -> n (f c) h w"), right], dim=1)  # frames side by side


def unpack_frames(out: torch.Tensor) -> torch.Tensor:
    """Model output ``(n, 3c, h, w)`` -> ``(n, 3, c, h, w)``."""
    return rearrange(out, "n (f c) h w -> n f c h w", f=FRAMES_PER_GROUP)  # frame-major channels -> frames axis


def null_context(null_embedding: torch.Tensor, rows: int, num_tokens: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's interpolation context: ``(rows, num_tokens, d)`` with the null embedding ``(d,)`` as token 0
    and zero padding after it, and the mask ``(rows, num_tokens)`` with only token 0 True."""
    context = null_embedding.new_zeros(rows, num_tokens, null_embedding.shape[-1])
    context[:, 0] = null_embedding.reshape(-1)
    mask = torch.zeros(rows, num_tokens, dtype=torch.bool, device=null_embedding.device)
    mask[:, 0] = True
    return context, mask


def interpolation_unet_from_t2i(
    unet: KandinskyUNet, *, copy: bool = True, freeze_spatial: bool = False, noisy_init: str = "mean"
) -> InterpolationUNet:
    """Convert an image UNet into the interpolation UNet (see the module docstring).

    ``copy=False`` takes ``unet``'s modules over in place (``unet`` is consumed). Works on the meta device.
    """
    source = copylib.deepcopy(unet) if copy else unet
    model = InterpolationUNet(source, noisy_init=noisy_init)
    model.freeze_inherited(freeze_spatial)
    return model


def build_interpolation_unet(
    *, noisy_init: str = "mean", freeze_spatial: bool = False, **unet_config: Any
) -> InterpolationUNet:
    """Registry builder: a fresh image UNet of ``unet_config``, converted."""
    image = KandinskyUNet(**unet_config)
    return interpolation_unet_from_t2i(image, copy=False, freeze_spatial=freeze_spatial, noisy_init=noisy_init)


register_component("interpolation_unet", UNET_PRESETS, "Kandinsky Video interpolation UNet (3 frames per key pair)")
register_variant(
    "interpolation_unet",
    "kandinsky_video",
    build_interpolation_unet,
    description="released Kandinsky Video 1.0 interpolation UNet (20 in / 12 out channels, temporal convs)",
)
