"""The Kandinsky 3 text-to-image UNet (registry component ``t2i_unet``, variant ``kandinsky3``).

Layout (module and parameter names follow the released checkpoint, so its state dict loads without a key map):

- ``to_time_embed``: sinusoidal embedding of the timestep (``init_channels`` wide) -> Linear -> SiLU -> Linear.
- ``feature_pooling``: attention from the mean text token (a plain mean over all tokens, padding included, as in the
  release) over the masked text tokens; the result is added to the time embedding.
- ``in_layer`` 3x3 conv -> down levels -> up levels (each after the first concatenates the skip of the mirrored down
  level) -> ``out_layer`` (GroupNorm, SiLU, 3x3 conv).
- Down level ``i`` (``down_samples.i``): a self-attention block (levels with ``add_self_attention``), then per block
  ``[ResNet in->out, cross-attention, ResNet out->out]``; the last ResNet of every level but the deepest halves the
  resolution (a 2x2 stride-2 conv after the second 3x3 conv, and on the shortcut).
- Up level ``i`` (``up_samples.i``) mirrors it: per block ``[ResNet, cross-attention, ResNet]`` (the first ResNet of
  every level but the first doubles the resolution with a 2x2 transposed conv before its first 3x3 conv), then the
  self-attention block.
- ResNet block: 4 stages of ConditionalGroupNorm(time) -> SiLU -> conv, kernels 1, 3, 3, 1, hidden width
  ``max(in, out) // compression_ratio``, plus a shortcut (1x1 conv when the width changes).
- Attention block: ConditionalGroupNorm(time) -> multi-head attention (``head_dim`` per head, bias-free projections)
  -> residual -> ConditionalGroupNorm(time) -> 1x1 feed-forward C -> 4C -> C without bias -> residual.

Frames of a video ride folded in the batch, ``(b t) c h w``; the image model treats every row alone. Video models
(:mod:`ff_lightning.models.keyframes`, :mod:`ff_lightning.models.interpolation`) fill the empty *temporal slots*
declared here (``temporal_projection`` / ``temporal_merge`` of a ResNet stage, ``temporal_layer`` of an attention
block, ``temporal_attention_block`` of a level, entries 3 and 4 of a ``resnet_attn_blocks`` group) and pass the
number of frames and the frame-position embedding through :class:`UNetConditioning`.

Deviation: with ``num_blocks`` 1 the release's up level drops its last width change (its channel plan has one pair
too few); here a single block goes straight from ``in + skip`` to ``out`` width. Paper configs are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from ff_lightning.models.temporal import conv3d_frames, pointwise_conv
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "SinusoidalPosEmb",
    "time_mlp",
    "ConditionalGroupNorm",
    "conv1x1",
    "feed_forward_1x1",
    "Attention",
    "AttentionPooling",
    "AttentionBlock",
    "Block",
    "ResNetBlock",
    "ResNetAttnGroup",
    "BlockArgs",
    "DownLevel",
    "UpLevel",
    "UNetConditioning",
    "KandinskyUNet",
    "UNET_PRESETS",
]


class SinusoidalPosEmb(nn.Module):
    """``(n,)`` scalars -> ``(n, dim)``: ``[sin(x f_j), cos(x f_j)]`` with ``f_j = 10000^(-j / (dim/2 - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        args = x.float()[:, None] * freqs[None, :]  # n half
        return torch.cat((args.sin(), args.cos()), dim=-1)


def time_mlp(init_channels: int, embed_dim: int) -> nn.Sequential:
    """Sinusoidal(init_channels) -> Linear -> SiLU -> Linear: ``(n,)`` scalars -> ``(n, embed_dim)``.

    The timestep, frame-position and perturbation-level embeddings all have this form (keys ``.1.*``, ``.3.*``).
    """
    return nn.Sequential(
        SinusoidalPosEmb(init_channels),
        nn.Linear(init_channels, embed_dim),
        nn.SiLU(),
        nn.Linear(embed_dim, embed_dim),
    )


class ConditionalGroupNorm(nn.Module):
    """``GroupNorm(x) * (1 + scale) + shift`` with ``[scale | shift] = Linear(SiLU(emb))``, the Linear zero-init.

    ``x``: ``(n, c, h, w)``; ``emb``: ``(n, embed_dim)``, one conditioning vector per row. The GroupNorm has no affine
    parameters (eps 1e-5). Keys: ``context_mlp.1.weight`` / ``context_mlp.1.bias``.
    """

    def __init__(self, groups: int, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.context_mlp = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.context_mlp[1].weight)
        nn.init.zeros_(self.context_mlp[1].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.context_mlp(emb).chunk(2, dim=1)  # n (2 c) -> n c, n c
        n, c = x.shape[:2]
        if n and scale.dtype == x.dtype == shift.dtype and scale.shape[0] == n:
            # one fused kernel (forward and backward): the n rows as the channels of a single sample, n * groups
            # groups (each row's groups normalised alone, as before) and a per-(row, channel) affine
            out = F.group_norm(
                x.reshape(1, n * c, *x.shape[2:]), n * self.norm.num_groups, (scale + 1.0).reshape(n * c),
                shift.reshape(n * c), self.norm.eps,
            )  # fmt: skip
            return out.view_as(x)
        return self.norm(x) * (scale + 1.0)[..., None, None] + shift[..., None, None]


def conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; a plain 1x1 ``conv`` runs through :func:`~ff_lightning.models.temporal.pointwise_conv` (a batched
    matmul on float32 CPU input at narrow widths, where the CPU conv kernels are slow)."""
    if (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    ):
        return pointwise_conv(x, conv.weight, conv.bias)
    return conv(x)


def feed_forward_1x1(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The attention blocks' ``Sequential(1x1 conv, SiLU, 1x1 conv)`` with both convs through :func:`conv1x1`."""
    return conv1x1(ffn[2], ffn[1](conv1x1(ffn[0], x)))


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``(n, j)`` key mask (True = attend) -> additive ``(n, 1, 1, j)`` bias: 0 or the dtype's lowest value.

    Masked scores become (almost exactly) the lowest value, as the release's ``masked_fill``: a row whose keys are
    all masked attends uniformly to all of them instead of producing NaN.
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), torch.finfo(dtype).min)
    return rearrange(bias, "n j -> n 1 1 j")  # broadcast over heads and queries


class Attention(nn.Module):
    """Multi-head attention with bias-free projections ``to_query``, ``to_key``, ``to_value``, ``output_layer``.

    ``inner_dim // head_dim`` heads, scale ``head_dim ** -0.5``, computed with ``scaled_dot_product_attention``.
    ``x``: ``(n, i, query_dim)``; ``context``: ``(n, j, context_dim)``; ``context_mask``: ``(n, j)`` bool or None.
    Returns ``(n, i, inner_dim)``.
    """

    def __init__(self, query_dim: int, inner_dim: int, context_dim: int, head_dim: int) -> None:
        super().__init__()
        if inner_dim % head_dim:
            raise ValueError(f"attention width {inner_dim} is not a multiple of head_dim={head_dim}")
        self.num_heads = inner_dim // head_dim
        self.to_query = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_key = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_value = nn.Linear(context_dim, inner_dim, bias=False)
        self.output_layer = nn.Linear(inner_dim, inner_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        # split channels into heads: n tokens (heads d) -> n heads tokens d
        q = rearrange(self.to_query(x), "n i (heads d) -> n heads i d", heads=self.num_heads)
        k = rearrange(self.to_key(context), "n j (heads d) -> n heads j d", heads=self.num_heads)
        v = rearrange(self.to_value(context), "n j (heads d) -> n heads j d", heads=self.num_heads)
        bias = None if context_mask is None else attention_bias(context_mask, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # softmax(q k^T / sqrt(d) + bias) v
        out = rearrange(out, "n heads i d -> n i (heads d)")  # merge heads
        return self.output_layer(out)


class AttentionPooling(nn.Module):
    """Text pooling into the time embedding: ``time_embed + Attention(mean token -> tokens)``.

    ``time_embed``: ``(n, time_embed_dim)``; ``context``: ``(n, j, context_dim)``; ``context_mask``: ``(n, j)``.
    The query is the plain mean over all ``j`` tokens (padding included, as released); the keys are masked.
    """

    def __init__(self, time_embed_dim: int, context_dim: int, head_dim: int) -> None:
        super().__init__()
        self.attention = Attention(context_dim, time_embed_dim, context_dim, head_dim)

    def forward(
        self, time_embed: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pooled = self.attention(context.mean(dim=1, keepdim=True), context, context_mask)  # n 1 time_embed_dim
        return time_embed + pooled[:, 0]


@dataclass
class UNetConditioning:
    """Everything a UNet block may read besides its input.

    - ``time_embed``: ``(n, time_embed_dim)``, one row per input row (text pooling and video merges included).
    - ``context`` / ``context_mask``: ``(n, j, context_dim)`` / ``(n, j)`` bool, or None.
    - ``num_frames``: length of the temporal axis folded into the rows (frames of a keyframe video, interpolation
      groups of the interpolation model); None for the image model.
    - ``frame_embed``: ``(n, time_embed_dim)`` frame-position embedding per row (keyframe models), or None.
    """

    time_embed: torch.Tensor
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    num_frames: int | None = None
    frame_embed: torch.Tensor | None = None

    def require_num_frames(self) -> int:
        """``num_frames``, or a clear error for a temporal layer called without it."""
        if self.num_frames is None:
            raise ValueError("this UNet has temporal layers: pass the number of frames (or interpolation groups)")
        return self.num_frames

    def require_frame_embed(self) -> torch.Tensor:
        """``frame_embed``, or a clear error for a temporal attention called without frame positions."""
        if self.frame_embed is None:
            raise ValueError("temporal attention needs the frame-position embedding (frame positions per row)")
        return self.frame_embed


class AttentionBlock(nn.Module):
    """Self- (``context_dim`` None) or cross-attention over the pixels of each row, then a 1x1 feed-forward.

    Empty temporal slot ``temporal_layer`` (filled by the "temporal layers" keyframe kinds): it runs right after the
    spatial attention's residual. ``x``: ``(n, c, h, w)`` -> same shape.
    """

    def __init__(
        self,
        channels: int,
        time_embed_dim: int,
        context_dim: int | None,
        groups: int,
        head_dim: int,
        expansion_ratio: int,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.is_cross = context_dim is not None
        self.in_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        self.attention = Attention(channels, channels, context_dim or channels, head_dim)
        self.register_module("temporal_layer", None)
        self.out_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        hidden = expansion_ratio * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.in_norm(x, cond.time_embed), "n c h w -> n (h w) c")  # one token per pixel
        if self.is_cross:
            if cond.context is None:
                raise ValueError("this UNet has cross-attention: pass a text context (the null embedding for none)")
            out = self.attention(tokens, cond.context, cond.context_mask)
        else:
            out = self.attention(tokens, tokens)
        x = x + rearrange(out, "n (h w) c -> n c h w", h=h, w=w)  # tokens back to the pixel grid
        if self.temporal_layer is not None:
            x = self.temporal_layer(x, cond)
        return x + feed_forward_1x1(self.feed_forward, self.out_norm(x, cond.time_embed))


class Block(nn.Module):
    """One ResNet stage: ConditionalGroupNorm(time) -> SiLU -> [2x up] -> conv -> [temporal conv] -> [2x down].

    ``resample``: ``"up"`` (a 2x2 stride-2 ConvTranspose2d ``up_sample`` before the conv), ``"down"`` (a 2x2 stride-2
    Conv2d ``down_sample`` after it) or None. Empty temporal slots ``temporal_projection`` (a Conv3d over
    ``b c t h w``) and ``temporal_merge`` (an AlphaMerge): when filled, ``x = (1 - a) x + a conv3d(x)`` right after
    the spatial conv, over ``cond.num_frames`` rows. ``x``: ``(n, c_in, h, w)`` -> ``(n, c_out, h', w')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        kernel_size: int,
        groups: int,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be 'up', 'down' or None, not {resample!r}")
        self.group_norm = ConditionalGroupNorm(groups, in_channels, time_embed_dim)
        up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2) if resample == "up" else None
        self.register_module("up_sample", up)
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        down = nn.Conv2d(out_channels, out_channels, 2, stride=2) if resample == "down" else None
        self.register_module("down_sample", down)
        self.register_module("temporal_projection", None)
        self.register_module("temporal_merge", None)

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        x = F.silu(self.group_norm(x, cond.time_embed))
        if self.up_sample is not None:
            x = self.up_sample(x)
        x = conv1x1(self.projection, x)
        if self.temporal_projection is not None:
            # the Conv3d over the temporal axis of each video, on the folded layout
            temporal = conv3d_frames(self.temporal_projection, x, cond.require_num_frames())
            x = self.temporal_merge(x, temporal)
        if self.down_sample is not None:
            x = self.down_sample(x)
        return x


class ResNetBlock(nn.Module):
    """Four :class:`Block` stages (kernels 1, 3, 3, 1; width ``max(in, out) // compression_ratio`` inside) + shortcut.

    ``resample="up"`` doubles the resolution in stage 1 (and ``shortcut_up_sample``), ``"down"`` halves it in stage 2
    (and ``shortcut_down_sample``), as released. ``x``: ``(n, in, h, w)`` -> ``(n, out, h', w')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        groups: int,
        compression_ratio: int,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        hidden = max(in_channels, out_channels) // compression_ratio
        widths = [(in_channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, out_channels)]
        resample_stage = {"up": 1, "down": 2}.get(resample or "", -1)
        self.resnet_blocks = nn.ModuleList(
            Block(cin, cout, time_embed_dim, k, groups, resample if i == resample_stage else None)
            for i, ((cin, cout), k) in enumerate(zip(widths, (1, 3, 3, 1)))
        )
        up = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2) if resample == "up" else None
        self.register_module("shortcut_up_sample", up)
        proj = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.register_module("shortcut_projection", proj)
        down = nn.Conv2d(out_channels, out_channels, 2, stride=2) if resample == "down" else None
        self.register_module("shortcut_down_sample", down)

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        out = x
        for stage in self.resnet_blocks:
            out = stage(out, cond)
        if self.shortcut_up_sample is not None:
            x = self.shortcut_up_sample(x)
        if self.shortcut_projection is not None:
            x = conv1x1(self.shortcut_projection, x)
        if self.shortcut_down_sample is not None:
            x = self.shortcut_down_sample(x)
        return x + out


class ResNetAttnGroup(nn.ModuleList):
    """One block of a level, in the released index layout: ``[in ResNet, cross-attention or None, out ResNet]``.

    Keyframe "temporal blocks" kinds append ``[in temporal block, out temporal block]`` (indices 3 and 4).
    """

    @property
    def in_resnet(self) -> ResNetBlock:
        return self[0]

    @property
    def attention(self) -> AttentionBlock | None:
        return self[1]

    @property
    def out_resnet(self) -> ResNetBlock:
        return self[2]

    @property
    def in_temporal(self) -> nn.Module | None:
        return self[3] if len(self) > 3 else None

    @property
    def out_temporal(self) -> nn.Module | None:
        return self[4] if len(self) > 4 else None


@dataclass(frozen=True)
class BlockArgs:
    """Hyper-parameters shared by every block of one UNet; builds its ResNet and attention blocks."""

    time_embed_dim: int
    groups: int
    head_dim: int
    expansion_ratio: int
    compression_ratio: int

    def resnet(self, cin: int, cout: int, resample: str | None = None) -> ResNetBlock:
        return ResNetBlock(cin, cout, self.time_embed_dim, self.groups, self.compression_ratio, resample)

    def attention(self, channels: int, context_dim: int | None = None) -> AttentionBlock:
        return AttentionBlock(
            channels, self.time_embed_dim, context_dim, self.groups, self.head_dim, self.expansion_ratio
        )

    def group(self, cin: int, cout: int, context_dim: int | None, resample: str | None, down: bool) -> ResNetAttnGroup:
        """Down levels: ``[ResNet cin->cout, cross(cout), ResNet cout->cout (resample)]``; up levels: ``[ResNet
        cin->cin (resample), cross(cin), ResNet cin->cout]`` (the released layouts)."""
        mid = cout if down else cin
        first = self.resnet(cin, mid, None if down else resample)
        last = self.resnet(mid, cout, resample if down else None)
        return ResNetAttnGroup([first, self.attention(mid, context_dim) if context_dim else None, last])


def _maybe(module: nn.Module | None, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
    return x if module is None else module(x, cond)


class DownLevel(nn.Module):
    """Down level: [self-attention] -> [temporal attention slot] -> groups of (ResNet, cross-attention, ResNet),
    the last ResNet halving the resolution when ``down_sample``.

    In a group the temporal blocks (if any) follow their ResNet. ``x``: ``(n, in, h, w)`` -> ``(n, out, h', w')``.
    """

    def __init__(
        self, cin: int, cout: int, context_dim: int | None, num_blocks: int, args: BlockArgs, down_sample: bool,
        self_attention: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.register_module("self_attention_block", args.attention(cin) if self_attention else None)
        self.register_module("temporal_attention_block", None)
        widths = [(cin, cout)] + [(cout, cout)] * (num_blocks - 1)
        self.resnet_attn_blocks = nn.ModuleList(
            args.group(a, b, context_dim, "down" if down_sample and i == num_blocks - 1 else None, down=True)
            for i, (a, b) in enumerate(widths)
        )

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        x = _maybe(self.self_attention_block, x, cond)
        x = _maybe(self.temporal_attention_block, x, cond)
        for group in self.resnet_attn_blocks:
            x = _maybe(group.in_temporal, group.in_resnet(x, cond), cond)
            x = _maybe(group.attention, x, cond)
            x = _maybe(group.out_temporal, group.out_resnet(x, cond), cond)
        return x


class UpLevel(nn.Module):
    """Up level: groups of (ResNet, cross-attention, ResNet), the first ResNet doubling the resolution when
    ``up_sample`` -> [temporal attention slot] -> [self-attention].

    In a group the temporal blocks (if any) precede their ResNet. ``x``: ``(n, cin + skip, h, w)`` (the skip
    already concatenated) -> ``(n, cout, h', w')``.
    """

    def __init__(
        self, cin: int, skip: int, cout: int, context_dim: int | None, num_blocks: int, args: BlockArgs,
        up_sample: bool, self_attention: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        if num_blocks == 1:  # see the module docstring: the release would drop the width change here
            widths = [(cin + skip, cout)]
        else:
            widths = [(cin + skip, cin)] + [(cin, cin)] * (num_blocks - 2) + [(cin, cout)]
        self.resnet_attn_blocks = nn.ModuleList(
            args.group(a, b, context_dim, "up" if up_sample and i == 0 else None, down=False)
            for i, (a, b) in enumerate(widths)
        )
        self.register_module("temporal_attention_block", None)
        self.register_module("self_attention_block", args.attention(cout) if self_attention else None)

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        for group in self.resnet_attn_blocks:
            x = group.in_resnet(_maybe(group.in_temporal, x, cond), cond)
            x = _maybe(group.attention, x, cond)
            x = group.out_resnet(_maybe(group.out_temporal, x, cond), cond)
        x = _maybe(self.temporal_attention_block, x, cond)
        return _maybe(self.self_attention_block, x, cond)


class KandinskyUNet(nn.Module):
    """The Kandinsky 3 UNet. Constructor arguments are the released config keys (see :data:`UNET_PRESETS`).

    ``forward(x, time, context, context_mask)``: ``x`` ``(n, num_channels, h, w)`` (frames of videos folded as
    ``(b t)``; ``h``, ``w`` divisible by ``2 ** (levels - 1)``), ``time`` ``(n,)`` raw timestep values, ``context``
    ``(n, j, context_dim)`` text tokens, ``context_mask`` ``(n, j)`` bool (True = real token; None = all real).
    Returns ``(n, out_channels, h, w)``. This is also the release's call signature.

    :meth:`set_gradient_checkpointing` makes training recompute each down/up level's activations in the backward pass
    instead of storing them (``torch.utils.checkpoint``, non-reentrant): same gradients, less memory, about one more
    forward pass of compute. It is off by default and never changes the state dict.
    """

    gradient_checkpointing: bool = False

    def __init__(
        self,
        *,
        model_channels: int,
        init_channels: int | None = None,
        num_channels: int = 4,
        out_channels: int = 4,
        time_embed_dim: int,
        context_dim: int,
        groups: int = 32,
        head_dim: int = 64,
        expansion_ratio: int = 4,
        compression_ratio: int = 2,
        dim_mult: Sequence[int] = (1, 2, 4, 8),
        num_blocks: Sequence[int] = (3, 3, 3, 3),
        add_cross_attention: Sequence[bool] = (False, True, True, True),
        add_self_attention: Sequence[bool] = (False, True, True, True),
    ) -> None:
        super().__init__()
        init_channels = init_channels or model_channels
        levels = len(dim_mult)
        if not len(num_blocks) == len(add_cross_attention) == len(add_self_attention) == levels:
            raise ValueError("dim_mult, num_blocks, add_cross_attention and add_self_attention need one entry a level")
        self.config: dict[str, Any] = dict(
            model_channels=model_channels, init_channels=init_channels, num_channels=num_channels,
            out_channels=out_channels, time_embed_dim=time_embed_dim, context_dim=context_dim, groups=groups,
            head_dim=head_dim, expansion_ratio=expansion_ratio, compression_ratio=compression_ratio,
            dim_mult=tuple(dim_mult), num_blocks=tuple(num_blocks),
            add_cross_attention=tuple(add_cross_attention), add_self_attention=tuple(add_self_attention),
        )  # fmt: skip
        self.to_time_embed = time_mlp(init_channels, time_embed_dim)
        self.feature_pooling = AttentionPooling(time_embed_dim, context_dim, head_dim)
        self.in_layer = nn.Conv2d(num_channels, init_channels, 3, padding=1)

        widths = [init_channels, *(model_channels * m for m in dim_mult)]
        args = BlockArgs(time_embed_dim, groups, head_dim, expansion_ratio, compression_ratio)
        text = [context_dim if cross else None for cross in add_cross_attention]
        last = levels - 1
        self.down_samples = nn.ModuleList(
            DownLevel(widths[i], widths[i + 1], text[i], num_blocks[i], args, i != last, add_self_attention[i])
            for i in range(levels)
        )
        self.up_samples = nn.ModuleList(  # deepest first; every level but the deepest gets its down level's skip
            UpLevel(
                widths[i + 1], widths[i + 1] if i != last else 0, widths[i], text[i], num_blocks[i], args,
                i != last, add_self_attention[i],
            )
            for i in reversed(range(levels))
        )  # fmt: skip
        self.out_layer = nn.Sequential(
            nn.GroupNorm(groups, init_channels), nn.SiLU(), nn.Conv2d(init_channels, out_channels, 3, padding=1)
        )

    def _adopt(self, image_unet: KandinskyUNet, embeddings: Mapping[str, nn.Module | None]) -> None:
        """Take over the modules of ``image_unet`` (shared, not copied), registering ``embeddings`` after
        ``feature_pooling`` (the released order). For video subclasses built around an image UNet."""
        self.config = dict(image_unet.config)
        self.to_time_embed = image_unet.to_time_embed
        self.feature_pooling = image_unet.feature_pooling
        for name, module in embeddings.items():
            self.add_module(name, module)
        self.in_layer = image_unet.in_layer
        self.down_samples = image_unet.down_samples
        self.up_samples = image_unet.up_samples
        self.out_layer = image_unet.out_layer

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the levels' activations in the backward pass (training with gradients only)."""
        self.gradient_checkpointing = bool(enabled)

    def _level(self, level: nn.Module, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(level, x, cond, use_reentrant=False)
        return level(x, cond)

    def embed_time(
        self, time: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``(n,)`` timesteps (+ text) -> ``(n, time_embed_dim)``: the timestep MLP plus the pooled text."""
        time_embed = self.to_time_embed(time)
        if context is not None:
            time_embed = self.feature_pooling(time_embed, context, context_mask)
        return time_embed

    def forward_features(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        """The trunk shared by every model built on this UNet: ``(n, c_in, h, w)`` -> ``(n, c_out, h, w)``."""
        x = self.in_layer(x)
        skips = []
        for level, down in enumerate(self.down_samples):
            x = self._level(down, x, cond)
            if level != len(self.down_samples) - 1:
                skips.append(x)
        for level, up in enumerate(self.up_samples):
            if level != 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._level(up, x, cond)
        return self.out_layer(x)

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cond = UNetConditioning(self.embed_time(time, context, context_mask), context, context_mask)
        return self.forward_features(x, cond)


# Presets shared by the three UNet components (keyframe presets add ``num_frames``). ``paper`` is the released
# Kandinsky 3 config (the manifests' ``config``).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model_channels=32, init_channels=16, num_channels=4, out_channels=4, time_embed_dim=64, context_dim=32,
        groups=8, head_dim=16, expansion_ratio=4, compression_ratio=2, dim_mult=(1, 2), num_blocks=(1, 1),
        add_cross_attention=(False, True), add_self_attention=(False, True),
    ),
    "small": dict(
        model_channels=64, init_channels=32, num_channels=4, out_channels=4, time_embed_dim=256, context_dim=256,
        groups=16, head_dim=32, expansion_ratio=4, compression_ratio=2, dim_mult=(1, 2, 4), num_blocks=(2, 2, 2),
        add_cross_attention=(False, True, True), add_self_attention=(False, True, True),
    ),
    "paper": dict(
        model_channels=384, init_channels=192, num_channels=4, out_channels=4, time_embed_dim=1536, context_dim=4096,
        groups=32, head_dim=64, expansion_ratio=4, compression_ratio=2, dim_mult=(1, 2, 4, 8), num_blocks=(3, 3, 3, 3),
        add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True),
    ),
}  # fmt: skip

register_component("t2i_unet", UNET_PRESETS, "Kandinsky 3 text-to-image UNet")
register_variant(
    "t2i_unet", "kandinsky3", KandinskyUNet, description="Kandinsky 3 UNet (3.04B params at the paper preset)"
)
