"""``ReferenceKeyframesModule`` (system ``reference_keyframes``): keyframes guided by a reference image.

The VideoGen / Kandinsky Video 1.1 idea on the keyframe UNet: the ``ref_*`` keyframe kinds
(:mod:`ff_lightning.models.keyframes`, :mod:`ff_lightning.models.reference`) take a reference latent on the given
frames at the input conv. Everything else is the ``keyframes`` system (:class:`KeyframesModule`: the frozen T2I UNet,
trainable temporal parts, frame-rate conditioning); this system adds (``module:`` options of
:class:`ReferenceKeyframesSystemConfig`):

Training. The reference is a real frame of the clip, ``reference_frame`` (default 0; None: a random frame per clip),
its latent from the frozen MoVQ encoder (the clip's own ``x0``). It is noise-augmented to a level drawn uniformly
from the integers ``reference_noise_levels = [lo, hi]`` (a timestep of the training schedule: ``q_sample`` of the
latent; 0 = clean) and the level is a condition of the UNet. The reference is dropped (zeros, mask 0, level 0) with
probability ``reference_dropout`` per clip, independently of the caption's ``cfg_dropout``, so the model learns
``e(I, T)``, ``e(I, 0)``, ``e(0, T)`` and ``e(0, 0)``. Validation batches never drop (as for the text). The loss is the
keyframe system's, over all frames.

Sampling (:meth:`ReferenceKeyframesModule.generate`, which runs
:class:`~ff_lightning.pipelines.reference.ReferenceKeyframeStage` over this system's modules). The reference is a user image ``(B | 1, 3, H, W)`` in [-1, 1]
(encoded by the MoVQ), a latent ``(B | 1, c, h, w)``, or, when none is given, made by the *image stage*: the
keyframe UNet's own frozen spatial weights run as the text-to-image model
(:meth:`~ff_lightning.models.keyframes.KeyframeUNet.image_unet`, i.e. the T2I base the model was converted from)
with the same sampler, steps and text guidance, seed ``seed + IMAGE_SEED_OFFSET``. It is placed at frame
``sample_reference_frame`` (default 0), noise-augmented to ``reference_sample_level`` (default 0: clean), and the
video is sampled with two-weight guidance (:func:`~ff_lightning.models.reference.reference_guided_denoiser`): text
weight ``guidance_weight``, image weight ``image_guidance_weight``; ``image_guidance_weight = 0`` is plain text CFG
with the reference in both branches. ``use_reference=False`` samples without a reference (text CFG of the
reference-dropped model).

TensorBoard samples show, per prompt, one strip ``reference | keyframes | ground truth`` (``<tag>/strip``) and the
keyframes as a video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange

from ff_lightning.config import ConfigError
from ff_lightning.pipelines.reference import (
    IMAGE_SEED_OFFSET,
    ReferenceKeyframeStage,
    fit_reference_image,
    read_reference_image,
    reference_stage_over,
)
from ff_lightning.systems.keyframes import KeyframesModule, KeyframesSystemConfig

__all__ = [
    "ReferenceKeyframesSystemConfig",
    "ReferenceKeyframesModule",
    "IMAGE_SEED_OFFSET",
    "read_reference_image",
    "fit_reference_image",
]


@dataclass
class ReferenceKeyframesSystemConfig(KeyframesSystemConfig):
    """``module:`` section of the ``reference_keyframes`` system (the ``keyframes`` options plus these)."""

    reference_frame: int | None = 0  # frame of a training clip used as its reference (None: a random frame per clip)
    reference_noise_levels: list[int] = field(default_factory=lambda: [0, 100])  # [lo, hi] augmentation levels
    reference_dropout: float = 0.1  # probability of training a clip without its reference (image guidance)
    sample_reference_frame: int = 0  # frame that gets the reference when sampling
    reference_sample_level: int = 0  # augmentation level of the reference when sampling (0: clean)
    image_guidance_weight: float = 1.0  # w_img of the two-weight guidance (0: text CFG only)
    image_steps: int | None = None  # sampler steps of the image stage (None: the keyframe stage's)


class ReferenceKeyframesModule(KeyframesModule):
    """Keyframes guided by a reference image; see the module docstring."""

    reference_conditioned = True

    def build_unet(self) -> Any:
        m = self.m
        levels = [int(v) for v in m.reference_noise_levels]
        if len(levels) != 2 or not 0 <= levels[0] <= levels[1] < int(m.train_timesteps):
            raise ConfigError(
                f"module.reference_noise_levels must be [lo, hi] with 0 <= lo <= hi < train_timesteps, "
                f"got {list(m.reference_noise_levels)}"
            )
        if not 0.0 <= m.reference_dropout <= 1.0:
            raise ConfigError(f"module.reference_dropout must lie in [0, 1], got {m.reference_dropout}")
        t = int(self.cfg.data.num_frames)
        for key in ("reference_frame", "sample_reference_frame"):
            v = m.get(key)
            if v is not None and not -t <= int(v) < t:
                raise ConfigError(f"module.{key}={v} is not a frame of a {t}-frame clip")
        return super().build_unet()

    # ------------------------------------------------------------------------------------------------- training
    def unet_extras(self, x0: torch.Tensor, videos: int, generator: torch.Generator | None) -> dict[str, Any]:
        """The clip's reference frame ``(b, c, h, w)``, noise-augmented, its mask ``(b, t)`` and level ``(b,)``."""
        m = self.m
        t = x0.shape[0] // videos
        clips = rearrange(x0, "(b t) c h w -> b t c h w", t=t)

        def draw(fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            if generator is None:
                return fn(*args, device=x0.device, **kwargs)
            return fn(*args, generator=generator, **kwargs).to(x0.device)

        if m.reference_frame is None:
            index = draw(torch.randint, 0, t, (videos,))
        else:
            index = torch.full((videos,), int(m.reference_frame) % t, device=x0.device, dtype=torch.long)
        reference = clips[torch.arange(videos, device=x0.device), index]  # b c h w
        lo, hi = (int(v) for v in m.reference_noise_levels)
        level = draw(torch.randint, lo, hi + 1, (videos,))
        noise = draw(torch.randn, reference.shape, dtype=reference.dtype)
        if hi > 0:
            noisy = self.schedule.q_sample(reference, level, noise)
            reference = torch.where((level > 0)[:, None, None, None], noisy, reference)  # level 0: clean
        keep = torch.ones(videos, device=x0.device, dtype=torch.bool)
        if generator is None and m.reference_dropout > 0:  # training only, as the caption's cfg_dropout
            keep = torch.rand(videos, device=x0.device) >= m.reference_dropout
        frames = torch.zeros(videos, t, device=x0.device, dtype=x0.dtype)
        frames[torch.arange(videos, device=x0.device), index] = keep.to(x0.dtype)
        level = torch.where(keep, level, torch.zeros_like(level))
        return {"reference": reference, "reference_frames": frames, "reference_level": level.to(x0.dtype)}

    def given_reference(self, x0: torch.Tensor, videos: int) -> dict[str, Any]:
        """UNet inputs giving each clip its own clean frame ``sample_reference_frame`` as the reference (held-out
        losses with a reference): ``x0`` ``(b t) c h w`` -> ``reference`` ``(b, c, h, w)``, ``reference_frames``."""
        t = x0.shape[0] // videos
        index = int(self.m.sample_reference_frame) % t
        reference = rearrange(x0, "(b t) c h w -> b t c h w", t=t)[:, index]
        return {"reference": reference, "reference_frames": index}

    # ------------------------------------------------------------------------------------------------- sampling
    def sampling_stage(self) -> ReferenceKeyframeStage:
        """The typed stage over this system's modules (:mod:`ff_lightning.pipelines.reference`): its sampling code."""
        from ff_lightning.pipelines.live import keyframe_stage_of

        return reference_stage_over(keyframe_stage_of(self))

    def reference_latents(self, reference: torch.Tensor, videos: int) -> torch.Tensor:
        """A user reference -> latents ``(videos, c, h, w)`` (see
        :meth:`~ff_lightning.pipelines.reference.ReferenceKeyframeStage.reference_latents`)."""
        return self.sampling_stage().reference_latents(reference, videos)

    @torch.no_grad()
    def generate_reference(self, prompts: Sequence[str], latent_size: tuple[int, int], *, seed: int | None = None,
                           **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """The image stage: reference latents ``(B, c, h, w)`` from the frozen T2I weights (see the module docstring);
        ``kwargs``: ``steps``, ``sampler``, ``guidance_weight``, ``progress``."""
        seed = self.m.sample_seed if seed is None else seed
        return self.sampling_stage().image_latents(list(prompts), latent_size, seed=seed, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        latent_size: tuple[int, int],
        decode: bool = True,
        frame_step: float | None = None,
        *,
        reference: torch.Tensor | None = None,
        image_guidance_weight: float | None = None,
        use_reference: bool = True,
        return_reference: bool = False,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_weight: float | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> Any:
        """Keyframe videos ``(B, T, 3, H, W)`` (latents ``(B, T, c, h, w)`` with ``decode=False``) that start from a
        reference: ``reference`` (image or latent, see :meth:`reference_latents`), else the image stage's.

        ``image_guidance_weight``: ``w_img`` (default ``module.image_guidance_weight``); ``guidance_weight``: the text
        weight. ``use_reference=False``: no reference at all. ``return_reference``: also return the reference latents
        ``(B, c, h, w)`` (None without one). Other arguments as :meth:`KeyframesModule.generate`.
        """
        t = self.num_frames
        latents, ref = self.sampling_stage().model_latents(
            list(prompts), latent_size, reference=reference, image_guidance_weight=image_guidance_weight,
            use_reference=use_reference, frame_step=frame_step, steps=steps, sampler=sampler,
            guidance_weight=guidance_weight, seed=self.m.sample_seed if seed is None else seed, progress=progress,
        )  # (b t) c h w  # fmt: skip
        out = self.decode_latents(latents, num_frames=t) if decode else latents
        video = rearrange(out, "(b t) c h w -> b t c h w", t=t)
        return (video, ref) if return_reference else video

    # ---------------------------------------------------------------------------------------------------- logging
    @torch.no_grad()
    def log_samples(self, tag: str, batch: Mapping[str, Any]) -> None:
        """Per prompt a strip ``reference (image stage) | keyframes | ground truth`` (``<tag>/strip``) and the video."""
        exp = self._tensorboard()
        if exp is None or not self.trainer.is_global_zero:
            return
        n = min(self.m.num_log_samples, batch["video"].shape[0])
        prompts = list(self.m.sample_prompts) or list(batch["caption"][:n])
        truth = batch["video"][: len(prompts)]
        latent = self.encode_frames(batch["video"][:1, 0])
        was_training = self.training
        self.eval()
        try:
            video, ref = self.generate(prompts, tuple(latent.shape[-2:]), return_reference=True)
            ref_image = self.decode_latents(ref)  # b 3 H W
        finally:
            self.train(was_training)

        def unit(x: torch.Tensor) -> torch.Tensor:
            return ((x.float().clamp(-1, 1) + 1) / 2).cpu()

        video, ref_image = unit(video), unit(ref_image)
        parts = [ref_image, rearrange(video, "b t c h w -> b c h (t w)")]  # frames side by side
        if not self.m.sample_prompts and truth.shape[2:] == video.shape[2:]:  # the batch's captions: its clips
            parts.append(rearrange(unit(truth), "b t c h w -> b c h (t w)"))
        exp.add_images(f"{tag}/strip", torch.cat(parts, dim=-1), global_step=self.global_step)
        try:
            exp.add_video(tag, video, global_step=self.global_step, fps=self.m.log_fps)
        except Exception:  # pragma: no cover - moviepy missing or broken: the strip above has the frames
            pass
