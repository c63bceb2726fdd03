"""Keyframe UNets: the Kandinsky 3 image UNet turned into a text-to-video model (registry ``keyframe_unet``).

:func:`keyframe_unet_from_t2i` converts an image UNet: its spatial weights are kept bit-exact (deep-copied unless
``copy=False``) and frozen, and temporal layers or blocks are inserted, all initialised so that the video model equals
the image model frame by frame (see :mod:`ff_lightning.models.unet_temporal` for the pieces). Kinds:

========================  ==============================================================================================
``blocks_conv1d_attn1d``  The released design (Kandinsky Video 1.0). A :class:`TemporalResNetBlock` (middle kernels
                          3x1x1) after every spatial ResNet block of the down path and before every one of the up path
                          (indices 3 and 4 of each ``resnet_attn_blocks`` group); a :class:`TemporalAttentionBlock`
                          after the self-attention at the start of each down level that has one, and before it at the
                          end of each such up level.
``blocks_conv1d``         Only the temporal ResNet blocks (3x1x1).
``blocks_conv3d``         Only the temporal ResNet blocks, middle kernels 3x3x3 where the release uses 3x1x1.
``blocks_attn1d``         Only the temporal attention blocks.
``layers``                "Temporal layers" (the paper's baseline, never released): after each spatial conv of every
                          ResNet stage a zero-initialised Conv3d (3,1,1) merged by a learned alpha (init 0), the
                          interpolation model's ``temporal_projection`` / ``temporal_merge``; and after each spatial
                          attention (self and cross) a :class:`TemporalAttentionLayer` with zero-initialised output.
``layers_conv``           Only the temporal convs of ``layers``.
``layers_attn``           Only the temporal attention layers of ``layers``.
========================  ==============================================================================================

``ref_blocks_conv1d_attn1d``: ``blocks_conv1d_attn1d`` + reference-image conditioning (the VideoGen / Kandinsky Video
1.1 idea; no released checkpoint): the input conv sees ``[noisy | reference latent on the given frames | mask]`` and
the reference's noise-augmentation level is added to the time embedding (see "Reference kinds" below).

Derived kinds (no released checkpoint): "each spatial conv" of ``layers`` means the four convs of every ResNet stage
(where the released interpolation model puts its temporal convs); the input / output convs, the 2x2 resampling
convs, the shortcut convs and the 1x1 feed-forward convs get none. The conv3d kind swaps the released 3x1x1 middle
kernels for 3x3x3 and keeps everything else; the conv1d / attn1d kinds keep only the resnet / attention blocks.

Frame rate: kinds with temporal attention embed the frame positions ``0, s, 2s, ...`` (sinusoidal -> MLP,
``to_temporal_embed``) and condition the attention's input norm on them. The stride ``s`` is how the frame rate is
conditioned: by default ``180 // num_frames`` (the release: 15 frames -> 0, 12, ..., 168); a data pipeline that
samples frames further apart or closer passes its own ``frame_stride`` (per video) or explicit ``frame_positions``.
Kinds without temporal attention have no frame-position embedding (the release feeds it to attention only).

Conditioning per row: ``time``, ``context`` and ``context_mask`` may be given per video (``b``) or per folded row
(``b t``, the release's layout); per-video values are repeated for each frame.

Reference kinds (``ref_*``): the image model's input conv becomes a
:class:`~ff_lightning.models.reference.ReferenceInputConv` (its ``in_layer.weight`` / ``in_layer.bias`` are the image
model's, bit-exact and frozen; the extra ``in_layer.reference_weight`` over ``[reference c | mask 1]`` is zero-init)
and ``reference_level_embed`` (sinusoidal MLP of the noise-augmentation level, last Linear zero-init) is added to the
time embedding. Both are zero at conversion, so the converted model equals the unconditioned kind, whatever reference
it is given. Trainable after conversion with ``freeze_spatial``: ``in_layer.reference_weight``,
``reference_level_embed.*``, the temporal blocks and the frame-position MLP; everything inherited stays frozen.
:meth:`KeyframeUNet.image_unet` gives the image model back (shared frozen weights), which is the "image stage" that
makes the reference at inference.
"""

from __future__ import annotations

