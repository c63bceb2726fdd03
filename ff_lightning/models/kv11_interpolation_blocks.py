"""Building blocks of the Kandinsky Video 1.1 interpolation UNet (:mod:`ff_lightning.models.kv11_interpolation`).

Facts read off the public release (ai-forever/KandinskyVideo, ``kandinsky_video/model/unet_interpolation.py``; no code
copied). Every block takes rows ``(b t) c h w`` where ``t`` is the number of interpolation *groups* of a video (one
group per keyframe pair) and ``b`` the videos (in the release's sampling: the guided and the unguided half), plus a
per-row ``temporal_mask`` ``(b t,)`` that scales every temporal merge (0 switches the temporal parts of that row off).

- :class:`MaskedTemporalConv` (release ``TemporalConv3D``): a zero-initialised Conv3d (3,1,1) over the groups,
  merged as ``(1 - a m) x + a m conv(x)`` with ``a`` a learned scalar (bare key ``temporal_merge``, init 0) and ``m``
  the row's mask. Keys ``temporal_merge``, ``temporal_projection.{weight,bias}``.
- :class:`CompressFrames` / :class:`DecompressFrames` (``temporal_compress.downsample`` /
  ``temporal_decompress.upsample``): a Conv3d / ConvTranspose3d with kernel and stride (2,1,1) over the groups
  (halves / doubles ``t``).
- :class:`InterpStage`: a ResNet stage ``norm -> SiLU -> [decompress] -> [2x up] -> [post-up temporal conv] -> conv
  -> [temporal_projection_new] -> [2x down] -> [post-down temporal conv] -> [compress]``.
- :class:`InterpResNetBlock`: four stages + the shortcut ``[decompress] -> [up] -> [post-up conv] -> [1x1] -> [down]
  -> [post-up conv again] -> [compress]``. Release quirks kept: the shortcut applies its ``temporal_post_upsample``
  twice and never its ``temporal_post_downsample`` (whose weights exist but are unused).
- :class:`InterpTemporalAttentionBlock`: ``in_norm(time)`` -> attention over the groups at every pixel (no
  positional embedding, no zero-init) merged by ``temporal_merge1``, then ``out_norm(time)`` -> 1x1 feed-forward
  merged by ``temporal_merge2`` (both masked, init 0).
- Levels: down = [self-attention] -> [temporal attention] -> groups; up = groups -> [self-attention] -> [temporal
  attention] (after the spatial self-attention, unlike the keyframe models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ff_lightning.models.temporal import AlphaMerge, conv3d_frames, flatten_merge_keys, fold_frames, unfold_frames
from ff_lightning.models.unet import (
    Attention,
    AttentionBlock,
    BlockArgs,
    ConditionalGroupNorm,
    UNetConditioning,
    conv1x1,
)
from ff_lightning.models.unet_temporal import attend_over_frames

__all__ = [
    "MaskedTemporalConv",
    "CompressFrames",
    "DecompressFrames",
    "InterpStage",
    "InterpResNetBlock",
    "InterpTemporalAttentionBlock",
    "InterpDownLevel",
    "InterpUpLevel",
    "masked_merge",
]


def masked_merge(merge: AlphaMerge, x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1 - a m) x + a m out`` per row: ``x``, ``out`` ``(n, c, h, w)``, ``mask`` ``(n,)``."""
    a = merge.alpha.to(x.dtype) * mask.to(x.dtype)[:, None, None, None]
    return (1 - a) * x + a * out


