"""Kandinsky Video 1.1 interpolation UNet (registry ``interpolation_unet`` / ``kv1_1``): the released
``interpolation.pt``.

Facts read off the public release (ai-forever/KandinskyVideo, ``kandinsky_video/model/unet_interpolation.py``,
``model/diffusion.py`` ``p_sample_loop_interpolation``, ``t2v_pipeline.py`` ``interpolate_base_frames``; nothing
copied):

- The Kandinsky 3 UNet on 20 input channels ``[left keyframe 4 | three noisy frames 3x4 | right keyframe 4]`` and 12
  output channels (three frames, frame-major), as 1.0 (:mod:`ff_lightning.models.interpolation`). The temporal axis
  ``t`` is the sequence of interpolation groups of a video (one group per keyframe pair).
- Its optional parts are constructor flags of the release (set by the hub's ``configs.json``, not known offline); each
  adds parameters, so :func:`infer_flags` reads them off a state dict's keys (:class:`KV11InterpolationFlags`):
  ``temporal`` (a masked temporal conv ``temporal_projection_new`` after every spatial conv), ``add_new_temporal_params``
  (masked temporal convs after every 2x up/down-sampling conv, and ``temporal_conv_in`` / ``temporal_conv_out`` around
  the trunk), ``add_temporal_attention`` (a masked temporal attention block on every level with self-attention),
  ``time_downsample`` per level (halve / double the groups with a strided Conv3d / ConvTranspose3d next to the 2x
  down / up convs), ``pass_skip_frames`` (``skip_merge`` + ``skip_embeddings``), the perturbation-time embeddings
  (``perturbation_to_time_embed`` + ``time_embed_merge`` merged into the time embedding; ``time_embed_context_merge``
  adding a sinusoidal code of the perturbation level to every text token). ``temporal_type`` is accepted by the
  release but changes nothing (recorded only). Blocks: :mod:`ff_lightning.models.kv11_interpolation_blocks`.
- Conditioning order: ``te = mlp(t)``; ``te = (1 - a_p) te + a_p mlp_p(tp)``; ``ctx += a_c sin(tp)``; ``te += a_s
  emb(skip)``; then the text pooling ``te += pool(ctx)`` (1.0 pools first). The context is the null embedding
  (:func:`~ff_lightning.models.interpolation.null_context`).
- ``temporal_mask`` ``(b t,)``: scales every temporal merge of a row; the release's sampling passes 1 on the guided
  half and 0 on the unguided half (``use_temporal_mask``), so the unguided branch runs the UNet frame-group by group.
- A time-compressed network (any ``time_downsample``) loads but cannot run in the release: its time embedding stays
  at the uncompressed row count (shape error in the next norm). :meth:`KV11InterpolationUNet.forward` refuses it.
- Everything temporal is identity at initialisation: convs zero, merges 0 (the temporal attention's weights are not
  zeroed, its merges are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ff_lightning.models.interpolation import FRAMES_PER_GROUP, NUM_SKIP_EMBEDDINGS
from ff_lightning.models.kv11_interpolation_blocks import InterpDownLevel, InterpUpLevel, MaskedTemporalConv
from ff_lightning.models.temporal import AlphaMerge, flatten_merge_keys
from ff_lightning.models.unet import (
    UNET_PRESETS,
    AttentionPooling,
    BlockArgs,
    SinusoidalPosEmb,
    UNetConditioning,
    time_mlp,
)
from ff_lightning.models.unet_temporal import per_row
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "RELEASE_FORWARD_PERTURBATION",
    "RELEASE_FORWARD_SKIP_FRAMES",
    "KV11InterpolationFlags",
    "KV11InterpolationUNet",
    "infer_flags",
    "build_kv11_interpolation_unet",
]

RELEASE_FORWARD_PERTURBATION = 25  # the release forward's perturbation level when none is passed
RELEASE_FORWARD_SKIP_FRAMES = 1  # ... and its skip-frame count


@dataclass(frozen=True)
class KV11InterpolationFlags:
    """The release constructor's optional parts (defaults: the release ``UNet``'s own defaults).

    ``time_downsample``: one entry per level (None: all False); the deepest level's entry has no effect (no 2x
    resampling there). :meth:`canonical` maps flag sets that build the same network onto one.
    """

    temporal: bool = True
    add_new_temporal_params: bool = False
    add_temporal_attention: bool = True
    time_downsample: tuple[bool, ...] | None = None
    use_perturbation_time_embed: bool = True
    merge_perturbation_time_with_diffusion_time: bool = True
    merge_perturbation_time_with_context: bool = False
    pass_skip_frames: bool = True
    temporal_type: str = field(default="conv3D")

    def levels(self, num_levels: int) -> tuple[bool, ...]:
        td = self.time_downsample or (False,) * num_levels
        if len(td) != num_levels:
            raise ValueError(f"time_downsample needs one entry per level ({num_levels}), got {len(td)}")
        return tuple(bool(v) for v in td)

    def canonical(self, num_levels: int) -> KV11InterpolationFlags:
        """The same network's flags with no-op settings normalised (what :func:`infer_flags` returns)."""
        td = self.levels(num_levels)[:-1] + (False,)
        use = self.use_perturbation_time_embed
        diff, ctx = (
            use and self.merge_perturbation_time_with_diffusion_time,
            use and self.merge_perturbation_time_with_context,
        )
        return KV11InterpolationFlags(
            self.temporal, self.add_new_temporal_params, self.add_temporal_attention, td, diff or ctx, diff, ctx,
            self.pass_skip_frames, self.temporal_type,
        )  # fmt: skip

    def as_config(self) -> dict[str, Any]:
        """Plain values for a run config's ``model.overrides``."""
        out = asdict(self)
        out["time_downsample"] = None if self.time_downsample is None else list(self.time_downsample)
        return out


