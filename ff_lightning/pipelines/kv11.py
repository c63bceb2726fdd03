"""Kandinsky Video 1.1 keyframes as a typed stage: :class:`KV11KeyframeStage` over an ``ff import --format kv1.1``
``keyframes/`` stage (model ``keyframe_unet/kv1_1``, :mod:`ff_lightning.models.kv11`).

The procedure, read off the public release code (ai-forever/KandinskyVideo: ``kandinsky_video/t2v_pipeline.py``
``KandinskyVideoT2VPipeline.__call__`` / ``generate_key_frame`` / ``generate_base_frames`` / ``encode_image`` /
``decode_image``, ``kandinsky_video/model/diffusion.py`` ``get_sampler`` / ``BaseDiffusion.p_sample_loop_image`` /
``p_sample_loop`` / ``_get_unconditional_context``; nothing copied), for frames ``H x W`` and latents ``h x w``:

1. **First frame**, unless an image is given: the same UNet in *image mode* (``image_in_layer``, no temporal parts),
   fed ``[noisy latent | zeros | zero mask]``, at **twice** the keyframes' latent size (``(1, 4, H // 4, W // 4)`` in
   the release), guidance ``(1 + w) cond - w uncond`` with ``w = key_frame_guidance_scale`` (5 by default). It is
   decoded by the image MoVQ, clipped and cast to uint8 (truncated), resized back to the frame size (PIL, bicubic,
   by ``max(1, min(W' / W, H' / H))``), centre-cropped, and encoded again by the image MoVQ: ``(c, h, w)``.
2. **Keyframes**: 12 frames, positions ``0 .. 11``; the first frame's latent is noise-augmented to timestep
   ``noise_augmentation`` (20) with *uniform* noise (``torch.rand_like``), placed on frame 0 with mask 1 (zeros and
   mask 0 elsewhere); every branch is told the noise level and the motion score (``low`` 1, ``medium`` 10, ``high``
   50, ``extreme`` 100; an unknown name falls back to ``medium``, as ``motion='normal'``, the release's default, does).
   Three branches: ``e_c`` (text, first frame), ``e_i`` (null text, first frame), ``e_u`` (null text, no first
   frame), combined as ``(1 - w_i) e_u + (w_i - w_p) e_i + w_p e_c`` with ``w_p = guidance_weight_prompt`` (5) and
   ``w_i = guidance_weight_image`` (2; the README's examples use 3). That is the project's two-weight guidance
   (:func:`~ff_lightning.models.reference.reference_guided_denoiser`) at text weight ``w_p - 1``, image ``w_i - 1``.
3. **Sampler** (both loops): diffusers' ``DDPMScheduler`` with 1000 training steps, the ``squaredcos_cap_v2`` cosine
   betas rescaled to zero terminal SNR, eps prediction, 50 steps at ``leading`` spacing (timesteps ``980, 960, ...,
   0``, the model fed those), variance ``fixed_small_log`` (the posterior variance), thresholding with ratio 0.995
   and the default ``sample_max_value`` 1, which makes it a plain clip of ``x0`` to [-1, 1].
4. The null embedding (``t2v.pt``'s ``null_embedding``) is the unconditional context: its vector as the only unmasked
   token. ``t5_projections.pt``'s ``projection_base`` projects the text for both loops (``projection_interpolation``
   is the interpolation UNet's). dtypes in the release: UNets float16, text encoder and MoVQs float32 (here:
   the pipeline's precision, fp32 by default).

Random draws come from one generator seeded with ``seed``, in the release's order: the first frame's ``x_T`` and its
step noises, then the keyframes' ``x_T``, the augmentation noise and the step noises (with one prompt and
``torch.manual_seed(seed)`` the release draws the same numbers).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from ff_lightning.checkpoints import CheckpointError, StageSource
from ff_lightning.diffusion.samplers import SamplingSchedule
from ff_lightning.diffusion.schedule import NoiseSchedule
from ff_lightning.models.kv11 import KV11_MOTION_SCORES, KV11_NOISE_AUGMENTATION, KV11_NUM_FRAMES
from ff_lightning.pipelines.stages import TextConditioner, TextUNetStage

__all__ = [
    "KV11Options",
    "KV11KeyframeStage",
    "kv11_sampling_schedule",
    "zero_snr_schedule",
    "to_uint8",
    "fit_release_image",
    "build_kv11_keyframe_stage",
]

KV11_CLIP_SECONDS = 5.5  # the release's README saves the video over 5.5 s (gif duration 5500 / frames ms)


@dataclass(frozen=True)
class KV11Options:
    """The release's sampling defaults (``KandinskyVideoT2VPipeline.__call__``)."""

    motion: str = "medium"  # KV11_MOTION_SCORES key; the release's default 'normal' falls back to medium
    noise_augmentation: int = KV11_NOISE_AUGMENTATION  # timestep of the first frame's augmentation noise
    guidance_weight: float = 5.0  # w_p, guidance_weight_prompt
    image_guidance_weight: float = 2.0  # w_i, guidance_weight_image
    first_frame_guidance_weight: float = 5.0  # key_frame_guidance_scale (image mode)
    steps: int = 50  # get_sampler's num_inference_timesteps (both loops)
    first_frame_upscale: int = 2  # the first frame is sampled at this multiple of the keyframes' latent size
    threshold_ratio: float = 0.995  # dynamic_thresholding_ratio (moot with sample_max_value 1: a clip to [-1, 1])
    threshold_max: float = 1.0  # diffusers' sample_max_value

    def motion_score(self, motion: str | None = None) -> int:
        name = self.motion if motion is None else motion
        if name not in KV11_MOTION_SCORES:
            warnings.warn(f"motion {name!r} is not one of {sorted(KV11_MOTION_SCORES)}: using 'medium'", stacklevel=3)
            name = "medium"
        return KV11_MOTION_SCORES[name]


