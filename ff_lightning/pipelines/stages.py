"""Typed inference stages built from a stage's config + state dict, without Lightning.

Each stage is a plain object holding ``nn.Module`` s and its sampling settings, built from a
:class:`~ff_lightning.checkpoints.StageSource` (an ``ff export`` / ``ff import`` folder or a training checkpoint;
EMA weights already laid over): the models come from the registry at the config's variant / preset and get the
state dict's entries by prefix (``unet.``, ``text_projection.``, ``null_embedding.``, ``movq.``), strictly.

- :class:`TextConditioner`: frozen text encoder + projection + null embedding -> ``(context, mask)``;
- :class:`ImageStage`: text-to-image UNet + guided sampling -> image latents ``(B, c, h, w)``;
- :class:`KeyframeStage`: keyframe UNet + guided sampling -> keyframe latents ``(B, K, c, h, w)``;
- :class:`InterpolationStage`: interpolation UNet -> ``(B, 4^n (K - 1) + 1, c, h, w)``;
- :class:`DecoderStage`: a MoVQ (image decoder frame by frame, or a video decoder over all frames) -> frames.

The sampling calls are the ones the training systems make (:func:`~ff_lightning.diffusion.samplers.sample` with
:func:`~ff_lightning.diffusion.guidance.guided_denoiser`; :func:`~ff_lightning.models.interpolation_pipeline.interpolate`)
with the same arguments, so a stage reproduces its system's samples for the same seed (tested bit for bit).
Latents crossing stages are unscaled MoVQ latents (each stage applies its own ``latent_scale``); the
``model_*`` methods work in the model's space (times ``latent_scale``), as the training systems do.

The training systems build the same stages over their live modules (:mod:`ff_lightning.pipelines.live`) for their
TensorBoard samples and ``generate``: the sampling code lives here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from einops import rearrange
from torch import nn

from ff_lightning.checkpoints import CheckpointError, StageSource

__all__ = [
    "TextConditioner",
    "ImageStage",
    "KeyframeStage",
    "InterpolationStage",
    "DecoderStage",
    "build_keyframe_stage",
    "build_text_conditioner",
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


def build_text_conditioner(src: StageSource, m: Any, context_dim: int) -> TextConditioner:
    """The stage's text encoder (``module.text_encoder``) + its ``text_projection.*`` / ``null_embedding.*``."""
    from ff_lightning.models.text import NullEmbedding, TextEmbeddingCache, TextProjection, build_text_encoder

    encoder = build_text_encoder(m.text_encoder, m.text_encoder_path, max_length=m.text_max_length)
    projection, null = TextProjection(encoder.dim, context_dim), NullEmbedding(context_dim)
    _load(projection, _sub(src.state, "text_projection."), f"{src.path} (text projection)")
    _load(null, _sub(src.state, "null_embedding."), f"{src.path} (null embedding)")
    return TextConditioner(TextEmbeddingCache(encoder, None), projection.eval(), null.eval(), m.negative_prompt)