def infer_flags(keys: Sequence[str] | Mapping[str, Any], num_levels: int | None = None) -> KV11InterpolationFlags:
    """The :class:`KV11InterpolationFlags` (canonical) of a release state dict from its keys (``unet.`` prefix
    allowed). ``num_levels``: counted from the ``down_samples.<i>`` keys when None. ``temporal_type`` cannot be read
    off the keys (it adds nothing): the release default is returned."""
    names = [k[len("unet.") :] if k.startswith("unet.") else k for k in keys]
    if num_levels is None:
        num_levels = 1 + max((int(k.split(".")[1]) for k in names if k.startswith("down_samples.")), default=0)
    td = tuple(any(k.startswith(f"down_samples.{i}.") and ".temporal_compress." in k for k in names)
               for i in range(num_levels))  # fmt: skip
    diff = "time_embed_merge" in names
    ctx = "time_embed_context_merge" in names
    return KV11InterpolationFlags(
        temporal=any(".temporal_projection_new." in k for k in names),
        add_new_temporal_params=any(k.startswith("temporal_conv_in.") for k in names),
        add_temporal_attention=any(".temporal_attention_block." in k for k in names),
        time_downsample=td,
        use_perturbation_time_embed=diff or ctx,
        merge_perturbation_time_with_diffusion_time=diff,
        merge_perturbation_time_with_context=ctx,
        pass_skip_frames="skip_merge" in names,
    ).canonical(num_levels)


