"""Typed inference stages built from a stage's config + state dict, without Lightning.

Each stage is a plain object holding ``nn.Module`` s and its sampling settings, built from a
:class:`~ff_lightning.checkpoints.StageSource` (an ``ff export`` / ``ff import`` folder or a training checkpoint;
EMA weights already laid over): the models come from the registry at the config's variant / preset and get the
state dict's entries by prefix (``unet.``, ``text_projection.``, ``null_embedding.``, ``movq.``), strictly.

- :class:`TextConditioner`: frozen text encoder + projection + null embedding -> ``(context, mask)``;
- :class:`KeyframeStage`: keyframe UNet + guided sampling -> keyframe latents ``(B, K, c, h, w)``;
- :class:`InterpolationStage`: interpolation UNet -> ``(B, 4^n (K - 1) + 1, c, h, w)``;
- :class:`DecoderStage`: a MoVQ (image decoder frame by frame, or a video decoder over all frames) -> frames.

The sampling calls are the ones the training systems make (:func:`~ff_lightning.diffusion.samplers.sample` with
:func:`~ff_lightning.diffusion.guidance.guided_denoiser`; :func:`~ff_lightning.models.interpolation_pipeline.interpolate`)
with the same arguments, so a stage reproduces its system's samples for the same seed (tested bit for bit).
Latents crossing stages are unscaled MoVQ latents (each stage applies its own ``latent_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ff_lightning.checkpoints import CheckpointError, StageSource

__all__ = [
    "TextConditioner",
    "KeyframeStage",
    "InterpolationStage",
    "DecoderStage",
    "build_keyframe_stage",
    "build_interpolation_stage",
    "build_decoder_stage",
    "build_image_movq",
]


def _sub(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, allow_missing: tuple[str, ...] = ()) -> None:
    """Strict load with a one-line error naming the stage part and a few keys."""
    ours = module.state_dict()
    missing = [k for k in ours if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in ours]
    shapes = [k for k in state if k in ours and tuple(state[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{what}: the weights do not fit the model its config describes ({len(missing)} missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}; {len(shapes)} mis-shaped, e.g. "
            f"{shapes[:3]})"
        )
    module.load_state_dict({**ours, **state})


def _compose(src: StageSource) -> Any:
    from ff_lightning.config import compose

    return compose(src.config, source=str(src.path))


def build_image_movq(src: StageSource, m: Any) -> nn.Module:
    """The stage's frozen image MoVQ: ``movq.*`` of its state (import folders) or ``module.movq_ckpt``."""
    from ff_lightning import registry
    from ff_lightning.interop.movq import load_weights

    movq = registry.build("movq", "movqgan", m.movq_preset)
    own = _sub(src.state, "movq.")
    if own:
        _load(movq, own, f"{src.path} (movq)", allow_missing=("quantize.",))
    elif m.movq_ckpt:
        if not Path(m.movq_ckpt).expanduser().is_file():
            raise FileNotFoundError(
                f"stage {src.path} was trained on the image MoVQ {m.movq_ckpt}, which is gone (its frozen MoVQ is not "
                "stored in the checkpoint); rebuild it (e.g. `make tiny-models`) or retrain the stage"
            )
        load_weights(movq, m.movq_ckpt, missing_ok=("quantize.",))
    else:
        raise CheckpointError(f"{src.path}: no MoVQ weights (neither movq.* in the stage nor module.movq_ckpt)")
    return movq.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------- text