class MaskedTemporalConv(nn.Module):
    """Release ``TemporalConv3D``: ``x`` ``(b t) c h w`` -> same shape, ``(1 - a m) x + a m Conv3d_t(x)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.temporal_merge = AlphaMerge(0.0)
        self.temporal_projection = nn.Conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.temporal_projection.weight)
        nn.init.zeros_(self.temporal_projection.bias)
        flatten_merge_keys(self, ("temporal_merge",))

    def forward(self, x: torch.Tensor, num_frames: int, mask: torch.Tensor) -> torch.Tensor:
        out = conv3d_frames(self.temporal_projection, x, num_frames)  # Conv3d over each video's groups
        return masked_merge(self.temporal_merge, x, out, mask)


class CompressFrames(nn.Module):
    """``(b t) c h w`` -> ``(b t/2) c h w``: Conv3d kernel = stride = (2,1,1) over ``t`` (key ``downsample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.downsample = nn.Conv3d(channels, channels, (2, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return fold_frames(self.downsample(unfold_frames(x, num_frames)))


class DecompressFrames(nn.Module):
    """``(b t) c h w`` -> ``(b 2t) c h w``: ConvTranspose3d kernel = stride = (2,1,1) over ``t`` (key ``upsample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(channels, channels, (2, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return fold_frames(self.upsample(unfold_frames(x, num_frames)))


def _slot(module: nn.Module, name: str, value: nn.Module | None) -> None:
    module.register_module(name, value)


class InterpStage(nn.Module):
    """One ResNet stage (see the module docstring). ``x``: ``(n, c_in, h, w)`` -> ``(n, c_out, h', w')``; ``n``
    halves after a compress and doubles after a decompress."""

    def __init__(
        self, cin: int, cout: int, ted: int, kernel: int, groups: int, resample: str | None, *, temporal: bool,
        new_params: bool, time_downsample: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        up, down = resample == "up", resample == "down"
        self.group_norm = ConditionalGroupNorm(groups, cin, ted)
        _slot(self, "up_sample", nn.ConvTranspose2d(cin, cin, 2, stride=2) if up else None)
        self.projection = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        _slot(self, "down_sample", nn.Conv2d(cout, cout, 2, stride=2) if down else None)
        _slot(self, "temporal_decompress", DecompressFrames(cin) if up and time_downsample else None)
        post_up = up and new_params and not time_downsample
        _slot(self, "temporal_post_upsample", MaskedTemporalConv(cout, cout) if post_up else None)
        _slot(self, "temporal_projection_new", MaskedTemporalConv(cout, cout) if temporal else None)
        _slot(self, "temporal_compress", CompressFrames(cout) if down and time_downsample else None)
        post_down = down and new_params and not time_downsample
        _slot(self, "temporal_post_downsample", MaskedTemporalConv(cout, cout) if post_down else None)

    def forward(self, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
        t = cond.require_num_frames()
        x = F.silu(self.group_norm(x, cond.time_embed))
        if self.temporal_decompress is not None:
            x = self.temporal_decompress(x, t)
        if self.up_sample is not None:
            x = self.up_sample(x)
        if self.temporal_post_upsample is not None:
            x = self.temporal_post_upsample(x, t, mask)
        x = conv1x1(self.projection, x)
        if self.temporal_projection_new is not None:
            x = self.temporal_projection_new(x, t, mask)
        if self.down_sample is not None:
            x = self.down_sample(x)
        if self.temporal_post_downsample is not None:
            x = self.temporal_post_downsample(x, t, mask)
        if self.temporal_compress is not None:
            x = self.temporal_compress(x, t)
        return x


class InterpResNetBlock(nn.Module):
    """Four :class:`InterpStage` (kernels 1, 3, 3, 1, width ``max(in, out) // compression_ratio`` inside) + shortcut
    (see the module docstring). ``x``: ``(n, in, h, w)`` -> ``(n, out, h', w')``."""

    def __init__(
        self, cin: int, cout: int, args: BlockArgs, resample: str | None = None, *, temporal: bool,
        new_params: bool, time_downsample: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        hidden = max(cin, cout) // args.compression_ratio
        widths = [(cin, hidden), (hidden, hidden), (hidden, hidden), (hidden, cout)]
        at = {"up": 1, "down": 2}.get(resample or "", -1)
        flags = dict(temporal=temporal, new_params=new_params, time_downsample=time_downsample)
        self.resnet_blocks = nn.ModuleList(
            InterpStage(a, b, args.time_embed_dim, k, args.groups, resample if i == at else None, **flags)
            for i, ((a, b), k) in enumerate(zip(widths, (1, 3, 3, 1)))
        )
        up, down = resample == "up", resample == "down"
        _slot(self, "shortcut_up_sample", nn.ConvTranspose2d(cin, cin, 2, stride=2) if up else None)
        _slot(self, "shortcut_projection", nn.Conv2d(cin, cout, 1) if cin != cout else None)
        _slot(self, "shortcut_down_sample", nn.Conv2d(cout, cout, 2, stride=2) if down else None)
        _slot(self, "temporal_decompress", DecompressFrames(cin) if up and time_downsample else None)
        post = new_params and not time_downsample
        _slot(self, "temporal_post_upsample", MaskedTemporalConv(cin, cout) if up and post else None)
        _slot(self, "temporal_compress", CompressFrames(cout) if down and time_downsample else None)
        _slot(self, "temporal_post_downsample", MaskedTemporalConv(cout, cout) if down and post else None)

    def forward(self, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
        t = cond.require_num_frames()
        out = x
        for stage in self.resnet_blocks:
            out = stage(out, cond, mask)
        if self.temporal_decompress is not None:
            x = self.temporal_decompress(x, t)
        if self.shortcut_up_sample is not None:
            x = self.shortcut_up_sample(x)
        if self.temporal_post_upsample is not None:
            x = self.temporal_post_upsample(x, t, mask)
        if self.shortcut_projection is not None:
            x = conv1x1(self.shortcut_projection, x)
        if self.shortcut_down_sample is not None:
            x = self.shortcut_down_sample(x)
        if self.temporal_post_upsample is not None:  # the release applies it a second time here (see docstring)
            x = self.temporal_post_upsample(x, t, mask)
        if self.temporal_compress is not None:
            x = self.temporal_compress(x, t)
        return x + out


class InterpTemporalAttentionBlock(nn.Module):
    """Release ``TemporalAttentionBlock``; ``x``: ``(b t) c h w`` -> same shape (see the module docstring)."""

    def __init__(self, channels: int, args: BlockArgs) -> None:
        super().__init__()
        ted, groups = args.time_embed_dim, args.groups
        self.in_norm = ConditionalGroupNorm(groups, channels, ted)
        self.attention = Attention(channels, channels, channels, args.head_dim)
        self.out_norm = ConditionalGroupNorm(groups, channels, ted)
        hidden = args.expansion_ratio * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        self.temporal_merge1 = AlphaMerge(0.0)
        self.temporal_merge2 = AlphaMerge(0.0)
        flatten_merge_keys(self, ("temporal_merge1", "temporal_merge2"))

    def forward(self, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
        out = attend_over_frames(self.attention, self.in_norm(x, cond.time_embed), cond.require_num_frames())
        x = masked_merge(self.temporal_merge1, x, out, mask)
        return masked_merge(self.temporal_merge2, x, self.feed_forward(self.out_norm(x, cond.time_embed)), mask)


def _run(module: nn.Module | None, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
    return x if module is None else module(x, cond, mask)


def _attn(module: AttentionBlock | None, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
    return x if module is None else module(x, cond)


class InterpDownLevel(nn.Module):
    """Down level: [self-attention] -> [temporal attention] -> groups ``[ResNet cin->cout, cross-attention, ResNet
    cout->cout (2x down on the last group)]``. ``x``: ``(n, cin, h, w)`` -> ``(n', cout, h', w')``."""

    def __init__(
        self, cin: int, cout: int, context_dim: int | None, num_blocks: int, args: BlockArgs, down_sample: bool,
        self_attention: bool, *, temporal: bool, new_params: bool, temporal_attention: bool, time_downsample: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        _slot(self, "self_attention_block", args.attention(cin) if self_attention else None)
        tab = InterpTemporalAttentionBlock(cin, args) if self_attention and temporal_attention else None
        _slot(self, "temporal_attention_block", tab)
        flags = dict(temporal=temporal, new_params=new_params, time_downsample=time_downsample)
        widths = [(cin, cout)] + [(cout, cout)] * (num_blocks - 1)
        groups = []
        for i, (a, b) in enumerate(widths):
            resample = "down" if down_sample and i == num_blocks - 1 else None
            attention = args.attention(b, context_dim) if context_dim else None
            groups.append(nn.ModuleList([InterpResNetBlock(a, b, args, None, **flags), attention,
                                         InterpResNetBlock(b, b, args, resample, **flags)]))  # fmt: skip
        self.resnet_attn_blocks = nn.ModuleList(groups)

    def forward(self, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
        x = _attn(self.self_attention_block, x, cond)
        x = _run(self.temporal_attention_block, x, cond, mask)
        for first, attention, last in self.resnet_attn_blocks:
            x = _attn(attention, first(x, cond, mask), cond)
            x = last(x, cond, mask)
        return x


class InterpUpLevel(nn.Module):
    """Up level: groups ``[ResNet cin->cin (2x up on the first group), cross-attention, ResNet cin->cout]`` ->
    [self-attention] -> [temporal attention]. ``x``: ``(n, cin + skip, h, w)`` -> ``(n', cout, h', w')``.

    Widths as :class:`~ff_lightning.models.unet.UpLevel` (one block goes straight to ``cout``)."""

    def __init__(
        self, cin: int, skip: int, cout: int, context_dim: int | None, num_blocks: int, args: BlockArgs,
        up_sample: bool, self_attention: bool, *, temporal: bool, new_params: bool, temporal_attention: bool,
        time_downsample: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        if num_blocks == 1:
            widths = [(cin + skip, cout)]
        else:
            widths = [(cin + skip, cin)] + [(cin, cin)] * (num_blocks - 2) + [(cin, cout)]
        groups = []
        for i, (a, b) in enumerate(widths):
            first_up = up_sample and i == 0
            attention = args.attention(a, context_dim) if context_dim else None
            first = InterpResNetBlock(a, a, args, "up" if first_up else None, temporal=temporal,
                                      new_params=new_params, time_downsample=time_downsample and first_up)  # fmt: skip
            last = InterpResNetBlock(a, b, args, None, temporal=temporal, new_params=new_params, time_downsample=False)
            groups.append(nn.ModuleList([first, attention, last]))
        self.resnet_attn_blocks = nn.ModuleList(groups)
        _slot(self, "self_attention_block", args.attention(cout) if self_attention else None)
        tab = InterpTemporalAttentionBlock(cout, args) if self_attention and temporal_attention else None
        _slot(self, "temporal_attention_block", tab)

    def forward(self, x: torch.Tensor, cond: UNetConditioning, mask: torch.Tensor) -> torch.Tensor:
        for first, attention, last in self.resnet_attn_blocks:
            x = _attn(attention, first(x, cond, mask), cond)
            x = last(x, cond, mask)
        x = _attn(self.self_attention_block, x, cond)
        return _run(self.temporal_attention_block, x, cond, mask)