class KV11InterpolationUNet(nn.Module):
    """The 1.1 interpolation UNet; the constructor takes a UNet preset (``num_channels`` / ``out_channels`` = the
    latent's ``c``: the model has ``5c`` in, ``3c`` out) and the flags.

    ``forward(x, time, context, context_mask=None, *, num_temporal_groups, skip_frames, perturbation_time=0,
    temporal_mask=None)``: ``x`` ``(b g) (5c) h w`` (:func:`~ff_lightning.models.interpolation.pack_interpolation_input`,
    ``g`` groups per video); ``time`` / ``skip_frames`` / ``perturbation_time`` per row, per video or scalar;
    ``context`` ``(b g, j, d)`` or ``(b, j, d)``; ``temporal_mask`` ``(b g,)`` / ``(b,)`` / scalar (None: 1, temporal
    parts on). Returns ``(b g) (3c) h w``. :meth:`forward_official` takes the release's call.
    """

    def __init__(self, *, flags: KV11InterpolationFlags = KV11InterpolationFlags(), **unet_config: Any) -> None:
        super().__init__()
        cfg = {**UNET_PRESETS["paper"], **unet_config}
        init = cfg.get("init_channels") or cfg["model_channels"]
        ted, ctx_dim, levels = cfg["time_embed_dim"], cfg["context_dim"], len(cfg["dim_mult"])
        c = cfg["num_channels"]
        self.flags = flags
        td = flags.levels(levels)
        self.config: dict[str, Any] = dict(
            cfg, init_channels=init, num_channels=(2 + FRAMES_PER_GROUP) * c, out_channels=FRAMES_PER_GROUP * cfg["out_channels"],
            dim_mult=tuple(cfg["dim_mult"]), num_blocks=tuple(cfg["num_blocks"]),
            add_cross_attention=tuple(cfg["add_cross_attention"]), add_self_attention=tuple(cfg["add_self_attention"]),
            interpolation=True, kind="kv1_1", flags=flags.as_config(),
        )  # fmt: skip
        self.to_time_embed = time_mlp(init, ted)
        pert = flags.use_perturbation_time_embed
        merges = []
        if pert and flags.merge_perturbation_time_with_diffusion_time:
            self.perturbation_to_time_embed = time_mlp(init, ted)
            self.time_embed_merge = AlphaMerge(0.0)
            merges.append("time_embed_merge")
        if pert and flags.merge_perturbation_time_with_context:
            self.time_embed_context_merge = AlphaMerge(0.0)
            merges.append("time_embed_context_merge")
            self.perturbation_time_encoding = SinusoidalPosEmb(ctx_dim)
        if flags.pass_skip_frames:
            self.skip_merge = nn.Parameter(torch.zeros(1))
            # built on CPU, then moved: normal_ on a meta tensor would import torch._dynamo (seconds)
            ref = self.to_time_embed[1].weight
            self.skip_embeddings = nn.Embedding(NUM_SKIP_EMBEDDINGS, ted, device="cpu").to(ref.device)
        flatten_merge_keys(self, tuple(merges))
        self.feature_pooling = AttentionPooling(ted, ctx_dim, cfg["head_dim"])
        self.in_layer = nn.Conv2d(self.config["num_channels"], init, 3, padding=1)
        args = BlockArgs(ted, cfg["groups"], cfg["head_dim"], cfg["expansion_ratio"], cfg["compression_ratio"])
        widths = [init, *(cfg["model_channels"] * m for m in cfg["dim_mult"])]
        text = [ctx_dim if cross else None for cross in cfg["add_cross_attention"]]
        temporal = dict(temporal=flags.temporal, new_params=flags.add_new_temporal_params,
                        temporal_attention=flags.add_temporal_attention)  # fmt: skip
        last, sa, nb = levels - 1, cfg["add_self_attention"], cfg["num_blocks"]
        self.down_samples = nn.ModuleList(
            InterpDownLevel(
                widths[i], widths[i + 1], text[i], nb[i], args, i != last, sa[i], **temporal, time_downsample=td[i]
            )  # fmt: skip
            for i in range(levels)
        )
        self.up_samples = nn.ModuleList(
            InterpUpLevel(
                widths[i + 1],
                widths[i + 1] if i != last else 0,
                widths[i],
                text[i],
                nb[i],
                args,
                i != last,
                sa[i],
                **temporal,
                time_downsample=td[i],
            )  # fmt: skip
            for i in reversed(range(levels))
        )
        self.out_layer = nn.Sequential(
            nn.GroupNorm(cfg["groups"], init), nn.SiLU(), nn.Conv2d(init, self.config["out_channels"], 3, padding=1)
        )
        new = flags.add_new_temporal_params
        self.register_module("temporal_conv_in", MaskedTemporalConv(init, init) if new else None)
        self.register_module("temporal_conv_out", MaskedTemporalConv(init, init) if new else None)

    def embed(
        self, time: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None,
        skip_frames: torch.Tensor | None, perturbation_time: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """Per-row ``(n,)`` inputs -> the time embedding ``(n, time_embed_dim)`` and the (perturbed) context."""
        te = self.to_time_embed(time)
        if hasattr(self, "time_embed_merge"):
            te = self.time_embed_merge(te, self.perturbation_to_time_embed(perturbation_time))
        if hasattr(self, "time_embed_context_merge") and context is not None:
            code = self.perturbation_time_encoding(perturbation_time)[:, None].to(context.dtype)  # n 1 d
            context = context + self.time_embed_context_merge.alpha.to(context.dtype) * code
        if self.flags.pass_skip_frames:
            if skip_frames is None:
                raise ValueError("this model embeds the skip-frame count: pass skip_frames")
            te = te + self.skip_merge * self.skip_embeddings(skip_frames.long())
        if context is not None:
            te = self.feature_pooling(te, context, context_mask)
        return te, context

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor | float,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None = None,
        *,
        num_temporal_groups: int,
        skip_frames: int | torch.Tensor | None = None,
        perturbation_time: float | torch.Tensor = 0,
        temporal_mask: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if any(self.flags.levels(len(self.down_samples))[:-1]):
            raise ValueError(
                "this network compresses the groups (time_downsample): the release's forward cannot run it (its time "
                "embedding and norms keep the uncompressed row count), so neither does this one; its weights load"
            )
        rows, g = x.shape[0], num_temporal_groups
        if rows % g:
            raise ValueError(f"batch of {rows} rows is not a multiple of num_temporal_groups={g}")

        def rowwise(v: Any) -> torch.Tensor:
            return per_row(v, rows, g).to(x.device)

        time = rowwise(time)
        context = rowwise(context) if context is not None else None
        context_mask = rowwise(context_mask) if context_mask is not None else None
        skip = rowwise(skip_frames) if skip_frames is not None else None
        mask = rowwise(1.0 if temporal_mask is None else temporal_mask).float()
        te, context = self.embed(time, context, context_mask, skip, rowwise(perturbation_time))
        cond = UNetConditioning(te, context, context_mask, num_frames=g)
        x = self.in_layer(x)
        if self.temporal_conv_in is not None:
            x = self.temporal_conv_in(x, g, mask)
        skips = []
        for level, down in enumerate(self.down_samples):
            x = down(x, cond, mask)
            if level != len(self.down_samples) - 1:
                skips.append(x)
        for level, up in enumerate(self.up_samples):
            if level != 0:
                x = torch.cat([x, skips.pop()], dim=1)
            x = up(x, cond, mask)
        if self.temporal_conv_out is not None:
            x = self.temporal_conv_out(x, g, mask)
        return self.out_layer(x)

    def forward_official(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        temporal_embed: torch.Tensor | None = None,
        num_predicted_groups: int | None = None,
        perturbation_time: torch.Tensor | None = None,
        skip_frames: torch.Tensor | None = None,
        temporal_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The release's call: ``num_predicted_groups`` is the number of *videos* ``b`` (the release folds
        ``(b t)`` with ``b = rows // num_predicted_groups``); missing perturbation level / skip count take the release
        forward's defaults (:data:`RELEASE_FORWARD_PERTURBATION`, :data:`RELEASE_FORWARD_SKIP_FRAMES`)."""
        if num_predicted_groups is None or temporal_mask is None:
            raise ValueError("the release's interpolation forward needs num_predicted_groups and temporal_mask")
        del temporal_embed  # accepted and unused, as released
        rows = x.shape[0]
        pt = RELEASE_FORWARD_PERTURBATION if perturbation_time is None else perturbation_time
        skip = RELEASE_FORWARD_SKIP_FRAMES if skip_frames is None else skip_frames
        return self.forward(x, time, context, context_mask, num_temporal_groups=rows // (rows // num_predicted_groups),
                            skip_frames=skip, perturbation_time=pt, temporal_mask=temporal_mask)  # fmt: skip


def build_kv11_interpolation_unet(
    *,
    temporal: bool = True,
    add_new_temporal_params: bool = False,
    add_temporal_attention: bool = True,
    time_downsample: Sequence[bool] | None = None,
    use_perturbation_time_embed: bool = True,
    merge_perturbation_time_with_diffusion_time: bool = True,
    merge_perturbation_time_with_context: bool = False,
    pass_skip_frames: bool = True,
    temporal_type: str = "conv3D",
    **unet_config: Any,
) -> KV11InterpolationUNet:
    """Registry builder: a UNet preset plus the flags (keyword arguments of :class:`KV11InterpolationFlags`)."""
    flags = KV11InterpolationFlags(
        temporal, add_new_temporal_params, add_temporal_attention,
        None if time_downsample is None else tuple(bool(v) for v in time_downsample), use_perturbation_time_embed,
        merge_perturbation_time_with_diffusion_time, merge_perturbation_time_with_context, pass_skip_frames,
        temporal_type,
    )  # fmt: skip
    return KV11InterpolationUNet(flags=flags, **unet_config)


register_component("interpolation_unet", UNET_PRESETS, "Kandinsky Video interpolation UNet (3 frames per key pair)")
register_variant(
    "interpolation_unet",
    "kv1_1",
    build_kv11_interpolation_unet,
    description="released Kandinsky Video 1.1 interpolation UNet (interpolation.pt; optional temporal parts as flags)",
)