import copy as copylib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ff_lightning.models.reference import (
    ReferenceInputConv,
    pack_reference_input,
    reference_level_embedding,
    shared_image_unet,
)
from ff_lightning.models.unet import UNET_PRESETS, AttentionBlock, Block, KandinskyUNet, UNetConditioning, time_mlp
from ff_lightning.models.unet_temporal import (
    TemporalAttentionBlock,
    TemporalAttentionLayer,
    TemporalResNetBlock,
    VideoUNet,
    add_temporal_conv,
    per_row,
)
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "KeyframeDesign",
    "KEYFRAME_DESIGNS",
    "default_frame_stride",
    "make_frame_positions",
    "KeyframeUNet",
    "keyframe_unet_from_t2i",
    "KEYFRAME_PRESETS",
]

VIDEO_POSITION_SPAN = 180  # frame positions of a clip span 0..180 (the release: stride = 180 // num_frames)


@dataclass(frozen=True)
class KeyframeDesign:
    """Which temporal pieces a keyframe kind inserts (see the module docstring)."""

    description: str
    resnet_kernel: tuple[int, int, int] | None = None  # TemporalResNetBlocks with this middle kernel
    attention_blocks: bool = False  # TemporalAttentionBlocks next to the levels' self-attention
    conv_layers_kernel: tuple[int, int, int] | None = None  # temporal conv after each ResNet-stage conv
    attention_layers: bool = False  # TemporalAttentionLayer after each spatial attention
    reference: bool = False  # reference-image conditioning at the input conv (+ its noise level in the time embedding)

    @property
    def uses_frame_positions(self) -> bool:
        return self.attention_blocks or self.attention_layers


KEYFRAME_DESIGNS: dict[str, KeyframeDesign] = {
    "layers": KeyframeDesign(
        "temporal layers: 3x1x1 conv after each spatial conv + temporal attention after each spatial attention",
        conv_layers_kernel=(3, 1, 1), attention_layers=True,
    ),
    "layers_conv": KeyframeDesign("temporal layers, convs only (3x1x1)", conv_layers_kernel=(3, 1, 1)),
    "layers_attn": KeyframeDesign("temporal layers, attention only", attention_layers=True),
    "blocks_conv1d": KeyframeDesign("temporal blocks: 3x1x1 temporal ResNet blocks", resnet_kernel=(3, 1, 1)),
    "blocks_conv3d": KeyframeDesign("temporal blocks: 3x3x3 temporal ResNet blocks", resnet_kernel=(3, 3, 3)),
    "blocks_attn1d": KeyframeDesign("temporal blocks: temporal attention blocks only", attention_blocks=True),
    "blocks_conv1d_attn1d": KeyframeDesign(
        "temporal blocks: 3x1x1 ResNet blocks + attention blocks (released Kandinsky Video 1.0)",
        resnet_kernel=(3, 1, 1), attention_blocks=True,
    ),
    "ref_blocks_conv1d_attn1d": KeyframeDesign(
        "temporal blocks (release) + reference-image conditioning: [noisy | reference | mask] input conv, zero-init",
        resnet_kernel=(3, 1, 1), attention_blocks=True, reference=True,
    ),
}  # fmt: skip


