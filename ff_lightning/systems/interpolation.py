"""``InterpolationModule``: the FusionFrames interpolation model (or the masked-frame baseline) on MoVQ latents.

Setup: the Kandinsky 3 UNet of ``model.preset`` (+ ``model.overrides``) gets the weights of ``module.t2i_ckpt`` (a
``t2i`` checkpoint, EMA weights when present and ``t2i_use_ema``, or a bare UNet state dict; tests may pass
``allow_random_t2i``) and is converted by ``module.method``:

- ``fusionframes`` (``model.variant: kandinsky_video``): :func:`~ff_lightning.models.interpolation.
  interpolation_unet_from_t2i` (``module.noisy_init``), the released design;
- ``masked`` (``model.variant: masked_frame``): :func:`~ff_lightning.models.masked_interpolation.
  masked_interpolation_unet_from_t2i`, the masked-frame baseline of equal width and depth.

The whole UNet trains unless ``module.freeze_spatial`` (the release fine-tunes everything). The context is the null
text embedding (taken from the t2i checkpoint; one without it is refused unless ``module.train_null_embedding``
trains it, as a random frozen part of a pretrained model is an error). The
image MoVQ (``module.movq_ckpt``) is frozen and not checkpointed.

Data: ``data.num_frames = 4K - 3`` frames per sample (``K`` keyframes, 3 targets per gap; 33 in the paper, 9 in the
tiny config). In ``setup`` the datamodule's datasets are wrapped by
:class:`~ff_lightning.data.interpolation.InterpolationSequenceDataset` (skip-frame ``s`` per sample from
``module.min_skip..max_skip``, too-short videos resampled or skipped, augmentations; options in ``module``).

Objective (:meth:`~ff_lightning.models.interpolation_pipeline.InterpolationMethod.loss`): v-prediction on the cosine
schedule; conditioning keyframes perturbed to ``tp`` uniform in ``0..max_perturbation`` (the UNet sees ``tp``);
with probability ``uncond_prob`` a video's conditioning frames are zeroed and its temporal outputs masked (``mt = 0``).

Samples (TensorBoard ``*/samples``, one image per video: keyframes only / interpolated / ground truth, three rows of
frames) and ``val/psnr`` / ``val/ssim`` of the interpolated frames against the real ones use context guidance
``module.guidance_weight`` (0.25), ``module.inference_perturbation`` (0 as released; 150 in the paper) and the
batch's skip values (or ``module.sample_skip``). :meth:`InterpolationModule.generate` interpolates pixel keyframes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ff_lightning import registry
from ff_lightning.config import ConfigError
from ff_lightning.data.interpolation import InterpolationDataOptions, install_interpolation_data, num_keyframes_for
from ff_lightning.diffusion import SAMPLERS, NoiseSchedule
from ff_lightning.models.interpolation import NOISY_INIT, interpolation_unet_from_t2i
from ff_lightning.models.interpolation_pipeline import (
    METHODS,
    InterpolationMethod,
    keyframe_mask,
    method_for,
)
from ff_lightning.models.masked_interpolation import masked_interpolation_unet_from_t2i
from ff_lightning.models.text import NullEmbedding
from ff_lightning.models.unet import KandinskyUNet
from ff_lightning.systems.ema import EMA
from ff_lightning.systems.frozen_movq import FrozenMoVQDiffusionSystem
from ff_lightning.systems.keyframes import T2I_CKPT_HINT, read_t2i_checkpoint
from ff_lightning.systems.t2i import SPACINGS, build_frozen_movq

__all__ = ["InterpolationSystemConfig", "InterpolationModule", "METHOD_VARIANTS"]

log = logging.getLogger(__name__)

#: module.method -> the model.variant of interpolation_unet it trains
METHOD_VARIANTS: dict[str, str] = {"fusionframes": "kandinsky_video", "masked": "masked_frame"}
CONVERSION_KEYS = ("noisy_init", "freeze_spatial")  # model.overrides for the conversion, not the image UNet


@dataclass
class InterpolationSystemConfig:
    """``module:`` section of the ``interpolation`` system."""

    method: str = "fusionframes"  # fusionframes (model.variant kandinsky_video) | masked (model.variant masked_frame)
    # frozen autoencoder
    movq_ckpt: str | None = None  # the image MoVQ (required unless allow_random_movq)
    movq_preset: str = "tiny"
    allow_random_movq: bool = False  # tests only
    latent_scale: float = 1.0
    # initial weights
    t2i_ckpt: str | None = None  # a t2i-system checkpoint or a Kandinsky 3 UNet state dict
    t2i_use_ema: bool = True
    allow_random_t2i: bool = False  # tests and benchmarks only: a randomly initialised image UNet
    noisy_init: str = "mean"  # fusionframes input conv: mean | middle
    freeze_spatial: bool = False  # the release fine-tunes the whole UNet
    train_null_embedding: bool = False
    # objective
    train_timesteps: int = 1000
    max_perturbation: int = 250  # tp uniform in 0..max_perturbation
    uncond_prob: float = 0.1  # conditioning zeroed and temporal outputs masked
    blend_residual: bool = False  # not the paper's: diffuse the difference to the linear blend of the keyframes
    residual_scale: float = 1.0  # with blend_residual: factor on that difference (about 1 / its std)
    timestep_shift: float = 1.0  # training steps towards high noise (u -> s u / (1 + (s - 1) u)); 1: uniform
    # samples (data.num_frames = 4K - 3) and augmentations: see ff_lightning.data.interpolation
    min_skip: int = 1
    max_skip: int = 12
    too_short: str = "resample"  # resample | skip
    eval_skip: int | None = None  # fixed s for validation samples (None: drawn, fixed per index)
    augment: bool = True
    crop_scale: float = 1.25
    slide_prob: float = 0.25
    flip_prob: float = 0.5
    reverse_prob: float = 0.5
    average_prob: float = 0.1
    blur_prob: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.3, 1.5])
    # inference
    sampler: str = "ddim"
    sample_spacing: str = "subsample"  # subsample | trailing | release (the release's; inconsistent at few steps)
    sample_steps: int = 10
    ddim_eta: float = 0.0
    dynamic_threshold: float | None = None
    guidance_weight: float = 0.25  # (1 + w) cond - w uncond, uncond = conditioning frames zeroed
    inference_perturbation: int = 0  # tp of the keyframes at inference: 0 released, 150 paper
    sample_skip: int | None = None  # skip value of logged samples (None: the batch's)
    sample_seed: int = 0
    log_samples_every_n_steps: int = 500  # 0: never during training (always at validation)
    num_log_samples: int = 2
    log_fps: int = 4


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


class InterpolationModule(FrozenMoVQDiffusionSystem):
    """Interpolation training (see the module docstring); ``self.cfg`` the whole config, ``self.m`` its ``module``."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.m = m = cfg.module
        _check(m.method in METHODS, f"unknown module.method {m.method!r}; valid choices: {', '.join(METHODS)}")
        _check(m.sampler in SAMPLERS, f"unknown module.sampler {m.sampler!r}; valid choices: {', '.join(SAMPLERS)}")
        _check(m.sample_spacing in SPACINGS, f"unknown module.sample_spacing {m.sample_spacing!r}")
        _check(m.noisy_init in NOISY_INIT, f"unknown module.noisy_init {m.noisy_init!r}")
        _check(0.0 <= m.uncond_prob <= 1.0, f"module.uncond_prob must lie in [0, 1], got {m.uncond_prob}")
        _check(
            0 <= m.max_perturbation <= m.train_timesteps,
            f"module.max_perturbation must lie in [0, {m.train_timesteps}], got {m.max_perturbation}",
        )
        _check(
            0 <= m.inference_perturbation <= m.train_timesteps,
            f"module.inference_perturbation must lie in [0, {m.train_timesteps}]",
        )
        try:
            self.num_keyframes = num_keyframes_for(int(cfg.data.num_frames))
            self.data_options = InterpolationDataOptions.from_mapping(m)
        except ValueError as e:
            raise ConfigError(f"interpolation data: {e} (data.num_frames is the sample length 4K - 3)") from None
        self.save_hyperparameters({"config": OmegaConf.to_container(cfg, resolve=True)})
        self.schedule = NoiseSchedule.cosine(m.train_timesteps)
        self.movq = build_frozen_movq(m)
        self.unet = self._build_unet()
        _check(m.residual_scale > 0, f"module.residual_scale must be > 0, got {m.residual_scale}")
        _check(m.timestep_shift > 0, f"module.timestep_shift must be > 0, got {m.timestep_shift}")
        self.method: InterpolationMethod = method_for(self.unet, bool(m.blend_residual), float(m.residual_scale))
        self.method.timestep_shift = float(m.timestep_shift)
        self.null_embedding = NullEmbedding(int(self.unet.config["context_dim"]))
        t2i = self.__dict__.pop("_t2i", None)
        if t2i is not None and t2i.null_embedding is None and not m.train_null_embedding:
            raise ConfigError(  # a random part of a pretrained model must not stay frozen
                f"module.t2i_ckpt={m.t2i_ckpt} has no null embedding (null_embedding.embedding), which would stay "
                "random and frozen: pass a t2i checkpoint or an imported release (`ff import DIR --out OUT`, then "
                "OUT/<stage>/module.safetensors) that has one, or train it (module.train_null_embedding=true)"
            )
        if t2i is not None and t2i.null_embedding is not None:
            self.null_embedding.load_state_dict(t2i.null_embedding)
        self.null_embedding.requires_grad_(bool(m.train_null_embedding))
        self.ema: EMA | None = None

    # --------------------------------------------------------------------------------------------------- model
    def _build_unet(self) -> nn.Module:
        cfg, m = self.cfg, self.m
        mc = cfg.model
        _check(
            mc.component == "interpolation_unet",
            f"the interpolation system needs model.component=interpolation_unet, got {mc.component!r}",
        )
        want = METHOD_VARIANTS[m.method]
        _check(
            mc.variant == want,
            f"module.method={m.method} trains model.variant={want}, got {mc.variant!r} (set both: "
            f"{', '.join(f'{k} -> {v}' for k, v in METHOD_VARIANTS.items())})",
        )
        overrides = {k: v for k, v in dict(mc.overrides).items() if k not in CONVERSION_KEYS}
        image = registry.build("t2i_unet", "kandinsky3", mc.preset, **overrides)
        assert isinstance(image, KandinskyUNet)
        if m.t2i_ckpt:
            t2i = read_t2i_checkpoint(m.t2i_ckpt, m.t2i_use_ema)
            theirs = ((t2i.config or {}).get("model") or {}).get("preset")
            if theirs is not None and theirs != mc.preset:
                raise ConfigError(f"module.t2i_ckpt was trained at model.preset={theirs!r}, this run {mc.preset!r}")
            missing, unexpected = image.load_state_dict(t2i.unet, strict=False)
            if missing or unexpected:
                raise ConfigError(
                    f"module.t2i_ckpt={m.t2i_ckpt} does not fit the t2i UNet of model.preset={mc.preset!r}: "
                    f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected"
                )
            self._t2i = t2i
            log.info("loaded the t2i UNet from %s%s", m.t2i_ckpt, " (EMA weights)" if t2i.used_ema else "")
        elif not m.allow_random_t2i:
            raise ConfigError(
                "module.t2i_ckpt is not set: the interpolation model starts from a trained text-to-image UNet. "
                f"{T2I_CKPT_HINT} module.allow_random_t2i=true is for tests and benchmarks only."
            )
        if m.method == "fusionframes":
            return interpolation_unet_from_t2i(
                image, copy=False, freeze_spatial=m.freeze_spatial, noisy_init=m.noisy_init
            )
        return masked_interpolation_unet_from_t2i(image, copy=False, freeze_spatial=m.freeze_spatial)

    # ---------------------------------------------------------------------------------------------------- data
    def setup(self, stage: str) -> None:
        """Wrap the datamodule's datasets into interpolation samples (see the module docstring)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        if dm is None:
            log.warning("no datamodule: batches must already be interpolation samples of 4K - 3 frames")
            return
        install_interpolation_data(dm, self.data_options, splits)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(n, 3, H, W)`` in [-1, 1] -> latents ``(n, c, h, w)`` (times ``latent_scale``)."""
        return self.movq.encode(frames) * self.m.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Latents ``(n, c, h, w)`` -> frames ``(n, 3, H, W)``."""
        return self.movq.decode(latents / self.m.latent_scale, num_frames=num_frames)

    def video_latents(self, video: torch.Tensor) -> torch.Tensor:
        """Videos ``(B, T, 3, H, W)`` -> latents ``(B, T, c, h, w)``."""
        t = video.shape[1]
        flat = self.encode_frames(rearrange(video, "b t c h w -> (b t) c h w"))  # frames folded
        return rearrange(flat, "(b t) c h w -> b t c h w", t=t)

    def batch_skips(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Skip-frame value per sample ``(B,)`` from the batch's ``meta`` (interpolation samples)."""
        metas = batch.get("meta") or []
        if len(metas) != batch["video"].shape[0] or any("skip_frames" not in meta for meta in metas):
            raise ValueError(
                "batch without skip_frames in its meta: interpolation batches come from InterpolationSequenceDataset "
                "(installed by InterpolationModule.setup)"
            )
        return torch.tensor([int(meta["skip_frames"]) for meta in metas], device=self.device)

    # ------------------------------------------------------------------------------------------------ training
    def diffusion_loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """``video (B, 4K - 3, 3, H, W)`` -> the method's v-prediction loss on the generated frames."""
        video = batch["video"]
        if video.shape[1] != 4 * self.num_keyframes - 3:
            raise ValueError(f"samples of {video.shape[1]} frames; this model expects data.num_frames frames")
        return self.method.loss(
            self.video_latents(video),
            self.batch_skips(batch),
            self.schedule,
            self.null_embedding.embedding,
            max_perturbation=int(self.m.max_perturbation),
            uncond_prob=float(self.m.uncond_prob),
            generator=generator,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.global_step}, batch {batch_idx}")
        bs = batch["video"].shape[0]
        self.log("train/loss", loss.detach(), batch_size=bs)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        metas = batch.get("meta") or []
        if metas:
            self.log("data/skip_mean", float(sum(m_["skip_frames"] for m_ in metas)) / len(metas), batch_size=bs)
            self.log("data/skip_resampled", float(sum(bool(m_.get("skip_resampled")) for m_ in metas)), batch_size=bs)
        every = self.m.log_samples_every_n_steps
        if every and self.global_step % every == 0 and self.global_step > 0:
            self.log_samples("train/samples", batch)
        return loss

    # ---------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator(device="cpu").manual_seed(self.cfg.run.seed * 100_003 + batch_idx)
        bs = batch["video"].shape[0]
        self.log("val/loss", self.diffusion_loss(batch, generator=gen), batch_size=bs, sync_dist=True)
        if batch_idx == 0 and self.m.num_log_samples > 0:
            self.log_samples("val/samples", batch, metrics_prefix="val")

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def interpolate_latents(
        self,
        keyframes: torch.Tensor,
        *,
        passes: int = 1,
        skip_frames: int | Sequence[int] | torch.Tensor | None = None,
        guidance_weight: float | None = None,
        perturbation_time: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Latent keyframes ``(B, K, c, h, w)`` -> ``(B, 4^n (K - 1) + 1, c, h, w)`` (defaults from ``module``);
        sampled by :class:`~ff_lightning.pipelines.stages.InterpolationStage` over this system's modules."""
        from ff_lightning.pipelines.live import interpolation_stage_of

        return interpolation_stage_of(self).model_interpolate(
            keyframes, passes=passes, skip_frames=skip_frames, guidance_weight=guidance_weight,
            perturbation_time=perturbation_time, steps=steps, sampler=sampler,
            seed=self.m.sample_seed if seed is None else seed,
        )  # fmt: skip

    @torch.no_grad()
    def generate(self, keyframes: torch.Tensor, passes: int = 1, decode: bool = True, **kwargs: Any) -> torch.Tensor:
        """Pixel keyframes ``(B, K, 3, H, W)`` in [-1, 1] -> ``(B, 4^n (K - 1) + 1, 3, H, W)`` (or latents with
        ``decode=False``). ``kwargs``: see :meth:`interpolate_latents`."""
        seq = self.interpolate_latents(self.video_latents(keyframes), passes=passes, **kwargs)
        if not decode:
            return seq
        t = seq.shape[1]
        frames = self.decode_latents(rearrange(seq, "b t c h w -> (b t) c h w"), num_frames=t)  # frames folded
        return rearrange(frames, "(b t) c h w -> b t c h w", t=t)

    # ---------------------------------------------------------------------------------------------------- logging
    @torch.no_grad()
    def log_samples(self, tag: str, batch: Mapping[str, Any], metrics_prefix: str | None = None) -> None:
        """Interpolate the first ``num_log_samples`` videos from their keyframes; log keyframes / interpolated /
        ground truth (three rows of frames per image) and, with ``metrics_prefix``, PSNR and SSIM of the generated
        frames against the real ones."""
        from ff_lightning.metrics.functional import psnr, ssim, to_unit

        exp = self._tensorboard()
        if not self.trainer.is_global_zero or (exp is None and metrics_prefix is None):
            return
        n = min(self.m.num_log_samples, batch["video"].shape[0])
        video = batch["video"][:n]  # b t 3 H W: keyframes and real targets
        skip = self.m.sample_skip or self.batch_skips(batch)[:n]  # one value per video
        was_training = self.training
        self.eval()
        try:
            keys = self.video_latents(video[:, ::4])
            latents = self.interpolate_latents(keys, skip_frames=skip)
            t = latents.shape[1]
            frames = self.decode_latents(rearrange(latents, "b t c h w -> (b t) c h w"), num_frames=t)
            out = rearrange(frames, "(b t) c h w -> b t c h w", t=t).float().clamp(-1, 1)  # frames back to videos
        finally:
            self.train(was_training)
        unknown = ~keyframe_mask(t, out.device)
        if metrics_prefix is not None:
            pred, real = to_unit(out[:, unknown]), to_unit(video[:, unknown].float())
            self.log(f"{metrics_prefix}/psnr", psnr(pred, real).float(), batch_size=n)
            if min(real.shape[-2:]) >= 11:
                self.log(f"{metrics_prefix}/ssim", ssim(pred, real).float(), batch_size=n)
        if exp is None:
            return
        keys_only = video.clone().float()
        keys_only[:, unknown] = 0.0  # grey where frames are to be generated
        rows = torch.stack([keys_only, out, video.float()], dim=1)  # b 3 t c H W: keyframes / interpolated / real
        grid = rearrange(rows, "b r t c h w -> b c (r h) (t w)")  # one image per video, a row of frames each
        exp.add_images(tag, ((grid + 1) / 2).clamp(0, 1).cpu(), global_step=self.global_step)

    # -------------------------------------------------------------------------------------------- checkpointing
