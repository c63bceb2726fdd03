"""Building blocks of the MoVQ autoencoder and its video decoders.

Every block takes frames folded into the batch, ``(b t) c h w``. Spatial blocks never look across rows; temporal
pieces unfold ``(b t)`` with einops inside their forward (``num_frames`` is passed with each call). Module and
parameter names follow the released MoVQGAN / Kandinsky Video checkpoints, so state dicts load without a key map.

Norms: the encoder uses a plain GroupNorm; every decoder norm is a :class:`SpatialNorm` conditioned on the latent
``zq``. Both accept ``(x, zq)`` so blocks are written once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ff_lightning.models.temporal import (
    AlphaMerge,
    conv3d_as_taps,
    conv3d_frames,
    flatten_merge_keys,
    fold_frames,
    unfold_frames,
    zero_module,
)

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
    "conv3d_as_taps",
    "in_pieces",
]

EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (affine, eps 1e-6) that accepts and ignores ``zq``, so it can stand in for SpatialNorm."""

    def __init__(self, channels: int, num_groups: int = 32) -> None:
        super().__init__(num_groups, channels, eps=EPS, affine=True)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def _inplace_ok(*tensors: torch.Tensor) -> bool:
    """True when no autograd graph is being recorded through ``tensors`` (in-place updates are then safe)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def silu_fresh(h: torch.Tensor) -> torch.Tensor:
    """SiLU of a tensor nobody else holds (a fresh op output): in place when no graph is recorded."""
    return F.silu(h, inplace=_inplace_ok(h))


#: rows of a per-frame op run together without autograd: this many elements of its input (1 MiB of float32)
PIECE_ELEMENTS = 1 << 18


def piece_rows(x: torch.Tensor) -> int:
    """Rows of ``x`` per piece: about :data:`PIECE_ELEMENTS` input elements, at least 1 (0 for an empty ``x``)."""
    return max(1, PIECE_ELEMENTS // max(1, x[0].numel())) if x.shape[0] else 0


def in_pieces(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *rows: torch.Tensor | None,
    into_x: bool = False,
) -> torch.Tensor:
    """``fn(x, *rows)`` for an ``fn`` that treats every row (frame) on its own, run on pieces of rows of about
    :data:`PIECE_ELEMENTS` input elements when no gradient is recorded, the results written into one output: the
    op's temporaries exist for one piece at a time. ``rows``: tensors with ``x``'s rows (or None), sliced alike.
    ``into_x``: the output may be written over ``x`` itself (for an ``x`` nobody else reads afterwards; used when
    ``fn`` keeps each row's shape and dtype): each piece is read before it is overwritten, so the op needs no second
    full-size tensor."""
    n = x.shape[0]
    step = piece_rows(x)
    if torch.is_grad_enabled() or step >= n:
        return fn(x, *rows)

    def piece(i: int) -> torch.Tensor:
        return fn(x[i : i + step], *(r if r is None else r[i : i + step] for r in rows))

    first = piece(0)
    reuse = into_x and _inplace_ok(x) and first.shape[1:] == x.shape[1:] and first.dtype == x.dtype
    out = x if reuse else first.new_empty(n, *first.shape[1:])
    out[:step] = first
    del first
    for i in range(step, n, step):
        out[i : i + step] = piece(i)
    return out


class SpatialNorm(nn.Module):
    """MoVQ's latent-conditioned norm: ``GroupNorm(x) * conv_y(zq') + conv_b(zq')``.

    ``x``: ``(n, c, h, w)``; ``zq``: ``(n, zq_channels, h', w')``, resized to ``(h, w)`` by nearest interpolation
    (``zq'``); ``conv_y`` / ``conv_b`` are 1x1 convs. With ``zq=None`` it is the plain affine GroupNorm (the released
    temporal-attention blocks call it that way).

    Computed with few full-size temporaries: ``conv_y`` and ``conv_b`` run as one 1x1 conv of ``2c`` outputs on the
    *small* ``zq`` (a 1x1 conv commutes with nearest interpolation, so this is the same per-pixel value), and when
    ``h / h'`` and ``w / w'`` are integers the scale and shift are repeated along the width only (a small copy) and
    broadcast over the ``h / h'`` rows of each latent row of the normalised ``x`` instead of being interpolated (in
    place when no gradient is recorded; whole contiguous rows per broadcast step vectorise far better than
    ``f``-wide blocks). The straightforward formula is kept
    as :meth:`forward_reference` (tests check the two agree).
    """

    def __init__(self, channels: int, zq_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_groups, channels, eps=EPS, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward_reference(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        """The straightforward formula: interpolate ``zq`` to ``x``'s size, then both 1x1 convs, multiply-add."""
        h = self.norm_layer(x)
        if zq is None:
            return h
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return h * self.conv_y(zq) + self.conv_b(zq)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_layer(x)
        if zq is None:
            return h
        n, c, hh, ww = x.shape
        zh, zw = zq.shape[-2:]
        weight = torch.cat([self.conv_y.weight, self.conv_b.weight])  # (2c, z, 1, 1)
        bias = torch.cat([self.conv_y.bias, self.conv_b.bias])
        if (
            hh % zh or ww % zw or not h.is_contiguous()
        ):  # no integer block size: interpolate the (2c-channel) conv output instead
            scale, shift = F.interpolate(F.conv2d(zq, weight, bias), size=(hh, ww), mode="nearest").split(c, 1)
            return h * scale + shift
        fh, fw = hh // zh, ww // zw
        both = F.conv2d(zq, weight, bias)  # (n, 2c, h', w'): scale and shift on the small latent
        if fw > 1:  # widen to full rows (n, 2c, h', w): a 1/fh-size copy, so the broadcast runs along whole rows
            both = both[..., None].expand(n, 2 * c, zh, zw, fw).reshape(n, 2 * c, zh, ww)
        scale, shift = both[:, :c, :, None], both[:, c:, :, None]  # (n, c, h', 1, w) each
        rows = h.view(n, c, zh, fh, ww)  # the fh output rows of every latent row
        if _inplace_ok(h, scale, shift):
            return rows.mul_(scale).add_(shift).view(n, c, hh, ww)
        return (rows * scale).add_(shift).view(n, c, hh, ww)


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
    """Apply a Conv2d per frame, or a Conv3d over the frames of each video (without autograd in pieces of frames of
    about :data:`PIECE_ELEMENTS` input elements). ``x``: ``(b t) c h w``."""
    if isinstance(conv, nn.Conv3d):
        return conv3d_frames(conv, x, num_frames, piece_rows(x))  # 0 rows: no pieces
    return conv(x)


