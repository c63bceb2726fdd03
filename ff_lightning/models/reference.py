"""Reference-image conditioning of the keyframe UNet (the VideoGen / Kandinsky Video 1.1 idea) and its guidance.

A reference-conditioned keyframe UNet (``keyframe_unet`` kinds ``ref_*``, see :mod:`ff_lightning.models.keyframes`)
sees, at its input conv, the noisy latents concatenated with two more inputs per folded row ``(b t)``:

``[noisy latents c | reference latent c (zeros on rows that are not given) | mask 1 (1 on given rows)]``

The reference latent of a video ``(b, c, h, w)`` is broadcast to the video's frames and multiplied by the mask, so
only the frames marked as given (frame 0 by default) carry it. :class:`ReferenceInputConv` is the widened input conv:
its first ``c`` input channels are the image model's conv (the *same* parameters, keys ``in_layer.weight`` /
``in_layer.bias``, frozen with the other spatial weights) and the extra ``c + 1`` channels have their own
zero-initialised, bias-free weight ``in_layer.reference_weight``. That is exactly a conv over all ``2c + 1`` channels
with the weight ``[W_image | W_reference]`` (:meth:`ReferenceInputConv.fused` builds that single conv), split in two
so that the image part stays frozen while the new part trains (one weight tensor cannot be half frozen). Zero
``reference_weight`` adds exactly 0, so a converted model ignores the reference until trained.

The optional noise-augmentation level of the reference (a timestep of the training schedule, 0 = clean) is embedded
like the timestep (:func:`reference_level_embedding`, last Linear zero-initialised) and added to the time embedding.

Guidance with text and image (:func:`reference_guided_denoiser`), InstructPix2Pix's two-weight classifier-free
guidance written in the Kandinsky convention (``w = 0`` is no guidance, ``(1 + w) c - w u`` for one condition):

``out = e(I, T) + w_text * (e(I, T) - e(I, 0)) + w_img * (e(I, 0) - e(0, 0))``

with ``e(I, T)`` the model given reference and text, ``e(I, 0)`` reference and the unconditional text branch (null
embedding / negative prompt), ``e(0, 0)`` neither. It is InstructPix2Pix's ``e(0,0) + s_I (e(I,0) - e(0,0)) + s_T
(e(I,T) - e(I,0))`` with ``s = 1 + w``. ``w_img = 0`` is text-only CFG with the reference in both branches; only
the branches a weight needs are computed, in one batched forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from ff_lightning.diffusion.guidance import Condition, Denoiser, concat_conditions, expand_condition
from ff_lightning.models.unet import KandinskyUNet, time_mlp

__all__ = [
    "ReferenceInputConv",
    "reference_level_embedding",
    "reference_rows",
    "pack_reference_input",
    "shared_image_unet",
    "RefModelFn",
    "reference_guided_denoiser",
]

IMAGE_UNET_KEYS = (
    "model_channels", "init_channels", "num_channels", "out_channels", "time_embed_dim", "context_dim", "groups",
    "head_dim", "expansion_ratio", "compression_ratio", "dim_mult", "num_blocks", "add_cross_attention",
    "add_self_attention",
)  # fmt: skip


class ReferenceInputConv(nn.Module):
    """Input conv over ``[noisy c | reference c | mask 1]`` built around the image model's input conv (see the
    module docstring). ``x``: ``(n, 2c + 1, h, w)`` -> ``(n, init_channels, h, w)``.

    ``weight`` / ``bias``: the image conv's parameters (shared, not copied); ``reference_weight``: ``(init_channels,
    c + 1, k, k)``, zero-initialised, no bias.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.stride != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("the reference input conv expects a stride-1, ungrouped, undilated image input conv")
        self.weight = conv.weight
        self.bias = conv.bias
        self.padding = conv.padding
        self.noisy_channels = conv.in_channels
        self.in_channels = 2 * conv.in_channels + 1
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        w = conv.weight
        extra = (conv.out_channels, conv.in_channels + 1, *conv.kernel_size)
        self.reference_weight = nn.Parameter(torch.zeros(extra, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.noisy_channels
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels [noisy | reference | mask], got {x.shape[1]}")
        image = F.conv2d(x[:, :c], self.weight, self.bias, padding=self.padding)
        return image + F.conv2d(x[:, c:], self.reference_weight, padding=self.padding)

    def fused(self) -> nn.Conv2d:
        """The same map as one ``Conv2d(2c + 1 -> init_channels)`` with weight ``[W_image | W_reference]``."""
        w = self.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.padding,
                         bias=self.bias is not None, device=w.device, dtype=w.dtype)  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(torch.cat([w, self.reference_weight], dim=1))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


def reference_level_embedding(init_channels: int, time_embed_dim: int) -> nn.Sequential:
    """Sinusoidal MLP of the reference's noise-augmentation level ``(n,) -> (n, time_embed_dim)``, its last Linear
    zero-initialised (adds exactly 0 to the time embedding until trained)."""
    mlp = time_mlp(init_channels, time_embed_dim)
    nn.init.zeros_(mlp[3].weight)
    nn.init.zeros_(mlp[3].bias)
    return mlp


def reference_rows(
    batch: int, num_frames: int, frames: torch.Tensor | int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The mask of given frames per folded row ``(b t,)``: ``frames`` is ``(b, t)`` / ``(b t,)`` (bool or 0/1), or a
    frame index (every video gives that frame), or None (frame 0)."""
    if frames is None or isinstance(frames, int):
        index = 0 if frames is None else frames
        mask = torch.zeros(batch, num_frames, device=device, dtype=dtype)
        mask[:, index] = 1
        return mask.flatten()
    frames = torch.as_tensor(frames, device=device).to(dtype)
    if frames.numel() != batch * num_frames:
        raise ValueError(f"reference_frames of {tuple(frames.shape)} for {batch} videos of {num_frames} frames")
    return frames.reshape(-1)


def pack_reference_input(
    x: torch.Tensor,
    num_frames: int,
    reference: torch.Tensor | None,
    frames: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """``[x | reference on the given rows | mask]``: ``x`` ``(b t) c h w``, ``reference`` ``(b, c, h, w)`` per video
    (None: no reference, zeros and mask 0) -> ``(b t) (2c + 1) h w``."""
    rows, c, h, w = x.shape
    b = rows // num_frames
    if reference is None:
        return torch.cat([x, x.new_zeros(rows, c + 1, h, w)], dim=1)
    if reference.shape != (b, c, h, w):
        raise ValueError(f"reference latents {tuple(reference.shape)}, expected {(b, c, h, w)} (one per video)")
    mask = reference_rows(b, num_frames, frames, x.device, x.dtype)[:, None, None, None]  # (b t) 1 1 1
    ref = repeat(reference.to(x.dtype), "b c h w -> (b t) c h w", t=num_frames) * mask  # zeros on rows not given
    return torch.cat([x, ref, mask.expand(rows, 1, h, w)], dim=1)


def shared_image_unet(video_unet: nn.Module) -> KandinskyUNet:
    """The image UNet a video UNet was converted from, sharing its inherited (spatial) parameters: no copy.

    ``video_unet`` is a :class:`~ff_lightning.models.unet_temporal.VideoUNet` whose ``inherited_parameter_names``
    are exactly the image model's keys (true of the keyframe kinds, reference kinds included: the reference input
    conv keeps ``in_layer.weight`` / ``in_layer.bias``). Built on the meta device, then given the very parameter
    objects (``assign``), so it follows the video model's device, dtype and weights, and is frozen where they are.
    """
    names = getattr(video_unet, "inherited_parameter_names", None)
    if not names:
        raise ValueError("not a converted video UNet (no inherited parameters recorded)")
    config = {k: video_unet.config[k] for k in IMAGE_UNET_KEYS}
    with torch.device("meta"):
        image = KandinskyUNet(**config)
    params = dict(video_unet.named_parameters())
    for name, p in image.named_parameters():  # assign copies the target's requires_grad onto the given parameters
        p.requires_grad_(params[name].requires_grad)
    image.load_state_dict({n: params[n] for n in names}, strict=True, assign=True)
    return image


#: ``model_fn(x (N, ...), t (N,), context (V, L, D), mask (V, L) | None, use_reference (V,) bool) -> (N, ...)``:
#: ``V`` videos whose frames are the rows of ``x``; ``use_reference`` says which videos get their reference.
RefModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def reference_guided_denoiser(
    model_fn: RefModelFn,
    cond: Condition,
    uncond: Condition | None,
    text_weight: float,
    image_weight: float,
) -> Denoiser:
    """Two-weight guidance (see the module docstring): ``(x, t) -> e(I,T) + w_t (e(I,T) - e(I,0)) + w_i (e(I,0) -
    e(0,0))``, the needed branches stacked in one forward as rows ``[x; x(; x)]`` and videos ``[cond; uncond(;
    uncond)]`` with ``use_reference`` ``[1; 1(; 0)]``.

    ``cond``: ``(context (V, L, D), mask)``; ``uncond``: the unconditional text branch (batch ``V`` or 1), needed
    unless both weights are 0.
    """
    videos = cond[0].shape[0]
    device = cond[0].device
    if text_weight == 0 and image_weight == 0:
        use = torch.ones(videos, dtype=torch.bool, device=device)

        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_fn(x, t, cond[0], cond[1], use)

        return conditional
    if uncond is None:
        raise ValueError("guidance with a non-zero weight needs an unconditional text branch")
    uncond = expand_condition(uncond, videos)
    branches = 2 if image_weight == 0 else 3
    context, mask = concat_conditions(cond, uncond)
    if branches == 3:
        context, mask = concat_conditions((context, mask), uncond)
    use = torch.ones(branches * videos, dtype=torch.bool, device=device)
    if branches == 3:
        use[2 * videos :] = False  # e(0, 0): neither reference nor text

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn(torch.cat([x] * branches), torch.cat([t] * branches), context, mask, use)
        parts = out.chunk(branches)
        both, image_only = parts[0], parts[1]
        result = both + text_weight * (both - image_only) if text_weight != 0 else both
        if branches == 3:
            result = result + image_weight * (image_only - parts[2])
        return result

    return guided
