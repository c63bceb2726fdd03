"""The video MoVQ decoders of Table 3 (registry component ``decoder``), conversion from a trained image MoVQ,
fine-tuning policies and chunked video decoding.

A *variant* is a :class:`~ff_lightning.models.movq.TemporalSpec` on the one :class:`~ff_lightning.models.movq.Decoder`
class, so a variant can be (a) built fresh, ``build("decoder", "conv3x1x1", preset)`` — a bare ``Decoder`` whose
state dict is the released ``video_movq_decoder_<variant>`` manifest (decoder only: ``post_quant_conv`` stays with
the MoVQ) — or (b) converted from a trained image model, ``video_decoder_from_image(movq, "conv3x1x1")``, which
copies every 2D weight bit-exact and leaves the added temporal parameters at their identity initialisation.

Identity at initialisation (every variant decodes each frame exactly like the image decoder):

- temporal convs: Conv3d zero-initialised, merge scalar ``a = 0`` (``(1 - a) * h + a * conv(h)``), as released;
- temporal attention: ``proj_out`` weight and bias zero-initialised (*not* in the release, whose forward is
  otherwise identical; loading released weights is unaffected);
- temporal ResNet blocks: the last Conv3d zero-initialised (*not* in the release; the paper says added parameters
  start at zero);
- 2D->3D: every ResnetBlock conv1/conv2 is a 3x3x3 Conv3d over the frames of each video with temporal zero
  padding 1 (the release applies it frame by frame, which is broken), initialised with the 2D kernel at the centre
  tap, zeros elsewhere, the bias copied.

Released-decoder parity: the Kandinsky Video decoder conditions its spatial-attention norms on the first frame of
the video (a quirk of its per-frame loop); ``Decoder(attn_zq_first_frame=True)`` reproduces it. It is off here by
default, and must be, for the identity to the image decoder above.

Policies (:func:`apply_finetune_policy`): ``"decoder"`` trains the whole decoder, ``"temporal"`` only the added
temporal parameters (for ``2d_to_3d``: the inflated Conv3d kernels). Encoder, quantizer, ``quant_conv`` and
``post_quant_conv`` are always frozen (the released video decoders ship without ``post_quant_conv``). The unused
``conv_y`` / ``conv_b`` of temporal-attention norms are always frozen (no gradient ever reaches them).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ff_lightning.models.layers import ResnetBlock, TemporalAttnBlock, inflate_conv_weight
from ff_lightning.models.movq import DECODER_CONFIG_KEYS, MOVQ_PRESETS, Decoder, MoVQ, TemporalSpec
from ff_lightning.models.stream_decode import stream_decode
from ff_lightning.registry import register_component, register_variant

__all__ = [
    "VARIANTS",
    "POLICIES",
    "build_decoder",
    "video_decoder_from_image",
    "temporal_parameter_names",
    "apply_finetune_policy",
    "temporal_receptive_radius",
    "decode_video",
]

VARIANTS: dict[str, TemporalSpec] = {
    "image": TemporalSpec(),
    "conv3x1x1": TemporalSpec(conv_kernel=(3, 1, 1)),
    "conv3x3x3": TemporalSpec(conv_kernel=(3, 3, 3)),
    "conv3x1x1_attn": TemporalSpec(conv_kernel=(3, 1, 1), attention=True),
    "conv3x3x3_attn": TemporalSpec(conv_kernel=(3, 3, 3), attention=True),
    "resblock": TemporalSpec(resblocks=True),
    "resblock_attn": TemporalSpec(resblocks=True, attention=True),
    "2d_to_3d": TemporalSpec(video_convs=True),
}
_DESCRIPTIONS = {
    "image": "the image MoVQ decoder (Table 3 'Image', 161M at paper size)",
    "conv3x1x1": "3x1x1 temporal conv + learned merge after each ResnetBlock conv (203M)",
    "conv3x3x3": "3x3x3 temporal conv + learned merge after each ResnetBlock conv (539M)",
    "conv3x1x1_attn": "3x1x1 temporal convs + temporal attention after each spatial attention (220M)",
    "conv3x3x3_attn": "3x3x3 temporal convs + temporal attention (556M; released with Kandinsky Video 1.1)",
    "resblock": "a temporal ResNet block (SpatialNorm, 3x1x1 Conv3d) after every ResnetBlock (203M)",
    "resblock_attn": "temporal ResNet blocks + temporal attention (220M)",
    "2d_to_3d": "every ResnetBlock conv1/conv2 inflated to a 3x3x3 Conv3d over frames (419M)",
}
POLICIES = ("decoder", "temporal")
_MOVQ_ONLY_KEYS = {"embed_dim", "n_embed", "in_channels", "double_z", "beta"}


def build_decoder(*, variant: str, policy: str = "decoder", **config: Any) -> Decoder:
    """A fresh decoder of ``variant`` (a key of :data:`VARIANTS`) with ``policy`` applied.

    ``config``: :class:`Decoder` arguments; MoVQ-only preset keys (``embed_dim`` -> ``zq_channels``, ``n_embed``,
    ...) are accepted so presets can be shared with the ``movq`` component.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown decoder variant {variant!r}; valid: {', '.join(VARIANTS)}")
    unknown = set(config) - set(DECODER_CONFIG_KEYS) - _MOVQ_ONLY_KEYS
    if unknown:
        raise TypeError(f"unknown decoder argument(s) {sorted(unknown)}; valid: {', '.join(DECODER_CONFIG_KEYS)}")
    if "embed_dim" in config:
        config.setdefault("zq_channels", config["embed_dim"])
    kwargs = {k: v for k, v in config.items() if k in DECODER_CONFIG_KEYS}
    decoder = Decoder(**kwargs, temporal=VARIANTS[variant])
    return apply_finetune_policy(decoder, policy)


