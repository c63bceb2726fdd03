"""Temporal layers and blocks that turn the Kandinsky 3 UNet into a video model.

All take and return frames folded in the batch, ``(b t) c h w``, and read the temporal axis length ``t`` from
:class:`~ff_lightning.models.unet.UNetConditioning` (``cond.num_frames``): frames of a keyframe video, or the
interpolation groups of the interpolation model. Norms and convs never loop over frames; the temporal axis is unfolded
with einops only inside the temporal op.

- :class:`TemporalResNetBlock` (released keyframe model): 4 stages ConditionalGroupNorm(time) -> SiLU -> Conv3d with
  kernels (1,1,1), k, k, (1,1,1) (k = (3,1,1) released, (3,3,3) for the conv3d ablation), width C/2 inside, last
  conv zero-initialised, residual. Keys ``temporal_resnet_blocks.{stage}.{0: norm, 2: conv}``.
- :class:`TemporalAttentionBlock` (released keyframe model): ConditionalGroupNorm(frame-position embedding) ->
  multi-head attention over ``t`` at every pixel (output projection zero-initialised) -> residual ->
  ConditionalGroupNorm(time) -> 1x1 feed-forward C -> 4C -> C without bias -> residual.
- :class:`TemporalAttentionLayer` ("temporal layers" baseline, not released): ConditionalGroupNorm(frame-position
  embedding) -> attention over ``t`` (output zero-initialised) -> residual; placed after each spatial attention.
- :func:`add_temporal_conv`: fills a ResNet stage's ``temporal_projection`` (Conv3d, zero-init) and
  ``temporal_merge`` (AlphaMerge, init 0) slots: ``x = (1 - a) x + a conv3d(x)`` after the spatial conv
  (interpolation model, and the "temporal layers" keyframe baseline). Saved as the released bare key
  ``temporal_merge``.

Identity at initialisation: every piece above returns its input exactly while its zero-initialised weights are zero.
The release does not zero the feed-forward of :class:`TemporalAttentionBlock` (default init), so a fresh released
block changes ``x`` through that residual although its attention output is zero; here ``zero_init_ffn=True``
(default) zeroes the feed-forward's last conv so that a converted video model equals its image model at
initialisation. Loaded official weights overwrite it, so loading is unaffected; pass ``zero_init_ffn=False`` for the
released initialisation.

:class:`VideoUNet` is the common base of the keyframe and interpolation models: it adopts the modules of an image
UNet (so the state-dict keys stay the released ones) and remembers which parameters it inherited.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from einops import rearrange, repeat
from torch import nn

from ff_lightning.models.temporal import (
    AlphaMerge,
    conv3d_frames,
    flatten_merge_keys,
    zero_module,
)
from ff_lightning.models.unet import Attention, Block, ConditionalGroupNorm, KandinskyUNet, UNetConditioning

__all__ = [
    "attend_over_frames",
    "TemporalResNetBlock",
    "TemporalAttentionBlock",
    "TemporalAttentionLayer",
    "add_temporal_conv",
    "per_row",
    "VideoUNet",
]


def attend_over_frames(attention: Attention, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Self-attention over the ``t`` frames of each video at every pixel (no mixing across pixels).

    ``x``: ``(b t) c h w`` -> ``(b t) c h w`` (the attention's output, without residual).
    """
    h, w = x.shape[-2:]
    if x.shape[0] % num_frames:
        raise ValueError(f"batch of {x.shape[0]} rows is not a multiple of num_frames={num_frames}")
    seq = rearrange(x, "(b t) c h w -> (b h w) t c", t=num_frames)  # one sequence of t frames per pixel
    out = attention(seq, seq)
    return rearrange(out, "(b h w) t c -> (b t) c h w", h=h, w=w)  # back to folded frames


class TemporalResNetBlock(nn.Module):
    """Residual stack of 4 Conv3d stages over the temporal axis; see the module docstring.

    ``kernel``: the kernel of the two middle stages (``(3, 1, 1)`` released, ``(3, 3, 3)`` for the conv3d kind),
    "same" padding. ``x``: ``(b t) c h w`` -> same shape.
    """

    def __init__(
        self,
        channels: int,
        time_embed_dim: int,
        groups: int,
        compression_ratio: int = 2,
        kernel: tuple[int, int, int] = (3, 1, 1),
    ) -> None:
        super().__init__()
        hidden = channels // compression_ratio
        widths = [(channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, channels)]
        kernels = [(1, 1, 1), tuple(kernel), tuple(kernel), (1, 1, 1)]
        self.temporal_resnet_blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    ConditionalGroupNorm(groups, cin, time_embed_dim),
                    nn.SiLU(),
                    nn.Conv3d(cin, cout, k, padding=tuple(s // 2 for s in k)),
                ]
            )
            for (cin, cout), k in zip(widths, kernels)
        )
        zero_module(self.temporal_resnet_blocks[-1][-1])

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        num_frames = cond.require_num_frames()
        out = x
        for norm, act, conv in self.temporal_resnet_blocks:
            out = act(norm(out, cond.time_embed))  # per frame: (b t) c h w
            out = conv3d_frames(conv, out, num_frames)  # the Conv3d over each video's frames, folded layout
        return x + out


