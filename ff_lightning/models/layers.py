"""Building blocks of the MoVQ autoencoder and its video decoders.

Every block takes frames folded into the batch, ``(b t) c h w``. Spatial blocks never look across rows; temporal
pieces unfold ``(b t)`` with einops inside their forward (``num_frames`` is passed with each call). Module and
parameter names follow the released MoVQGAN / Kandinsky Video checkpoints, so state dicts load without a key map.

Norms: the encoder uses a plain GroupNorm; every decoder norm is a :class:`SpatialNorm` conditioned on the latent
``zq``. Both accept ``(x, zq)`` so blocks are written once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ff_lightning.models.temporal import AlphaMerge, flatten_merge_keys, fold_frames, unfold_frames, zero_module

__all__ = [
    "GroupNorm",
    "SpatialNorm",
    "make_norm",
    "ResnetBlock",
    "AttnBlock",
    "TemporalAttnBlock",
    "TemporalResnetBlock",
    "Upsample",
    "Downsample",
    "inflate_conv_weight",
]

EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (affine, eps 1e-6) that accepts and ignores ``zq``, so it can stand in for SpatialNorm."""

    def __init__(self, channels: int, num_groups: int = 32) -> None:
        super().__init__(num_groups, channels, eps=EPS, affine=True)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class SpatialNorm(nn.Module):
    """MoVQ's latent-conditioned norm: ``GroupNorm(x) * conv_y(zq') + conv_b(zq')``.

    ``x``: ``(n, c, h, w)``; ``zq``: ``(n, zq_channels, h', w')``, resized to ``(h, w)`` by nearest interpolation
    (``zq'``); ``conv_y`` / ``conv_b`` are 1x1 convs. With ``zq=None`` it is the plain affine GroupNorm (the released
    temporal-attention blocks call it that way).
    """

    def __init__(self, channels: int, zq_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_groups, channels, eps=EPS, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_layer(x)
        if zq is None:
            return h
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return h * self.conv_y(zq) + self.conv_b(zq)


def make_norm(channels: int, zq_channels: int | None, num_groups: int = 32) -> nn.Module:
    """SpatialNorm when ``zq_channels`` is given (decoder), else a GroupNorm (encoder)."""
    if zq_channels is None:
        return GroupNorm(channels, num_groups)
    return SpatialNorm(channels, zq_channels, num_groups)


def inflate_conv_weight(weight: torch.Tensor, frames: int = 3) -> torch.Tensor:
    """2D kernel ``(o, i, kh, kw)`` -> 3D kernel ``(o, i, frames, kh, kw)``: centre tap = the 2D kernel, others 0.

    A Conv3d with this kernel and temporal zero padding ``frames // 2`` equals the 2D conv on every frame.
    """
    out = weight.new_zeros(*weight.shape[:2], frames, *weight.shape[2:])
    out[:, :, frames // 2] = weight
    return out


def _conv3x3(cin: int, cout: int, video: bool) -> nn.Module:
    """A 3x3 "same" conv: a Conv2d, or for the 2D->3D decoder a 3x3x3 Conv3d starting as the inflated Conv2d."""
    conv2d = nn.Conv2d(cin, cout, 3, padding=1)
    if not video:
        return conv2d
    conv3d = nn.Conv3d(cin, cout, 3, padding=1)
    with torch.no_grad():
        conv3d.weight.copy_(inflate_conv_weight(conv2d.weight))
        conv3d.bias.copy_(conv2d.bias)
    return conv3d


def _frame_conv(conv: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Apply a Conv2d per frame, or a Conv3d over the frames of each video. ``x``: ``(b t) c h w``."""
    if isinstance(conv, nn.Conv3d):
        return fold_frames(conv(unfold_frames(x, num_frames)))  # (b t) c h w -> b c t h w -> conv -> (b t) c h w
    return conv(x)


class ResnetBlock(nn.Module):
    """norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> dropout -> conv2, plus a (1x1 ``nin_shortcut``) residual.

    Video options (decoder only):

    - ``temporal_kernel`` (e.g. ``(3, 1, 1)`` or ``(3, 3, 3)``): after conv1 and after conv2 a "same"-padded Conv3d
      over ``b c t h w`` (``temporal_projection1/2``, zero-initialised) is blended in with an :class:`AlphaMerge`
      (``temporal_merge1/2``, init 0): ``h = (1 - a) * h + a * conv3d(h)``. Saved as bare ``temporal_merge1/2``.
    - ``video_convs``: conv1/conv2 are 3x3x3 Conv3d over the frames of each video (temporal zero padding 1),
      initialised as the inflated 2D kernels (the 2D->3D decoder).

    ``x``: ``(b t) c_in h w``; ``zq``: ``(b t) z h' w'`` or None; returns ``(b t) c_out h w``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        zq_channels: int | None = None,
        num_groups: int = 32,
        dropout: float = 0.0,
        temporal_kernel: tuple[int, int, int] | None = None,
        video_convs: bool = False,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, zq_channels, num_groups)
        self.conv1 = _conv3x3(in_channels, out_channels, video_convs)
        self.norm2 = make_norm(out_channels, zq_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels, video_convs)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.temporal_kernel = tuple(temporal_kernel) if temporal_kernel is not None else None
        if self.temporal_kernel is not None:
            pad = tuple(k // 2 for k in self.temporal_kernel)
            self.temporal_merge1 = AlphaMerge(0.0)
            self.temporal_projection1 = zero_module(nn.Conv3d(out_channels, out_channels, temporal_kernel, padding=pad))
            self.temporal_merge2 = AlphaMerge(0.0)
            self.temporal_projection2 = zero_module(nn.Conv3d(out_channels, out_channels, temporal_kernel, padding=pad))
            flatten_merge_keys(self, ("temporal_merge1", "temporal_merge2"))

    def _temporal(self, h: torch.Tensor, index: int, num_frames: int) -> torch.Tensor:
        if self.temporal_kernel is None:
            return h
        proj = getattr(self, f"temporal_projection{index}")
        merge = getattr(self, f"temporal_merge{index}")
        return merge(h, _frame_conv(proj, h, num_frames))

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        h = _frame_conv(self.conv1, F.silu(self.norm1(x, zq)), num_frames)
        h = self._temporal(h, 1, num_frames)
        h = self.dropout(F.silu(self.norm2(h, zq)))
        h = _frame_conv(self.conv2, h, num_frames)
        h = self._temporal(h, 2, num_frames)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class _QKVAttention(nn.Module):
    """Shared layout of the spatial and temporal attention blocks: norm, 1x1 q/k/v, 1x1 proj_out."""

    def __init__(self, channels: int, zq_channels: int | None, num_groups: int) -> None:
        super().__init__()
        self.norm = make_norm(channels, zq_channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)


class AttnBlock(_QKVAttention):
    """Single-head self-attention over the ``h * w`` pixels of each frame, scale ``c ** -0.5``, residual.

    ``x``: ``(b t) c h w``; ``zq`` conditions the (Spatial)Norm; returns the same shape.
    """

    def __init__(self, channels: int, zq_channels: int | None = None, num_groups: int = 32) -> None:
        super().__init__(channels, zq_channels, num_groups)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x, zq)
        hh, ww = x.shape[-2:]
        # one sequence of h*w tokens with c features per frame
        q, k, v = (rearrange(f(h), "n c h w -> n (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        out = rearrange(out, "n (h w) c -> n c h w", h=hh, w=ww)  # back to frames
        return x + self.proj_out(out)


class TemporalAttnBlock(_QKVAttention):
    """Single-head self-attention over the ``t`` frames of a video at every pixel, scale ``c ** -0.5``, residual.

    As in the released decoder, the norm is a SpatialNorm called *without* ``zq`` (a plain GroupNorm): its
    ``conv_y`` / ``conv_b`` exist for checkpoint compatibility but are unused. Unlike the release, ``proj_out``
    (weight and bias) is zero-initialised here so a new block is an exact identity; loading weights is unaffected.

    ``x``: ``(b t) c h w``; returns the same shape.
    """

    def __init__(self, channels: int, zq_channels: int, num_groups: int = 32) -> None:
        super().__init__(channels, zq_channels, num_groups)
        zero_module(self.proj_out)

    def unused_parameters(self) -> list[nn.Parameter]:
        """The norm's conv_y / conv_b parameters, which the forward never uses."""
        return [*self.norm.conv_y.parameters(), *self.norm.conv_b.parameters()]

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.norm(x)
        hh, ww = x.shape[-2:]
        # one sequence of t tokens with c features per pixel of each video
        q, k, v = (rearrange(f(h), "(b t) c h w -> (b h w) t c", t=num_frames) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax over the t keys, scale c^-0.5
        out = rearrange(out, "(b h w) t c -> (b t) c h w", h=hh, w=ww)  # back to folded frames
        return x + self.proj_out(out)


class TemporalResnetBlock(nn.Module):
    """SpatialNorm -> SiLU -> Conv3d(3,1,1) -> SpatialNorm -> SiLU -> dropout -> Conv3d(3,1,1), plus residual.

    The Conv3d run over ``b c t h w`` with temporal zero padding 1. ``conv2`` is zero-initialised here (the paper:
    added parameters start at zero; the released code does not), so a new block is an exact identity.

    ``x``: ``(b t) c h w``; ``zq``: ``(b t) z h' w'``; returns the same shape as ``x``.
    """

    def __init__(self, channels: int, zq_channels: int, num_groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = SpatialNorm(channels, zq_channels, num_groups)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = SpatialNorm(channels, zq_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        h = _frame_conv(self.conv1, F.silu(self.norm1(x, zq)), num_frames)
        h = self.dropout(F.silu(self.norm2(h, zq)))
        h = _frame_conv(self.conv2, h, num_frames)
        return x + h


class Upsample(nn.Module):
    """Nearest x2 upsampling then a 3x3 conv. ``(n, c, h, w)`` -> ``(n, c, 2h, 2w)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv. ``(n, c, h, w)`` -> ``(n, c, h/2, w/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))