def default_frame_stride(num_frames: int) -> int:
    """The release's frame-position stride: ``180 // num_frames`` (at least 1)."""
    return max(1, VIDEO_POSITION_SPAN // num_frames)


def make_frame_positions(
    num_frames: int, frame_stride: int | torch.Tensor, batch: int, device: torch.device | None = None
) -> torch.Tensor:
    """Frame positions ``0, s, 2s, ...`` per folded row: ``(batch * num_frames,)``.

    ``frame_stride``: an int, or ``(batch,)`` per video (each video's own frame rate).
    """
    stride = torch.as_tensor(frame_stride, device=device)
    stride = stride.expand(batch) if stride.ndim == 0 else stride
    steps = torch.arange(num_frames, device=stride.device)
    return (stride[:, None] * steps[None, :]).flatten()  # b t -> (b t)


class KeyframeUNet(VideoUNet):
    """A Kandinsky 3 UNet with temporal layers or blocks; build with :func:`keyframe_unet_from_t2i`.

    ``forward(x, time, context, context_mask=None, *, num_frames=None, frame_positions=None, frame_stride=None)``:

    - ``x``: ``(b t) c h w`` noisy latents of ``b`` videos of ``t = num_frames`` frames (default: the conversion's).
    - ``time``: ``(b t,)`` or ``(b,)`` raw timesteps; ``context``: ``(b t | b, j, context_dim)`` text tokens;
      ``context_mask``: ``(b t | b, j)`` bool or None.
    - ``frame_positions``: ``(b t,)`` explicit positions, else ``0, s, 2s, ...`` with ``s = frame_stride`` (int or
      ``(b,)``; default ``self.frame_stride``). Ignored by kinds without temporal attention.

    - Reference kinds only: ``reference`` ``(b, c, h, w)`` latent per video (None: no reference, the input's extra
      channels are zero); ``reference_frames`` which rows carry it: ``(b, t)`` / ``(b t,)`` 0/1 (a video with no 1
      has no reference), a frame index, or None (frame 0); ``reference_level`` the reference's noise-augmentation
      level (``(b,)``, ``(b t,)`` or scalar, timestep units; default 0).

    Returns ``(b t) out_channels h w``. :meth:`forward_official` takes the release's signature.
    """

    def __init__(
        self,
        image_unet: KandinskyUNet,
        kind: str,
        num_frames: int,
        frame_stride: int | None = None,
        zero_init_ffn: bool = True,
    ) -> None:
        if kind not in KEYFRAME_DESIGNS:
            raise ValueError(f"unknown keyframe kind {kind!r}; valid: {', '.join(KEYFRAME_DESIGNS)}")
        design = KEYFRAME_DESIGNS[kind]
        cfg = image_unet.config
        ref = image_unet.in_layer.weight
        embed = time_mlp(cfg["init_channels"], cfg["time_embed_dim"]) if design.uses_frame_positions else None
        embed = embed.to(device=ref.device, dtype=ref.dtype) if embed is not None else None
        embeddings: dict[str, nn.Module | None] = {"to_temporal_embed": embed}
        if design.reference:
            level = reference_level_embedding(cfg["init_channels"], cfg["time_embed_dim"])
            embeddings["reference_level_embed"] = level.to(device=ref.device, dtype=ref.dtype)
        super().__init__(image_unet, embeddings)
        self.kind, self.design = kind, design
        self.num_frames = num_frames
        self.frame_stride = default_frame_stride(num_frames) if frame_stride is None else frame_stride
        self.config.update(kind=kind, num_frames=num_frames, frame_stride=self.frame_stride)
        if design.reference:
            self.in_layer = ReferenceInputConv(self.in_layer)  # keeps the image conv's own parameters
            self.config.update(reference_channels=self.in_layer.in_channels - self.in_layer.noisy_channels)
        self._insert_temporal(design, zero_init_ffn)
        self.mark_inherited()

    @property
    def reference_conditioned(self) -> bool:
        """Whether this kind takes a reference image (``ref_*`` kinds)."""
        return self.design.reference

    def image_unet(self) -> KandinskyUNet:
        """The image model this one was converted from, sharing its frozen spatial parameters (no copy): the image
        stage of reference kinds (see :func:`~ff_lightning.models.reference.shared_image_unet`)."""
        return shared_image_unet(self)

    def _insert_temporal(self, design: KeyframeDesign, zero_init_ffn: bool) -> None:
        cfg = self.config
        ref = self.in_layer.weight
        ted, groups, head_dim = cfg["time_embed_dim"], cfg["groups"], cfg["head_dim"]

        def new(module: nn.Module) -> nn.Module:
            return module.to(device=ref.device, dtype=ref.dtype)

        spatial_attention = [m for m in self.modules() if isinstance(m, AttentionBlock)]
        stages = [m for m in self.modules() if isinstance(m, Block)]
        if design.resnet_kernel is not None:
            for levels, down in ((self.down_samples, True), (self.up_samples, False)):
                for level in levels:
                    for group in level.resnet_attn_blocks:
                        # down: after each ResNet (its output width); up: before each ResNet (its input width)
                        channels = group.in_resnet.out_channels if down else group.in_resnet.in_channels
                        for _ in range(2):
                            block = TemporalResNetBlock(
                                channels, ted, groups, cfg["compression_ratio"], design.resnet_kernel
                            )
                            group.append(new(block))
        if design.attention_blocks:
            for level in (*self.down_samples, *self.up_samples):
                if level.self_attention_block is not None:
                    channels = level.self_attention_block.channels
                    block = TemporalAttentionBlock(
                        channels, ted, groups, head_dim, cfg["expansion_ratio"], zero_init_ffn=zero_init_ffn
                    )
                    level.temporal_attention_block = new(block)
        if design.conv_layers_kernel is not None:
            for stage in stages:
                add_temporal_conv(stage, design.conv_layers_kernel)
        if design.attention_layers:
            for attn in spatial_attention:
                attn.temporal_layer = new(TemporalAttentionLayer(attn.channels, ted, groups, head_dim))

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        *,
        num_frames: int | None = None,
        frame_positions: torch.Tensor | None = None,
        frame_stride: int | torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        reference_frames: torch.Tensor | int | None = None,
        reference_level: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        num_frames = self.num_frames if num_frames is None else num_frames
        rows = x.shape[0]
        if rows % num_frames:
            raise ValueError(f"batch of {rows} rows is not a multiple of num_frames={num_frames}")
        time = per_row(time, rows, num_frames).to(x.device)
        if context is not None:
            context = per_row(context, rows, num_frames)
        if context_mask is not None:
            context_mask = per_row(context_mask, rows, num_frames)
        frame_embed = None
        if self.to_temporal_embed is not None:
            if frame_positions is None:
                stride = self.frame_stride if frame_stride is None else frame_stride
                frame_positions = make_frame_positions(num_frames, stride, rows // num_frames, x.device)
            frame_embed = self.to_temporal_embed(per_row(frame_positions, rows, num_frames).to(x.device))
        time_embed = self.embed_time(time, context, context_mask)
        if self.design.reference:
            x = pack_reference_input(x, num_frames, reference, reference_frames)  # (b t) (2c + 1) h w
            level = torch.zeros(rows, device=x.device) if reference_level is None else reference_level
            time_embed = time_embed + self.reference_level_embed(per_row(level, rows, num_frames).to(x.device))
        elif reference is not None or reference_frames is not None or reference_level is not None:
            raise ValueError(f"keyframe kind {self.kind!r} takes no reference image (the ref_* kinds do)")
        cond = UNetConditioning(time_embed, context, context_mask, num_frames=num_frames, frame_embed=frame_embed)
        return self.forward_features(x, cond)

    def forward_official(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        temporal_embed: torch.Tensor | None = None,
        skip_frames: torch.Tensor | None = None,
        num_temporal_groups: int | None = None,
    ) -> torch.Tensor:
        """The release's call: ``temporal_embed`` holds the raw frame positions per row (``(b t,)``), the frame
        count is the model's ``num_frames``; ``skip_frames`` / ``num_temporal_groups`` are interpolation-only."""
        if skip_frames is not None or num_temporal_groups is not None:
            raise ValueError("skip_frames / num_temporal_groups belong to the interpolation UNet")
        return self.forward(x, time, context, context_mask, frame_positions=temporal_embed)


def keyframe_unet_from_t2i(
    unet: KandinskyUNet,
    kind: str = "blocks_conv1d_attn1d",
    num_frames: int = 15,
    *,
    frame_stride: int | None = None,
    copy: bool = True,
    freeze_spatial: bool = True,
    zero_init_ffn: bool = True,
) -> KeyframeUNet:
    """Convert an image UNet into a keyframe UNet of ``kind`` (a key of :data:`KEYFRAME_DESIGNS`).

    Spatial weights are the image model's, bit-exact: deep-copied (``copy=True``) or taken over in place
    (``copy=False``: ``unet`` is consumed and, with ``freeze_spatial``, frozen too). With ``freeze_spatial`` only the
    temporal parameters (and the frame-position MLP; for ``ref_*`` kinds also ``in_layer.reference_weight`` and
    ``reference_level_embed``) require grad. ``zero_init_ffn``: see
    :mod:`ff_lightning.models.unet_temporal` (True makes the video model equal the image model at initialisation).
    Works on the meta device (nothing reads tensor values).
    """
    source = copylib.deepcopy(unet) if copy else unet
    model = KeyframeUNet(source, kind, num_frames, frame_stride=frame_stride, zero_init_ffn=zero_init_ffn)
    model.freeze_inherited(freeze_spatial)
    return model


def build_keyframe_unet(
    *, kind: str, num_frames: int, frame_stride: int | None = None, zero_init_ffn: bool = True, **unet_config: Any
) -> KeyframeUNet:
    """Registry builder: a fresh image UNet of ``unet_config``, converted (the same code path as for a trained one)."""
    image = KandinskyUNet(**unet_config)
    return keyframe_unet_from_t2i(
        image, kind, num_frames, frame_stride=frame_stride, copy=False, zero_init_ffn=zero_init_ffn
    )


KEYFRAME_PRESETS: dict[str, dict[str, Any]] = {
    name: {**cfg, "num_frames": frames} for (name, cfg), frames in zip(UNET_PRESETS.items(), (4, 8, 15))
}

register_component("keyframe_unet", KEYFRAME_PRESETS, "Kandinsky Video keyframe UNet (image UNet + temporal parts)")
for _kind, _design in KEYFRAME_DESIGNS.items():
    register_variant("keyframe_unet", _kind, build_keyframe_unet, description=_design.description, kind=_kind)
