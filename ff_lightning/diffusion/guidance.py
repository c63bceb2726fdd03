"""Classifier-free guidance as Kandinsky 3 / Kandinsky Video do it: ``(1 + w) * cond - w * uncond``.

``w = 0`` is the conditional model alone (the unconditional pass is skipped). The unconditional branch is the learned
null embedding (:class:`~ff_lightning.models.text.NullEmbedding`: the null vector as the only unmasked token) or, for
a negative prompt, that prompt's projected embedding. Both branches run in one batched forward: the rows of ``x``
are stacked as ``[x; x]`` and the contexts as ``[cond; uncond]``.

A *condition* is a pair ``(context (B, L, D), mask (B, L) bool or None)``. ``B`` may be the number of rows of ``x``
or the number of videos whose frames are folded into the rows (``(b t)``; the keyframe UNet repeats per-video
conditions over frames): stacking both as ``[cond videos | uncond videos]`` keeps rows and videos aligned. Branches of
different token lengths are zero-padded (padding masked) to a common length.

Guidance is linear in the model output, so applying it to eps or to v predictions gives the same guided x0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "Condition",
    "ModelFn",
    "Denoiser",
    "combine_guidance",
    "pad_condition",
    "expand_condition",
    "concat_conditions",
    "guided_denoiser",
]

Condition = tuple[torch.Tensor, torch.Tensor | None]
#: ``model_fn(x (N, ...), t (N,), context (B, L, D), mask (B, L) | None) -> output (N, ...)``
ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
#: ``denoise(x (N, ...), t (N,)) -> output (N, ...)``: what the samplers call
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 + w) * cond - w * uncond`` (the Kandinsky form; ``w = 0`` returns ``cond``, ``w = -1`` ``uncond``)."""
    if weight == 0:
        return cond
    return (1.0 + weight) * cond - weight * uncond


def _full_mask(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones(context.shape[:2], dtype=torch.bool, device=context.device) if mask is None else mask.bool()


def pad_condition(cond: Condition, length: int) -> Condition:
    """Zero-pad ``(context (B, L, D), mask)`` along the tokens to ``length >= L`` (padding masked out)."""
    context, mask = cond
    extra = length - context.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {context.shape[1]} tokens down to {length}")
    if extra == 0:
        return context, mask
    mask = _full_mask(context, mask)
    return F.pad(context, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def expand_condition(cond: Condition, batch: int) -> Condition:
    """A condition of batch 1 (e.g. one negative prompt) repeated to ``batch``; others must already match."""
    context, mask = cond
    if context.shape[0] == batch:
        return context, mask
    if context.shape[0] != 1:
        raise ValueError(f"condition of batch {context.shape[0]} cannot be expanded to {batch}")
    context = context.expand(batch, *context.shape[1:])
    return context, None if mask is None else mask.expand(batch, *mask.shape[1:])


def concat_conditions(first: Condition, second: Condition) -> Condition:
    """``[first; second]`` along the batch, padded to the longer token length: ``(B1 + B2, L, D)``, ``(B1 + B2, L)``."""
    length = max(first[0].shape[1], second[0].shape[1])
    (c1, m1), (c2, m2) = pad_condition(first, length), pad_condition(second, length)
    if m1 is None and m2 is None:
        return torch.cat([c1, c2]), None
    return torch.cat([c1, c2.to(c1.dtype)]), torch.cat([_full_mask(c1, m1), _full_mask(c2, m2)])


def guided_denoiser(model_fn: ModelFn, cond: Condition, uncond: Condition | None, weight: float) -> Denoiser:
    """A denoiser ``(x, t) -> (1 + w) * model(x, cond) - w * model(x, uncond)`` with one batched forward.

    ``cond``: ``(context (B, L, D), mask (B, L))``; ``uncond``: the same layout with batch ``B`` or 1 (broadcast), any
    token length; ignored when ``weight == 0`` (or None: then ``weight`` must be 0).
    """
    if uncond is None and weight != 0:
        raise ValueError("classifier-free guidance with weight != 0 needs an unconditional branch")
    if weight == 0 or uncond is None:
        context, mask = cond

        def conditional(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model_fn(x, t, context, mask)

        return conditional

    both_context, both_mask = concat_conditions(cond, expand_condition(uncond, cond[0].shape[0]))

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), both_context, both_mask)  # rows [cond; uncond]
        c, u = out.chunk(2)
        return combine_guidance(c, u, weight)

    return guided