def kv11_sampling_schedule(num_steps: int = 50, train_steps: int = 1000) -> SamplingSchedule:
    """The release sampler's steps: the cosine schedule of ``train_steps`` rescaled to zero terminal SNR, at the
    ``leading`` timesteps ``i * (train_steps // num_steps)``, ``i < num_steps`` (the model fed those timesteps)."""
    schedule = zero_snr_schedule(train_steps)
    ratio = train_steps // num_steps
    if ratio < 1:
        raise ValueError(f"{num_steps} sampling steps exceed the {train_steps} training steps")
    steps = torch.arange(num_steps, dtype=torch.long) * ratio
    return SamplingSchedule(schedule.alphas_cumprod[steps], steps.to(torch.float64))


def zero_snr_schedule(train_steps: int = 1000) -> NoiseSchedule:
    """The cosine :class:`NoiseSchedule` with ``sqrt(alphas_cumprod)`` shifted and scaled to run from its first
    value down to 0 (Lin et al. 2024, "zero terminal SNR"; diffusers' ``rescale_betas_zero_snr``)."""
    root = NoiseSchedule.cosine(train_steps).alphas_cumprod.sqrt()
    first, last = float(root[0]), float(root[-1])
    ab = ((root - last) * (first / (first - last))) ** 2
    betas = 1.0 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    out = NoiseSchedule.__new__(NoiseSchedule)  # the last beta is exactly 1: past NoiseSchedule's (0, 1) check
    out.betas, out.alphas_cumprod = betas, ab
    return out