def _decoder_presets() -> dict[str, dict[str, Any]]:
    keep = set(DECODER_CONFIG_KEYS) | {"embed_dim"}
    return {name: {k: v for k, v in cfg.items() if k in keep} for name, cfg in MOVQ_PRESETS.items()}


register_component("decoder", _decoder_presets(), "MoVQ video decoders (Table 3): image decoder + temporal layers")
for _name in VARIANTS:
    register_variant("decoder", _name, build_decoder, description=_DESCRIPTIONS[_name], variant=_name)


def _convert_decoder(image: Decoder, variant: str, attn_zq_first_frame: bool) -> Decoder:
    if image.temporal.is_temporal:
        raise ValueError(f"expected an image decoder, got one with temporal layers {image.temporal}")
    ref = next(image.parameters())
    config = {**image.config, "attn_zq_first_frame": attn_zq_first_frame}
    with torch.device(ref.device):
        video = Decoder(**config, temporal=VARIANTS[variant]).to(ref.dtype)
    target = video.state_dict()
    with torch.no_grad():
        for key, value in image.state_dict().items():
            if key not in target:
                raise KeyError(f"image decoder entry {key!r} has no counterpart in the {variant} decoder")
            if target[key].shape == value.shape:
                target[key].copy_(value)
            elif target[key].dim() == 5 and value.dim() == 4:  # 2D->3D: centre tap = the 2D kernel
                target[key].copy_(inflate_conv_weight(value, target[key].shape[2]))
            else:
                raise ValueError(f"{key}: cannot map shape {tuple(value.shape)} onto {tuple(target[key].shape)}")
    return video


def video_decoder_from_image(
    image: MoVQ | Decoder, variant: str, *, policy: str = "decoder", attn_zq_first_frame: bool = False
) -> MoVQ | Decoder:
    """Convert a trained image MoVQ (or its decoder) into the ``variant`` video decoder.

    Every image-decoder weight is copied bit-exact (2D->3D: into the centre tap); the added temporal parameters keep
    their identity initialisation, so the result decodes every frame exactly like ``image`` (up to float rounding for
    ``2d_to_3d``). Given a :class:`MoVQ`, returns a new MoVQ (a deep copy; encoder, quantizer and the 1x1 convs
    unchanged) whose ``decoder`` is converted; given a :class:`Decoder`, returns the new decoder. ``image`` itself is
    not modified. ``policy`` (``"decoder"`` / ``"temporal"``) is applied to the result (for a MoVQ this also freezes
    the encoder, quantizer and 1x1 convs). ``attn_zq_first_frame=True`` gives the released decoder's attention
    conditioning (see :class:`~ff_lightning.models.movq.Decoder`; it breaks the identity to the image decoder), for
    loading a released video decoder's weights into the result.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown decoder variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if isinstance(image, MoVQ):
        decoder = _convert_decoder(image.decoder, variant, attn_zq_first_frame)
        result: MoVQ | Decoder = copy.deepcopy(image)
        result.decoder = decoder
    elif isinstance(image, Decoder):
        result = _convert_decoder(image, variant, attn_zq_first_frame)
    else:
        raise TypeError(f"expected a MoVQ or a Decoder, got {type(image).__name__}")
    return apply_finetune_policy(result, policy)


def temporal_parameter_names(decoder: Decoder) -> list[str]:
    """Names (as in ``decoder.named_parameters()``) of the parameters a video variant adds to the image decoder.

    Everything under a ``temporal_*`` module (merges, projections, temporal attention / ResNet blocks), plus, for
    ``2d_to_3d``, the inflated conv1/conv2 of every ResnetBlock.
    """
    names = {n for n, _ in decoder.named_parameters() if any(part.startswith("temporal_") for part in n.split("."))}
    for mod_name, module in decoder.named_modules():
        if isinstance(module, ResnetBlock) and isinstance(module.conv1, nn.Conv3d):
            names.update(f"{mod_name}.{conv}.{p}" for conv in ("conv1", "conv2") for p in ("weight", "bias"))
    return [n for n, _ in decoder.named_parameters() if n in names]


def apply_finetune_policy(model: MoVQ | Decoder, policy: str) -> MoVQ | Decoder:
    """Set ``requires_grad`` for fine-tuning a video decoder; returns ``model``.

    ``"decoder"``: every decoder parameter trains. ``"temporal"``: only :func:`temporal_parameter_names` train
    (an error for the ``image`` decoder, which has none). For a :class:`MoVQ` the encoder, quantizer, ``quant_conv``
    and ``post_quant_conv`` are frozen under both. The unused norm convs of temporal attention are always frozen.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown fine-tuning policy {policy!r}; valid: {', '.join(POLICIES)}")
    if isinstance(model, MoVQ):
        for part in (model.encoder, model.quantize, model.quant_conv, model.post_quant_conv):
            part.requires_grad_(False)
        decoder = model.decoder
    elif isinstance(model, Decoder):
        decoder = model
    else:
        raise TypeError(f"expected a MoVQ or a Decoder, got {type(model).__name__}")
    if policy == "decoder":
        decoder.requires_grad_(True)
    else:
        trainable = set(temporal_parameter_names(decoder))
        if not trainable:
            raise ValueError("policy 'temporal' needs a decoder with temporal layers; this one has none")
        for name, p in decoder.named_parameters():
            p.requires_grad_(name in trainable)
    for module in decoder.modules():
        if isinstance(module, TemporalAttnBlock):
            for p in module.unused_parameters():
                p.requires_grad_(False)
    return model