def guided_sample(
    text: TextConditioner, settings: Any, schedule: Any, model_fn: Any, prompts: list[str], shape: tuple[int, ...], *,
    threshold_group: int = 1, steps: int | None = None, sampler: str | None = None,
    guidance_weight: float | None = None, seed: int = 0, progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Text-guided sampling of model-space latents ``shape`` with ``model_fn(x, t, context, mask)``; defaults from
    ``settings`` (a ``module`` config section: sampler, sample_steps, sample_spacing, guidance_weight, ...)."""
    from ff_lightning.diffusion.guidance import guided_denoiser
    from ff_lightning.diffusion.samplers import SamplingSchedule, sample

    m = settings
    cond = text.condition(prompts)
    w = m.guidance_weight if guidance_weight is None else guidance_weight
    uncond = text.uncond(len(prompts), cond[0].shape[1]) if w != 0 else None
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return sample(
        guided_denoiser(model_fn, cond, uncond, w), shape,
        SamplingSchedule.build(m.sample_spacing, steps or m.sample_steps, schedule),
        method=sampler or m.sampler, prediction=m.prediction, eta=m.ddim_eta, threshold=m.dynamic_threshold,
        threshold_group=threshold_group, generator=gen, device=text.device,
        dtype=text.projection.projection.weight.dtype, progress=progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- images
@dataclass
class ImageStage:
    """Text -> image latents with a text-to-image UNet (a T2I model, or a keyframe UNet's frozen image weights)."""

    unet: nn.Module  # KandinskyUNet: unet(x, t, context, mask)
    text: TextConditioner
    settings: Any  # the module section of the config (sampler, steps, guidance, prediction, latent_scale, ...)
    schedule: Any  # NoiseSchedule of training

    @torch.no_grad()
    def model_latents(
        self, prompts: list[str], latent_hw: tuple[int, int], *, steps: int | None = None,
        sampler: str | None = None, guidance_weight: float | None = None, seed: int = 0, progress: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """Image latents ``(B, c, h, w)`` in the model's space (times ``latent_scale``)."""
        channels = int(self.unet.config["num_channels"])

        def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, mk: torch.Tensor | None) -> torch.Tensor:
            return self.unet(x, t, c, mk)

        return guided_sample(self.text, self.settings, self.schedule, model_fn, list(prompts),
                             (len(prompts), channels, *latent_hw), steps=steps, sampler=sampler,
                             guidance_weight=guidance_weight, seed=seed, progress=progress)  # fmt: skip

    def sample(self, prompts: list[str], latent_hw: tuple[int, int], **kwargs: Any) -> torch.Tensor:
        """Unscaled image latents ``(B, c, h, w)``; ``kwargs`` as :meth:`model_latents`."""
        return self.model_latents(prompts, latent_hw, **kwargs) / self.settings.latent_scale


# ----------------------------------------------------------------------------------------------- keyframes
class TextUNetStage:
    """What the text -> keyframe stages share over their ``unet``, ``movq`` and ``text`` fields: device, moving, and
    the latent size of a frame size (the image MoVQ's)."""

    unet: nn.Module
    movq: nn.Module
    text: TextConditioner

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> Self:
        for mod in (self.unet, self.movq, self.text.projection, self.text.null):
            mod.to(device)
        return self

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """Latent ``(h, w)`` of frames ``size = (H, W)``."""
        with torch.no_grad():
            z = self.movq.encode(torch.zeros(1, 3, int(size[0]), int(size[1]), device=self.device))
        return int(z.shape[-2]), int(z.shape[-1])


@dataclass
class KeyframeStage(TextUNetStage):
    """Text -> keyframe latents with the keyframe UNet (see the module docstring)."""

    unet: nn.Module  # KeyframeUNet
    text: TextConditioner
    movq: nn.Module  # the frozen image MoVQ (latent size; frame-by-frame decoding without a video decoder)
    settings: Any  # the module section of the stage's config (sampler, steps, guidance, ...)
    schedule: Any  # NoiseSchedule of training
    num_frames: int
    position_unit: float
    default_frame_step: float
    source: StageSource | None = None  # None: built over a live training system
    config: Any = None  # the stage's composed run config (data.size, data.fps, ...)

    def frame_stride(self, frame_step: float | None = None) -> float:
        """Frame-position stride of sampling: ``unit * frame_step`` (default the stage's sample frame step)."""
        return float(frame_step or self.default_frame_step) * self.position_unit

    @torch.no_grad()
    def model_latents(
        self, prompts: list[str], latent_hw: tuple[int, int], *, steps: int | None = None,
        guidance_weight: float | None = None, seed: int = 0, frame_step: float | None = None,
        sampler: str | None = None, progress: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """Keyframe latents ``(B K, c, h, w)`` in the model's space (times ``latent_scale``; frames folded).
        Dynamic thresholding takes one quantile per video."""
        t = self.num_frames
        stride = self.frame_stride(frame_step)

        def model_fn(x: torch.Tensor, time: torch.Tensor, c: torch.Tensor, mk: torch.Tensor | None) -> torch.Tensor:
            return self.unet(x, time, c, mk, num_frames=t, frame_stride=stride)

        channels = int(self.unet.config["num_channels"])
        return guided_sample(self.text, self.settings, self.schedule, model_fn, list(prompts),
                             (len(prompts) * t, channels, *latent_hw), threshold_group=t, steps=steps,
                             sampler=sampler, guidance_weight=guidance_weight, seed=seed, progress=progress)  # fmt: skip

    def sample(self, prompts: list[str], latent_hw: tuple[int, int], **kwargs: Any) -> torch.Tensor:
        """Keyframe latents ``(B, K, c, h, w)`` (unscaled MoVQ latents) for ``prompts``; ``kwargs`` as
        :meth:`model_latents`."""
        latents = self.model_latents(prompts, latent_hw, **kwargs)
        return rearrange(latents, "(b t) c h w -> b t c h w", t=self.num_frames) / self.settings.latent_scale


def build_keyframe_stage(src: StageSource, *, reference: bool = False) -> KeyframeStage:
    """A :class:`KeyframeStage` from a keyframes-system stage; ``reference``: a reference_keyframes stage (its ``ref_*``
    UNet; sample it through :class:`~ff_lightning.pipelines.reference.ReferenceKeyframeStage`)."""
    from ff_lightning import registry
    from ff_lightning.diffusion.schedule import NoiseSchedule
    from ff_lightning.models.keyframes import KEYFRAME_DESIGNS, default_frame_stride

    cfg = _compose(src)
    m, mc = cfg.module, cfg.model
    want = "reference_keyframes" if reference else "keyframes"
    if mc.variant not in KEYFRAME_DESIGNS:  # keyframe_unet/kv1_1 (Kandinsky Video 1.1) samples its own way
        raise CheckpointError(f"{src.path}: keyframe variant {mc.variant!r} is not sampled by KeyframeStage; a kv1_1 "
                              "stage is built by ff_lightning.pipelines.kv11.build_kv11_keyframe_stage")  # fmt: skip
    if cfg.system != want or KEYFRAME_DESIGNS[mc.variant].reference != reference:
        raise CheckpointError(f"{src.path}: a {cfg.system} / {mc.variant} stage, not a {want} stage")
    if m.latent_scale is None:
        raise CheckpointError(f"{src.path}: module.latent_scale is unset (never measured)")
    num_frames = int(cfg.data.num_frames)
    overrides = {k: v for k, v in dict(mc.overrides).items() if k != "num_frames"}
    unet = registry.build("keyframe_unet", mc.variant, mc.preset, num_frames=num_frames, **overrides)
    _load(unet, _sub(src.state, "unet."), f"{src.path} (keyframe UNet)")
    text = build_text_conditioner(src, m, int(unet.config["context_dim"]))
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
    source: StageSource | None = None  # None: built over a live training system

    def to(self, device: torch.device | str) -> InterpolationStage:
        self.unet.to(device)
        self.movq.to(device)
        self.null_embedding = self.null_embedding.to(device)
        return self

    def interpolate(self, latents: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Unscaled keyframe latents ``(B, K, c, h, w)`` -> ``(B, 4^passes (K - 1) + 1, c, h, w)``, unscaled;
        ``kwargs`` as :meth:`model_interpolate`."""
        scale = self.settings.latent_scale
        return self.model_interpolate(latents * scale, **kwargs) / scale

    @torch.no_grad()
    def model_interpolate(
        self, latents: torch.Tensor, *, passes: int = 1, skip_frames: Any = None, guidance_weight: float | None = None,
        perturbation_time: int | None = None, steps: int | None = None, seed: int = 0, sampler: str | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Model-space keyframe latents ``(B, K, c, h, w)`` (times ``latent_scale``) -> ``(B, 4^passes (K - 1) + 1,
        c, h, w)`` in the same space. ``skip_frames``: an int or one per video (default ``sample_skip`` or 1)."""
        from ff_lightning.diffusion.samplers import SamplingSchedule
        from ff_lightning.models.interpolation_pipeline import SamplingOptions, interpolate, method_for

        m = self.settings
        schedule = SamplingSchedule.build(m.sample_spacing, steps or m.sample_steps, self.schedule)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        return interpolate(
            method_for(self.unet, bool(m.get("blend_residual", False)), float(m.get("residual_scale", 1.0))),
            latents, self.null_embedding,
            SamplingOptions(schedule, sampler or m.sampler, m.ddim_eta, m.dynamic_threshold), passes=passes,
            skip_frames=skip_frames if skip_frames is not None else (m.sample_skip or 1),
            perturbation_time=int(m.inference_perturbation if perturbation_time is None else perturbation_time),
            guidance_weight=float(m.guidance_weight if guidance_weight is None else guidance_weight),
            train_schedule=self.schedule, generator=gen,
        )  # fmt: skip


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
    release_clips: bool = False  # Kandinsky Video 1.1's decode: T // 4 clips (torch.chunk), each decoded alone

    def to(self, device: torch.device | str) -> DecoderStage:
        self.movq.to(device)
        return self

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents ``(T, c, h, w)`` of one video -> frames ``(T, 3, H, W)``."""
        t = latents.shape[0]
        if self.video:
            z = self.movq.quantize(latents)[0] if self.decode_quantized else latents
            if self.release_clips:  # the 1.1 release decodes its 12 keyframes as 3 clips of 4 frames
                return torch.cat([self.movq.decode(c, num_frames=c.shape[0]) for c in z.chunk(max(1, t // 4))])
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
                        str(cfg.model.variant), release_clips=release)  # fmt: skip
