"""Exact chunked ("streaming") video decoding: every frame computed once, memory flat in the video length.

The decoder is run as a list of stages (conv_in, ResnetBlocks, attention blocks, upsampling, the output head). A
temporal conv (temporal kernel 3, "same" padding) can finish output frame ``f`` only once input frame ``f + 1``
exists, so each conv site keeps the last input frames it still needs (:class:`_Stream`) and returns the outputs it
can finish now: chunks come out of a conv one frame later than they went in. Residual sums and merges combine two
streams that lag by different amounts; the less delayed one is held at its site until the other catches up. Frames
are pushed depth-first through the stages in pieces of at most ``chunk_frames`` frames, so the decoder holds one
piece per level plus a few held frames per site, whatever the video length; every frame goes through every op once.

Temporal attention has a global receptive field (every frame attends to every frame of the video), so no prefix of
the video determines a frame: the stages up to and including the last temporal attention (at the latent resolution
in the released layouts) run on the whole video at once, exactly, and only the stages after it stream. For the
attention variants memory therefore grows with the length at the latent level (a small fraction of a full-resolution
frame per frame), plus the ``T x T`` attention weights per latent pixel.

Outputs equal the whole decode up to float rounding (per-frame ops see smaller batches; 1e-5 in the tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.models.layers import (
    AttnBlock,
    ResnetBlock,
    TemporalAttnBlock,
    TemporalResnetBlock,
    piece_rows,
    silu_fresh,
)
from ff_lightning.models.movq import Decoder
from ff_lightning.models.temporal import winograd_pays, winograd_piece_frames
from ff_lightning.models.winograd import winograd_conv

__all__ = ["stream_decode"]

Stage = Callable[[torch.Tensor, int], tuple[torch.Tensor, int]]


class _Stream:
    """Frames held between chunks at each site of one decode. Tensors are folded ``(b n) c h w`` runs of the frames
    ``[s, s + n)`` of ``b`` videos of ``total`` frames."""

    def __init__(self, videos: int, total: int) -> None:
        self.b, self.total = videos, total
        self.held: dict[object, tuple[torch.Tensor, int]] = {}
        self.next_out: dict[object, int] = {}

    def n(self, x: torch.Tensor) -> int:
        return x.shape[0] // self.b

    def _video(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.b, self.n(x), *x.shape[1:])

    def _frames(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Frames ``lo:hi`` (positions within ``x``) of every video, folded."""
        return self._video(x)[:, lo:hi].flatten(0, 1)

    def _cat(self, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if not self.n(a):
            return c
        if not self.n(c):
            return a
        return torch.cat([self._video(a), self._video(c)], 1).flatten(0, 1)

    def _join(self, key: object, x: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
        if key not in self.held:
            return x, s
        prev, ps = self.held.pop(key)
        if ps + self.n(prev) != s:
            raise RuntimeError(f"stream site {key}: held frames end at {ps + self.n(prev)}, next run starts at {s}")
        return self._cat(prev, x), ps

    def _hold(self, key: object, x: torch.Tensor, s: int, keep_from: int) -> None:
        e = s + self.n(x)
        if keep_from < e:  # a copy: a view would keep the whole chunk alive
            self.held[key] = (self._frames(x, keep_from - s, e - s).clone(), keep_from)

    def conv(self, key: object, conv: nn.Conv3d, x: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
        """A temporal-kernel-3 "same" Conv3d on the run ``x`` (frames from ``s``): the outputs it can finish now
        (frame ``f`` needs input ``f + 1`` unless ``f`` is the last frame), and their first frame."""
        x, s = self._join(key, x, s)
        e = s + self.n(x)
        lo = self.next_out.get(key, 0)  # the first output frame not yet produced at this site
        if s > max(lo - 1, 0):
            raise RuntimeError(f"stream conv {key}: input starts at frame {s}, output {lo} needs frame {lo - 1}")
        hi = max(e if e == self.total else e - 1, lo)
        self.next_out[key] = hi
        self._hold(key, x, s, max(hi - 1, 0) if e < self.total else e)  # inputs still needed for outputs >= hi
        zero = x.new_zeros(self.b, 1, *x.shape[1:])
        video = self._video(x)
        parts = [zero] if s == 0 else []
        parts.append(video)
        if e == self.total:
            parts.append(zero)
        padded = torch.cat(parts, 1) if len(parts) > 1 else video
        p = s - 1 if s == 0 else s  # frame index of padded[:, 0]
        w, pad = conv.weight, (conv.kernel_size[1] // 2, conv.kernel_size[2] // 2)

        if winograd_pays(conv, padded[0]):  # as layers.conv3d_as_taps: Winograd on wide enough maps
            frames = padded.shape[1]
            pieces = winograd_piece_frames(piece_rows(padded[0]))
            # origin p: the pieces (and so the sums) of a whole-video call, each output frame bit for bit
            out = winograd_conv(padded.flatten(0, 1), w, conv.bias, frames, pieces, (lo - p, hi - p), origin=p)
            return out, lo

        def taps(offset: int) -> torch.Tensor:
            return padded[:, lo + offset - p : hi + offset - p].flatten(0, 1)

        out = F.conv2d(taps(0), w[:, :, 1], conv.bias, padding=pad)  # the same sums, in the same order, as
        out += F.conv2d(taps(-1), w[:, :, 0], padding=pad)  # layers.conv3d_as_taps
        out += F.conv2d(taps(1), w[:, :, 2], padding=pad)
        return out, lo

    def align(self, key: object, x: torch.Tensor, s: int, lo: int, hi: int) -> torch.Tensor:
        """Frames ``[lo, hi)`` of the stream ``x`` (frames from ``s``, after those held at ``key``); later frames are
        held for the next call."""
        x, s = self._join(key, x, s)
        if lo != s:
            raise RuntimeError(f"stream site {key}: asked for frames from {lo}, the held run starts at {s}")
        self._hold(key, x, s, hi)
        return self._frames(x, lo - s, hi - s)


def _frame_conv(st: _Stream, key: object, conv: nn.Module, x: torch.Tensor, s: int) -> tuple[torch.Tensor, int]:
    if isinstance(conv, nn.Conv3d):
        return st.conv(key, conv, x, s)
    return conv(x), s


def _resnet(st: _Stream, key: object, block: ResnetBlock, zq: Callable, x: torch.Tensor, s: int):
    h, hs = _frame_conv(st, (key, "conv1"), block.conv1, silu_fresh(block.norm1(x, zq(s, st.n(x)))), s)
    h, hs = _temporal(st, key, block, 1, h, hs)
    h = block.dropout(silu_fresh(block.norm2(h, zq(hs, st.n(h)))))
    h, hs = _frame_conv(st, (key, "conv2"), block.conv2, h, hs)
    h, hs = _temporal(st, key, block, 2, h, hs)
    if block.in_channels != block.out_channels:
        x = block.nin_shortcut(x)
    return st.align((key, "res"), x, s, hs, hs + st.n(h)) + h, hs


def _temporal(st: _Stream, key: object, block: ResnetBlock, index: int, h: torch.Tensor, s: int):
    if block.temporal_kernel is None:
        return h, s
    t, ts = st.conv((key, f"proj{index}"), getattr(block, f"temporal_projection{index}"), h, s)
    h = st.align((key, f"merge{index}"), h, s, ts, ts + st.n(t))
    return getattr(block, f"temporal_merge{index}")(h, t), ts


def _temporal_resnet(st: _Stream, key: object, block: TemporalResnetBlock, zq: Callable, x: torch.Tensor, s: int):
    h, hs = st.conv((key, "conv1"), block.conv1, silu_fresh(block.norm1(x, zq(s, st.n(x)))), s)
    h = block.dropout(silu_fresh(block.norm2(h, zq(hs, st.n(h)))))
    h, hs = st.conv((key, "conv2"), block.conv2, h, hs)
    return st.align((key, "res"), x, s, hs, hs + st.n(h)) + h, hs


def _stages(decoder: Decoder, st: _Stream, zq: Callable, attn_zq: Callable) -> list[tuple[Stage, bool]]:
    """The decoder's forward as ``(stage, is_temporal_attention)`` in the released order (see ``Decoder.forward``)."""
    stages: list[tuple[Stage, bool]] = []

    def resnet(block: nn.Module) -> None:
        fn = _temporal_resnet if isinstance(block, TemporalResnetBlock) else _resnet
        stages.append((lambda x, s, b=block, f=fn: f(st, id(b), b, zq, x, s), False))

    def spatial_attn(block: AttnBlock) -> None:
        stages.append((lambda x, s, b=block: (b(x, attn_zq(s, st.n(x))), s), False))

    def temporal_attn(block: TemporalAttnBlock) -> None:
        stages.append((lambda x, s, b=block: (b(x, st.total), s), True))

    mid, spec = decoder.mid, decoder.temporal
    resnet(mid.block_1)
    spatial_attn(mid.attn_1)
    if spec.attention:
        temporal_attn(mid.temporal_attn_1)
    if spec.resblocks:
        resnet(mid.temporal_block_1)
    resnet(mid.block_2)
    if spec.resblocks:
        resnet(mid.temporal_block_2)
    for level in reversed(decoder.up):
        for i, block in enumerate(level.block):
            resnet(block)
            if len(level.temporal_block):
                resnet(level.temporal_block[i])
            if len(level.attn):
                spatial_attn(level.attn[i])
                if len(level.temporal_attn):
                    temporal_attn(level.temporal_attn[i])
        if hasattr(level, "upsample"):
            stages.append((lambda x, s, u=level.upsample: (u(x), s), False))
    stages.append((lambda x, s: (decoder.conv_out(silu_fresh(decoder.norm_out(x, zq(s, st.n(x))))), s), False))
    return stages


@torch.no_grad()
def stream_decode(
    post_quant_conv: nn.Module, decoder: Decoder, latents: torch.Tensor, num_frames: int, chunk_frames: int
) -> torch.Tensor:
    """Decode latents ``(b t) c h w`` to frames ``(b t) out_ch H W`` equal to ``decoder(post_quant_conv(latents),
    latents, num_frames=t)`` (up to float rounding), pushing at most ``chunk_frames`` frames at a time through each
    stage after the last temporal attention (see the module docstring). No gradients."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    t = num_frames
    if latents.shape[0] % t:
        raise ValueError(f"batch of {latents.shape[0]} rows is not a multiple of num_frames={t}")
    st = _Stream(latents.shape[0] // t, t)
    zq_video = st._video(latents)
    attn_video = st._video(decoder._attention_zq(latents, t))

    def zq(s: int, n: int) -> torch.Tensor:
        return zq_video[:, s : s + n].flatten(0, 1)

    def attn_zq(s: int, n: int) -> torch.Tensor:
        return attn_video[:, s : s + n].flatten(0, 1)

    stages = _stages(decoder, st, zq, attn_zq)
    whole = max((i + 1 for i, (_, is_attn) in enumerate(stages) if is_attn), default=0)
    outputs: list[torch.Tensor] = []

    def push(k: int, x: torch.Tensor, s: int) -> None:
        if k == len(stages):
            outputs.append(x)
            return
        n = st.n(x)
        if k >= whole and n > chunk_frames:  # split into pieces; each goes through all later stages first
            for lo in range(0, n, chunk_frames):
                push(k, st._frames(x, lo, min(lo + chunk_frames, n)), s + lo)
            return
        y, ys = stages[k][0](x, s)
        if st.n(y):
            push(k + 1, y, ys)

    def head(x: torch.Tensor, s: int) -> None:  # conv_in on the run, then the stages
        push(0, decoder.conv_in(post_quant_conv(x)), s)

    if whole:  # everything up to the last temporal attention on the whole video, then stream the rest
        x, s = decoder.conv_in(post_quant_conv(latents)), 0
        for k in range(whole):
            x, s = stages[k][0](x, s)
        push(whole, x, s)
    else:
        for lo in range(0, t, chunk_frames):
            head(zq(lo, min(chunk_frames, t - lo)), lo)
    if st.held:
        raise RuntimeError(f"stream decode ended with frames still held at {len(st.held)} site(s)")
    return torch.cat([st._video(o) for o in outputs], 1).flatten(0, 1)
