"""The Kandinsky Video 1.1 interpolation loop (three frames between each pair of keyframes), scheduler-agnostic.

Facts read off the public release (ai-forever/KandinskyVideo, ``model/diffusion.py`` ``p_sample_loop_interpolation``
and ``_get_unconditional_context``, ``t2v_pipeline.py`` ``interpolate_base_frames`` and ``__call__``; nothing copied):

- One row per keyframe pair (``n = keyframes - 1`` groups, all of one video): input ``[left | noisy 3 frames |
  right]``. Every step runs the UNet once on ``2n`` rows, the guided half (the prompt's context, keyframes, temporal
  mask 1) and the unguided half (context = the null embedding as token 0 with only that token unmasked, keyframes
  zeroed, temporal mask 0 with ``use_temporal_mask``, else 1); as one batch of two "videos" of ``n`` groups.
  Guidance ``(1 + w) cond - w uncond``; perturbation level 0 and the skip count on every row.
- Release defaults (:class:`KV11InterpolationOptions`): ``w = 0.5``; skip 3 for the first pass (``fps="medium"``) and
  1 for the second (``"high"``, run on the first pass's output); 10 DDPM steps (v-prediction, trailing spacing, the
  zero-SNR cosine schedule, dynamic thresholding 0.995): the scheduler is passed in as ``step`` / ``timesteps``.
- The output ``(n, 3c, h, w)`` is laid out frame-major (``(t c)``, 3 frames); :func:`interleave_groups` puts each
  group's three frames between its keyframes: ``4 k - 3`` frames, keyframe ``i`` at index ``4 i``.
- The text: the release's ``interpolate_base_frames`` encodes the prompt with ``IMAGE_GENERATION_LABEL``, so its
  T5 encoder applies ``t5_projections.pt``'s ``projection_base``, the keyframes' projection, not the
  ``projection_interpolation`` the file also holds (``ff import`` stores both: ``text_projection.*`` and
  ``text_projection_interpolation.*``; ``build_kv11_interpolation_stage(..., projection="interpolation")`` runs the
  latter). The unguided context is ``interpolation.pt``'s own ``null_embedding``.
- Scheduler (``BaseDiffusion.interpolation_sampler``): diffusers' ``DDPMScheduler``, 1000 training steps, the
  ``squaredcos_cap_v2`` betas rescaled to zero terminal SNR, v-prediction, ``trailing`` spacing (10 steps: timesteps
  999, 899, ..., 99, the model fed those), posterior variance, thresholding 0.995 with ``sample_max_value`` 1 (a clip
  of ``x0`` to [-1, 1]). :func:`kv11_interpolation_schedule` / :class:`KV11InterpolationStage` run it with
  :func:`ff_lightning.diffusion.samplers.sample` (the release adds noise of variance ~1e-20 at its last step; here
  none).

:class:`KV11InterpolationStage` is the typed stage ``ff generate`` / ``ff eval --pipeline`` run on a kv1.1 import;
passes: one (the release's ``fps="medium"``, skip 3) or two (``"high"``: skip 3, then 1 on the first pass's output).
Random draws come from a generator seeded per call (the release uses the global RNG after the keyframes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import nn

from ff_lightning.checkpoints import CheckpointError, StageSource
from ff_lightning.config import ConfigError
from ff_lightning.diffusion.samplers import SamplingSchedule
from ff_lightning.pipelines.stages import TextConditioner

__all__ = [
    "KV11_INTERPOLATION_GUIDANCE",
    "KV11_SKIP_FRAMES",
    "KV11_INTERPOLATION_STEPS",
    "KV11InterpolationOptions",
    "unconditional_context",
    "guided_prediction",
    "interpolation_loop",
    "interleave_groups",
    "kv11_interpolation_schedule",
    "kv11_pass_skips",
    "KV11InterpolationStage",
    "build_kv11_interpolation_stage",
]

KV11_INTERPOLATION_GUIDANCE = 0.5  # the release pipeline's interpolation_guidance_scale
KV11_SKIP_FRAMES = {"medium": 3, "high": 1}  # skip count of the first (medium fps) and second (high fps) pass
KV11_PASS_SKIPS = (KV11_SKIP_FRAMES["medium"], KV11_SKIP_FRAMES["high"])  # skip count of pass 1, 2
KV11_INTERPOLATION_THRESHOLD = 0.995  # dynamic_thresholding_ratio (with sample_max_value 1: a clip to [-1, 1])
KV11_INTERPOLATION_STEPS = 10  # the release's interpolation sampler steps
FRAMES = 3


@dataclass(frozen=True)
class KV11InterpolationOptions:
    """The release's interpolation settings (defaults: the first, ``fps="medium"`` pass)."""

    guidance_weight: float = KV11_INTERPOLATION_GUIDANCE
    skip_frames: int = KV11_SKIP_FRAMES["medium"]
    perturbation_time: float = 0.0
    use_temporal_mask: bool = True


