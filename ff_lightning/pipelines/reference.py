"""Reference-image keyframes (the ``reference_keyframes`` system's ``ref_*`` kinds) as a typed stage.

:class:`ReferenceKeyframeStage` samples keyframes that start from a reference image: a user image ``(B | 1, 3, H, W)``
in [-1, 1] (encoded by the stage's frozen MoVQ), a model-space latent ``(B | 1, c, h, w)``, or, when none is given,
one made by the *image stage*: the keyframe UNet's own frozen spatial weights run as the text-to-image model
(:meth:`~ff_lightning.models.keyframes.KeyframeUNet.image_unet`) with the same sampler and text guidance, seed
``seed + IMAGE_SEED_OFFSET``. The reference sits at frame ``sample_reference_frame``, noise-augmented to
``reference_sample_level`` (0: clean), and the video is sampled with two-weight guidance
(:func:`~ff_lightning.models.reference.reference_guided_denoiser`: text weight ``guidance_weight``, image weight
``image_guidance_weight``). Settings come from the stage's ``module`` config section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, repeat

from ff_lightning.checkpoints import CheckpointError, StageSource
from ff_lightning.pipelines.stages import ImageStage, KeyframeStage

__all__ = [
    "IMAGE_SEED_OFFSET",
    "ReferenceKeyframeStage",
    "reference_stage_over",
    "build_reference_keyframe_stage",
    "read_reference_image",
    "fit_reference_image",
]

IMAGE_SEED_OFFSET = 1_000_003  # the image stage's seed is the sampling seed plus this (its own noise)


@dataclass
class ReferenceKeyframeStage:
    """Text (+ reference image) -> keyframe latents with a ``ref_*`` keyframe UNet (see the module docstring)."""

    keyframes: KeyframeStage  # the ref_* keyframe UNet, text conditioner, frozen MoVQ, settings
    image: ImageStage  # the keyframe UNet's frozen image weights (the T2I base it was converted from)

    @property
    def settings(self) -> Any:
        return self.keyframes.settings

    @property
    def num_frames(self) -> int:
        return self.keyframes.num_frames

    @property
    def device(self) -> torch.device:
        return self.keyframes.device

    @property
    def unet(self) -> torch.nn.Module:
        return self.keyframes.unet

    @property
    def movq(self) -> torch.nn.Module:
        return self.keyframes.movq

    @property
    def config(self) -> Any:
        return self.keyframes.config

    @property
    def default_frame_step(self) -> float:
        return self.keyframes.default_frame_step

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.keyframes.latent_size(size)

    def to(self, device: torch.device | str) -> ReferenceKeyframeStage:
        self.keyframes.to(device)
        return self

    @torch.no_grad()
    def reference_latents(self, reference: torch.Tensor, videos: int) -> torch.Tensor:
        """A user reference -> model-space latents ``(videos, c, h, w)``: an image ``(B | 1, 3, H, W)`` in [-1, 1] is
        encoded by the frozen MoVQ (times ``latent_scale``); a latent ``(B | 1, c, h, w)`` is used as is."""
        kf = self.keyframes
        c = int(kf.unet.config["num_channels"])
        ref = torch.as_tensor(reference).to(self.device)
        if ref.ndim == 3:
            ref = ref[None]
        if ref.ndim != 4 or ref.shape[0] not in (1, videos):
            raise ValueError(f"reference of shape {tuple(ref.shape)}: expected (1 or {videos}, 3 or {c}, H, W)")
        if ref.shape[1] == 3 and c != 3:
            if self.settings.latent_scale is None:
                raise CheckpointError("module.latent_scale is unset (never measured): pass module.latent_scale=...")
            ref = kf.movq.encode(ref.to(kf.text.projection.projection.weight.dtype)) * self.settings.latent_scale
        elif ref.shape[1] != c:
            raise ValueError(f"reference with {ref.shape[1]} channels: an RGB image (3) or a latent ({c})")
        return ref.expand(videos, -1, -1, -1) if ref.shape[0] == 1 else ref

    def image_latents(self, prompts: list[str], latent_hw: tuple[int, int], *, steps: int | None = None,
                      seed: int = 0, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        """The image stage: model-space reference latents ``(B, c, h, w)`` (steps ``image_steps`` when set)."""
        return self.image.model_latents(list(prompts), latent_hw, steps=self.settings.image_steps or steps,
                                        seed=int(seed) + IMAGE_SEED_OFFSET, **kwargs)  # fmt: skip

    @torch.no_grad()
    def model_latents(
        self, prompts: list[str], latent_hw: tuple[int, int], *, reference: torch.Tensor | None = None,
        image_guidance_weight: float | None = None, use_reference: bool = True, frame_step: float | None = None,
        steps: int | None = None, sampler: str | None = None, guidance_weight: float | None = None, seed: int = 0,
        progress: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """Keyframe latents ``(B K, c, h, w)`` in the model's space (frames folded) and the reference latents
        ``(B, c, h, w)`` used (None with ``use_reference=False``)."""
        from ff_lightning.diffusion.samplers import SamplingSchedule, sample
        from ff_lightning.models.reference import reference_guided_denoiser

        kf, m = self.keyframes, self.settings
        b, t = len(prompts), kf.num_frames
        h, w = latent_hw
        c = int(kf.unet.config["num_channels"])
        stride = kf.frame_stride(frame_step)
        device = kf.text.device
        ref = None
        if use_reference:
            if reference is None:
                ref = self.image_latents(list(prompts), latent_hw, steps=steps, sampler=sampler,
                                         guidance_weight=guidance_weight, seed=seed, progress=progress)  # fmt: skip
            else:
                ref = self.reference_latents(reference, b)
            if tuple(ref.shape[-2:]) != (h, w):
                raise ValueError(f"reference latents of {tuple(ref.shape[-2:])} for keyframes of {(h, w)}")
        frames = torch.zeros(b, t, device=device)
        frames[:, int(m.sample_reference_frame)] = 1
        level = torch.full((b,), float(m.reference_sample_level), device=device)
        augmented = ref
        if ref is not None and m.reference_sample_level > 0:
            gen = torch.Generator().manual_seed(int(seed) + 2 * IMAGE_SEED_OFFSET)
            noise = torch.randn(ref.shape, generator=gen, dtype=ref.dtype).to(ref.device)
            augmented = kf.schedule.q_sample(ref, level.long(), noise)

        def model_fn(
            x: torch.Tensor, time: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None, use: torch.Tensor
        ) -> torch.Tensor:
            copies = use.shape[0] // b  # guidance branches stacked as [branch 0 videos | branch 1 videos | ...]
            if augmented is None:
                return kf.unet(x, time, ctx, mask, num_frames=t, frame_stride=stride)
            given = repeat(frames, "b t -> (k b) t", k=copies) * use[:, None].to(frames.dtype)
            lvl = repeat(level, "b -> (k b)", k=copies) * use.to(level.dtype)
            return kf.unet(x, time, ctx, mask, num_frames=t, frame_stride=stride,
                           reference=repeat(augmented, "b c h w -> (k b) c h w", k=copies), reference_frames=given,
                           reference_level=lvl)  # fmt: skip

        w_text = m.guidance_weight if guidance_weight is None else guidance_weight
        w_img = m.image_guidance_weight if image_guidance_weight is None else image_guidance_weight
        if ref is None:
            w_img = 0.0
        cond = kf.text.condition(list(prompts))
        uncond = kf.text.uncond(b, cond[0].shape[1]) if (w_text or w_img) else None
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        latents = sample(
            reference_guided_denoiser(model_fn, cond, uncond, float(w_text), float(w_img)), (b * t, c, h, w),
            SamplingSchedule.build(m.sample_spacing, steps or m.sample_steps, kf.schedule), method=sampler or m.sampler,
            prediction=m.prediction, eta=m.ddim_eta, threshold=m.dynamic_threshold, threshold_group=t, generator=gen,
            device=device, dtype=kf.text.projection.projection.weight.dtype, progress=progress,
        )  # fmt: skip
        return latents, ref

    def sample(self, prompts: list[str], latent_hw: tuple[int, int], **kwargs: Any) -> torch.Tensor:
        """Keyframe latents ``(B, K, c, h, w)`` (unscaled MoVQ latents); ``kwargs`` as :meth:`model_latents`."""
        latents, _ = self.model_latents(prompts, latent_hw, **kwargs)
        return rearrange(latents, "(b t) c h w -> b t c h w", t=self.num_frames) / self.settings.latent_scale


def reference_stage_over(keyframes: KeyframeStage) -> ReferenceKeyframeStage:
    """A :class:`ReferenceKeyframeStage` over a ``ref_*`` keyframe stage (the image stage shares its weights)."""
    image = ImageStage(keyframes.unet.image_unet(), keyframes.text, keyframes.settings, keyframes.schedule)
    return ReferenceKeyframeStage(keyframes, image)


def build_reference_keyframe_stage(src: StageSource) -> ReferenceKeyframeStage:
    """A :class:`ReferenceKeyframeStage` from a ``reference_keyframes`` stage (export folder or checkpoint)."""
    from ff_lightning.pipelines.stages import build_keyframe_stage

    return reference_stage_over(build_keyframe_stage(src, reference=True))


def read_reference_image(path: str | Path) -> torch.Tensor:
    """An image file (any format PIL reads; RGB, alpha dropped) -> ``(3, H, W)`` float in [-1, 1], native size."""
    import numpy as np
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"reference image not found: {p}")
    with Image.open(p) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32)  # H W 3 in [0, 255]
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def fit_reference_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize an image ``(3, H, W)`` in [-1, 1] to ``size = (h, w)``: scaled to cover, then centre-cropped (the data
    layer's resize + centre crop), bilinear with antialiasing. Returns ``(3, h, w)``."""
    import torch.nn.functional as F

    h, w = (int(v) for v in size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    ih, iw = image.shape[-2:]
    scale = max(h / ih, w / iw)
    rh, rw = max(h, round(ih * scale)), max(w, round(iw * scale))
    out = F.interpolate(image[None].float(), size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (rh - h) // 2, (rw - w) // 2
    return out[:, top : top + h, left : left + w].clamp(-1, 1)