class TemporalAttentionBlock(nn.Module):
    """Released temporal attention block; see the module docstring. ``x``: ``(b t) c h w`` -> same shape.

    ``in_norm`` is conditioned on ``cond.frame_embed`` (frame positions), ``out_norm`` on ``cond.time_embed``.
    """

    def __init__(
        self,
        channels: int,
        time_embed_dim: int,
        groups: int,
        head_dim: int,
        expansion_ratio: int = 4,
        zero_init_ffn: bool = True,
    ) -> None:
        super().__init__()
        self.in_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        self.temporal_attention = Attention(channels, channels, channels, head_dim)
        zero_module(self.temporal_attention.output_layer)
        self.out_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        hidden = expansion_ratio * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        if zero_init_ffn:
            zero_module(self.feed_forward[2])

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        out = self.in_norm(x, cond.require_frame_embed())
        x = x + attend_over_frames(self.temporal_attention, out, cond.require_num_frames())
        return x + self.feed_forward(self.out_norm(x, cond.time_embed))


class TemporalAttentionLayer(nn.Module):
    """ "Temporal layers" attention: ``x + Attention_t(norm(x, frame_embed))``, output projection zero-init.

    ``x``: ``(b t) c h w`` -> same shape. Keys ``norm.*`` and ``attention.*`` (no released checkpoint exists).
    """

    def __init__(self, channels: int, time_embed_dim: int, groups: int, head_dim: int) -> None:
        super().__init__()
        self.norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        self.attention = Attention(channels, channels, channels, head_dim)
        zero_module(self.attention.output_layer)

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        return x + attend_over_frames(
            self.attention, self.norm(x, cond.require_frame_embed()), cond.require_num_frames()
        )


def add_temporal_conv(block: Block, kernel: tuple[int, int, int] = (3, 1, 1)) -> None:
    """Fill the temporal slots of a ResNet stage: a zero-initialised Conv3d after its spatial conv, blended in by an
    :class:`~ff_lightning.models.temporal.AlphaMerge` (init 0) saved under the bare key ``temporal_merge``."""
    if block.temporal_projection is not None:
        raise ValueError("this ResNet stage already has a temporal conv")
    channels = block.projection.out_channels
    ref = block.projection.weight
    conv = nn.Conv3d(channels, channels, kernel, padding=tuple(k // 2 for k in kernel), device=ref.device)
    block.temporal_projection = zero_module(conv.to(ref.dtype))
    block.temporal_merge = AlphaMerge(0.0).to(device=ref.device, dtype=ref.dtype)
    flatten_merge_keys(block, ("temporal_merge",))


def per_row(value: torch.Tensor | float, rows: int, num_frames: int) -> torch.Tensor:
    """Broadcast a per-video value to one entry per folded row.

    ``value``: a scalar, ``(rows, ...)`` (already per row, returned as is) or ``(rows // num_frames, ...)`` (one entry
    per video, repeated for its ``num_frames`` rows: ``b ... -> (b t) ...``).
    """
    value = torch.as_tensor(value)
    if value.ndim == 0:
        return value.expand(rows)
    if value.shape[0] == rows:
        return value
    if value.shape[0] * num_frames == rows:
        return repeat(value, "b ... -> (b t) ...", t=num_frames)  # one copy per frame of each video
    raise ValueError(f"expected {rows} rows or {rows // num_frames} videos, got a leading size of {value.shape[0]}")


class VideoUNet(KandinskyUNet):
    """Base of the video UNets: built around an image :class:`KandinskyUNet` whose modules it adopts (shared, not
    copied; conversion functions deep-copy first unless told not to).

    ``embeddings`` are registered after ``feature_pooling``, as in the released state dicts.
    ``inherited_parameter_names`` lists the parameters taken over unchanged from the image model (set by
    :meth:`mark_inherited` once the conversion is done); every other parameter is new or re-shaped.
    """

    def __init__(self, image_unet: KandinskyUNet, embeddings: Mapping[str, nn.Module | None]) -> None:
        nn.Module.__init__(self)  # the spatial modules are adopted from image_unet, not built again
        if type(image_unet) is not KandinskyUNet:
            raise TypeError(f"expected an image KandinskyUNet, got {type(image_unet).__name__}")
        self._adopt(image_unet, embeddings)
        # strong references (not ids: a replaced parameter's id may be reused by a new one) until mark_inherited
        self._image_parameters = tuple(image_unet.parameters())
        self.inherited_parameter_names: frozenset[str] = frozenset()

    def mark_inherited(self) -> None:
        """Record which parameters are the image model's own tensors (call at the end of a conversion)."""
        ids = {id(p) for p in self.__dict__.pop("_image_parameters", ())}
        self.inherited_parameter_names = frozenset(n for n, p in self.named_parameters() if id(p) in ids)

    def added_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of everything the conversion added or re-shaped (temporal layers, embeddings...)."""
        return ((n, p) for n, p in self.named_parameters() if n not in self.inherited_parameter_names)

    def freeze_inherited(self, freeze: bool = True) -> None:
        """Set ``requires_grad = not freeze`` on the inherited (spatial) parameters; the added ones stay trainable."""
        for name, p in self.named_parameters():
            p.requires_grad_(not freeze if name in self.inherited_parameter_names else True)