def unconditional_context(
    context: torch.Tensor, context_mask: torch.Tensor, null_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's unguided context: zeros shaped like ``context`` ``(n, j, d)`` with the null embedding ``(d,)`` as
    token 0, and the mask ``(n, j)`` with only token 0 set."""
    uncond = torch.zeros_like(context)
    uncond[:, 0] = null_embedding.reshape(-1).to(context.dtype)
    mask = torch.zeros_like(context_mask)
    mask[:, 0] = 1
    return uncond, mask


def guided_prediction(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor | float,
    left: torch.Tensor,
    right: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    null_embedding: torch.Tensor,
    options: KV11InterpolationOptions = KV11InterpolationOptions(),
) -> torch.Tensor:
    """One guided model call: ``x`` ``(n, 3c, h, w)`` noisy groups, ``left`` / ``right`` ``(n, c, h, w)`` keyframes,
    ``context`` ``(n, j, d)``, ``context_mask`` ``(n, j)``; ``model`` an ``interpolation_unet/kv1_1``. Returns the
    guided prediction ``(n, 3c, h, w)``."""
    n = x.shape[0]
    uncond, uncond_mask = unconditional_context(context, context_mask, null_embedding)
    zeros = torch.zeros_like(left)
    rows = torch.cat([torch.cat([left, x, right], 1), torch.cat([zeros, x, torch.zeros_like(right)], 1)])
    mask = torch.ones(2 * n, device=x.device)
    if options.use_temporal_mask:
        mask[n:] = 0
    out = model(
        rows, torch.as_tensor(t, device=x.device).expand(2 * n), torch.cat([context, uncond]),
        torch.cat([context_mask, uncond_mask]).bool(), num_temporal_groups=n, skip_frames=options.skip_frames,
        perturbation_time=options.perturbation_time, temporal_mask=mask,
    )  # fmt: skip
    cond, unguided = out.chunk(2)
    w = options.guidance_weight
    return (1 + w) * cond - w * unguided


def interpolation_loop(
    model: nn.Module,
    keyframes: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    null_embedding: torch.Tensor,
    timesteps: Sequence[int] | torch.Tensor,
    step: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    options: KV11InterpolationOptions = KV11InterpolationOptions(),
) -> torch.Tensor:
    """The release's sampling loop: ``keyframes`` ``(k, c, h, w)``, ``noise`` ``(k - 1, 3c, h, w)`` (the start),
    ``context`` / ``context_mask`` one row per group; ``step(prediction, t, x) -> x_prev`` the scheduler's update at
    timestep ``t`` (``timesteps`` in sampling order). Returns the ``(k - 1, 3c, h, w)`` groups."""
    left, right = keyframes[:-1], keyframes[1:]
    x = noise
    for t in timesteps:
        t = int(t)
        pred = guided_prediction(model, x, t, left, right, context, context_mask, null_embedding, options)
        x = step(pred, t, x)
    return x


def interleave_groups(keyframes: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``keyframes`` ``(k, c, h, w)`` and ``groups`` ``(k - 1, 3c, h, w)`` -> ``(4k - 3, c, h, w)``: keyframe ``i``
    at ``4 i``, group ``i``'s frames at ``4 i + 1 .. 4 i + 3``."""
    k = keyframes.shape[0]
    middle = rearrange(groups, "g (f c) h w -> g f c h w", f=FRAMES)  # frame-major channels
    pairs = torch.cat([keyframes[:-1, None], middle], dim=1)  # g 4 c h w: keyframe then its three frames
    return torch.cat([rearrange(pairs, "g f c h w -> (g f) c h w"), keyframes[k - 1 :]])


# ------------------------------------------------------------------------------------------------- the stage
def kv11_interpolation_schedule(num_steps: int = KV11_INTERPOLATION_STEPS, train_steps: int = 1000) -> SamplingSchedule:
    """The release interpolation sampler's steps: the zero-SNR cosine schedule of ``train_steps`` at the ``trailing``
    timesteps ``round((i + 1) N / num_steps) - 1`` (999, 899, ..., 99 at 10 steps), the model fed those."""
    from ff_lightning.pipelines.kv11 import zero_snr_schedule

    return SamplingSchedule.trailing(zero_snr_schedule(train_steps), int(num_steps))


def kv11_pass_skips(passes: int, skip_frames: int | None = None) -> list[int]:
    """Skip count of each pass: the release's (3, then 1); ``skip_frames`` replaces the last pass's. At most two
    passes (the release's ``fps="high"``)."""
    if not 1 <= passes <= len(KV11_PASS_SKIPS):
        raise ConfigError(
            f"Kandinsky Video 1.1 interpolation runs 1 pass (fps 'medium', skip 3) or 2 (fps 'high', skip 3 then 1); "
            f"got --passes {passes}"
        )
    skips = list(KV11_PASS_SKIPS[:passes])
    if skip_frames is not None:
        skips[-1] = int(skip_frames)
    return skips


@dataclass
class KV11InterpolationStage:
    """Keyframe latents ``(B, K, c, h, w)`` -> ``(B, 4^passes (K - 1) + 1, c, h, w)`` with the 1.1 interpolation UNet
    and the release's sampler (see the module docstring). Fits :class:`~ff_lightning.pipelines.video.VideoPipeline`
    like :class:`~ff_lightning.pipelines.stages.InterpolationStage`, but needs the prompt (``prompts=``)."""

    unet: nn.Module  # KV11InterpolationUNet
    text: TextConditioner  # the keyframes' text encoder, projection_interpolation, interpolation.pt's null embedding
    movq: nn.Module  # the frozen image MoVQ of the import (latent-space record)
    settings: Any  # the stage's module config (sample_steps 10, guidance_weight 0.5, latent_scale)
    options: KV11InterpolationOptions = field(default_factory=KV11InterpolationOptions)
    train_steps: int = 1000
    source: StageSource | None = None

    @property
    def device(self) -> torch.device:
        return self.text.device

    def to(self, device: torch.device | str) -> KV11InterpolationStage:
        self.unet.to(device)
        self.movq.to(device)
        self.text.projection.to(device)
        self.text.null.to(device)
        return self

    def interpolate(
        self, latents: torch.Tensor, *, prompts: list[str], passes: int = 1, skip_frames: int | None = None,
        guidance_weight: float | None = None, perturbation_time: int | None = None, steps: int | None = None,
        seed: int = 0,
    ) -> torch.Tensor:  # fmt: skip
        """Unscaled keyframe latents ``(B, K, c, h, w)``, one prompt per video -> ``(B, 4^passes (K - 1) + 1, c, h,
        w)``, unscaled. Pass ``j`` of video ``i`` draws from a generator seeded ``seed + 1000 i + j``."""
        if len(prompts) != latents.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {latents.shape[0]} videos")
        scale = float(self.settings.latent_scale)
        w = float(self.settings.guidance_weight if guidance_weight is None else guidance_weight)
        tp = float(self.options.perturbation_time if perturbation_time is None else perturbation_time)
        schedule = kv11_interpolation_schedule(int(steps or self.settings.sample_steps), self.train_steps)
        videos = []
        for i, (video, prompt) in enumerate(zip(latents * scale, prompts, strict=True)):
            context, mask = self.text.condition([prompt])  # (1, j, d), (1, j)
            for j, skip in enumerate(kv11_pass_skips(passes, skip_frames)):
                options = KV11InterpolationOptions(w, skip, tp, self.options.use_temporal_mask)
                video = self.interpolate_once(video, context, mask, schedule, options, seed + 1000 * i + j)
            videos.append(video)
        return torch.stack(videos) / scale

    @torch.no_grad()
    def interpolate_once(
        self, keyframes: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor, schedule: SamplingSchedule,
        options: KV11InterpolationOptions, seed: int,
    ) -> torch.Tensor:  # fmt: skip
        """One pass over model-space keyframes ``(k, c, h, w)`` of one video (context ``(1, j, d)``, mask
        ``(1, j)``) -> ``(4k - 3, c, h, w)``."""
        from ff_lightning.diffusion.samplers import sample

        k, c, h, w = keyframes.shape
        n = k - 1
        ctx, mask = context.expand(n, -1, -1), context_mask.expand(n, -1)
        null = self.text.null.embedding.detach()
        left, right = keyframes[:-1], keyframes[1:]

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return guided_prediction(self.unet, x, t[0], left, right, ctx, mask, null, options)

        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        groups = sample(
            denoise, (n, FRAMES * c, h, w), schedule, method="ddpm", prediction="v",
            threshold=KV11_INTERPOLATION_THRESHOLD, threshold_max=1.0, generator=gen, device=keyframes.device,
            dtype=keyframes.dtype,
        )  # fmt: skip
        return interleave_groups(keyframes, groups)


PROJECTIONS = {"base": "text_projection.", "interpolation": "text_projection_interpolation."}


def build_kv11_interpolation_stage(
    src: StageSource, encoder_cache: Any, projection: str = "base"
) -> KV11InterpolationStage:
    """A :class:`KV11InterpolationStage` from an imported ``interpolation_unet/kv1_1`` stage; ``encoder_cache`` the
    keyframes stage's text encoder (``TextConditioner.cache``: the release has one T5 for both). ``projection``:
    ``base`` (what the release pipeline runs) or ``interpolation`` (``projection_interpolation``, never called by the
    release pipeline)."""
    from ff_lightning import registry
    from ff_lightning.models.text import NullEmbedding, TextProjection
    from ff_lightning.pipelines.stages import _compose, _load, _sub, build_image_movq

    cfg = _compose(src)
    m, mc = cfg.module, cfg.model
    if cfg.system != "interpolation" or mc.variant != "kv1_1":
        raise CheckpointError(f"{src.path}: a {cfg.system} / {mc.variant} stage, not an interpolation / kv1_1 stage")
    if projection not in PROJECTIONS:
        raise ConfigError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")
    prefix = PROJECTIONS[projection]
    if not _sub(src.state, prefix):
        raise CheckpointError(
            f"{src.path}: no {prefix}* (t5_projections.pt's projection_{projection}): this folder was written by an "
            "older `ff import`; import the kv1.1 files again (`ff import DIR --format kv1.1 --out OUT`)"
        )
    overrides = {k: v for k, v in dict(mc.overrides).items() if k not in ("noisy_init", "freeze_spatial")}
    unet = registry.build("interpolation_unet", "kv1_1", mc.preset, **overrides)
    _load(unet, _sub(src.state, "unet."), f"{src.path} (1.1 interpolation UNet)")
    dim = int(unet.config["context_dim"])
    null = NullEmbedding(dim)
    proj = TextProjection(encoder_cache.encoder.dim, dim)
    _load(proj, _sub(src.state, prefix), f"{src.path} (projection_{projection})")
    _load(null, _sub(src.state, "null_embedding."), f"{src.path} (interpolation null embedding)")
    text = TextConditioner(encoder_cache, proj.eval().requires_grad_(False), null.eval().requires_grad_(False))
    return KV11InterpolationStage(
        unet=unet.eval().requires_grad_(False), text=text, movq=build_image_movq(src, m), settings=m,
        options=KV11InterpolationOptions(guidance_weight=float(m.guidance_weight)),
        train_steps=int(m.train_timesteps), source=src,
    )  # fmt: skip