def _frame_conv_reference(conv: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """:func:`_frame_conv` with the Conv3d run as ``nn.Conv3d`` on ``b c t h w`` (the straightforward path)."""
    if isinstance(conv, nn.Conv3d):
        return fold_frames(conv(unfold_frames(x, num_frames)))  # (b t) c h w -> b c t h w -> conv -> (b t) c h w
    return conv(x)


def _residual(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x + h`` for a fresh ``h`` (added into ``h`` when no gradient is recorded; float addition commutes)."""
    if _inplace_ok(x, h) and x.is_contiguous() and h.is_contiguous():  # same layout: the same sums as x + h
        return h.add_(x)
    return x + h


def _residual_of(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``fn(x) + h`` for a per-row ``fn`` and a fresh ``h``: without autograd ``fn`` runs on pieces of rows (as
    :func:`in_pieces`) added into ``h`` piece by piece, so neither ``fn(x)`` nor its temporaries exist whole."""
    n = x.shape[0]
    step = piece_rows(x)
    if step >= n or not (_inplace_ok(x, h) and h.is_contiguous()):
        return _residual(fn(x), h)
    for i in range(0, n, step):
        h[i : i + step].add_(fn(x[i : i + step]))  # the same sums as h + fn(x), one piece at a time
    return h


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
        t = _frame_conv(proj, h, num_frames)
        if (
            _inplace_ok(h, t, merge.alpha) and h.is_contiguous() and t.is_contiguous()
        ):  # h and t are fresh outputs: (1 - a) * h + a * t in place
            a = merge.alpha.to(h.dtype)
            return h.mul_(1 - a).add_(t.mul_(a))
        return merge(h, t)

    def _norm_conv(self, index: int, x: torch.Tensor, zq: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """``conv(act(norm(x, zq)))``; for ``index == 2`` ``x`` is the block's own intermediate, which the result
        may overwrite piece by piece."""
        norm, conv = getattr(self, f"norm{index}"), getattr(self, f"conv{index}")
        drop = self.dropout if index == 2 else nn.Identity()

        def act(xp: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
            return drop(silu_fresh(norm(xp, zp)))

        if isinstance(conv, nn.Conv3d):
            return _frame_conv(conv, act(x, zq), num_frames)
        # per frame: pieces without autograd (conv2's result over its input, which only this block holds)
        return in_pieces(lambda xp, zp: conv(act(xp, zp)), x, zq, into_x=index == 2)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        h = self._norm_conv(1, x, zq, num_frames)
        h = self._temporal(h, 1, num_frames)
        h = self._norm_conv(2, h, zq, num_frames)
        h = self._temporal(h, 2, num_frames)
        if self.in_channels != self.out_channels:  # the 1x1 shortcut in pieces, added into h
            return _residual_of(self.nin_shortcut, x, h)
        return _residual(x, h)


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
        return in_pieces(self._attend, x, zq)  # frames are independent: pieces without autograd

    def _attend(self, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(x, zq)
        hh, ww = x.shape[-2:]
        # one sequence of h*w tokens with c features per frame
        q, k, v = (rearrange(f(h), "n c h w -> n (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        out = rearrange(out, "n (h w) c -> n c h w", h=hh, w=ww)  # back to frames
        return _residual(x, self.proj_out(out))


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
        return _residual(x, self.proj_out(out))


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
        h = _frame_conv(self.conv1, silu_fresh(self.norm1(x, zq)), num_frames)
        h = self.dropout(silu_fresh(self.norm2(h, zq)))
        h = _frame_conv(self.conv2, h, num_frames)
        return _residual(x, h)


# Nearest x2 upsampling then a 3x3 conv, per output phase a (row parity): which of the 3 kernel rows fall on
# input row i-1+a and i+a. Phase 0 reads rows (i-1, i) with kernel rows (0, 1+2); phase 1 rows (i, i+1) with (0+1, 2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
# (a, b, 9, 4): the flattened 3x3 kernel -> the flattened 2x2 kernel of output phase (a, b), as one 0/1 matrix
_PHASE_MATS = torch.einsum("ary,bcx->abyxrc", _PHASE_TAPS, _PHASE_TAPS).reshape(2, 2, 9, 4).contiguous()


class Upsample(nn.Module):
    """Nearest x2 upsampling then a 3x3 conv. ``(n, c, h, w)`` -> ``(n, c, 2h, 2w)``.

    Computed sub-pixel: each of the four output phases ``(2i + a, 2j + b)`` is a 2x2 conv of the low-resolution input
    with the 3x3 kernel's taps summed per phase (the same sums, regrouped: equal up to float rounding, 1e-5 in the
    tests), 16 instead of 36 multiply-adds per input pixel and channel pair, and no upsampled copy of the input
    (below 4x4 input pixels, or below 16384 input elements in all, the straightforward path is faster on CPU and is
    used).
    :meth:`forward_reference` keeps the straightforward interpolate-then-conv.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] < 16 or x.numel() < 16384:  # tiny maps: four small convs cost more than they save
            return self.forward_reference(x)
        kernels = self._phase_kernels()
        n, _, h, w = x.shape
        out = x.new_empty(n, self.conv.out_channels, h, 2, w, 2)
        # frames are independent: without autograd, pieces of input rows written in place into the output
        step = n if torch.is_grad_enabled() else piece_rows(x)
        for i in range(0, n, step):
            self._subpixel(x[i : i + step], kernels, out[i : i + step])
        return out.view(n, self.conv.out_channels, 2 * h, 2 * w)

    def _phase_kernels(self) -> list[list[torch.Tensor]]:
        """``[a][b]``: the ``(out, in, 2, 2)`` kernel of output phase ``(a, b)`` (rows combined with
        ``_PHASE_TAPS[a]``, columns with ``_PHASE_TAPS[b]``), each one small matrix product of the flattened 3x3
        kernels (contiguous, no einsum intermediates)."""
        w = self.conv.weight
        flat = w.reshape(w.shape[0] * w.shape[1], 9)
        mats = _PHASE_MATS.to(device=w.device, dtype=w.dtype)
        return [[(flat @ mats[a, b]).view(*w.shape[:2], 2, 2) for b in range(2)] for a in range(2)]

    def _subpixel(self, x: torch.Tensor, kernels: list[list[torch.Tensor]], out: torch.Tensor) -> None:
        """The four phases of ``x`` ``(n, c, h, w)`` written into ``out`` ``(n, c, h, 2, w, 2)``."""
        for a in range(2):
            for b in range(2):
                # rows a-1 .. a+h-1 and columns b-1 .. b+w-1 of x, zero outside: the phase's (h+1) x (w+1) window
                window = F.pad(x, (1 - b, b, 1 - a, a))
                out[:, :, :, a, :, b] = F.conv2d(window, kernels[a][b], self.conv.bias)
                del window


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv. ``(n, c, h, w)`` -> ``(n, c, h/2, w/2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))
