"""The Kandinsky Video 1.1 interpolation loop (three frames between each pair of keyframes), scheduler-agnostic.

Facts read off the public release (ai-forever/KandinskyVideo, ``model/diffusion.py`` ``p_sample_loop_interpolation``
and ``_get_unconditional_context``, ``t2v_pipeline.py`` ``interpolate_base_frames`` and ``__call__``; nothing copied):

- One row per keyframe pair (``n = keyframes - 1`` groups, all of one video): input ``[left | noisy 3 frames |
  right]``. Every step runs the UNet once on ``2n`` rows, the guided half (the prompt's context, keyframes, temporal
  mask 1) and the unguided half (context = the null embedding as token 0 with only that token unmasked, keyframes
  zeroed, temporal mask 0 with ``use_temporal_mask``, else 1); as one batch of two "videos" of ``n`` groups.
  Guidance ``(1 + w) cond - w uncond``; perturbation level 0 and the skip count on every row.
- Release defaults (:class:`KV11InterpolationOptions`): ``w = 0.5``; skip 3 for the first pass (``fps="medium"``) and
  1 for the second (``"high"``, run on the first pass's output); 10 DDPM steps (v-prediction, trailing spacing, the
  zero-SNR cosine schedule, dynamic thresholding 0.995): the scheduler is passed in as ``step`` / ``timesteps``.
- The output ``(n, 3c, h, w)`` is laid out frame-major (``(t c)``, 3 frames); :func:`interleave_groups` puts each
  group's three frames between its keyframes: ``4 k - 3`` frames, keyframe ``i`` at index ``4 i``.

Not wired into ``ff generate`` (see :data:`ff_lightning.interop.release.UNWIRED`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

__all__ = [
    "KV11_INTERPOLATION_GUIDANCE",
    "KV11_SKIP_FRAMES",
    "KV11_INTERPOLATION_STEPS",
    "KV11InterpolationOptions",
    "unconditional_context",
    "guided_prediction",
    "interpolation_loop",
    "interleave_groups",
]

KV11_INTERPOLATION_GUIDANCE = 0.5  # the release pipeline's interpolation_guidance_scale
KV11_SKIP_FRAMES = {"medium": 3, "high": 1}  # skip count of the first (medium fps) and second (high fps) pass
KV11_INTERPOLATION_STEPS = 10  # the release's interpolation sampler steps
FRAMES = 3


@dataclass(frozen=True)
class KV11InterpolationOptions:
    """The release's interpolation settings (defaults: the first, ``fps="medium"`` pass)."""

    guidance_weight: float = KV11_INTERPOLATION_GUIDANCE
    skip_frames: int = KV11_SKIP_FRAMES["medium"]
    perturbation_time: float = 0.0
    use_temporal_mask: bool = True


def unconditional_context(
    context: torch.Tensor, context_mask: torch.Tensor, null_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's unguided context: zeros shaped like ``context`` ``(n, j, d)`` with the null embedding ``(d,)`` as
    token 0, and the mask ``(n, j)`` with only token 0 set."""
    uncond = torch.zeros_like(context)
    uncond[:, 0] = null_embedding.reshape(-1).to(context.dtype)
    mask = torch.zeros_like(context_mask)
    mask[:, 0] = 1
    return uncond, mask


def guided_prediction(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor | float,
    left: torch.Tensor,
    right: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    null_embedding: torch.Tensor,
    options: KV11InterpolationOptions = KV11InterpolationOptions(),
) -> torch.Tensor:
    """One guided model call: ``x`` ``(n, 3c, h, w)`` noisy groups, ``left`` / ``right`` ``(n, c, h, w)`` keyframes,
    ``context`` ``(n, j, d)``, ``context_mask`` ``(n, j)``; ``model`` an ``interpolation_unet/kv1_1``. Returns the
    guided prediction ``(n, 3c, h, w)``."""
    n = x.shape[0]
    uncond, uncond_mask = unconditional_context(context, context_mask, null_embedding)
    zeros = torch.zeros_like(left)
    rows = torch.cat([torch.cat([left, x, right], 1), torch.cat([zeros, x, torch.zeros_like(right)], 1)])
    mask = torch.ones(2 * n, device=x.device)
    if options.use_temporal_mask:
        mask[n:] = 0
    out = model(
        rows, torch.as_tensor(t, device=x.device).expand(2 * n), torch.cat([context, uncond]),
        torch.cat([context_mask, uncond_mask]).bool(), num_temporal_groups=n, skip_frames=options.skip_frames,
        perturbation_time=options.perturbation_time, temporal_mask=mask,
    )  # fmt: skip
    cond, unguided = out.chunk(2)
    w = options.guidance_weight
    return (1 + w) * cond - w * unguided


def interpolation_loop(
    model: nn.Module,
    keyframes: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    null_embedding: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor,
    step: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    options: KV11InterpolationOptions = KV11InterpolationOptions(),
) -> torch.Tensor:
    """The release's sampling loop: ``keyframes`` ``(k, c, h, w)``, ``noise`` ``(k - 1, 3c, h, w)`` (the start),
    ``context`` / ``context_mask`` one row per group; ``step(prediction, t, x) -> x_prev`` the scheduler's update at
    timestep ``t`` (``timesteps`` in sampling order). Returns the ``(k - 1, 3c, h, w)`` groups."""
    left, right = keyframes[:-1], keyframes[1:]
    x = noise
    for t in timesteps:
        t = int(t)
        pred = guided_prediction(model, x, t, left, right, context, context_mask, null_embedding, options)
        x = step(pred, t, x)
    return x


def interleave_groups(keyframes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``keyframes`` ``(k, c, h, w)`` and ``groups`` ``(k - 1, 3c, h, w)`` -> ``(4k - 3, c, h, w)``: keyframe ``i``
    at ``4 i``, group ``i``'s frames at ``4 i + 1 .. 4 i + 3``."""
    k = keyframes.shape[0]
    middle = rearrange(groups, "g (f c) h w -> g f c h w", f=FRAMES)  # frame-major channels
    pairs = torch.cat([keyframes[:-1, None], middle], dim=1)  # g 4 c h w: keyframe then its three frames
    return torch.cat([rearrange(pairs, "g f c h w -> (g f) c h w"), keyframes[k - 1 :]])
