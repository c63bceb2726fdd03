"""Kandinsky Video 1.1 keyframe UNet (registry ``keyframe_unet`` / ``kv1_1``): the released ``t2v.pt`` model.

Facts read off the public release code (ai-forever/KandinskyVideo, commit "Release Kandinsky Video 1.1",
``kandinsky_video/model/unet.py``, ``model/diffusion.py``, ``t2v_pipeline.py``; nothing copied):

- The Kandinsky 3 UNet with the 1.0 temporal blocks (same positions, same shapes), and on top:
  ``in_layer`` Conv2d(9 -> init, 3x3) over ``[noisy latent 4 | first-frame latent 4 (zeros on other frames) |
  mask 1]``; ``image_in_layer``, a second Conv2d of the same shape, used instead of ``in_layer`` in *image mode*
  (the release picks it when the batch has at most 2 rows, i.e. one image with its guidance twin); and two sinusoidal
  MLPs ``temporal_noise_aug_time_encoding`` (the first frame's noise-augmentation level) and
  ``temporal_motion_score_encoding`` (motion score), each Sinusoidal(init) -> Linear -> SiLU -> Linear(time_embed).
- Their sum with the frame-position embedding (``to_temporal_embed`` of positions ``0, 1, ..., t-1``: stride 1,
  12 keyframes) is the *temporal embedding*, added to the time embedding for the temporal parts only: every temporal
  ResNet block norm and both norms of the temporal attention blocks are conditioned on ``time + temporal`` (in 1.0
  the ResNet blocks and the attention's feed-forward norm see ``time`` alone, its input norm the positions alone).
  The attention blocks' norms are named ``temporal_norm`` / ``ff_norm`` (1.0: ``in_norm`` / ``out_norm``).
- Without frame positions (image mode) every temporal part is skipped: the model is the image UNet behind
  ``image_in_layer`` (the release's first-frame generation feeds zeros as first frame and mask there).

Conversion from an image UNet (:func:`kv11_keyframe_unet_from_t2i`): spatial weights kept bit-exact and frozen; the
two input convs get the image conv in their first ``c`` input channels and zeros elsewhere, the two new MLPs end in a
zero Linear, the temporal blocks are zero-initialised as for 1.0: so both modes start as the image model, frame by
frame, whatever first frame, motion score or noise level they are given.
"""

from __future__ import annotations

import copy as copylib
from typing import Any

import torch
from torch import nn

from ff_lightning.models.keyframes import KeyframeDesign, KeyframeUNet, make_frame_positions  # registers keyframe_unet
from ff_lightning.models.reference import pack_reference_input, reference_level_embedding
from ff_lightning.models.unet import Attention, ConditionalGroupNorm, KandinskyUNet, UNetConditioning
from ff_lightning.models.unet_temporal import TemporalResNetBlock, attend_over_frames, per_row
from ff_lightning.registry import register_variant

__all__ = [
    "KV11_NUM_FRAMES",
    "KV11_MOTION_SCORES",
    "KV11_NOISE_AUGMENTATION",
    "KV11TemporalResNetBlock",
    "KV11TemporalAttentionBlock",
    "KV11KeyframeUNet",
    "kv11_keyframe_unet_from_t2i",
]

KV11_NUM_FRAMES = 12  # keyframes per clip in the release pipeline
#: the release pipeline's ``motion`` names -> motion score (an unknown name falls back to ``medium``)
KV11_MOTION_SCORES = {"low": 1, "medium": 10, "high": 50, "extreme": 100}
KV11_NOISE_AUGMENTATION = 20  # the release pipeline's default noise level of the first frame (timestep units)
_DESIGN = KeyframeDesign(
    "Kandinsky Video 1.1 (released t2v.pt): temporal blocks + first-frame input, image_in_layer, motion score and "
    "noise-augmentation embeddings", resnet_kernel=(3, 1, 1), attention_blocks=True, reference=True,
)  # fmt: skip


def _temporal_embed(cond: UNetConditioning) -> torch.Tensor | None:
    """``time + temporal`` embedding of the 1.1 temporal parts, or None in image mode (no frame positions)."""
    return None if cond.frame_embed is None else cond.time_embed + cond.frame_embed


class KV11TemporalResNetBlock(TemporalResNetBlock):
    """The 1.0 temporal ResNet block (same parameters), its norms conditioned on ``time + temporal``; skipped
    (identity) in image mode. ``x``: ``(b t) c h w`` -> same shape."""

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        embed = _temporal_embed(cond)
        if embed is None:
            return x
        return super().forward(x, UNetConditioning(embed, None, None, num_frames=cond.require_num_frames()))