@dataclass
class TextConditioner:
    """Prompts -> projected context ``(B, L, C)`` and mask ``(B, L)``; the null prompt for guidance."""

    cache: Any  # TextEmbeddingCache (in memory): encoder.encode's output, padded to the encoder's max_length
    projection: nn.Module  # TextProjection
    null: nn.Module  # NullEmbedding
    negative_prompt: str | None = None

    @property
    def device(self) -> torch.device:
        return self.projection.projection.weight.device

    @torch.no_grad()
    def condition(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.cache.encoder
        if enc.device != self.device:
            enc.to(self.device)
        emb, mask = self.cache.lookup(list(prompts))
        emb, mask = emb.to(self.device), mask.to(self.device)
        return self.projection(emb.to(self.projection.projection.weight.dtype), mask), mask

    def uncond(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.negative_prompt is not None:
            context, mask = self.condition([self.negative_prompt])
            return context.expand(batch, -1, -1), mask.expand(batch, -1)
        return self.null.condition(batch, length)


# ----------------------------------------------------------------------------------------------- keyframes
@dataclass
class KeyframeStage:
    """Text -> keyframe latents with the keyframe UNet (see the module docstring)."""

    unet: nn.Module  # KeyframeUNet
    text: TextConditioner
    movq: nn.Module  # the frozen image MoVQ (latent size; frame-by-frame decoding without a video decoder)
    settings: Any  # the module section of the stage's config (sampler, steps, guidance, ...)
    schedule: Any  # NoiseSchedule of training
    num_frames: int
    position_unit: float
    default_frame_step: float
    source: StageSource
    config: Any = None  # the stage's composed run config (data.size, data.fps, ...)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> KeyframeStage:
        for mod in (self.unet, self.movq, self.text.projection, self.text.null):
            mod.to(device)
        return self

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        with torch.no_grad():
            z = self.movq.encode(torch.zeros(1, 3, int(size[0]), int(size[1]), device=self.device))
        return int(z.shape[-2]), int(z.shape[-1])

    @torch.no_grad()
    def sample(
        self, prompts: list[str], latent_hw: tuple[int, int], *, steps: int | None = None,
        guidance_weight: float | None = None, seed: int = 0, frame_step: float | None = None,
        sampler: str | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Keyframe latents ``(B, K, c, h, w)`` (unscaled MoVQ latents) for ``prompts``."""
        from ff_lightning.diffusion.guidance import guided_denoiser
        from ff_lightning.diffusion.samplers import SamplingSchedule, sample

        m, t = self.settings, self.num_frames
        stride = float(frame_step or self.default_frame_step) * self.position_unit

        def model_fn(x: torch.Tensor, time: torch.Tensor, c: torch.Tensor, mk: torch.Tensor | None) -> torch.Tensor:
            return self.unet(x, time, c, mk, num_frames=t, frame_stride=stride)

        cond = self.text.condition(prompts)
        w = m.guidance_weight if guidance_weight is None else guidance_weight
        uncond = self.text.uncond(len(prompts), cond[0].shape[1]) if w != 0 else None
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        channels = int(self.unet.config["num_channels"])
        latents = sample(
            guided_denoiser(model_fn, cond, uncond, w), (len(prompts) * t, channels, *latent_hw),
            SamplingSchedule.build(m.sample_spacing, steps or m.sample_steps, self.schedule),
            method=sampler or m.sampler, prediction=m.prediction, eta=m.ddim_eta, threshold=m.dynamic_threshold,
            threshold_group=t, generator=gen, device=self.device, dtype=self.text.projection.projection.weight.dtype,
        )  # fmt: skip
        return rearrange(latents, "(b t) c h w -> b t c h w", t=t) / m.latent_scale


def build_keyframe_stage(src: StageSource) -> KeyframeStage:
    """A :class:`KeyframeStage` from a keyframes-system stage (reference-image kinds are not supported here)."""
    from ff_lightning import registry
    from ff_lightning.diffusion.schedule import NoiseSchedule
    from ff_lightning.models.keyframes import KEYFRAME_DESIGNS, default_frame_stride
    from ff_lightning.models.text import NullEmbedding, TextEmbeddingCache, TextProjection, build_text_encoder

    cfg = _compose(src)
    m, mc = cfg.module, cfg.model
    if cfg.system != "keyframes" or KEYFRAME_DESIGNS[mc.variant].reference:
        raise CheckpointError(f"{src.path}: a {cfg.system} / {mc.variant} stage, not a plain keyframes stage")
    if m.latent_scale is None:
        raise CheckpointError(f"{src.path}: module.latent_scale is unset (never measured)")
    num_frames = int(cfg.data.num_frames)
    overrides = {k: v for k, v in dict(mc.overrides).items() if k != "num_frames"}
    unet = registry.build("keyframe_unet", mc.variant, mc.preset, num_frames=num_frames, **overrides)
    _load(unet, _sub(src.state, "unet."), f"{src.path} (keyframe UNet)")
    encoder = build_text_encoder(m.text_encoder, m.text_encoder_path, max_length=m.text_max_length)
    context_dim = int(unet.config["context_dim"])
    projection, null = TextProjection(encoder.dim, context_dim), NullEmbedding(context_dim)
    _load(projection, _sub(src.state, "text_projection."), f"{src.path} (text projection)")
    _load(null, _sub(src.state, "null_embedding."), f"{src.path} (null embedding)")
    text = TextConditioner(TextEmbeddingCache(encoder, None), projection.eval(), null.eval(), m.negative_prompt)
    return KeyframeStage(
        unet=unet.eval().requires_grad_(False), text=text, movq=build_image_movq(src, m), settings=m,
        schedule=NoiseSchedule.cosine(m.train_timesteps), num_frames=num_frames,
        position_unit=float(m.frame_position_unit or default_frame_stride(num_frames)),
        default_frame_step=float(m.sample_frame_step or cfg.data.stride), source=src, config=cfg,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- interpolation
@dataclass
class InterpolationStage:
    """Keyframe latents -> interpolated latents (see the module docstring)."""

    unet: nn.Module  # InterpolationUNet or MaskedInterpolationUNet
    null_embedding: torch.Tensor  # (C,)
    movq: nn.Module  # its frozen image MoVQ (latent-space check)
    settings: Any
    schedule: Any
    source: StageSource

    def to(self, device: torch.device | str) -> InterpolationStage:
        self.unet.to(device)
        self.movq.to(device)
        self.null_embedding = self.null_embedding.to(device)
        return self

    @torch.no_grad()
    def interpolate(
        self, latents: torch.Tensor, *, passes: int = 1, skip_frames: Any = None, guidance_weight: float | None = None,
        perturbation_time: int | None = None, steps: int | None = None, seed: int = 0, sampler: str | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Unscaled keyframe latents ``(B, K, c, h, w)`` -> ``(B, 4^passes (K - 1) + 1, c, h, w)``, unscaled."""
        from ff_lightning.diffusion.samplers import SamplingSchedule
        from ff_lightning.models.interpolation_pipeline import SamplingOptions, interpolate, method_for

        m = self.settings
        schedule = SamplingSchedule.build(m.sample_spacing, steps or m.sample_steps, self.schedule)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        seq = interpolate(
            method_for(self.unet), latents * m.latent_scale, self.null_embedding,
            SamplingOptions(schedule, sampler or m.sampler, m.ddim_eta, m.dynamic_threshold), passes=passes,
            skip_frames=skip_frames if skip_frames is not None else (m.sample_skip or 1),
            perturbation_time=int(m.inference_perturbation if perturbation_time is None else perturbation_time),
            guidance_weight=float(m.guidance_weight if guidance_weight is None else guidance_weight),
            train_schedule=self.schedule, generator=gen,
        )  # fmt: skip
        return seq / m.latent_scale


def build_interpolation_stage(src: StageSource) -> InterpolationStage:
    from ff_lightning import registry
    from ff_lightning.diffusion.schedule import NoiseSchedule

    cfg = _compose(src)
    m, mc = cfg.module, cfg.model
    if cfg.system != "interpolation":
        raise CheckpointError(f"{src.path}: a {cfg.system} stage, not an interpolation stage")
    if m.latent_scale is None:
        raise CheckpointError(f"{src.path}: module.latent_scale is unset (never measured)")
    overrides = {k: v for k, v in dict(mc.overrides).items() if k not in ("noisy_init", "freeze_spatial")}
    unet = registry.build("interpolation_unet", mc.variant, mc.preset, **overrides)
    _load(unet, _sub(src.state, "unet."), f"{src.path} (interpolation UNet)")
    null = _sub(src.state, "null_embedding.").get("embedding")
    if null is None:
        raise CheckpointError(f"{src.path}: no null_embedding.embedding (the interpolation context)")
    return InterpolationStage(unet.eval().requires_grad_(False), null.float(), build_image_movq(src, m), m,
                              NoiseSchedule.cosine(m.train_timesteps), src)  # fmt: skip


# -------------------------------------------------------------------------------------------------- decoder
@dataclass
class DecoderStage:
    """Latents -> frames with a MoVQ: a video decoder over all frames at once, or an image decoder frame by frame."""

    movq: nn.Module
    video: bool
    decode_quantized: bool = False
    variant: str = "image"

    def to(self, device: torch.device | str) -> DecoderStage:
        self.movq.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``(T, c, h, w)`` of one video -> frames ``(T, 3, H, W)``."""
        t = latents.shape[0]
        if self.video:
            z = self.movq.quantize(latents)[0] if self.decode_quantized else latents
            return self.movq.decode(z, num_frames=t)
        return torch.cat([self.movq.decode(latents[i : i + 1], num_frames=1) for i in range(t)])


def build_decoder_stage(src: StageSource) -> DecoderStage:
    from ff_lightning import registry
    from ff_lightning.models.video_decoder import video_decoder_from_image

    cfg = _compose(src)
    if cfg.system != "decoder":
        raise CheckpointError(f"{src.path}: a {cfg.system} stage, not a decoder stage")
    image = registry.build("movq", "movqgan", cfg.model.preset, **cfg.model.overrides)
    release = bool((src.manifest.get("release_forward") or {}).get("attn_zq_first_frame"))
    movq = video_decoder_from_image(image, cfg.model.variant, attn_zq_first_frame=release)
    allowed = () if cfg.module.decode_quantized else ("quantize.",)
    _load(movq, _sub(src.state, "movq."), f"{src.path} (video MoVQ)", allow_missing=allowed)
    return DecoderStage(movq.eval().requires_grad_(False), True, bool(cfg.module.decode_quantized),
                        str(cfg.model.variant))  # fmt: skip