def to_uint8(images: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """Images ``(..., 3, H, W)`` in [-1, 1] -> uint8: ``decode_image``'s ``uint8(255 clip((x + 1) / 2, 0, 1))``
    (truncated; ``truncate=False`` rounds, for images read from 8-bit files)."""
    scaled = ((images.detach().float() + 1.0) / 2.0).clamp(0, 1) * 255.0
    return (scaled if truncate else scaled.round()).to(torch.uint8)


def fit_release_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The release's ``encode_image`` preparation of a uint8 image ``(3, H', W')``: resized by
    ``max(1, min(W' / w, H' / h))`` (PIL bicubic, sizes rounded), centre-cropped to ``size = (h, w)``. Returns
    ``(3, h, w)`` float32 in [-1, 1]."""
    from PIL import Image

    h, w = (int(v) for v in size)
    pil = Image.fromarray(image.cpu().permute(1, 2, 0).numpy())
    factor = max(1.0, min(pil.size[0] / w, pil.size[1] / h))
    if factor != 1.0:
        pil = pil.resize((round(pil.size[0] / factor), round(pil.size[1] / factor)), Image.Resampling.BICUBIC)
    left, top = (pil.size[0] - w) / 2, (pil.size[1] - h) / 2
    pil = pil.crop((left, top, left + w, top + h))
    out = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return 2.0 * out - 1.0


@dataclass
class KV11KeyframeStage(TextUNetStage):
    """Text (+ optional first-frame image) -> 12 keyframe latents with the 1.1 UNet (see the module docstring).

    Fits :class:`~ff_lightning.pipelines.video.VideoPipeline` like :class:`~ff_lightning.pipelines.stages.KeyframeStage`
    (``sample``, ``latent_size``, ``to``, ``settings``, ``config``, ``num_frames``)."""

    unet: nn.Module  # KV11KeyframeUNet
    text: TextConditioner
    movq: nn.Module  # the frozen image MoVQ: first-frame decode / encode, frame-by-frame decoding
    settings: Any  # the stage's module config (sampler, sample_steps, guidance_weight, latent_scale, ...)
    options: KV11Options = field(default_factory=KV11Options)
    num_frames: int = KV11_NUM_FRAMES
    train_steps: int = 1000
    source: StageSource | None = None
    config: Any = None
    default_frame_step: float = 1.0  # positions 0..11: no frame-rate conditioning in 1.1
    fps: float = KV11_NUM_FRAMES / KV11_CLIP_SECONDS

    @property
    def dtype(self) -> torch.dtype:
        return self.text.projection.projection.weight.dtype

    def schedule(self, steps: int | None = None) -> SamplingSchedule:
        return kv11_sampling_schedule(int(steps or self.options.steps), self.train_steps)

    # ------------------------------------------------------------------------------------------- first frame
    @torch.no_grad()
    def first_frame_latents(
        self, prompts: list[str], latent_hw: tuple[int, int], generator: torch.Generator, *, steps: int | None = None,
        guidance_weight: float | None = None, progress: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """Image mode: model-space latents ``(B, c, u h, u w)`` (``u = first_frame_upscale``), random draws from
        ``generator``."""
        from ff_lightning.diffusion.guidance import guided_denoiser
        from ff_lightning.diffusion.samplers import sample

        o = self.options
        w = o.first_frame_guidance_weight if guidance_weight is None else float(guidance_weight)
        cond = self.text.condition(list(prompts))
        uncond = self.text.uncond(len(prompts), cond[0].shape[1]) if w != 0 else None
        c = int(self.unet.config["num_channels"])
        shape = (len(prompts), c, o.first_frame_upscale * latent_hw[0], o.first_frame_upscale * latent_hw[1])
        return sample(
            guided_denoiser(self.unet.forward_image, cond, uncond, w), shape, self.schedule(steps), method="ddpm",
            threshold=o.threshold_ratio, threshold_max=o.threshold_max, generator=generator, device=self.device,
            dtype=self.dtype, progress=progress,
        )  # fmt: skip

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 images ``(B, 3, H', W')`` -> model-space first-frame latents ``(B, c, h, w)`` (release fit to
        ``size``, image MoVQ encode, times ``latent_scale``)."""
        fitted = torch.stack([fit_release_image(im, size) for im in images]).to(self.device, self.dtype)
        return self.movq.encode(fitted) * float(self.settings.latent_scale)

    @torch.no_grad()
    def decode_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space image latents ``(B, c, h', w')`` -> images ``(B, 3, H', W')`` in [-1, 1] (image MoVQ)."""
        return self.movq.decode(latents / float(self.settings.latent_scale), num_frames=1).clamp(-1, 1)

    # ----------------------------------------------------------------------------------------------- keyframes
    @torch.no_grad()
    def model_latents(
        self, prompts: list[str], latent_hw: tuple[int, int], *, image: torch.Tensor | None = None,
        steps: int | None = None, guidance_weight: float | None = None, image_guidance_weight: float | None = None,
        first_frame_guidance_weight: float | None = None, motion: str | None = None,
        noise_augmentation: int | None = None, seed: int = 0, progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Keyframe latents ``(B K, c, h, w)`` in the model's space (frames folded) and the clean first-frame latents
        ``(B, c, h, w)``. ``image``: ``(3, H', W')`` or ``(B | 1, 3, H', W')``, uint8 or in [-1, 1], instead of
        step 1 (the release's ``image=`` argument)."""
        from ff_lightning.diffusion.samplers import sample
        from ff_lightning.models.reference import reference_guided_denoiser

        o, b, t = self.options, len(prompts), self.num_frames
        h, w = latent_hw
        c = int(self.unet.config["num_channels"])
        size = self._frame_size(latent_hw)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        if image is None:
            images = to_uint8(
                self.decode_image_latents(
                    self.first_frame_latents(
                        prompts,
                        latent_hw,
                        gen,
                        steps=steps,
                        guidance_weight=first_frame_guidance_weight,
                        progress=progress,
                    )
                )
            )
        else:
            images = image[None] if image.ndim == 3 else image
            images = images if images.dtype == torch.uint8 else to_uint8(images, truncate=False)
            images = images.expand(b, -1, -1, -1) if images.shape[0] == 1 else images
        first = self.encode_images(images, size)
        if tuple(first.shape[-2:]) != (h, w):
            raise ValueError(f"first-frame latents of {tuple(first.shape[-2:])} for keyframes of {(h, w)}")
        schedule = self.schedule(steps)
        x_T = torch.randn((b * t, c, h, w), generator=gen, dtype=self.dtype).to(self.device)
        level = int(o.noise_augmentation if noise_augmentation is None else noise_augmentation)
        uniform = torch.rand(first.shape, generator=gen, dtype=self.dtype).to(self.device)  # the release's rand_like
        ab = float(zero_snr_schedule(self.train_steps).alphas_cumprod[level])
        augmented = ab**0.5 * first + (1.0 - ab) ** 0.5 * uniform
        motion_score = o.motion_score(motion)
        frames = torch.zeros(b, t, device=self.device)
        frames[:, 0] = 1

        def model_fn(
            x: torch.Tensor, time: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None, use: torch.Tensor
        ) -> torch.Tensor:
            copies = use.shape[0] // b  # branches stacked as videos [text+frame | null+frame | null, no frame]
            given = repeat(frames, "b t -> (k b) t", k=copies) * use[:, None].to(frames.dtype)
            first_frames = repeat(augmented, "b c h w -> (k b) c h w", k=copies)
            return self.unet(x, time, ctx, mask, num_frames=t, first_frame=first_frames, first_frame_rows=given,
                             noise_level=level, motion_score=motion_score)  # fmt: skip

        w_p = o.guidance_weight if guidance_weight is None else float(guidance_weight)
        w_i = o.image_guidance_weight if image_guidance_weight is None else float(image_guidance_weight)
        cond = self.text.condition(list(prompts))
        uncond = self.text.uncond(b, cond[0].shape[1])
        latents = sample(
            reference_guided_denoiser(model_fn, cond, uncond, w_p - 1.0, w_i - 1.0), (b * t, c, h, w), schedule,
            method="ddpm", threshold=o.threshold_ratio, threshold_max=o.threshold_max, generator=gen, x_T=x_T,
            device=self.device, dtype=self.dtype, progress=progress,
        )  # fmt: skip
        return latents, first

    def sample(self, prompts: list[str], latent_hw: tuple[int, int], **kwargs: Any) -> torch.Tensor:
        """Keyframe latents ``(B, K, c, h, w)`` (unscaled MoVQ latents); ``kwargs`` as :meth:`model_latents`
        (``frame_step`` is refused: 1.1 has no frame-rate conditioning)."""
        if kwargs.pop("frame_step", None) not in (None, 1, 1.0):
            raise ValueError("Kandinsky Video 1.1 keyframes have fixed positions 0..11: no --frame-step")
        latents, _ = self.model_latents(prompts, latent_hw, **kwargs)
        return rearrange(latents, "(b t) c h w -> b t c h w", t=self.num_frames) / float(self.settings.latent_scale)

    def _frame_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """Frame size ``(H, W)`` whose latents are ``latent_hw`` (the image MoVQ's downsampling factor)."""
        factor = 64 // self.latent_size((64, 64))[1]
        return latent_hw[0] * factor, latent_hw[1] * factor


def build_kv11_keyframe_stage(src: StageSource) -> KV11KeyframeStage:
    """A :class:`KV11KeyframeStage` from an imported ``keyframe_unet/kv1_1`` stage (folder or checkpoint)."""
    from ff_lightning import registry
    from ff_lightning.pipelines.stages import _compose, _load, _sub, build_image_movq, build_text_conditioner

    cfg = _compose(src)
    m, mc = cfg.module, cfg.model
    if cfg.system != "keyframes" or mc.variant != "kv1_1":
        raise CheckpointError(f"{src.path}: a {cfg.system} / {mc.variant} stage, not a keyframes / kv1_1 stage")
    if m.latent_scale is None:
        raise CheckpointError(f"{src.path}: module.latent_scale is unset (never measured)")
    overrides = {k: v for k, v in dict(mc.overrides).items() if k != "num_frames"}
    num_frames = int(cfg.data.num_frames)
    unet = registry.build("keyframe_unet", "kv1_1", mc.preset, num_frames=num_frames, **overrides)
    _load(unet, _sub(src.state, "unet."), f"{src.path} (1.1 keyframe UNet)")
    text = build_text_conditioner(src, m, int(unet.config["context_dim"]))
    options = KV11Options(steps=int(m.sample_steps), guidance_weight=float(m.guidance_weight))
    return KV11KeyframeStage(
        unet=unet.eval().requires_grad_(False), text=text, movq=build_image_movq(src, m), settings=m, options=options,
        num_frames=num_frames, train_steps=int(m.train_timesteps), source=src, config=cfg,
    )  # fmt: skip