class KV11TemporalAttentionBlock(nn.Module):
    """``x + Attn_t(temporal_norm(x, e))``, then ``+ FF(ff_norm(x, e))`` with ``e = time + temporal``; attention
    output projection (and the feed-forward's last conv with ``zero_init_ffn``) zero-initialised; identity in image
    mode. ``x``: ``(b t) c h w`` -> same shape."""

    def __init__(
        self, channels: int, time_embed_dim: int, groups: int, head_dim: int, expansion_ratio: int = 4,
        zero_init_ffn: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.channels = channels
        self.temporal_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        self.temporal_attention = Attention(channels, channels, channels, head_dim)
        nn.init.zeros_(self.temporal_attention.output_layer.weight)
        self.ff_norm = ConditionalGroupNorm(groups, channels, time_embed_dim)
        hidden = expansion_ratio * channels
        self.feed_forward = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.SiLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        if zero_init_ffn:
            nn.init.zeros_(self.feed_forward[2].weight)

    def forward(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        embed = _temporal_embed(cond)
        if embed is None:
            return x
        x = x + attend_over_frames(self.temporal_attention, self.temporal_norm(x, embed), cond.require_num_frames())
        return x + self.feed_forward(self.ff_norm(x, embed))


class KV11KeyframeUNet(KeyframeUNet):
    """Kandinsky Video 1.1 keyframe UNet; build with :func:`kv11_keyframe_unet_from_t2i` (or the registry).

    ``forward(x, time, context, context_mask=None, *, num_frames=None, frame_positions=None, frame_stride=None,
    first_frame=None, first_frame_rows=None, noise_level=None, motion_score=None)`` (video mode):

    - ``x``: ``(b t) c h w`` noisy latents (``c`` = 4); ``time`` / ``context`` / ``context_mask`` per row or per
      video as in :class:`KeyframeUNet`; frame positions default to ``0, 1, ..., t-1`` (the release).
    - ``first_frame``: ``(b, c, h, w)`` the conditioning frame's latent (None: zeros and mask 0, the release's
      unconditional branch); ``first_frame_rows``: which frame carries it (default frame 0; see
      :func:`~ff_lightning.models.reference.reference_rows`).
    - ``noise_level`` / ``motion_score``: ``(b,)``, ``(b t,)`` or scalar; None leaves that embedding out (as the
      release does). The release pipeline passes 20 and 10 (``medium``) by default; see :data:`KV11_MOTION_SCORES`.

    :meth:`forward_image` is image mode; :meth:`forward_official` takes the release's signature and packed input.
    Returns ``(b t) out_channels h w``.
    """

    def __init__(
        self, image_unet: KandinskyUNet, num_frames: int = KV11_NUM_FRAMES, frame_stride: int = 1,
        zero_init_ffn: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(image_unet, "ref_blocks_conv1d_attn1d", num_frames, frame_stride, zero_init_ffn)
        cfg = self.config
        del self.reference_level_embed  # 1.1 conditions the temporal parts instead (below)
        channels = self.in_layer.noisy_channels
        if self.in_layer.weight.device.type == "meta":
            conv = nn.Conv2d(2 * channels + 1, cfg["init_channels"], 3, padding=1, device="meta")
        else:  # [image conv | zeros]: the image model's map on the noisy channels, blind to the rest
            conv = self.in_layer.fused()
        self.in_layer = conv
        self.image_in_layer = copylib.deepcopy(conv)
        ref = self.in_layer.weight
        for name in ("temporal_noise_aug_time_encoding", "temporal_motion_score_encoding"):
            mlp = reference_level_embedding(cfg["init_channels"], cfg["time_embed_dim"])
            setattr(self, name, mlp.to(device=ref.device, dtype=ref.dtype))
        self.kind, self.design = "kv1_1", _DESIGN
        self.config.update(kind="kv1_1", reference_channels=channels + 1)
        self.inherited_parameter_names = frozenset(
            n for n in self.inherited_parameter_names if not n.startswith("in_layer.")
        )

    def _insert_temporal(self, design: KeyframeDesign, zero_init_ffn: bool) -> None:
        cfg = self.config
        ref = self.in_layer.weight
        ted, groups = cfg["time_embed_dim"], cfg["groups"]
        for levels, down in ((self.down_samples, True), (self.up_samples, False)):
            for level in levels:
                for group in level.resnet_attn_blocks:
                    channels = group.in_resnet.out_channels if down else group.in_resnet.in_channels
                    for _ in range(2):
                        block = KV11TemporalResNetBlock(channels, ted, groups, cfg["compression_ratio"], (3, 1, 1))
                        group.append(block.to(device=ref.device, dtype=ref.dtype))
                if level.self_attention_block is not None:
                    block = KV11TemporalAttentionBlock(
                        level.self_attention_block.channels, ted, groups, cfg["head_dim"], cfg["expansion_ratio"],
                        zero_init_ffn=zero_init_ffn,
                    )  # fmt: skip
                    level.temporal_attention_block = block.to(device=ref.device, dtype=ref.dtype)

    def image_unet(self) -> KandinskyUNet:
        raise NotImplementedError("the 1.1 model has no separate image UNet: use forward_image (image mode)")

    def _trunk(self, x: torch.Tensor, cond: UNetConditioning) -> torch.Tensor:
        """``forward_features`` after the input conv: ``(n, init, h, w)`` -> ``(n, out, h, w)``."""
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

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        *,
        num_frames: int | None = None,
        frame_positions: torch.Tensor | None = None,
        frame_stride: int | torch.Tensor | None = None,
        first_frame: torch.Tensor | None = None,
        first_frame_rows: torch.Tensor | int | None = None,
        noise_level: float | torch.Tensor | None = None,
        motion_score: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        num_frames = self.num_frames if num_frames is None else num_frames
        rows = x.shape[0]
        if rows % num_frames:
            raise ValueError(f"batch of {rows} rows is not a multiple of num_frames={num_frames}")
        packed = pack_reference_input(x, num_frames, first_frame, first_frame_rows)  # (b t) (2c + 1) h w
        if frame_positions is None:
            stride = self.frame_stride if frame_stride is None else frame_stride
            frame_positions = make_frame_positions(num_frames, stride, rows // num_frames, x.device)
        return self._video(packed, time, context, context_mask, num_frames, frame_positions, noise_level, motion_score)

    def _video(
        self, x: torch.Tensor, time: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None,
        num_frames: int, positions: torch.Tensor, noise_level: float | torch.Tensor | None,
        motion_score: float | torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        rows = x.shape[0]
        time = per_row(time, rows, num_frames).to(x.device)
        context = per_row(context, rows, num_frames) if context is not None else None
        context_mask = per_row(context_mask, rows, num_frames) if context_mask is not None else None
        temporal = self.to_temporal_embed(per_row(positions, rows, num_frames).to(x.device))
        for mlp, value in ((self.temporal_noise_aug_time_encoding, noise_level),
                           (self.temporal_motion_score_encoding, motion_score)):  # fmt: skip
            if value is not None:
                temporal = temporal + mlp(per_row(torch.as_tensor(value, device=x.device), rows, num_frames))
        time_embed = self.embed_time(time, context, context_mask)
        cond = UNetConditioning(time_embed, context, context_mask, num_frames=num_frames, frame_embed=temporal)
        return self._trunk(self.in_layer(x), cond)

    def forward_image(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image mode (the release's first-frame generation): ``x`` ``(n, c, h, w)`` noisy latents (or already packed
        ``(n, 2c + 1, h, w)``), no temporal parts, ``image_in_layer``. Returns ``(n, out_channels, h, w)``."""
        if x.shape[1] != self.image_in_layer.in_channels:
            x = pack_reference_input(x, 1, None)
        cond = UNetConditioning(self.embed_time(time, context, context_mask), context, context_mask)
        return self._trunk(self.image_in_layer(x), cond)

    def forward_official(  # type: ignore[override]
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        temporal_embed: torch.Tensor | None = None,
        num_frames: int | None = None,
        noise_aug_time: torch.Tensor | None = None,
        motion_score: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The release's call on packed input ``(n, 2c + 1, h, w)``: ``temporal_embed`` raw frame positions per row
        (None: image mode). Unlike the release, the input conv follows the mode, not the batch size (the release
        takes ``image_in_layer`` whenever ``n <= 2``)."""
        if temporal_embed is None:
            return self.forward_image(x, time, context, context_mask)
        frames = self.num_frames if num_frames is None else num_frames
        return self._video(x, time, context, context_mask, frames, temporal_embed, noise_aug_time, motion_score)


def kv11_keyframe_unet_from_t2i(
    unet: KandinskyUNet,
    num_frames: int = KV11_NUM_FRAMES,
    *,
    frame_stride: int = 1,
    copy: bool = True,
    freeze_spatial: bool = True,
    zero_init_ffn: bool = True,
) -> KV11KeyframeUNet:
    """Convert an image UNet into the 1.1 keyframe UNet (see the module docstring); works on the meta device.

    With ``freeze_spatial`` the inherited spatial weights are frozen; the input convs, the temporal parts and the
    three embeddings (positions, noise level, motion score) are trainable.
    """
    source = copylib.deepcopy(unet) if copy else unet
    model = KV11KeyframeUNet(source, num_frames, frame_stride, zero_init_ffn)
    model.freeze_inherited(freeze_spatial)
    return model


def build_kv11_keyframe_unet(
    *, num_frames: int = KV11_NUM_FRAMES, frame_stride: int = 1, zero_init_ffn: bool = True, **unet_config: Any
) -> KV11KeyframeUNet:
    """Registry builder: a fresh image UNet of ``unet_config``, converted."""
    unet_config.pop("kind", None)
    return kv11_keyframe_unet_from_t2i(
        KandinskyUNet(**unet_config), num_frames, frame_stride=frame_stride, copy=False, zero_init_ffn=zero_init_ffn
    )


register_variant(
    "keyframe_unet",
    "kv1_1",
    build_kv11_keyframe_unet,
    description=_DESIGN.description,
    num_frames=KV11_NUM_FRAMES,
    frame_stride=1,
)
