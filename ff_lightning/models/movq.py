"""MoVQ (MoVQGAN) image autoencoder: encoder, vector quantizer, SpatialNorm decoder; registry component ``movq``.

Calling convention (as in the Kandinsky pipelines)::

    latent = movq.encode(frames)                      # quant_conv(encoder(x)); (b t) 3 H W -> (b t) 4 H/f W/f
    frames = movq.decode(latent, num_frames=T)        # decoder(post_quant_conv(latent), zq=latent, num_frames=T)

Kandinsky decodes the *un-quantized* latent; image training quantizes first (:meth:`MoVQ.forward`). Frames of a
video are folded into the batch, ``(b t)``; the :class:`Decoder` carries the optional temporal layers of the video
decoders (see :mod:`ff_lightning.models.video_decoder`), selected by a :class:`TemporalSpec`.
Module names match the released ``movqgan_270M.ckpt`` (``encoder``, ``decoder``, ``quantize``, ``quant_conv``,
``post_quant_conv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ff_lightning.models.layers import (
    AttnBlock,
    Downsample,
    GroupNorm,
    ResnetBlock,
    SpatialNorm,
    TemporalAttnBlock,
    TemporalResnetBlock,
    Upsample,
    in_pieces,
    silu_fresh,
)
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "TemporalSpec",
    "Encoder",
    "Decoder",
    "VectorQuantizer",
    "MoVQ",
    "MoVQOutput",
    "MOVQ_PRESETS",
    "DECODER_CONFIG_KEYS",
]


@dataclass(frozen=True)
class TemporalSpec:
    """Which temporal layers a :class:`Decoder` has (all off: the image decoder).

    - ``conv_kernel``: temporal Conv3d + AlphaMerge after conv1 and conv2 of every ResnetBlock (mid included).
    - ``attention``: a :class:`TemporalAttnBlock` after the middle attention and after every up-path attention.
    - ``resblocks``: a :class:`TemporalResnetBlock` after every ResnetBlock.
    - ``video_convs``: conv1/conv2 of every ResnetBlock are 3x3x3 Conv3d over the frames (2D->3D).
    """

    conv_kernel: tuple[int, int, int] | None = None
    attention: bool = False
    resblocks: bool = False
    video_convs: bool = False

    @property
    def is_temporal(self) -> bool:
        return self.conv_kernel is not None or self.attention or self.resblocks or self.video_convs


class Encoder(nn.Module):
    """Image encoder. ``(n, in_channels, H, W)`` -> ``(n, z_channels (x2 if double_z), H / 2^(L-1), W / 2^(L-1))``.

    ``L = len(ch_mult)`` levels of ``num_res_blocks`` ResnetBlocks (plain GroupNorm), attention at the levels whose
    resolution (counted from ``resolution``) is in ``attn_resolutions``, a downsample between levels, then
    mid (block, attention, block), norm, SiLU, conv.
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        resolution: int,
        in_channels: int = 3,
        z_channels: int = 4,
        double_z: bool = False,
        num_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        block_kw: dict[str, Any] = dict(num_groups=num_groups, dropout=dropout)
        res, block_in = resolution, ch
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult, **block_kw))
                block_in = ch * mult
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, num_groups=num_groups))
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, **block_kw)
        self.mid.attn_1 = AttnBlock(block_in, num_groups=num_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, **block_kw)
        self.norm_out = GroupNorm(block_in, num_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


# Structural arguments of a Decoder (what a conversion copies from an image decoder to a video one).
DECODER_CONFIG_KEYS = (
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "resolution",
    "z_channels",
    "zq_channels",
    "out_ch",
    "num_groups",
    "dropout",
    "attn_zq_first_frame",
)


class Decoder(nn.Module):
    """MoVQ decoder with SpatialNorm everywhere and optional temporal layers (:class:`TemporalSpec`).

    ``forward(z, zq, num_frames)``: ``z`` is ``post_quant_conv(latent)``, ``(b t) z_channels h w``; ``zq`` is the
    latent itself, ``(b t) zq_channels h w``; returns ``(b t) out_ch (h * 2^(L-1)) (w * 2^(L-1))``. Frames of one
    video are consecutive rows; ``num_frames`` (``t``) only matters when the decoder has temporal layers.

    Layout (released order, which the state dict follows): conv_in; mid (block_1, attn_1, [temporal_attn_1],
    block_2, [temporal_block_1, temporal_block_2]); ``up[level]`` (block, attn, temporal_attn, temporal_block,
    upsample) with ``num_res_blocks + 1`` blocks per level, ``up[0]`` the full-resolution level; norm_out; conv_out.
    Forward order as released: mid block_1, attn_1, temporal_attn_1, temporal_block_1, block_2, temporal_block_2;
    per up block: block, temporal_block, attn, temporal_attn.

    ``attn_zq_first_frame`` reproduces a quirk of the released Kandinsky Video decoder (its spatial attention runs
    frame by frame but hands the whole batch's ``zq`` to its SpatialNorm, which then uses the first row): every
    spatial-attention norm is conditioned on the latent of the *first frame of each video*. Off by default (each
    frame uses its own latent, as MoVQGAN does, and a video decoder starts equal to the image decoder); turn it on
    only to reproduce the released video decoder's outputs (it also makes chunked decoding inexact).
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        resolution: int,
        z_channels: int = 4,
        zq_channels: int | None = None,
        out_ch: int = 3,
        num_groups: int = 32,
        dropout: float = 0.0,
        attn_zq_first_frame: bool = False,
        temporal: TemporalSpec | None = None,
    ) -> None:
        super().__init__()
        zq_channels = z_channels if zq_channels is None else zq_channels
        self.attn_zq_first_frame = attn_zq_first_frame
        self.temporal = temporal = temporal or TemporalSpec()
        self.config: dict[str, Any] = dict(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            zq_channels=zq_channels,
            out_ch=out_ch,
            num_groups=num_groups,
            dropout=dropout,
            attn_zq_first_frame=attn_zq_first_frame,
        )
        norm_kw: dict[str, Any] = dict(zq_channels=zq_channels, num_groups=num_groups)
        block_kw: dict[str, Any] = dict(
            **norm_kw, dropout=dropout, temporal_kernel=temporal.conv_kernel, video_convs=temporal.video_convs
        )
        extra_kw: dict[str, Any] = dict(**norm_kw, dropout=dropout)

        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, **block_kw)
        self.mid.attn_1 = AttnBlock(block_in, **norm_kw)
        if temporal.attention:
            self.mid.temporal_attn_1 = TemporalAttnBlock(block_in, **norm_kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, **block_kw)
        if temporal.resblocks:
            self.mid.temporal_block_1 = TemporalResnetBlock(block_in, **extra_kw)
            self.mid.temporal_block_2 = TemporalResnetBlock(block_in, **extra_kw)

        levels: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            stage.temporal_attn, stage.temporal_block = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, block_out, **block_kw))
                block_in = block_out
                if temporal.resblocks:
                    stage.temporal_block.append(TemporalResnetBlock(block_in, **extra_kw))
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, **norm_kw))
                    if temporal.attention:
                        stage.temporal_attn.append(TemporalAttnBlock(block_in, **norm_kw))
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, stage)
        self.up = nn.ModuleList(levels)
        self.norm_out = SpatialNorm(block_in, zq_channels, num_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def _attention_zq(self, zq: torch.Tensor, num_frames: int) -> torch.Tensor:
        if not self.attn_zq_first_frame:
            return zq
        first = rearrange(zq, "(b t) c h w -> b t c h w", t=num_frames)[:, 0]  # the first frame of each video
        return repeat(first, "b c h w -> (b t) c h w", t=num_frames)  # broadcast back over its frames

    def forward(self, z: torch.Tensor, zq: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        t = num_frames
        attn_zq = self._attention_zq(zq, t)
        h = self.conv_in(z)
        h = self.mid.block_1(h, zq, t)
        h = self.mid.attn_1(h, attn_zq)
        if self.temporal.attention:
            h = self.mid.temporal_attn_1(h, t)
        if self.temporal.resblocks:
            h = self.mid.temporal_block_1(h, zq, t)
        h = self.mid.block_2(h, zq, t)
        if self.temporal.resblocks:
            h = self.mid.temporal_block_2(h, zq, t)
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h, zq, t)
                if len(stage.temporal_block):
                    h = stage.temporal_block[i](h, zq, t)
                if len(stage.attn):
                    h = stage.attn[i](h, attn_zq)
                    if len(stage.temporal_attn):
                        h = stage.temporal_attn[i](h, t)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return in_pieces(lambda x, z: self.conv_out(silu_fresh(self.norm_out(x, z))), h, zq)


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantizer (``n_embed`` codes of size ``embed_dim``) with a straight-through gradient.

    ``forward(z)``: ``z`` ``(n, embed_dim, h, w)`` -> ``(z_q, loss, indices)``; ``z_q`` has ``z``'s shape and value
    ``codebook[indices]`` but passes gradients to ``z`` unchanged; ``indices`` ``(n, h, w)`` (int64).
    ``loss = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)`` with ``legacy=True`` (the taming form
    MoVQGAN trains with: beta weighs the codebook term); ``legacy=False`` puts beta on the commitment term.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25, legacy: bool = True) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta, self.legacy = n_embed, embed_dim, beta, legacy
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``(n, h, w)`` of the nearest code (squared L2) for ``z`` ``(n, embed_dim, h, w)``."""
        flat = rearrange(z, "n c h w -> (n h w) c")  # one row per latent pixel
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()  # (n h w) n_embed
        return rearrange(dist.argmin(1), "(n h w) -> n h w", n=z.shape[0], h=z.shape[2])  # back to the grid

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes for ``indices`` ``(n, h, w)`` as a latent ``(n, embed_dim, h, w)``."""
        return rearrange(self.embedding(indices), "n h w c -> n c h w")  # channels first

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = self.nearest(z.detach())
        z_q = self.lookup(indices)
        commit, codebook = F.mse_loss(z, z_q.detach()), F.mse_loss(z_q, z.detach())
        loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
        z_q = z + (z_q - z).detach()  # straight-through: value z_q, gradient identity to z
        return z_q, loss, indices


class MoVQOutput(NamedTuple):
    sample: torch.Tensor  # (b t) out_ch H W reconstruction
    codebook_loss: torch.Tensor  # scalar
    indices: torch.Tensor  # (b t) h w code indices


class MoVQ(nn.Module):
    """The MoVQGAN autoencoder: ``encoder``, ``decoder``, ``quantize``, ``quant_conv``, ``post_quant_conv``.

    ``temporal`` builds the decoder as a video decoder (see :mod:`ff_lightning.models.video_decoder` for the named
    variants and for converting a trained image MoVQ).
    """

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        attn_resolutions: tuple[int, ...],
        resolution: int,
        in_channels: int = 3,
        out_ch: int = 3,
        z_channels: int = 4,
        double_z: bool = False,
        embed_dim: int = 4,
        n_embed: int = 16384,
        beta: float = 0.25,
        num_groups: int = 32,
        dropout: float = 0.0,
        temporal: TemporalSpec | None = None,
    ) -> None:
        super().__init__()
        shared: dict[str, Any] = dict(
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=tuple(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            num_groups=num_groups,
            dropout=dropout,
        )
        self.encoder = Encoder(**shared, in_channels=in_channels, double_z=double_z)
        self.decoder = Decoder(**shared, zq_channels=embed_dim, out_ch=out_ch, temporal=temporal)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta)
        self.quant_conv = nn.Conv2d(z_channels * (2 if double_z else 1), embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frames ``(b t) in_channels H W`` in [-1, 1] -> un-quantized latent ``(b t) embed_dim h w``."""
        return self.quant_conv(self.encoder(x))

    def decode(self, latent: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Latent ``(b t) embed_dim h w`` (quantized or not) -> frames ``(b t) out_ch H W`` (about [-1, 1])."""
        return self.decoder(self.post_quant_conv(latent), latent, num_frames=num_frames)

    def decode_indices(self, indices: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Code indices ``(b t) h w`` -> frames ``(b t) out_ch H W``."""
        return self.decode(self.quantize.lookup(indices), num_frames=num_frames)

    def forward(self, x: torch.Tensor, num_frames: int = 1) -> MoVQOutput:
        """Image-training pass: encode, quantize (straight-through), decode."""
        z_q, loss, indices = self.quantize(self.encode(x))
        return MoVQOutput(self.decode(z_q, num_frames=num_frames), loss, indices)

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's last conv weight (for the adaptive GAN-loss weight)."""
        return self.decoder.conv_out.weight


# Size presets shared by the ``movq`` and ``decoder`` components (the decoder uses DECODER_CONFIG_KEYS of them).
MOVQ_PRESETS: dict[str, dict[str, Any]] = {
    # 32x32 frames -> 16x16 latents; attention at the lowest level (so attention variants have something to do).
    "tiny": dict(
        ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(16,),
        resolution=32,
        z_channels=4,
        embed_dim=4,
        n_embed=256,
        num_groups=8,
        dropout=0.0,
    ),
    # the paper's layout (f = 8, attention at the latent level) at a quarter of the width, one block per level.
    "small": dict(
        ch=64,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attn_resolutions=(32,),
        resolution=256,
        z_channels=4,
        embed_dim=4,
        n_embed=16384,
        num_groups=32,
        dropout=0.0,
    ),
    # MoVQGAN 270M (configs/movqgan_270M.yaml).
    "paper": dict(
        ch=256,
        ch_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(32,),
        resolution=256,
        z_channels=4,
        embed_dim=4,
        n_embed=16384,
        num_groups=32,
        dropout=0.0,
    ),
}

register_component("movq", MOVQ_PRESETS, "MoVQ image autoencoder (encoder, quantizer, SpatialNorm decoder)")
register_variant("movq", "movqgan", MoVQ, description="MoVQGAN: the Kandinsky 3 / Kandinsky Video image autoencoder")