def temporal_receptive_radius(decoder: Decoder) -> float:
    """How many neighbouring frames on each side can influence one output frame (``inf`` with temporal attention).

    Each temporal conv layer reaches ``kernel_t // 2`` frames further; the image decoder has radius 0.
    """
    if decoder.temporal.attention:
        return math.inf
    radius = 0
    for module in decoder.modules():
        if isinstance(module, nn.Conv3d):
            radius += module.kernel_size[0] // 2
    return radius


@torch.no_grad()
def decode_video(
    model: MoVQ | tuple[nn.Module, Decoder],
    latents: torch.Tensor,
    num_frames: int,
    chunk_frames: int | None = None,
    context_frames: int = 4,
    method: str = "stream",
) -> torch.Tensor:
    """Decode latents ``(b t) c h w`` into frames ``(b t) out_ch H W``, at most ``chunk_frames`` frames of each video
    in a decoder level at once. No gradients.

    ``model``: a :class:`MoVQ` or a ``(post_quant_conv, decoder)`` pair. With ``chunk_frames=None`` or
    ``chunk_frames >= num_frames`` the whole video is decoded in one call (identical to ``movq.decode``). Otherwise:

    - ``method="stream"`` (default): :func:`~ff_lightning.models.stream_decode.stream_decode`, exact (equal to the
      whole decode up to float rounding) for every variant, each frame computed once; temporal convs hold the few
      frames they still need between chunks. Memory is flat in the length except for the stages up to the last
      temporal attention (global receptive field), which run on the whole video at the latent resolution.
      ``context_frames`` is unused.
    - ``method="window"``: each chunk is decoded on its own together with up to
      ``min(context_frames, temporal_receptive_radius)`` real neighbouring frames on each side (recomputed), and only
      the chunk's frames are kept. Exact only when ``context_frames >= temporal_receptive_radius`` (never with
      temporal attention, whose radius is unbounded: each window attends only within itself); costs
      ``(chunk + 2 * context) / chunk`` times the compute.
    """
    post_quant_conv, decoder = (model.post_quant_conv, model.decoder) if isinstance(model, MoVQ) else model
    t = num_frames
    if chunk_frames is None or chunk_frames >= t:
        return decoder(post_quant_conv(latents), latents, num_frames=t)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if method == "stream":
        return stream_decode(post_quant_conv, decoder, latents, t, chunk_frames)
    if method != "window":
        raise ValueError(f"unknown decode method {method!r}; valid: stream, window")
    radius = temporal_receptive_radius(decoder)
    context = int(min(context_frames, radius))
    video = rearrange(latents, "(b t) c h w -> b t c h w", t=t)  # unfold to slice time
    chunks = []
    for start in range(0, t, chunk_frames):
        stop = min(start + chunk_frames, t)
        lo, hi = max(0, start - context), min(t, stop + context)
        window = rearrange(video[:, lo:hi], "b t c h w -> (b t) c h w")  # fold the window back into the batch
        out = decoder(post_quant_conv(window), window, num_frames=hi - lo)
        out = rearrange(out, "(b t) c h w -> b t c h w", t=hi - lo)  # unfold to drop the context frames
        chunks.append(out[:, start - lo : stop - lo])
    return rearrange(torch.cat(chunks, dim=1), "b t c h w -> (b t) c h w")  # fold frames into the batch
